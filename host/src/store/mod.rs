//! The agent's own state: deployments and their journaled steps, releases, backups taken by
//! deployments, environment locks (leases) and the hash-chained audit log.
//!
//! SQLite by default (one file under the state directory, WAL mode, permissions 0600);
//! PostgreSQL when several agents share one fleet (`state_url = "${env:STATE_DATABASE_URL}"`).
//! The SQL is the same on both: text and 64-bit integer columns, `ON CONFLICT` upserts.

mod approvals;
mod audit;
mod lease;
mod queue;
mod rollbacks;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;

pub use approvals::{Approval, Decision};
pub use audit::{AuditEntry, AuditRecord, AuditReport};
pub use lease::{Lease, LockHolder, Owner, hostname, running_or_interrupted};
pub use queue::QueueItem;
pub use rollbacks::RollbackRecord;

use crate::db::Backend;
use crate::db::conn::{Conn, lit};

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// It could not be opened.
    #[error("cannot open the state store {location}: {reason}")]
    Open {
        /// Where (password removed).
        location: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("state store: {0}")]
    Query(String),
    /// Another agent holds the environment.
    #[error(
        "environment `{environment}` is locked by {holder} (deployment {deployment}) until its lease expires in {expires_in_s} s"
    )]
    Locked {
        /// The environment.
        environment: String,
        /// Who holds it.
        holder: String,
        /// The run holding it.
        deployment: String,
        /// Seconds left on the lease.
        expires_in_s: i64,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Query(e.to_string())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    version TEXT NOT NULL,
    artifact TEXT,
    digest TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    host TEXT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    error TEXT,
    backup_id TEXT,
    schema_before TEXT,
    schema_after TEXT,
    release_id TEXT,
    previous_release TEXT,
    resumed_from TEXT
);
CREATE INDEX IF NOT EXISTS deployments_env ON deployments (environment, started_at);
CREATE TABLE IF NOT EXISTS steps (
    deployment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    detail TEXT,
    PRIMARY KEY (deployment_id, seq)
);
CREATE TABLE IF NOT EXISTS releases (
    environment TEXT NOT NULL,
    id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT,
    backup_id TEXT,
    schema_version TEXT,
    url TEXT,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    promoted_at BIGINT,
    PRIMARY KEY (environment, id)
);
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    schema_version TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    environment TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    deployment_id TEXT NOT NULL,
    gate TEXT NOT NULL,
    environment TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    expires_at BIGINT,
    decision TEXT,
    decided_by TEXT,
    decided_at BIGINT,
    reason TEXT,
    PRIMARY KEY (deployment_id, gate)
);
CREATE TABLE IF NOT EXISTS rollbacks (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    initiator TEXT NOT NULL,
    mode TEXT NOT NULL,
    from_release TEXT,
    to_release TEXT,
    backup_id TEXT,
    safety_backup TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    status TEXT NOT NULL,
    detail TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    environment TEXT,
    subject TEXT,
    host TEXT NOT NULL,
    why TEXT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    environment TEXT NOT NULL,
    version TEXT,
    artifact TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS queue_pending ON queue (environment, state, seq);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);
";

/// The state store. Cheap to clone; one connection, shared.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Conn>>,
    location: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

/// A deployment run as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Deployment {
    /// The run id (time-sortable).
    pub id: String,
    /// The environment.
    pub environment: String,
    /// The version deployed.
    pub version: String,
    /// The artifact's path.
    pub artifact: Option<String>,
    /// The artifact's digest.
    pub digest: Option<String>,
    /// Who started it.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// The deploy host.
    pub host: String,
    /// The agent process that ran it.
    pub owner: String,
    /// `running`, `succeeded`, `failed`, `interrupted`.
    pub status: String,
    /// The stage it is in, or stopped in.
    pub stage: Option<String>,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// End, ms since the epoch.
    pub finished_at: Option<i64>,
    /// The failure.
    pub error: Option<String>,
    /// The backup taken before migrating.
    pub backup_id: Option<String>,
    /// Schema version before migrating.
    pub schema_before: Option<String>,
    /// Schema version after migrating.
    pub schema_after: Option<String>,
    /// The target's release id.
    pub release_id: Option<String>,
    /// The release live before this one.
    pub previous_release: Option<String>,
    /// For a resumed run: the owner whose run it took over.
    pub resumed_from: Option<String>,
}

/// One journaled step.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Step {
    /// Order within the run.
    pub seq: i64,
    /// The stage.
    pub stage: String,
    /// `started`, `done`, `failed`, `skipped`.
    pub status: String,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// End, ms since the epoch.
    pub finished_at: Option<i64>,
    /// What it did or why it failed.
    pub detail: Option<String>,
}

/// A release as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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
    /// `staged`, `live`, `superseded`, `failed`.
    pub state: String,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Promoted, ms since the epoch.
    pub promoted_at: Option<i64>,
}

const DEPLOYMENT_COLUMNS: &str = "id, environment, version, artifact, digest, actor, reason, host, owner, status, stage, CAST(started_at AS TEXT), CAST(finished_at AS TEXT), error, backup_id, schema_before, schema_after, release_id, previous_release, resumed_from";

const RELEASE_COLUMNS: &str = "environment, id, deployment_id, version, digest, backup_id, schema_version, url, state, CAST(created_at AS TEXT), CAST(promoted_at AS TEXT)";

pub(crate) fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| "NULL".to_string(), lit)
}

pub(crate) struct Row(pub(crate) std::vec::IntoIter<Option<String>>);

impl Row {
    pub(crate) fn s(&mut self) -> String {
        self.0.next().flatten().unwrap_or_default()
    }
    pub(crate) fn o(&mut self) -> Option<String> {
        self.0.next().flatten()
    }
    pub(crate) fn i(&mut self) -> i64 {
        self.s().parse().unwrap_or(0)
    }
    pub(crate) fn oi(&mut self) -> Option<i64> {
        self.o().and_then(|v| v.parse().ok())
    }
}

fn deployment(row: Vec<Option<String>>) -> Deployment {
    let mut r = Row(row.into_iter());
    Deployment {
        id: r.s(),
        environment: r.s(),
        version: r.s(),
        artifact: r.o(),
        digest: r.o(),
        actor: r.s(),
        reason: r.o(),
        host: r.s(),
        owner: r.s(),
        status: r.s(),
        stage: r.o(),
        started_at: r.i(),
        finished_at: r.oi(),
        error: r.o(),
        backup_id: r.o(),
        schema_before: r.o(),
        schema_after: r.o(),
        release_id: r.o(),
        previous_release: r.o(),
        resumed_from: r.o(),
    }
}

fn release(row: Vec<Option<String>>) -> ReleaseRecord {
    let mut r = Row(row.into_iter());
    ReleaseRecord {
        environment: r.s(),
        id: r.s(),
        deployment_id: r.s(),
        version: r.s(),
        digest: r.o(),
        backup_id: r.o(),
        schema_version: r.o(),
        url: r.o(),
        state: r.s(),
        created_at: r.i(),
        promoted_at: r.oi(),
    }
}

impl Store {
    /// Opens (creating) the default store: `<state_dir>/state.db`, owner-only permissions.
    pub async fn open_dir(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("state.db");
        let fail = |reason: String| StoreError::Open {
            location: path.display().to_string(),
            reason,
        };
        create_private(state_dir, &path).map_err(|e| fail(e.to_string()))?;
        Store::open(&format!("sqlite:{}", path.display())).await
    }

    /// Opens (creating tables in) a store by URL: `sqlite:PATH` or `postgres://…`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let location = crate::db::redact_url(url);
        let mut conn = Conn::open(url).await.map_err(|e| StoreError::Open {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        conn.exec(SCHEMA).await.map_err(|e| StoreError::Open {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            location,
        })
    }

    /// Answers when the store does (the daemon's watchdog).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.rows("SELECT 1").await.map(|_| ())
    }

    /// Where it is (password removed).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The backend.
    pub async fn backend(&self) -> Backend {
        self.conn.lock().await.backend()
    }

    async fn exec(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(self.conn.lock().await.exec(sql).await?)
    }

    async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        Ok(self.conn.lock().await.rows(sql).await?)
    }

    /// Records a new run.
    pub async fn insert_deployment(&self, d: &Deployment) -> Result<(), StoreError> {
        self.exec(&format!(
            "INSERT INTO deployments (id, environment, version, artifact, digest, actor, reason, host, owner, status, stage, started_at) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
            lit(&d.id),
            lit(&d.environment),
            lit(&d.version),
            opt(d.artifact.as_deref()),
            opt(d.digest.as_deref()),
            lit(&d.actor),
            opt(d.reason.as_deref()),
            lit(&d.host),
            lit(&d.owner),
            lit(&d.status),
            opt(d.stage.as_deref()),
            d.started_at,
        ))
        .await?;
        Ok(())
    }

    /// Sets one text column of a run.
    pub async fn set_deployment(
        &self,
        id: &str,
        column: DeploymentField,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE deployments SET {} = {} WHERE id = {}",
            column.column(),
            opt(value),
            lit(id)
        ))
        .await?;
        Ok(())
    }

    /// Ends a run.
    pub async fn finish_deployment(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE deployments SET status = {}, error = {}, finished_at = {} WHERE id = {}",
            lit(status),
            opt(error),
            now_ms(),
            lit(id)
        ))
        .await?;
        Ok(())
    }

    /// Hands a run to a new owner (a resumed run).
    pub async fn take_over(&self, id: &str, owner: &str, previous: &str) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE deployments SET owner = {}, resumed_from = {}, status = 'running' WHERE id = {}",
            lit(owner),
            lit(previous),
            lit(id)
        ))
        .await?;
        Ok(())
    }

    /// One run.
    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = {}",
                lit(id)
            ))
            .await?;
        Ok(rows.into_iter().next().map(deployment))
    }

    /// An environment's runs, newest first.
    pub async fn deployments(
        &self,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = {} ORDER BY started_at DESC, id DESC LIMIT {limit}",
                lit(environment)
            ))
            .await?;
        Ok(rows.into_iter().map(deployment).collect())
    }

    /// Runs of an environment still marked running (after taking its lock: interrupted ones).
    pub async fn running(&self, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = {} AND status = 'running' ORDER BY started_at",
                lit(environment)
            ))
            .await?;
        Ok(rows.into_iter().map(deployment).collect())
    }

    /// Journals the start of a step; returns its sequence number.
    pub async fn step_started(&self, deployment: &str, stage: &str) -> Result<i64, StoreError> {
        let mut conn = self.conn.lock().await;
        let seq: i64 = conn
            .scalar(&format!(
                "SELECT CAST(COALESCE(MAX(seq), 0) + 1 AS TEXT) FROM steps WHERE deployment_id = {}",
                lit(deployment)
            ))
            .await?
            .parse()
            .unwrap_or(1);
        conn.exec(&format!(
            "INSERT INTO steps (deployment_id, seq, stage, status, started_at) VALUES ({}, {seq}, {}, 'started', {}); UPDATE deployments SET stage = {} WHERE id = {}",
            lit(deployment),
            lit(stage),
            now_ms(),
            lit(stage),
            lit(deployment),
        ))
        .await?;
        Ok(seq)
    }

    /// Journals the end of a step.
    pub async fn step_finished(
        &self,
        deployment: &str,
        seq: i64,
        status: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE steps SET status = {}, detail = {}, finished_at = {} WHERE deployment_id = {} AND seq = {seq}",
            lit(status),
            opt(detail),
            now_ms(),
            lit(deployment)
        ))
        .await?;
        Ok(())
    }

    /// A run's journal, in order.
    pub async fn steps(&self, deployment: &str) -> Result<Vec<Step>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT CAST(seq AS TEXT), stage, status, CAST(started_at AS TEXT), CAST(finished_at AS TEXT), detail FROM steps WHERE deployment_id = {} ORDER BY seq",
                lit(deployment)
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut r = Row(row.into_iter());
                Step {
                    seq: r.i(),
                    stage: r.s(),
                    status: r.s(),
                    started_at: r.i(),
                    finished_at: r.oi(),
                    detail: r.o(),
                }
            })
            .collect())
    }

    /// Records (or updates) a release.
    pub async fn upsert_release(&self, r: &ReleaseRecord) -> Result<(), StoreError> {
        self.exec(&format!(
            "INSERT INTO releases ({}) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) ON CONFLICT (environment, id) DO UPDATE SET state = excluded.state, url = excluded.url, promoted_at = excluded.promoted_at, backup_id = excluded.backup_id, schema_version = excluded.schema_version",
            RELEASE_COLUMNS.replace("CAST(", "").replace(" AS TEXT)", ""),
            lit(&r.environment),
            lit(&r.id),
            lit(&r.deployment_id),
            lit(&r.version),
            opt(r.digest.as_deref()),
            opt(r.backup_id.as_deref()),
            opt(r.schema_version.as_deref()),
            opt(r.url.as_deref()),
            lit(&r.state),
            r.created_at,
            r.promoted_at.map_or_else(|| "NULL".to_string(), |v| v.to_string()),
        ))
        .await?;
        Ok(())
    }

    /// Sets a release's state (`failed` for a staged release whose run failed).
    pub async fn set_release_state(
        &self,
        environment: &str,
        id: &str,
        state: &str,
    ) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE releases SET state = {} WHERE environment = {} AND id = {}",
            lit(state),
            lit(environment),
            lit(id)
        ))
        .await?;
        Ok(())
    }

    /// Marks `id` live and every other live release of the environment superseded.
    pub async fn mark_live(&self, environment: &str, id: &str) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE releases SET state = 'superseded' WHERE environment = {env} AND state = 'live' AND id <> {id}; UPDATE releases SET state = 'live', promoted_at = {now} WHERE environment = {env} AND id = {id}",
            env = lit(environment),
            id = lit(id),
            now = now_ms(),
        ))
        .await?;
        Ok(())
    }

    /// An environment's releases, newest first.
    pub async fn releases(&self, environment: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases WHERE environment = {} ORDER BY created_at DESC, id DESC",
                lit(environment)
            ))
            .await?;
        Ok(rows.into_iter().map(release).collect())
    }

    /// Records a backup a run took.
    pub async fn insert_backup(
        &self,
        id: &str,
        environment: &str,
        deployment: &str,
        schema_version: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(&format!(
            "INSERT INTO backups (id, environment, deployment_id, schema_version, created_at) VALUES ({}, {}, {}, {}, {}) ON CONFLICT (id) DO NOTHING",
            lit(id),
            lit(environment),
            lit(deployment),
            opt(schema_version),
            now_ms()
        ))
        .await?;
        Ok(())
    }

    /// Backups that recorded releases depend on: `backup prune` never removes them.
    pub async fn protected_backups(&self, environment: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT DISTINCT backup_id FROM releases WHERE environment = {} AND backup_id IS NOT NULL AND state IN ('live', 'staged', 'superseded')",
                lit(environment)
            ))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }
}

/// The run columns [`Store::set_deployment`] may set.
#[derive(Debug, Clone, Copy)]
pub enum DeploymentField {
    /// The backup taken.
    BackupId,
    /// Schema version before migrating.
    SchemaBefore,
    /// Schema version after migrating.
    SchemaAfter,
    /// The target's release id.
    ReleaseId,
    /// The release live before.
    PreviousRelease,
}

impl DeploymentField {
    fn column(self) -> &'static str {
        match self {
            DeploymentField::BackupId => "backup_id",
            DeploymentField::SchemaBefore => "schema_before",
            DeploymentField::SchemaAfter => "schema_after",
            DeploymentField::ReleaseId => "release_id",
            DeploymentField::PreviousRelease => "previous_release",
        }
    }
}

/// Creates the state directory (0700) and the database file (0600) before SQLite does, so
/// neither is ever readable by other users, even for a moment.
fn create_private(dir: &Path, file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}
