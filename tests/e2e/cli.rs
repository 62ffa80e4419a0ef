//! The `deploy-agent` binary, run as a user would.

use std::process::Command;

use deploy_agent_tests::{bin, fixtures};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_reports_file_line_column_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[plugins.x]\npath = \"x.wasm\"\ncolour = \"blue\"\n").unwrap();
    let (code, _, stderr) = run(&["config", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:1: unknown field `colour`", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn plugin_inspect_json_lists_kinds_and_digest() {
    let (code, stdout, stderr) = run(&["plugin", "inspect", fixtures::ECHO, "--output", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["kinds"], serde_json::json!(["notifier", "validator"]));
    assert_eq!(v["package_versions"], serde_json::json!(["0.1.1"]));
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "deploy-agent:plugin/log@0.1.1")
    );
}

#[test]
fn plugin_check_loads_each_plugin_and_fails_on_a_bad_pin() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[agent]\nstate_dir = {:?}\n[plugins.echo]\npath = {:?}\n[plugins.hook]\npath = {:?}\n[plugins.hook.policy]\nallowed_hosts = [\"hooks.example.com\"]\n",
            dir.path().join("state"),
            fixtures::ECHO,
            fixtures::WEBHOOK
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["plugin", "check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("plugin `echo`: ok"), "{stdout}");
    assert!(stdout.contains("kinds    notifier"), "{stdout}");
    assert!(stdout.contains("2 plugins checked, 0 failed"), "{stdout}");
    assert!(
        stderr.contains("is not pinned"),
        "unpinned plugins are warned about: {stderr}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[plugins.echo]\npath = {:?}\nsha256 = \"{}\"\n",
            fixtures::ECHO,
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let (code, stdout, _) = run(&[
        "plugin",
        "check",
        "--config",
        bad.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let error = v[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&"ab".repeat(32)) && error.contains("refusing to load"),
        "{error}"
    );
}

#[test]
fn migrate_and_backup_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(migrations.join("1_notes.sql"), "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL);\nINSERT INTO notes (title) VALUES ('a');").unwrap();
    std::fs::write(dir.path().join("backup.key"), "3a".repeat(32)).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[environments.local.database]\nurl = \"sqlite:app.db\"\n[environments.local.backup]\nkey = \"${{file:{}}}\"\n",
            dir.path().join("backup.key").display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();

    let (code, stdout, stderr) = run(&["migrate", "status", "--env", "local", "--config", c]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("PENDING") && stdout.contains("pending: 1"),
        "{stdout}"
    );
    let (code, stdout, stderr) = run(&["migrate", "run", "--env", "local", "--config", c]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 applied"), "{stdout}");

    let (code, stdout, stderr) = run(&[
        "backup",
        "create",
        "--env",
        "local",
        "--config",
        c,
        "--reason",
        "before the demo",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("xchacha20poly1305-stream"), "{stdout}");
    let (_, listing, _) = run(&[
        "backup", "list", "--env", "local", "--config", c, "--output", "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["why"], "before the demo");
    let (code, stdout, _) = run(&["backup", "verify", &id, "--env", "local", "--config", c]);
    assert_eq!(code, 0);
    assert!(stdout.contains("verified"), "{stdout}");

    // A restore from a script without --yes is refused and changes nothing.
    let (code, _, stderr) = run(&["backup", "restore", &id, "--env", "local", "--config", c]);
    assert_eq!(code, 1);
    assert!(stderr.contains("pass --yes"), "{stderr}");
    let (code, stdout, stderr) = run(&[
        "backup", "restore", &id, "--env", "local", "--config", c, "--yes",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("safety backup") && stdout.contains("restored"),
        "{stdout}"
    );
    let (_, listing, _) = run(&[
        "backup", "list", "--env", "local", "--config", c, "--output", "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "the safety backup is listed too"
    );
}
