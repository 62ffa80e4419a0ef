//! Scheduled jobs: one row per occurrence, claimed by inserting it (so one agent of a fleet
//! runs it), updated as its attempts go; and each job's cursor, the time it was first seen
//! scheduled.

use serde::{Deserialize, Serialize};

use super::{JobStatus, Row, Store, StoreError};

/// One occurrence of a scheduled job, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRun {
    /// Its id (`job-…`), in the audit log and notifications.
    pub id: String,
    /// The environment ('' for the agent's own jobs).
    pub environment: String,
    /// The job (`backup`, `prune`, `restore_drill`, `offsite_verify`, `state_backup`).
    pub job: String,
    /// The occurrence it runs for, ms since the epoch.
    pub due_at: i64,
    /// The agent that claimed it.
    pub agent: String,
    /// That agent's process.
    pub owner: String,
    /// Where it stands.
    pub status: JobStatus,
    /// Attempts made so far.
    pub attempts: i64,
    /// When it was claimed.
    pub claimed_at: i64,
    /// When its row last changed.
    pub updated_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// When the next attempt (or the next look at the lock) is due.
    pub next_attempt_at: Option<i64>,
    /// What it did, or why it failed.
    pub detail: Option<String>,
}

const COLUMNS: &str = "id, environment, job, due_at, agent, owner, status, attempts, claimed_at, updated_at, finished_at, next_attempt_at, detail";

fn read(mut r: Row) -> Result<JobRun, StoreError> {
    Ok(JobRun {
        id: r.s()?,
        environment: r.s()?,
        job: r.s()?,
        due_at: r.i()?,
        agent: r.s()?,
        owner: r.s()?,
        status: r.w(JobStatus::parse)?,
        attempts: r.i()?,
        claimed_at: r.i()?,
        updated_at: r.i()?,
        finished_at: r.oi()?,
        next_attempt_at: r.oi()?,
        detail: r.o()?,
    })
}

impl Store {
    /// When `job` of `environment` was first seen scheduled; records `now` if never.
    pub async fn arm_schedule(
        &self,
        environment: &str,
        job: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.exec(
            "INSERT INTO schedule_cursors (environment, job, armed_at) VALUES ($1, $2, $3) ON CONFLICT (environment, job) DO NOTHING",
            &[environment.into(), job.into(), now.into()],
        )
        .await?;
        let rows = self
            .rows(
                "SELECT armed_at FROM schedule_cursors WHERE environment = $1 AND job = $2",
                &[environment.into(), job.into()],
            )
            .await?;
        match rows.into_iter().next() {
            Some(mut r) => r.i(),
            None => Ok(now),
        }
    }

    /// Claims an occurrence: true when this row went in, false when another agent (or an
    /// earlier tick) has it already.
    pub async fn claim_job(&self, run: &JobRun) -> Result<bool, StoreError> {
        let n = self
            .exec(
                &format!(
                    "INSERT INTO scheduled_jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (environment, job, due_at) DO NOTHING"
                ),
                &[
                    (&run.id).into(),
                    (&run.environment).into(),
                    (&run.job).into(),
                    run.due_at.into(),
                    (&run.agent).into(),
                    (&run.owner).into(),
                    run.status.as_str().into(),
                    run.attempts.into(),
                    run.claimed_at.into(),
                    run.updated_at.into(),
                    run.finished_at.into(),
                    run.next_attempt_at.into(),
                    run.detail.as_deref().into(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Writes a claimed run's progress (status, attempts, when next, what happened).
    pub async fn update_job(&self, run: &JobRun) -> Result<(), StoreError> {
        self.exec(
            "UPDATE scheduled_jobs SET owner = $2, status = $3, attempts = $4, updated_at = $5, finished_at = $6, next_attempt_at = $7, detail = $8 WHERE id = $1",
            &[
                (&run.id).into(),
                (&run.owner).into(),
                run.status.as_str().into(),
                run.attempts.into(),
                run.updated_at.into(),
                run.finished_at.into(),
                run.next_attempt_at.into(),
                run.detail.as_deref().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The newest runs, newest first: of one environment, or of all.
    pub async fn job_runs(
        &self,
        environment: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRun>, StoreError> {
        let rows = match environment {
            Some(env) => {
                self.rows(
                    &format!("SELECT {COLUMNS} FROM scheduled_jobs WHERE environment = $1 ORDER BY due_at DESC, claimed_at DESC LIMIT $2"),
                    &[env.into(), limit.into()],
                )
                .await?
            }
            None => {
                self.rows(
                    &format!("SELECT {COLUMNS} FROM scheduled_jobs ORDER BY due_at DESC, claimed_at DESC LIMIT $1"),
                    &[limit.into()],
                )
                .await?
            }
        };
        rows.into_iter().map(read).collect()
    }

    /// The run of `job` before the occurrence `due_at` that ended (succeeded or failed): what
    /// decides whether a success is a recovery.
    pub async fn previous_job_run(
        &self,
        environment: &str,
        job: &str,
        due_at: i64,
    ) -> Result<Option<JobRun>, StoreError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT {COLUMNS} FROM scheduled_jobs WHERE environment = $1 AND job = $2 AND due_at < $3 \
                     AND status IN ('succeeded', 'failed') ORDER BY due_at DESC LIMIT 1"
                ),
                &[environment.into(), job.into(), due_at.into()],
            )
            .await?;
        rows.into_iter().next().map(read).transpose()
    }

    /// This agent's runs that are not over (waiting for a lock, between attempts, or
    /// running when a previous process of it died).
    pub async fn open_job_runs(&self, agent: &str) -> Result<Vec<JobRun>, StoreError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT {COLUMNS} FROM scheduled_jobs WHERE agent = $1 AND status IN ('waiting', 'running', 'retrying') ORDER BY due_at"
                ),
                &[agent.into()],
            )
            .await?;
        rows.into_iter().map(read).collect()
    }
}
