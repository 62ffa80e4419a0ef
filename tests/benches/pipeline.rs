//! The full local pipeline: validate, back up a 10 MB SQLite database, apply 20 migrations,
//! deploy a site with the local target plugin, one command check, notify a webhook. Agent
//! time per stage, then the CLI end to end next to the runbook it replaces (a Python script
//! doing the same steps without validation, journal, lock or audit), in one run.
//!
//! `cargo bench -p deploy-agent-tests --bench pipeline` (ROUNDS=N, default 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use deploy_agent::config::Config;
use deploy_agent::pipeline::{self, Agent, Quiet, Request};
use deploy_agent_tests::http::{Behaviour, TestServer};
use deploy_agent_tests::{bin, fixtures, repo_root};

const MIGRATIONS: usize = 20;

async fn template_db(path: &Path) {
    use sqlx::Connection;
    let url = format!("sqlite:{}?mode=rwc", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 75000)
         INSERT INTO events SELECT i, datetime(1700000000 + i * 60, 'unixepoch'), 'kind-' || (i % 17),
                hex(randomblob(50)) FROM n;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

fn write_project(dir: &Path, hook: &str) {
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    for i in 1..=MIGRATIONS {
        let sql = match i {
            1 => "CREATE INDEX events_at ON events (at);".to_string(),
            2 => "ALTER TABLE events ADD COLUMN source TEXT;".to_string(),
            i if i % 2 == 1 => format!(
                "CREATE TABLE feature_{i} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 0);\nINSERT INTO feature_{i} (id, name) VALUES (1, 'f{i}');"
            ),
            i => format!("ALTER TABLE feature_{} ADD COLUMN note TEXT;", i - 1),
        };
        std::fs::write(m.join(format!("{:04}_step_{i}.sql", i)), sql).unwrap();
    }
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>bench</h1>").unwrap();
    for i in 0..20 {
        std::fs::write(
            site.join(format!("assets/chunk-{i}.js")),
            "x".repeat(10_000),
        )
        .unwrap();
    }
    let toml = format!(
        r#"[agent]
state_dir = "state"
{local_table}[plugins.hook]
path = "{webhook}"
[plugins.hook.policy]
allowed_hosts = ["127.0.0.1"]
allow_ip_ranges = ["127.0.0.0/8"]
[plugins.hook.config]
url = "{hook}"
[environments.local]
notifiers = ["hook"]
[environments.local.target]
plugin = "local"
config = {{ root = "/srv/local" }}
[environments.local.artifact]
path = "site"
[environments.local.database]
url = "sqlite:app.db"
migrations = "migrations"
[environments.local.deploy]
poll_interval_ms = 10
[[environments.local.checks]]
name = "complete"
command = "test -s sites/local/releases/{{release}}/index.html"
"#,
        local_table = deploy_agent_tests::local_plugin_table(),
        webhook = fixtures::WEBHOOK,
    );
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let server = rt.block_on(TestServer::start(Behaviour::Respond(200, "ok".into())));
    let hook = server.url("127.0.0.1", "/hook");
    write_project(root, &hook);
    let template = root.join("template.db");
    rt.block_on(template_db(&template));
    let size = std::fs::metadata(&template).unwrap().len();
    let config = rt
        .block_on(Agent::open(Config::load(&root.join("agent.toml")).unwrap()))
        .unwrap();
    let fresh_db = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(root.join(format!("app.db{suffix}")));
        }
        std::fs::copy(&template, root.join("app.db")).unwrap();
    };
    println!(
        "full local pipeline: {:.1} MB SQLite database, {MIGRATIONS} migrations, a 21-file site, one command check, a webhook notifier",
        size as f64 / 1e6
    );
    println!(
        "(each round starts from a fresh copy of the database, so every migration is pending)"
    );
    println!();

    // Warm-up: compiles the plugins into the on-disk cache, as the first run on a host does.
    fresh_db();
    let warm = rt
        .block_on(pipeline::deploy(&config, &request(1), &Quiet))
        .unwrap();
    assert!(warm.succeeded(), "{:?}", warm.deployment.error);

    let mut stages: Vec<(String, Vec<f64>)> = Vec::new();
    let mut totals = Vec::new();
    for round in 0..rounds {
        fresh_db();
        let outcome = rt
            .block_on(pipeline::deploy(&config, &request(round + 2), &Quiet))
            .unwrap();
        assert!(outcome.succeeded(), "{:?}", outcome.deployment.error);
        assert_eq!(outcome.deployment.schema_after.as_deref(), Some("20"));
        for s in &outcome.stages {
            let name = s.stage.name().to_string();
            match stages.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(s.duration_ms),
                None => stages.push((name, vec![s.duration_ms])),
            }
        }
        totals.push(outcome.total_ms);
    }
    println!("agent time per stage, in process (median of {rounds}):");
    for (name, v) in &mut stages {
        println!("  {name:<10} {:>8.1} ms", median(v));
    }
    println!(
        "  {:<10} {:>8.1} ms  (the whole run, less time spent waiting on the target)",
        "total",
        median(&mut totals)
    );
    println!();

    // End to end, as an operator runs it, next to the runbook, interleaved.
    let agent = bin();
    let script = repo_root().join("tests/benches/runbook.py");
    let mut cli = Vec::new();
    let mut runbook = Vec::new();
    for round in 0..rounds {
        fresh_db();
        let started = Instant::now();
        let out = Command::new(&agent)
            .current_dir(root)
            .args(["deploy", "--env", "local", "--version"])
            .arg(format!("cli-{round}"))
            .output()
            .unwrap();
        cli.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );

        fresh_db();
        let started = Instant::now();
        let out = Command::new("python3")
            .arg(&script)
            .arg(root)
            .arg(format!("runbook-{round}"))
            .arg(&hook)
            .output()
            .unwrap();
        runbook.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (cli, runbook) = (median(&mut cli), median(&mut runbook));
    println!("end to end, process start to exit (median of {rounds}, interleaved):");
    println!(
        "  deploy-agent deploy --env local      {cli:>8.1} ms  (validation, journal, lock, audit, a notification per transition)"
    );
    println!("  python3 runbook.py (the same steps)  {runbook:>8.1} ms  (none of those)");
    println!(
        "  ratio                                {:>8.2}x",
        cli / runbook
    );
    drop(server);
}

fn request(n: usize) -> Request {
    Request {
        environment: "local".into(),
        version: Some(format!("v{n}")),
        artifact: None,
        actor: "bench".into(),
        reason: None,
        ..Default::default()
    }
}
