//! The daemon's scheduled jobs: `[environments.X.schedule]` and `[agent.state_backup]
//! schedule`.
//!
//! ```text
//! each tick:  now (from the clock) → for each scheduled job: its latest occurrence ≤ now,
//!             if after the job was first armed → claim it (insert its row: in a fleet, one
//!             agent wins) → take the environment's lock (or wait for the deploy holding it)
//!             → run → succeeded | retrying (backoff 1 min, 5 min) | failed → audited;
//!             notified on failure, and on the first success after one (recovery)
//! ```
//!
//! Occurrences missed while no agent ran are coalesced: the latest runs once. A job whose
//! agent died mid-run is marked `interrupted` by that agent's next start; its next occurrence
//! runs as usual. The clock is injectable, so tests move time without sleeping.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::maintenance::{self, MaintenanceError};
use super::notify::{self, Notifications};
use super::{Agent, state_backup};
use crate::config::{Cadence, Environment, Job, local_text};
use crate::runtime::{CallContext, EventKind};
use crate::store::{AuditEntry, JobRun, JobStatus, Owner, StoreError};

/// Attempts per occurrence before it is `failed`.
pub const ATTEMPTS: i64 = 3;
/// The wait before attempt 2, then 3.
const BACKOFF_MS: [i64; 2] = [60_000, 300_000];
/// How long the environment's lock is leased (renewed while the job runs).
const LEASE: Duration = Duration::from_secs(60);
const ACTOR: &str = "scheduler";

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }
}

/// A clock that reads the time from a file (ms since the epoch, or RFC 3339), for the tests'
/// daemons: `DEPLOY_AGENT_CLOCK_FILE`, honoured only by a build with failpoints.
#[derive(Debug, Clone)]
pub struct FileClock(pub std::path::PathBuf);

impl Clock for FileClock {
    fn now_ms(&self) -> i64 {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let t = text.trim();
        t.parse::<i64>()
            .ok()
            .or_else(|| crate::time::parse_rfc3339(t).map(|s| s * 1000))
            .unwrap_or_else(crate::store::now_ms)
    }
}

/// The clock the daemon uses: the system's, or under failpoints the test's file.
pub fn daemon_clock() -> Arc<dyn Clock> {
    #[cfg(feature = "failpoints")]
    if let Some(path) = std::env::var_os("DEPLOY_AGENT_CLOCK_FILE") {
        return Arc::new(FileClock(path.into()));
    }
    Arc::new(SystemClock)
}

/// One scheduled job of the configuration: its environment ('' for the agent's own) and
/// cadence.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The environment, or '' for `state_backup`.
    pub environment: String,
    /// The job.
    pub job: Job,
    /// When it runs.
    pub cadence: Cadence,
}

/// Every scheduled job of the configuration.
pub fn entries(agent: &Agent) -> Vec<Entry> {
    let mut out: Vec<Entry> = agent
        .config
        .environments
        .values()
        .flat_map(|env| {
            env.schedule.jobs.iter().map(|(job, cadence)| Entry {
                environment: env.name.clone(),
                job: *job,
                cadence: cadence.clone(),
            })
        })
        .collect();
    if let Some(c) = agent
        .config
        .state_backup
        .as_ref()
        .and_then(|s| s.schedule.clone())
    {
        out.push(Entry {
            environment: String::new(),
            job: Job::StateBackup,
            cadence: c,
        });
    }
    out
}

/// The scheduler of one agent.
pub struct Scheduler {
    agent: Arc<Agent>,
    name: String,
    owner: Owner,
    clock: Arc<dyn Clock>,
    running: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("agent", &self.name)
            .finish()
    }
}

impl Scheduler {
    /// The scheduler of agent `name`, reading `clock`.
    pub fn new(agent: Arc<Agent>, name: String, clock: Arc<dyn Clock>) -> Scheduler {
        Scheduler {
            agent,
            name,
            owner: Owner::this_process(),
            clock,
            running: Arc::default(),
        }
    }

    /// A new run of `job` for the occurrence `due`, as this agent claims it at `now`.
    fn claimant(&self, environment: &str, job: Job, due: i64, now: i64) -> JobRun {
        JobRun {
            id: format!("job-{}", super::new_id()),
            environment: environment.to_string(),
            job: job.name().to_string(),
            due_at: due,
            agent: self.name.clone(),
            owner: self.owner.0.clone(),
            status: JobStatus::Waiting,
            attempts: 0,
            claimed_at: now,
            updated_at: now,
            finished_at: None,
            next_attempt_at: Some(now),
            detail: None,
        }
    }

    /// Marks what a dead process of this agent left running as interrupted; waits and
    /// retries it left are taken over.
    pub async fn adopt(&self) -> Result<(), StoreError> {
        for mut run in self.agent.store.open_job_runs(&self.name).await? {
            if run.owner == self.owner.0 {
                continue;
            }
            let now = self.clock.now_ms();
            if run.status == JobStatus::Running {
                run.status = JobStatus::Interrupted;
                run.finished_at = Some(now);
                run.detail = Some(format!(
                    "its agent stopped mid-run (process {}); the next occurrence runs as usual",
                    run.owner
                ));
                self.audit(&run).await;
            }
            run.owner = self.owner.0.clone();
            run.updated_at = now;
            self.agent.store.update_job(&run).await?;
        }
        Ok(())
    }

    /// One look at the schedule: claims what is due and starts it; starts the retries and
    /// lock waits whose time has come. Returns the runs started.
    pub async fn tick(&self) -> Result<Vec<JobRun>, StoreError> {
        let now = self.clock.now_ms();
        let tz = &self.agent.config.time_zone;
        let mut started = Vec::new();
        for e in entries(&self.agent) {
            let armed = self
                .agent
                .store
                .arm_schedule(&e.environment, e.job.name(), now)
                .await?;
            let Some(due) = e.cadence.due(armed, now, tz) else {
                continue;
            };
            let run = self.claimant(&e.environment, e.job, due, now);
            if self.agent.store.claim_job(&run).await? {
                tracing::info!(
                    job = %e.job,
                    environment = %e.environment,
                    due = %local_text(due, tz),
                    "scheduled job claimed"
                );
                started.push(run);
            }
        }
        for run in self.agent.store.open_job_runs(&self.name).await? {
            let ready = matches!(run.status, JobStatus::Waiting | JobStatus::Retrying)
                && run.next_attempt_at.is_none_or(|t| t <= now)
                && run.owner == self.owner.0;
            if ready && !started.iter().any(|s| s.id == run.id) {
                started.push(run);
            }
        }
        let mut out = Vec::new();
        for run in started {
            if !self
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(run.id.clone())
            {
                continue;
            }
            out.push(run.clone());
            let this = self.handle();
            tokio::spawn(async move {
                let id = run.id.clone();
                if let Err(e) = this.attempt(run).await {
                    tracing::warn!(job = %id, "scheduled job: {e}");
                }
                this.running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id);
            });
        }
        Ok(out)
    }

    /// Runs `job` now, by hand (`schedule run`): journaled, locked, audited and notified like
    /// a scheduled occurrence, but one attempt only, never retried behind the operator's back.
    pub async fn run_now(&self, environment: &str, job: Job) -> Result<JobRun, StoreError> {
        let now = self.clock.now_ms();
        let run = JobRun {
            detail: Some("run by hand".into()),
            ..self.claimant(environment, job, now, now)
        };
        if !self.agent.store.claim_job(&run).await? {
            return Err(StoreError::Query(format!(
                "`{job}` of `{environment}` was claimed at this very millisecond by another agent"
            )));
        }
        self.attempt_with(run, false).await
    }

    async fn attempt(&self, run: JobRun) -> Result<JobRun, StoreError> {
        self.attempt_with(run, true).await
    }

    /// Runs one attempt of `run` to its end, and returns it as journaled then.
    async fn attempt_with(&self, mut run: JobRun, retry: bool) -> Result<JobRun, StoreError> {
        let job = Job::parse(&run.job)
            .ok_or_else(|| StoreError::Query(format!("unknown job `{}`", run.job)))?;
        let env = match run.environment.clone().as_str() {
            "" => None,
            name => match self.agent.config.environments.get(name) {
                Some(e) => Some(e.clone()),
                None => {
                    let why = format!("environment `{name}` is no longer configured");
                    return self.finish(run, Err(why), None, false).await;
                }
            },
        };
        // Never beside a deploy of the same environment: its lock, or wait for it.
        let lease = match &env {
            None => None,
            Some(env) => match self
                .agent
                .store
                .acquire(&env.name, &self.owner, &run.id, LEASE)
                .await
            {
                Ok((lease, _)) => Some(lease),
                Err(StoreError::Locked {
                    holder, deployment, ..
                }) if !retry => {
                    let why = format!(
                        "the environment is locked by {holder} (run {deployment}); try again when it is done"
                    );
                    return self.finish(run, Err(why), Some(env), false).await;
                }
                Err(StoreError::Locked {
                    holder, deployment, ..
                }) => {
                    let now = self.clock.now_ms();
                    run.status = JobStatus::Waiting;
                    run.next_attempt_at = Some(now);
                    run.updated_at = now;
                    run.detail = Some(format!(
                        "waiting for the environment's lock ({holder}, run {deployment})"
                    ));
                    self.agent.store.update_job(&run).await?;
                    return Ok(run);
                }
                Err(e) => return Err(e),
            },
        };
        run.status = JobStatus::Running;
        run.attempts += 1;
        run.updated_at = self.clock.now_ms();
        run.detail = None;
        self.agent.store.update_job(&run).await?;
        let result = self.work(job, env.as_ref()).await;
        if let Some(lease) = lease
            && let Err(e) = lease.release().await
        {
            tracing::warn!(job = %run.id, "releasing the environment lock: {e}");
        }
        self.finish(run, result.map_err(|e| e.to_string()), env.as_ref(), retry)
            .await
    }

    async fn work(&self, job: Job, env: Option<&Environment>) -> Result<String, MaintenanceError> {
        let agent = &self.agent;
        let need = || {
            env.ok_or_else(|| MaintenanceError::Setup(format!("job `{job}` needs an environment")))
        };
        match job {
            Job::Backup => {
                let (m, copied) =
                    maintenance::backup(agent, need()?, ACTOR, "scheduled backup").await?;
                Ok(format!(
                    "backup {} ({} bytes stored){}",
                    m.id,
                    m.stored_bytes,
                    copied
                        .map(|k| format!(", copied off-site as {k}"))
                        .unwrap_or_default()
                ))
            }
            Job::Prune => {
                let p = maintenance::prune(agent, need()?, false).await?;
                Ok(format!(
                    "{} backup(s) deleted{}, {} off-site object(s) deleted",
                    p.deleted.len(),
                    if p.deleted.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.deleted.join(", "))
                    },
                    p.offsite_deleted.len()
                ))
            }
            Job::RestoreDrill => {
                let (m, d) = maintenance::drill(need()?).await?;
                Ok(format!(
                    "restore drill of {} passed in {:.1} s (recorded in its manifest)",
                    m.id, d.seconds
                ))
            }
            Job::OffsiteVerify => {
                let v = maintenance::offsite_verify(agent, need()?).await?;
                Ok(format!(
                    "off-site copy of {} fetched and decoded whole ({} bytes)",
                    v.id, v.raw_bytes
                ))
            }
            Job::StateBackup => {
                let b = state_backup::backup(agent, ACTOR)
                    .await
                    .map_err(|e| MaintenanceError::Setup(e.to_string()))?;
                Ok(format!(
                    "state backup {} (audit head {}){}",
                    b.id,
                    b.audit_head,
                    b.offsite
                        .map(|k| format!(", copied off-site as {k}"))
                        .unwrap_or_default()
                ))
            }
        }
    }

    /// Journals how an attempt ended; schedules the retry, audits, notifies.
    async fn finish(
        &self,
        mut run: JobRun,
        result: Result<String, String>,
        env: Option<&Environment>,
        retry: bool,
    ) -> Result<JobRun, StoreError> {
        let now = self.clock.now_ms();
        run.updated_at = now;
        let mut notify = None;
        match result {
            Ok(detail) => {
                run.status = JobStatus::Succeeded;
                run.finished_at = Some(now);
                run.next_attempt_at = None;
                run.detail = Some(detail);
                let before = self
                    .agent
                    .store
                    .previous_job_run(&run.environment, &run.job, run.due_at)
                    .await?;
                if before.is_some_and(|b| b.status == JobStatus::Failed) {
                    notify = Some(EventKind::Succeeded);
                }
            }
            Err(why) if retry && run.attempts < ATTEMPTS && run.attempts > 0 => {
                let wait = BACKOFF_MS[(run.attempts as usize - 1).min(BACKOFF_MS.len() - 1)];
                run.status = JobStatus::Retrying;
                run.next_attempt_at = Some(now + wait);
                run.detail = Some(format!(
                    "attempt {} of {ATTEMPTS} failed: {why}; next attempt at {}",
                    run.attempts,
                    local_text(now + wait, &self.agent.config.time_zone)
                ));
            }
            Err(why) => {
                run.status = JobStatus::Failed;
                run.finished_at = Some(now);
                run.next_attempt_at = None;
                run.detail = Some(format!("failed after {} attempt(s): {why}", run.attempts));
                notify = Some(EventKind::Failed);
            }
        }
        self.agent.store.update_job(&run).await?;
        self.audit(&run).await;
        if let (Some(kind), Some(env)) = (notify, env) {
            self.notify(kind, &run, env).await;
        }
        Ok(run)
    }

    async fn audit(&self, run: &JobRun) {
        let entry = AuditEntry {
            actor: ACTOR.into(),
            action: format!("schedule.{}", run.job),
            environment: (!run.environment.is_empty()).then(|| run.environment.clone()),
            subject: Some(run.id.clone()),
            why: Some(format!(
                "scheduled for {}",
                local_text(run.due_at, &self.agent.config.time_zone)
            )),
            detail: Some(format!(
                "{}: {}",
                run.status,
                run.detail.as_deref().unwrap_or("")
            )),
        };
        if let Err(e) = self.agent.store.audit(entry).await {
            tracing::warn!(job = %run.id, "cannot audit the scheduled job: {e}");
        }
    }

    async fn notify(&self, kind: EventKind, run: &JobRun, env: &Environment) {
        let notifiers = super::plugins::load_notifiers(&self.agent, env);
        let summary = match kind {
            EventKind::Failed => format!("scheduled {} of {} FAILED", run.job, env.name),
            _ => format!("scheduled {} of {} recovered", run.job, env.name),
        };
        let n = Notifications::start(
            notifiers,
            notify::Audience::of(&self.agent.config, env),
            CallContext::new(&env.name),
            self.agent.events().clone(),
        );
        n.send(notify::event(
            kind,
            &env.name,
            &run.id,
            &run.job,
            ACTOR,
            Some(&run.job),
            summary,
            run.detail.clone(),
            None,
        ));
        let delivery = n.finish().await;
        for f in delivery.failed {
            tracing::warn!(job = %run.id, "notification not delivered: {f}");
        }
    }

    fn handle(&self) -> Scheduler {
        Scheduler {
            agent: self.agent.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            clock: self.clock.clone(),
            running: self.running.clone(),
        }
    }

    /// Ticks every `every` until `stop` turns true.
    pub async fn run(self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        if let Err(e) = self.adopt().await {
            tracing::warn!("scheduler: {e}");
        }
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!("scheduler: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// A scheduled job as `schedule list`, the API and the console show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Scheduled {
    /// The environment ('' for the agent's own jobs).
    pub environment: String,
    /// The job.
    pub job: String,
    /// As written in agent.toml.
    pub schedule: String,
    /// The cron expression it means.
    pub cron: String,
    /// In words.
    pub description: String,
    /// The next three runs, in the agent's time zone.
    pub next: Vec<String>,
    /// The same, ms since the epoch.
    pub next_ms: Vec<i64>,
    /// Its newest run, if any.
    pub last: Option<JobRun>,
}

/// The scheduled jobs (of one environment, or all), with their next runs after `now_ms`.
pub async fn listing(
    agent: &Agent,
    environment: Option<&str>,
    now_ms: i64,
) -> Result<Vec<Scheduled>, StoreError> {
    let tz = &agent.config.time_zone;
    let recent = agent.store.job_runs(environment, 500).await?;
    Ok(entries(agent)
        .into_iter()
        .filter(|e| environment.is_none_or(|n| n == e.environment))
        .map(|e| {
            let next_ms = e.cadence.upcoming(now_ms, tz, 3);
            Scheduled {
                last: recent
                    .iter()
                    .find(|r| r.environment == e.environment && r.job == e.job.name())
                    .cloned(),
                environment: e.environment,
                job: e.job.name().into(),
                schedule: e.cadence.text.clone(),
                cron: e.cadence.cron.clone(),
                description: e.cadence.describe(),
                next: next_ms.iter().map(|t| local_text(*t, tz)).collect(),
                next_ms,
            }
        })
        .collect())
}
