//! The daemon under load, and at rest.
//!
//! 1. Load: 500 triggers across 50 environments over loopback HTTP (8 concurrent clients),
//!    every run checked (none lost, none duplicated, each environment's in the order sent),
//!    then throughput and API latency (p50/p99). Next to it, what a user would otherwise do:
//!    one `deploy-agent deploy` process per deployment.
//! 2. Idle: resident memory of a daemon with four plugins loaded (local target, Vercel
//!    validator, Slack notifier, S3 off-site backup store), against the 40 MB goal.
//!
//! `cargo bench -p deploy-agent-tests --bench daemon` (`make bench-daemon`). Exits 1 when the
//! load check finds a problem; the figures themselves are never pass/fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};

use deploy_agent_tests::daemon::{self, Daemon, quantile};
use deploy_agent_tests::mem::rss_kib;
use deploy_agent_tests::{bin, fixtures};

const ENVS: usize = 50;
const PER_ENV: usize = 10;
const CLIENTS: usize = 8;
const CLI_DEPLOYS: usize = 50;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut failed = false;
    println!(
        "deploy-agent daemon benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );

    // 1. Load.
    let dir = tempfile::tempdir().unwrap();
    let token = daemon::load_project(dir.path(), ENVS);
    let d = Daemon::start(
        dir.path(),
        &[("DEPLOY_AGENT_LOG", "warn,deploy_agent::server=info")],
    )
    .await;
    let idle_load_rss = rss_kib(d.pid());
    let r = daemon::load(&d, &token, ENVS, PER_ENV, CLIENTS, Duration::from_secs(600)).await;
    let after = rss_kib(d.pid());
    println!(
        "\nload: {} triggers across {ENVS} environments, {CLIENTS} concurrent clients, loopback",
        r.triggers
    );
    println!(
        "  all runs ended in      {:>10}   ({:.1} deployments/s)",
        ms(r.wall),
        r.triggers as f64 / r.wall.as_secs_f64()
    );
    println!(
        "  POST /v1/deployments   p50 {:>9}   p99 {:>9}   max {:>9}",
        ms(quantile(&r.post_latency, 0.5)),
        ms(quantile(&r.post_latency, 0.99)),
        ms(quantile(&r.post_latency, 1.0))
    );
    println!(
        "  GET  /v1/runs/{{id}}     p50 {:>9}   p99 {:>9}   max {:>9}",
        ms(quantile(&r.get_latency, 0.5)),
        ms(quantile(&r.get_latency, 0.99)),
        ms(quantile(&r.get_latency, 1.0))
    );
    println!(
        "  daemon RSS             {:.1} MiB before, {:.1} MiB after",
        idle_load_rss as f64 / 1024.0,
        after as f64 / 1024.0
    );
    if r.problems.is_empty() {
        println!("  checked: every run once, in order per environment, all succeeded");
    } else {
        failed = true;
        println!("  PROBLEMS:");
        for p in &r.problems {
            println!("    {p}");
        }
    }
    drop(d);

    // The alternative: a process per deployment (a CI job calling the CLI).
    let started = Instant::now();
    let mut ok = 0;
    for i in 0..CLI_DEPLOYS {
        let out = Command::new(bin())
            .current_dir(dir.path())
            .args([
                "deploy",
                "--env",
                &format!("e{:02}", i % ENVS),
                "--version",
                &format!("cli-{i}"),
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        ok += usize::from(out.status.success());
    }
    let cli = started.elapsed();
    println!(
        "\nthe same deployments, one `deploy-agent deploy` process each ({CLI_DEPLOYS}, sequential):"
    );
    println!(
        "  {ok}/{CLI_DEPLOYS} succeeded in {}   ({:.1} deployments/s, {} each)",
        ms(cli),
        CLI_DEPLOYS as f64 / cli.as_secs_f64(),
        ms(cli / CLI_DEPLOYS as u32)
    );

    // 2. Idle memory with four plugins loaded.
    let dir = tempfile::tempdir().unwrap();
    let (_, entry) = daemon::token_entry("ops", "read", None);
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "x").unwrap();
    let toml = format!(
        r#"[agent]
state_dir = "state"

{local_table}
[plugins.vercel]
path = "{vercel}"
[plugins.vercel.policy]
allowed_hosts = ["api.vercel.com"]
[plugins.vercel.secrets.token]
from = "${{env:BENCH_VERCEL_TOKEN}}"
hosts = ["api.vercel.com"]
[plugins.vercel.config]
project = "shop"

[plugins.slack]
path = "{slack}"
[plugins.slack.policy]
allowed_hosts = ["slack.com"]
[plugins.slack.secrets.token]
from = "${{env:BENCH_SLACK_TOKEN}}"
hosts = ["slack.com"]
[plugins.slack.config]
mode = "api"
channel = "C0123"

[plugins.s3]
path = "{s3}"
[plugins.s3.policy]
allowed_hosts = ["s3.eu-west-1.amazonaws.com"]
[plugins.s3.secrets.secret-key]
from = "${{env:BENCH_S3_SECRET}}"
hosts = ["s3.eu-west-1.amazonaws.com"]
[plugins.s3.config]
bucket = "backups"
region = "eu-west-1"
access_key_id = "AKIDEXAMPLE"

[environments.production]
notifiers = ["slack"]
[environments.production.target]
plugin = "local"
config = {{ root = "/srv/production" }}
[environments.production.artifact]
path = "site"
[environments.production.validate]
plugins = ["vercel"]
[environments.production.backup]
offsite = "s3"

[server]
{entry}"#,
        local_table = deploy_agent_tests::local_plugin_table(),
        vercel = fixtures::VERCEL,
        slack = fixtures::SLACK,
        s3 = fixtures::S3,
    );
    std::fs::write(dir.path().join("agent.toml"), toml).unwrap();
    let env = [
        ("BENCH_VERCEL_TOKEN", "bench-token-not-real-000000"),
        ("BENCH_SLACK_TOKEN", "xoxb-bench-token-not-real-00"),
        ("BENCH_S3_SECRET", "bench-secret-key-not-real-000"),
    ];
    let d = Daemon::start(dir.path(), &env).await;
    let loaded = d
        .log()
        .lines()
        .find(|l| l.contains("plugins loaded"))
        .unwrap_or_default()
        .to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = rss_kib(d.pid());
    println!("\nidle daemon, four plugins loaded (local, vercel, slack, s3):");
    println!("  {}", loaded.split("INFO ").nth(1).unwrap_or(&loaded));
    println!(
        "  RSS {:.1} MiB ({:.1} MB)   goal: <= 40 MB",
        rss as f64 / 1024.0,
        rss as f64 * 1024.0 / 1e6
    );
    if failed {
        std::process::exit(1);
    }
}
