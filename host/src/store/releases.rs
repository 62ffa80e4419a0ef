//! Releases, and the backups runs took.

use serde::Serialize;

use super::{ReleaseStatus, Row, Store, StoreError, now_ms};

/// A release as recorded.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReleaseRecord {
    /// The environment.
    pub environment: String,
    /// The target's id.
    pub id: String,
    /// The run that made it.
    pub deployment_id: String,
    /// Its version.
    pub version: String,
    /// The artifact's digest.
    pub digest: Option<String>,
    /// The backup taken before its migrations: what a rollback restores.
    pub backup_id: Option<String>,
    /// The schema version it runs on.
    pub schema_version: Option<String>,
    /// Its URL.
    pub url: Option<String>,
    /// Where it stands.
    pub state: ReleaseStatus,
    /// Created, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Promoted, ms since the epoch.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub promoted_at: Option<i64>,
}

const RELEASE_COLUMNS: &str = "environment, id, deployment_id, version, digest, backup_id, schema_version, url, state, created_at, promoted_at";

fn release(mut r: Row) -> Result<ReleaseRecord, StoreError> {
    Ok(ReleaseRecord {
        environment: r.s()?,
        id: r.s()?,
        deployment_id: r.s()?,
        version: r.s()?,
        digest: r.o()?,
        backup_id: r.o()?,
        schema_version: r.o()?,
        url: r.o()?,
        state: r.w(ReleaseStatus::parse)?,
        created_at: r.i()?,
        promoted_at: r.oi()?,
    })
}

impl Store {
    /// Records (or updates) a release.
    pub async fn upsert_release(&self, r: &ReleaseRecord) -> Result<(), StoreError> {
        self.exec(
            &format!("INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (environment, id) DO UPDATE SET state = excluded.state, url = excluded.url, promoted_at = excluded.promoted_at, backup_id = excluded.backup_id, schema_version = excluded.schema_version"),
            &[
                (&r.environment).into(),
                (&r.id).into(),
                (&r.deployment_id).into(),
                (&r.version).into(),
                r.digest.as_deref().into(),
                r.backup_id.as_deref().into(),
                r.schema_version.as_deref().into(),
                r.url.as_deref().into(),
                r.state.as_str().into(),
                r.created_at.into(),
                r.promoted_at.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Sets a release's state (`failed` for a staged release whose run failed).
    pub async fn set_release_state(
        &self,
        environment: &str,
        id: &str,
        state: ReleaseStatus,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE releases SET state = $1 WHERE environment = $2 AND id = $3",
            &[state.as_str().into(), environment.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// Marks `id` live and every other live release of the environment superseded.
    pub async fn mark_live(&self, environment: &str, id: &str) -> Result<(), StoreError> {
        self.exec_all(&[
            (
                "UPDATE releases SET state = 'superseded' WHERE environment = $1 AND state = 'live' AND id <> $2",
                &[environment.into(), id.into()],
            ),
            (
                "UPDATE releases SET state = 'live', promoted_at = $1 WHERE environment = $2 AND id = $3",
                &[now_ms().into(), environment.into(), id.into()],
            ),
        ])
        .await?;
        Ok(())
    }

    /// An environment's releases, newest first.
    pub async fn releases(&self, environment: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE environment = $1 ORDER BY created_at DESC, id DESC"),
                &[environment.into()],
            )
            .await?;
        rows.into_iter().map(release).collect()
    }

    /// Records a backup a run took.
    pub async fn insert_backup(
        &self,
        id: &str,
        environment: &str,
        deployment: &str,
        schema_version: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO backups (id, environment, deployment_id, schema_version, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            &[
                id.into(),
                environment.into(),
                deployment.into(),
                schema_version.into(),
                now_ms().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Backups that recorded releases depend on: `backup prune` never removes them.
    pub async fn protected_backups(&self, environment: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .rows(
                "SELECT DISTINCT backup_id FROM releases WHERE environment = $1 AND backup_id IS NOT NULL AND state IN ('live', 'staged', 'superseded')",
                &[environment.into()],
            )
            .await?;
        rows.into_iter().map(|mut r| r.s()).collect()
    }
}
