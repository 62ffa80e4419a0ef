//! The migration lock. PostgreSQL: a session-level advisory lock taken with
//! `pg_try_advisory_lock` in a loop with a deadline, on a dedicated connection that is closed
//! when the run ends, so the lock dies with the session whatever happens (crash, kill -9,
//! failed migration). The key is sqlx's, so sqlx and the agent exclude each other. While
//! waiting, the holder is reported. SQLite: `BEGIN IMMEDIATE` per migration is the lock.

use std::time::{Duration, Instant};

use super::history::Ledger;
use crate::db::DbError;
use crate::db::conn::Conn;

/// sqlx's lock key for a database name (`0x3d32ad9e * crc32(name)`).
pub fn key(database: &str) -> i64 {
    0x3d32_ad9e_i64.wrapping_mul(crc32(database.as_bytes()) as i64)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Who holds the advisory lock, in words.
async fn holder(conn: &mut Conn, key: i64) -> String {
    let sql = format!(
        "SELECT a.pid::text, coalesce(a.application_name, ''), coalesce(a.state, ''), coalesce(left(a.query, 200), ''), coalesce(a.backend_start::text, '')
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {} AND l.objid = {} AND l.objsubid = 1",
        (key >> 32) as u32,
        key as u32
    );
    match conn.rows(&sql).await {
        Ok(rows) => match rows.first() {
            Some(r) => {
                let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                format!(
                    "pid {} (application `{}`, {}, connected since {}, last query: {})",
                    g(0),
                    g(1),
                    g(2),
                    g(4),
                    g(3).replace('\n', " ")
                )
            }
            None => "a session that just released it".to_string(),
        },
        Err(e) => format!("an unknown session ({e})"),
    }
}

/// Takes the lock, waiting up to `wait`.
pub(crate) async fn acquire(
    conn: &mut Conn,
    wait: Duration,
    ledger: Ledger,
) -> Result<i64, DbError> {
    let Conn::Pg(_) = conn else { return Ok(0) };
    let name = conn
        .scalar("SELECT current_database()::text")
        .await
        .map_err(|e| DbError::query("reading the database name", e))?;
    // The application's history takes sqlx's key; another ledger, its own.
    let key = match ledger.lock {
        "" => key(&name),
        salt => key(&format!("{name}/{salt}")),
    };
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut reported = false;
    loop {
        let got = conn
            .scalar(&format!("SELECT pg_try_advisory_lock({key})::text"))
            .await
            .map_err(|e| DbError::query("taking the migration lock", e))?;
        if got == "true" {
            return Ok(key);
        }
        let who = holder(conn, key).await;
        if started.elapsed() >= wait {
            return Err(DbError::LockTimeout {
                waited_ms: started.elapsed().as_millis() as u64,
                holder: who,
            });
        }
        if !reported {
            tracing::warn!(holder = %who, "waiting for the migration lock");
            reported = true;
        }
        tokio::time::sleep(delay.min(wait.saturating_sub(started.elapsed()))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Releases the lock (closing the connection releases it too).
pub(crate) async fn release(conn: &mut Conn, key: i64) {
    if let Conn::Pg(_) = conn {
        let _ = conn
            .exec(&format!("SELECT pg_advisory_unlock({key})"))
            .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_matches_sqlx() {
        // crc32("postgres") = 0x156a8775 (IEEE, as zlib computes it), times sqlx's constant.
        assert_eq!(super::crc32(b"postgres"), 0x156a_8775);
        assert_eq!(
            super::key("postgres"),
            0x3d32_ad9e_i64.wrapping_mul(0x156a_8775)
        );
    }
}
