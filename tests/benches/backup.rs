//! Backing up a PostgreSQL database of at least 1 GB of realistic, compressible rows:
//! the agent's backup against `pg_dump -Fc -Z0 > /dev/null` (the floor: one COPY backend,
//! no compression) and `pg_dump -Fc` (gzip), same database, same run. Also the agent's peak
//! memory, which must not grow with the database.
//!
//! `cargo bench -p deploy-agent-tests --bench backup` (BACKUP_ROWS=N to change the size).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use deploy_agent::db::backup::{self, BackupSettings, Key, Retention};
use deploy_agent_tests::mem::{peak_rss_kib, reset_peak};
use deploy_agent_tests::postgres::cluster;

fn time_pg_dump(bin: &std::path::Path, url: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let status = Command::new(bin.join("pg_dump"))
        .args(args)
        .arg("--dbname")
        .arg(url)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}

fn main() {
    let rows: u64 = std::env::var("BACKUP_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = cluster();
    let (db, url) = pg.database("bench_backup");
    println!("generating {rows} rows of event-log data (text, JSON, timestamps)...");
    let started = Instant::now();
    pg.psql(&db, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, level text NOT NULL, service text NOT NULL, message text NOT NULL, attrs jsonb NOT NULL)");
    let batch = 500_000u64;
    let mut from = 1;
    while from <= rows {
        let to = (from + batch - 1).min(rows);
        pg.psql(&db, &format!(
            "INSERT INTO events SELECT g,
                timestamptz '2026-01-01' + g * interval '37 milliseconds',
                (ARRAY['info','info','info','warn','error','debug'])[1 + (g * 7) % 6],
                (ARRAY['checkout','search','auth','billing','catalog','gateway','mailer'])[1 + (g * 13) % 7],
                (ARRAY['request completed','cache miss for key','user signed in','payment authorised for order','slow query detected on','retrying upstream call to','rendered template'])[1 + (g * 11) % 7]
                    || ' ' || substr(md5(g::text), 1, 8 + (g % 17)) || ' in ' || (g * 31 % 997) || ' ms; trace=' || md5((g * 3)::text),
                jsonb_build_object('user_id', (g::bigint * 7919) % 250000, 'region', (ARRAY['eu-west-1','us-east-1','ap-south-1'])[1 + g % 3],
                    'status', (ARRAY[200, 200, 200, 201, 304, 404, 500])[1 + (g * 5) % 7], 'bytes', (g::bigint * 104729) % 65536,
                    'path', '/api/v2/' || (ARRAY['orders','users','items','carts'])[1 + g % 4] || '/' || (g % 100000),
                    'agent', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)','curl/8.5.0','okhttp/4.12.0'])[1 + (g * 17) % 3])
             FROM generate_series({from}, {to}) g"
        ));
        from = to + 1;
    }
    pg.psql(&db, "VACUUM ANALYZE events");
    let size = pg.psql(&db, "SELECT pg_size_pretty(pg_database_size(current_database())) || ' (' || pg_database_size(current_database()) || ' bytes)'");
    println!(
        "database: {size}, generated in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!();

    let bin = pg.bin_dir();
    // Warm the page cache once so every contender reads the same way.
    time_pg_dump(bin, &url, &["-Fc", "-Z0"]);

    let store = tempfile::tempdir().unwrap();
    let settings = |level: i32| BackupSettings {
        environment: "bench".into(),
        dir: store.path().to_path_buf(),
        key: Some(Key::parse(&"5a".repeat(32)).unwrap()),
        zstd_level: level,
        zstd_workers: 0,
        retention: Retention {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
        },
    };
    let agent = |level: i32| -> (Duration, u64, u64, u64) {
        reset_peak();
        let started = Instant::now();
        let m = rt
            .block_on(backup::create(
                &url,
                &settings(level),
                "bench",
                "bench",
                Arc::new(AtomicU64::new(0)),
            ))
            .unwrap();
        let took = started.elapsed();
        std::fs::remove_file(store.path().join(format!("{}.backup", m.id))).unwrap();
        (took, m.raw_bytes, m.stored_bytes, peak_rss_kib() / 1024)
    };
    // Interleaved rounds: this machine's disk and CPU vary run to run, so every contender is
    // measured in every round and the medians are compared.
    const ROUNDS: usize = 3;
    let (mut floor, mut one, mut three) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw, mut stored1, mut stored3, mut rss1, mut rss3) = (0, 0, 0, 0, 0);
    for _ in 0..ROUNDS {
        floor.push(time_pg_dump(bin, &url, &["-Fc", "-Z0"]));
        let (t, r, s, m) = agent(1);
        one.push(t);
        (raw, stored1, rss1) = (r, s, rss1.max(m));
        let (t, _, s, m) = agent(3);
        three.push(t);
        (stored3, rss3) = (s, rss3.max(m));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (floor, one, three) = (median(&mut floor), median(&mut one), median(&mut three));
    println!(
        "median of {ROUNDS} interleaved rounds; dump {} MB",
        raw / 1_000_000
    );
    println!(
        "{:<56} {:>8.2} s",
        "pg_dump -Fc -Z0 > /dev/null   (floor)",
        floor.as_secs_f64()
    );
    println!(
        "{:<56} {:>8.2} s  {:.2}x floor  {} MB stored (x{:.2})",
        "deploy-agent backup (zstd 1, default; sha256, encrypted)",
        one.as_secs_f64(),
        one.as_secs_f64() / floor.as_secs_f64(),
        stored1 / 1_000_000,
        raw as f64 / stored1 as f64
    );
    println!(
        "{:<56} {:>8.2} s  {:.2}x floor  {} MB stored (x{:.2})",
        "deploy-agent backup (zstd 3; sha256, encrypted)",
        three.as_secs_f64(),
        three.as_secs_f64() / floor.as_secs_f64(),
        stored3 / 1_000_000,
        raw as f64 / stored3 as f64
    );
    println!(
        "{:<56} {:>8} MB (zstd 1), {} MB (zstd 3)",
        "deploy-agent peak RSS (highest of the rounds)", rss1, rss3
    );
    let gzip = time_pg_dump(bin, &url, &["-Fc"]);
    println!(
        "{:<56} {:>8.2} s  {:.2}x floor",
        "pg_dump -Fc (gzip)",
        gzip.as_secs_f64(),
        gzip.as_secs_f64() / floor.as_secs_f64()
    );
    println!();
    println!("goal: the agent's backup <= 1.15x the floor, peak RSS <= 64 MB");
}
