//! Why a stage failed, typed: the variant is what the run, the daemon and the CLI decide on
//! (retry, suspend, roll back); the text is what the journal, the events and people see.

use super::Stage;
use super::checks::CheckResult;
use crate::db::DbError;
use crate::runtime::CallError;
use crate::store::StoreError;

/// Why a stage, or a step inside one, failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A plugin call failed; its class (timeout, policy, retryable with its wait, rejected,
    /// unauthorized...) is kept.
    #[error(transparent)]
    Call(Box<CallError>),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The application's database: a backup, a migration, a restore.
    #[error(transparent)]
    Database(Box<DbError>),
    /// An off-site copy of a backup.
    #[error(transparent)]
    Offsite(#[from] super::offsite::OffsiteError),
    /// The snapshot taken before a restore failed, so nothing was restored.
    #[error("the safety snapshot of `{environment}` failed, so nothing was restored: {cause}")]
    SafetySnapshot {
        /// The environment.
        environment: String,
        /// Why.
        cause: Box<DbError>,
    },
    /// Another agent took the environment's lock over: this one stalled past its lease.
    #[error("the environment lock was taken over (this agent stalled past its lease)")]
    LockLost,
    /// Stopped at a safe point for the daemon's shutdown; the next start resumes it.
    #[error("suspended at a safe point for the agent's shutdown")]
    Suspended,
    /// Checks or an analysis failed; what they measured.
    #[error("{summary}")]
    CheckFailed {
        /// What failed, in words.
        summary: String,
        /// The results that failed.
        evidence: Vec<CheckResult>,
    },
    /// The target says the release failed, was cancelled, or did not get there in time.
    #[error("{0}")]
    Release(String),
    /// A rule of the agent refused to go on: a blocking finding, a rejection, an expired
    /// approval, a link out of the target's directory, a missing setting.
    #[error("{0}")]
    Refused(String),
    /// The environment's plugins could not be loaded (shared: one load serves several steps).
    #[error(transparent)]
    Plugins(std::sync::Arc<super::plugins::PluginsError>),
    /// The environment's configuration cannot be used as it is (a setting, a secret, a
    /// plugin that does not load).
    #[error("{0}")]
    Config(String),
    /// The host could not do its own part (a file-system walk, a blocking task).
    #[error("{0}")]
    Host(String),
    /// A stage failed: which, and why. Shown as `stage: why`, as the journal has it.
    #[error("{}: {cause}", stage.name())]
    In {
        /// The stage.
        stage: Stage,
        /// Why.
        cause: Box<StageError>,
    },
    /// The run failed and the automatic rollback failed too.
    #[error("{error}; automatic rollback failed: {rollback}")]
    RollbackFailed {
        /// Why the run failed.
        error: Box<StageError>,
        /// Why the rollback did.
        rollback: Box<StageError>,
    },
    /// The watch failed and the rollback policy `notify` keeps the release live.
    #[error("{0}; the release stays live (rollback policy `notify`)")]
    KeptLive(Box<StageError>),
    /// The watch failed, but the release's migrations contract the schema: switching only the
    /// app back would run the previous release on a schema it was not built for, so the run
    /// holds and notifies instead of rolling back.
    #[error(
        "{error}; holding instead of rolling back: the release's migrations contract the schema ({changes}), so the previous release cannot run on it: fix forward, or `deploy-agent rollback --full` (app and database together)"
    )]
    Held {
        /// The failure.
        error: Box<StageError>,
        /// The contract changes, for people.
        changes: String,
    },
}

impl StageError {
    /// The innermost cause, through the stage it failed in.
    pub fn cause(&self) -> &StageError {
        match self {
            StageError::In { cause, .. } => cause.cause(),
            other => other,
        }
    }

    /// The stage it failed in, when known.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            StageError::In { stage, .. } => Some(*stage),
            StageError::RollbackFailed { error, .. }
            | StageError::KeptLive(error)
            | StageError::Held { error, .. } => error.stage(),
            _ => None,
        }
    }
}

impl From<CallError> for StageError {
    fn from(e: CallError) -> Self {
        StageError::Call(Box::new(e))
    }
}

impl From<DbError> for StageError {
    fn from(e: DbError) -> Self {
        StageError::Database(Box::new(e))
    }
}

impl From<super::plugins::PluginsError> for StageError {
    fn from(e: super::plugins::PluginsError) -> Self {
        StageError::Plugins(std::sync::Arc::new(e))
    }
}

impl From<tokio::task::JoinError> for StageError {
    fn from(e: tokio::task::JoinError) -> Self {
        StageError::Host(format!("a background task failed: {e}"))
    }
}
