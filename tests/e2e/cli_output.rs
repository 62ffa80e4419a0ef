//! The CLI's output and exit codes when things around it go wrong (issue 19): a closed stdout
//! or stderr never panics and never cuts a deploy short, the exit code still says how the
//! command ended, an unknown environment is a usage error (exit 2) before anything is
//! printed, and a notifier that cannot load (its secret is missing) is a warning, never a
//! blocked deploy.

use std::process::{Command, Stdio};

use crate::project::{Project, stderr};

/// A pipe whose reading end is already closed: every write to it fails (EPIPE).
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer)
}

/// Runs `cmd` with stdout (and, with `both`, stderr) closed; its exit code.
fn with_closed_output(mut cmd: Command, both: bool) -> i32 {
    cmd.stdout(closed_pipe());
    if both {
        cmd.stderr(closed_pipe());
    }
    cmd.status().expect("runs").code().unwrap_or(-1)
}

#[test]
fn a_closed_stdout_never_cuts_a_deploy_short_and_the_exit_code_tells_how_it_ended() {
    let p = Project::new("", "");
    let code = with_closed_output(p.command(&["deploy", "--env", "local"]), false);
    assert_eq!(
        code, 0,
        "the deploy ends as it would on a terminal (101 is a panic)"
    );
    let live = p.current().expect("the release went live");
    let history = p.json(&["history", "--env", "local"]);
    assert_eq!(history[0]["deployment"]["status"], "succeeded", "{history}");
    assert_eq!(
        live,
        format!(
            "releases/{}",
            history[0]["deployment"]["release_id"].as_str().unwrap()
        )
    );

    // A deploy that fails says so in its exit code, with stdout and stderr both gone.
    p.edit_config("test -s sites", "test -s no-such-dir/sites");
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let code = with_closed_output(p.command(&["deploy", "--env", "local"]), true);
    assert_eq!(code, 1, "a failed deploy exits 1 whoever reads its output");
    let history = p.json(&["history", "--env", "local"]);
    assert_eq!(history[0]["deployment"]["status"], "failed", "{history}");
    assert_eq!(p.current().as_deref(), Some(live.as_str()), "v1 stays live");

    // Reading commands and the completions script stop quietly too.
    for args in [
        &["history", "--env", "local"][..],
        &["status", "--env", "local"],
        &["completions", "bash"],
        &["config", "schema"],
    ] {
        let code = with_closed_output(p.command(args), true);
        assert_eq!(code, 0, "{args:?} with its output closed");
    }
}

#[test]
fn an_unknown_environment_is_a_usage_error_before_anything_is_printed() {
    let p = Project::new("", "");
    for args in [
        &["deploy", "--env", "nope"][..],
        &["plan", "--env", "nope"],
        &["status", "--env", "nope"],
        &["history", "--env", "nope"],
        &["releases", "--env", "nope"],
        &["recover", "--env", "nope"],
        &["rollback", "--env", "nope", "--reason", "r", "--yes"],
        &["migrate", "status", "--env", "nope"],
        &["backup", "list", "--env", "nope"],
    ] {
        let out = p.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed before failing: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains("no environment `nope`") && err.contains("(known: local)"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_notifier_whose_secret_is_missing_is_a_warning_never_a_blocked_deploy() {
    let hook = format!(
        r#"
[plugins.hook]
path = "{}"
[plugins.hook.policy]
allowed_hosts = ["hooks.example.com"]
[plugins.hook.secrets.hook-token]
from = "${{env:DA_TEST_NO_SUCH_HOOK_TOKEN}}"
hosts = ["hooks.example.com"]
[plugins.hook.config]
url = "https://hooks.example.com/deploys"
"#,
        deploy_agent_tests::fixtures::WEBHOOK
    );
    // Strict: warnings block there, but never one about a notifier.
    let p = Project::new("strict = true\nnotifiers = [\"hook\"]", &hook);
    let (code, out) = p.deploy();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["deployment"]["status"], "succeeded");
    let finding = out["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "secret-unavailable")
        .unwrap_or_else(|| panic!("the missing secret is reported: {out}"));
    assert_eq!(finding["severity"], "warning");
    assert_eq!(finding["advisory"], true);
    let failures = out["notify_failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| {
            let f = f.as_str().unwrap_or("");
            f.starts_with("hook: not loaded") && f.contains("DA_TEST_NO_SUCH_HOOK_TOKEN")
        }),
        "{out}"
    );
    assert!(p.current().is_some(), "the release is live");

    // A plugin that also validates is not only a notifier: its missing secret still blocks.
    let echo = format!(
        r#"
[plugins.echo]
path = "{}"
[plugins.echo.policy]
allowed_hosts = ["hooks.example.com"]
[plugins.echo.secrets.token]
from = "${{env:DA_TEST_NO_SUCH_ECHO_TOKEN}}"
hosts = ["hooks.example.com"]
"#,
        deploy_agent_tests::fixtures::ECHO
    );
    let p = Project::new(
        "notifiers = [\"echo\"]\nvalidate = { plugins = [\"echo\"] }",
        &echo,
    );
    let out = p.run(&["deploy", "--env", "local"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a configuration error, refused before the run: {err}"
    );
    assert!(
        err.contains("plugin `echo`, secret `token`: environment variable DA_TEST_NO_SUCH_ECHO_TOKEN is not set"),
        "{err}"
    );
    assert!(p.current().is_none(), "nothing went live");
}

#[test]
fn secret_and_env_var_errors_name_file_line_and_chain_exit_2_and_plan_lists_them() {
    // production → staging → local; the database URL is written once, in staging.
    let p = Project::new(
        "",
        r#"
[environments.staging]
extends = "local"
[environments.staging.database]
url = "${env:DA_TEST_NO_SUCH_DATABASE_URL}"
migrations = "migrations"
[environments.production]
extends = "staging"
[environments.production.validate]
required_env = ["DA_TEST_NO_SUCH_REQUIRED"]
"#,
    );
    let toml = std::fs::read_to_string(p.path("agent.toml")).unwrap();
    let line_of = |needle: &str| toml.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let url_line = line_of("DA_TEST_NO_SUCH_DATABASE_URL");
    let chain = "environment: production → staging → local";
    for args in [
        &["migrate", "status", "-e", "production"][..],
        &["backup", "create", "-e", "production"],
        &["deploy", "-e", "production"],
        &["rollback", "-e", "production", "--yes", "--reason", "r"],
    ] {
        let out = p.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing printed before");
        assert!(
            err.contains(&format!(
                "agent.toml:{url_line}:7: database URL: environment variable DA_TEST_NO_SUCH_DATABASE_URL is not set"
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains(chain), "{args:?}: {err}");
        assert!(
            err.contains("hint: set DA_TEST_NO_SUCH_DATABASE_URL in the agent's environment"),
            "{args:?}: {err}"
        );
    }
    // `required_env` is the validate stage's check (a blocked run with its findings), so
    // the refusal is about the database alone; `plan` below lists both.
    let err = stderr(&p.run(&["deploy", "-e", "production"]));
    assert!(!err.contains("DA_TEST_NO_SUCH_REQUIRED"), "{err}");
    // Nothing ran, so nothing was recorded.
    let history = p.json(&["history", "--env", "production"]);
    assert_eq!(history, serde_json::json!([]), "{history}");

    // `plan` does not abort: the same problems are findings, with the place and the chain.
    let out = p.run(&["plan", "-e", "production", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["blocked"], true, "{plan}");
    let findings = plan["findings"].as_array().unwrap();
    let db = findings
        .iter()
        .find(|f| f["code"] == "database-url")
        .unwrap_or_else(|| panic!("{plan}"));
    let message = db["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("agent.toml:{url_line}: database URL:"))
            && message.contains("(environment production → staging → local)"),
        "{message}"
    );
    assert!(
        db["hint"]
            .as_str()
            .unwrap()
            .contains("set DA_TEST_NO_SUCH_DATABASE_URL")
    );
    assert!(
        findings.iter().any(|f| f["code"] == "env-missing"),
        "{plan}"
    );
    let migrate = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "migrate")
        .unwrap();
    assert!(
        migrate["action"]
            .as_str()
            .unwrap()
            .contains("database URL cannot be read"),
        "{plan}"
    );
    // The staging environment has the same URL problem, reported for its own chain.
    let err = stderr(&p.run(&["migrate", "status", "-e", "staging"]));
    assert!(err.contains("environment: staging → local"), "{err}");
}

#[test]
fn config_check_approve_reject_and_backup_verify_speak_json_and_take_dash_e() {
    // config check: the answer is JSON either way; errors keep file, line, column and exit 2.
    let p = Project::new(
        "",
        "\n[environments.local.approval]\nbefore = \"promote\"\n",
    );
    let ok = p.json(&["config", "check"]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["errors"].as_array().map(Vec::len), Some(0));
    std::fs::write(p.path("bad.toml"), "[environments.x]\ncolour = \"blue\"\n").unwrap();
    let out = p.run(&[
        "config", "check", "--config", "bad.toml", "--output", "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let bad: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["errors"][0]["line"], 2, "{bad}");
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );

    // approve: the decided approval, as the API answers it.
    let (child, run, _) = p.deploy_to_a_gate();
    let decided = p.json(&["approve", &run, "--reason", "looks right"]);
    assert_eq!(decided["decision"], "approved", "{decided}");
    assert_eq!(decided["deployment_id"], run.as_str());
    assert_eq!(decided["reason"], "looks right");
    assert!(child.wait_with_output().unwrap().status.success());
    // Deciding again: nothing waits, so it fails (exit 1) and says why.
    let out = p.run(&["reject", &run, "--reason", "too late", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not waiting for a decision"),
        "{}",
        stderr(&out)
    );

    // backup verify, with -e as every environment-taking command has it.
    let list = p.json(&["backup", "list", "-e", "local"]);
    let id = list[0]["id"]
        .as_str()
        .expect("the deploy took a backup")
        .to_string();
    let verified = p.json(&["backup", "verify", &id, "-e", "local"]);
    assert_eq!(verified["id"], id.as_str());
    assert_eq!(verified["checksum_ok"], true);
    assert!(verified["raw_bytes"].as_u64().unwrap() > 0);
    let status = p.json(&["migrate", "status", "-e", "local"]);
    assert!(p.json(&["status", "-e", "local"])["live"].is_object());
    assert!(status["current"].is_number(), "{status}");
}

#[test]
fn backup_verify_latest_and_prune_dry_run_that_changes_nothing() {
    let p = Project::new(
        "",
        "\n[environments.local.backup]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n",
    );
    let (code, out) = p.deploy();
    assert_eq!(code, 0, "{out}");
    for _ in 0..2 {
        let out = p.run(&["backup", "create", "-e", "local"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ids = |p: &Project| -> Vec<String> {
        p.json(&["backup", "list", "-e", "local"])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let before = ids(&p);
    assert_eq!(before.len(), 3, "{before:?}");

    let latest = p.json(&["backup", "verify", "latest", "-e", "local"]);
    assert_eq!(
        latest["id"],
        before[0].as_str(),
        "latest is the newest listed"
    );
    assert_eq!(latest["checksum_ok"], true);

    // The dry run names what would go (the older manual backup: the newest is kept, the
    // deploy's is pinned by its release) and deletes nothing.
    let dry = p.json(&["backup", "prune", "-e", "local", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    let would: Vec<String> = serde_json::from_value(dry["deleted"].clone()).unwrap();
    assert_eq!(would, [before[1].clone()], "{dry}");
    assert_eq!(ids(&p), before, "a dry run changes nothing");

    let done = p.json(&["backup", "prune", "-e", "local"]);
    assert_eq!(
        done["deleted"], dry["deleted"],
        "the prune does what the dry run said"
    );
    assert_eq!(ids(&p), [before[0].clone(), before[2].clone()]);
}

/// Every time field in `value`, by key, with its JSON type: `at`, `*_at`, `installed_on`.
fn times(value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "at" || k.ends_with("_at") || k == "installed_on" {
                    out.push((k.clone(), v.clone()));
                }
                times(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| times(v, out)),
        _ => {}
    }
}

#[test]
fn every_time_in_json_is_rfc3339_and_one_field_has_one_type_across_commands() {
    let p = Project::new("", "");
    let (code, deploy) = p.deploy();
    assert_eq!(code, 0, "{deploy}");
    assert_eq!(
        p.run(&["backup", "create", "-e", "local"]).status.code(),
        Some(0)
    );
    let answers = [
        ("deploy", deploy),
        ("history", p.json(&["history", "-e", "local"])),
        ("releases", p.json(&["releases", "-e", "local"])),
        ("status", p.json(&["status", "-e", "local"])),
        ("audit list", p.json(&["audit", "list"])),
        ("backup list", p.json(&["backup", "list", "-e", "local"])),
        (
            "migrate status",
            p.json(&["migrate", "status", "-e", "local"]),
        ),
    ];
    // Backup manifests (files kept with the backups, read by older agents too) write whole
    // seconds; the store's times carry milliseconds. Both are RFC 3339 strings.
    let mut seen = std::collections::BTreeSet::new();
    let mut count = 0;
    for (command, answer) in &answers {
        let mut found = Vec::new();
        times(answer, &mut found);
        for (key, v) in found {
            if v.is_null() {
                continue;
            }
            count += 1;
            let text = v
                .as_str()
                .unwrap_or_else(|| panic!("{command}: `{key}` is {v}, not a string"));
            let ms = deploy_agent::time::parse_rfc3339_ms(text)
                .unwrap_or_else(|| panic!("{command}: `{key}` = {text} is not RFC 3339"));
            assert!(ms > 1_700_000_000_000, "{command}: `{key}` = {text}");
            seen.insert(key);
        }
    }
    for key in [
        "started_at",
        "finished_at",
        "created_at",
        "at",
        "installed_on",
    ] {
        assert!(seen.contains(key), "no `{key}` seen: {seen:?}");
    }
    assert!(count > 10, "{count} times checked");
}

/// What the completion script gets back when bash asks to complete `words` (the last one
/// being typed), run from the project's directory.
fn candidates(p: &Project, words: &[&str]) -> Vec<String> {
    let mut cmd = p.command(&["--", "deploy-agent"]);
    cmd.args(words)
        .env("COMPLETE", "bash")
        .env("_CLAP_IFS", "\n")
        .env("_CLAP_COMPLETE_INDEX", words.len().to_string());
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn shell_completion_offers_the_environments_and_releases_that_exist() {
    let p = Project::new(
        "",
        "\n[environments.staging]\nextends = \"local\"\n[environments.production]\nextends = \"staging\"\n",
    );
    // The script bash sources registers a function that calls this binary back.
    let script = p.run(&["completions", "bash"]);
    let script = String::from_utf8_lossy(&script.stdout).into_owned();
    let bash = Command::new("bash")
        .args(["-c", &format!("{script}\ncomplete -p deploy-agent")])
        .output()
        .expect("bash runs");
    assert!(
        String::from_utf8_lossy(&bash.stdout)
            .contains("-F _clap_complete_deploy_agent deploy-agent"),
        "{}{}",
        String::from_utf8_lossy(&bash.stdout),
        String::from_utf8_lossy(&bash.stderr)
    );

    // Environments, from agent.toml, for every command's -e/--env.
    assert_eq!(
        candidates(&p, &["deploy", "--env", ""]),
        ["local", "production", "staging"]
    );
    assert_eq!(
        candidates(&p, &["migrate", "status", "-e", "pr"]),
        ["production"]
    );
    assert_eq!(
        candidates(&p, &["backup", "list", "--env", "st"]),
        ["staging"]
    );
    // The --config on the line being completed is the one read.
    std::fs::copy(p.path("agent.toml"), p.path("other.toml")).unwrap();
    std::fs::remove_file(p.path("agent.toml")).unwrap();
    assert!(candidates(&p, &["status", "-e", ""]).is_empty());
    assert_eq!(
        candidates(&p, &["status", "--config", "other.toml", "-e", "l"]),
        ["local"]
    );
    std::fs::rename(p.path("other.toml"), p.path("agent.toml")).unwrap();

    // No release yet, and completing did not create a state store.
    assert!(candidates(&p, &["rollback", "-e", "local", "--to", ""]).is_empty());
    assert!(!p.path("state/state.db").exists(), "completion only reads");

    // Two releases: both offered, by id, for the environment typed.
    assert_eq!(p.deploy().0, 0);
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    assert_eq!(p.deploy().0, 0);
    let releases: Vec<String> = p
        .json(&["releases", "-e", "local"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(releases.len(), 2);
    let offered = candidates(&p, &["rollback", "-e", "local", "--to", ""]);
    assert_eq!(offered, releases, "newest first, as `releases` lists them");
    assert!(candidates(&p, &["rollback", "-e", "staging", "--to", ""]).is_empty());
    let one = &releases[1][..releases[1].len() - 1];
    assert_eq!(
        candidates(&p, &["rollback", "-e", "local", "--to", one]),
        [releases[1].clone()]
    );
}
