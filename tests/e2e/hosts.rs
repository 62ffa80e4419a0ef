//! An environment that spans hosts: three daemons (`web-1`..`web-3`, each with its own site
//! root and artifact, one PostgreSQL state) roll a release out host by host, each host's own
//! agent doing its host's part. A host that fails its check stops the rollout and the hosts
//! done go back; a host whose agent is down blocks its batch with the reason shown; a
//! coordinator that dies is replaced by a survivor that goes on from the store's rows; an
//! operator's abort (`deploy-agent abort`, `POST /v1/runs/{id}/abort`) ends a blocked rollout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploy_agent_tests::daemon::Daemon;
use deploy_agent_tests::fleet::{self, HEARTBEAT_MS, live_on};
use deploy_agent_tests::{bin, postgres};
use serde_json::{Value, json};

const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];

struct Fleet {
    dirs: Vec<PathBuf>,
    daemons: Vec<Option<Daemon>>,
    token: String,
    url: String,
}

impl Fleet {
    fn any(&self) -> &Daemon {
        self.daemons.iter().flatten().next().expect("an agent up")
    }

    async fn trigger(&self, version: &str) -> String {
        let body = json!({"environment": "web", "version": version});
        let r = self
            .any()
            .json("POST", "/v1/deployments", &self.token, Some(&body))
            .await;
        r["id"].as_str().expect("a run id").to_string()
    }

    async fn run(&self, id: &str) -> Value {
        self.any()
            .json("GET", &format!("/v1/runs/{id}"), &self.token, None)
            .await
    }

    /// Waits until `id` satisfies `done`; the run as the API shows it.
    async fn until(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let r = self.run(id).await;
            if done(&r) {
                return r;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "run {id} never {what}: {r:#}\n{}",
                self.daemons
                    .iter()
                    .flatten()
                    .map(|d| d.log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn ended(&self, id: &str) -> Value {
        self.until(id, "ended", |r| {
            !matches!(r["status"].as_str(), Some("queued" | "running"))
        })
        .await
    }

    /// Kills host `i`'s agent and waits until the fleet shows it dead.
    async fn kill(&mut self, i: usize) {
        let mut d = self.daemons[i].take().expect("running");
        d.signal("KILL");
        let started = Instant::now();
        loop {
            let agents = self
                .any()
                .json("GET", "/v1/agents", &self.token, None)
                .await;
            let dead = agents
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == HOSTS[i] && a["health"] == "dead");
            if dead {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_millis(HEARTBEAT_MS * 4),
                "{} not shown dead: {agents}",
                HOSTS[i]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start(&mut self, i: usize) {
        self.daemons[i] = Some(fleet::start(&self.dirs[i], HOSTS[i], &self.url).await);
    }

    fn live(&self) -> Vec<Option<String>> {
        self.dirs.iter().map(|d| live_on(d)).collect()
    }
}

/// The run's rows for `host` and `action`: (state, detail).
fn host_row(run: &Value, host: &str, action: &str) -> Option<(String, String)> {
    run["hosts"].as_array()?.iter().find_map(|h| {
        (h["host"] == host && h["action"] == action).then(|| {
            (
                h["state"].as_str().unwrap_or_default().to_string(),
                h["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// A time as the API writes it (RFC 3339, UTC, milliseconds: ordered as text).
fn at(v: &Value) -> &str {
    v.as_str().expect("a time")
}

/// One scenario after another on one fleet: a rollout host by host; a failing host rolled
/// back with the others; a down host blocking its batch while its coordinator is killed and
/// replaced; an abort of a blocked rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_spanning_hosts_rolls_out_host_by_host_and_back_when_one_fails() {
    let pg = postgres::cluster();
    let (db, url) = pg.database("hosts");
    let root = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    let mut token = String::new();
    for name in HOSTS {
        let dir = root.path().join(name);
        token = fleet::hosts_project(&dir, name, &HOSTS);
        dirs.push(dir);
    }
    let mut f = Fleet {
        dirs,
        daemons: Vec::new(),
        token,
        url: url.clone(),
    };
    for i in 0..HOSTS.len() {
        f.daemons.push(None);
        f.start(i).await;
    }

    // `plan` shows the batches.
    let plan = cli(&f.dirs[0], &url, &["plan", "--env", "web"]);
    assert!(
        plan.contains("roll out to 3 host(s) in 3 batch(es)"),
        "{plan}"
    );
    assert!(plan.contains("batch 2: web-2"), "{plan}");

    // 1. Host by host: each host's own agent made the release live on its own files, one
    // batch after the other.
    let first = f.trigger("v001").await;
    let run = f.ended(&first).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(f.live(), vec![Some(first.clone()); 3]);
    let rows = run["hosts"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{run:#}");
    for pair in rows.windows(2) {
        assert!(
            at(&pair[1]["started_at"]) >= at(&pair[0]["finished_at"]),
            "batch {} started before batch {} ended: {run:#}",
            pair[1]["batch"],
            pair[0]["batch"]
        );
    }
    for (h, row) in HOSTS.iter().zip(rows) {
        assert_eq!(row["host"], *h);
        assert_eq!(row["state"], "done", "{row}");
    }
    let status = f
        .any()
        .json("GET", "/v1/environments/web/status", &f.token, None)
        .await;
    assert_eq!(status["drift"]["state"], "in_sync", "{status:#}");
    assert_eq!(status["hosts"].as_array().unwrap().len(), 3, "{status:#}");

    // 2. web-2 fails its check: the rollout stops there, web-1 goes back, web-3 is never
    // touched, and the record says why.
    std::fs::write(f.dirs[1].join("fail"), "").unwrap();
    let second = f.trigger("v002").await;
    let run = f.ended(&second).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(f.live(), vec![Some(first.clone()); 3], "{run:#}");
    let (state, detail) = host_row(&run, "web-2", "rollout").expect("web-2's row");
    assert_eq!(state, "failed");
    assert!(detail.contains("healthy-here"), "{detail}");
    assert_eq!(
        host_row(&run, "web-1", "rollback").map(|r| r.0).as_deref(),
        Some("done"),
        "{run:#}"
    );
    assert!(host_row(&run, "web-3", "rollout").is_none(), "{run:#}");
    let error = run["deployment"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("web-2") && error.contains("rolled back web-1"),
        "{error}"
    );
    std::fs::remove_file(f.dirs[1].join("fail")).unwrap();

    // 3. A host's agent is killed mid-rollout (the last host that is not coordinating): its
    // batch blocks, visibly. Then the coordinator itself is killed; the third agent takes the
    // run over and goes on from the rows; both come back and the rollout ends.
    let third = f.trigger("v003").await;
    let claimed = |pg: &postgres::Cluster| {
        pg.psql(
            &db,
            &format!("SELECT COALESCE(claimed_by, '') FROM queue WHERE id = '{third}'"),
        )
    };
    let started = Instant::now();
    let c = loop {
        if let Some(c) = HOSTS.iter().position(|h| *h == claimed(pg)) {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "run {third} never claimed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v = if c == 2 { 1 } else { 2 };
    let survivor = 3 - c - v;
    f.until(&third, "done on web-1", |r| {
        host_row(r, "web-1", "rollout").is_some_and(|(s, _)| s == "done")
    })
    .await;
    f.kill(v).await;
    let run = f
        .until(&third, "blocked on the killed host", |r| {
            host_row(r, HOSTS[v], "rollout").is_some_and(|(_, d)| d.contains("blocked"))
        })
        .await;
    let (_, detail) = host_row(&run, HOSTS[v], "rollout").unwrap();
    assert!(
        detail.contains(HOSTS[v]) && detail.contains("dead"),
        "{detail}"
    );
    assert_eq!(run["status"], "running", "{run:#}");
    for (i, live) in f.live().iter().enumerate().take(v) {
        assert_eq!(
            live.as_deref(),
            Some(third.as_str()),
            "{} before the block",
            HOSTS[i]
        );
    }
    f.kill(c).await;
    let started = Instant::now();
    while claimed(pg) != HOSTS[survivor] {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no takeover by {}",
            HOSTS[survivor]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.start(c).await;
    f.start(v).await;
    let run = f.ended(&third).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(f.live(), vec![Some(third.clone()); 3], "{run:#}");
    let takeovers = pg.psql(
        &db,
        &format!("SELECT actor FROM audit WHERE action = 'run.taken-over' AND subject = '{third}'"),
    );
    assert_eq!(takeovers, format!("agent:{}", HOSTS[survivor]));

    // 4. An abort ends a blocked rollout; the hosts done go back.
    f.kill(2).await;
    let fourth = f.trigger("v004").await;
    f.until(&fourth, "blocked on web-3", |r| {
        host_row(r, "web-3", "rollout").is_some_and(|(_, d)| d.contains("blocked"))
    })
    .await;
    let out = cli(
        &f.dirs[0],
        &url,
        &["abort", &fourth, "--reason", "web-3 is being rebuilt"],
    );
    assert!(out.contains("Asked run"), "{out}");
    let run = f.ended(&fourth).await;
    // It is over: the API says so.
    let again = f
        .any()
        .request(
            "POST",
            &format!("/v1/runs/{fourth}/abort"),
            Some(&f.token),
            Some(&json!({"reason": "again"})),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(again.text().contains("only a running run can be aborted"));
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["deployment"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("web-3 is being rebuilt"), "{error}");
    assert_eq!(f.live()[..2], [Some(third.clone()), Some(third.clone())]);
    assert_eq!(
        host_row(&run, "web-3", "rollout").map(|r| r.0).as_deref(),
        Some("failed")
    );
    // web-3, back, does nothing of the aborted run.
    f.start(2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.live()[2], Some(third.clone()));
}

/// Runs the CLI in `dir` against the shared state; its stdout (it must succeed).
fn cli(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .current_dir(dir)
        .args(args)
        .env("DA_FLEET_STATE", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
