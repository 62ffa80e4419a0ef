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
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;

pub use approvals::{Approval, Decision};
pub use audit::{AuditEntry, AuditRecord, AuditReport};
pub use lease::{Lease, LockHolder, Owner, hostname, interrupted};
pub use queue::QueueItem;
pub use rollbacks::RollbackRecord;
pub use status::{QueueState, ReleaseStatus, RollbackStatus, RunStatus};

use crate::db::Backend;
use crate::db::conn::{Arg, Conn, DbRow};
use crate::db::migrate::embedded::{UpgradeError, upgrade};
use crate::db::migrate::{Ledger, Migration, Settings};

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
    /// A newer deploy-agent wrote it: using it could lose what that version records.
    #[error(
        "the state store {location} has schema version {found}, newer than this deploy-agent knows (up to {known}): a newer deploy-agent wrote it. Run that version or newer; this one will not use it"
    )]
    NewerSchema {
        /// Where (password removed).
        location: String,
        /// The version found.
        found: i64,
        /// The newest this binary knows.
        known: i64,
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

/// The store's schema, oldest first: applied on open by the migration engine, under the
/// state store's own history ([`Ledger::STATE`]). Append only: an applied migration's text
/// never changes (its checksum is recorded), a new shape is a new file.
fn migrations() -> Vec<Migration> {
    vec![
        Migration::embedded(1, "state", include_str!("schema/0001_state.sql")),
        Migration::embedded(
            2,
            "lookup indexes",
            include_str!("schema/0002_lookup_indexes.sql"),
        ),
    ]
}

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
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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
    /// Where it stands.
    pub status: RunStatus,
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
    /// Where it stands.
    pub state: ReleaseStatus,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Promoted, ms since the epoch.
    pub promoted_at: Option<i64>,
}

const DEPLOYMENT_COLUMNS: &str = "id, environment, version, artifact, digest, actor, reason, host, owner, status, stage, started_at, finished_at, error, backup_id, schema_before, schema_after, release_id, previous_release, resumed_from";

const RELEASE_COLUMNS: &str = "environment, id, deployment_id, version, digest, backup_id, schema_version, url, state, created_at, promoted_at";

/// A row read column by column, in order, each with its own type. A NULL where the schema
/// has none, or a value of the wrong type, is an error naming the column, never a default.
pub(crate) struct Row {
    row: DbRow,
    at: usize,
}

impl Row {
    fn next(&mut self) -> usize {
        self.at += 1;
        self.at - 1
    }
    fn fail(i: usize, e: impl std::fmt::Display) -> StoreError {
        StoreError::Query(format!("reading column {i}: {e}"))
    }
    /// Text, required.
    pub(crate) fn s(&mut self) -> Result<String, StoreError> {
        let i = self.next();
        self.row
            .text(i)
            .map_err(|e| Row::fail(i, e))?
            .ok_or_else(|| Row::fail(i, "NULL where a value is required"))
    }
    /// Text or NULL.
    pub(crate) fn o(&mut self) -> Result<Option<String>, StoreError> {
        let i = self.next();
        self.row.text(i).map_err(|e| Row::fail(i, e))
    }
    /// An integer, required.
    pub(crate) fn i(&mut self) -> Result<i64, StoreError> {
        let i = self.next();
        self.row
            .int(i)
            .map_err(|e| Row::fail(i, e))?
            .ok_or_else(|| Row::fail(i, "NULL where a number is required"))
    }
    /// A word naming one of a state enum's variants.
    pub(crate) fn w<T>(&mut self, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
        let i = self.at;
        let text = self.s()?;
        parse(&text)
            .ok_or_else(|| Row::fail(i, format!("`{text}` is not a state this version knows")))
    }
    /// An integer or NULL.
    pub(crate) fn oi(&mut self) -> Result<Option<i64>, StoreError> {
        let i = self.next();
        self.row.int(i).map_err(|e| Row::fail(i, e))
    }
}

fn deployment(mut r: Row) -> Result<Deployment, StoreError> {
    Ok(Deployment {
        id: r.s()?,
        environment: r.s()?,
        version: r.s()?,
        artifact: r.o()?,
        digest: r.o()?,
        actor: r.s()?,
        reason: r.o()?,
        host: r.s()?,
        owner: r.s()?,
        status: r.w(RunStatus::parse)?,
        stage: r.o()?,
        started_at: r.i()?,
        finished_at: r.oi()?,
        error: r.o()?,
        backup_id: r.o()?,
        schema_before: r.o()?,
        schema_after: r.o()?,
        release_id: r.o()?,
        previous_release: r.o()?,
        resumed_from: r.o()?,
    })
}

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
        let settings = Settings {
            ledger: Ledger::STATE,
            ..Settings::new(&location, PathBuf::from("(built in)"))
        };
        match upgrade(&mut conn, &settings, &migrations()).await {
            Ok(applied) if !applied.is_empty() => {
                tracing::info!(location = %location, ?applied, "state store schema upgraded");
            }
            Ok(_) => {}
            Err(UpgradeError::Newer { found, known }) => {
                conn.close().await;
                return Err(StoreError::NewerSchema {
                    location,
                    found,
                    known,
                });
            }
            Err(e) => {
                conn.close().await;
                return Err(StoreError::Open {
                    location,
                    reason: format!("upgrading its schema: {e}"),
                });
            }
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            location,
        })
    }

    /// Answers when the store does (the daemon's watchdog).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.rows("SELECT 1", &[]).await.map(|_| ())
    }

    /// The version of its schema: the newest of its migrations applied.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn.lock().await;
        crate::db::migrate::embedded::version(&mut conn, Ledger::STATE)
            .await
            .map_err(|e| StoreError::Query(e.to_string()))
    }

    /// The newest schema version this binary knows.
    pub fn known_schema_version() -> i64 {
        migrations().iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Where it is (password removed).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The backend.
    pub async fn backend(&self) -> Backend {
        self.conn.lock().await.backend()
    }

    /// One statement, its values bound (never spliced into the SQL text).
    async fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(self.conn.lock().await.execute(sql, args).await?)
    }

    /// One query, its values bound; the rows, to read in order.
    async fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let rows = self.conn.lock().await.fetch(sql, args).await?;
        Ok(rows.into_iter().map(|row| Row { row, at: 0 }).collect())
    }

    /// Statements that must all happen or none: in one transaction, on the one connection.
    async fn exec_all(&self, statements: &[(&str, &[Arg<'_>])]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().await;
        conn.exec("BEGIN").await?;
        for (sql, args) in statements {
            if let Err(e) = conn.execute(sql, args).await {
                let _ = conn.exec("ROLLBACK").await;
                return Err(e.into());
            }
        }
        conn.exec("COMMIT").await?;
        Ok(())
    }

    /// Records a new run.
    pub async fn insert_deployment(&self, d: &Deployment) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO deployments (id, environment, version, artifact, digest, actor, reason, host, owner, status, stage, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                (&d.id).into(),
                (&d.environment).into(),
                (&d.version).into(),
                d.artifact.as_deref().into(),
                d.digest.as_deref().into(),
                (&d.actor).into(),
                d.reason.as_deref().into(),
                (&d.host).into(),
                (&d.owner).into(),
                d.status.as_str().into(),
                d.stage.as_deref().into(),
                d.started_at.into(),
            ],
        )
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
        // The column is one of a fixed set of names; the values are bound.
        self.exec(
            &format!(
                "UPDATE deployments SET {} = $1 WHERE id = $2",
                column.column()
            ),
            &[value.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// Ends a run.
    pub async fn finish_deployment(
        &self,
        id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE deployments SET status = $1, error = $2, finished_at = $3 WHERE id = $4",
            &[
                status.as_str().into(),
                error.into(),
                now_ms().into(),
                id.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Hands a run to a new owner (a resumed run).
    pub async fn take_over(&self, id: &str, owner: &str, previous: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE deployments SET owner = $1, resumed_from = $2, status = 'running' WHERE id = $3",
            &[owner.into(), previous.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// One run.
    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"),
                &[id.into()],
            )
            .await?;
        rows.into_iter().next().map(deployment).transpose()
    }

    /// An environment's runs, newest first.
    pub async fn deployments(
        &self,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 ORDER BY started_at DESC, id DESC LIMIT $2"),
                &[environment.into(), limit.into()],
            )
            .await?;
        rows.into_iter().map(deployment).collect()
    }

    /// Runs of an environment still marked running (after taking its lock: interrupted ones).
    pub async fn running(&self, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 AND status = 'running' ORDER BY started_at"),
                &[environment.into()],
            )
            .await?;
        rows.into_iter().map(deployment).collect()
    }

    /// Journals the start of a step; returns its sequence number.
    pub async fn step_started(&self, deployment: &str, stage: &str) -> Result<i64, StoreError> {
        // One connection, held: the next number cannot be taken twice.
        let mut conn = self.conn.lock().await;
        let next = conn
            .fetch(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE deployment_id = $1",
                &[deployment.into()],
            )
            .await?;
        let seq = next
            .into_iter()
            .next()
            .map(|row| Row { row, at: 0 }.i())
            .transpose()?
            .unwrap_or(1);
        conn.exec("BEGIN").await?;
        let journaled = async {
            conn.execute(
                "INSERT INTO steps (deployment_id, seq, stage, status, started_at) VALUES ($1, $2, $3, 'started', $4)",
                &[deployment.into(), seq.into(), stage.into(), now_ms().into()],
            )
            .await?;
            conn.execute(
                "UPDATE deployments SET stage = $1 WHERE id = $2",
                &[stage.into(), deployment.into()],
            )
            .await
        }
        .await;
        match journaled {
            Ok(_) => conn.exec("COMMIT").await?,
            Err(e) => {
                let _ = conn.exec("ROLLBACK").await;
                return Err(e.into());
            }
        };
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
        self.exec(
            "UPDATE steps SET status = $1, detail = $2, finished_at = $3 WHERE deployment_id = $4 AND seq = $5",
            &[status.into(), detail.into(), now_ms().into(), deployment.into(), seq.into()],
        )
        .await?;
        Ok(())
    }

    /// A run's journal, in order.
    pub async fn steps(&self, deployment: &str) -> Result<Vec<Step>, StoreError> {
        let rows = self
            .rows(
                "SELECT seq, stage, status, started_at, finished_at, detail FROM steps WHERE deployment_id = $1 ORDER BY seq",
                &[deployment.into()],
            )
            .await?;
        rows.into_iter()
            .map(|mut r| {
                Ok(Step {
                    seq: r.i()?,
                    stage: r.s()?,
                    status: r.s()?,
                    started_at: r.i()?,
                    finished_at: r.oi()?,
                    detail: r.o()?,
                })
            })
            .collect()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Openers racing to create one store: every one gets it at the newest schema, and each
    /// version is recorded once.
    #[tokio::test]
    async fn concurrent_openers_of_a_new_store_all_get_the_newest_schema()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite:{}", dir.path().join("state.db").display());
        let mut opens = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let url = url.clone();
            opens.spawn(async move { Store::open(&url).await });
        }
        while let Some(store) = opens.join_next().await {
            let store = store??;
            assert_eq!(
                store.schema_version().await?,
                Some(Store::known_schema_version())
            );
        }
        let store = Store::open(&url).await?;
        let versions = store
            .rows(
                "SELECT version FROM _deploy_agent_state_versions ORDER BY version",
                &[],
            )
            .await?;
        assert_eq!(versions.len() as i64, Store::known_schema_version());
        Ok(())
    }

    /// Values are bound, never spliced: text that would end a literal and start a statement
    /// comes back as it went in, and the tables are all still there.
    #[tokio::test]
    async fn hostile_text_round_trips_and_runs_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open_dir(dir.path()).await?;
        let evil = "x'); DROP TABLE deployments; -- \u{0} \\ $1 ?";
        let mut d = Deployment {
            id: "r1".into(),
            environment: "prod".into(),
            version: evil.into(),
            artifact: Some(evil.into()),
            digest: None,
            actor: evil.into(),
            reason: Some("it's".into()),
            host: "h".into(),
            owner: "o".into(),
            status: RunStatus::Running,
            stage: None,
            started_at: 7,
            finished_at: None,
            error: None,
            backup_id: None,
            schema_before: None,
            schema_after: None,
            release_id: None,
            previous_release: None,
            resumed_from: None,
        };
        store.insert_deployment(&d).await?;
        let seq = store.step_started("r1", evil).await?;
        store.step_finished("r1", seq, "done", Some(evil)).await?;
        d.stage = Some(evil.into());
        assert_eq!(store.deployment("r1").await?, Some(d));
        let steps = store.steps("r1").await?;
        assert_eq!(
            (steps[0].stage.as_str(), steps[0].detail.as_deref()),
            (evil, Some(evil))
        );
        assert_eq!(store.deployments("prod", 10).await?.len(), 1);
        store
            .audit(AuditEntry {
                actor: evil.into(),
                action: "deploy".into(),
                environment: Some("prod".into()),
                ..AuditEntry::default()
            })
            .await?;
        let audit = store.audit_entries(Some("prod"), 5).await?;
        assert_eq!(audit[0].actor, evil);
        assert!(store.audit_verify().await?.problems.is_empty());
        assert!(store.audit_entries(Some("other"), 5).await?.is_empty());
        Ok(())
    }
}
