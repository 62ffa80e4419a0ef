//! A canary on Vercel through Rolling Releases, end to end through the CLI against the
//! Vercel stand-in (`tests/support/vercel_rolling.rs`): the host's steps become the project's
//! manual-approval stages, the first weight starts the rolling release, each approval gate
//! approves the next stage, 100 % completes it, and a rejection aborts it back to the
//! release that served before. Production requests are split by the active stage.

use std::process::{Child, Stdio};
use std::time::Duration;

use deploy_agent_tests::standin::fetch;
use deploy_agent_tests::vercel::{Vercel, spec};
use serde_json::Value;

use crate::project::{Project, stderr};

const TOKEN: &str = "vc-rolling-token-4e1b7d";

fn project(v: &Vercel) -> Project {
    let p = Project::new("", "");
    let base = std::fs::read_to_string(p.path("agent.toml")).unwrap();
    let toml = format!(
        r#"{vercel}
[environments.prod]
[environments.prod.target]
plugin = "vercel"
[environments.prod.artifact]
path = "site"
[environments.prod.validate]
plugins = ["vercel"]
[environments.prod.deploy]
poll_interval_ms = 20
strategy = "canary"
steps = [{{ weight = 10, pause = "approval" }}, {{ weight = 50, pause = "approval" }}, {{ weight = 100 }}]
scale_down_delay_ms = 0
[[environments.prod.checks]]
name = "the release's own URL serves it"
http = "{{url}}/index.html"
body_contains = "<h1>"
[[environments.prod.checks]]
name = "production serves a page"
stage = "watch"
http = "http://127.0.0.1:{port}/_sites/production/index.html"
body_contains = "<h1>"
"#,
        vercel = v.plugin_table(400),
        port = v.server.port,
    );
    std::fs::write(p.path("agent.toml"), format!("{base}{toml}")).unwrap();
    p
}

fn start(p: &Project, version: &str) -> Child {
    std::fs::write(p.path("site/index.html"), format!("<h1>{version}</h1>")).unwrap();
    p.command(&[
        "deploy",
        "--env",
        "prod",
        "--version",
        version,
        "--output",
        "json",
    ])
    .env("VERCEL_TOKEN", TOKEN)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

fn finish(child: Child) -> (Option<i32>, Value, String) {
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains(TOKEN) && !String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, err)
}

/// The run waiting at `gate`, once it does.
fn waiting_at(p: &Project, gate: &str) -> String {
    for _ in 0..300 {
        let status = p.json(&["status", "--env", "prod"]);
        if let Some(w) = status["waiting"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["gate"] == gate))
        {
            return w["deployment_id"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no run waited at {gate}");
}

fn decide(p: &Project, verb: &str, run: &str) {
    let out = p.run(&[verb, run, "--reason", "by the test"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// How many of `n` production requests the deployment serving `<h1>{version}</h1>` answers.
async fn served_by(v: &Vercel, version: &str, n: usize) -> usize {
    let url = format!("{}/_sites/production/index.html", v.api());
    let mut hits = 0;
    for _ in 0..n {
        let (status, body) = fetch(&url).await;
        assert_eq!(status, 200);
        if body.contains(&format!("<h1>{version}</h1>")) {
            hits += 1;
        }
    }
    hits
}

fn stage_detail(v: &Value, stage: &str) -> String {
    v["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["stage"] == stage)
        .map(|s| format!("{} {}", s["status"], s["detail"]))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vercel_canary_rolls_out_by_approved_stages_and_a_rejection_aborts_it() {
    let v = Vercel::start(TOKEN, None).await;
    let p = project(&v);

    // v1: nothing serves production yet, so there is nothing to share traffic with.
    let (code, out, err) = tokio::task::block_in_place(|| finish(start(&p, "v1")));
    assert_eq!(code, Some(0), "{out:#}\n{err}");
    assert!(
        stage_detail(&out, "shift").contains("nothing was live before"),
        "{out:#}"
    );
    let v1 = out["deployment"]["release_id"]
        .as_str()
        .unwrap()
        .to_string();
    {
        let st = v.state.lock().unwrap();
        assert_eq!(st.production.as_deref(), Some(v1.as_str()));
        let (automatic, stages) = st.rr.config.clone().expect("the config is enabled");
        assert!(
            !automatic,
            "manual approval, so the host decides each stage"
        );
        let percents: Vec<u64> = stages.iter().map(|s| s.percent).collect();
        assert_eq!(percents, [10, 50, 100]);
    }

    // v2: 10 % at the first gate, 50 % at the second, then complete.
    let child = start(&p, "v2");
    let run = tokio::task::block_in_place(|| waiting_at(&p, "canary-step-1"));
    let v2 = {
        let st = v.state.lock().unwrap();
        let rr = st.rr.active().expect("promoting started a rolling release");
        assert_eq!(rr.current.as_deref(), Some(v1.as_str()));
        assert_eq!(st.rr.percent(), 10);
        rr.canary.clone()
    };
    assert_eq!(
        served_by(&v, "v2", 200).await,
        20,
        "10 % of requests reach v2"
    );
    tokio::task::block_in_place(|| decide(&p, "approve", &run));
    tokio::task::block_in_place(|| waiting_at(&p, "canary-step-2"));
    assert_eq!(v.state.lock().unwrap().rr.percent(), 50);
    assert_eq!(
        served_by(&v, "v2", 200).await,
        100,
        "50 % of requests reach v2"
    );
    // What the stand-in answers is what the document says Vercel answers.
    let body = serde_json::to_vec(&deploy_agent_tests::vercel_rolling::release_json(
        &v.state.lock().unwrap(),
    ))
    .unwrap();
    let departures = spec().check_response("GET", "/v1/projects/web/rolling-release", 200, &body);
    assert!(departures.is_empty(), "{departures:?}");
    tokio::task::block_in_place(|| decide(&p, "approve", &run));
    let (code, out, err) = tokio::task::block_in_place(|| finish(child));
    assert_eq!(code, Some(0), "{out:#}\n{err}");
    assert!(
        stage_detail(&out, "shift").contains("10 % → 50 % → 100 %"),
        "{out:#}"
    );
    {
        let st = v.state.lock().unwrap();
        assert_eq!(st.production.as_deref(), Some(v2.as_str()));
        let rr = st.rr.release.as_ref().unwrap();
        assert_eq!(rr.state, "COMPLETE");
        assert_eq!(
            st.rr.approvals,
            [(1, v2.clone()), (2, v2.clone())],
            "stage 1 approved, then completed"
        );
    }
    assert_eq!(served_by(&v, "v2", 20).await, 20);

    // v3: approved at 10 %, rejected at 50 %: aborted back to v2, the release marked failed.
    let child = start(&p, "v3");
    let run = tokio::task::block_in_place(|| waiting_at(&p, "canary-step-1"));
    tokio::task::block_in_place(|| decide(&p, "approve", &run));
    tokio::task::block_in_place(|| waiting_at(&p, "canary-step-2"));
    tokio::task::block_in_place(|| decide(&p, "reject", &run));
    let (code, out, err) = tokio::task::block_in_place(|| finish(child));
    assert_eq!(code, Some(1), "{out:#}\n{err}");
    let error = out["deployment"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("canary step 2 (50 %)") && error.contains("rejected by"),
        "{error}"
    );
    assert!(
        error.contains("all traffic is back on the stable release"),
        "{error}"
    );
    {
        let st = v.state.lock().unwrap();
        let rr = st.rr.release.as_ref().unwrap();
        assert_eq!(rr.state, "ABORTED");
        assert!(rr.active.is_none());
        assert_eq!(st.production.as_deref(), Some(v2.as_str()));
    }
    assert_eq!(
        served_by(&v, "v2", 50).await,
        50,
        "every request reaches v2"
    );
    let releases = p.json(&["releases", "--env", "prod"]);
    let failed = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "v3")
        .unwrap();
    assert_eq!(failed["state"], "failed", "{releases:#}");

    // The config was written once, with the CLI's body; every request fitted the document.
    let patches = v
        .server
        .seen()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/rolling-release/config"))
        .count();
    assert_eq!(patches, 1);
    assert!(v.server.assert_fits_spec() > 0);

    // A plan without Rolling Releases: validate says the target cannot do a canary here.
    v.state.lock().unwrap().rr.billing = "plan_not_supported";
    let (code, out, err) = tokio::task::block_in_place(|| finish(start(&p, "v4")));
    assert_eq!(code, Some(1), "{out:#}\n{err}");
    let validate = stage_detail(&out, "validate");
    assert!(validate.contains("canary"), "{validate}\n{out:#}");
}
