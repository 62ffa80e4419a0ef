//! Migrations built into the binary: the agent's own state store is versioned with the same
//! engine as an application's database (each migration in its own transaction, its history
//! row committed with it, the lock), under its own [`Ledger`](super::Ledger), and upgraded
//! when opened. A history newer than the binary knows is refused, never silently used.

use std::path::PathBuf;

use super::history;
use super::source::{Migration, checksum};
use super::{Settings, apply_all, lock, pending, validate};
use crate::db::DbError;
use crate::db::conn::Conn;

/// Why a built-in schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The database was written by a newer binary.
    #[error("schema version {found} is newer than this binary's {known}")]
    Newer {
        /// The newest version recorded.
        found: i64,
        /// The newest version this binary has.
        known: i64,
    },
    /// Applying a migration, or reading the history, failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Migration {
    /// A migration compiled into the binary (`include_str!`), named like a file.
    pub fn embedded(version: i64, description: &str, sql: &str) -> Migration {
        Migration {
            version,
            description: description.to_string(),
            path: PathBuf::from(format!(
                "(built in) {version}_{}.sql",
                description.replace(' ', "_")
            )),
            sql: sql.to_string(),
            checksum: checksum(sql),
            no_tx: false,
            down: None,
            waivers: Vec::new(),
        }
    }
}

/// How many lost races with other openers an upgrade tolerates.
const RACES: u32 = 3;

/// Applies whatever of `migrations` is not yet applied, on an open connection, under
/// `settings.ledger`; returns the versions applied. Another process upgrading the same
/// database at the same moment is not an error: whoever commits a version first wins, and
/// the other finds it applied.
pub(crate) async fn upgrade(
    conn: &mut Conn,
    settings: &Settings,
    migrations: &[Migration],
) -> Result<Vec<i64>, UpgradeError> {
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    let key = lock::acquire(conn, settings.lock_wait, settings.ledger).await?;
    let result = async {
        history::ensure(conn, settings.ledger).await?;
        // SQLite has no advisory lock: another opener may commit a version between our read
        // and our write, and ours then fails on its history row. Read again and go on.
        let mut attempt = 0;
        loop {
            let applied = history::read(conn, settings.ledger).await?;
            if let Some(found) = applied.iter().map(|a| a.version).filter(|v| *v > known).max() {
                return Err(UpgradeError::Newer { found, known });
            }
            validate(settings, migrations, &applied)?;
            let pending = pending(migrations, &applied, None);
            if pending.is_empty() {
                return Ok(Vec::new());
            }
            match apply_all(conn, settings, &pending, &|_, _, _| {}).await {
                Ok(done) => return Ok(done.into_iter().map(|(v, _)| v).collect()),
                Err(e) if attempt == RACES => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "schema upgrade raced another opener; reading again");
                    attempt += 1;
                }
            }
        }
    }
    .await;
    lock::release(conn, key).await;
    result
}
