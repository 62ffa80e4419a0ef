//! Applying many small migrations: the agent against sqlx's `Migrator::run`, same server,
//! same run. PostgreSQL on a throwaway cluster with fsync on; SQLite on local files.
//!
//! `cargo bench -p deploy-agent-tests --bench migrations` (MIGRATIONS=N to change the count).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use deploy_agent::db::migrate::{self, Settings};
use deploy_agent_tests::postgres::cluster;

fn write_migrations(dir: &Path, n: usize) {
    std::fs::write(
        dir.join("1_create_log.sql"),
        "CREATE TABLE bench_log (id bigint PRIMARY KEY, note text NOT NULL);\n",
    )
    .unwrap();
    for i in 2..=n {
        std::fs::write(
            dir.join(format!("{i}_step_{i}.sql")),
            format!("INSERT INTO bench_log (id, note) VALUES ({i}, 'migration {i}');\n"),
        )
        .unwrap();
    }
}

fn noop(_: usize, _: usize, _: &migrate::Migration) {}

const RUNS: usize = 3;

fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn row(what: &str, took: Duration, n: usize) {
    println!(
        "{what:<58} {:>9.3} s {:>9.2} ms/migration",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / n as f64
    );
}

fn main() {
    let n: usize = std::env::var("MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), n);

    rt.block_on(async {
        println!("applying {n} small migrations, one transaction each");
        println!();
        let pg = cluster();
        println!("PostgreSQL (throwaway cluster, fsync on, TCP loopback), median of {RUNS} runs on fresh databases");
        let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        let mut sqlx_runs = Vec::new();
        let mut agent_runs = Vec::new();
        for run in 0..RUNS {
            let (_, sqlx_url) = pg.database(&format!("bench_sqlx_{run}"));
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&sqlx_url).await.unwrap();
            let started = Instant::now();
            migrator.run(&pool).await.unwrap();
            sqlx_runs.push(started.elapsed());
            pool.close().await;

            let (_, url) = pg.database(&format!("bench_agent_{run}"));
            let settings = Settings::new(&url, dir.path().to_path_buf());
            let started = Instant::now();
            let report = migrate::run(&settings, None, &noop).await.unwrap();
            agent_runs.push(started.elapsed());
            assert_eq!(report.applied.len(), n);
        }
        let sqlx_pg = median(&mut sqlx_runs);
        let agent_pg = median(&mut agent_runs);
        row("  sqlx Migrator::run", sqlx_pg, n);
        row("  deploy-agent migrate run (incl. pre/post checks, lint)", agent_pg, n);
        let lint_started = Instant::now();
        let settings = Settings::new(&pg.url("postgres"), dir.path().to_path_buf());
        let findings = migrate::lint_files(&settings).unwrap();
        println!("    of which linting {n} files: {:.3} s ({} findings)", lint_started.elapsed().as_secs_f64(), findings.len());
        println!("  ratio agent/sqlx: {:.3}  (goal: <= 0.45)", agent_pg.as_secs_f64() / sqlx_pg.as_secs_f64());

        println!();
        println!("SQLite (local file)");
        let files = tempfile::tempdir().unwrap();
        let sqlx_url = format!("sqlite:{}?mode=rwc", files.path().join("sqlx.db").display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&sqlx_url)
            .await
            .unwrap();
        let started = Instant::now();
        sqlx::migrate::Migrator::new(dir.path()).await.unwrap().run(&pool).await.unwrap();
        let sqlx_lite = started.elapsed();
        pool.close().await;
        row(
            "  sqlx Migrator::run (sqlx's default connection options)",
            sqlx_lite,
            n,
        );
        let url = format!("sqlite:{}", files.path().join("agent.db").display());
        let settings = Settings::new(&url, dir.path().to_path_buf());
        let started = Instant::now();
        migrate::run(&settings, None, &noop).await.unwrap();
        let agent_lite = started.elapsed();
        row("  deploy-agent migrate run", agent_lite, n);
        println!(
            "  ratio agent/sqlx: {:.3}  (goal: agent <= 1 s for 1,000)",
            agent_lite.as_secs_f64() / sqlx_lite.as_secs_f64()
        );
    });
}
