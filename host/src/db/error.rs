//! Errors of the database core, worded for the operator: which file, which line, what to do.

use std::path::PathBuf;

/// What went wrong in a migration or backup operation.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The database, with any password removed.
        target: String,
        /// Why.
        reason: String,
    },
    /// A migration file or directory is unusable.
    #[error("{path}: {message}")]
    Source {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An applied migration's file changed since it was applied.
    #[error(
        "migration {version} ({path}) changed after it was applied: applied checksum {applied}, file now {current}\n  hint: restore the file, or accept the change on purpose with `deploy-agent migrate accept {version} --env ENV --reason \"...\"` (recorded in the migration log)"
    )]
    ChecksumMismatch {
        /// The version.
        version: i64,
        /// The file.
        path: PathBuf,
        /// The checksum in the history table (hex).
        applied: String,
        /// The file's checksum now (hex).
        current: String,
    },
    /// The history records a version whose file is gone.
    #[error(
        "migration {version} is applied in the database but its file is missing from {dir}\n  hint: restore the file; a deployment must not run an older migration set than the database has"
    )]
    MissingFile {
        /// The version.
        version: i64,
        /// The migrations directory.
        dir: PathBuf,
    },
    /// A migration failed part-way outside a transaction earlier; someone must look.
    #[error(
        "migration {version} is marked failed (it ran outside a transaction and stopped part-way)\n  hint: inspect the schema, finish or undo its statements by hand, then `deploy-agent migrate accept {version} --env ENV --reason \"...\"` to mark it applied, or delete its row to retry"
    )]
    Dirty {
        /// The version.
        version: i64,
    },
    /// Another session holds the migration lock past the deadline.
    #[error("timed out after {waited_ms} ms waiting for the migration lock, held by {holder}")]
    LockTimeout {
        /// How long it waited.
        waited_ms: u64,
        /// Who holds it (pid, application, state, query, since when).
        holder: String,
    },
    /// A migration's SQL failed; the database is as it was before this migration.
    #[error("migration {version} failed at {path}:{line}: {message}{}", hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Migration {
        /// The version.
        version: i64,
        /// The file.
        path: PathBuf,
        /// The line of the failing statement, 1-based.
        line: usize,
        /// The server's message.
        message: String,
        /// What to do.
        hint: Option<String>,
    },
    /// The lint blocked the migrations (strict environment).
    #[error(
        "{count} lint finding(s) block these migrations in a strict environment; fix them or waive each with `-- deploy-agent: allow <rule> <reason>`"
    )]
    LintBlocked {
        /// How many.
        count: usize,
    },
    /// A requested target version is not known.
    #[error("no migration {version} in {dir}")]
    UnknownTarget {
        /// The version asked for.
        version: i64,
        /// The migrations directory.
        dir: PathBuf,
    },
    /// A migration cannot be reverted.
    #[error("migration {version} cannot be reverted: {reason}")]
    Irreversible {
        /// The version.
        version: i64,
        /// Why.
        reason: String,
    },
    /// Any other database error.
    #[error("{context}: {message}")]
    Query {
        /// What was being done.
        context: String,
        /// The server's message.
        message: String,
    },
}

impl DbError {
    /// A query error with context.
    pub fn query(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        DbError::Query {
            context: context.into(),
            message: e.to_string(),
        }
    }
}
