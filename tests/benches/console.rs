//! The console's board with 50 environments and 1,000 runs (real runs through the daemon's
//! queue, local target): what the server takes to render it, what it weighs, and what
//! Debian's Chromium measures for its first render; next to it, the JSON a user would
//! otherwise poll (`GET /v1/environments`, which says less: no deployer, no checks).
//!
//! `cargo bench -p deploy-agent-tests --bench console` (`make bench-console`). Exits 1 when a
//! run was lost or the board is missing rows; the figures themselves are never pass/fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};

use deploy_agent_tests::daemon::{self, Client, Daemon, quantile};
use deploy_agent_tests::repo_root;

const ENVS: usize = 50;
const PER_ENV: usize = 20;
const SAMPLES: usize = 30;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `SAMPLES` GETs of `path`: sorted latencies and the body's size.
async fn sample(
    d: &Client,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
) -> (Vec<Duration>, usize) {
    let headers: Vec<(String, String)> = cookie
        .map(|c| vec![("cookie".to_string(), c.to_string())])
        .unwrap_or_default();
    let mut took = Vec::new();
    let mut size = 0;
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let r = d.raw("GET", path, token, &headers, None).await.unwrap();
        took.push(t.elapsed());
        assert_eq!(r.status, 200, "{path}");
        size = r.body.len();
    }
    took.sort();
    (took, size)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut failed = false;
    println!(
        "deploy-agent console benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let dir = tempfile::tempdir().unwrap();
    let token = daemon::load_project(dir.path(), ENVS);
    let d = Daemon::start(
        dir.path(),
        &[("DEPLOY_AGENT_LOG", "warn,deploy_agent::server=info")],
    )
    .await;
    let r = daemon::load(&d, &token, ENVS, PER_ENV, 8, Duration::from_secs(1800)).await;
    println!(
        "state: {} runs across {ENVS} environments, made through the daemon in {}",
        r.triggers,
        ms(r.wall)
    );
    if !r.problems.is_empty() {
        failed = true;
        println!("  PROBLEMS: {:?}", r.problems);
    }

    let cookie = d.sign_in(&token).await;
    let (board, board_bytes) = sample(&d, "/", None, Some(&cookie)).await;
    let (api, api_bytes) = sample(&d, "/v1/environments", Some(&token), None).await;
    println!("\nserver, loopback, {SAMPLES} requests each:");
    println!("  what                       p50        p99      bytes");
    for (what, t, bytes) in [
        ("console board  GET /", &board, board_bytes),
        ("JSON API  GET /v1/environments", &api, api_bytes),
    ] {
        println!(
            "  {what:<26} {:>9}  {:>9}  {bytes:>7}",
            ms(quantile(t, 0.5)),
            ms(quantile(t, 0.99))
        );
    }
    let css = d
        .raw("GET", "/console/console.css", None, &[], None)
        .await
        .unwrap();
    let js = d
        .raw("GET", "/console/console.js", None, &[], None)
        .await
        .unwrap();
    println!(
        "  page weight: {board_bytes} B HTML + {} B CSS + {} B JS = {} B, uncompressed, no images (SVG inline)",
        css.body.len(),
        js.body.len(),
        board_bytes + css.body.len() + js.body.len()
    );

    let out = Command::new("node")
        .arg(repo_root().join("tests/browser/board_render.mjs"))
        .current_dir(repo_root().join("tests/browser"))
        .env("CONSOLE_URL", format!("http://{}", d.addr))
        .env("TOKEN", &token)
        .env("LOADS", "10")
        .output()
        .expect("node runs");
    if !out.status.success() {
        println!(
            "browser: failed (run `make browser-tools`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    let loads: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = |k: &str| {
        let mut v: Vec<f64> = loads
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l[k].as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let rows = loads[0]["rows"].as_u64().unwrap_or(0);
    if rows != ENVS as u64 {
        failed = true;
        println!("  PROBLEM: the board shows {rows} rows, not {ENVS}");
    }
    println!("\nChromium (headless), 10 fresh loads of the board, {rows} rows:");
    for (what, key) in [
        ("server response", "response_ms"),
        ("DOMContentLoaded", "dom_ms"),
        ("first contentful paint", "fcp_ms"),
    ] {
        let (p50, max) = field(key);
        println!("  {what:<24} p50 {p50:>7.1} ms   max {max:>7.1} ms");
    }
    drop(d);
    if failed {
        std::process::exit(1);
    }
}
