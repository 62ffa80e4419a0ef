//! The history: sqlx's `_sqlx_migrations` (same columns and checksums, so `sqlx migrate info`
//! agrees with us), plus our own table for what sqlx does not keep (down SQL, waivers, who)
//! and an append-only log of accepts and reverts.

use crate::db::DbError;
use crate::db::conn::{Backend, Conn};

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The version.
    pub version: i64,
    /// The description sqlx recorded.
    pub description: String,
    /// When, in RFC 3339 (UTC, milliseconds), as every time in JSON.
    pub installed_on: String,
    /// Whether it completed.
    pub success: bool,
    /// The checksum recorded.
    pub checksum: Vec<u8>,
    /// Nanoseconds it took.
    pub execution_time: i64,
    /// Down SQL stored with it, when reversible.
    pub down_sql: Option<String>,
}

/// Where one migration history is kept: its three tables and its lock. The application's is
/// sqlx's (so `sqlx migrate info` agrees with us); the agent's own state store keeps its
/// schema history under other names, so it can share a PostgreSQL database with the app it
/// deploys without either history seeing the other's versions or waiting on its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    /// Applied versions, with sqlx's columns.
    pub applied: &'static str,
    /// What sqlx does not keep: down SQL, waivers, who.
    pub extra: &'static str,
    /// The append-only log of runs, accepts and reverts.
    pub log: &'static str,
    /// Mixed into the advisory lock's key (empty: sqlx's key).
    pub lock: &'static str,
}

impl Ledger {
    /// The application's migrations: sqlx's history table, sqlx's lock.
    pub const APP: Ledger = Ledger {
        applied: "_sqlx_migrations",
        extra: "_deploy_agent_migrations",
        log: "_deploy_agent_migration_log",
        lock: "",
    };
    /// The agent's own state store.
    pub const STATE: Ledger = Ledger {
        applied: "_deploy_agent_state_versions",
        extra: "_deploy_agent_state_migrations",
        log: "_deploy_agent_state_log",
        lock: "deploy-agent state",
    };
}

pub(crate) fn ddl(backend: Backend, l: Ledger) -> String {
    let (applied, extra, log) = (l.applied, l.extra, l.log);
    match backend {
        Backend::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {applied} (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {extra} (
    version BIGINT PRIMARY KEY,
    down_sql TEXT,
    no_transaction BOOLEAN NOT NULL DEFAULT FALSE,
    waivers TEXT NOT NULL DEFAULT '',
    applied_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS {log} (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version BIGINT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL
);"
        ),
        Backend::Sqlite => format!(
            "CREATE TABLE IF NOT EXISTS {applied} (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {extra} (
    version BIGINT PRIMARY KEY,
    down_sql TEXT,
    no_transaction BOOLEAN NOT NULL DEFAULT FALSE,
    waivers TEXT NOT NULL DEFAULT '',
    applied_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS {log} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    version BIGINT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL
);"
        ),
    }
}

/// Creates the tables if needed.
pub(crate) async fn ensure(conn: &mut Conn, ledger: Ledger) -> Result<(), DbError> {
    let ddl = ddl(conn.backend(), ledger);
    conn.exec(&ddl)
        .await
        .map(|_| ())
        .map_err(|e| DbError::query("creating the migration history tables", e))
}

/// Whether a table exists (without creating anything).
async fn table_exists(conn: &mut Conn, table: &str) -> Result<bool, DbError> {
    let sql = match conn.backend() {
        Backend::Postgres => format!("SELECT (to_regclass('{table}') IS NOT NULL)::text"),
        Backend::Sqlite => format!(
            "SELECT CAST(count(*) > 0 AS TEXT) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
        ),
    };
    let found = conn
        .scalar(&sql)
        .await
        .map_err(|e| DbError::query("reading the migration history", e))?;
    Ok(matches!(found.as_str(), "true" | "1"))
}

/// Every recorded migration, by version.
pub(crate) async fn read(conn: &mut Conn, ledger: Ledger) -> Result<Vec<Applied>, DbError> {
    let (applied, extra) = (ledger.applied, ledger.extra);
    if !table_exists(conn, applied).await? {
        return Ok(Vec::new());
    }
    let sql = match conn.backend() {
        Backend::Postgres => format!("SELECT m.version::text, m.description, to_char(m.installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), m.success::text, encode(m.checksum, 'hex'), m.execution_time::text, d.down_sql
              FROM {applied} m LEFT JOIN {extra} d ON d.version = m.version ORDER BY m.version"),
        Backend::Sqlite => format!("SELECT CAST(m.version AS TEXT), m.description, strftime('%Y-%m-%dT%H:%M:%fZ', m.installed_on), CAST(m.success AS TEXT), hex(m.checksum), CAST(m.execution_time AS TEXT), d.down_sql
              FROM {applied} m LEFT JOIN {extra} d ON d.version = m.version ORDER BY m.version"),
    };
    if !table_exists(conn, extra).await? {
        // A database migrated by sqlx alone: adopt it.
        ensure(conn, ledger).await?;
    }
    let rows = conn
        .rows(&sql)
        .await
        .map_err(|e| DbError::query("reading the migration history", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        out.push(Applied {
            version: get(0).parse().unwrap_or_default(),
            description: get(1),
            installed_on: get(2),
            success: matches!(get(3).as_str(), "true" | "1"),
            checksum: hex::decode(get(4).to_ascii_lowercase()).unwrap_or_default(),
            execution_time: get(5).parse().unwrap_or_default(),
            down_sql: r.get(6).cloned().flatten(),
        });
    }
    Ok(out)
}
