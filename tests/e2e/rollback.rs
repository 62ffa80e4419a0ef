//! Watch, automatic rollback, approvals, metric analysis and emergency rollback, through the
//! real binary with the local target, SQLite and a real PostgreSQL.

use std::time::Duration;

use deploy_agent::config::AnalysisConfig;
use deploy_agent::pipeline::analysis::{self, Verdict};
use deploy_agent_tests::http::{Behaviour, TestServer};
use deploy_agent_tests::sqlite_count;
use serde_json::Value;

use crate::project::{Project, stderr, webhook_table, webhook_texts};

const NOT_BROKEN: &str = "\n[[environments.local.checks]]\nname = \"not broken\"\nstage = \"watch\"\ncommand = \"! grep -q broken sites/local/current/index.html\"\n";

fn hook(server: &TestServer) -> String {
    webhook_table("hook", server, "")
}

fn texts(server: &TestServer) -> Vec<String> {
    webhook_texts(server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_failing_its_watch_is_rolled_back_and_the_previous_one_serves_again() {
    let server = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let p = Project::new(
        "notifiers = [\"hook\"]",
        &format!("{}{NOT_BROKEN}", hook(&server)),
    );
    let (code, v1) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0, "{v1:#}");
    let first = v1["deployment"]["release_id"].as_str().unwrap().to_string();

    std::fs::write(p.path("site/index.html"), "<h1>broken</h1>").unwrap();
    let (code, v2) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 1, "{v2:#}");
    let d = &v2["deployment"];
    assert_eq!(d["status"], "rolled_back");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("check `not broken` failed"),
        "{d:#}"
    );
    let stages: Vec<(&str, &str)> = v2["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert!(stages.contains(&("promote", "done")), "{stages:?}");
    assert!(stages.contains(&("watch", "failed")), "{stages:?}");
    assert!(stages.contains(&("rollback", "done")), "{stages:?}");
    // The previous release serves again, and the rolled-back one is marked failed.
    assert_eq!(p.current().unwrap(), format!("releases/{first}"));
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v1</h1>"
    );
    let releases = p.json(&["releases", "--env", "local"]);
    assert_eq!(releases[0]["state"], "failed");
    assert_eq!(releases[1]["state"], "live");
    // Notified with the reason and the evidence.
    let said = texts(&server);
    let rolled = said
        .iter()
        .find(|t| t.contains("rolled back automatically"))
        .unwrap_or_else(|| panic!("{said:?}"));
    assert!(rolled.contains(&first), "{rolled}");
    let audit = p.json(&["audit", "list", "--env", "local"]);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "release.rolled-back")
        .unwrap();
    assert!(
        entry["detail"].as_str().unwrap().contains("not broken"),
        "{entry:#}"
    );
}

#[test]
fn policy_notify_keeps_the_failing_release_live() {
    let p = Project::new(
        "",
        &format!("{NOT_BROKEN}\n[environments.local.rollback]\npolicy = \"notify\"\n"),
    );
    let (code, _) = p.deploy();
    assert_eq!(code, 0);
    std::fs::write(p.path("site/index.html"), "<h1>broken</h1>").unwrap();
    let (code, v) = p.deploy();
    assert_eq!(code, 1);
    assert_eq!(v["deployment"]["status"], "failed");
    assert!(
        v["deployment"]["error"]
            .as_str()
            .unwrap()
            .contains("rollback policy `notify`")
    );
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>broken</h1>"
    );
}

fn prometheus_body(result: &str) -> String {
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#)
}

fn analysis_for(server: &TestServer, count: u32) -> AnalysisConfig {
    AnalysisConfig {
        name: "5xx rate".into(),
        prometheus: format!("http://127.0.0.1:{}", server.port),
        query: "sum(rate(http_requests_total{code=~\"5..\"}[1m]))".into(),
        max: Some(0.01),
        min: None,
        interval: Duration::from_millis(20),
        count,
        failure_limit: 1,
        consecutive_success_limit: 0,
        inconclusive_limit: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn analysis_passes_fails_and_is_inconclusive_against_a_prometheus_stand_in() {
    let sample = |v: &str| {
        prometheus_body(&format!(
            r#"[{{"metric":{{}},"value":[1700000000.1,"{v}"]}}]"#
        ))
    };
    let healthy = TestServer::start(Behaviour::Respond(200, sample("0.002"))).await;
    let r = analysis::run(&analysis_for(&healthy, 3), None).await;
    assert_eq!(r.verdict, Verdict::Successful, "{}", r.detail);
    assert_eq!(r.measurements.len(), 3);
    let seen = healthy.seen();
    assert!(
        seen[0].target.starts_with(
            "/api/v1/query?query=sum%28rate%28http_requests_total%7Bcode%3D~%225..%22%7D"
        ),
        "{}",
        seen[0].target
    );

    // Two failures exceed failure_limit = 1; the evidence names the values.
    let failing = TestServer::start(Behaviour::Respond(200, sample("0.2"))).await;
    let r = analysis::run(&analysis_for(&failing, 5), None).await;
    assert_eq!(r.verdict, Verdict::Failed);
    assert_eq!(r.measurements.len(), 2, "stops at the limit");
    assert!(r.detail.contains("0.2 (fail), 0.2 (fail)"), "{}", r.detail);
    assert!(r.detail.contains("must be <= 0.01"), "{}", r.detail);

    // No data is not a pass.
    let empty = TestServer::start(Behaviour::Respond(200, prometheus_body("[]"))).await;
    let r = analysis::run(&analysis_for(&empty, 3), None).await;
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(r.detail.contains("no data"), "{}", r.detail);
    let error = TestServer::start(Behaviour::Respond(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
    ))
    .await;
    let r = analysis::run(&analysis_for(&error, 3), None).await;
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(r.detail.contains("bad_data parse error"), "{}", r.detail);
}

fn analysis_table(server: &TestServer) -> String {
    format!(
        "\n[[environments.local.analysis]]\nname = \"errors\"\nprometheus = \"http://127.0.0.1:{}\"\nquery = \"up\"\nmax = 0.01\ninterval_ms = 20\ncount = 2\n",
        server.port
    )
}

/// The evidence the state store recorded for the run a deploy's JSON names.
async fn evidence_of(p: &Project, v: &Value) -> Vec<deploy_agent::store::Evidence> {
    let store = deploy_agent::store::Store::open_dir(&p.path("state"))
        .await
        .unwrap();
    store
        .evidence(v["deployment"]["id"].as_str().unwrap())
        .await
        .unwrap()
}

/// Runs a deploy in the background, waits until it asks for a decision, makes it.
fn deploy_and_decide(p: &Project, decision: &str) -> (i32, Value, String) {
    let (child, run, gate) = p.deploy_to_a_gate();
    let out = p.run(&[decision, &run, "--reason", "checked the dashboards"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = child.wait_with_output().unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    (out.status.code().unwrap_or(-1), v, gate)
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_gates_wait_for_a_person_and_record_who_decided() {
    let p = Project::new(
        "",
        "\n[environments.local.approval]\nbefore = \"promote\"\n",
    );
    let (code, v, gate) = tokio::task::block_in_place(|| deploy_and_decide(&p, "approve"));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(gate, "promote");
    let approve = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "approve")
        .unwrap();
    assert!(
        approve["detail"].as_str().unwrap().contains("approved by"),
        "{approve:#}"
    );
    assert!(
        approve["detail"]
            .as_str()
            .unwrap()
            .contains("checked the dashboards")
    );
    let audit = p.json(&["audit", "list", "--env", "local"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "approval.approved" && e["why"] == "checked the dashboards")
    );

    // Rejected: nothing is promoted.
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let before = p.current();
    let (code, v, _) = tokio::task::block_in_place(|| deploy_and_decide(&p, "reject"));
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["deployment"]["error"]
            .as_str()
            .unwrap()
            .contains("approve: rejected by"),
        "{v:#}"
    );
    assert_eq!(p.current(), before);

    // Nobody answers: it expires.
    let p = Project::new(
        "",
        "\n[environments.local.approval]\nbefore = \"start\"\nexpires_ms = 1000\n",
    );
    let (code, v) = p.deploy();
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["deployment"]["error"]
            .as_str()
            .unwrap()
            .contains("the approval expired"),
        "{v:#}"
    );
    assert!(p.current().is_none());
    assert!(
        !p.path("app.db").exists(),
        "nothing ran before the start gate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inconclusive_analysis_pauses_for_a_decision() {
    let empty = TestServer::start(Behaviour::Respond(200, prometheus_body("[]"))).await;
    let p = Project::new("", &analysis_table(&empty));
    let (code, v, gate) = tokio::task::block_in_place(|| deploy_and_decide(&p, "approve"));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(gate, "analysis");
    assert_eq!(v["analyses"][0]["verdict"], "inconclusive");
    // Each measurement and check result is the run's evidence, as taken (the console's chart).
    let evidence = evidence_of(&p, &v).await;
    let measured: Vec<_> = evidence.iter().filter(|e| e.kind == "analysis").collect();
    assert!(!measured.is_empty(), "{evidence:?}");
    assert!(
        measured.iter().all(|e| e.name == "errors"
            && e.outcome == "inconclusive"
            && e.value.is_none()
            && e.max == Some(0.01)
            && e.stage == "watch"),
        "{measured:?}"
    );
    assert!(
        evidence
            .iter()
            .any(|e| e.kind == "check" && e.outcome == "pass" && e.stage == "verify"),
        "{evidence:?}"
    );
    assert!(evidence.windows(2).all(|w| w[0].seq < w[1].seq));

    // Rejecting an inconclusive analysis after promotion rolls back.
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let (code, v, _) = tokio::task::block_in_place(|| deploy_and_decide(&p, "reject"));
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["deployment"]["status"], "rolled_back");
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v1</h1>"
    );

    // A failing analysis rolls back without asking anyone.
    let failing = TestServer::start(Behaviour::Respond(
        200,
        prometheus_body(r#"[{"metric":{},"value":[1700000000.1,"0.5"]}]"#),
    ))
    .await;
    let p = Project::new("", &analysis_table(&failing));
    let (code, v) = p.deploy();
    assert_eq!(code, 1, "the first release has nothing to return to");
    let evidence = evidence_of(&p, &v).await;
    let values: Vec<(Option<f64>, &str)> = evidence
        .iter()
        .filter(|e| e.kind == "analysis")
        .map(|e| (e.value, e.outcome.as_str()))
        .collect();
    // The first failure ends it (failure_limit 0): one measurement, its value, a fail.
    assert_eq!(values, [(Some(0.5), "fail")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_rollback_on_postgres_restores_the_pre_deploy_backup_exactly() {
    let pg = deploy_agent_tests::postgres::cluster();
    let (app_db, app_url) = pg.database("rollback");
    let p = Project::new("", "");
    p.database_from_env();
    let run = |args: &[&str]| {
        p.command(args)
            .env("DA_TEST_APP_URL", &app_url)
            .output()
            .unwrap()
    };
    let deploy = || {
        let out = run(&["deploy", "--env", "local", "--output", "json"]);
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
        (out.status.code().unwrap(), v)
    };
    let (code, v1) = tokio::task::block_in_place(deploy);
    assert_eq!(code, 0, "{v1:#}");
    let first = v1["deployment"]["release_id"].as_str().unwrap().to_string();
    pg.psql(
        &app_db,
        "INSERT INTO notes (id, title) VALUES (2, 'written while v1 was live'), (3, 'also')",
    );

    // The next release's migration breaks things: drops a column and deletes rows.
    std::fs::write(
        p.path("migrations/20261103090000_cleanup.sql"),
        "DELETE FROM notes WHERE id > 1;\nALTER TABLE notes DROP COLUMN body;\n",
    )
    .unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let (code, v2) = tokio::task::block_in_place(deploy);
    assert_eq!(code, 0, "{v2:#}");
    let backup_id = v2["deployment"]["backup_id"].as_str().unwrap().to_string();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(p.path(&format!("state/backups/local/{backup_id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(pg.psql(&app_db, "SELECT count(*) FROM notes"), "1");
    // A backup of the v2 schema, for the refusal at the end.
    let out = run(&["backup", "create", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v2_backup = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Configured in place: the plan says so, and takes a safety snapshot.
    p.edit_config(
        "url = \"${env:DA_TEST_APP_URL}\"",
        "url = \"${env:DA_TEST_APP_URL}\"\nrollback = \"in-place\"",
    );
    let out = run(&["rollback", "--env", "local", "--full", "--reason", "r"]);
    assert!(
        stderr(&out).contains(
            "restore in place (configured: `rollback = \"in-place\"`): take a safety snapshot"
        ),
        "{}",
        stderr(&out)
    );
    p.edit_config("\nrollback = \"in-place\"", "");
    // A role that may not rename the database (it lacks CREATEDB): the plan falls back to
    // restoring in place, and says why.
    pg.psql(
        &app_db,
        "CREATE ROLE plain_owner LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO plain_owner",
    );
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {app_db} OWNER TO plain_owner"),
    );
    let out = p
        .command(&["rollback", "--env", "local", "--full", "--reason", "r"])
        .env(
            "DA_TEST_APP_URL",
            app_url.replace("postgres@", "plain_owner@"),
        )
        .output()
        .unwrap();
    assert!(
        stderr(&out)
            .contains("restore in place (a swap is not possible here: the role lacks CREATEDB"),
        "{}",
        stderr(&out)
    );
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {app_db} OWNER TO postgres"),
    );

    // In a script, without --yes: refused, nothing changed.
    let out = run(&[
        "rollback",
        "--env",
        "local",
        "--full",
        "--reason",
        "bad migration",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("restore backup {backup_id}"))
            && stderr(&out).contains(&format!(
                "into a new database `{app_db}_rb_<rollback id>` beside the live one"
            ))
            && stderr(&out).contains(&format!(
                "switch in one step: `{app_db}` is renamed `{app_db}_before_<rollback id>`"
            )),
        "the plan is shown: {}",
        stderr(&out)
    );

    // A backup file changed on disk: refused by its checksum, the live database untouched and
    // nothing left staged beside it.
    let data = p.path(&format!("state/backups/local/{backup_id}.backup"));
    let original = std::fs::read(&data).unwrap();
    let mut tampered = original.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x55;
    std::fs::write(&data, &tampered).unwrap();
    let out = run(&[
        "rollback", "--env", "local", "--full", "--reason", "r", "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("checksum mismatch")
            || stderr(&out).contains("checksum mismatch"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert_eq!(pg.psql(&app_db, "SELECT count(*) FROM notes"), "1");
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{app_db}_rb_%'")
        ),
        "0"
    );
    std::fs::write(&data, &original).unwrap();
    // The app followed nothing either: v2 is still live.
    assert_ne!(p.current().unwrap(), format!("releases/{first}"));

    let out = run(&[
        "rollback",
        "--env",
        "local",
        "--full",
        "--reason",
        "bad migration",
        "--yes",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["record"]["status"], "succeeded");
    assert_eq!(r["record"]["backup_id"], backup_id.as_str());
    assert_eq!(r["record"]["to_release"], first.as_str());
    // Restored beside the live database, then switched with the app in one step: no dump of
    // the database as it was, which is kept, renamed.
    assert!(r["record"]["safety_backup"].is_null(), "{r:#}");
    let swap = &r["record"]["database_swap"];
    assert_eq!(swap["phase"], "switched", "{r:#}");
    assert_eq!(swap["live"], app_db.as_str());
    assert!(swap["window_us"].as_u64().is_some(), "{r:#}");
    let aside = swap["aside"].as_str().unwrap().to_string();
    assert!(aside.starts_with(&format!("{app_db}_before_")), "{aside}");
    let names: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lock", "restore", "switch", "verify"]);
    let switch = r["steps"][2]["detail"].as_str().unwrap();
    assert!(
        switch.contains(&format!("kept as `{aside}`"))
            && switch.contains(&format!("{first} is live")),
        "{switch}"
    );
    // The database from before, as v2 left it: one note, no `body` column; nothing staged left.
    assert_eq!(pg.psql(&aside, "SELECT count(*) FROM notes"), "1");
    assert_eq!(
        pg.psql(&aside, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'body'"),
        "0"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{app_db}_rb_%'")
        ),
        "0"
    );
    // The database is the pre-deploy backup: schema fingerprint and row counts.
    let fingerprint = deploy_agent::db::schema::fingerprint(&app_url)
        .await
        .unwrap();
    assert_eq!(
        fingerprint,
        manifest["schema_fingerprint"].as_str().unwrap()
    );
    assert_eq!(pg.psql(&app_db, "SELECT count(*) FROM notes"), "3");
    assert_eq!(
        pg.psql(&app_db, "SELECT count(*) FROM _sqlx_migrations"),
        "2"
    );
    assert_eq!(p.current().unwrap(), format!("releases/{first}"));

    // A backup of the newer schema: restoring it under v1 is refused unless forced.
    let safety = v2_backup;
    let out = run(&[
        "rollback",
        "--env",
        "local",
        "--db-only",
        "--to",
        &first,
        "--backup",
        &safety,
        "--reason",
        "oops",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("backup {safety} holds schema 20261103090000, but release {first} runs on schema 20261102090000")), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        pg.psql(&app_db, "SELECT count(*) FROM notes"),
        "3",
        "nothing changed"
    );
}

#[test]
fn full_rollback_with_down_migrations_keeps_data_and_takes_a_snapshot() {
    let p = Project::new("", "");
    let (code, v1) = p.deploy();
    assert_eq!(code, 0, "{v1:#}");
    std::fs::write(
        p.path("migrations/20261103090000_archive.up.sql"),
        "ALTER TABLE notes ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;\n",
    )
    .unwrap();
    std::fs::write(
        p.path("migrations/20261103090000_archive.down.sql"),
        "ALTER TABLE notes DROP COLUMN archived;\n",
    )
    .unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let (code, _) = p.deploy();
    assert_eq!(code, 0);
    let out = p.run(&[
        "rollback",
        "--env",
        "local",
        "--full",
        "--db-strategy",
        "down",
        "--reason",
        "r",
        "--yes",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lock", "app", "snapshot", "down", "verify"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("sqlite:{}", p.path("app.db").display());
    assert_eq!(rt.block_on(sqlite_count(&url, "_sqlx_migrations")), 2);
    assert_eq!(rt.block_on(sqlite_count(&url, "notes")), 1, "data kept");
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v1</h1>"
    );
}
