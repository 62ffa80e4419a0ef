//! What the schema is: a snapshot of tables, columns, indexes and constraints, its
//! fingerprint (sha256 of the sorted snapshot), the difference between two snapshots, and the
//! checks before and after migrating.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::DbError;
use super::conn::{Backend, Conn};

/// Objects by `kind name`, each with its definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    objects: BTreeMap<(String, String), String>,
}

/// One change between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `created`, `dropped` or `altered`.
    pub change: &'static str,
    /// `table`, `column`, `index`, `constraint`, `view`, `trigger`.
    pub kind: String,
    /// Its qualified name.
    pub name: String,
}

const PG_SNAPSHOT: &str = "
SELECT 'table', n.nspname || '.' || c.relname, c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%' AND c.relname NOT LIKE '\\_sqlx\\_%' AND c.relname NOT LIKE '\\_deploy\\_agent\\_%'
   AND c.relname NOT LIKE '\\_deploy\\_agent\\_migration\\_log\\_id\\_seq'
UNION ALL
SELECT 'column', table_schema || '.' || table_name || '.' || column_name,
       data_type || coalesce('(' || character_maximum_length || ')', '') || ' ' || is_nullable || ' ' || coalesce(column_default, '')
  FROM information_schema.columns
 WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
   AND table_name NOT LIKE '\\_sqlx\\_%' AND table_name NOT LIKE '\\_deploy\\_agent\\_%'
UNION ALL
SELECT 'index', schemaname || '.' || indexname, indexdef
  FROM pg_indexes
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
   AND tablename NOT LIKE '\\_sqlx\\_%' AND tablename NOT LIKE '\\_deploy\\_agent\\_%'
UNION ALL
SELECT 'constraint', n.nspname || '.' || cl.relname || '.' || co.conname, pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND cl.relname NOT LIKE '\\_sqlx\\_%' AND cl.relname NOT LIKE '\\_deploy\\_agent\\_%'
UNION ALL
SELECT 'trigger', n.nspname || '.' || cl.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class cl ON cl.oid = t.tgrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
 WHERE NOT t.tgisinternal AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

const LITE_SNAPSHOT: &str = "
SELECT m.type, m.name, coalesce(m.sql, '') FROM sqlite_master m
 WHERE m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_sqlx\\_%' ESCAPE '\\'
   AND m.name NOT LIKE '\\_deploy\\_agent\\_%' ESCAPE '\\'
   AND m.tbl_name NOT LIKE '\\_sqlx\\_%' ESCAPE '\\' AND m.tbl_name NOT LIKE '\\_deploy\\_agent\\_%' ESCAPE '\\'
UNION ALL
SELECT 'column', m.name || '.' || p.name, p.type || ' ' || (CASE WHEN p.\"notnull\" THEN 'NOT NULL' ELSE 'NULL' END) || ' ' || coalesce(p.dflt_value, '')
  FROM sqlite_master m JOIN pragma_table_info(m.name) p
 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
   AND m.name NOT LIKE '\\_sqlx\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_deploy\\_agent\\_%' ESCAPE '\\'";

impl Snapshot {
    /// Reads the current schema.
    pub(crate) async fn take(conn: &mut Conn) -> Result<Snapshot, DbError> {
        let sql = match conn.backend() {
            Backend::Postgres => PG_SNAPSHOT,
            Backend::Sqlite => LITE_SNAPSHOT,
        };
        let rows = conn
            .rows(sql)
            .await
            .map_err(|e| DbError::query("reading the schema", e))?;
        let mut objects = BTreeMap::new();
        for r in rows {
            let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            objects.insert((g(0), g(1)), g(2));
        }
        Ok(Snapshot { objects })
    }

    /// sha256 over the sorted objects: equal schemas, equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for ((kind, name), def) in &self.objects {
            h.update(kind.as_bytes());
            h.update([0]);
            h.update(name.as_bytes());
            h.update([0]);
            h.update(def.as_bytes());
            h.update([b'\n']);
        }
        hex::encode(h.finalize())
    }

    /// What changed from `self` to `after`.
    pub fn diff(&self, after: &Snapshot) -> Vec<Change> {
        let mut out = Vec::new();
        for ((kind, name), def) in &after.objects {
            match self.objects.get(&(kind.clone(), name.clone())) {
                None => out.push(Change {
                    change: "created",
                    kind: kind.clone(),
                    name: name.clone(),
                }),
                Some(old) if old != def => out.push(Change {
                    change: "altered",
                    kind: kind.clone(),
                    name: name.clone(),
                }),
                Some(_) => {}
            }
        }
        for (kind, name) in self.objects.keys() {
            if !after.objects.contains_key(&(kind.clone(), name.clone())) {
                out.push(Change {
                    change: "dropped",
                    kind: kind.clone(),
                    name: name.clone(),
                });
            }
        }
        out
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// `ok`, `warning` or `error`.
    pub status: &'static str,
    /// What was found.
    pub detail: String,
}

fn check(name: &str, status: &'static str, detail: String) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail,
    }
}

async fn one(conn: &mut Conn, sql: &str) -> Result<String, DbError> {
    conn.scalar(sql)
        .await
        .map_err(|e| DbError::query("running a check", e))
}

/// Before migrating: server, size, connections, and sessions that would block DDL.
pub(crate) async fn prechecks(conn: &mut Conn) -> Result<Vec<Check>, DbError> {
    let mut out = vec![check("connectivity", "ok", "connected".into())];
    if conn.backend() == Backend::Sqlite {
        let version = one(conn, "SELECT sqlite_version()").await?;
        out.push(check("server version", "ok", format!("SQLite {version}")));
        let integrity = one(conn, "PRAGMA quick_check").await?;
        out.push(check(
            "integrity",
            if integrity == "ok" { "ok" } else { "error" },
            integrity,
        ));
        return Ok(out);
    }
    let version = one(conn, "SELECT current_setting('server_version')").await?;
    out.push(check(
        "server version",
        "ok",
        format!("PostgreSQL {version}"),
    ));
    let size = one(
        conn,
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
    )
    .await?;
    out.push(check("database size", "ok", size));
    let used: u64 = one(conn, "SELECT count(*)::text FROM pg_stat_activity")
        .await?
        .parse()
        .unwrap_or(0);
    let max: u64 = one(conn, "SELECT current_setting('max_connections')")
        .await?
        .parse()
        .unwrap_or(0);
    out.push(check(
        "connections",
        if max > 0 && used * 10 >= max * 9 {
            "warning"
        } else {
            "ok"
        },
        format!("{used} of {max} in use"),
    ));
    let long = conn
        .rows("SELECT pid::text, coalesce(application_name, ''), extract(epoch FROM now() - xact_start)::bigint::text, left(coalesce(query, ''), 120)
                 FROM pg_stat_activity
                WHERE xact_start < now() - interval '60 seconds' AND pid <> pg_backend_pid() AND datname = current_database()")
        .await
        .map_err(|e| DbError::query("checking long transactions", e))?;
    out.push(if long.is_empty() {
        check(
            "long transactions",
            "ok",
            "none open longer than 60 s".into(),
        )
    } else {
        let list: Vec<String> = long
            .iter()
            .map(|r| {
                let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                format!("pid {} ({}) open {} s: {}", g(0), g(1), g(2), g(3))
            })
            .collect();
        check(
            "long transactions",
            "warning",
            format!("DDL may queue behind: {}", list.join("; ")),
        )
    });
    let blocked = one(
        conn,
        "SELECT count(*)::text FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0",
    )
    .await?;
    out.push(check(
        "blocked sessions",
        if blocked == "0" { "ok" } else { "warning" },
        format!("{blocked} session(s) waiting on locks"),
    ));
    Ok(out)
}

/// A check that lists what `sql` finds (one name per row): `ok` when it finds nothing,
/// otherwise `status`, the names and `advice`.
async fn names_check(
    conn: &mut Conn,
    name: &str,
    sql: &str,
    status: &'static str,
    advice: &str,
) -> Result<Check, DbError> {
    let rows = conn
        .rows(sql)
        .await
        .map_err(|e| DbError::query(format!("checking {name}"), e))?;
    let found: Vec<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    Ok(if found.is_empty() {
        check(name, "ok", "none".into())
    } else {
        check(name, status, format!("{} ({advice})", found.join(", ")))
    })
}

/// After migrating: invalid indexes, unvalidated constraints, the schema fingerprint.
pub(crate) async fn postchecks(conn: &mut Conn) -> Result<(Vec<Check>, String), DbError> {
    let mut out = Vec::new();
    if conn.backend() == Backend::Postgres {
        out.push(
            names_check(
                conn,
                "invalid indexes",
                "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE NOT i.indisvalid",
                "error",
                "a failed CREATE INDEX CONCURRENTLY leaves these; drop and recreate",
            )
            .await?,
        );
        out.push(
            names_check(
                conn,
                "unvalidated constraints",
                "SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint WHERE NOT convalidated",
                "warning",
                "NOT VALID: run ALTER TABLE … VALIDATE CONSTRAINT",
            )
            .await?,
        );
    }
    let fingerprint = Snapshot::take(conn).await?.fingerprint();
    out.push(check("schema fingerprint", "ok", fingerprint.clone()));
    Ok((out, fingerprint))
}

/// The schema fingerprint of the database at `url`.
pub async fn fingerprint(url: &str) -> Result<String, DbError> {
    let mut conn = Conn::open(url).await?;
    let result = Snapshot::take(&mut conn).await.map(|s| s.fingerprint());
    conn.close().await;
    result
}
