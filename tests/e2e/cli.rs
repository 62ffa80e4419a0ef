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
    assert_eq!(v["package_versions"], serde_json::json!(["0.1.0"]));
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "deploy-agent:plugin/log@0.1.0")
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
