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
    /// When, as the database printed it.
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

pub(crate) fn ddl(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS _deploy_agent_migrations (
    version BIGINT PRIMARY KEY,
    down_sql TEXT,
    no_transaction BOOLEAN NOT NULL DEFAULT FALSE,
    waivers TEXT NOT NULL DEFAULT '',
    applied_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS _deploy_agent_migration_log (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version BIGINT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL
);"
        }
        Backend::Sqlite => {
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS _deploy_agent_migrations (
    version BIGINT PRIMARY KEY,
    down_sql TEXT,
    no_transaction BOOLEAN NOT NULL DEFAULT FALSE,
    waivers TEXT NOT NULL DEFAULT '',
    applied_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS _deploy_agent_migration_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    version BIGINT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL
);"
        }
    }
}

/// Creates the tables if needed.
pub(crate) async fn ensure(conn: &mut Conn) -> Result<(), DbError> {
    let ddl = ddl(conn.backend());
    conn.exec(ddl)
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
pub(crate) async fn read(conn: &mut Conn) -> Result<Vec<Applied>, DbError> {
    if !table_exists(conn, "_sqlx_migrations").await? {
        return Ok(Vec::new());
    }
    let sql = match conn.backend() {
        Backend::Postgres => "SELECT m.version::text, m.description, m.installed_on::text, m.success::text, encode(m.checksum, 'hex'), m.execution_time::text, d.down_sql
              FROM _sqlx_migrations m LEFT JOIN _deploy_agent_migrations d ON d.version = m.version ORDER BY m.version",
        Backend::Sqlite => "SELECT CAST(m.version AS TEXT), m.description, CAST(m.installed_on AS TEXT), CAST(m.success AS TEXT), hex(m.checksum), CAST(m.execution_time AS TEXT), d.down_sql
              FROM _sqlx_migrations m LEFT JOIN _deploy_agent_migrations d ON d.version = m.version ORDER BY m.version",
    };
    if !table_exists(conn, "_deploy_agent_migrations").await? {
        // A database migrated by sqlx alone: adopt it.
        ensure(conn).await?;
    }
    let rows = conn
        .rows(sql)
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
