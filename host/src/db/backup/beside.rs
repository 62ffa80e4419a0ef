//! Restoring a backup into a new database beside the live one, which stays untouched (and
//! serving) meanwhile; [`crate::db::swap`] then switches to it in one short step.
//!
//! PostgreSQL: a new database like the live one (encoding, collation, database-level
//! settings), the backup decoded to a plain archive file beside the backups, and
//! `pg_restore --jobs N` into it: parallel, since nothing else uses the new database (a
//! restore over the live database has to be one transaction, and so one session). SQLite:
//! the backup decoded to a new file. Either way the schema fingerprint must equal the
//! manifest's and the post-checks pass before anything switches.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::tool::Tool;
use super::{Key, Manifest, check_restored, export, io_err, plain_from, restorable_into};
use crate::db::DbError;
use crate::db::conn::{Backend, Conn, lit};
use crate::db::swap::{self, Names, ident};

/// What a restore beside the live database did.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The parallel jobs pg_restore ran (1 for SQLite).
    pub jobs: usize,
    /// Decoding the backup to a plain archive (PostgreSQL), or to the new file (SQLite).
    pub decode: Duration,
    /// pg_restore into the new database (zero for SQLite).
    pub restore: Duration,
    /// The fingerprint and the post-checks of the restored database.
    pub check: Duration,
    /// The restored schema's fingerprint (equal to the manifest's).
    pub fingerprint: String,
}

/// Restores `manifest` into `names.staged` (replacing a leftover of an earlier attempt),
/// checks it, and leaves it there for the switch. On failure nothing staged is left.
pub async fn restore_beside(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    url: &str,
    names: &Names,
) -> Result<Staged, DbError> {
    let backend = restorable_into(manifest, url)?;
    swap::discard(url, names).await?;
    let staged_url = swap::staged_url(url, names);
    let at = Instant::now();
    let restored = match backend {
        Backend::Postgres => pg_stage(manifest, dir, key, url, names, &staged_url).await,
        Backend::Sqlite => {
            let (m, d, k, f) = (
                manifest.clone(),
                dir.to_path_buf(),
                key.cloned(),
                std::path::PathBuf::from(&names.staged),
            );
            tokio::task::spawn_blocking(move || export(&m, &d, k.as_ref(), &f))
                .await
                .map_err(|e| DbError::query("restore task", e))
                .and_then(|r| r)
                .map(|_| (1, at.elapsed(), Duration::ZERO))
        }
    };
    let at = Instant::now();
    let checked = match restored {
        Ok(timed) => check_restored(&staged_url).await.map(|c| (timed, c)),
        Err(e) => Err(e),
    };
    let check = at.elapsed();
    let verdict = checked.and_then(|((jobs, decode, restore), (fingerprint, checks))| {
        if fingerprint != manifest.schema_fingerprint {
            return Err(DbError::Query {
                context: format!("restoring {} beside the live database", manifest.id),
                message: format!(
                    "the restored schema's fingerprint {fingerprint} is not the backup's {}",
                    manifest.schema_fingerprint
                ),
            });
        }
        if let Some(c) = checks.iter().find(|c| c.status == "error") {
            return Err(DbError::Query {
                context: format!("restoring {} beside the live database", manifest.id),
                message: format!("post-check {} failed: {}", c.name, c.detail),
            });
        }
        Ok(Staged {
            jobs,
            decode,
            restore,
            check,
            fingerprint,
        })
    });
    if verdict.is_err() {
        let _ = swap::discard(url, names).await;
    }
    verdict
}

/// PostgreSQL: a new database like the live one, then pg_restore in parallel into it.
async fn pg_stage(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    url: &str,
    names: &Names,
    staged_url: &str,
) -> Result<(usize, Duration, Duration), DbError> {
    let mut live = Conn::open(url).await?;
    let created = create_like_live(&mut live, &names.staged).await;
    live.close().await;
    created?;
    // pg_restore runs jobs only from a file it can seek in: the archive is decoded (and its
    // checksum and authentication checked) to one beside the backups, deleted afterwards.
    let archive = dir.join(format!(".{}.{}.archive", manifest.id, names.staged));
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let (m, d, k, a, su) = (
        manifest.clone(),
        dir.to_path_buf(),
        key.cloned(),
        archive.clone(),
        staged_url.to_string(),
    );
    let restored = tokio::task::spawn_blocking(move || {
        let at = Instant::now();
        decode_checked(&m, &d, k.as_ref(), &a)?;
        let decoded = at.elapsed();
        let at = Instant::now();
        let jobs_arg = format!("--jobs={jobs}");
        let archive_arg = a.display().to_string();
        let tool = Tool::spawn(
            "pg_restore",
            &[
                "--no-owner",
                "--exit-on-error",
                "--no-password",
                &jobs_arg,
                &archive_arg,
            ],
            Some(&su),
            Stdio::null(),
            Stdio::null(),
        )?;
        tool.finish()?.map_err(|errors| DbError::Query {
            context: format!("pg_restore of {} into a new database", m.id),
            message: errors,
        })?;
        Ok::<_, DbError>((decoded, at.elapsed()))
    })
    .await
    .map_err(|e| DbError::query("restore task", e))
    .and_then(|r| r);
    let _ = std::fs::remove_file(&archive);
    restored.map(|(decode, restore)| (jobs, decode, restore))
}

/// Decodes the stored backup into the plain archive `out` in one pass: one thread reads the
/// stored file and hashes it while this one decrypts, decompresses and writes. The file's
/// sha256 must equal the manifest's, else `out` is removed and nothing is restored (the
/// checksum is the same guard `open_plain` applies first; here nothing live is touched
/// before it is known).
fn decode_checked(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    out: &Path,
) -> Result<(), DbError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let path = manifest.data_file(dir);
    let mut file = std::fs::File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let reader = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            buf.truncate(n);
            if tx.send(buf).is_err() {
                // The decoder stopped (an error it reports); the rest is still hashed.
                let mut rest = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut rest)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&rest[..n]);
                }
                break;
            }
        }
        Ok::<_, std::io::Error>(hex::encode(hash.finalize()))
    });
    let decoded = plain_from(
        manifest,
        key,
        Chunks {
            rx,
            at: Vec::new(),
            pos: 0,
        },
        &path,
    )
    .and_then(|mut plain| {
        let mut file = std::fs::File::create(out).map_err(|e| io_err("cannot write", out, e))?;
        std::io::copy(&mut plain, &mut file).map_err(|e| io_err("cannot decode into", out, e))
    });
    let hashed = reader
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("reader panicked")))
        .map_err(|e| io_err("cannot read", &path, e));
    let outcome = match (hashed, decoded) {
        (Ok(actual), _) if actual != manifest.sha256 => Err(DbError::Query {
            context: format!("backup {}", manifest.id),
            message: format!(
                "checksum mismatch: the manifest says {}, the file is {actual}: it was modified, swapped or truncated; nothing was restored",
                manifest.sha256
            ),
        }),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(_), Ok(_)) => Ok(()),
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(out);
    }
    outcome
}

/// A reader over the chunks the hashing thread sends.
struct Chunks {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    at: Vec<u8>,
    pos: usize,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.at.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.at = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.at.len() - self.pos);
        buf[..n].copy_from_slice(&self.at[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Creates `name` with the live database's encoding, collation and database-level settings
/// (what `pg_dump` does not carry), owned by this role.
async fn create_like_live(live: &mut Conn, name: &str) -> Result<(), DbError> {
    let fail = |what: &str, e: sqlx::Error| DbError::query(what.to_string(), e);
    let rows = live
        .rows(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
             FROM pg_database WHERE datname = current_database()",
        )
        .await
        .map_err(|e| fail("reading the live database's encoding", e))?;
    let row = rows.first().cloned().unwrap_or_default();
    let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    live.exec(&format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        ident(name),
        lit(&get(0)),
        lit(&get(1)),
        lit(&get(2))
    ))
    .await
    .map_err(|e| fail("creating the database to restore into", e))?;
    let settings = live
        .rows(
            "SELECT unnest(s.setconfig)::text FROM pg_db_role_setting s, pg_database d \
             WHERE d.datname = current_database() AND s.setdatabase = d.oid AND s.setrole = 0",
        )
        .await
        .map_err(|e| fail("reading the live database's settings", e))?;
    for setting in settings.iter().filter_map(|r| r.first().cloned().flatten()) {
        let Some((key, value)) = setting.split_once('=') else {
            continue;
        };
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            continue;
        }
        // A list setting is stored as SQL already (`"$user", public`); any other as text.
        let value = if key == "search_path" {
            value.to_string()
        } else {
            lit(value)
        };
        {
            live.exec(&format!(
                "ALTER DATABASE {} SET {key} = {value}",
                ident(name)
            ))
            .await
            .map_err(|e| fail("copying the live database's settings", e))?;
        }
    }
    Ok(())
}
