//! The agent's own state: deployments and their journaled steps, releases, backups taken by
//! deployments, environment locks (leases) and the hash-chained audit log.
//!
//! SQLite by default (one file under the state directory, WAL mode, permissions 0600);
//! PostgreSQL when several agents share one fleet (`state_url = "${env:STATE_DATABASE_URL}"`).
//! The SQL is the same on both: text and 64-bit integer columns, `ON CONFLICT` upserts.

mod agents;
mod approvals;
mod audit;
mod evidence;
mod hosts;
mod lease;
mod pool;
mod queue;
mod releases;
mod rollbacks;
mod runs;
mod schedule;
mod status;
mod traffic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use agents::{AgentRecord, Registration};
pub use approvals::{Approval, Decision};
pub use audit::{AuditEntry, AuditRecord, AuditReport};
pub use evidence::{Evidence, NewEvidence};
pub use hosts::{HostRelease, HostStep};
pub(crate) use lease::this_process;
pub use lease::{Lease, LockHolder, Owner, hostname, interrupted, set_host_name};
pub use queue::{Claim, Claimant, QueueItem};
pub use releases::ReleaseRecord;
pub use rollbacks::{DatabaseSwap, RollbackRecord, SwapPhase};
pub use runs::{Deployment, DeploymentField, RunJournal, Step};
pub use schedule::JobRun;
pub use status::{
    HostAction, HostState, JobStatus, QueueState, ReleaseStatus, RollbackStatus, RunStatus,
};
pub use traffic::{TrafficPhase, TrafficStep};

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
    /// A live agent already runs under this name.
    #[error(
        "agent `{name}` is already running ({holder}, since {}); stop it first, or give this one another name with `--host-name`",
        crate::time::rfc3339_ms(*since)
    )]
    AgentTaken {
        /// The name.
        name: String,
        /// Its process.
        holder: String,
        /// When it started, ms since the epoch.
        since: i64,
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
        Migration::embedded(
            3,
            "run evidence",
            include_str!("schema/0003_run_evidence.sql"),
        ),
        Migration::embedded(4, "fleet", include_str!("schema/0004_fleet.sql")),
        Migration::embedded(5, "hosts", include_str!("schema/0005_hosts.sql")),
        Migration::embedded(6, "traffic", include_str!("schema/0006_traffic.sql")),
        Migration::embedded(7, "schedule", include_str!("schema/0007_schedule.sql")),
        Migration::embedded(
            8,
            "database swap",
            include_str!("schema/0008_database_swap.sql"),
        ),
    ]
}

/// The state store. Cheap to clone; its connections are shared ([`pool`]).
#[derive(Clone)]
pub struct Store {
    pool: Arc<pool::Pool>,
    location: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

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
            pool: Arc::new(pool::Pool::new(url, conn)),
            location,
        })
    }

    /// The database file, for a SQLite store.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        self.pool.sqlite_file()
    }

    /// Answers when the store does (the daemon's watchdog).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.rows("SELECT 1", &[]).await.map(|_| ())
    }

    /// The version of its schema: the newest of its migrations applied.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn().await?;
        crate::db::migrate::current_version(&mut conn, Ledger::STATE)
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
        self.pool.backend()
    }

    /// A connection of the pool, for several statements on one session.
    async fn conn(&self) -> Result<pool::Pooled, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Query(e.to_string()))
    }

    /// One statement, its values bound (never spliced into the SQL text).
    async fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let done = conn.execute(sql, args).await;
        done.map_err(|e| {
            conn.note(&e);
            e.into()
        })
    }

    /// One query, its values bound; the rows, to read in order.
    async fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut conn = self.conn().await?;
        let rows = conn.fetch(sql, args).await.map_err(|e| {
            conn.note(&e);
            StoreError::from(e)
        })?;
        Ok(rows.into_iter().map(|row| Row { row, at: 0 }).collect())
    }

    /// Statements that must all happen or none: in one transaction, on one connection.
    async fn exec_all(&self, statements: &[(&str, &[Arg<'_>])]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        transaction(&mut conn, async |conn| {
            for (sql, args) in statements {
                conn.execute(sql, args).await?;
            }
            Ok(())
        })
        .await
    }
}

/// A column that would not decode, as an error inside a [`transaction`]'s body.
fn decode(e: StoreError) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

/// Runs `body` between `BEGIN` and `COMMIT` on `conn`, or rolls back when it fails. A future
/// dropped half-way leaves the connection marked, and the pool closes it.
///
/// On SQLite the transaction takes the write lock when it begins (`BEGIN IMMEDIATE`): a
/// deferred one that reads and then writes cannot wait for another writer (SQLite answers
/// `SQLITE_BUSY_SNAPSHOT` at once, whatever the busy timeout), an immediate one waits.
async fn transaction<T>(
    conn: &mut pool::Pooled,
    body: impl AsyncFnOnce(&mut Conn) -> Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    let begin = match conn.backend() {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    // Marked before the `BEGIN` is sent: a future dropped while it is in flight may leave
    // it begun.
    conn.in_transaction = true;
    if let Err(e) = conn.exec(begin).await {
        conn.in_transaction = false;
        conn.note(&e);
        return Err(e.into());
    }
    match body(conn).await {
        Ok(v) => match conn.exec("COMMIT").await {
            Ok(_) => {
                conn.in_transaction = false;
                Ok(v)
            }
            Err(e) => {
                conn.note(&e);
                if conn.exec("ROLLBACK").await.is_ok() {
                    conn.in_transaction = false;
                }
                Err(e.into())
            }
        },
        Err(e) => {
            conn.note(&e);
            if conn.exec("ROLLBACK").await.is_ok() {
                conn.in_transaction = false;
            }
            Err(e.into())
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
