//! Environments that span hosts: each run's per-host work as rows, and what is live on each
//! host.
//!
//! The agent that claimed the run coordinates: it writes a batch's rows ([`Store::queue_hosts`])
//! and waits for them to end. Each host's own agent claims the rows for its host
//! ([`Store::claim_host_step`]) and does them with its own files and plugins. Agents never talk
//! to each other; the rows are the protocol, and a restart of either side picks up where the
//! rows say.

use serde::{Deserialize, Serialize};

use super::status::{HostAction, HostState};
use super::{Owner, Row, Store, StoreError, now_ms};
use crate::db::Backend;

/// One host's part of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HostStep {
    /// The run.
    pub run_id: String,
    /// The host (its agent's name).
    pub host: String,
    /// What it does.
    pub action: HostAction,
    /// The environment.
    pub environment: String,
    /// Its batch, from 0.
    pub batch: i64,
    /// Where it stands.
    pub state: HostState,
    /// The process of the host's agent that took it, once taken.
    pub claimed_instance: Option<String>,
    /// The release it made live on the host.
    pub release_id: Option<String>,
    /// The release that was live on the host before (what a rollback goes back to).
    pub previous_release: Option<String>,
    /// What happened, or why it failed.
    pub detail: Option<String>,
    /// When it was written.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// When the host's agent started it.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    /// When it ended.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
}

/// What is live on one host of an environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HostRelease {
    /// The host.
    pub host: String,
    /// The release live there.
    pub release_id: String,
    /// Its version.
    pub version: String,
    /// The run that left it there.
    pub run_id: String,
    /// When.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

const COLUMNS: &str = "run_id, host, action, environment, batch, state, claimed_instance, release_id, previous_release, detail, created_at, started_at, finished_at";

fn step(mut r: Row) -> Result<HostStep, StoreError> {
    Ok(HostStep {
        run_id: r.s()?,
        host: r.s()?,
        action: r.w(HostAction::parse)?,
        environment: r.s()?,
        batch: r.i()?,
        state: r.w(HostState::parse)?,
        claimed_instance: r.o()?,
        release_id: r.o()?,
        previous_release: r.o()?,
        detail: r.o()?,
        created_at: r.i()?,
        started_at: r.oi()?,
        finished_at: r.oi()?,
    })
}

impl Store {
    /// Writes `action` for each of `hosts` in `batch` of `run`, queued for the hosts' agents,
    /// each with the release it goes back to on a rollback: the one given, else the one live
    /// on the host now (read here, before the host acts). Idempotent: a row already written
    /// (a resumed coordinator) is left as it is.
    pub async fn queue_hosts(
        &self,
        run: &str,
        environment: &str,
        batch: i64,
        hosts: &[(String, Option<String>)],
        action: HostAction,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for (host, previous) in hosts {
            self.exec(
                &format!(
                    "INSERT INTO host_steps ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'queued', NULL, NULL, \
                     COALESCE($7, (SELECT h.release_id FROM host_releases h WHERE h.environment = $4 AND h.host = $2)), NULL, $6, NULL, NULL) \
                     ON CONFLICT (run_id, host, action) DO NOTHING"
                ),
                &[
                    run.into(),
                    host.as_str().into(),
                    action.as_str().into(),
                    environment.into(),
                    batch.into(),
                    now.into(),
                    previous.as_deref().into(),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// A run's per-host rows, by batch and host.
    pub async fn host_steps(&self, run: &str) -> Result<Vec<HostStep>, StoreError> {
        self.rows(
            &format!("SELECT {COLUMNS} FROM host_steps WHERE run_id = $1 ORDER BY action DESC, batch, host"),
            &[run.into()],
        )
        .await?
        .into_iter()
        .map(step)
        .collect()
    }

    /// Takes the oldest row for `host` that no live process of it has: one queued, or one an
    /// earlier process of this host's agent left running when it died (one live agent holds
    /// a name, so that process is gone). One statement; on PostgreSQL a row being taken this
    /// instant is skipped.
    pub async fn claim_host_step(
        &self,
        host: &str,
        instance: &Owner,
    ) -> Result<Option<HostStep>, StoreError> {
        let lock = match self.pool.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let now = now_ms();
        let taken = self
            .rows(
                &format!(
                    "UPDATE host_steps SET state = 'running', claimed_instance = $2, started_at = $3 \
                     WHERE (run_id, host, action) IN (SELECT run_id, host, action FROM host_steps \
                     WHERE host = $1 AND (state = 'queued' OR (state = 'running' AND claimed_instance <> $2)) \
                     ORDER BY created_at, run_id LIMIT 1{lock}) RETURNING {COLUMNS}"
                ),
                &[host.into(), (&instance.0).into(), now.into()],
            )
            .await?;
        taken.into_iter().next().map(step).transpose()
    }

    /// Ends a host's row, if this process still holds it.
    pub async fn finish_host_step(
        &self,
        s: &HostStep,
        instance: &Owner,
        state: HostState,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE host_steps SET state = $1, detail = $2, release_id = $3, previous_release = $4, finished_at = $5 \
                 WHERE run_id = $6 AND host = $7 AND action = $8 AND claimed_instance = $9 AND state = 'running'",
                &[
                    state.as_str().into(),
                    detail.into(),
                    s.release_id.as_deref().into(),
                    s.previous_release.as_deref().into(),
                    now_ms().into(),
                    s.run_id.as_str().into(),
                    s.host.as_str().into(),
                    s.action.as_str().into(),
                    (&instance.0).into(),
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// Records what is live on `host` of `environment`.
    pub async fn set_host_release(
        &self,
        environment: &str,
        host: &str,
        release: &str,
        version: &str,
        run: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO host_releases (environment, host, release_id, version, run_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (environment, host) DO UPDATE SET release_id = excluded.release_id, version = excluded.version, \
             run_id = excluded.run_id, updated_at = excluded.updated_at",
            &[
                environment.into(),
                host.into(),
                release.into(),
                version.into(),
                run.into(),
                now_ms().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// What is live on each host of `environment`, by host.
    pub async fn host_releases(&self, environment: &str) -> Result<Vec<HostRelease>, StoreError> {
        self.rows(
            "SELECT host, release_id, version, run_id, updated_at FROM host_releases WHERE environment = $1 ORDER BY host",
            &[environment.into()],
        )
        .await?
        .into_iter()
        .map(|mut r| {
            Ok(HostRelease {
                host: r.s()?,
                release_id: r.s()?,
                version: r.s()?,
                run_id: r.s()?,
                updated_at: r.i()?,
            })
        })
        .collect()
    }

    /// Asks run `run` to stop: `why` says who and why. `false` when no such run is running.
    pub async fn request_abort(&self, run: &str, why: &str) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE deployments SET abort_requested = $1 WHERE id = $2 AND status = 'running'",
                &[why.into(), run.into()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Who asked run `run` to stop, and why, if anyone did.
    pub async fn abort_requested(&self, run: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .rows(
                "SELECT abort_requested FROM deployments WHERE id = $1",
                &[run.into()],
            )
            .await?;
        match rows.into_iter().next() {
            Some(mut r) => r.o(),
            None => Ok(None),
        }
    }

    /// Shows why a host's open row waits (empty: nothing to show).
    pub async fn note_host_step(&self, s: &HostStep, detail: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE host_steps SET detail = NULLIF($1, '') WHERE run_id = $2 AND host = $3 AND action = $4 \
             AND state IN ('queued', 'running')",
            &[
                detail.into(),
                s.run_id.as_str().into(),
                s.host.as_str().into(),
                s.action.as_str().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Ends a stopped rollout's open rows as failed (`why`); the hosts whose row was running
    /// (their agent may have changed the host before it stopped).
    pub async fn cancel_rollout(&self, run: &str, why: &str) -> Result<Vec<String>, StoreError> {
        let running = self
            .rows(
                "SELECT host FROM host_steps WHERE run_id = $1 AND action = 'rollout' AND state = 'running'",
                &[run.into()],
            )
            .await?
            .into_iter()
            .map(|mut r| r.s())
            .collect::<Result<Vec<_>, _>>()?;
        self.exec(
            "UPDATE host_steps SET state = 'failed', detail = $2, finished_at = $3 \
             WHERE run_id = $1 AND action = 'rollout' AND state IN ('queued', 'running')",
            &[run.into(), why.into(), now_ms().into()],
        )
        .await?;
        Ok(running)
    }
}
