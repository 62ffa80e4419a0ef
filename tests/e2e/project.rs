//! A throwaway project for the pipeline and rollback tests: agent.toml with the local target,
//! a site, the example app's migrations, and the real binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use deploy_agent_tests::{bin, repo_root};
use serde_json::Value;

/// A throwaway project: agent.toml, a site, the example app's migrations.
pub(crate) struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// `env_keys` go into `[environments.local]`; `tables` are appended at the end.
    pub(crate) fn new(env_keys: &str, tables: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("site/assets")).unwrap();
        std::fs::write(root.join("site/index.html"), "<h1>v1</h1>").unwrap();
        std::fs::write(root.join("site/assets/app.css"), "body{}").unwrap();
        std::fs::create_dir(root.join("migrations")).unwrap();
        for entry in std::fs::read_dir(repo_root().join("examples/app/migrations")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(
                entry.path(),
                root.join("migrations").join(entry.file_name()),
            )
            .unwrap();
        }
        let toml = format!(
            r#"[agent]
state_dir = "state"

{local_table}
[environments.local]
{env_keys}

[environments.local.target]
plugin = "local"
config = {{ root = "/srv/local", keep = 3 }}

[environments.local.artifact]
path = "site"

[environments.local.database]
url = "sqlite:app.db"
migrations = "migrations"

[environments.local.deploy]
poll_interval_ms = 10
lock_lease_ms = 60000

[[environments.local.checks]]
name = "staged release is complete"
command = "test -s sites/{{env}}/releases/{{release}}/index.html"

[[environments.local.checks]]
name = "live"
stage = "watch"
command = "test \"$(readlink sites/{{env}}/current)\" = releases/{{release}}"
{tables}
"#,
            local_table = deploy_agent_tests::local_plugin_table(),
        );
        std::fs::write(root.join("agent.toml"), toml).unwrap();
        Project { dir }
    }

    /// A project whose `gated` environment (extends `local`) waits for approval before
    /// promote, with a daemon's `[server]` declaring `token_entries`, and a watch window of
    /// `watch_ms`.
    pub(crate) fn gated(token_entries: &[&str], watch_ms: u64) -> Project {
        let tables = format!(
            r#"
[environments.gated]
extends = "local"
[environments.gated.target]
config = {{ root = "/srv/gated" }}
[environments.gated.database]
url = "sqlite:gated.db"
migrations = "migrations"
[environments.gated.approval]
before = "promote"

[server]
grace_period_ms = 20000

{}"#,
            token_entries.join("\n")
        );
        let p = Project::new("", &tables);
        p.edit_config(
            "lock_lease_ms = 60000",
            &format!("lock_lease_ms = 60000\nwatch_ms = {watch_ms}"),
        );
        p
    }

    /// Points the environment's database at `$DA_TEST_APP_URL` (a PostgreSQL database the
    /// test passes to each command) instead of the SQLite file.
    pub(crate) fn database_from_env(&self) {
        self.edit_config(
            "url = \"sqlite:app.db\"",
            "url = \"${env:DA_TEST_APP_URL}\"",
        );
    }

    /// Replaces `from` with `to` in agent.toml.
    pub(crate) fn edit_config(&self, from: &str, to: &str) {
        let toml = std::fs::read_to_string(self.path("agent.toml")).unwrap();
        assert!(toml.contains(from), "agent.toml has no `{from}`");
        std::fs::write(self.path("agent.toml"), toml.replace(from, to)).unwrap();
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path()).args(args);
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("runs")
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.run(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Starts `deploy --env local --output json` in the background and waits until its run
    /// asks for a decision; the child, the run's id and the gate.
    pub(crate) fn deploy_to_a_gate(&self) -> (std::process::Child, String, String) {
        let mut child = self
            .command(&["deploy", "--env", "local", "--output", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..300 {
            let status = self.json(&["status", "--env", "local"]);
            if let Some(w) = status["waiting"].as_array().and_then(|w| w.first()) {
                let run = w["deployment_id"].as_str().unwrap().to_string();
                return (child, run, w["gate"].as_str().unwrap().to_string());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the run never asked for a decision");
    }

    pub(crate) fn deploy(&self) -> (i32, Value) {
        let out = self.run(&["deploy", "--env", "local", "--output", "json"]);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    pub(crate) fn current(&self) -> Option<String> {
        std::fs::read_link(self.path("sites/local/current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    pub(crate) fn db_url(&self) -> String {
        format!("sqlite:{}", self.path("app.db").display())
    }

    pub(crate) fn backups(&self) -> usize {
        std::fs::read_dir(self.path("state/backups/local"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".backup"))
                })
                .count()
            })
            .unwrap_or(0)
    }
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `[plugins.NAME]` table for the webhook fixture notifier posting to `server`, then
/// `extra` (a `[plugins.NAME.notify]` filter, say).
pub(crate) fn webhook_table(
    name: &str,
    server: &deploy_agent_tests::http::TestServer,
    extra: &str,
) -> String {
    format!(
        "\n[plugins.{name}]\npath = {:?}\n[plugins.{name}.policy]\nallowed_hosts = [\"127.0.0.1\"]\nallow_ip_ranges = [\"127.0.0.0/8\"]\n[plugins.{name}.config]\nurl = {:?}\n{extra}",
        deploy_agent_tests::fixtures::WEBHOOK,
        server.url("127.0.0.1", "/hook")
    )
}

/// The `text` of every post the webhook fixture made to `server`, in order.
pub(crate) fn webhook_texts(server: &deploy_agent_tests::http::TestServer) -> Vec<String> {
    server
        .seen()
        .iter()
        .map(|s| {
            let body: Value = serde_json::from_slice(&s.body).unwrap();
            body["text"].as_str().unwrap().to_string()
        })
        .collect()
}
