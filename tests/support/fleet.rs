//! A fleet under test: several `deploy-agent serve` daemons on this machine, each under its
//! own `--host-name` and state directory, sharing one PostgreSQL state database; and what
//! their journals, queue and audit log say afterwards.
//!
//! Every agent serves every environment, with the local target. An environment any agent may
//! run (and take over) needs the same release store behind every agent, so its site root is
//! shared between the agents (on real hosts: a shared volume, or a platform target such as
//! Vercel or Kubernetes, whose state is the platform's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::daemon::{Daemon, token_entry};
use crate::postgres::Cluster;

/// The agents' heartbeat lease and the environments' lock lease, short so a dead agent's
/// work is taken over within seconds.
pub const HEARTBEAT_MS: u64 = 1500;
/// See [`HEARTBEAT_MS`].
pub const LOCK_LEASE_MS: u64 = 2000;

/// Writes agent `name`'s project in `dir`: `envs` environments `e00`.. (the odd ones with
/// `on_interrupt = "rollback"`), each run held `check_ms` in its verify check, releases under
/// `sites` (shared by the fleet). The state store is `${env:DA_FLEET_STATE}`. Returns the
/// admin token.
pub fn project(dir: &Path, name: &str, sites: &Path, envs: usize, check_ms: u64) -> String {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>fleet</h1>").expect("index");
    let (token, entry) = token_entry("fleet", "admin", None);
    let mut toml = format!(
        "[agent]\nstate_dir = \"state\"\nstate_url = \"${{env:DA_FLEET_STATE}}\"\n\n\
         [plugins.local]\npath = {:?}\n[plugins.local.policy]\n\
         dirs = [{{ path = {:?}, guest = \"/srv\", rw = true }}, {{ path = \"site\", guest = \"/artifact\" }}]\n",
        crate::fixtures::LOCAL,
        sites.display().to_string(),
    );
    for e in 0..envs {
        let interrupt = if e % 2 == 1 {
            "on_interrupt = \"rollback\"\n"
        } else {
            ""
        };
        toml.push_str(&crate::daemon::local_environment(e));
        toml.push_str(&format!(
            r#"lock_lease_ms = {LOCK_LEASE_MS}
{interrupt}[[environments.e{e:02}.checks]]
name = "hold"
command = "sleep {}"
"#,
            check_ms as f64 / 1e3
        ));
    }
    toml.push_str(&format!(
        "\n[server]\nhost_name = \"{name}\"\nheartbeat_ms = {HEARTBEAT_MS}\ngrace_period_ms = 2000\n{entry}"
    ));
    std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
    token
}

/// Starts agent `name` in `dir` on the state database at `url`.
pub async fn start(dir: &Path, name: &str, url: &str) -> Daemon {
    Daemon::start_args(
        dir,
        &[
            ("DA_FLEET_STATE", url),
            ("DEPLOY_AGENT_LOG", "warn,deploy_agent::server=info"),
        ],
        &["--host-name", name],
    )
    .await
}

/// One journaled step.
#[derive(Debug, Clone)]
pub struct StepRow {
    /// The run.
    pub run: String,
    /// The stage.
    pub stage: String,
    /// `started` (never ended: its agent died), `done`, `failed`, `skipped`.
    pub status: String,
    /// Start, ms.
    pub started: i64,
    /// End, ms (`None`: never ended).
    pub finished: Option<i64>,
    /// The process that ran it.
    pub owner: String,
}

/// One queue item.
#[derive(Debug, Clone)]
pub struct QueueRow {
    /// The run.
    pub id: String,
    /// Its place in the order.
    pub seq: i64,
    /// The environment.
    pub environment: String,
    /// `queued`, `running`, `done`, `cancelled`.
    pub state: String,
    /// How it ended.
    pub outcome: String,
    /// Who has (had) it.
    pub claimed_by: String,
}

/// What the store recorded.
#[derive(Debug)]
pub struct Journal {
    /// The queue, in order.
    pub queue: Vec<QueueRow>,
    /// Steps by environment.
    pub steps: BTreeMap<String, Vec<StepRow>>,
    /// Each run's status.
    pub runs: BTreeMap<String, String>,
    /// `run.taken-over` entries: (actor, run, detail).
    pub takeovers: Vec<(String, String, String)>,
}

fn rows(pg: &Cluster, db: &str, sql: &str) -> Vec<Vec<String>> {
    pg.psql(db, sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Reads the journal, queue and audit log of the state database `db`.
pub fn journal(pg: &Cluster, db: &str) -> Journal {
    let queue = rows(
        pg,
        db,
        "SELECT id, seq, environment, state, COALESCE(outcome, ''), COALESCE(claimed_by, '') FROM queue ORDER BY seq",
    )
    .into_iter()
    .map(|r| QueueRow {
        id: r[0].clone(),
        seq: r[1].parse().expect("seq"),
        environment: r[2].clone(),
        state: r[3].clone(),
        outcome: r[4].clone(),
        claimed_by: r[5].clone(),
    })
    .collect();
    let mut steps: BTreeMap<String, Vec<StepRow>> = BTreeMap::new();
    for r in rows(
        pg,
        db,
        "SELECT d.environment, s.deployment_id, s.stage, s.status, s.started_at, COALESCE(s.finished_at, -1), COALESCE(s.owner, '') \
         FROM steps s JOIN deployments d ON d.id = s.deployment_id ORDER BY s.started_at",
    ) {
        let finished: i64 = r[5].parse().expect("finished_at");
        steps.entry(r[0].clone()).or_default().push(StepRow {
            run: r[1].clone(),
            stage: r[2].clone(),
            status: r[3].clone(),
            started: r[4].parse().expect("started_at"),
            finished: (finished >= 0).then_some(finished),
            owner: r[6].clone(),
        });
    }
    let runs = rows(pg, db, "SELECT id, status FROM deployments")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let takeovers = rows(
        pg,
        db,
        "SELECT actor, subject, COALESCE(detail, '') FROM audit WHERE action = 'run.taken-over' ORDER BY seq",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    Journal {
        queue,
        steps,
        runs,
        takeovers,
    }
}

impl Journal {
    /// What is wrong with the fleet's work, given the runs `interrupted` by kills (with the
    /// agent killed under each): empty when every run was executed once, in order per
    /// environment, never by two agents at once, and every interrupted run was taken over by
    /// another agent and resumed or rolled back.
    pub fn problems(&self, interrupted: &BTreeMap<String, String>) -> Vec<String> {
        let mut problems = Vec::new();
        // Every item ended, and its run (one per item: the id is the key) ended too.
        for q in &self.queue {
            if q.state != "done" {
                problems.push(format!(
                    "{} ({}) is {}, not done",
                    q.id, q.environment, q.state
                ));
                continue;
            }
            match self.runs.get(&q.id).map(String::as_str) {
                Some("succeeded" | "rolled_back") => {}
                Some(other) => problems.push(format!("{} ended {other} ({})", q.id, q.outcome)),
                None if q.outcome.starts_with("interrupted") => {}
                None => problems.push(format!("{} never ran ({})", q.id, q.outcome)),
            }
        }
        let order: BTreeMap<&str, i64> =
            self.queue.iter().map(|q| (q.id.as_str(), q.seq)).collect();
        for (env, steps) in &self.steps {
            // A run changes hands only when its agent was killed mid-run; a run that did not
            // never does a stage twice (a second agent repeating finished work would).
            let mut owners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for s in steps {
                owners.entry(&s.run).or_default().insert(&s.owner);
            }
            for (run, by) in &owners {
                if by.len() > 1 && !interrupted.contains_key(*run) {
                    problems.push(format!(
                        "{env}: run {run} was run by {by:?} though no agent running it was killed"
                    ));
                }
            }
            let mut done = BTreeSet::new();
            for s in steps.iter().filter(|s| s.status == "done") {
                if owners[s.run.as_str()].len() == 1 && !done.insert((&s.run, &s.stage)) {
                    problems.push(format!("{env}: run {} did {} twice", s.run, s.stage));
                }
            }
            // Per-environment order: a run's first step after every step of the runs queued
            // before it.
            let mut seen_seq = i64::MIN;
            let mut last_run = "";
            for s in steps {
                let seq = order.get(s.run.as_str()).copied().unwrap_or(i64::MAX);
                if s.run != last_run {
                    if seq < seen_seq {
                        problems.push(format!(
                            "{env}: run {} (#{seq}) started after a later one (#{seen_seq})",
                            s.run
                        ));
                    }
                    seen_seq = seen_seq.max(seq);
                    last_run = &s.run;
                }
            }
            // Never two agents at once: steps by different processes never overlap.
            for (i, a) in steps.iter().enumerate() {
                let Some(a_end) = a.finished else { continue };
                for b in &steps[i + 1..] {
                    if b.started >= a_end {
                        break;
                    }
                    if b.owner != a.owner {
                        problems.push(format!(
                            "{env}: {} ({} by {}) overlaps {} ({} by {})",
                            a.stage, a.run, a.owner, b.stage, b.run, b.owner
                        ));
                    }
                }
            }
        }
        // Every interrupted run taken over by another agent.
        for (run, killed) in interrupted {
            let by: Vec<&str> = self
                .takeovers
                .iter()
                .filter(|(_, r, _)| r == run)
                .map(|(actor, _, _)| actor.trim_start_matches("agent:"))
                .collect();
            if !by.iter().any(|a| a != killed) {
                problems.push(format!(
                    "{run}, interrupted by killing {killed}, was not taken over by another agent (takeovers: {by:?})"
                ));
            }
        }
        problems
    }
}

/// Writes host `name`'s project in `dir` for one environment, `web`, that spans `hosts` in
/// batches of one: its own site root (`dir/srv`, the local target's `/srv`), its own copy of
/// the artifact, and a verify check that fails on the host while `dir/fail` exists. The state
/// store is `${env:DA_FLEET_STATE}`. Returns the admin token.
pub fn hosts_project(dir: &Path, name: &str, hosts: &[&str]) -> String {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::create_dir_all(dir.join("srv")).expect("srv");
    std::fs::write(site.join("index.html"), "<h1>web</h1>").expect("index");
    let (token, entry) = token_entry("fleet", "admin", None);
    let toml = format!(
        r#"[agent]
state_dir = "state"
state_url = "${{env:DA_FLEET_STATE}}"

[plugins.local]
path = {local:?}
[plugins.local.policy]
dirs = [{{ path = "srv", guest = "/srv", rw = true }}, {{ path = "site", guest = "/artifact" }}]

[environments.web]
hosts = {hosts:?}
[environments.web.rollout]
batch = 1
[environments.web.target]
plugin = "local"
per_host = true
config = {{ root = "/srv/web", keep = 5 }}
[environments.web.artifact]
path = "site"
[environments.web.deploy]
poll_interval_ms = 10
lock_lease_ms = {LOCK_LEASE_MS}
[[environments.web.checks]]
name = "healthy-here"
command = "test ! -e fail"

[server]
host_name = "{name}"
heartbeat_ms = {HEARTBEAT_MS}
grace_period_ms = 2000
{entry}"#,
        local = crate::fixtures::LOCAL,
    );
    std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
    token
}

/// The release live on the host whose project is in `dir` (its `current` link), if any.
pub fn live_on(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("srv/web/current"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}
