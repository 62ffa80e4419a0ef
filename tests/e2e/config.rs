//! agent.toml: errors that name file, line and column and say how to fix them.

use std::path::Path;

use deploy_agent::config::{Config, SecretSource};
use deploy_agent_tests::{fixtures, repo_root};

fn parse(text: &str) -> Result<Config, deploy_agent::config::ConfigErrors> {
    Config::parse(Path::new("/nonexistent/agent.toml"), text)
}

#[test]
fn repository_example_is_valid() {
    let config = Config::load(&repo_root().join("agent.toml")).expect("agent.toml is valid");
    assert!(config.plugins.contains_key("echo"));
    assert!(config.plugins.contains_key("webhook"));
}

#[test]
fn unknown_key_points_at_its_line_and_column() {
    let text = format!(
        "[plugins.echo]\npath = {:?}\n\n[plugins.echo.policy]\nalowed_hosts = [\"x.com\"]\n",
        fixtures::ECHO
    );
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let e = &errors.0[0];
    assert_eq!((e.line, e.column), (5, 1), "{e}");
    assert!(e.message.contains("unknown field `alowed_hosts`"), "{e}");
    assert!(
        e.message.contains("allowed_hosts"),
        "the message lists the right name: {e}"
    );
    assert!(
        e.to_string().starts_with("/nonexistent/agent.toml:5:1: "),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_hints() {
    let text = format!(
        r#"[plugins.Bad_Name]
path = "missing.wasm"
sha256 = "abc"

[plugins.ok]
path = {echo:?}

[plugins.ok.policy]
allowed_hosts = ["https://api.example.com", "api.example.com"]
allow_ip_ranges = ["not-a-range"]
memory_mb = 99999

[plugins.ok.secrets.token]
from = "hunter2"

[plugins.ok.secrets.other]
from = "${{env:OTHER_TOKEN}}"
hosts = ["evil.example.net"]
"#,
        echo = fixtures::ECHO
    );
    let errors = parse(&text).unwrap_err();
    let rendered = errors.to_string();
    let expect = [
        (1, "plugin name `Bad_Name` is not allowed"),
        (2, "does not exist"),
        (3, "sha256 must be 64 hexadecimal characters"),
        (9, "is a URL"),
        (10, "`not-a-range` is not an address range"),
        (11, "memory_mb must be between 1 and 1024"),
        (14, "must be a reference, not a value"),
        (18, "not in this plugin's allowed_hosts"),
    ];
    for (line, message) in expect {
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.line == line && e.message.contains(message)),
            "missing error at line {line} ({message}) in:\n{rendered}"
        );
    }
    assert_eq!(errors.0.len(), expect.len(), "{rendered}");
    assert!(
        rendered.contains("hint: write `from = \"${env:VAR_NAME}\"`"),
        "{rendered}"
    );
    assert!(!rendered.contains("hunter2\n  hint"), "{rendered}");
    assert!(
        rendered.contains("8 errors in the configuration"),
        "{rendered}"
    );
}

#[test]
fn secret_references_resolve_from_files_and_env_without_leaking() {
    assert_eq!(
        SecretSource::parse("${env:VERCEL_TOKEN}"),
        Some(SecretSource::Env("VERCEL_TOKEN".into()))
    );
    assert_eq!(
        SecretSource::parse("${file:/run/secrets/x}"),
        Some(SecretSource::File("/run/secrets/x".into()))
    );
    assert_eq!(SecretSource::parse("plain"), None);
    assert_eq!(SecretSource::parse("${env:}"), None);
    assert_eq!(SecretSource::parse("${env:A B}"), None);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "file-secret-value\n").unwrap();
    let value = SecretSource::File(file.clone()).resolve().unwrap();
    assert_eq!(format!("{value:?}"), "[redacted]");
    let missing = SecretSource::File(dir.path().join("nope"))
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(missing.contains("cannot read secret file"), "{missing}");
    let unset = SecretSource::Env("DEPLOY_AGENT_TEST_SURELY_UNSET".into())
        .resolve()
        .unwrap_err()
        .to_string();
    assert_eq!(
        unset,
        "environment variable DEPLOY_AGENT_TEST_SURELY_UNSET is not set"
    );

    let text = format!(
        "[plugins.p]\npath = {:?}\n[plugins.p.policy]\nallowed_hosts = [\"api.example.com\"]\n[plugins.p.secrets.token]\nfrom = \"${{file:{}}}\"\nhosts = [\"api.example.com\"]\n",
        fixtures::ECHO,
        file.display()
    );
    let config = parse(&text).unwrap();
    let spec = config.plugin_spec("p").unwrap();
    assert_eq!(spec.secrets.names(), ["token"]);
    assert!(
        !format!("{spec:?}").contains("file-secret-value"),
        "secret in Debug output"
    );
}

#[test]
fn a_mistake_inherited_through_extends_is_one_error_at_its_source_naming_the_chain() {
    let text = format!(
        r#"[plugins.echo]
path = {echo:?}

[environments.base]
validate = {{ plugins = ["nope"] }}

[environments.a-child]
extends = "base"

[environments.grandchild]
extends = "a-child"
"#,
        echo = fixtures::ECHO
    );
    let errors = parse(&text).unwrap_err();
    let rendered = errors.to_string();
    assert_eq!(errors.0.len(), 1, "{rendered}");
    let e = &errors.0[0];
    assert_eq!(e.line, 5, "reported at the source: {rendered}");
    assert!(
        e.message.contains("`nope` is not a configured plugin"),
        "{rendered}"
    );
    assert_eq!(
        e.inherited_by,
        ["a-child → base", "grandchild → a-child → base"],
        "{rendered}"
    );
    assert!(
        rendered.contains("inherited by: a-child → base; grandchild → a-child → base"),
        "{rendered}"
    );
}

#[test]
fn a_missing_plugin_file_is_one_error_not_a_cascade_of_unconfigured_plugins() {
    let text = r#"[plugins.local]
path = "missing/local.wasm"

[plugins.slack]
path = "missing/slack.wasm"

[environments.base]
target = { plugin = "local" }
notifiers = ["slack"]
validate = { plugins = ["local"] }

[environments.staging]
extends = "base"
"#;
    let errors = parse(text).unwrap_err();
    let rendered = errors.to_string();
    assert_eq!(errors.0.len(), 2, "{rendered}");
    assert!(
        errors
            .0
            .iter()
            .all(|e| e.message.contains("does not exist")),
        "{rendered}"
    );
    assert!(!rendered.contains("not a configured plugin"), "{rendered}");
}

#[test]
fn decoding_errors_name_no_rust_types() {
    let errors = parse("[environments.x]\nartifact = \"site\"\n").unwrap_err();
    let rendered = errors.to_string();
    assert!(rendered.contains("expected a table"), "{rendered}");
    assert!(!rendered.contains("Raw"), "{rendered}");
}

/// An environment that spans hosts: each mistake at its line with a hint; a good one parses
/// into its batches.
#[test]
fn hosts_need_a_shared_state_and_a_per_host_target_and_batches_parse() {
    let env = |agent: &str, target_extra: &str, rollout: &str| {
        format!(
            "{agent}[plugins.local]\npath = {:?}\n\n[environments.web]\nhosts = [\"web-1\", \"web-2\", \"web-3\"]\n{rollout}[environments.web.target]\nplugin = \"local\"\n{target_extra}",
            fixtures::LOCAL
        )
    };
    let shared = "[agent]\nstate_url = \"postgres://u@db/state\"\n\n";
    // SQLite state, a platform-style target: two errors at `hosts`.
    let errors = parse(&env("", "", "")).unwrap_err();
    let text = errors.to_string();
    assert_eq!(errors.0.len(), 2, "{text}");
    assert!(errors.0.iter().all(|e| e.line == 5), "{text}");
    assert!(
        text.contains("needs a state store its hosts share"),
        "{text}"
    );
    assert!(text.contains("hint: set `[agent] state_url`"), "{text}");
    assert!(text.contains("mark it `per_host = true`"), "{text}");
    // A bad batch, an unknown policy, a host twice.
    let bad = env(
        shared,
        "per_host = true\n",
        "[environments.web.rollout]\nbatch = \"120%\"\non_failure = \"shrug\"\n",
    )
    .replace("\"web-3\"]", "\"web-1\"]");
    let errors = parse(&bad).unwrap_err();
    let text = errors.to_string();
    assert_eq!(errors.0.len(), 3, "{text}");
    assert!(text.contains("host `web-1` is listed twice"), "{text}");
    assert!(
        text.contains("`120%` is not a share of the hosts"),
        "{text}"
    );
    assert!(text.contains("unknown `on_failure` `shrug`"), "{text}");
    // A good one.
    let good = env(
        shared,
        "per_host = true\n",
        "[environments.web.rollout]\nbatch = \"50%\"\nwait_ms = 1000\nmax_failures = 1\n",
    );
    let config = parse(&good).expect("valid");
    let r = config.environments["web"]
        .rollout
        .as_ref()
        .expect("a rollout");
    assert_eq!(
        r.batches(),
        vec![
            vec!["web-1".to_string(), "web-2".to_string()],
            vec!["web-3".to_string()]
        ]
    );
    assert_eq!((r.max_failures, r.wait.as_millis()), (1, 1000));
}

#[test]
fn canary_steps_rise_end_at_100_and_belong_to_a_canary() {
    let env = |deploy: &str| {
        format!(
            "[plugins.k8s]\npath = {:?}\n\n[environments.prod]\n[environments.prod.target]\nplugin = \"k8s\"\n[environments.prod.deploy]\n{deploy}\n",
            fixtures::KUBERNETES
        )
    };
    let good = parse(&env(
        "strategy = \"canary\"\nsteps = [{ weight = 10, pause_ms = 60000 }, { weight = 50, pause = \"approval\" }, { weight = 100 }]\nscale_down_delay_ms = 5000",
    ))
    .unwrap();
    let d = &good.environments["prod"].deploy;
    assert_eq!(d.strategy, deploy_agent::config::Strategy::Canary);
    use deploy_agent::config::Pause;
    let pauses: Vec<(u8, &Pause)> = d.steps.iter().map(|s| (s.weight, &s.pause)).collect();
    assert_eq!(
        pauses,
        [
            (10, &Pause::For(std::time::Duration::from_secs(60))),
            (50, &Pause::Approval),
            (100, &Pause::None)
        ]
    );
    assert_eq!(d.scale_down_delay, std::time::Duration::from_secs(5));
    for (deploy, want, line) in [
        ("strategy = \"canary\"", "a canary needs `steps`", 8),
        (
            "strategy = \"canary\"\nsteps = [{ weight = 50 }, { weight = 20 }, { weight = 100 }]",
            "step weights must rise: 20 follows 50",
            9,
        ),
        (
            "strategy = \"canary\"\nsteps = [{ weight = 10 }, { weight = 50 }]",
            "a canary ends with `{ weight = 100 }`",
            9,
        ),
        (
            "strategy = \"canary\"\nsteps = [{ weight = 0 }, { weight = 100 }]",
            "a percentage from 1 to 100, not 0",
            9,
        ),
        (
            "strategy = \"canary\"\nsteps = [{ weight = 10, pause = \"forever\" }, { weight = 100 }]",
            "unknown pause `forever`",
            9,
        ),
        (
            "steps = [{ weight = 100 }]",
            "`steps` is only for `strategy = \"canary\"`",
            8,
        ),
        ("strategy = \"rolling\"", "unknown strategy `rolling`", 8),
    ] {
        let errors = parse(&env(deploy)).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains(want), "{deploy}: {text}");
        assert_eq!(errors.0[0].line, line, "{deploy}: {text}");
    }
}
