//! Migrations: sqlx-compatible files and history, applied safely.
//!
//! - Each migration runs in its own transaction, sent as **one** message (`BEGIN`, a
//!   `lock_timeout`, the SQL, the history rows, `COMMIT`): one round trip and one durable
//!   commit per migration, where sqlx's migrator spends five and two.
//! - Files starting with `-- no-transaction` are split into statements (so
//!   `CREATE INDEX CONCURRENTLY` works); the history row is written first with
//!   `success = false` and completed at the end, so a crash part-way is recorded, and an
//!   index left INVALID is reported.
//! - The lock cannot leak (see [`lock`]); statements that cannot get their table lock within
//!   `lock_timeout` are retried with backoff, a bounded number of times.
//! - Down SQL is stored with the history, so a later binary without the file can revert.
//! - A dry run executes the pending migrations in a transaction, reports what changed, and
//!   rolls back.

pub mod contract;
pub mod embedded;
mod history;
pub mod lint;
mod lock;
pub mod sequences;
pub mod source;
pub mod split;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use history::{Applied, Ledger};
pub use lint::LintFinding;
pub use lock::key as lock_key;
pub use source::Migration;

use super::DbError;
use super::conn::{Backend, Conn, bytes_lit, lit};
use super::schema::{Change, Check, Snapshot, postchecks, prechecks};

/// What the migration engine needs to know about one environment's database.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database URL (may carry a password: never log it; see [`super::redact_url`]).
    pub url: String,
    /// The migrations directory.
    pub dir: PathBuf,
    /// `lock_timeout` for each migration's statements.
    pub lock_timeout: Duration,
    /// Retries of a migration that hit `lock_timeout`.
    pub lock_retries: u32,
    /// How long to wait for the migration lock.
    pub lock_wait: Duration,
    /// Whether lint findings block (strict environments).
    pub strict: bool,
    /// Who is migrating (for the history).
    pub actor: String,
    /// Where the history is kept: the application's ([`Ledger::APP`]) unless the agent is
    /// migrating its own state store.
    pub ledger: Ledger,
}

impl Settings {
    /// Defaults: 2 s lock_timeout, 5 retries, 60 s lock wait, not strict.
    pub fn new(url: &str, dir: PathBuf) -> Self {
        Settings {
            url: url.to_string(),
            dir,
            lock_timeout: Duration::from_secs(2),
            lock_retries: 5,
            lock_wait: Duration::from_secs(60),
            strict: false,
            actor: whoami(),
            ledger: Ledger::APP,
        }
    }
}

/// The operator's name, for the history and the audit log: `$USER`, `$LOGNAME`, or the
/// account that owns this process (systemd services often run without either variable).
pub fn whoami() -> String {
    if let Some(name) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
    {
        return name;
    }
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Where one version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Applied, and the file is unchanged.
    Applied,
    /// Not applied yet.
    Pending,
    /// Applied, but the file changed since.
    Changed,
    /// Applied, but the file is gone.
    Missing,
    /// Started outside a transaction and did not finish.
    Failed,
}

/// One version in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    /// The version.
    pub version: i64,
    /// Its description.
    pub description: String,
    /// Where it stands.
    pub state: State,
    /// When it was applied.
    pub installed_on: Option<String>,
    /// How long it took, milliseconds.
    pub execution_ms: Option<f64>,
    /// Whether it can be reverted (down SQL in the file or the history).
    pub reversible: bool,
}

/// `migrate status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The backend.
    pub backend: Backend,
    /// The last applied version.
    pub current: Option<i64>,
    /// Every version, file or history.
    pub versions: Vec<VersionStatus>,
}

impl Status {
    /// Pending versions.
    pub fn pending(&self) -> usize {
        self.versions
            .iter()
            .filter(|v| v.state == State::Pending)
            .count()
    }
}

/// What `run` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Versions applied, in order, with milliseconds each.
    pub applied: Vec<(i64, f64)>,
    /// Versions reverted (when `--target` was below the current version).
    pub reverted: Vec<i64>,
    /// Checks before.
    pub prechecks: Vec<Check>,
    /// Checks after.
    pub postchecks: Vec<Check>,
    /// The schema fingerprint after.
    pub fingerprint: String,
    /// Lint findings (waived ones included).
    pub lint: Vec<LintFinding>,
    /// The last applied version after the run.
    pub current: Option<i64>,
}

/// One migration in a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunStep {
    /// The version.
    pub version: i64,
    /// Its description.
    pub description: String,
    /// Executed (then rolled back), or why not.
    pub executed: bool,
    /// Why it was not executed.
    pub skipped: Option<String>,
    /// Schema changes it made.
    pub changes: Vec<Change>,
    /// Rows its statements affected.
    pub rows_affected: u64,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
    /// For migrations outside a transaction: the statements that would run.
    pub statements: Vec<String>,
    /// The error, if it failed.
    pub error: Option<String>,
}

/// `migrate dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// One entry per pending migration.
    pub steps: Vec<DryRunStep>,
    /// Lint findings.
    pub lint: Vec<LintFinding>,
    /// Whether the schema after rollback equals the schema before (it must).
    pub rolled_back: bool,
    /// Sequences: drawn from transaction-local copies, and checked unchanged afterwards.
    pub sequences: sequences::SequenceReport,
}

fn state_of(m: Option<&Migration>, a: Option<&Applied>) -> State {
    match (m, a) {
        (_, Some(a)) if !a.success => State::Failed,
        (Some(m), Some(a)) if m.checksum != a.checksum => State::Changed,
        (Some(_), Some(_)) => State::Applied,
        (None, Some(_)) => State::Missing,
        (_, None) => State::Pending,
    }
}

/// The last successfully applied version under `ledger` on an open connection (none without
/// a history). Reads only.
pub(crate) async fn current_version(
    conn: &mut Conn,
    ledger: Ledger,
) -> Result<Option<i64>, DbError> {
    Ok(history::read(conn, ledger)
        .await?
        .iter()
        .filter(|a| a.success)
        .map(|a| a.version)
        .max())
}

/// The migrations of `files` not in the history, up to `target` when there is one, in order.
fn pending<'m>(
    files: &'m [Migration],
    applied: &[Applied],
    target: Option<i64>,
) -> Vec<&'m Migration> {
    files
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .filter(|m| target.is_none_or(|t| m.version <= t))
        .collect()
}

/// Where every version stands. Reads only; creates nothing.
pub async fn status(settings: &Settings) -> Result<Status, DbError> {
    let files = source::load(&settings.dir)?;
    let mut conn = Conn::open(&settings.url).await?;
    let applied = history::read(&mut conn, settings.ledger).await;
    let backend = conn.backend();
    conn.close().await;
    let applied = applied?;
    Ok(build_status(backend, &files, &applied))
}

fn build_status(backend: Backend, files: &[Migration], applied: &[Applied]) -> Status {
    let mut versions: Vec<i64> = files
        .iter()
        .map(|m| m.version)
        .chain(applied.iter().map(|a| a.version))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let versions = versions
        .into_iter()
        .map(|v| {
            let m = files.iter().find(|m| m.version == v);
            let a = applied.iter().find(|a| a.version == v);
            VersionStatus {
                version: v,
                description: m
                    .map(|m| m.description.clone())
                    .or_else(|| a.map(|a| a.description.clone()))
                    .unwrap_or_default(),
                state: state_of(m, a),
                installed_on: a.map(|a| a.installed_on.clone()),
                execution_ms: a.map(|a| a.execution_time as f64 / 1e6),
                reversible: m.is_some_and(|m| m.down.is_some())
                    || a.is_some_and(|a| a.down_sql.is_some()),
            }
        })
        .collect();
    Status {
        backend,
        current: applied
            .iter()
            .filter(|a| a.success)
            .map(|a| a.version)
            .max(),
        versions,
    }
}

/// Refuses to go on when history and files disagree: changed checksum, missing file, failed.
fn validate(settings: &Settings, files: &[Migration], applied: &[Applied]) -> Result<(), DbError> {
    for a in applied {
        let m = files.iter().find(|m| m.version == a.version);
        match state_of(m, Some(a)) {
            State::Failed => return Err(DbError::Dirty { version: a.version }),
            State::Missing => {
                return Err(DbError::MissingFile {
                    version: a.version,
                    dir: settings.dir.clone(),
                });
            }
            State::Changed => {
                return Err(DbError::ChecksumMismatch {
                    version: a.version,
                    path: m.map(|m| m.path.clone()).unwrap_or_default(),
                    applied: hex::encode(&a.checksum),
                    current: m.map(|m| hex::encode(&m.checksum)).unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Lints the pending migrations (PostgreSQL only; SQLite's DDL locks the whole file anyway).
pub fn lint_pending(backend: Backend, pending: &[Migration]) -> Vec<LintFinding> {
    match backend {
        Backend::Postgres => lint::lint(pending),
        Backend::Sqlite => Vec::new(),
    }
}

/// Lints every migration file (without a database), with the rules of the URL's backend.
pub fn lint_files(settings: &Settings) -> Result<Vec<LintFinding>, DbError> {
    let files = source::load(&settings.dir)?;
    let backend = super::backend_of(&settings.url).unwrap_or(Backend::Postgres);
    Ok(lint_pending(backend, &files))
}

/// Applies pending migrations up to `target` (all when `None`), or reverts down to `target`
/// when it is below the current version. `progress` is told each version as it starts.
pub async fn run(
    settings: &Settings,
    target: Option<i64>,
    progress: &(dyn Fn(usize, usize, &Migration) + Sync),
) -> Result<RunReport, DbError> {
    let files = source::load(&settings.dir)?;
    if let Some(t) = target
        && t != 0
        && !files.iter().any(|m| m.version == t)
    {
        return Err(DbError::UnknownTarget {
            version: t,
            dir: settings.dir.clone(),
        });
    }
    let mut conn = Conn::open(&settings.url).await?;
    let result = run_locked(&mut conn, settings, &files, target, progress).await;
    conn.close().await;
    result
}

async fn run_locked(
    conn: &mut Conn,
    settings: &Settings,
    files: &[Migration],
    target: Option<i64>,
    progress: &(dyn Fn(usize, usize, &Migration) + Sync),
) -> Result<RunReport, DbError> {
    let pre = prechecks(conn).await?;
    let key = lock::acquire(conn, settings.lock_wait, settings.ledger).await?;
    let result = async {
        history::ensure(conn, settings.ledger).await?;
        let applied = history::read(conn, settings.ledger).await?;
        validate(settings, files, &applied)?;
        let current = applied.iter().map(|a| a.version).max();
        let mut reverted = Vec::new();
        if let (Some(t), Some(c)) = (target, current)
            && t < c
        {
            reverted = revert_above(conn, settings, files, &applied, t).await?;
        }
        let pending = pending(files, &applied, target);
        let owned: Vec<Migration> = pending.iter().map(|m| (*m).clone()).collect();
        let lint = lint_pending(conn.backend(), &owned);
        let blocking = lint.iter().filter(|f| f.blocks()).count();
        if settings.strict && blocking > 0 {
            return Err(DbError::LintBlocked { count: blocking });
        }
        for f in lint.iter().filter(|f| f.blocks()) {
            tracing::warn!(version = f.version, rule = %f.rule, line = f.line, "lint: {}", f.message);
        }
        let done = apply_all(conn, settings, &pending, progress).await?;
        let (post, fingerprint) = postchecks(conn).await?;
        let current = current_version(conn, settings.ledger).await?;
        if !done.is_empty() || !reverted.is_empty() {
            // The schema this run left behind, for drift checks and rollbacks later.
            let detail = format!("applied {}, reverted {}; schema fingerprint {fingerprint}", done.len(), reverted.len());
            conn.exec(&format!(
                "INSERT INTO {} (version, action, detail, actor) VALUES ({}, 'run', {}, {})",
                settings.ledger.log,
                current.unwrap_or(0),
                lit(&detail),
                lit(&settings.actor)
            ))
            .await
            .map_err(|e| DbError::query("recording the run", e))?;
        }
        Ok(RunReport { applied: done, reverted, prechecks: pre, postchecks: post, fingerprint, lint, current })
    }
    .await;
    lock::release(conn, key).await;
    result
}

/// The SQL that records a migration as applied, in the same transaction as the migration.
fn record_sql(
    backend: Backend,
    settings: &Settings,
    m: &Migration,
    success: bool,
    elapsed: &str,
) -> String {
    let down = m
        .down
        .as_ref()
        .map_or("NULL".to_string(), |(_, sql)| lit(sql));
    let waivers: Vec<String> = m
        .waivers
        .iter()
        .map(|w| format!("{}: {}", w.rule, w.reason))
        .collect();
    // PostgreSQL: one statement (a data-modifying CTE); SQLite has no such CTEs: two.
    let joiner = match backend {
        Backend::Postgres => "WITH sqlx AS (",
        Backend::Sqlite => "",
    };
    let between = match backend {
        Backend::Postgres => ")\n",
        Backend::Sqlite => ";\n",
    };
    format!(
        "{joiner}INSERT INTO {applied} (version, description, success, checksum, execution_time) VALUES ({v}, {d}, {s}, {c}, {elapsed}){between}INSERT INTO {extra} (version, down_sql, no_transaction, waivers, applied_by) VALUES ({v}, {down}, {nt}, {w}, {a});",
        applied = settings.ledger.applied,
        extra = settings.ledger.extra,
        v = m.version,
        d = lit(&m.description),
        s = if success { "TRUE" } else { "FALSE" },
        c = bytes_lit(backend, &m.checksum),
        nt = if m.no_tx { "TRUE" } else { "FALSE" },
        w = lit(&waivers.join("\n")),
        a = lit(&settings.actor),
    )
}

/// Nanoseconds since the transaction's start mark (set in [`pg_transaction`]), for
/// `execution_time`.
const PG_ELAPSED_NS: &str = "(extract(epoch FROM clock_timestamp() - current_setting('deploy_agent.started')::timestamptz) * 1000000000)::bigint";

/// Migrations per pipelined message, and the most SQL one message carries.
const BATCH: usize = 64;
const BATCH_BYTES: usize = 1 << 20;

/// The message that applies one migration in its own transaction, history rows included;
/// and the part before the migration's SQL (for error positions).
///
/// `durable = false` commits with `synchronous_commit = off`, for every migration of a
/// pipelined batch but the last. That is crash-safe: PostgreSQL can only lose a suffix of
/// asynchronously committed transactions, never corrupt or reorder them, and each
/// migration's history row commits atomically with it, so after a crash the history still
/// says exactly which migrations are applied. The batch's last commit is synchronous and
/// flushes the WAL for all of them: when a run returns, everything it applied is durable.
fn pg_transaction(settings: &Settings, m: &Migration, durable: bool) -> (String, String) {
    let prefix = format!(
        "BEGIN;\nSELECT set_config('lock_timeout', '{}ms', true), set_config('deploy_agent.started', clock_timestamp()::text, true){};\n",
        settings.lock_timeout.as_millis(),
        if durable {
            ""
        } else {
            ", set_config('synchronous_commit', 'off', true)"
        }
    );
    let message = format!(
        "{prefix}{}\n;\n{}\nCOMMIT;\n",
        m.sql,
        record_sql(Backend::Postgres, settings, m, true, PG_ELAPSED_NS)
    );
    (prefix, message)
}

/// Applies pending migrations in order. On PostgreSQL, consecutive transactional migrations
/// are pipelined: up to [`BATCH`] of them go in one message, each still its own transaction
/// with its own commit, so a run costs one round trip and one WAL flush per batch rather than
/// per migration (see [`pg_transaction`] on why that is crash-safe).
/// PostgreSQL stops a message at the first failing statement: the migrations before it are
/// committed, the failing one is rolled back, and it is then run alone, which reports its
/// error exactly (file and line) and retries lock timeouts.
async fn apply_all(
    conn: &mut Conn,
    settings: &Settings,
    pending: &[&Migration],
    progress: &(dyn Fn(usize, usize, &Migration) + Sync),
) -> Result<Vec<(i64, f64)>, DbError> {
    let mut done = Vec::with_capacity(pending.len());
    let mut i = 0;
    while i < pending.len() {
        progress(i, pending.len(), pending[i]);
        let pipelined = conn.backend() == Backend::Postgres && !pending[i].no_tx;
        if !pipelined {
            let started = Instant::now();
            apply_one(conn, settings, pending[i]).await?;
            done.push((pending[i].version, started.elapsed().as_secs_f64() * 1e3));
            i += 1;
            continue;
        }
        let mut message = String::new();
        let mut end = i;
        let mut bytes = 0;
        while end < pending.len() && !pending[end].no_tx && end - i < BATCH && bytes < BATCH_BYTES {
            bytes += pending[end].sql.len();
            end += 1;
        }
        for (k, m) in pending[i..end].iter().enumerate() {
            message.push_str(&pg_transaction(settings, m, i + k + 1 == end).1);
        }
        let started = Instant::now();
        match conn.exec(&message).await {
            Ok(_) => {
                let each = started.elapsed().as_secs_f64() * 1e3 / (end - i) as f64;
                for m in &pending[i..end] {
                    tracing::info!(version = m.version, description = %m.description, "migration applied");
                    done.push((m.version, each));
                }
                i = end;
            }
            Err(e) => {
                let _ = conn.exec("ROLLBACK").await;
                let Ok(applied) = history::read(conn, settings.ledger).await else {
                    // The connection is gone: each migration was its own transaction, so the
                    // history (when reachable again) lists exactly those that committed.
                    return Err(DbError::Migration {
                        version: pending[i].version,
                        path: pending[i].path.clone(),
                        line: 1,
                        message: format!("the connection was lost while applying migrations {} to {}: {}", pending[i].version, pending[end - 1].version, db_message(&e)),
                        hint: Some("every migration runs in its own transaction: `deploy-agent migrate status` shows which committed; the rest left nothing behind. Run again.".into()),
                    });
                };
                let committed = pending[i..end]
                    .iter()
                    .take_while(|m| applied.iter().any(|a| a.version == m.version))
                    .count();
                for m in &pending[i..i + committed] {
                    done.push((m.version, 0.0));
                }
                i += committed;
                // Run the one that failed alone: its exact error, or lock-timeout retries.
                let started = Instant::now();
                apply_one(conn, settings, pending[i]).await?;
                done.push((pending[i].version, started.elapsed().as_secs_f64() * 1e3));
                i += 1;
            }
        }
    }
    Ok(done)
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

fn pg_position(e: &sqlx::Error) -> Option<usize> {
    let d = e.as_database_error()?;
    let pg = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    match pg.position()? {
        sqlx::postgres::PgErrorPosition::Original(p) => Some(p),
        sqlx::postgres::PgErrorPosition::Internal { .. } => None,
    }
}

/// The line of `sql` at character `position` (1-based) of a message that starts with `prefix`.
fn line_at(prefix: &str, sql: &str, position: Option<usize>) -> usize {
    let Some(p) = position else { return 1 };
    let offset = p.saturating_sub(1).saturating_sub(prefix.chars().count());
    let byte = sql.char_indices().nth(offset).map_or(sql.len(), |(b, _)| b);
    sql[..byte].matches('\n').count() + 1
}

fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => match d.code() {
            Some(code) => format!("{} (SQLSTATE {code})", d.message()),
            None => d.message().to_string(),
        },
        None => e.to_string(),
    }
}

async fn apply_one(conn: &mut Conn, settings: &Settings, m: &Migration) -> Result<(), DbError> {
    if m.no_tx {
        return apply_outside_transaction(conn, settings, m).await;
    }
    let backend = conn.backend();
    let mut attempt = 0;
    loop {
        let result = match backend {
            Backend::Postgres => {
                let (prefix, message) = pg_transaction(settings, m, true);
                conn.exec(&message).await.map(|_| ()).map_err(|e| {
                    let line = line_at(&prefix, &m.sql, pg_position(&e));
                    (e, line)
                })
            }
            Backend::Sqlite => apply_sqlite(conn, settings, m).await,
        };
        match result {
            Ok(()) => {
                tracing::info!(version = m.version, description = %m.description, "migration applied");
                return Ok(());
            }
            Err((e, line)) => {
                let _ = conn.exec("ROLLBACK").await;
                let line = if backend == Backend::Postgres
                    && pg_position(&e).is_none()
                    && !is_lock_timeout(&e)
                {
                    failing_line(conn, settings, m).await.unwrap_or(line)
                } else {
                    line
                };
                if is_lock_timeout(&e) && attempt < settings.lock_retries {
                    attempt += 1;
                    let wait = Duration::from_millis(200 * (1 << attempt.min(6)));
                    tracing::warn!(
                        version = m.version,
                        attempt,
                        retries = settings.lock_retries,
                        wait_ms = wait.as_millis() as u64,
                        "migration could not get its lock within lock_timeout; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let hint = if is_lock_timeout(&e) {
                    Some(format!(
                        "another session held a conflicting lock for longer than lock_timeout ({} ms), {} times; find it with `deploy-agent migrate status` pre-checks, or raise lock_timeout_ms",
                        settings.lock_timeout.as_millis(),
                        attempt + 1
                    ))
                } else {
                    Some("nothing of this migration was applied (it ran in a transaction that was rolled back)".into())
                };
                return Err(DbError::Migration {
                    version: m.version,
                    path: m.path.clone(),
                    line,
                    message: db_message(&e),
                    hint,
                });
            }
        }
    }
}

/// PostgreSQL reports no position for errors raised while executing (a duplicate key, a
/// failed cast): replay the statements one at a time in a transaction that is always rolled
/// back, and return the line of the first that fails.
async fn failing_line(conn: &mut Conn, settings: &Settings, m: &Migration) -> Option<usize> {
    conn.exec(&format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'",
        settings.lock_timeout.as_millis()
    ))
    .await
    .ok()?;
    let mut found = None;
    for stmt in split::split(&m.sql, conn.backend()) {
        if conn.exec(&stmt.sql).await.is_err() {
            found = Some(stmt.line);
            break;
        }
    }
    let _ = conn.exec("ROLLBACK").await;
    found
}

/// SQLite: statement by statement inside one `BEGIN IMMEDIATE` transaction (the failing line
/// is then known exactly), then the history rows, then `COMMIT`.
async fn apply_sqlite(
    conn: &mut Conn,
    settings: &Settings,
    m: &Migration,
) -> Result<(), (sqlx::Error, usize)> {
    conn.exec("BEGIN IMMEDIATE").await.map_err(|e| (e, 1))?;
    let started = Instant::now();
    for stmt in split::split(&m.sql, conn.backend()) {
        conn.exec(&stmt.sql).await.map_err(|e| (e, stmt.line))?;
    }
    let elapsed = started.elapsed().as_nanos().to_string();
    let record = format!(
        "{}\nCOMMIT;",
        record_sql(Backend::Sqlite, settings, m, true, &elapsed)
    );
    conn.exec(&record).await.map_err(|e| (e, 1))?;
    Ok(())
}

/// A migration that cannot run in a transaction: recorded as failed first, each statement on
/// its own, then marked successful. A crash or error part-way leaves it marked failed.
async fn apply_outside_transaction(
    conn: &mut Conn,
    settings: &Settings,
    m: &Migration,
) -> Result<(), DbError> {
    let backend = conn.backend();
    let q = |e: sqlx::Error| DbError::query(format!("migration {}", m.version), e);
    conn.exec(&record_sql(backend, settings, m, false, "0"))
        .await
        .map_err(q)?;
    if backend == Backend::Postgres {
        conn.exec(&format!(
            "SET lock_timeout = '{}ms'",
            settings.lock_timeout.as_millis()
        ))
        .await
        .map_err(q)?;
    }
    let started = Instant::now();
    for stmt in split::split(&m.sql, conn.backend()) {
        if let Err(e) = conn.exec(&stmt.sql).await {
            let _ = conn.exec("RESET lock_timeout").await;
            let (post, _) = postchecks(conn).await.unwrap_or_default();
            let invalid = post
                .iter()
                .find(|c| c.name == "invalid indexes" && c.status == "error")
                .map(|c| c.detail.clone());
            let mut hint = "this migration runs outside a transaction: the statements before this one were applied, and it is marked failed until someone resolves it".to_string();
            if let Some(invalid) = invalid {
                hint.push_str(&format!("; INVALID index(es) left behind: {invalid}"));
            }
            return Err(DbError::Migration {
                version: m.version,
                path: m.path.clone(),
                line: stmt.line,
                message: db_message(&e),
                hint: Some(hint),
            });
        }
    }
    if backend == Backend::Postgres {
        let _ = conn.exec("RESET lock_timeout").await;
    }
    let ns = started.elapsed().as_nanos();
    conn.exec(&format!(
        "UPDATE {} SET success = TRUE, execution_time = {ns} WHERE version = {}",
        settings.ledger.applied, m.version
    ))
    .await
    .map_err(q)?;
    Ok(())
}

/// The down SQL of an applied migration: stored in the history, or in its file.
fn down_sql(files: &[Migration], a: &Applied) -> Result<String, DbError> {
    a.down_sql
        .clone()
        .or_else(|| files.iter().find(|m| m.version == a.version).and_then(|m| m.down.as_ref().map(|(_, sql)| sql.clone())))
        .ok_or_else(|| DbError::Irreversible {
            version: a.version,
            reason: "it has no down SQL (neither a .down.sql file nor one stored in the history); restore a backup instead".into(),
        })
}

/// Reverts every applied version above `to`, newest first, after checking that all of them
/// can be reverted (so a revert never stops half-way for want of down SQL).
async fn revert_above(
    conn: &mut Conn,
    settings: &Settings,
    files: &[Migration],
    applied: &[Applied],
    to: i64,
) -> Result<Vec<i64>, DbError> {
    let targets: Vec<&Applied> = applied.iter().rev().filter(|a| a.version > to).collect();
    for a in &targets {
        down_sql(files, a)?;
    }
    let mut done = Vec::with_capacity(targets.len());
    for a in targets {
        revert_one(conn, settings, files, a).await?;
        done.push(a.version);
    }
    Ok(done)
}

async fn revert_one(
    conn: &mut Conn,
    settings: &Settings,
    files: &[Migration],
    a: &Applied,
) -> Result<(), DbError> {
    let file = files.iter().find(|m| m.version == a.version);
    let down = down_sql(files, a)?;
    let path = file
        .and_then(|m| m.down.as_ref().map(|(p, _)| p.clone()))
        .unwrap_or_else(|| {
            PathBuf::from(format!("(down SQL of {} stored in the history)", a.version))
        });
    let backend = conn.backend();
    let lock = match backend {
        Backend::Postgres => format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n",
            settings.lock_timeout.as_millis()
        ),
        Backend::Sqlite => "BEGIN IMMEDIATE;\n".to_string(),
    };
    let message = format!(
        "{lock}{down}\n;\nDELETE FROM {applied} WHERE version = {v};\nDELETE FROM {extra} WHERE version = {v};\nINSERT INTO {log} (version, action, detail, actor) VALUES ({v}, 'revert', {d}, {actor});\nCOMMIT;",
        applied = settings.ledger.applied,
        extra = settings.ledger.extra,
        log = settings.ledger.log,
        v = a.version,
        d = lit(&format!("reverted {}", a.description)),
        actor = lit(&settings.actor),
    );
    if let Err(e) = conn.exec(&message).await {
        let _ = conn.exec("ROLLBACK").await;
        return Err(DbError::Migration {
            version: a.version,
            path,
            line: line_at(&lock, &down, pg_position(&e)),
            message: db_message(&e),
            hint: Some(
                "the revert ran in a transaction and was rolled back: the database is as before"
                    .into(),
            ),
        });
    }
    tracing::info!(version = a.version, "migration reverted");
    Ok(())
}

/// Reverts down to `target` (exclusive), or the last migration when `None`.
pub async fn revert(settings: &Settings, target: Option<i64>) -> Result<Vec<i64>, DbError> {
    let files = source::load(&settings.dir)?;
    let mut conn = Conn::open(&settings.url).await?;
    let result = async {
        let key = lock::acquire(&mut conn, settings.lock_wait, settings.ledger).await?;
        let inner = async {
            let applied = history::read(&mut conn, settings.ledger).await?;
            let current = applied.iter().map(|a| a.version).max();
            let to = match (target, current) {
                (_, None) => return Ok(Vec::new()),
                (Some(t), _) => t,
                (None, Some(_)) => applied.iter().rev().nth(1).map_or(0, |a| a.version),
            };
            revert_above(&mut conn, settings, &files, &applied, to).await
        }
        .await;
        lock::release(&mut conn, key).await;
        inner
    }
    .await;
    conn.close().await;
    result
}

/// Accepts a changed (or failed) migration as applied, on purpose: the history takes the
/// file's current checksum, and the migration log records who, why, and both checksums.
pub async fn accept(settings: &Settings, version: i64, reason: &str) -> Result<(), DbError> {
    let files = source::load(&settings.dir)?;
    let m = files
        .iter()
        .find(|m| m.version == version)
        .ok_or_else(|| DbError::UnknownTarget {
            version,
            dir: settings.dir.clone(),
        })?;
    let mut conn = Conn::open(&settings.url).await?;
    let result = async {
        let applied = history::read(&mut conn, settings.ledger).await?;
        let a = applied.iter().find(|a| a.version == version).ok_or_else(|| DbError::Query {
            context: format!("accepting migration {version}"),
            message: "it is not applied; nothing to accept (run it instead)".into(),
        })?;
        let backend = conn.backend();
        let detail = format!("accepted checksum {} (was {}): {reason}", hex::encode(&m.checksum), hex::encode(&a.checksum));
        let begin = if backend == Backend::Sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" };
        let sql = format!(
            "{begin};\nUPDATE {applied} SET checksum = {c}, success = TRUE WHERE version = {version};\nINSERT INTO {log} (version, action, detail, actor) VALUES ({version}, 'accept', {d}, {actor});\nCOMMIT;",
            applied = settings.ledger.applied,
            log = settings.ledger.log,
            c = bytes_lit(backend, &m.checksum),
            d = lit(&detail),
            actor = lit(&settings.actor),
        );
        conn.exec(&sql).await.map_err(|e| DbError::query(format!("accepting migration {version}"), e))?;
        tracing::warn!(version, %reason, "migration change accepted");
        Ok(())
    }
    .await;
    conn.close().await;
    result
}

/// Executes the pending migrations inside one transaction, reports what each changed, and
/// rolls everything back. Migrations that cannot run in a transaction are shown, not run,
/// and nothing after them is executed (it may depend on them).
pub async fn dry_run(settings: &Settings, target: Option<i64>) -> Result<DryRun, DbError> {
    let files = source::load(&settings.dir)?;
    let mut conn = Conn::open(&settings.url).await?;
    let result = dry_run_on(&mut conn, settings, &files, target).await;
    conn.close().await;
    result
}

async fn dry_run_on(
    conn: &mut Conn,
    settings: &Settings,
    files: &[Migration],
    target: Option<i64>,
) -> Result<DryRun, DbError> {
    let applied = history::read(conn, settings.ledger).await?;
    validate(settings, files, &applied)?;
    let pending: Vec<Migration> = pending(files, &applied, target)
        .into_iter()
        .cloned()
        .collect();
    let lint = lint_pending(conn.backend(), &pending);
    let before = Snapshot::take(conn).await?;
    let begin = if conn.backend() == Backend::Sqlite {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    };
    conn.exec(begin)
        .await
        .map_err(|e| DbError::query("starting the dry run", e))?;
    // Sequences are not transactional: the dry run draws from copies (PostgreSQL). SQLite's
    // AUTOINCREMENT counters live in a table and roll back with the transaction.
    let (sequences_before, sequence_report) = match conn.backend() {
        Backend::Postgres => match sequences::isolate(conn).await {
            Ok(isolated) => isolated,
            Err(e) => {
                let _ = conn.exec("ROLLBACK").await;
                return Err(e);
            }
        },
        Backend::Sqlite => (Vec::new(), sequences::SequenceReport::default()),
    };
    let mut steps = Vec::new();
    let mut stopped: Option<String> = None;
    let mut snapshot = before.clone();
    for m in &pending {
        let mut step = DryRunStep {
            version: m.version,
            description: m.description.clone(),
            executed: false,
            skipped: None,
            changes: Vec::new(),
            rows_affected: 0,
            duration_ms: 0.0,
            statements: Vec::new(),
            error: None,
        };
        if let Some(why) = &stopped {
            step.skipped = Some(why.clone());
            steps.push(step);
            continue;
        }
        if m.no_tx {
            step.statements = split::split(&m.sql, conn.backend())
                .into_iter()
                .map(|s| s.sql)
                .collect();
            step.skipped = Some("runs outside a transaction, so a dry run cannot execute it; these statements would run one by one".into());
            stopped = Some(format!(
                "not executed: it comes after migration {}, which cannot run in a dry run",
                m.version
            ));
            steps.push(step);
            continue;
        }
        let started = Instant::now();
        let result = match conn.backend() {
            Backend::Postgres => {
                conn.exec(&format!("SAVEPOINT dry_run;\n{}\n;", m.sql))
                    .await
            }
            Backend::Sqlite => {
                let mut rows = 0;
                let mut out = Ok(0);
                for stmt in split::split(&m.sql, conn.backend()) {
                    match conn.exec(&stmt.sql).await {
                        Ok(n) => rows += n,
                        Err(e) => {
                            out = Err(e);
                            break;
                        }
                    }
                }
                out.map(|_| rows)
            }
        };
        step.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(rows) => {
                step.executed = true;
                step.rows_affected = rows;
                let after = Snapshot::take(conn).await?;
                step.changes = snapshot.diff(&after);
                snapshot = after;
            }
            Err(e) => {
                let line = line_at("SAVEPOINT dry_run;\n", &m.sql, pg_position(&e));
                step.error = Some(format!("{}:{line}: {}", m.path.display(), db_message(&e)));
                stopped = Some(format!("not executed: migration {} failed", m.version));
            }
        }
        steps.push(step);
    }
    conn.exec("ROLLBACK")
        .await
        .map_err(|e| DbError::query("rolling back the dry run", e))?;
    let after = Snapshot::take(conn).await?;
    let sequences = match conn.backend() {
        Backend::Postgres => sequences::check(conn, &sequences_before, sequence_report).await?,
        Backend::Sqlite => sequences::SequenceReport {
            unchanged: true,
            ..sequence_report
        },
    };
    Ok(DryRun {
        steps,
        lint,
        rolled_back: after == before,
        sequences,
    })
}
