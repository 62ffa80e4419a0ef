//! Shared harness for the end-to-end tests: the built plugin components, one plugin runtime
//! for the whole test binary, a capture of every log line, a loopback HTTP server with
//! scriptable behaviour, and the `deploy-agent` binary.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cluster;
pub mod daemon;
pub mod fleet;
pub mod http;
pub mod kubernetes;
pub mod logs;
pub mod mem;
pub mod openapi;
pub mod postgres;
pub mod pty;
pub mod s3;
pub mod slack;
pub mod standin;
pub mod vercel;
pub mod vercel_rolling;
pub mod witdoc;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deploy_agent::runtime::{Plugin, PluginSpec, Runtime};

/// Paths of the components `build.rs` built, one constant per plugin.
pub mod fixtures {
    pub const ECHO: &str = env!("PLUGIN_FIXTURE_ECHO");
    /// The local deploy target (a first-party plugin, not a fixture).
    pub const LOCAL: &str = env!("PLUGIN_DEPLOY_AGENT_LOCAL");
    /// The Vercel deploy target (first-party).
    pub const VERCEL: &str = env!("PLUGIN_DEPLOY_AGENT_VERCEL");
    /// The Kubernetes deploy target (first-party).
    pub const KUBERNETES: &str = env!("PLUGIN_DEPLOY_AGENT_KUBERNETES");
    /// The Slack notifier (first-party).
    pub const SLACK: &str = env!("PLUGIN_DEPLOY_AGENT_SLACK");
    /// The S3 static-site target (first-party).
    pub const S3: &str = env!("PLUGIN_DEPLOY_AGENT_S3");
    pub const WEBHOOK: &str = env!("PLUGIN_FIXTURE_WEBHOOK");
    pub const SPIN_LOOP: &str = env!("PLUGIN_FIXTURE_SPIN_LOOP");
    pub const MEMORY_BOMB: &str = env!("PLUGIN_FIXTURE_MEMORY_BOMB");
    pub const DEEP_RECURSION: &str = env!("PLUGIN_FIXTURE_DEEP_RECURSION");
    pub const PANIC: &str = env!("PLUGIN_FIXTURE_PANIC");
    pub const HUGE_RETURN: &str = env!("PLUGIN_FIXTURE_HUGE_RETURN");
    pub const FETCH: &str = env!("PLUGIN_FIXTURE_FETCH");
    pub const FLOOD: &str = env!("PLUGIN_FIXTURE_FLOOD");
    pub const READ_FILE: &str = env!("PLUGIN_FIXTURE_READ_FILE");
    pub const READ_ENV: &str = env!("PLUGIN_FIXTURE_READ_ENV");
    /// A deploy target that leaves a symlink out of its directory in the release it stages.
    pub const LINK_ESCAPE: &str = env!("PLUGIN_FIXTURE_LINK_ESCAPE");
    pub const REFLECT: &str = env!("PLUGIN_FIXTURE_REFLECT");
    pub const HOST_HOG: &str = env!("PLUGIN_FIXTURE_HOST_HOG");
    /// Components built on 2026-11-29 against the WIT package as it was then (before the
    /// signing imports were bound to purposes): they must keep loading.
    pub const LEGACY_ECHO: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/legacy/echo-2026-11-29.wasm");
    pub const LEGACY_S3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/legacy/s3-2026-11-29.wasm");
    /// The first-party local and Vercel targets built on 2026-12-07 against package 0.1.0,
    /// before 0.1.1 added the `traffic` interface: they must keep loading and deploying.
    pub const LEGACY_LOCAL: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/legacy/local-2026-12-07.wasm");
    pub const LEGACY_VERCEL: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/legacy/vercel-2026-12-07.wasm");
    /// A deploy target with the mistakes the conformance kit must catch.
    pub const SLOPPY_TARGET: &str = env!("PLUGIN_FIXTURE_SLOPPY_TARGET");
}

/// The one runtime of the test binary (one engine per process, as in the agent).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<(Runtime, tempfile::TempDir)> = OnceLock::new();
    &RUNTIME
        .get_or_init(|| {
            logs::install();
            let dir = tempfile::tempdir().expect("temp dir");
            let runtime = Runtime::new(dir.path().join("cache")).expect("runtime starts");
            (runtime, dir)
        })
        .0
}

/// A spec for a fixture with nothing granted.
pub fn spec(name: &str, path: &str) -> PluginSpec {
    PluginSpec::new(name, PathBuf::from(path))
}

/// A `started` event for staging, as a notifier gets it.
pub fn event() -> deploy_agent::runtime::Event {
    deploy_agent::runtime::Event {
        kind: deploy_agent::runtime::EventKind::Started,
        environment: "staging".into(),
        deployment_id: "run-1".into(),
        version: "v1".into(),
        actor: "tests".into(),
        stage: None,
        summary: "deploying v1 to staging".into(),
        detail: None,
        duration_ms: None,
        links: vec![],
        at_ms: 0,
    }
}

/// Loads a spec with the shared runtime.
pub fn load(spec: PluginSpec) -> Plugin {
    runtime().load(spec).expect("plugin loads")
}

/// The `deploy-agent` binary, built on first use next to this test binary.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/e2e-xxxx -> target/<profile>/deploy-agent
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let target_dir = profile_dir.parent().expect("target root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repo root");
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(root)
            .args(["build", "--workspace", "--bins"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building deploy-agent failed");
        profile_dir.join("deploy-agent")
    })
    .clone()
}

/// `[plugins.local]` for a project laid out the tests' way: the artifact in `site/`, the
/// releases under `sites/` (seen by the plugin as `/srv`).
pub fn local_plugin_table() -> String {
    format!(
        "[plugins.local]\npath = {:?}\n[plugins.local.policy]\ndirs = [{{ path = \"sites\", guest = \"/srv\", rw = true }}, {{ path = \"site\", guest = \"/artifact\" }}]\n",
        fixtures::LOCAL
    )
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Rows in a table of the SQLite database at `url`.
pub async fn sqlite_count(url: &str, table: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url)
        .await
        .expect("opens the database");
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut conn)
        .await
        .expect("counts rows");
    let _ = conn.close().await;
    n
}
