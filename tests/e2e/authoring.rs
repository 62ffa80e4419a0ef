//! The plugin authoring kit: projects from `plugin new` build as they are and pass the
//! conformance kit; the four first-party plugins pass it; a sloppy plugin fails exactly the
//! checks it breaks; a Python notifier built with componentize-py runs in the pipeline like
//! a Rust one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use deploy_agent_tests::cluster::Cluster;
use deploy_agent_tests::fixtures;
use deploy_agent_tests::http::{Behaviour, TestServer};
use deploy_agent_tests::kubernetes::Kubernetes;
use deploy_agent_tests::s3::{self, S3Server};
use deploy_agent_tests::vercel::Vercel;
use deploy_agent_tests::{bin, repo_root};
use serde_json::Value;

use crate::project::{Project, stderr};

const KINDS: [&str; 5] = [
    "notifier",
    "validator",
    "deploy-target",
    "traffic",
    "backup-store",
];

/// componentize-py, as `make test-tools` installs it.
fn componentize_py() -> PathBuf {
    let tool = repo_root().join("target/tools/venv/bin/componentize-py");
    assert!(
        tool.is_file(),
        "{} is missing: run `make test-tools`",
        tool.display()
    );
    tool
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// A scratch directory for the projects, and one cargo target directory they share (so the
/// SDK and its dependencies build once), kept for the whole test binary.
fn workspace() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// `plugin new NAME --kind KIND [--lang LANG]`, then `plugin build`: the component.
fn new_and_build(name: &str, kind: &str, lang: &str) -> PathBuf {
    let dir = workspace().join(name);
    run(Command::new(bin())
        .current_dir(workspace())
        .args(["plugin", "new", name, "--kind", kind, "--lang", lang]));
    let out = run(Command::new(bin())
        .current_dir(&dir)
        .env("COMPONENTIZE_PY", componentize_py())
        .args(["plugin", "build", "--output", "json", "--target-dir"])
        .arg(workspace().join("target")));
    let built: Value = serde_json::from_slice(&out.stdout).expect("build prints JSON");
    let wasm = PathBuf::from(built["wasm"].as_str().expect("wasm"));
    let bytes = std::fs::read(&wasm).expect("the component exists");
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(built["sha256"], sum, "the printed pin is the file's sha256");
    assert_eq!(built["kind"], kind);
    wasm
}

/// Runs the conformance kit and returns its exit code and report.
fn kit(wasm: &Path, kind: &str, standin: &Path, upstream: Option<&str>) -> (i32, Value) {
    kit_with(wasm, kind, standin, upstream, &[])
}

fn kit_with(
    wasm: &Path,
    kind: &str,
    standin: &Path,
    upstream: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, Value) {
    let mut cmd = Command::new(bin());
    cmd.args(["plugin", "test"])
        .arg(wasm)
        .args(["--kind", kind, "--output", "json", "--against"])
        .arg(standin)
        .arg("--cache")
        .arg(workspace().join("cache"))
        .envs(env.iter().copied());
    if let Some(u) = upstream {
        cmd.args(["--upstream", u]);
    }
    let out = cmd.output().expect("runs");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}):\n{}", stderr(&out)));
    (out.status.code().unwrap_or(-1), report)
}

/// The names of the checks with `outcome`.
fn with_outcome(report: &Value, outcome: &str) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["outcome"] == outcome)
        .map(|c| format!("{}: {}", c["name"].as_str().unwrap(), c["detail"]))
        .collect()
}

/// Every check passed, at least `min` of them, and the kit exited 0.
fn assert_conforms(name: &str, (code, report): &(i32, Value), min: usize) {
    let failed = with_outcome(report, "fail");
    assert!(failed.is_empty(), "{name} failed:\n{}", failed.join("\n"));
    assert_eq!(*code, 0, "{name}: exit code");
    let passed = with_outcome(report, "pass").len();
    assert!(passed >= min, "{name}: only {passed} checks passed");
    assert!(
        report["requests"].as_u64().unwrap() > 0,
        "{name}: no requests"
    );
}

/// Each kind's Rust project builds as it is, its native test passes, and the component
/// passes the conformance kit against the stand-in script the project ships.
#[test]
fn new_rust_projects_build_test_and_conform() {
    for kind in KINDS {
        let name = format!("my-{kind}");
        let wasm = new_and_build(&name, kind, "rust");
        let dir = workspace().join(&name);
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "standin.toml",
            ".gitignore",
        ] {
            assert!(dir.join(file).is_file(), "{name}/{file}");
        }
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(
            !readme.contains("{{"),
            "every placeholder filled:\n{readme}"
        );
        assert!(readme.contains(&format!("--kind {kind} --against standin.toml")));
        // The project's own test, natively.
        let out = run(
            Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
                .current_dir(&dir)
                .args(["test", "--quiet", "--target-dir"])
                .arg(workspace().join("target")),
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let min = match kind {
            "deploy-target" | "traffic" => 20,
            "backup-store" => 15,
            _ => 10,
        };
        let report = kit(&wasm, kind, &dir.join("standin.toml"), None);
        assert_conforms(&name, &report, min);
        assert_eq!(report.1["standin"], "script");
        assert!(
            with_outcome(&report.1, "skip").is_empty(),
            "{name}: nothing skipped"
        );
        if kind == "traffic" {
            every_exported_kind_is_tested(&wasm, &dir.join("standin.toml"));
        }
    }
}

/// Without `--kind`, `plugin test` reads what the component exports and runs each kind's
/// scenario; a first compile says what it is doing and how long it took.
fn every_exported_kind_is_tested(wasm: &Path, standin: &Path) {
    let cache = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin())
        .args(["plugin", "test"])
        .arg(wasm)
        .arg("--against")
        .arg(standin)
        .arg("--cache")
        .arg(cache.path()));
    let (text, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    assert!(err.contains("as a deploy-target against"), "{err}");
    assert!(err.contains("as a traffic against"), "{err}");
    assert!(
        err.contains("compiled ") && err.contains("for later runs"),
        "{err}"
    );
    for kind in ["deploy-target", "traffic"] {
        assert!(
            text.contains(&format!("\n{kind}: ")) && !text.contains(" 0 passed"),
            "{text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");
}

/// `plugin new` refuses what it cannot make, and says what to do instead.
#[test]
fn plugin_new_refuses_bad_names_existing_directories_and_missing_templates() {
    let dir = tempfile::tempdir().unwrap();
    let new = |args: &[&str]| {
        let out = Command::new(bin())
            .current_dir(dir.path())
            .args(["plugin", "new"])
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), stderr(&out))
    };
    let (code, err) = new(&["Fly_IO", "--kind", "deploy-target"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`Fly_IO` is not a plugin name") && err.contains("hint:"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/x"), "").unwrap();
    let (_, err) = new(&["taken", "--kind", "notifier"]);
    assert!(err.contains("already exists and is not empty"), "{err}");
    let (_, err) = new(&["py-target", "--kind", "deploy-target", "--lang", "python"]);
    assert!(
        err.contains("no Python template for a deploy-target"),
        "{err}"
    );
    assert!(!dir.path().join("py-target").exists());
    let (_, err) = new(&["x", "--kind", "notifier", "--sdk", "/nonexistent/sdk"]);
    assert!(
        err.contains("the plugin SDK is not at /nonexistent/sdk"),
        "{err}"
    );
}

/// A plugin that gets parts of the contract wrong fails exactly those checks, and the kit
/// exits 1: the checks can fail.
#[test]
fn the_kit_fails_a_sloppy_plugin_on_exactly_what_it_gets_wrong() {
    let script = repo_root().join("host/src/scaffold/templates/rust/deploy-target.standin.toml");
    let (code, report) = kit(
        Path::new(fixtures::SLOPPY_TARGET),
        "deploy-target",
        &script,
        None,
    );
    assert_eq!(code, 1);
    let failed = with_outcome(&report, "fail");
    let fails = |what: &str| failed.iter().any(|f| f.starts_with(what));
    for expected in [
        "promote v1 again: a no-op",
        "list-releases: v2 live, v1 listed, newest first",
        "rollback: after two releases, brings the first back",
        "status: an unknown release id is rejected, not retried",
        "status: HTTP 429 with Retry-After: 7 is retryable with a 7000 ms wait",
        "status: HTTP 503 is retryable",
        "status: HTTP 401 is unauthorized",
        "status: HTTP 400 is rejected (or invalid-config), not retried",
        "status: a reset connection is retryable",
        "no request outside the granted hosts",
    ] {
        assert!(
            fails(expected),
            "expected `{expected}` to fail:\n{}",
            failed.join("\n")
        );
    }
    let telemetry = failed
        .iter()
        .find(|f| f.starts_with("no request outside"))
        .unwrap();
    assert!(telemetry.contains("telemetry.example.com"), "{telemetry}");
    let passed = with_outcome(&report, "pass");
    for expected in [
        "deploy v1: stages a release and returns without waiting",
        "status v1: reaches a terminal state through legal transitions",
        "promote v1: makes it live",
        "deploy: each release gets its own id",
        "status: a server that never answers ends at the 1500 ms deadline",
    ] {
        assert!(
            passed.iter().any(|p| p.starts_with(expected)),
            "expected `{expected}` to pass:\n{}",
            passed.join("\n")
        );
    }
    assert_eq!(
        failed.len() + passed.len() + with_outcome(&report, "skip").len(),
        report["checks"].as_array().unwrap().len()
    );
}

/// The four first-party plugins pass the kit: Slack against a script of its webhook, Vercel
/// and Kubernetes through the kit's stand-in to the tests' platform stand-ins, S3 (as a
/// backup store and as a static-site target) to a real S3 server.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_party_plugins_conform() {
    let scripts = repo_root().join("tests/conformance");
    let slack = tokio::task::block_in_place(|| {
        kit(
            Path::new(fixtures::SLACK),
            "notifier",
            &scripts.join("slack.toml"),
            None,
        )
    });
    assert_conforms("slack", &slack, 10);

    // Through the kit's stand-in to a platform stand-in, credentials from the environment.
    let upstream = |wasm: &str, kind: &str, file: &str, api: &str, env: (&str, &str)| {
        tokio::task::block_in_place(|| {
            kit_with(
                Path::new(wasm),
                kind,
                &scripts.join(file),
                Some(api),
                &[env],
            )
        })
    };
    let v = Vercel::start("vc-kit-token", Some("team_standin")).await;
    let vercel = upstream(
        fixtures::VERCEL,
        "deploy-target",
        "vercel.toml",
        &v.api(),
        ("VERCEL_TOKEN", "vc-kit-token"),
    );
    assert_conforms("vercel", &vercel, 20);
    v.server.assert_fits_spec();

    let k = Kubernetes::start_plain("k8s-kit-token").await;
    let kubernetes = upstream(
        fixtures::KUBERNETES,
        "deploy-target",
        "kubernetes.toml",
        &k.api(),
        ("K8S_TOKEN", "k8s-kit-token"),
    );
    assert_conforms("kubernetes", &kubernetes, 20);
    k.server.assert_fits_spec();

    // The traffic scenario: Vercel by Rolling Releases, Kubernetes by HTTPRoute weights.
    let v = Vercel::start("vc-kit-token", Some("team_standin")).await;
    let vercel = upstream(
        fixtures::VERCEL,
        "traffic",
        "vercel.toml",
        &v.api(),
        ("VERCEL_TOKEN", "vc-kit-token"),
    );
    assert_conforms("vercel traffic", &vercel, 20);
    v.server.assert_fits_spec();
    assert!(
        v.state.lock().unwrap().rr.approvals.len() >= 2,
        "stages were approved"
    );
    let c = Cluster::start_plain("k8s-kit-token").await;
    let kubernetes = upstream(
        fixtures::KUBERNETES,
        "traffic",
        "kubernetes-traffic.toml",
        &c.api.base(),
        ("K8S_TOKEN", "k8s-kit-token"),
    );
    assert_conforms("kubernetes traffic", &kubernetes, 20);
    c.api.assert_fits_spec();
    assert!(
        c.state.lock().unwrap().weights.contains(&50),
        "weights were written to the route"
    );

    let server = S3Server::start();
    for kind in ["backup-store", "deploy-target"] {
        let report = upstream(
            fixtures::S3,
            kind,
            "s3.toml",
            &server.endpoint(),
            ("S3_SECRET_KEY", s3::SECRET_KEY),
        );
        assert_conforms(&format!("s3 as a {kind}"), &report, 15);
        assert_eq!(report.1["standin"], "upstream");
    }
}

/// A notifier written in Python: `plugin new --lang python` builds with componentize-py,
/// passes the kit, and then runs in a real deploy, under the same sandbox as a Rust plugin:
/// every event of the run arrives, with the token the host put in.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_notifier_runs_in_the_pipeline_like_a_rust_one() {
    let wasm = tokio::task::block_in_place(|| new_and_build("py-notes", "notifier", "python"));
    let dir = workspace().join("py-notes");
    let out = run(Command::new("python3")
        .current_dir(&dir)
        .args(["-m", "unittest", "-q"]));
    assert!(stderr(&out).contains("OK"), "{}", stderr(&out));
    let report =
        tokio::task::block_in_place(|| kit(&wasm, "notifier", &dir.join("standin.toml"), None));
    assert_conforms("py-notes", &report, 10);

    let hook = TestServer::start(Behaviour::Respond(200, "{}".into())).await;
    let sum = report.1["sha256"].as_str().unwrap().to_string();
    let tables = format!(
        r#"
[plugins.py-notes]
path = "{wasm}"
sha256 = "{sum}"
[plugins.py-notes.policy]
allowed_hosts = ["127.0.0.1:{port}"]
allow_ip_ranges = ["127.0.0.0/8"]
[plugins.py-notes.secrets.token]
from = "${{env:HOOK_TOKEN}}"
hosts = ["127.0.0.1:{port}"]
[plugins.py-notes.config]
url = "http://127.0.0.1:{port}/hooks/deploys"
"#,
        wasm = wasm.display(),
        port = hook.port
    );
    let project = Project::new("notifiers = [\"py-notes\"]", &tables);
    let out = tokio::task::block_in_place(|| {
        project
            .command(&["deploy", "--env", "local", "--output", "json"])
            .env("HOOK_TOKEN", "hook-token-5e1d")
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = hook.seen();
    assert!(seen.len() >= 10, "every transition: {}", seen.len());
    let kinds: Vec<String> = seen
        .iter()
        .map(|s| {
            assert_eq!(s.target, "/hooks/deploys");
            assert_eq!(s.header("authorization"), Some("Bearer hook-token-5e1d"));
            let body: Value = serde_json::from_slice(&s.body).unwrap();
            assert_eq!(body["environment"], "local");
            body["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("succeeded"));
    assert!(kinds.iter().any(|k| k == "stage-succeeded"), "{kinds:?}");
    assert!(!stderr(&out).contains("hook-token-5e1d"));
}

/// docs/wit-reference.md is what the WIT's doc comments say now (`make docs` regenerates
/// it, by running this test with DEPLOY_AGENT_BLESS=1).
#[test]
fn the_wit_reference_is_generated_from_the_wit() {
    let generated = deploy_agent_tests::witdoc::reference(&repo_root().join("wit"));
    let path = repo_root().join("docs/wit-reference.md");
    if std::env::var_os("DEPLOY_AGENT_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/wit-reference.md is stale: run `make docs`"
    );
    for needle in [
        "## interface `deploy-target`",
        "### `rollback`",
        "| `retryable` | `retryable` | A transient failure",
        "### world `notifier-plugin`",
    ] {
        assert!(generated.contains(needle), "{needle}");
    }
}
