//! The deploy pipeline, through the real binary: the local target plugin, a real SQLite
//! database with migrations, the state store, crashes at every step boundary.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use deploy_agent::store::{AuditEntry, Owner, Store, StoreError};
use deploy_agent_tests::http::{Behaviour, TestServer};
use deploy_agent_tests::{bin, fixtures, repo_root, sqlite_count};

use crate::project::{Project, stderr};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn deploy_runs_every_stage_and_records_everything() {
    let p = Project::new("", "");
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    let stages: Vec<(&str, &str)> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            ("lock", "done"),
            ("validate", "done"),
            ("backup", "done"),
            ("migrate", "done"),
            ("deploy", "done"),
            ("verify", "done"),
            ("promote", "done"),
            ("watch", "done"),
            ("notify", "done"),
        ]
    );
    let d = &v["deployment"];
    let release = d["release_id"].as_str().unwrap();
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["schema_before"], Value::Null);
    assert_eq!(d["schema_after"], "20261102090000");
    assert_eq!(p.current().unwrap(), format!("releases/{release}"));
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v1</h1>"
    );
    assert!(p.path("sites/local/current/assets/app.css").is_file());
    // The migrations ran on the app's database, after a backup that the release records.
    assert_eq!(sqlite_count(&p.db_url(), "_sqlx_migrations").await, 2);
    assert_eq!(p.backups(), 1);
    let releases = p.json(&["releases", "--env", "local"]);
    assert_eq!(releases[0]["state"], "live");
    assert_eq!(releases[0]["backup_id"], d["backup_id"]);
    assert_eq!(releases[0]["schema_version"], "20261102090000");
    // The state store is private to the agent's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.path("state/state.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second release: no pending migrations, so no backup; the first becomes previous.
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let (code, v2) = p.deploy();
    assert_eq!(code, 0, "{v2:#}");
    let d2 = &v2["deployment"];
    assert_eq!(d2["previous_release"], release);
    assert_ne!(
        d2["version"], d["version"],
        "the version follows the digest"
    );
    assert_eq!(p.backups(), 1);
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v2</h1>"
    );
    let releases = p.json(&["releases", "--env", "local"]);
    let states: Vec<&str> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["live", "superseded"]);

    // The audit log tells the story and its chain is intact.
    let audit = p.json(&["audit", "list", "--env", "local"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "deploy.started",
            "backup.created",
            "migrate.applied",
            "release.promoted",
            "deploy.succeeded",
            "deploy.started",
            "release.promoted",
            "deploy.succeeded"
        ]
    );
    let out = p.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = p.json(&["status", "--env", "local"]);
    assert_eq!(status["lock"], Value::Null, "the lock is released");
}

#[test]
fn a_failed_check_stops_before_promotion_and_keeps_the_live_release() {
    let p = Project::new("", "");
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    let live = p.current().unwrap();
    // The next artifact lacks index.html: the verify check fails on the staged release.
    std::fs::remove_file(p.path("site/index.html")).unwrap();
    std::fs::write(p.path("site/other.html"), "x").unwrap();
    let (code, v) = p.deploy();
    assert_eq!(code, 1, "{v:#}");
    let d = &v["deployment"];
    assert_eq!(d["status"], "failed");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .starts_with("verify: check `staged release is complete` failed"),
        "{d:#}"
    );
    assert_eq!(p.current().unwrap(), live, "nothing was promoted");
    let last = v["stages"].as_array().unwrap();
    assert!(last.iter().all(|s| s["stage"] != "promote"));
    let releases = p.json(&["releases", "--env", "local"]);
    assert_eq!(releases[0]["state"], "failed");
    assert_eq!(releases[1]["state"], "live");
}

/// kill -9 at every step boundary, then deploy again: the run is found, resumed, and ends
/// with the release live, the database migrated once, one backup, and the lock free.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_at_any_step_boundary_is_resumed_by_the_next_start() {
    let stages = [
        "validate", "backup", "migrate", "deploy", "verify", "promote", "watch", "notify",
    ];
    for stage in stages {
        for when in ["before", "after"] {
            let point = format!("{when}:{stage}");
            let p = Project::new("", "");
            let out = p
                .command(&["deploy", "--env", "local"])
                .env("DEPLOY_AGENT_FAILPOINT", &point)
                .output()
                .unwrap();
            assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));

            // The store says exactly where it stopped, and the lock is still held.
            let status = p.json(&["status", "--env", "local"]);
            let crashed = status["last"]["id"].as_str().unwrap().to_string();
            assert_eq!(status["last"]["status"], "running", "{point}");
            assert_eq!(status["last"]["stage"], stage, "{point}");
            assert!(status["lock"]["owner"].is_string(), "{point}: {status:#}");
            let steps = status["steps"].as_array().unwrap();
            let last = steps.last().unwrap();
            assert_eq!(last["stage"], stage, "{point}");
            assert_eq!(
                last["status"], "started",
                "{point}: the end was never journaled"
            );

            let (code, v) = p.deploy();
            assert_eq!(code, 0, "{point}: {v:#}");
            assert_eq!(v["recovered"][0]["action"], "resumed", "{point}");
            assert_eq!(
                v["recovered"][0]["deployment_id"],
                crashed.as_str(),
                "{point}"
            );
            assert_eq!(v["recovered"][0]["stopped_in"], stage, "{point}");
            let d = &v["deployment"];
            assert_eq!(d["id"], crashed.as_str(), "{point}: the same run finished");
            assert_eq!(d["status"], "succeeded", "{point}");
            let release = d["release_id"].as_str().unwrap();
            assert_eq!(
                p.current().unwrap(),
                format!("releases/{release}"),
                "{point}"
            );
            assert_eq!(
                sqlite_count(&p.db_url(), "_sqlx_migrations").await,
                2,
                "{point}"
            );
            assert_eq!(p.backups(), 1, "{point}: one backup, never two");
            let releases = p.json(&["releases", "--env", "local"]);
            assert_eq!(
                releases.as_array().unwrap().len(),
                1,
                "{point}: {releases:#}"
            );
            assert_eq!(releases[0]["state"], "live", "{point}");
            let dirs: Vec<_> = std::fs::read_dir(p.path("sites/local/releases"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".json"))
                .collect();
            assert_eq!(
                dirs,
                [release.to_string()],
                "{point}: no partial copies left"
            );
            let status = p.json(&["status", "--env", "local"]);
            assert_eq!(status["lock"], Value::Null, "{point}");
            let audit = p.json(&["audit", "list", "--env", "local"]);
            assert!(
                audit
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["action"] == "deploy.resumed"),
                "{point}"
            );
            assert!(p.run(&["audit", "verify"]).status.success(), "{point}");
        }
    }
}

#[test]
fn an_interrupted_run_of_another_release_is_superseded() {
    let p = Project::new("", "");
    let out = p
        .command(&["deploy", "--env", "local"])
        .env("DEPLOY_AGENT_FAILPOINT", "after:deploy")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9));
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["recovered"][0]["action"], "superseded");
    let history = p.json(&["history", "--env", "local"]);
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["deployment"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "superseded"]);
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v2</h1>"
    );
}

#[test]
fn plan_shows_every_step_and_changes_nothing() {
    let p = Project::new("", "");
    let out = p.run(&["plan", "--env", "local"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for line in [
        "1. lock",
        "2. validate",
        "3. backup    back up the database",
        "4. migrate   apply 2 migration(s)",
        "dry run: 20261101090000 ok",
        "5. deploy",
        "6. verify",
        "7. promote",
        "8. watch",
        "9. notify",
        "Nothing was changed.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // `deploy --dry-run` is the same plan (the dry run's timings aside).
    let dry = p.run(&["deploy", "--env", "local", "--dry-run"]);
    let untimed = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| {
                l.split(", ")
                    .filter(|part| !part.ends_with(" ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect()
    };
    assert_eq!(
        untimed(&String::from_utf8_lossy(&dry.stdout)),
        untimed(&text)
    );
    assert!(
        !p.path("sites/local/releases").exists()
            || std::fs::read_dir(p.path("sites/local/releases"))
                .unwrap()
                .next()
                .is_none()
    );
    assert_eq!(p.backups(), 0);
    let history = p.json(&["history", "--env", "local"]);
    assert_eq!(history, serde_json::json!([]));
}

#[test]
fn validation_blocks_and_says_which_validator_said_what() {
    // A strict environment, a missing required variable, and a pinned digest that differs.
    let p = Project::new(
        "strict = true\n[environments.local.validate]\nrequired_env = [\"DEPLOY_AGENT_TEST_UNSET_VAR\"]",
        "",
    );
    let toml = std::fs::read_to_string(p.path("agent.toml"))
        .unwrap()
        .replace(
            "path = \"site\"\n",
            &format!("path = \"site\"\nsha256 = \"{}\"\n", "ab".repeat(32)),
        );
    std::fs::write(p.path("agent.toml"), toml).unwrap();
    let (code, v) = p.deploy();
    assert_eq!(code, 1, "{v:#}");
    let findings: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["source"].as_str().unwrap().into(),
                f["code"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        findings.contains(&("builtin:env".into(), "env-missing".into())),
        "{findings:?}"
    );
    assert!(
        findings.contains(&("builtin:artifact".into(), "digest-mismatch".into())),
        "{findings:?}"
    );
    assert!(
        v["deployment"]["error"]
            .as_str()
            .unwrap()
            .starts_with("validate: 2 blocking finding(s)"),
        "{v:#}"
    );
    // Nothing changed: no backup, no migration, no release.
    assert_eq!(p.backups(), 0);
    assert!(p.current().is_none());
    assert_eq!(
        v["stages"].as_array().unwrap().last().unwrap()["stage"],
        "notify"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notifiers_hear_every_transition_and_a_failing_one_never_fails_the_deploy() {
    for (status, expect_failures) in [(200, false), (500, true)] {
        let server = TestServer::start(Behaviour::Respond(status, "ok".into())).await;
        let tables = format!(
            "[plugins.hook]\npath = {:?}\n[plugins.hook.policy]\nallowed_hosts = [\"127.0.0.1\"]\nallow_ip_ranges = [\"127.0.0.0/8\"]\n[plugins.hook.config]\nurl = {:?}\n",
            fixtures::WEBHOOK,
            server.url("127.0.0.1", "/hook")
        );
        let p = Project::new("notifiers = [\"hook\"]", &tables);
        let (out, _p) = tokio::task::spawn_blocking(move || {
            let out = p.run(&["deploy", "--env", "local", "--output", "json"]);
            (out, p)
        })
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let texts: Vec<String> = server
            .seen()
            .iter()
            .map(|s| {
                let body: Value = serde_json::from_slice(&s.body).unwrap();
                body["text"].as_str().unwrap().to_string()
            })
            .collect();
        if expect_failures {
            // Three attempts each for the retryable 500s, and the deploy still succeeded.
            assert!(!v["notify_failures"].as_array().unwrap().is_empty());
            assert_eq!(texts.len() % 3, 0, "{texts:?}");
        } else {
            assert_eq!(v["notify_failures"], serde_json::json!([]));
            assert!(
                texts.first().unwrap().starts_with("Deploying "),
                "{texts:?}"
            );
            assert!(texts.contains(&"migrate done".to_string()), "{texts:?}");
            assert!(
                texts.last().unwrap().contains("is live on local"),
                "{texts:?}"
            );
            // Every stage started and finished, in order.
            let i = |t: &str| texts.iter().position(|x| x == t).unwrap();
            assert!(i("validate started") < i("validate done"));
            assert!(i("deploy done") < i("promote started"));
        }
    }
}

#[test]
fn extends_inherits_field_by_field_and_reports_cycles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    let path = dir.path().join("agent.toml");
    let text = format!(
        r#"[plugins.local]
path = "{local}"
[plugins.local.config]
keep = 2
[environments.staging]
strict = true
notifiers = []
[environments.staging.target]
plugin = "local"
config = {{ root = "/srv/staging", keep = 4 }}
[environments.staging.deploy]
timeout_ms = 5000
backup = "always"
[[environments.staging.checks]]
name = "up"
tcp = "localhost:80"
[environments.production]
extends = "staging"
[environments.production.target]
config = {{ root = "/srv/production" }}
[environments.production.deploy]
timeout_ms = 9000
"#,
        local = fixtures::LOCAL
    );
    let config = deploy_agent::config::Config::parse(&path, &text).unwrap();
    let prod = config.environment("production").unwrap();
    assert!(prod.strict, "inherited");
    assert_eq!(prod.checks.len(), 1, "inherited");
    assert_eq!(prod.deploy.timeout.as_millis(), 9000, "overridden");
    assert_eq!(
        prod.deploy.backup,
        deploy_agent::config::BackupWhen::Always,
        "inherited"
    );
    let target = prod.target.as_ref().unwrap();
    assert_eq!(target.plugin, "local");
    assert_eq!(target.config["root"], "/srv/production");
    assert_eq!(target.config["keep"], 4, "the parent's key, not overridden");

    let cyclic = "[environments.a]\nextends = \"b\"\n[environments.b]\nextends = \"a\"\n";
    let err = deploy_agent::config::Config::parse(&path, cyclic)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`extends` makes a cycle: a -> b -> a"),
        "{err}"
    );
    assert!(err.contains("agent.toml:2:"), "{err}");
    let unknown = "[environments.a]\nextends = \"nope\"\n";
    let err = deploy_agent::config::Config::parse(&path, unknown)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`extends` names no environment `nope`"),
        "{err}"
    );
    let bad_check = "[environments.a]\n[[environments.a.checks]]\nname = \"x\"\nhttp = \"http://a\"\ntcp = \"a:1\"\n";
    let err = deploy_agent::config::Config::parse(&path, bad_check)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exactly one of `http`, `tcp` and `command`"),
        "{err}"
    );
}

#[test]
fn the_repository_agent_toml_matches_the_published_schema() {
    // Every key agent.toml uses is in the schema (which forbids unknown keys).
    let out = Command::new(bin())
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = std::fs::read_to_string(repo_root().join("agent.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    fn walk(schema: &Value, value: &toml::Value, at: &str) {
        match value {
            toml::Value::Table(t) if schema["type"] == "object" => {
                for (k, v) in t {
                    let sub = schema["properties"]
                        .get(k)
                        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                    match sub {
                        Some(s) => walk(s, v, &format!("{at}.{k}")),
                        None if schema["properties"].is_null() => {}
                        None => panic!("{at}.{k} is not in the schema"),
                    }
                }
            }
            toml::Value::Array(items) if schema["type"] == "array" => {
                for item in items {
                    walk(&schema["items"], item, &format!("{at}[]"));
                }
            }
            _ => {}
        }
    }
    walk(&schema, &toml::Value::Table(doc), "agent.toml");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_blocks_while_renewed_and_a_dead_holder_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let me = Owner::this_process();
    let (lease, previous) = store
        .acquire("prod", &me, "run-1", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(previous.is_none());
    // Another agent (elsewhere) cannot take it while the lease is live.
    let other = Owner("elsewhere:42:42".into());
    match store
        .acquire("prod", &other, "run-2", std::time::Duration::from_secs(60))
        .await
    {
        Err(StoreError::Locked {
            holder, deployment, ..
        }) => {
            assert_eq!(holder, me.0);
            assert_eq!(deployment, "run-1");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    lease.release().await.unwrap();

    // A holder on this host whose process is gone is taken over at once.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = Owner(format!("{}:{dead_pid}:1", deploy_agent::store::hostname()));
    assert!(dead.is_dead_here());
    let (lease, _) = store
        .acquire("prod", &dead, "run-3", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    std::mem::forget(lease); // the "dead" agent never releases it
    let (lease, previous) = store
        .acquire("prod", &me, "run-4", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(previous.unwrap().deployment_id, "run-3");
    lease.release().await.unwrap();

    // An expired lease of a holder elsewhere is taken over too.
    let path = dir.path().join("state.db");
    let (lease, _) = store
        .acquire("prod", &other, "run-5", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    std::mem::forget(lease);
    assert!(
        store
            .acquire("prod", &me, "run-6", std::time::Duration::from_secs(60))
            .await
            .is_err()
    );
    sql(&path, "UPDATE locks SET expires_at = 0").await;
    let (_lease, previous) = store
        .acquire("prod", &me, "run-6", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(previous.unwrap().owner, "elsewhere:42:42");
}

async fn sql(path: &Path, statement: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_chain_detects_an_edited_or_deleted_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    for i in 1..=5 {
        store
            .audit(AuditEntry {
                actor: "alice".into(),
                action: "deploy.started".into(),
                environment: Some("prod".into()),
                subject: Some(format!("run-{i}")),
                why: Some("release day".into()),
                detail: None,
            })
            .await
            .unwrap();
    }
    let clean = store.audit_verify().await.unwrap();
    assert_eq!(clean.entries, 5);
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    drop(store);

    let path = dir.path().join("state.db");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[agent]\nstate_dir = {:?}\n", dir.path())).unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--config", config.to_str().unwrap()];
        args.extend(extra);
        let out = Command::new(bin()).args(&args).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(verify(&[]).0, 0);

    // Truncating the newest entry leaves a valid chain: only the recorded head shows it.
    let head = clean.head.clone();
    sql(&path, "DELETE FROM audit WHERE seq = 5").await;
    assert_eq!(verify(&[]).0, 0);
    let (code, text) = verify(&["--expect-head", &head]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("entries were removed from the end"), "{text}");

    sql(&path, "UPDATE audit SET actor = 'mallory' WHERE seq = 2").await;
    let (code, text) = verify(&[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("entry 2 was altered"), "{text}");

    sql(
        &path,
        "UPDATE audit SET actor = 'alice' WHERE seq = 2; DELETE FROM audit WHERE seq = 3",
    )
    .await;
    let (code, text) = verify(&[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("entry 3 is missing"), "{text}");
    assert!(text.contains("entry 4 does not follow"), "{text}");
}

/// A fleet's set-up: the state store and the app's database both on PostgreSQL (a real,
/// throwaway cluster), the backup through real pg_dump, and retention that never removes the
/// backup a live release depends on.
#[test]
fn postgres_state_store_and_database_and_protected_backups() {
    let pg = deploy_agent_tests::postgres::cluster();
    let (state_db, state_url) = pg.database("state");
    let (app_db, app_url) = pg.database("app");
    let p = Project::new("", "");
    let toml = std::fs::read_to_string(p.path("agent.toml"))
        .unwrap()
        .replace(
            "state_dir = \"state\"\n",
            "state_dir = \"state\"\nstate_url = \"${env:DA_TEST_STATE_URL}\"\n",
        )
        .replace(
            "url = \"sqlite:app.db\"",
            "url = \"${env:DA_TEST_APP_URL}\"",
        )
        + "\n[environments.local.backup]\nkeep_last = 0\nkeep_daily = 0\nkeep_weekly = 0\n";
    std::fs::write(p.path("agent.toml"), toml).unwrap();
    let run = |args: &[&str]| {
        p.command(args)
            .env("DA_TEST_STATE_URL", &state_url)
            .env("DA_TEST_APP_URL", &app_url)
            .output()
            .unwrap()
    };
    let out = run(&["deploy", "--env", "local", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup_id = v["deployment"]["backup_id"].as_str().unwrap().to_string();
    assert_eq!(
        pg.psql(&state_db, "SELECT status FROM deployments"),
        "succeeded"
    );
    assert_eq!(
        pg.psql(
            &state_db,
            "SELECT count(*) FROM releases WHERE state = 'live'"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(&app_db, "SELECT count(*) FROM _sqlx_migrations"),
        "2"
    );
    assert!(run(&["audit", "verify"]).status.success());
    assert!(
        !p.path("state/state.db").exists(),
        "nothing written to SQLite"
    );

    // A manual backup nobody depends on is pruned; the release's backup is kept.
    let out = run(&["backup", "create", "--env", "local"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(p.backups(), 2);
    let out = run(&["backup", "prune", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deleted: Vec<String> = serde_json::from_value(pruned["deleted"].clone()).unwrap();
    assert_eq!(pruned["offsite_deleted"], serde_json::json!([]));
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_ne!(deleted[0], backup_id);
    assert!(
        p.path(&format!("state/backups/local/{backup_id}.backup"))
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_probe_http_tcp_and_commands_with_retries() {
    use deploy_agent::config::{CheckConfig, CheckStage, Probe};
    use deploy_agent::pipeline::checks::{Subst, run};
    use std::time::Duration;

    let server = TestServer::start(Behaviour::Respond(
        200,
        r#"{"status":"ok","checks":[{"db":true}]}"#.into(),
    ))
    .await;
    let check = |probe: Probe, retries: u32| CheckConfig {
        name: "c".into(),
        probe,
        stage: CheckStage::Verify,
        timeout: Duration::from_secs(5),
        retries,
        interval: Duration::from_millis(10),
    };
    let http = |path: &str,
                status: Option<u16>,
                body: Option<&str>,
                pointer: Option<&str>,
                equals: Option<Value>| Probe::Http {
        url: format!("{{url}}{path}"),
        expect_status: status,
        body_contains: body.map(str::to_string),
        json_pointer: pointer.map(str::to_string),
        json_equals: equals,
        max_latency: None,
    };
    let subst = Subst {
        url: Some(format!("http://127.0.0.1:{}", server.port)),
        release: "r1".into(),
        environment: "local".into(),
    };
    let base = Path::new(".");

    let ok = run(
        &check(
            http(
                "/healthz",
                None,
                Some("\"ok\""),
                Some("/checks/0/db"),
                Some(Value::Bool(true)),
            ),
            0,
        ),
        &subst,
        base,
    )
    .await;
    assert!(ok.passed, "{}", ok.detail);
    assert_eq!(server.seen().last().unwrap().target, "/healthz");

    let wrong_status = run(
        &check(http("/", Some(204), None, None, None), 2),
        &subst,
        base,
    )
    .await;
    assert!(!wrong_status.passed);
    assert_eq!(wrong_status.attempts, 3, "retried twice");
    assert!(
        wrong_status.detail.contains("status 200, expected 204"),
        "{}",
        wrong_status.detail
    );

    let wrong_value = run(
        &check(
            http(
                "/",
                None,
                None,
                Some("/status"),
                Some(Value::String("degraded".into())),
            ),
            0,
        ),
        &subst,
        base,
    )
    .await;
    assert!(
        wrong_value
            .detail
            .contains("/status is \"ok\", expected \"degraded\""),
        "{}",
        wrong_value.detail
    );
    let missing = run(
        &check(http("/", None, Some("nope"), None, None), 0),
        &subst,
        base,
    )
    .await;
    assert!(
        missing.detail.contains("does not contain \"nope\""),
        "{}",
        missing.detail
    );
    let no_url = run(
        &check(http("/", None, None, None, None), 0),
        &Subst {
            url: None,
            ..subst.clone()
        },
        base,
    )
    .await;
    assert!(
        no_url.detail.contains("gave this release no URL"),
        "{}",
        no_url.detail
    );

    let tcp = run(
        &check(
            Probe::Tcp {
                address: format!("127.0.0.1:{}", server.port),
            },
            0,
        ),
        &subst,
        base,
    )
    .await;
    assert!(tcp.passed, "{}", tcp.detail);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = run(
        &check(
            Probe::Tcp {
                address: format!("127.0.0.1:{closed_port}"),
            },
            0,
        ),
        &subst,
        base,
    )
    .await;
    assert!(
        !refused.passed && refused.detail.contains("cannot connect"),
        "{}",
        refused.detail
    );

    // A command that passes on its third attempt: retries are real attempts.
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("n");
    let cmd = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; test $n -ge 3 && test {{release}} = r1 && test {{env}} = local",
        c = counter.display()
    );
    let flaky = run(&check(Probe::Command { command: cmd }, 5), &subst, base).await;
    assert!(flaky.passed, "{}", flaky.detail);
    assert_eq!(flaky.attempts, 3);
    let failing = run(
        &check(
            Probe::Command {
                command: "echo broken >&2; exit 3".into(),
            },
            0,
        ),
        &subst,
        base,
    )
    .await;
    assert!(
        failing.detail.contains("exited 3: broken"),
        "{}",
        failing.detail
    );
}

/// The second release adds a migration; the run dies after promoting it.
pub(crate) fn crash_a_second_release(p: &Project) -> (String, String) {
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    let first = v["deployment"]["release_id"].as_str().unwrap().to_string();
    std::fs::write(
        p.path("migrations/20261103090000_archive.sql"),
        "ALTER TABLE notes ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;\nINSERT INTO notes (id, title) VALUES (2, 'written by the new release');\n",
    )
    .unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let out = p
        .command(&["deploy", "--env", "local"])
        .env("DEPLOY_AGENT_FAILPOINT", "after:promote")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
    let status = p.json(&["status", "--env", "local"]);
    let crashed = status["last"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v2</h1>",
        "the crash came after the switch"
    );
    (first, crashed)
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_rollback_restores_the_previous_release_and_the_database() {
    let p = Project::new("", "");
    let (first, crashed) = crash_a_second_release(&p);
    assert_eq!(sqlite_count(&p.db_url(), "_sqlx_migrations").await, 3);
    assert_eq!(sqlite_count(&p.db_url(), "notes").await, 2);

    let v = p.json(&["recover", "--env", "local", "--rollback"]);
    assert_eq!(v["recovered"][0]["action"], "rolled back", "{v:#}");
    assert_eq!(v["recovered"][0]["deployment_id"], crashed.as_str());
    let detail = v["recovered"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{first} is live again")),
        "{detail}"
    );
    assert!(detail.contains("database restored from"), "{detail}");
    assert_eq!(v["outcome"], Value::Null, "nothing new was started");

    assert_eq!(p.current().unwrap(), format!("releases/{first}"));
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v1</h1>"
    );
    assert_eq!(sqlite_count(&p.db_url(), "_sqlx_migrations").await, 2);
    assert_eq!(sqlite_count(&p.db_url(), "notes").await, 1);
    let releases = p.json(&["releases", "--env", "local"]);
    let states: Vec<(&str, &str)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&(first.as_str(), "live")), "{states:?}");
    assert_eq!(
        states.iter().filter(|(_, s)| *s == "live").count(),
        1,
        "{states:?}"
    );
    let history = p.json(&["history", "--env", "local", "--id", &crashed]);
    assert_eq!(history[0]["deployment"]["status"], "rolled_back");
    let status = p.json(&["status", "--env", "local"]);
    assert_eq!(status["lock"], Value::Null);
    assert!(p.run(&["audit", "verify"]).status.success());
    // Nothing left to recover.
    let v = p.json(&["recover", "--env", "local"]);
    assert_eq!(v["recovered"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_resumes_by_default_and_on_interrupt_rollback_undoes_before_deploying() {
    let p = Project::new("", "");
    let (_, crashed) = crash_a_second_release(&p);
    let v = p.json(&["recover", "--env", "local"]);
    assert_eq!(v["recovered"][0]["action"], "resumed", "{v:#}");
    assert_eq!(v["outcome"]["deployment"]["id"], crashed.as_str());
    assert_eq!(v["outcome"]["deployment"]["status"], "succeeded");
    assert_eq!(sqlite_count(&p.db_url(), "_sqlx_migrations").await, 3);

    // With on_interrupt = "rollback", the next deploy undoes the dead run first.
    let p = Project::new("", "");
    let toml = std::fs::read_to_string(p.path("agent.toml"))
        .unwrap()
        .replace(
            "poll_interval_ms = 10\n",
            "poll_interval_ms = 10\non_interrupt = \"rollback\"\n",
        );
    std::fs::write(p.path("agent.toml"), toml).unwrap();
    let (first, crashed) = crash_a_second_release(&p);
    std::fs::write(p.path("site/index.html"), "<h1>v3</h1>").unwrap();
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["recovered"][0]["action"], "rolled back");
    assert_eq!(v["recovered"][0]["deployment_id"], crashed.as_str());
    assert_eq!(v["deployment"]["previous_release"], first.as_str());
    // The restored database was migrated again by the new run.
    assert_eq!(sqlite_count(&p.db_url(), "_sqlx_migrations").await, 3);
    assert_eq!(sqlite_count(&p.db_url(), "notes").await, 2);
    let audit = p.json(&["audit", "list", "--env", "local"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "deploy.rolled-back")
    );
}

#[test]
fn a_release_with_a_link_out_of_the_targets_directory_is_never_promoted() {
    // A hostile target stages its release with `leak -> ../../../../etc/hostname`: inside the
    // sandbox it leads nowhere, but a web server serving `current` on the host would follow
    // it. The agent refuses to promote, names the link, and `current` never points there.
    let p = Project::new("", "");
    p.edit_config(
        deploy_agent_tests::fixtures::LOCAL,
        deploy_agent_tests::fixtures::LINK_ESCAPE,
    );
    let (code, v) = p.deploy();
    assert_eq!(code, 1, "{v:#}");
    let error = v["deployment"]["error"].as_str().unwrap();
    assert!(
        error.contains("promote")
            && error.contains("pointing outside its directory")
            && error.contains("leak -> ../../../../../../../../etc/hostname"),
        "{error}"
    );
    assert!(p.current().is_none(), "nothing was promoted");
    assert!(
        std::fs::symlink_metadata(p.path("sites/local/current")).is_err(),
        "the hostile target never switched"
    );
    // With the leftovers cleared, the well-behaved local target deploys as before.
    std::fs::remove_dir_all(p.path("sites/local/releases")).unwrap();
    p.edit_config(
        deploy_agent_tests::fixtures::LINK_ESCAPE,
        deploy_agent_tests::fixtures::LOCAL,
    );
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
}
