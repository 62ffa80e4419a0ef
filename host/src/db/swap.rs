//! Switching a live database for one restored beside it, in one short step.
//!
//! PostgreSQL: the live database stops taking connections, its sessions are ended, and the
//! two renames (live → aside, staged → live) commit in one transaction on the server's
//! maintenance database, so either both names moved or neither did. SQLite: the live file is
//! hard-linked aside and the restored file renamed over it (`rename(2)` is atomic), so the
//! path always holds one whole database.
//!
//! [`probe`] says whether this server and role allow it; a rollback falls back to restoring
//! in place when they do not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::DbError;
use super::conn::{Backend, Conn, backend_of, lit, with_database};

/// The three names a swap works with: database names (PostgreSQL) or file paths (SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The live database.
    pub live: String,
    /// Where the backup is restored before the switch.
    pub staged: String,
    /// Where the live database goes at the switch (the safety snapshot).
    pub aside: String,
}

/// Where a swap stands, read from the server (or the file system).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing is staged: the live database is the one from before.
    NotStaged,
    /// A staged database exists beside the live one (whole or not): not switched.
    Staged,
    /// Switched: the restored database has the live name, the old one is aside.
    Switched,
}

/// PostgreSQL's limit on a name, in bytes.
const PG_NAME_MAX: usize = 63;

/// How long the switch keeps ending sessions that hold the live database before it gives up
/// (and lets the database take connections again).
const SWITCH_PATIENCE: Duration = Duration::from_secs(5);

/// The names for a swap of the database at `url` by the rollback `id` (`20261208T001500Z-ab12cd`).
pub fn names(url: &str, id: &str) -> Result<Names, DbError> {
    let tag = id.to_ascii_lowercase().replace(['-', ':'], "_");
    match backend_of(url) {
        Some(Backend::Postgres) => {
            let live = pg_database(url)?;
            let name = |kind: &str| {
                let suffix = format!("_{kind}_{tag}");
                let mut base = live.clone();
                while base.len() + suffix.len() > PG_NAME_MAX {
                    base.pop();
                }
                format!("{base}{suffix}")
            };
            Ok(Names {
                staged: name("rb"),
                aside: name("before"),
                live,
            })
        }
        Some(Backend::Sqlite) => {
            let live = super::backup::sqlite_path(url)?.display().to_string();
            Ok(Names {
                staged: format!("{live}.rb-{tag}"),
                aside: format!("{live}.before-{tag}"),
                live,
            })
        }
        None => Err(DbError::query("swap", "unsupported database URL")),
    }
}

/// The URL of the staged database.
pub fn staged_url(url: &str, names: &Names) -> String {
    match backend_of(url) {
        Some(Backend::Postgres) => with_database(url, &names.staged),
        _ => format!("sqlite:{}", names.staged),
    }
}

/// The database name in a PostgreSQL URL.
fn pg_database(url: &str) -> Result<String, DbError> {
    let base = url.split('?').next().unwrap_or(url);
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let name = rest.split_once('/').map(|(_, d)| d).unwrap_or("");
    let name = percent_decode(name);
    if name.is_empty() {
        return Err(DbError::query(
            "swap",
            "the database URL names no database (postgres://…/NAME)",
        ));
    }
    Ok(name)
}

fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A PostgreSQL identifier, quoted.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A connection to the server's maintenance database (`postgres`, else `template1`): a
/// database cannot be renamed from a session connected to it.
async fn maintenance(url: &str) -> Result<Conn, DbError> {
    match Conn::open(&with_database(url, "postgres")).await {
        Ok(c) => Ok(c),
        Err(first) => Conn::open(&with_database(url, "template1"))
            .await
            .map_err(|_| first),
    }
}

/// Whether a swap is possible here; `Err` says why not (and a rollback restores in place).
pub async fn probe(url: &str) -> Result<(), String> {
    match backend_of(url) {
        Some(Backend::Sqlite) => {
            let live = super::backup::sqlite_path(url).map_err(|e| e.to_string())?;
            let dir = live
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            match std::fs::metadata(dir) {
                Ok(m) if !m.permissions().readonly() => Ok(()),
                Ok(_) => Err(format!("{} is read-only", dir.display())),
                Err(e) => Err(format!("{}: {e}", dir.display())),
            }
        }
        Some(Backend::Postgres) => {
            let live = pg_database(url).map_err(|e| e.to_string())?;
            let mut conn = maintenance(url).await.map_err(|e| {
                format!("the server's maintenance database (postgres) cannot be reached with this URL's credentials: {e}")
            })?;
            let sql = format!(
                "SELECT r.rolsuper::text, r.rolcreatedb::text, (d.datdba = r.oid)::text, \
                 pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')::text \
                 FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = {}",
                lit(&live)
            );
            let rows = conn.rows(&sql).await;
            conn.close().await;
            let rows = rows.map_err(|e| format!("reading the role's privileges: {e}"))?;
            let Some(row) = rows.first() else {
                return Err(format!("database `{live}` not found on the server"));
            };
            let yes = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("true");
            if yes(0) {
                return Ok(());
            }
            if !yes(2) {
                return Err(format!(
                    "the role does not own `{live}` (renaming a database needs its owner)"
                ));
            }
            if !yes(1) {
                return Err(
                    "the role lacks CREATEDB (renaming and creating a database need it)".into(),
                );
            }
            if !yes(3) {
                return Err(
                    "the role cannot end other roles' sessions (grant it pg_signal_backend)".into(),
                );
            }
            Ok(())
        }
        None => Err("unsupported database URL".into()),
    }
}

/// Where the swap of `names` stands.
pub async fn standing(url: &str, names: &Names) -> Result<Standing, DbError> {
    let (staged, aside) = match backend_of(url) {
        Some(Backend::Postgres) => {
            let mut conn = maintenance(url).await?;
            let rows = conn
                .rows(&format!(
                    "SELECT datname::text FROM pg_database WHERE datname IN ({}, {})",
                    lit(&names.staged),
                    lit(&names.aside)
                ))
                .await;
            conn.close().await;
            let rows = rows.map_err(|e| DbError::query("reading the server's databases", e))?;
            let has = |n: &str| {
                rows.iter()
                    .any(|r| r.first().and_then(|v| v.as_deref()) == Some(n))
            };
            (has(&names.staged), has(&names.aside))
        }
        _ => (
            Path::new(&names.staged).exists(),
            Path::new(&names.aside).exists(),
        ),
    };
    Ok(match (staged, aside) {
        (true, _) => Standing::Staged,
        (false, true) => Standing::Switched,
        (false, false) => Standing::NotStaged,
    })
}

/// Switches: the staged database takes the live name, the live one goes aside. `closed` runs
/// once the live database takes no more connections, just before the renames (the crash
/// tests kill the agent there).
pub async fn switch(url: &str, names: &Names, closed: impl FnOnce()) -> Result<(), DbError> {
    match backend_of(url) {
        Some(Backend::Postgres) => {
            let mut conn = maintenance(url).await?;
            let done = pg_rename_pair(
                &mut conn,
                (&names.live, &names.aside),
                (&names.staged, &names.live),
                closed,
            )
            .await;
            conn.close().await;
            done
        }
        _ => {
            let result = sqlite_switch(url, names, closed).await;
            if result.is_err() {
                // The link is only a second name for the live file: never a leftover.
                if Path::new(&names.staged).exists() {
                    let _ = std::fs::remove_file(&names.aside);
                }
            }
            result
        }
    }
}

/// Undoes a switch: the database from before takes the live name again, the restored one
/// goes back to the staged name (then [`discard`] drops it).
pub async fn unswitch(url: &str, names: &Names) -> Result<(), DbError> {
    match backend_of(url) {
        Some(Backend::Postgres) => {
            let mut conn = maintenance(url).await?;
            let done = pg_rename_pair(
                &mut conn,
                (&names.live, &names.staged),
                (&names.aside, &names.live),
                || {},
            )
            .await;
            conn.close().await;
            done
        }
        _ => {
            // The file from before replaces the restored one in one rename.
            std::fs::rename(&names.aside, &names.live)
                .map_err(|e| DbError::query(format!("putting {} back", names.live), e))?;
            sync_parent(Path::new(&names.live));
            Ok(())
        }
    }
}

/// Drops the staged database (whole or half-restored), and lets the live one take
/// connections again (a switch interrupted after closing it leaves it closed).
pub async fn discard(url: &str, names: &Names) -> Result<(), DbError> {
    match backend_of(url) {
        Some(Backend::Postgres) => {
            let mut conn = maintenance(url).await?;
            let done = async {
                conn.exec(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&names.staged)
                ))
                .await
                .map_err(|e| DbError::query("dropping the staged database", e))?;
                reopen(&mut conn, &names.live).await
            }
            .await;
            conn.close().await;
            done
        }
        _ => {
            for path in [
                names.staged.clone(),
                format!("{}-wal", names.staged),
                format!("{}-shm", names.staged),
            ] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DbError::query(format!("removing {path}"), e)),
                }
            }
            Ok(())
        }
    }
}

/// Lets `name` take connections (the database aside after a switch, or the live one after
/// an interrupted switch).
pub async fn reopen_database(url: &str, name: &str) -> Result<(), DbError> {
    if backend_of(url) != Some(Backend::Postgres) {
        return Ok(());
    }
    let mut conn = maintenance(url).await?;
    let done = reopen(&mut conn, name).await;
    conn.close().await;
    done
}

async fn reopen(conn: &mut Conn, name: &str) -> Result<(), DbError> {
    let exists = conn
        .rows(&format!(
            "SELECT 1::text FROM pg_database WHERE datname = {}",
            lit(name)
        ))
        .await
        .map_err(|e| DbError::query("reading the server's databases", e))?;
    if exists.is_empty() {
        return Ok(());
    }
    conn.exec(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
        ident(name)
    ))
    .await
    .map_err(|e| DbError::query(format!("letting {name} take connections again"), e))?;
    Ok(())
}

/// Renames `first.0` → `first.1` and `second.0` → `second.1` in one transaction, after
/// closing `first.0` to new connections and ending its sessions (retried while sessions
/// linger, up to [`SWITCH_PATIENCE`]). On failure `first.0` takes connections again.
async fn pg_rename_pair(
    conn: &mut Conn,
    first: (&str, &str),
    second: (&str, &str),
    closed: impl FnOnce(),
) -> Result<(), DbError> {
    conn.exec(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
        ident(first.0)
    ))
    .await
    .map_err(|e| DbError::query(format!("closing {} to new connections", first.0), e))?;
    closed();
    let renames = format!(
        "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
        ident(first.0),
        ident(first.1),
        ident(second.0),
        ident(second.1)
    );
    let terminate = format!(
        "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE datname IN ({}, {}) AND pid <> pg_backend_pid()",
        lit(first.0),
        lit(second.0)
    );
    let deadline = Instant::now() + SWITCH_PATIENCE;
    let outcome = loop {
        if let Err(e) = conn.rows(&terminate).await {
            break Err(DbError::query("ending the live database's sessions", e));
        }
        match conn.exec(&renames).await {
            Ok(_) => break Ok(()),
            Err(e) => {
                let _ = conn.exec("ROLLBACK").await;
                // 55006: the database is being accessed by other users (a session not gone yet).
                let busy = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "55006");
                if !busy || Instant::now() >= deadline {
                    break Err(DbError::query("switching the databases", e));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Whichever name it now has, the database that was closed takes connections again.
    let open = if outcome.is_ok() { first.1 } else { first.0 };
    let reopened = reopen(conn, open).await;
    outcome.and(reopened)
}

async fn sqlite_switch(url: &str, names: &Names, closed: impl FnOnce()) -> Result<(), DbError> {
    let live = PathBuf::from(&names.live);
    if live.exists() {
        // Everything committed is in the main file, so the link aside holds all of it.
        let mut conn = Conn::open(url).await?;
        let checkpoint = conn.exec("PRAGMA wal_checkpoint(TRUNCATE)").await;
        conn.close().await;
        checkpoint
            .map_err(|e| DbError::query("checkpointing the database before the switch", e))?;
    }
    let aside = PathBuf::from(&names.aside);
    let _ = std::fs::remove_file(&aside);
    if live.exists() {
        std::fs::hard_link(&live, &aside)
            .or_else(|_| std::fs::copy(&live, &aside).map(|_| ()))
            .map_err(|e| DbError::query(format!("keeping {} aside", live.display()), e))?;
    }
    closed();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", names.live));
    }
    std::fs::rename(&names.staged, &live)
        .map_err(|e| DbError::query(format!("switching {}", live.display()), e))?;
    sync_parent(&live);
    Ok(())
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dated_by_the_rollback_and_fit_postgres() {
        let n = names(
            "postgres://u@h:5432/app?sslmode=disable",
            "20261208T001500Z-ab12cd",
        )
        .unwrap();
        assert_eq!(n.live, "app");
        assert_eq!(n.staged, "app_rb_20261208t001500z_ab12cd");
        assert_eq!(n.aside, "app_before_20261208t001500z_ab12cd");
        let long = "x".repeat(60);
        let n = names(&format!("postgres://h/{long}"), "20261208T001500Z-ab12cd").unwrap();
        assert!(
            n.aside.len() <= PG_NAME_MAX && n.aside.ends_with("_before_20261208t001500z_ab12cd")
        );
        assert_eq!(pg_database("postgres://h/my%20db").unwrap(), "my db");
        assert!(names("postgres://h", "x").is_err());
        let n = names("sqlite:/srv/app.db", "20261208T001500Z-ab12cd").unwrap();
        assert_eq!(n.staged, "/srv/app.db.rb-20261208t001500z_ab12cd");
        assert_eq!(
            staged_url("sqlite:/srv/app.db", &n),
            "sqlite:/srv/app.db.rb-20261208t001500z_ab12cd"
        );
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
