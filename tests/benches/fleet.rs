//! A fleet of agents on one PostgreSQL state (a throwaway cluster).
//!
//! 1. Trigger latency under the daemon bench's load (500 triggers across 50 environments,
//!    8 concurrent clients), one agent: the SQLite state next to the PostgreSQL one (a pool of
//!    connections, and the trigger's four statements).
//! 2. Claim latency: 8 claimants (registered agents) draining 1,000 queued items across 50
//!    environments through `Store::claim`, p50/p99, next to a bare `SELECT 1` round trip.
//! 3. Throughput: the same 120 runs (30 environments, 4 each) drained by 1 agent and by 3.
//! 4. Takeover: an agent SIGKILLed mid-run; the time from the kill to a surviving agent's next
//!    step of that run, next to the leases (goal: within the lease plus one second).
//!
//! `cargo bench -p deploy-agent-tests --bench fleet` (`make bench-fleet`). Exits 1 when a load
//! check finds a problem; the figures themselves are never pass/fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_agent::store::{Claim, Claimant, Owner, QueueItem, QueueState, Registration, Store};
use deploy_agent_tests::daemon::{self, Daemon, quantile};
use deploy_agent_tests::fleet::{self, HEARTBEAT_MS, LOCK_LEASE_MS};
use deploy_agent_tests::postgres;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn pending(pg: &postgres::Cluster, db: &str) -> i64 {
    pg.psql(
        db,
        "SELECT count(*) FROM queue WHERE state IN ('queued', 'running')",
    )
    .parse()
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut failed = false;
    let pg = postgres::cluster();
    println!(
        "deploy-agent fleet benchmark ({} cores, PostgreSQL {})",
        std::thread::available_parallelism().map_or(1, usize::from),
        pg.psql("postgres", "SHOW server_version")
    );

    // 1. Trigger latency, SQLite and PostgreSQL.
    println!("\n1. trigger latency: 500 triggers across 50 environments, 8 clients, one agent");
    for backend in ["SQLite", "PostgreSQL"] {
        let dir = tempfile::tempdir().unwrap();
        let token = daemon::load_project(dir.path(), 50);
        let (_, url) = pg.database("bench_trigger");
        if backend == "PostgreSQL" {
            let toml = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
            std::fs::write(
                dir.path().join("agent.toml"),
                toml.replacen(
                    "state_dir = \"state\"\n",
                    "state_dir = \"state\"\nstate_url = \"${env:DA_FLEET_STATE}\"\n",
                    1,
                ),
            )
            .unwrap();
        }
        let d = Daemon::start(
            dir.path(),
            &[
                ("DA_FLEET_STATE", &url),
                ("DEPLOY_AGENT_LOG", "warn,deploy_agent::server=info"),
            ],
        )
        .await;
        let r = daemon::load(&d, &token, 50, 10, 8, Duration::from_secs(600)).await;
        println!(
            "  {backend:<11} POST p50 {:>9}   p99 {:>9}   GET p50 {:>9}   p99 {:>9}   all ended in {:>9}",
            ms(quantile(&r.post_latency, 0.5)),
            ms(quantile(&r.post_latency, 0.99)),
            ms(quantile(&r.get_latency, 0.5)),
            ms(quantile(&r.get_latency, 0.99)),
            ms(r.wall)
        );
        if !r.problems.is_empty() {
            failed = true;
            println!("  PROBLEMS: {}", r.problems.join("; "));
        }
    }

    // 2. Claim latency.
    let (_, url) = pg.database("bench_claim");
    let store = Store::open(&url).await.unwrap();
    let (envs, per_env, claimants) = (50, 20, 8);
    for k in 0..per_env {
        for e in 0..envs {
            store
                .enqueue(&QueueItem {
                    id: format!("r{e:02}-{k:03}"),
                    seq: 0,
                    environment: format!("e{e:02}"),
                    version: None,
                    artifact: None,
                    actor: "bench".into(),
                    reason: None,
                    source: "api".into(),
                    state: QueueState::Queued,
                    enqueued_at: 0,
                    started_at: None,
                    finished_at: None,
                    outcome: None,
                    claimed_by: None,
                    claimed_instance: None,
                })
                .await
                .unwrap();
        }
    }
    let mut ping = Vec::new();
    for _ in 0..200 {
        let at = Instant::now();
        store.ping().await.unwrap();
        ping.push(at.elapsed());
    }
    ping.sort();
    let store = Arc::new(store);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..claimants {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("claimant-{c}");
            let instance = Owner(format!("bench-{c}:{c}:0"));
            store
                .register(&Registration {
                    name: name.clone(),
                    instance: instance.clone(),
                    version: "bench".into(),
                    environments: Vec::new(),
                    api: None,
                    lease: Duration::from_secs(60),
                })
                .await
                .unwrap();
            let who = Claimant {
                name: &name,
                instance: &instance,
            };
            let mut latencies = Vec::new();
            let mut got = Vec::new();
            loop {
                let mut any = false;
                for e in 0..envs {
                    let env = format!("e{e:02}");
                    let at = Instant::now();
                    let claim = store.claim(&env, &who).await.unwrap();
                    latencies.push(at.elapsed());
                    if let Some(Claim::Next(item)) = claim {
                        any = true;
                        store
                            .queue_finished(&item.id, QueueState::Done, "succeeded")
                            .await
                            .unwrap();
                        got.push(item.id);
                    }
                }
                if !any && store.all_pending().await.unwrap().is_empty() {
                    return (latencies, got);
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut got = Vec::new();
    for t in tasks {
        let (l, g) = t.await.unwrap();
        latencies.extend(l);
        got.extend(g);
    }
    let drained = started.elapsed();
    latencies.sort();
    let total = got.len();
    got.sort();
    got.dedup();
    println!(
        "\n2. claim: {claimants} claimants draining {} items across {envs} environments",
        envs * per_env
    );
    println!(
        "  Store::claim           p50 {:>9}   p99 {:>9}   ({} calls, drained in {})",
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        latencies.len(),
        ms(drained)
    );
    println!(
        "  SELECT 1 round trip    p50 {:>9}   p99 {:>9}",
        ms(quantile(&ping, 0.5)),
        ms(quantile(&ping, 0.99))
    );
    if total != envs * per_env || got.len() != total {
        failed = true;
        println!(
            "  PROBLEM: {total} claims for {} items ({} distinct)",
            envs * per_env,
            got.len()
        );
    } else {
        println!("  checked: every item claimed exactly once");
    }

    // 3. Throughput, 1 agent and 3.
    println!("\n3. throughput: 120 runs (30 environments x 4, a 100 ms check each)");
    for n in [1usize, 3] {
        let (db, url) = pg.database("bench_fleet");
        let root = tempfile::tempdir().unwrap();
        let sites = root.path().join("sites");
        std::fs::create_dir_all(&sites).unwrap();
        let mut agents = Vec::new();
        let mut token = String::new();
        for a in 0..n {
            let name = format!("web-{}", a + 1);
            let dir = root.path().join(&name);
            token = fleet::project(&dir, &name, &sites, 30, 100);
            agents.push(fleet::start(&dir, &name, &url).await);
        }
        let started = Instant::now();
        for k in 0..4 {
            for e in 0..30 {
                let body = serde_json::json!({"environment": format!("e{e:02}"), "version": format!("v{k}")});
                agents[e % n]
                    .json("POST", "/v1/deployments", &token, Some(&body))
                    .await;
            }
        }
        while pending(pg, &db) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = started.elapsed();
        println!(
            "  {n} agent(s)             {:>10}   ({:.1} runs/s)",
            ms(wall),
            120.0 / wall.as_secs_f64()
        );
    }

    // 4. Takeover after a kill.
    println!(
        "\n4. takeover: heartbeat lease {HEARTBEAT_MS} ms, lock lease {LOCK_LEASE_MS} ms (goal: within {} ms)",
        HEARTBEAT_MS.max(LOCK_LEASE_MS) + 1000
    );
    let (db, url) = pg.database("bench_takeover");
    let root = tempfile::tempdir().unwrap();
    let sites = root.path().join("sites");
    std::fs::create_dir_all(&sites).unwrap();
    let names = ["web-1", "web-2"];
    let mut dirs = Vec::new();
    let mut agents = Vec::new();
    let mut token = String::new();
    for name in names {
        let dir = root.path().join(name);
        token = fleet::project(&dir, name, &sites, 1, 4000);
        agents.push(Some(fleet::start(&dir, name, &url).await));
        dirs.push(dir);
    }
    let mut times = Vec::new();
    for round in 0..3 {
        let body = serde_json::json!({"environment": "e00", "version": format!("t{round}")});
        let r = agents[0]
            .as_ref()
            .unwrap()
            .json("POST", "/v1/deployments", &token, Some(&body))
            .await;
        let id = r["id"].as_str().unwrap().to_string();
        // Wait until the run holds in its verify check, then kill its agent.
        let holder = loop {
            let who = pg.psql(
                &db,
                &format!("SELECT q.claimed_by FROM queue q JOIN steps s ON s.deployment_id = q.id WHERE q.id = '{id}' AND s.stage = 'verify' AND s.status = 'started'"),
            );
            if !who.is_empty() {
                break who;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let victim = names.iter().position(|n| *n == holder).unwrap();
        let steps_before: i64 = pg
            .psql(
                &db,
                &format!("SELECT count(*) FROM steps WHERE deployment_id = '{id}'"),
            )
            .parse()
            .unwrap();
        let killed_at = Instant::now();
        agents[victim].take().unwrap().signal("KILL");
        loop {
            let n: i64 = pg
                .psql(
                    &db,
                    &format!("SELECT count(*) FROM steps WHERE deployment_id = '{id}'"),
                )
                .parse()
                .unwrap();
            if n > steps_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = killed_at.elapsed();
        println!(
            "  round {}: {holder} killed, run progressing again after {}",
            round + 1,
            ms(took)
        );
        times.push(took);
        while pending(pg, &db) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agents[victim] = Some(fleet::start(&dirs[victim], names[victim], &url).await);
    }
    times.sort();
    println!(
        "  median                 {:>10}",
        ms(times[times.len() / 2])
    );

    if failed {
        std::process::exit(1);
    }
}
