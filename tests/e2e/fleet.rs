//! A fleet of agents on one PostgreSQL state: queued work claimed once and in order, a dead
//! agent's runs taken over by the survivors, the agents listed with their health; on SQLite,
//! one daemon per state file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use deploy_agent_tests::daemon::{Daemon, load_project};
use deploy_agent_tests::fleet::{self, HEARTBEAT_MS};
use deploy_agent_tests::{bin, postgres};
use serde_json::Value;

const AGENTS: [&str; 3] = ["web-1", "web-2", "web-3"];
const ENVS: usize = 30;
const PER_ENV: usize = 10;
const KILLS: usize = 3;
/// How long each run holds in its verify check: long enough that three kills land on work.
const CHECK_MS: u64 = 600;

/// A small xorshift: the kill schedule is random, and its seed printed to replay a failure.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn pending(pg: &postgres::Cluster, db: &str) -> i64 {
    pg.psql(
        db,
        "SELECT count(*) FROM queue WHERE state IN ('queued', 'running')",
    )
    .parse()
    .expect("a count")
}

/// The indexes in [`AGENTS`] of the agents with a run claimed and running.
fn busy_agents(pg: &postgres::Cluster, db: &str) -> Vec<usize> {
    let running = pg.psql(
        db,
        "SELECT DISTINCT claimed_by FROM queue WHERE state = 'running'",
    );
    AGENTS
        .iter()
        .enumerate()
        .filter(|(_, n)| running.lines().any(|l| l == **n))
        .map(|(i, _)| i)
        .collect()
}

/// Three daemons (distinct `--host-name`s and state directories, one PostgreSQL state), 300
/// triggers across 30 environments sent through all three, one daemon SIGKILLed at random
/// moments and restarted, three times. Then from the journal, the queue and the audit log:
/// every run executed once and ended, each environment's runs in the order queued, no two
/// agents ever running one environment at once, and every run a kill interrupted taken over
/// by a surviving agent (`run.taken-over`) and resumed or rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_runs_each_run_once_in_order_and_survivors_take_over_a_killed_agents_runs() {
    let pg = postgres::cluster();
    let (db, url) = pg.database("fleet");
    let root = tempfile::tempdir().unwrap();
    let sites = root.path().join("sites");
    std::fs::create_dir_all(&sites).unwrap();
    let mut token = String::new();
    let mut dirs = Vec::new();
    for name in AGENTS {
        let dir = root.path().join(name);
        token = fleet::project(&dir, name, &sites, ENVS, CHECK_MS);
        dirs.push(dir);
    }
    let mut daemons = Vec::new();
    for (name, dir) in AGENTS.iter().zip(&dirs) {
        daemons.push(Some(fleet::start(dir, name, &url).await));
    }

    // The agents know each other.
    let listed = daemons[0]
        .as_ref()
        .unwrap()
        .json("GET", "/v1/agents", &token, None)
        .await;
    let health: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["health"].as_str().unwrap()))
        .collect();
    assert_eq!(
        health,
        AGENTS.iter().map(|n| (*n, "alive")).collect::<Vec<_>>(),
        "{listed}"
    );

    // 300 triggers, each environment's in order through one agent's API, the environments
    // spread over the three.
    let mut senders = Vec::new();
    for (a, d) in daemons.iter().enumerate() {
        let client = (**d.as_ref().unwrap()).clone();
        let token = token.clone();
        senders.push(tokio::spawn(async move {
            for k in 1..=PER_ENV {
                for e in (0..ENVS).filter(|e| e % AGENTS.len() == a) {
                    let body = serde_json::json!({"environment": format!("e{e:02}"), "version": format!("v{k:03}")});
                    let r = client
                        .json("POST", "/v1/deployments", &token, Some(&body))
                        .await;
                    assert!(r["id"].is_string(), "trigger refused: {r}");
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }

    // Kill one agent at a random moment, see the fleet call it dead, let the survivors take
    // over, restart it; three times.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    let mut interrupted: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..KILLS {
        if pending(pg, &db) < 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1500))).await;
        // The victim is picked at random among the agents running something at that moment:
        // a kill between two runs would prove nothing about takeovers.
        let busy = busy_agents(pg, &db);
        if busy.is_empty() {
            continue;
        }
        let victim = busy[rng.below(busy.len() as u64) as usize];
        let name = AGENTS[victim];
        let mut d = daemons[victim].take().unwrap();
        d.signal("KILL");
        let running = pg.psql(
            &db,
            &format!("SELECT id FROM queue WHERE state = 'running' AND claimed_by = '{name}'"),
        );
        let killed_runs: Vec<&str> = running.lines().filter(|l| !l.is_empty()).collect();
        eprintln!("killed {name} with {} run(s) in flight", killed_runs.len());
        for id in killed_runs {
            interrupted.insert(id.to_string(), name.to_string());
        }
        // A survivor shows it dead once its heartbeat lapses.
        let survivor = daemons.iter().flatten().next().unwrap();
        let started = Instant::now();
        loop {
            let listed = survivor.json("GET", "/v1/agents", &token, None).await;
            let health = listed
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .map(|a| a["health"].as_str().unwrap().to_string());
            if health.as_deref() == Some("dead") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_millis(HEARTBEAT_MS * 4),
                "{name} still shown {health:?} after its lease: {listed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The survivors take over every run it had in flight (once its locks' lease lapses)
        // before it comes back.
        let started = Instant::now();
        loop {
            let taken: Vec<String> = pg
                .psql(
                    &db,
                    &format!("SELECT subject FROM audit WHERE action = 'run.taken-over' AND actor <> 'agent:{name}'"),
                )
                .lines()
                .map(str::to_string)
                .collect();
            let waiting: Vec<&String> = interrupted
                .iter()
                .filter(|(run, by)| *by == name && !taken.contains(run))
                .map(|(run, _)| run)
                .collect();
            if waiting.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} run(s) of the killed {name} not taken over: {waiting:?}",
                waiting.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        daemons[victim] = Some(fleet::start(&dirs[victim], name, &url).await);
    }
    assert!(
        !interrupted.is_empty(),
        "no kill landed on a run in flight: the test proved nothing about takeovers"
    );

    let started = Instant::now();
    while pending(pg, &db) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the fleet did not finish: {} item(s) pending\n{}",
            pending(pg, &db),
            daemons
                .iter()
                .flatten()
                .map(|d| d.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let journal = fleet::journal(pg, &db);
    assert_eq!(journal.queue.len(), ENVS * PER_ENV);
    let problems = journal.problems(&interrupted);
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(!journal.takeovers.is_empty());
    // The work was shared: every agent claimed some of it.
    for name in AGENTS {
        assert!(
            journal.queue.iter().any(|q| q.claimed_by == name),
            "{name} ran nothing"
        );
    }
    // The CLI on any of the hosts lists the fleet, alive again.
    let listed = agents(&dirs[0], &[("DA_FLEET_STATE", &url)]);
    let alive = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["health"] == "alive")
        .count();
    assert_eq!(alive, AGENTS.len(), "{listed}");
}

/// On SQLite one daemon serves a state file: a second `serve` on it refuses to start and
/// names the first (pid, host, since); once the first is killed, `agents` shows it dead and
/// a new daemon starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_sqlite_state_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    load_project(dir.path(), 1);
    let mut first = Daemon::start(dir.path(), &[]).await;
    let second = std::process::Command::new(bin())
        .current_dir(dir.path())
        .args(["serve", "--config", "agent.toml", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another daemon serves the state store")
            && stderr.contains(&format!("pid {}", first.pid()))
            && stderr.contains(" since 20"),
        "{stderr}"
    );
    let listed = agents(dir.path(), &[]);
    assert_eq!(listed[0]["health"], "alive", "{listed}");
    assert_eq!(listed[0]["pid"], first.pid(), "{listed}");

    first.signal("KILL");
    let listed = agents(dir.path(), &[]);
    assert_eq!(listed[0]["health"], "dead", "{listed}");
    let again = Daemon::start(dir.path(), &[]).await;
    let listed = agents(dir.path(), &[]);
    assert_eq!(
        (&listed[0]["health"], &listed[0]["pid"]),
        (&Value::from("alive"), &Value::from(again.pid())),
        "{listed}"
    );
}

/// `deploy-agent agents --output json` in `dir`, with `env`.
fn agents(dir: &std::path::Path, env: &[(&str, &str)]) -> Value {
    let out = std::process::Command::new(bin())
        .current_dir(dir)
        .args(["agents", "--output", "json"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
