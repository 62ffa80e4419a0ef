//! Backups: taken before migrating, verified, restorable, and kept tidy.
//!
//! PostgreSQL: `pg_dump --format=custom --compress=0` streamed through multi-threaded zstd, a
//! sha256 and (when a key is configured) XChaCha20-Poly1305 ([`crypt`]) into the environment's
//! backup directory. SQLite: `VACUUM INTO` a consistent snapshot, then the same stream.
//! Nothing is buffered whole: memory stays flat whatever the database's size.
//!
//! A backup is written as `<id>.partial` and renamed when complete; its manifest
//! (`<id>.json`) is written last. A file without a manifest is never listed as a backup.

mod apply;
mod beside;
pub mod crypt;
mod drill;
use crate::time;
mod tool;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::DbError;
use super::conn::{Backend, Conn, backend_of, redact_url, with_database};
use super::schema::{Snapshot, postchecks};
pub use beside::{Staged, restore_beside};
pub use crypt::Key;
pub use drill::{Drill, Standing, drill, standing};
use tool::Tool;

/// Where and how an environment keeps its backups.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// The environment.
    pub environment: String,
    /// The directory backups are written to.
    pub dir: PathBuf,
    /// The encryption key; `None` writes unencrypted backups.
    pub key: Option<Key>,
    /// zstd level: negative levels are zstd's fast modes, 3 is zstd's default.
    pub zstd_level: i32,
    /// zstd worker threads (0: one per core).
    pub zstd_workers: u32,
    /// What `prune` keeps.
    pub retention: Retention,
}

/// What `prune` keeps: the newest `keep_last`, plus the newest of each of the last
/// `keep_daily` days and `keep_weekly` weeks that have a backup.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Retention {
    /// The newest N.
    pub keep_last: usize,
    /// One per day for N days.
    pub keep_daily: usize,
    /// One per week for N weeks.
    pub keep_weekly: usize,
}

/// Everything known about one backup, stored as JSON beside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Its id (also its file name).
    pub id: String,
    /// The environment.
    pub environment: String,
    /// The database, password removed.
    pub database: String,
    /// `postgres` or `sqlite`.
    pub backend: String,
    /// The server's version.
    pub server_version: String,
    /// The last applied migration.
    pub schema_version: Option<i64>,
    /// The schema fingerprint at backup time.
    pub schema_fingerprint: String,
    /// `pg_dump-custom` or `sqlite-database`.
    pub format: String,
    /// Bytes of the dump before compression.
    pub raw_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// sha256 of the stored file.
    pub sha256: String,
    /// `zstd-<level>`.
    pub compression: String,
    /// `xchacha20poly1305-stream`, or none.
    pub encryption: Option<String>,
    /// The key's public id, when encrypted.
    pub key_id: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When it started, ms since the epoch: orders backups taken within the same second
    /// (retention keeps the newest). Absent in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// When it finished.
    pub finished_at: String,
    /// Who took it.
    pub who: String,
    /// Why.
    pub why: String,
    /// The last restore drill of this backup (absent until one ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

impl Manifest {
    fn data_file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.backup", self.id))
    }

    /// What its encrypted stream is bound to.
    pub fn identity(&self) -> crypt::Identity {
        crypt::Identity {
            id: self.id.clone(),
            environment: self.environment.clone(),
        }
    }
}

fn io_err(context: &str, path: &Path, e: impl std::fmt::Display) -> DbError {
    DbError::Query {
        context: format!("{context} {}", path.display()),
        message: e.to_string(),
    }
}

/// Counts bytes through a reader.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Hashes and counts bytes on their way to a file.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The end of the pipeline: encrypted or not.
enum Sink {
    Plain(Hashing<BufWriter<File>>),
    Sealed(crypt::EncryptWriter<Hashing<BufWriter<File>>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Sealed(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> io::Result<(String, u64)> {
        let mut h = match self {
            Sink::Plain(h) => h,
            Sink::Sealed(w) => w.finish()?,
        };
        h.flush()?;
        let file = h.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((hex::encode(h.hash.finalize()), h.bytes))
    }
}

/// Bytes of input each zstd worker compresses at a time.
const ZSTD_JOB_BYTES: u32 = 2 << 20;

/// Compresses (and encrypts) `source` into `path`, returning (sha256, stored bytes).
fn seal(
    source: impl Read,
    path: &Path,
    settings: &BackupSettings,
    identity: &crypt::Identity,
) -> io::Result<(String, u64)> {
    let file = File::create(path)?;
    let hashing = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let sink = match &settings.key {
        Some(key) => Sink::Sealed(crypt::EncryptWriter::new(hashing, key, identity)?),
        None => Sink::Plain(hashing),
    };
    let mut encoder = zstd::stream::write::Encoder::new(sink, settings.zstd_level)?;
    // Workers compress while this thread keeps reading the dump.
    let workers = match settings.zstd_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
        n => n,
    };
    encoder.multithread(workers)?;
    // Bound each worker's job (zstd's default grows with the level's window: 8 MiB at level
    // 3), so memory stays flat and small at every level.
    encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))?;
    let mut source = BufReader::with_capacity(1 << 20, source);
    io::copy(&mut source, &mut encoder)?;
    encoder.finish()?.finish()
}

/// Reads a stored backup back to its plain dump bytes: the file's sha256 is checked against
/// the manifest first (so a swapped or edited file is refused before anything uses it), then
/// integrity is checked as it decodes. Every reader of a backup comes through here.
fn open_plain(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
) -> Result<Box<dyn Read + Send>, DbError> {
    check_sha256(manifest, dir)?;
    let path = manifest.data_file(dir);
    let file = File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
    plain_from(manifest, key, file, &path)
}

/// The decrypting, decompressing reader over a stored backup's bytes read from `stored`
/// (`path` names it in errors). The caller checks the checksum.
fn plain_from(
    manifest: &Manifest,
    key: Option<&Key>,
    stored: impl Read + Send + 'static,
    path: &Path,
) -> Result<Box<dyn Read + Send>, DbError> {
    let path = path.to_path_buf();
    let reader: Box<dyn Read + Send> = match (&manifest.encryption, key) {
        (Some(_), Some(key)) => Box::new(
            crypt::DecryptReader::new(
                BufReader::with_capacity(1 << 20, stored),
                key,
                &manifest.identity(),
            )
            .map_err(|e| io_err("cannot decrypt", &path, e))?,
        ),
        (Some(_), None) => {
            return Err(DbError::Query {
                context: format!("backup {}", manifest.id),
                message: format!(
                    "it is encrypted (key {}), and no backup key is configured for this environment",
                    manifest.key_id.clone().unwrap_or_default()
                ),
            });
        }
        (None, _) => Box::new(BufReader::with_capacity(1 << 20, stored)),
    };
    let decoder = zstd::stream::read::Decoder::new(reader)
        .map_err(|e| io_err("cannot decompress", &path, e))?;
    Ok(Box::new(decoder))
}

/// What the database looks like now, for the manifest.
async fn describe(url: &str) -> Result<(Backend, String, Option<i64>, String), DbError> {
    let mut conn = Conn::open(url).await?;
    let result = async {
        let backend = conn.backend();
        let version_sql = match backend {
            Backend::Postgres => "SELECT current_setting('server_version')",
            Backend::Sqlite => "SELECT sqlite_version()",
        };
        let version = conn
            .scalar(version_sql)
            .await
            .map_err(|e| DbError::query("reading the server version", e))?;
        let applied =
            super::migrate::current_version(&mut conn, super::migrate::Ledger::APP).await?;
        let fingerprint = Snapshot::take(&mut conn).await?.fingerprint();
        Ok((backend, version, applied, fingerprint))
    }
    .await;
    conn.close().await;
    result
}

pub(crate) fn sqlite_path(url: &str) -> Result<PathBuf, DbError> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.starts_with(':') {
        return Err(DbError::Query {
            context: "backup".into(),
            message: format!("{url} is not a database file"),
        });
    }
    Ok(PathBuf::from(path))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), DbError> {
    let path = dir.join(format!("{}.json", manifest.id));
    let tmp = dir.join(format!("{}.json.partial", manifest.id));
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| io_err("cannot encode", &path, e))?;
    let mut f = File::create(&tmp).map_err(|e| io_err("cannot write", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err("cannot write", &path, e))?;
    sync_dir(dir);
    Ok(())
}

/// (sha256, stored bytes, raw bytes, format) of a sealed dump.
type Sealed = (String, u64, u64, &'static str);

/// PostgreSQL: pg_dump's custom format, uncompressed, straight into the pipeline.
fn seal_pg_dump(
    url: &str,
    partial: &Path,
    settings: &BackupSettings,
    identity: &crypt::Identity,
    progress: Arc<AtomicU64>,
) -> Result<Sealed, DbError> {
    let mut dump = Tool::spawn(
        "pg_dump",
        &["--format=custom", "--compress=0", "--no-password"],
        Some(url),
        Stdio::null(),
        Stdio::piped(),
    )?;
    let stdout = dump
        .child
        .stdout
        .take()
        .ok_or_else(|| DbError::query("pg_dump", "no stdout"))?;
    let sealed = seal(
        Counting {
            inner: stdout,
            count: progress.clone(),
        },
        partial,
        settings,
        identity,
    );
    let finished = if sealed.is_err() {
        dump.kill()?
    } else {
        dump.finish()?
    };
    let (sha, stored) = sealed.map_err(|e| io_err("cannot write", partial, e))?;
    finished.map_err(|errors| DbError::Query {
        context: "pg_dump failed".into(),
        message: errors,
    })?;
    Ok((
        sha,
        stored,
        progress.load(Ordering::Relaxed),
        "pg_dump-custom",
    ))
}

/// SQLite: a consistent snapshot with `VACUUM INTO`, then the pipeline.
async fn seal_sqlite(
    url: &str,
    partial: &Path,
    settings: &BackupSettings,
    identity: &crypt::Identity,
    progress: Arc<AtomicU64>,
) -> Result<Sealed, DbError> {
    let snapshot = partial.with_extension("snapshot");
    let _ = std::fs::remove_file(&snapshot);
    let mut conn = Conn::open(url).await?;
    let vacuum = conn
        .exec(&format!(
            "VACUUM INTO {}",
            super::conn::lit(&snapshot.display().to_string())
        ))
        .await;
    conn.close().await;
    vacuum.map_err(|e| DbError::query("VACUUM INTO (SQLite snapshot)", e))?;
    let (snap, part, s, who) = (
        snapshot.clone(),
        partial.to_path_buf(),
        settings.clone(),
        identity.clone(),
    );
    let sealed = tokio::task::spawn_blocking(move || {
        let file = File::open(&snap).map_err(|e| io_err("cannot read", &snap, e))?;
        let (sha, stored) = seal(
            Counting {
                inner: file,
                count: progress.clone(),
            },
            &part,
            &s,
            &who,
        )
        .map_err(|e| io_err("cannot write", &part, e))?;
        Ok::<_, DbError>((
            sha,
            stored,
            progress.load(Ordering::Relaxed),
            "sqlite-database",
        ))
    })
    .await
    .map_err(|e| DbError::query("backup task", e));
    let _ = std::fs::remove_file(&snapshot);
    sealed?
}

/// Creates `partial` and takes an exclusive lock on it, held as long as the returned file is.
fn lock_partial(partial: &Path) -> Result<File, DbError> {
    let file = File::create(partial).map_err(|e| io_err("cannot write", partial, e))?;
    file.try_lock()
        .map_err(|e| io_err("cannot lock", partial, e))?;
    Ok(file)
}

/// Whether a live process is still writing `partial` (it holds the lock).
fn being_written(partial: &Path) -> bool {
    match File::open(partial) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Takes a backup. `progress` receives the dump bytes read so far.
pub async fn create(
    url: &str,
    settings: &BackupSettings,
    who: &str,
    why: &str,
    progress: Arc<AtomicU64>,
) -> Result<Manifest, DbError> {
    std::fs::create_dir_all(&settings.dir)
        .map_err(|e| io_err("cannot create", &settings.dir, e))?;
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let started = started_ms.div_euclid(1000);
    let (backend, server_version, schema_version, schema_fingerprint) = describe(url).await?;
    let id = format!(
        "{}-{}-{}",
        time::compact(started),
        settings.environment,
        crate::random::hex(3)
    );
    let identity = crypt::Identity {
        id: id.clone(),
        environment: settings.environment.clone(),
    };
    let partial = settings.dir.join(format!("{id}.partial"));
    // Held until the backup is complete: `prune` never removes a file a live process writes.
    let _writing = lock_partial(&partial)?;
    let sealed = match backend {
        Backend::Postgres => {
            let (u, p, s, who) = (
                url.to_string(),
                partial.clone(),
                settings.clone(),
                identity.clone(),
            );
            tokio::task::spawn_blocking(move || seal_pg_dump(&u, &p, &s, &who, progress))
                .await
                .map_err(|e| DbError::query("backup task", e))
                .and_then(|r| r)
        }
        Backend::Sqlite => seal_sqlite(url, &partial, settings, &identity, progress).await,
    };
    let (sha256, stored_bytes, raw_bytes, format) = match sealed {
        Ok(r) => r,
        Err(e) => {
            // Nothing that looks like a backup is left behind.
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let manifest = Manifest {
        id,
        environment: settings.environment.clone(),
        database: redact_url(url),
        backend: format!("{backend:?}").to_lowercase(),
        server_version,
        schema_version,
        schema_fingerprint,
        format: format.to_string(),
        raw_bytes,
        stored_bytes,
        sha256,
        compression: format!("zstd-{}", settings.zstd_level),
        encryption: settings
            .key
            .as_ref()
            .map(|_| "xchacha20poly1305-stream".to_string()),
        key_id: settings.key.as_ref().map(Key::id),
        started_at: time::rfc3339(started),
        started_ms: Some(started_ms),
        finished_at: time::rfc3339(time::now_secs()),
        who: who.to_string(),
        why: why.to_string(),
        drill: None,
    };
    let finished = (|| {
        std::fs::rename(&partial, manifest.data_file(&settings.dir))
            .map_err(|e| io_err("cannot finish", &partial, e))?;
        sync_dir(&settings.dir);
        write_manifest(&settings.dir, &manifest)
    })();
    if let Err(e) = finished {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(manifest.data_file(&settings.dir));
        return Err(e);
    }
    tracing::info!(id = %manifest.id, stored_bytes = manifest.stored_bytes, "backup written");
    Ok(manifest)
}

/// About how many bytes a backup of `url` will read, for a progress estimate: the database's
/// size (an upper bound for PostgreSQL, whose dumps leave out indexes' contents) or the
/// SQLite file's.
pub async fn estimate_bytes(url: &str) -> Option<u64> {
    match backend_of(url)? {
        Backend::Sqlite => std::fs::metadata(sqlite_path(url).ok()?)
            .ok()
            .map(|m| m.len()),
        Backend::Postgres => {
            let mut conn = Conn::open(url).await.ok()?;
            let size = conn
                .scalar("SELECT pg_database_size(current_database())::text")
                .await
                .ok();
            conn.close().await;
            size?.parse().ok()
        }
    }
}

/// The backups in `dir`, newest first, and any incomplete leftovers (`.partial` files).
pub fn list(dir: &Path) -> Result<(Vec<Manifest>, Vec<PathBuf>), DbError> {
    let mut manifests = Vec::new();
    let mut partial = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((manifests, partial)),
        Err(e) => return Err(io_err("cannot list", dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".partial") || name.ends_with(".snapshot") {
            partial.push(path);
        } else if name.ends_with(".json") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| io_err("cannot read", &path, e))?;
            let m: Manifest = serde_json::from_str(&text)
                .map_err(|e| io_err("not a backup manifest:", &path, e))?;
            manifests.push(m);
        }
    }
    manifests.sort_by(newest_first);
    Ok((manifests, partial))
}

/// One backup by id.
pub fn find(dir: &Path, id: &str) -> Result<Manifest, DbError> {
    let (all, _) = list(dir)?;
    // `latest`: the newest, as `backup list` shows it first.
    let latest = id == "latest";
    all.into_iter()
        .find(|m| latest || m.id == id)
        .ok_or_else(|| DbError::Query {
            context: format!("backup {id}"),
            message: format!(
                "no such backup in {} (see `deploy-agent backup list`)",
                dir.display()
            ),
        })
}

/// Checks the stored file's sha256 against its manifest: a file swapped, edited or
/// truncated since it was written is refused before anything reads its contents.
fn check_sha256(manifest: &Manifest, dir: &Path) -> Result<(), DbError> {
    let path = manifest.data_file(dir);
    let mut file = File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| io_err("cannot read", &path, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let actual = hex::encode(hash.finalize());
    if actual != manifest.sha256 {
        return Err(DbError::Query {
            context: format!("backup {}", manifest.id),
            message: format!(
                "checksum mismatch: the manifest says {}, the file is {actual}: it was modified, swapped or truncated; nothing was restored",
                manifest.sha256
            ),
        });
    }
    Ok(())
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The backup.
    pub id: String,
    /// The stored file's sha256 matched the manifest.
    pub checksum_ok: bool,
    /// Plain bytes read back (must equal the manifest's `raw_bytes`).
    pub raw_bytes: u64,
}

/// Checks the stored checksum, then decrypts and decompresses the whole stream without
/// writing anything. Any failure is an error that says what is wrong.
pub fn verify(manifest: &Manifest, dir: &Path, key: Option<&Key>) -> Result<Verified, DbError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut plain = open_plain(manifest, dir, key)?;
    let mut raw = 0u64;
    let mut head = Vec::new();
    loop {
        let n = plain.read(&mut buf).map_err(|e| DbError::Query {
            context: format!("backup {}", manifest.id),
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        if head.len() < 16 {
            head.extend_from_slice(&buf[..n.min(16)]);
        }
        raw += n as u64;
    }
    let magic_ok = match manifest.format.as_str() {
        "pg_dump-custom" => head.starts_with(b"PGDMP"),
        _ => head.starts_with(b"SQLite format 3"),
    };
    if raw != manifest.raw_bytes || !magic_ok {
        return Err(DbError::Query {
            context: format!("backup {}", manifest.id),
            message: format!(
                "decoded {raw} bytes, the manifest says {}{}",
                manifest.raw_bytes,
                if magic_ok {
                    ""
                } else {
                    "; and it is not the dump format the manifest names"
                }
            ),
        });
    }
    Ok(Verified {
        id: manifest.id.clone(),
        checksum_ok: true,
        raw_bytes: raw,
    })
}

/// Writes the plain dump (a stock `pg_dump` custom archive, or the SQLite file) to `out`.
pub fn export(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    out: &Path,
) -> Result<u64, DbError> {
    let tmp = out.with_extension("partial");
    let result = (|| {
        let mut plain = open_plain(manifest, dir, key)?;
        let mut file = File::create(&tmp).map_err(|e| io_err("cannot write", &tmp, e))?;
        let n = io::copy(&mut plain, &mut file).map_err(|e| io_err("cannot export to", &tmp, e))?;
        file.sync_all()
            .map_err(|e| io_err("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| io_err("cannot write", out, e))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Restores a backup into the database at `url`, replacing what is there: afterwards the
/// database is exactly as backed up (objects created since are gone). PostgreSQL: one
/// transaction, all or nothing. SQLite: the snapshot is written beside the database and
/// renamed over it.
pub async fn restore(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    url: &str,
) -> Result<(), DbError> {
    let backend = restorable_into(manifest, url)?;
    if backend == Backend::Sqlite {
        // Everything committed so far is in the main file, so the swap below loses nothing
        // whenever it is interrupted.
        let mut conn = Conn::open(url).await?;
        let checkpoint = conn.exec("PRAGMA wal_checkpoint(TRUNCATE)").await;
        conn.close().await;
        checkpoint.map_err(|e| DbError::query("checkpointing the database before the swap", e))?;
    }
    let (m, d, k, u) = (
        manifest.clone(),
        dir.to_path_buf(),
        key.cloned(),
        url.to_string(),
    );
    tokio::task::spawn_blocking(move || match backend {
        Backend::Postgres => {
            let mut plain = open_plain(&m, &d, k.as_ref())?;
            apply::restore(&mut plain, &m.id, &u)
        }
        Backend::Sqlite => swap_sqlite(&m, &d, k.as_ref(), &u),
    })
    .await
    .map_err(|e| DbError::query("restore task", e))??;
    tracing::warn!(id = %manifest.id, "database restored from backup");
    Ok(())
}

/// The backend of `url`, if `manifest`'s backup can be restored into it (a pg_dump archive
/// into PostgreSQL, an SQLite file into SQLite).
fn restorable_into(manifest: &Manifest, url: &str) -> Result<Backend, DbError> {
    let backend =
        backend_of(url).ok_or_else(|| DbError::query("restore", "unsupported database URL"))?;
    let expected = match backend {
        Backend::Postgres => "pg_dump-custom",
        Backend::Sqlite => "sqlite-database",
    };
    if manifest.format != expected {
        return Err(DbError::Query {
            context: format!("restoring {}", manifest.id),
            message: format!(
                "it is a {} backup; the target is {backend:?}",
                manifest.format
            ),
        });
    }
    Ok(backend)
}

/// SQLite: the whole backup decoded beside the database, then renamed over it.
fn swap_sqlite(m: &Manifest, dir: &Path, key: Option<&Key>, url: &str) -> Result<(), DbError> {
    let target = sqlite_path(url)?;
    let tmp = target.with_extension("restoring");
    let result = export(m, dir, key, &tmp).and_then(|_| {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", target.display())));
        }
        std::fs::rename(&tmp, &target).map_err(|e| io_err("cannot replace", &target, e))?;
        if let Some(parent) = target.parent() {
            sync_dir(parent);
        }
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What `restore --test` found.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreTest {
    /// The backup.
    pub id: String,
    /// Where it was restored (dropped afterwards).
    pub scratch: String,
    /// The schema fingerprint after restoring.
    pub fingerprint: String,
    /// Whether it equals the manifest's.
    pub fingerprint_matches: bool,
    /// Post-checks on the restored copy.
    pub checks: Vec<super::schema::Check>,
}

/// Restores into a scratch database (PostgreSQL: a new database on the same server; SQLite:
/// a temporary file), runs the post-checks, compares the fingerprint, and drops it.
pub async fn restore_test(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    url: &str,
) -> Result<RestoreTest, DbError> {
    let backend = backend_of(url)
        .ok_or_else(|| DbError::query("restore --test", "unsupported database URL"))?;
    match backend {
        Backend::Postgres => {
            // Opened (and its checksum checked) before the scratch database exists.
            let (m, d, k) = (manifest.clone(), dir.to_path_buf(), key.cloned());
            let mut plain = tokio::task::spawn_blocking(move || open_plain(&m, &d, k.as_ref()))
                .await
                .map_err(|e| DbError::query("restore task", e))??;
            let scratch = format!("deploy_agent_restore_test_{}", crate::random::hex(4));
            let scratch_url = with_database(url, &scratch);
            let mut admin = Conn::open(url).await?;
            admin
                .exec(&format!("CREATE DATABASE {scratch}"))
                .await
                .map_err(|e| DbError::query("creating the scratch database", e))?;
            let (id, su) = (manifest.id.clone(), scratch_url.clone());
            let restored =
                tokio::task::spawn_blocking(move || apply::restore(&mut plain, &id, &su))
                    .await
                    .map_err(|e| DbError::query("restore task", e))
                    .and_then(|r| r);
            let checked = match restored {
                Ok(()) => check_restored(&scratch_url).await,
                Err(e) => Err(e),
            };
            let dropped = admin
                .exec(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
                .await;
            admin.close().await;
            let (fingerprint, checks) = checked?;
            dropped.map_err(|e| DbError::query("dropping the scratch database", e))?;
            Ok(RestoreTest {
                id: manifest.id.clone(),
                scratch,
                fingerprint_matches: fingerprint == manifest.schema_fingerprint,
                fingerprint,
                checks,
            })
        }
        Backend::Sqlite => {
            let tmp = tempfile::tempdir().map_err(|e| DbError::query("restore --test", e))?;
            let file = tmp.path().join("restore-test.db");
            let (m, d, k, f) = (
                manifest.clone(),
                dir.to_path_buf(),
                key.cloned(),
                file.clone(),
            );
            tokio::task::spawn_blocking(move || export(&m, &d, k.as_ref(), &f))
                .await
                .map_err(|e| DbError::query("restore task", e))??;
            let (fingerprint, checks) =
                check_restored(&format!("sqlite:{}", file.display())).await?;
            Ok(RestoreTest {
                id: manifest.id.clone(),
                scratch: file.display().to_string(),
                fingerprint_matches: fingerprint == manifest.schema_fingerprint,
                fingerprint,
                checks,
            })
        }
    }
}

async fn check_restored(url: &str) -> Result<(String, Vec<super::schema::Check>), DbError> {
    let mut conn = Conn::open(url).await?;
    let result = postchecks(&mut conn).await;
    conn.close().await;
    let (checks, fingerprint) = result?;
    Ok((fingerprint, checks))
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    /// The backups deleted, by id.
    pub deleted: Vec<String>,
    /// Leftovers of interrupted backups removed (`.partial`, `.snapshot`).
    pub leftovers: Vec<PathBuf>,
}

/// Applies the retention policy; backups in `protected` (pinned by a recorded release) are
/// always kept. Also removes the leftovers of interrupted backups that are older than the
/// newest complete backup, never one a live process is still writing.
pub fn prune(
    dir: &Path,
    retention: Retention,
    protected: &BTreeSet<String>,
    dry_run: bool,
) -> Result<Pruned, DbError> {
    let (all, leftovers) = list(dir)?;
    let keep = retained(&all, retention, protected);
    let mut pruned = Pruned::default();
    for m in all.iter().filter(|m| !keep.contains(&m.id)) {
        if !dry_run {
            let _ = std::fs::remove_file(dir.join(format!("{}.json", m.id)));
            std::fs::remove_file(m.data_file(dir))
                .map_err(|e| io_err("cannot delete", &m.data_file(dir), e))?;
        }
        pruned.deleted.push(m.id.clone());
    }
    let newest = all
        .first()
        .and_then(|m| time::parse_rfc3339(&m.finished_at));
    for path in leftovers {
        if let Some(newest) = newest
            && is_stale_leftover(&path, newest)
        {
            if !dry_run {
                std::fs::remove_file(&path).map_err(|e| io_err("cannot delete", &path, e))?;
            }
            pruned.leftovers.push(path);
        }
    }
    sync_dir(dir);
    Ok(pruned)
}

/// A leftover last written before `newest` (seconds since the epoch) whose backup no live
/// process is writing (a `.snapshot` belongs to the `.partial` of the same id).
fn is_stale_leftover(path: &Path, newest: i64) -> bool {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    let Some(modified) = modified else {
        return false;
    };
    let writer = if path.extension().is_some_and(|e| e == "snapshot") {
        path.with_extension("partial")
    } else {
        path.to_path_buf()
    };
    modified <= newest && !being_written(&writer)
}

/// Newest first; within one second by the millisecond, so retention keeps the backup really
/// taken last (ids, whose suffix is random, break only a true tie).
fn newest_first(a: &Manifest, b: &Manifest) -> std::cmp::Ordering {
    b.started_at
        .cmp(&a.started_at)
        .then(b.started_ms.cmp(&a.started_ms))
        .then(b.id.cmp(&a.id))
}

/// Which ids the policy keeps (`all` newest first).
pub fn retained(
    all: &[Manifest],
    retention: Retention,
    protected: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut keep: BTreeSet<String> = all
        .iter()
        .take(retention.keep_last)
        .map(|m| m.id.clone())
        .collect();
    let mut days = BTreeSet::new();
    let mut weeks = BTreeSet::new();
    for m in all {
        let Some(secs) = time::parse_rfc3339(&m.started_at) else {
            continue;
        };
        let day = secs.div_euclid(86_400);
        // Weeks start on Monday; 1970-01-01 was a Thursday.
        let week = (day + 3).div_euclid(7);
        if days.len() < retention.keep_daily && days.insert(day) {
            keep.insert(m.id.clone());
        }
        if weeks.len() < retention.keep_weekly && weeks.insert(week) {
            keep.insert(m.id.clone());
        }
    }
    keep.extend(
        all.iter()
            .filter(|m| protected.contains(&m.id))
            .map(|m| m.id.clone()),
    );
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, at: &str) -> Manifest {
        Manifest {
            id: id.into(),
            environment: "e".into(),
            database: String::new(),
            backend: "sqlite".into(),
            server_version: String::new(),
            schema_version: None,
            schema_fingerprint: String::new(),
            format: "sqlite-database".into(),
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            compression: String::new(),
            encryption: None,
            key_id: None,
            started_at: at.into(),
            started_ms: None,
            finished_at: at.into(),
            who: String::new(),
            why: String::new(),
            drill: None,
        }
    }

    #[test]
    fn retention_keeps_last_daily_weekly_and_protected() {
        // Newest first: two on Sat 21st, one on Fri 20th, one on Mon 16th, one on Tue 3rd.
        let all = vec![
            manifest("a", "2026-11-21T12:00:00Z"),
            manifest("b", "2026-11-21T08:00:00Z"),
            manifest("c", "2026-11-20T08:00:00Z"),
            manifest("d", "2026-11-16T08:00:00Z"),
            manifest("e", "2026-11-03T08:00:00Z"),
        ];
        let none = BTreeSet::new();
        let r = |l, d, w| Retention {
            keep_last: l,
            keep_daily: d,
            keep_weekly: w,
        };
        assert_eq!(retained(&all, r(1, 0, 0), &none), ["a".to_string()].into());
        assert_eq!(
            retained(&all, r(0, 2, 0), &none),
            ["a".to_string(), "c".into()].into()
        );
        // Weeks: a (week of 16-22), e (week of 2-8); d shares a's week.
        assert_eq!(
            retained(&all, r(0, 0, 2), &none),
            ["a".to_string(), "e".into()].into()
        );
        let pinned: BTreeSet<String> = ["d".to_string()].into();
        assert_eq!(
            retained(&all, r(1, 0, 0), &pinned),
            ["a".to_string(), "d".into()].into()
        );
    }

    /// Three backups in one second (a deploy's, then two by hand): the last one taken is the
    /// newest, whatever the random suffixes of their ids say; retention keeps it.
    #[test]
    fn backups_within_one_second_are_ordered_by_the_millisecond() {
        let at = "2026-11-29T23:08:06Z";
        let taken = |id: &str, ms: i64| Manifest {
            started_ms: Some(ms),
            ..manifest(id, at)
        };
        let mut all = vec![
            taken("z-deploy", 100),
            taken("a-first", 400),
            taken("m-second", 700),
        ];
        all.sort_by(newest_first);
        let ids: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m-second", "a-first", "z-deploy"]);
        let r = Retention {
            keep_last: 1,
            keep_daily: 7,
            keep_weekly: 4,
        };
        let protected: BTreeSet<String> = ["z-deploy".to_string()].into();
        assert_eq!(
            retained(&all, r, &protected),
            ["m-second".to_string(), "z-deploy".into()].into()
        );
    }

    #[test]
    fn urls_for_tools_and_scratch_databases() {
        assert_eq!(
            with_database("postgres://u@h:5/app?sslmode=disable", "scratch"),
            "postgres://u@h:5/scratch?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5", "scratch"),
            "postgres://u@h:5/scratch"
        );
    }
}
