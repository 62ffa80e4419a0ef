//! Incident reports: a release that fails its watch and is rolled back automatically, told
//! from the state store by `incident report` (Markdown and JSON) and the API, checked against
//! the run's journal, evidence, rollback record and audit log.

use deploy_agent::store::Store;
use deploy_agent_tests::daemon::{Daemon, token_entry};
use serde_json::Value;

use crate::project::{Project, stderr};

const NOT_BROKEN: &str = "\n[[environments.local.checks]]\nname = \"not broken\"\nstage = \"watch\"\ncommand = \"! grep -q broken sites/local/current/index.html\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_run_gets_an_incident_report_matching_its_journal() {
    let (reader, entry) = token_entry("reader", "read", None);
    let p = Project::new("", &format!("{NOT_BROKEN}{entry}"));
    let (code, v1) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0, "{v1:#}");
    let first = v1["deployment"]["release_id"].as_str().unwrap().to_string();
    std::fs::write(p.path("site/index.html"), "<h1>broken</h1>").unwrap();
    let (code, v2) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 1, "{v2:#}");
    assert_eq!(v2["deployment"]["status"], "rolled_back");
    let run = v2["deployment"]["id"].as_str().unwrap().to_string();
    let bad = v2["deployment"]["release_id"].as_str().unwrap().to_string();

    let r = p.json(&["incident", "report", &run]);
    assert_eq!(r["run"]["id"], run.as_str());
    let detection = r["detection"].as_str().unwrap();
    assert!(
        detection.contains("check `not broken` failed during watch"),
        "{detection}"
    );
    let decision = r["decision"].as_str().unwrap();
    assert!(
        decision.starts_with("automatic rollback (policy `auto`) by agent")
            && decision.contains(&format!("to {first}")),
        "{decision}"
    );
    assert_eq!(r["restored"][0], format!("release {first} live again"));
    assert_eq!(r["rollbacks"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(r["rollbacks"][0]["from_release"], bad.as_str());

    // The times are the store's: detection is the failing check's evidence, recovery the
    // rollback's end, and the time to recovery their difference.
    let store = Store::open_dir(&p.path("state")).await.unwrap();
    let evidence = store.evidence(&run).await.unwrap();
    let failing = evidence.iter().find(|e| e.outcome == "fail").unwrap();
    let rollback = &store.rollbacks("local").await.unwrap()[0];
    let ms = |v: &Value| {
        deploy_agent::time::parse_rfc3339_ms(v.as_str().unwrap()).unwrap_or_else(|| panic!("{v}"))
    };
    assert_eq!(ms(&r["detected_at"]), failing.at);
    assert_eq!(ms(&r["recovered_at"]), rollback.finished_at.unwrap());
    assert_eq!(
        r["time_to_recovery_ms"].as_i64().unwrap(),
        rollback.finished_at.unwrap() - failing.at
    );

    // The timeline holds the journal, step by step in its order, among the rest, oldest first.
    let timeline = r["timeline"].as_array().unwrap();
    let times: Vec<i64> = timeline.iter().map(|e| ms(&e["at"])).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    let journal: Vec<String> = timeline
        .iter()
        .filter(|e| e["source"] == "journal")
        .skip(1)
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect();
    let steps = store.steps(&run).await.unwrap();
    assert_eq!(journal.len(), steps.len(), "{journal:#?}");
    for (said, step) in journal.iter().zip(&steps) {
        assert!(
            said.starts_with(&format!("{} {}", step.stage, step.status)),
            "{said} vs {step:?}"
        );
    }
    let audit: Vec<&str> = timeline
        .iter()
        .filter(|e| e["source"] == "audit")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(
        audit.iter().any(|a| a.starts_with("deploy.started")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.starts_with("release.rolled-back")),
        "{audit:?}"
    );
    assert!(
        timeline.iter().any(|e| e["source"] == "evidence"
            && e["what"].as_str().unwrap().contains("`not broken` fail")),
        "{timeline:#?}"
    );
    assert_eq!(r["audit"]["intact"], true, "{r:#}");

    // Markdown, in the runbooks' shape.
    let out = p.run(&["incident", "report", &run]);
    assert!(out.status.success(), "{}", stderr(&out));
    let md = String::from_utf8_lossy(&out.stdout).into_owned();
    for section in [
        "# Incident: ",
        "## Summary",
        "## Impact",
        "- **Detected:** ",
        "- **Decided:** ",
        "- **Recovered:** ",
        "## Timeline",
        "| Time (UTC) | Source | Who | What | Why |",
        "## Root cause",
        "## Follow-ups",
        "The audit chain verifies",
    ] {
        assert!(md.contains(section), "no `{section}` in:\n{md}");
    }
    assert!(md.contains(&format!("release {first} live again")), "{md}");

    // An unknown run is an error that says where to look.
    let out = p.run(&["incident", "report", "no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no run `no-such-run`"),
        "{}",
        stderr(&out)
    );

    // The API answers the same report, JSON or Markdown, to a token that may read it.
    let d = Daemon::start(&p.path(""), &[]).await;
    let path = format!("/v1/runs/{run}/incident");
    let json = d.request("GET", &path, Some(&reader), None).await.unwrap();
    assert_eq!(json.status, 200);
    assert_eq!(json.json()["detection"], r["detection"]);
    let text = d
        .request(
            "GET",
            &format!("{path}?format=markdown"),
            Some(&reader),
            None,
        )
        .await
        .unwrap();
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/markdown")
    );
    assert!(text.text().contains("## Timeline"));
    let anonymous = d.request("GET", &path, None, None).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let missing = d
        .request("GET", "/v1/runs/no-such-run/incident", Some(&reader), None)
        .await
        .unwrap();
    assert_eq!(missing.status, 404);

    // The console: the run's page links to the report, which shows the same facts, and its
    // Markdown downloads.
    let cookie = [("cookie".to_string(), d.sign_in(&reader).await)];
    let get = |path: String| {
        let (d, cookie) = (&d, &cookie);
        async move { d.raw("GET", &path, None, cookie, None).await.unwrap() }
    };
    let page = get(format!("/runs/{run}")).await;
    assert!(
        page.text()
            .contains(&format!("href=\"/runs/{run}/incident\"")),
        "{}",
        page.text()
    );
    let page = get(format!("/runs/{run}/incident")).await;
    assert_eq!(page.status, 200);
    let html = page.text();
    for part in [
        "Timeline",
        "check `not broken` failed during watch",
        "automatic rollback",
        "The audit chain verifies",
    ] {
        assert!(html.contains(part), "no `{part}` in:\n{html}");
    }
    let md = get(format!("/runs/{run}/incident.md")).await;
    assert_eq!(md.status, 200);
    assert!(md.text().contains("## Root cause"), "{}", md.text());
}
