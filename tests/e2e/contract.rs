//! The database in the rollout: a release whose migrations contract the schema (a drop, a
//! rename, a type change) cannot be undone by switching only the app back. Its failed watch
//! holds and notifies instead of rolling back automatically, `plan` says so beforehand, and a
//! manual `rollback --app-only` to the release built for the older schema is refused without
//! `--force`, naming the migration.

use deploy_agent_tests::fixtures;
use deploy_agent_tests::http::{Behaviour, TestServer};
use serde_json::Value;

use crate::project::{Project, stderr};

const NOT_BROKEN: &str = "\n[[environments.local.checks]]\nname = \"not broken\"\nstage = \"watch\"\ncommand = \"! grep -q broken sites/local/current/index.html\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_contract_migration_holds_instead_of_rolling_back_and_guards_app_only_rollback() {
    let hook = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let table = format!(
        "\n[plugins.hook]\npath = {:?}\n[plugins.hook.policy]\nallowed_hosts = [\"127.0.0.1\"]\nallow_ip_ranges = [\"127.0.0.0/8\"]\n[plugins.hook.config]\nurl = {:?}\n{NOT_BROKEN}",
        fixtures::WEBHOOK,
        hook.url("127.0.0.1", "/hook"),
    );
    let p = Project::new("notifiers = [\"hook\"]", &table);
    let (code, v) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0, "{v:#}");
    let v1 = v["deployment"]["release_id"].as_str().unwrap().to_string();

    // An expand-only release (a new nullable column) still rolls back automatically.
    std::fs::write(
        p.path("migrations/20261103090000_add_summary.sql"),
        "ALTER TABLE notes ADD COLUMN summary TEXT;\n",
    )
    .unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>broken v2</h1>").unwrap();
    let (code, v) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["deployment"]["status"], "rolled_back", "{v:#}");
    assert_eq!(p.current().unwrap(), format!("releases/{v1}"));

    // A contract release: it drops a column the earlier releases read.
    std::fs::write(
        p.path("migrations/20261104090000_drop_body.sql"),
        "-- deploy-agent: allow ban-drop-column the body moved to summary\nALTER TABLE notes DROP COLUMN body;\n",
    )
    .unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>v3</h1>").unwrap();
    let plan = p.run(&["plan", "--env", "local"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("on failure: hold and notify (not roll back: 20261104090000_drop_body.sql:2 (ban-drop-column) contract the schema"),
        "{text}\n{}",
        stderr(&plan)
    );
    let (code, v) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0, "{v:#}");
    let v3 = v["deployment"]["release_id"].as_str().unwrap().to_string();

    // Its successor breaks and drops another column: held, not rolled back; the event says so.
    std::fs::write(
        p.path("migrations/20261105090000_drop_summary.sql"),
        "ALTER TABLE notes DROP COLUMN summary;\n",
    )
    .unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>broken v4</h1>").unwrap();
    let (code, v) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["deployment"]["status"], "failed", "{v:#}");
    let error = v["deployment"]["error"].as_str().unwrap();
    assert!(error.contains("holding instead of rolling back"), "{error}");
    assert!(
        error.contains("20261105090000_drop_summary.sql:1 (ban-drop-column)"),
        "{error}"
    );
    let stages: Vec<&str> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(!stages.contains(&"rollback"), "{stages:?}");
    let v4 = v["deployment"]["release_id"].as_str().unwrap().to_string();
    assert_eq!(
        p.current().unwrap(),
        format!("releases/{v4}"),
        "held: still live"
    );
    let texts: Vec<String> = hook
        .seen()
        .iter()
        .filter_map(|s| serde_json::from_slice::<Value>(&s.body).ok())
        .filter_map(|b| b["text"].as_str().map(str::to_string))
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("holding instead of rolling back")),
        "{texts:#?}"
    );

    // By hand: the app alone back to v3 (built for the schema before the drop) is refused,
    // naming the migration; --force does it.
    let out = p.run(&[
        "rollback", "--env", "local", "--to", &v3, "--reason", "bad v4", "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("20261105090000_drop_summary.sql:1 (ban-drop-column)"),
        "{err}"
    );
    assert!(err.contains("--full") && err.contains("--force"), "{err}");
    assert_eq!(p.current().unwrap(), format!("releases/{v4}"));
    let out = p.run(&[
        "rollback", "--env", "local", "--to", &v3, "--reason", "bad v4", "--yes", "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(p.current().unwrap(), format!("releases/{v3}"));
}
