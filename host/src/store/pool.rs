//! The state store's connections: a small pool on PostgreSQL, one connection on SQLite.
//!
//! PostgreSQL serves many sessions at once, so the daemon's API, its queue workers, the
//! heartbeat and the runs each take a connection of their own instead of queueing behind
//! one (the trigger's latency under load was mostly that wait). SQLite has one writer per
//! file and answers BUSY to a read that turns into a write inside a transaction: one
//! connection per store, as before.
//!
//! A connection handed out inside a transaction that never ended (its future was dropped
//! half-way) is closed, never handed to the next caller mid-transaction; so is one whose
//! last statement failed at the transport.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::db::Backend;
use crate::db::conn::Conn;

/// Connections one PostgreSQL store opens at most.
pub const PG_CONNECTIONS: usize = 8;

/// The pool.
pub(crate) struct Pool {
    url: String,
    backend: Backend,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
}

/// One connection, back in the pool when dropped.
pub(crate) struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    /// Set between `BEGIN` and its `COMMIT`/`ROLLBACK`: a connection dropped in between
    /// is closed, not reused.
    pub(crate) in_transaction: bool,
    /// Set when a statement failed at the transport: the connection is not reused.
    pub(crate) broken: bool,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool around a first, already open (and upgraded) connection.
    pub(crate) fn new(url: &str, first: Conn) -> Pool {
        let backend = first.backend();
        let size = match backend {
            Backend::Postgres => PG_CONNECTIONS,
            Backend::Sqlite => 1,
        };
        Pool {
            url: url.to_string(),
            backend,
            idle: Mutex::new(vec![first]),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// The database file of a SQLite pool.
    pub(crate) fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        let rest = self.url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest);
        Some(std::path::PathBuf::from(path))
    }

    /// A connection: an idle one, or a new one while the pool is below its size.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Pooled, crate::db::DbError> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            crate::db::DbError::Connect {
                target: crate::db::redact_url(&self.url),
                reason: "the store is closed".into(),
            }
        })?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                tracing::debug!("the state store opens a connection");
                Conn::open(&self.url).await?
            }
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self.clone(),
            in_transaction: false,
            broken: false,
            _permit: permit,
        })
    }
}

impl Pooled {
    /// Marks the connection unusable when `e` came from the transport, not the statement.
    pub(crate) fn note(&mut self, e: &sqlx::Error) {
        if matches!(
            e,
            sqlx::Error::Io(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ) {
            self.broken = true;
        }
    }
}

impl Deref for Pooled {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.in_transaction || self.broken {
            // Dropping the connection closes its session (PostgreSQL rolls back whatever it
            // had open); the next caller opens a fresh one.
            tracing::debug!(
                in_transaction = self.in_transaction,
                broken = self.broken,
                "a state store connection was closed, not reused"
            );
            drop(conn);
            return;
        }
        self.pool
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}
