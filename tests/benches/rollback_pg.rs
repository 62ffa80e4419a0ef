//! `rollback --full` on PostgreSQL with a ~1 GB database, in one run next to what an operator
//! would otherwise run: stock `pg_restore` of the same dump into an empty database (one
//! transaction, and `-j 2`). Also the mismatch window (from the first switch to the second:
//! database then app) next to the in-place path's (app first, then the safety snapshot and
//! the restore).
//!
//! `cargo bench -p deploy-agent-tests --bench rollback_pg` (PG_ROWS=N, default 3,200,000 ≈ 1 GB;
//! IN_PLACE=0 skips the in-place comparison).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use deploy_agent::config::Config;
use deploy_agent::db::backup;
use deploy_agent::pipeline::rollback::{self, DbStrategy, Mode, RollbackOutcome, RollbackRequest};
use deploy_agent::pipeline::{self, Agent, Quiet, Request};
use deploy_agent_tests::postgres::{Cluster, cluster};

fn write_project(dir: &Path, url: &str, method: &str) {
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(
        dir.join("migrations/0001_events.sql"),
        "CREATE TABLE IF NOT EXISTS events (id bigint PRIMARY KEY, at timestamptz NOT NULL, level text NOT NULL, service text NOT NULL, message text NOT NULL, attrs jsonb NOT NULL);\n\
         CREATE INDEX IF NOT EXISTS events_service_at ON events (service, at);\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("site")).unwrap();
    if !dir.join("site/index.html").exists() {
        std::fs::write(dir.join("site/index.html"), "<h1>v1</h1>").unwrap();
    }
    let toml = format!(
        r#"[agent]
state_dir = "state"
{local_table}[environments.local.target]
plugin = "local"
config = {{ root = "/srv/local", keep = 50 }}
[environments.local.artifact]
path = "site"
[environments.local.database]
url = "{url}"
migrations = "migrations"
rollback = "{method}"
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

fn fill(pg: &Cluster, db: &str, rows: u64) {
    let batch = 500_000u64;
    let mut from = 1;
    while from <= rows {
        let to = (from + batch - 1).min(rows);
        pg.psql(db, &format!(
            "INSERT INTO events SELECT g,
                timestamptz '2026-01-01' + g * interval '37 milliseconds',
                (ARRAY['info','info','info','warn','error','debug'])[1 + (g * 7) % 6],
                (ARRAY['checkout','search','auth','billing','catalog','gateway','mailer'])[1 + (g * 13) % 7],
                (ARRAY['request completed','cache miss for key','user signed in','payment authorised for order','slow query detected on','retrying upstream call to','rendered template'])[1 + (g * 11) % 7]
                    || ' ' || substr(md5(g::text), 1, 8 + (g % 17)) || ' in ' || (g * 31 % 997) || ' ms; trace=' || md5((g * 3)::text),
                jsonb_build_object('user_id', (g::bigint * 7919) % 250000, 'region', (ARRAY['eu-west-1','us-east-1','ap-south-1'])[1 + g % 3],
                    'status', (ARRAY[200, 200, 200, 201, 304, 404, 500])[1 + (g * 5) % 7], 'bytes', (g::bigint * 104729) % 65536,
                    'path', '/api/v2/' || (ARRAY['orders','users','items','carts'])[1 + g % 4] || '/' || (g % 100000))
             FROM generate_series({from}, {to}) g"
        ));
        from = to + 1;
    }
    pg.psql(db, "VACUUM ANALYZE events");
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

/// Deploys a release with one more migration (its deploy backs the database up first);
/// returns the backup's id.
fn deploy_next(rt: &tokio::runtime::Runtime, root: &Path, v: usize) -> String {
    std::fs::write(
        root.join(format!("migrations/{v:04}_step.sql")),
        format!(
            "ALTER TABLE events ADD COLUMN c{v} text; CREATE TABLE t{v} (id int PRIMARY KEY);\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("site/index.html"), format!("<h1>v{v}</h1>")).unwrap();
    let agent = open(rt, root);
    let o = rt
        .block_on(pipeline::deploy(&agent, &request(&format!("v{v}")), &Quiet))
        .unwrap();
    assert!(o.succeeded(), "{:?}", o.deployment.error);
    o.deployment.backup_id.clone().unwrap()
}

fn open(rt: &tokio::runtime::Runtime, root: &Path) -> Agent {
    rt.block_on(Agent::open(Config::load(&root.join("agent.toml")).unwrap()))
        .unwrap()
}

fn full_rollback(rt: &tokio::runtime::Runtime, root: &Path) -> RollbackOutcome {
    let agent = open(rt, root);
    let req = RollbackRequest {
        environment: "local".into(),
        to: None,
        mode: Mode::Full,
        backup: None,
        db_strategy: DbStrategy::Restore,
        reason: "bench".into(),
        actor: "bench".into(),
        force: false,
    };
    let out = rt
        .block_on(rollback::execute(&agent, &req, &Quiet))
        .unwrap();
    assert!(out.succeeded(), "{:?}", out.record.detail);
    out
}

fn step(out: &RollbackOutcome, name: &str) -> f64 {
    out.steps
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.duration_ms)
        .sum()
}

/// Stock pg_restore of `archive` into a new, empty database; seconds.
fn stock(pg: &Cluster, archive: &Path, args: &[&str]) -> f64 {
    let (db, url) = pg.database("bench_stock");
    let started = Instant::now();
    let ok = Command::new(pg.bin_dir().join("pg_restore"))
        .args(["--no-owner", "--exit-on-error"])
        .args(args)
        .arg("--dbname")
        .arg(&url)
        .arg(archive)
        .status()
        .unwrap()
        .success();
    let took = started.elapsed().as_secs_f64();
    assert!(ok, "pg_restore {args:?}");
    pg.psql("postgres", &format!("DROP DATABASE {db}"));
    took
}

fn main() {
    let rows: u64 = std::env::var("PG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_200_000);
    let in_place = std::env::var("IN_PLACE").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = cluster();
    let (db, url) = pg.database("bench_rollback");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_project(root, &url, "swap");
    let agent = open(&rt, root);
    let o = rt
        .block_on(pipeline::deploy(&agent, &request("v1"), &Quiet))
        .unwrap();
    assert!(o.succeeded(), "{:?}", o.deployment.error);
    drop(agent);
    let started = Instant::now();
    fill(pg, &db, rows);
    let size = pg.psql(
        &db,
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
    );
    println!(
        "rollback --full on PostgreSQL: {rows} rows, database {size} (filled in {:.0} s); local target",
        started.elapsed().as_secs_f64()
    );

    // v2 migrates (backup first); the rollback returns to v1 and that backup.
    let b1 = deploy_next(&rt, root, 2);
    let swap = full_rollback(&rt, root);
    let window_ms = swap
        .record
        .database_swap
        .as_ref()
        .and_then(|s| s.window_us)
        .map_or(f64::NAN, |us| us as f64 / 1e3);

    // The same dump, as a plain archive, for stock pg_restore into empty databases.
    let bdir = root.join("state/backups/local");
    let m = backup::find(&bdir, &b1).unwrap();
    let archive = root.join("b1.dump");
    backup::export(&m, &bdir, None, &archive).unwrap();
    let archive_mb = std::fs::metadata(&archive).unwrap().len() as f64 / 1e6;
    let single = stock(pg, &archive, &["--single-transaction"]);
    let jobs2 = stock(pg, &archive, &["--jobs=2"]);
    std::fs::remove_file(&archive).unwrap();

    let agent_s = swap.total_ms / 1e3;
    println!();
    println!("deploy-agent rollback --full, swap (agent time, in process):");
    println!("  total                                   {agent_s:>8.2} s");
    for s in &swap.steps {
        println!(
            "    {:<8} {:>8.2} s  {}",
            s.name,
            s.duration_ms / 1e3,
            s.detail
        );
    }
    println!("  mismatch window (database, then app)    {window_ms:>8.1} ms   (goal <= 1000 ms)");
    println!();
    println!(
        "stock pg_restore of the same dump ({archive_mb:.0} MB archive) into an empty database:"
    );
    println!("  --single-transaction                    {single:>8.2} s");
    println!("  --jobs=2                                {jobs2:>8.2} s");
    println!(
        "  ratio rollback --full / pg_restore -j 2 {:>8.2}x   (goal <= 1.10x)",
        agent_s / jobs2
    );

    if in_place {
        // The same rollback in place, for its window: the app switches first, then the
        // database follows once the safety snapshot and the restore are done.
        deploy_next(&rt, root, 3);
        write_project(root, &url, "in-place");
        let out = full_rollback(&rt, root);
        let window = step(&out, "app") + step(&out, "snapshot") + step(&out, "restore");
        println!();
        println!("the in-place path (rollback = \"in-place\"), for comparison:");
        println!(
            "  total                                   {:>8.2} s",
            out.total_ms / 1e3
        );
        for s in &out.steps {
            println!("    {:<8} {:>8.2} s", s.name, s.duration_ms / 1e3);
        }
        println!(
            "  mismatch window (app, then database)    {:>8.2} s",
            window / 1e3
        );
    }
}
