//! Rollback records: automatic (a failed watch) and emergency (an operator).

use serde::Serialize;

use super::{RollbackStatus, Store, StoreError, now_ms};

/// One rollback.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct RollbackRecord {
    /// Its id.
    pub id: String,
    /// The environment.
    pub environment: String,
    /// `automatic` or `operator`.
    pub initiator: String,
    /// `app`, `db` or `full`; `restore` for `backup restore`.
    pub mode: String,
    /// The release that was live.
    pub from_release: Option<String>,
    /// The release live afterwards.
    pub to_release: Option<String>,
    /// The backup restored.
    pub backup_id: Option<String>,
    /// The snapshot taken before restoring.
    pub safety_backup: Option<String>,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// Where it stands; shown as `interrupted` while its agent is gone.
    pub status: RollbackStatus,
    /// What happened, stage by stage.
    pub detail: Option<String>,
    /// Start, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// End, ms since the epoch.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// A restore beside the live database and the switch to it: the names, and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_swap: Option<DatabaseSwap>,
}

/// A database restored beside the live one and switched in: recorded before each step, so an
/// interrupted one is finished or undone from what this says.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DatabaseSwap {
    /// The live database's name (PostgreSQL) or file (SQLite).
    pub live: String,
    /// Where the backup is restored first; it takes the live name at the switch.
    pub staged: String,
    /// Where the live database goes at the switch: the safety snapshot, kept.
    pub aside: String,
    /// How far it got.
    pub phase: SwapPhase,
    /// The time from the first switch (the database) to the second (the app), µs: while it
    /// lasts, one side runs against the other's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_us: Option<u64>,
}

/// How far a [`DatabaseSwap`] got.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SwapPhase {
    /// Restoring into `staged` (the live database untouched).
    Staging,
    /// `staged` is restored and checked.
    Staged,
    /// Switching: the live database may refuse connections until the renames commit.
    Switching,
    /// `staged` has the live name, the old database is `aside`.
    Switched,
}

const COLUMNS: &str = "id, environment, initiator, mode, from_release, to_release, backup_id, safety_backup, actor, reason, status, detail, started_at, finished_at, database_swap";

impl Store {
    /// Records a rollback (insert or update by id).
    pub async fn save_rollback(&self, r: &RollbackRecord) -> Result<(), StoreError> {
        let swap = r
            .database_swap
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Query(format!("database swap: {e}")))?;
        self.exec(
            &format!("INSERT INTO rollbacks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO UPDATE SET to_release = excluded.to_release, backup_id = excluded.backup_id, safety_backup = excluded.safety_backup, status = excluded.status, detail = excluded.detail, finished_at = excluded.finished_at, database_swap = excluded.database_swap"),
            &[
                (&r.id).into(),
                (&r.environment).into(),
                (&r.initiator).into(),
                (&r.mode).into(),
                r.from_release.as_deref().into(),
                r.to_release.as_deref().into(),
                r.backup_id.as_deref().into(),
                r.safety_backup.as_deref().into(),
                (&r.actor).into(),
                r.reason.as_deref().into(),
                r.status.as_str().into(),
                r.detail.as_deref().into(),
                r.started_at.into(),
                r.finished_at.into(),
                swap.as_deref().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// An environment's rollbacks, newest first.
    pub async fn rollbacks(&self, environment: &str) -> Result<Vec<RollbackRecord>, StoreError> {
        self.select_rollbacks(environment, "").await
    }

    /// An environment's rollbacks and restores still marked running, oldest first. Taken
    /// under the environment's lock, these are the ones whose agent died.
    pub async fn unfinished_rollbacks(
        &self,
        environment: &str,
    ) -> Result<Vec<RollbackRecord>, StoreError> {
        let mut all = self
            .select_rollbacks(environment, " AND status = 'running'")
            .await?;
        all.reverse();
        Ok(all)
    }

    async fn select_rollbacks(
        &self,
        environment: &str,
        filter: &str,
    ) -> Result<Vec<RollbackRecord>, StoreError> {
        // `filter` is one of the two fixed clauses above; the environment is bound.
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM rollbacks WHERE environment = $1{filter} ORDER BY started_at DESC"),
                &[environment.into()],
            )
            .await?;
        rows.into_iter()
            .map(|mut r| {
                Ok(RollbackRecord {
                    id: r.s()?,
                    environment: r.s()?,
                    initiator: r.s()?,
                    mode: r.s()?,
                    from_release: r.o()?,
                    to_release: r.o()?,
                    backup_id: r.o()?,
                    safety_backup: r.o()?,
                    actor: r.s()?,
                    reason: r.o()?,
                    status: r.w(RollbackStatus::parse)?,
                    detail: r.o()?,
                    started_at: r.i()?,
                    finished_at: r.oi()?,
                    database_swap: r
                        .o()?
                        .map(|text: String| serde_json::from_str(&text))
                        .transpose()
                        .map_err(|e| StoreError::Query(format!("database swap: {e}")))?,
                })
            })
            .collect()
    }
}

impl RollbackRecord {
    /// The lease a rollback or restore holds while it runs.
    pub fn lease_subject(&self) -> String {
        format!("rollback-{}", self.id)
    }

    /// The step it was in when it stopped, read from what it recorded.
    pub fn stopped_in(&self) -> &'static str {
        if let Some(swap) = &self.database_swap {
            return match swap.phase {
                SwapPhase::Staging => "restore",
                SwapPhase::Staged | SwapPhase::Switching => "switch",
                SwapPhase::Switched => "app",
            };
        }
        match (self.mode.as_str(), &self.safety_backup) {
            ("app", _) => "app",
            (_, Some(_)) => "restore",
            _ => "snapshot",
        }
    }

    /// Stamps the end time, and counts it in the metrics (a succeeded rollback's duration is
    /// the time to recovery: from the decision to roll back to the earlier release live).
    pub fn finish(&mut self) {
        use crate::metrics::{Family, inc, observe};
        let now = now_ms();
        self.finished_at = Some(now);
        let env = ("environment", self.environment.as_str());
        inc(
            Family::Rollbacks,
            &[
                env,
                ("initiator", &self.initiator),
                ("outcome", self.status.as_str()),
            ],
        );
        if self.status == RollbackStatus::Succeeded {
            observe(
                Family::RecoverySeconds,
                &[env],
                (now - self.started_at).max(0) as f64 / 1e3,
            );
        }
    }
}
