//! The deploy pipeline: one release through one environment, every step journaled.
//!
//! ```text
//! lock → validate → back up → migrate → deploy (staged) → verify → promote → watch → notify → unlock
//! ```
//!
//! Each stage writes a `started` row to the state store before it acts and a `done` (or
//! `failed`) row after. A run that dies (kill -9, power cut) stays `running` in the store and
//! its lock lease stops being renewed. The next `deploy` of that environment takes the lock
//! (at once if the dead agent was on this host, else when the lease expires) and finds the
//! run: the same release is **resumed** from where it stopped, reusing what was recorded (the
//! backup, the staged release), and every stage is idempotent (migrations apply only what is
//! pending; the target reuses a release it already staged; promote is a no-op when live).
//! A run for another release is marked **superseded** and the new run rolls forward from the
//! state the dead run left, which the store records (schema version, release ids).

mod agent;
pub mod analysis;
pub(crate) mod artifact;
pub mod checks;
mod error;
pub mod events;
mod failpoint;
pub mod host_work;
pub mod incident;
mod journal;
pub mod maintenance;
pub mod notify;
pub(crate) mod offsite;
pub mod plan;
pub mod progress;
pub mod recover;
pub mod restore;
pub mod rollback;
pub mod scheduler;
pub mod state_backup;
pub mod swap;
pub mod validate;

mod plugins;
mod run;
pub mod sequence;
mod stages;
pub mod status;
mod target;

use crate::store::RunStatus;
pub use agent::{Agent, DecideError, EnvironmentStatus};
pub use error::StageError;
pub(crate) use plugins::{Plugins, load_plugins};
pub use plugins::{PluginsError, load_plugin, preload};
pub use run::deploy;
pub(crate) use target::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use artifact::{digest, guest_path};

use crate::config::{CheckStage, Config, Environment};
use crate::db::{backup, migrate};
use crate::runtime::{
    Artifact, CallContext, CallError, EventKind, Kind, Plugin, PluginError, ReleaseState, Runtime,
};
use crate::store::{
    AuditEntry, Deployment, DeploymentField, Lease, Owner, ReleaseRecord, Store, StoreError, now_ms,
};
use checks::{CheckResult, Subst};
use notify::Notifications;
use validate::Finding;

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Take the environment's lock.
    Lock,
    /// Built-in and plugin validators.
    Validate,
    /// Back up the database.
    Backup,
    /// Apply pending migrations.
    Migrate,
    /// Stage the release on the target.
    Deploy,
    /// Checks against the staged release.
    Verify,
    /// Wait for a person's approval.
    Approve,
    /// Shift traffic to the staged release in the canary's steps, with analysis at each.
    Shift,
    /// Make it live.
    Promote,
    /// Deploy, verify and promote host by host, in batches (an environment that spans hosts).
    Rollout,
    /// Checks against the live release.
    Watch,
    /// Retire the release that was live before (blue-green, canary), once the watch passed
    /// and the scale-down delay is over.
    Retire,
    /// Make the previous release live again (a failed watch, policy `auto`).
    Rollback,
    /// Deliver the notifications.
    Notify,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 14] = [
        Stage::Lock,
        Stage::Validate,
        Stage::Backup,
        Stage::Migrate,
        Stage::Deploy,
        Stage::Verify,
        Stage::Approve,
        Stage::Shift,
        Stage::Promote,
        Stage::Rollout,
        Stage::Watch,
        Stage::Retire,
        Stage::Rollback,
        Stage::Notify,
    ];

    /// The stage a name names.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Lock => "lock",
            Stage::Validate => "validate",
            Stage::Backup => "backup",
            Stage::Migrate => "migrate",
            Stage::Deploy => "deploy",
            Stage::Verify => "verify",
            Stage::Approve => "approve",
            Stage::Shift => "shift",
            Stage::Promote => "promote",
            Stage::Rollout => "rollout",
            Stage::Watch => "watch",
            Stage::Retire => "retire",
            Stage::Rollback => "rollback",
            Stage::Notify => "notify",
        }
    }
}

/// What to deploy, where, by whom.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The environment.
    pub environment: String,
    /// The version (default: the artifact digest's first 12 characters).
    pub version: Option<String>,
    /// The artifact directory (default: the environment's `artifact.path`).
    pub artifact: Option<PathBuf>,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// The run's id when the caller assigned one (the daemon's queue); default: a new one.
    pub id: Option<String>,
    /// Set to `true` to suspend the run at its next safe point (the daemon's shutdown): a
    /// stage boundary, or while it waits for an approval. The run stays journaled as
    /// `running` with its lock released, and the next start resumes it.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// Running.
    Started,
    /// Done.
    Done,
    /// Not needed.
    Skipped,
    /// Failed: the run stops.
    Failed,
}

/// One stage in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// How it ended.
    pub status: StageStatus,
    /// How long it took, ms (fractional).
    pub duration_ms: f64,
    /// What it did.
    pub detail: String,
}

/// Live progress, for the CLI's view (and the daemon's event stream).
pub trait Reporter: Send + Sync {
    /// A stage changed state.
    fn stage(&self, report: &StageReport);
    /// A remark worth showing (recovery, lock takeover, waiting).
    fn note(&self, text: &str);
    /// A sample of the running stage, every [`progress::TICK`] while it runs: its elapsed
    /// time and what it is doing (a live view redraws its line; a log writes what changed).
    fn progress(&self, _sample: &progress::Progress) {}
}

/// A reporter that shows nothing.
#[derive(Debug)]
pub struct Quiet;

impl Reporter for Quiet {
    fn stage(&self, _: &StageReport) {}
    fn note(&self, _: &str) {}
}

/// What happened to a run found interrupted.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// The interrupted run.
    pub deployment_id: String,
    /// The stage it stopped in.
    pub stopped_in: Option<String>,
    /// What was done with it.
    pub action: RecoveryAction,
    /// In words.
    pub detail: String,
}

/// What was done with an interrupted run, rollback or restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RecoveryAction {
    /// A run finished from where it stopped.
    #[serde(rename = "resumed")]
    Resumed,
    /// A run replaced by a newer run of another release.
    #[serde(rename = "superseded")]
    Superseded,
    /// A run undone: the previous release live again, the database restored.
    #[serde(rename = "rolled back")]
    RolledBack,
    /// An interrupted rollback or restore completed (`deployment_id` is its id).
    #[serde(rename = "finished")]
    Finished,
    /// An interrupted rollback or restore reverted (`recover --rollback`).
    #[serde(rename = "undone")]
    Undone,
}

impl RecoveryAction {
    /// In words, past tense (the journal's, the audit's and the output's).
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryAction::Resumed => "resumed",
            RecoveryAction::Superseded => "superseded",
            RecoveryAction::RolledBack => "rolled back",
            RecoveryAction::Finished => "finished",
            RecoveryAction::Undone => "undone",
        }
    }
}

impl std::fmt::Display for RecoveryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The run as recorded at its end.
    pub deployment: Deployment,
    /// Stage by stage.
    pub stages: Vec<StageReport>,
    /// Validator findings.
    pub findings: Vec<Finding>,
    /// Check results.
    pub checks: Vec<CheckResult>,
    /// Metric analyses, with their measurements.
    pub analyses: Vec<analysis::AnalysisResult>,
    /// Interrupted runs found and dealt with first.
    pub recovered: Vec<Recovery>,
    /// Notifications that could not be delivered (never fatal).
    pub notify_failures: Vec<String>,
    /// Agent time, ms: the whole run minus time spent waiting (polling a target, check retries).
    pub total_ms: f64,
}

impl Outcome {
    /// Whether the release went live.
    pub fn succeeded(&self) -> bool {
        self.deployment.status == RunStatus::Succeeded
    }
}

/// Why a run could not start (a run that starts and fails is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The environment is not set up for deploying.
    #[error("{0}")]
    Setup(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The environment's plugins could not be loaded.
    #[error(transparent)]
    Plugins(#[from] PluginsError),
    /// The artifact cannot be deployed as asked.
    #[error(transparent)]
    Artifact(#[from] artifact::UnusableArtifact),
    /// A stage, a rollback or a restore failed.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// An interrupted run could not be rolled back.
    #[error("rolling back run {run}: {cause}")]
    Recovery {
        /// The interrupted run.
        run: String,
        /// Why.
        cause: StageError,
    },
}

/// Opens the state store a configuration names.
pub async fn open_store(config: &Config) -> Result<Store, StoreError> {
    match &config.state_url {
        None => Store::open_dir(&config.state_dir).await,
        Some(url) => {
            let url = url.resolve().map_err(|reason| StoreError::Open {
                location: "state_url".into(),
                reason,
            })?;
            Store::open(&url).await
        }
    }
}

/// What a run and a plan both start from: the environment, its plugins loaded, and the
/// artifact with its digest.
pub(crate) async fn prepare<'c>(
    agent: &'c Agent,
    request: &Request,
) -> Result<(&'c Environment, Plugins, Option<PathBuf>, Artifact), PipelineError> {
    let env = agent
        .config
        .environment(&request.environment)
        .map_err(PipelineError::Setup)?;
    let plugins = load_plugins(agent, env)?;
    let (artifact_path, artifact) = artifact::artifact_for(env, request, &plugins.target).await?;
    Ok((env, plugins, artifact_path, artifact))
}

/// A new run id: UTC time, then random, so ids sort by start.
pub fn new_id() -> String {
    format!(
        "{}-{}",
        crate::time::compact(crate::time::now_secs()),
        crate::random::hex(3)
    )
}

/// One run through its stages: what it knows, what it has done, where it reports.
struct Run<'a> {
    config: &'a Config,
    /// The daemon's URL when a daemon runs it (what `approve --server` takes).
    server: Option<String>,
    events: Arc<events::Bus>,
    env: &'a Environment,
    store: Store,
    plugins: Plugins,
    reporter: &'a dyn Reporter,
    notifications: Notifications,
    lease: Option<Lease>,
    d: Deployment,
    ctx: CallContext,
    artifact_path: Option<PathBuf>,
    artifact: Artifact,
    stages: Vec<StageReport>,
    findings: Vec<Finding>,
    checks: Vec<CheckResult>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    suspended: bool,
    staged_url: Option<String>,
    waited: Duration,
    analyses: Vec<analysis::AnalysisResult>,
    watch_failed: Option<String>,
}
