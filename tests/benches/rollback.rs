//! Emergency rollback on the local target: `--app-only`, and `--full` with a 100 MB SQLite
//! database (the pre-deploy backup restored beside the live file, then the switch: the live
//! file linked aside as the safety snapshot, the restored one renamed over it, the app;
//! verification), agent time step by step, next to the runbook script that does the same by
//! hand (a plain copy aside, then a plain restore), in one run.
//!
//! `cargo bench -p deploy-agent-tests --bench rollback` (ROUNDS=N, default 3; DB_MB=N, default 100).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use deploy_agent::config::Config;
use deploy_agent::pipeline::rollback::{self, DbStrategy, Mode, RollbackRequest};
use deploy_agent::pipeline::{self, Agent, Quiet, Request};
use deploy_agent_tests::repo_root;

fn write_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(
        dir.join("migrations/0001_events.sql"),
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at TEXT NOT NULL, payload TEXT NOT NULL);\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "<h1>bench</h1>").unwrap();
    let toml = format!(
        r#"[agent]
state_dir = "state"
{local_table}[environments.local.target]
plugin = "local"
config = {{ root = "/srv/local", keep = 50 }}
[environments.local.artifact]
path = "site"
[environments.local.database]
url = "sqlite:app.db"
migrations = "migrations"
[environments.local.backup]
keep_last = 100
[environments.local.deploy]
poll_interval_ms = 10
[[environments.local.checks]]
name = "complete"
command = "test -s sites/local/releases/{{release}}/index.html"
"#,
        local_table = deploy_agent_tests::local_plugin_table(),
    );
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
}

async fn fill(db: &Path, mb: usize) {
    use sqlx::Connection;
    let url = format!("sqlite:{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows = mb * 1_000_000 / 140;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO events (at, payload) SELECT datetime(1700000000 + i, 'unixepoch'), hex(randomblob(60)) FROM n;"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn request(version: &str) -> Request {
    Request {
        environment: "local".into(),
        version: Some(version.into()),
        artifact: None,
        actor: "bench".into(),
        reason: None,
        ..Default::default()
    }
}

fn rollback_request(mode: Mode, to: Option<String>) -> RollbackRequest {
    RollbackRequest {
        environment: "local".into(),
        to,
        mode,
        backup: None,
        db_strategy: DbStrategy::Restore,
        reason: "bench".into(),
        actor: "bench".into(),
        force: false,
    }
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mb: usize = std::env::var("DB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_project(root);
    let config = rt
        .block_on(Agent::open(Config::load(&root.join("agent.toml")).unwrap()))
        .unwrap();
    // v1: creates the table; then fill it to the size wanted.
    let o = rt
        .block_on(pipeline::deploy(&config, &request("v1"), &Quiet))
        .unwrap();
    assert!(o.succeeded(), "{:?}", o.deployment.error);
    rt.block_on(fill(&root.join("app.db"), mb));
    let size = std::fs::metadata(root.join("app.db")).unwrap().len();
    println!(
        "emergency rollback, local target, SQLite database of {:.0} MB",
        size as f64 / 1e6
    );
    println!();

    let mut app = Vec::new();
    let mut full = Vec::new();
    let mut full_steps: Vec<(String, Vec<f64>)> = Vec::new();
    let mut runbook_app = Vec::new();
    let mut runbook_full = Vec::new();
    let mut runbook_db = Vec::new();
    let script = repo_root().join("tests/benches/runbook_rollback.py");
    for round in 0..rounds {
        // A release with a migration: its deploy backs the database up first.
        let v = round + 2;
        std::fs::write(
            root.join(format!("migrations/{:04}_step.sql", v)),
            format!("CREATE TABLE t{v} (id INTEGER PRIMARY KEY);\n"),
        )
        .unwrap();
        std::fs::write(root.join("site/index.html"), format!("<h1>v{v}</h1>")).unwrap();
        let o = rt
            .block_on(pipeline::deploy(
                &config,
                &request(&format!("v{v}")),
                &Quiet,
            ))
            .unwrap();
        assert!(o.succeeded(), "{:?}", o.deployment.error);
        let bad = o.deployment.release_id.clone().unwrap();
        let backup_id = o.deployment.backup_id.clone().unwrap();

        // --app-only to the previous release, then back (so --full starts from the same place).
        let out = rt
            .block_on(rollback::execute(
                &config,
                &rollback_request(Mode::App, None),
                &Quiet,
            ))
            .unwrap();
        assert!(out.succeeded());
        app.push(out.total_ms);
        let to = out.record.to_release.clone().unwrap();
        let back = rt
            .block_on(rollback::execute(
                &config,
                &rollback_request(Mode::App, Some(bad.clone())),
                &Quiet,
            ))
            .unwrap();
        assert!(back.succeeded());

        // --full: the pre-deploy backup restored beside, the database and app switched, verify.
        let out = rt
            .block_on(rollback::execute(
                &config,
                &rollback_request(Mode::Full, None),
                &Quiet,
            ))
            .unwrap();
        assert!(out.succeeded(), "{:?}", out.record.detail);
        assert_eq!(out.record.backup_id.as_deref(), Some(backup_id.as_str()));
        full.push(out.total_ms);
        for s in &out.steps {
            match full_steps.iter_mut().find(|(n, _)| *n == s.name) {
                Some((_, v)) => v.push(s.duration_ms),
                None => full_steps.push((s.name.clone(), vec![s.duration_ms])),
            }
        }

        // The runbook, from the same state: a plain copy of the backup to restore from.
        let plain = root.join("runbook-backup.db");
        std::fs::copy(root.join("app.db"), &plain).unwrap();
        let time = |args: &[&str]| {
            let started = Instant::now();
            let out = Command::new("python3")
                .arg(&script)
                .arg(root)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            let db_ms: f64 = said
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (started.elapsed().as_secs_f64() * 1e3, db_ms)
        };
        runbook_app.push(time(&[&to, plain.to_str().unwrap(), "--app-only"]).0);
        let (whole, db_part) = time(&[&to, plain.to_str().unwrap()]);
        runbook_full.push(whole);
        runbook_db.push(db_part);
    }
    println!("deploy-agent rollback (agent time, in process, median of {rounds}):");
    println!(
        "  --app-only                       {:>9.1} ms   (goal <= 1000 ms)",
        median(&mut app)
    );
    println!(
        "  --full                           {:>9.1} ms   (goal <= 5000 ms)",
        median(&mut full)
    );
    let mut database = 0.0;
    for (name, v) in &mut full_steps {
        let m = median(v);
        if name == "restore" || name == "switch" || name == "snapshot" {
            database += m;
        }
        println!("    {name:<10} {m:>9.1} ms");
    }
    println!(
        "  the database part (restore + switch) {database:>9.1} ms   (goal <= the runbook's copy aside + restore)"
    );
    println!();
    println!(
        "the runbook script doing the same by hand (process start to exit, median of {rounds}):"
    );
    println!(
        "  app: switch the symlink, check   {:>9.1} ms",
        median(&mut runbook_app)
    );
    println!(
        "  full: + copy aside, restore      {:>9.1} ms   (plain file: no checksum, no decompression)",
        median(&mut runbook_full)
    );
    println!(
        "    of which the database part     {:>9.1} ms   (shutil.copy aside + sqlite3 backup API)",
        median(&mut runbook_db)
    );
}
