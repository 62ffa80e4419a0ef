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

pub mod analysis;
pub(crate) mod artifact;
pub mod checks;
pub mod events;
mod failpoint;
pub mod notify;
pub(crate) mod offsite;
pub mod plan;
pub mod recover;
pub mod restore;
pub mod rollback;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use artifact::{digest, guest_path};

use crate::config::{CheckStage, Config, Environment, Gate, RollbackPolicy, Strategy};
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
    /// Make it live.
    Promote,
    /// Checks against the live release.
    Watch,
    /// Make the previous release live again (a failed watch, policy `auto`).
    Rollback,
    /// Deliver the notifications.
    Notify,
}

impl Stage {
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
            Stage::Promote => "promote",
            Stage::Watch => "watch",
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
    /// `resumed`, `superseded` or `rolled back` (a run); `finished` or `undone` (an
    /// interrupted rollback or restore, whose id `deployment_id` then is).
    pub action: &'static str,
    /// In words.
    pub detail: String,
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
        self.deployment.status == "succeeded"
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

/// Loads a plugin under its policy, with an environment's overrides merged into its config.
pub fn load_plugin(
    config: &Config,
    runtime: &Runtime,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Plugin, String> {
    let key = format!(
        "{}\0{name}\0{}",
        config.path.display(),
        serde_json::to_string(&overrides).unwrap_or_default()
    );
    let cache = PLUGIN_CACHE.get();
    if let Some(p) = cache.and_then(|c| {
        c.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
    }) {
        return Ok(p);
    }
    let mut spec = config.plugin_spec(name)?;
    if let (Some(o), serde_json::Value::Object(base)) = (overrides, &mut spec.config) {
        base.extend(o.clone());
    }
    let plugin = runtime.load(spec).map_err(|e| e.to_string())?;
    if let Some(c) = cache {
        c.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, plugin.clone());
    }
    Ok(plugin)
}

type PluginCache = std::sync::Mutex<std::collections::HashMap<String, Plugin>>;
static PLUGIN_CACHE: std::sync::OnceLock<PluginCache> = std::sync::OnceLock::new();

/// Keeps loaded plugins for the life of the process, so each run does not read, verify and
/// link them again: the daemon's choice, whose configuration is fixed while it runs (a changed
/// plugin file or secret takes a restart). The one-shot commands load afresh.
pub fn keep_loaded_plugins() {
    let _ = PLUGIN_CACHE.set(PluginCache::default());
}

/// The environment's plugins, loaded.
pub(crate) struct Plugins {
    pub target: Plugin,
    pub validators: Vec<Plugin>,
    pub notifiers: Vec<Plugin>,
    /// The off-site backup store, when the environment has one.
    pub offsite: Option<Plugin>,
}

pub(crate) fn load_plugins(config: &Config, env: &Environment) -> Result<Plugins, String> {
    let target_cfg = env.target.as_ref().ok_or_else(|| {
        format!(
            "environment `{}` has no deploy target: add [environments.{}.target] with `plugin = \"NAME\"`",
            env.name, env.name
        )
    })?;
    let runtime = Runtime::shared(config.cache_dir()).map_err(|e| e.to_string())?;
    let target = load_plugin(
        config,
        &runtime,
        &target_cfg.plugin,
        Some(&target_cfg.config),
    )?;
    let exports = |p: &Plugin, kind: Kind, role: &str| {
        if p.kinds().contains(&kind) {
            Ok(())
        } else {
            Err(format!(
                "plugin `{}` is the {role} of environment `{}`, but it does not export `{}`",
                p.name(),
                env.name,
                kind.interface()
            ))
        }
    };
    exports(&target, Kind::DeployTarget, "deploy target")?;
    let validators = env
        .validate
        .plugins
        .iter()
        .map(|n| {
            let p = load_plugin(config, &runtime, n, None)?;
            exports(&p, Kind::Validator, "validator").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let notifiers = env
        .notifiers
        .iter()
        .map(|n| {
            let p = load_plugin(config, &runtime, n, None)?;
            exports(&p, Kind::Notifier, "notifier").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let offsite = match &env.backup.offsite {
        None => None,
        Some(n) => {
            let p = load_plugin(config, &runtime, n, None)?;
            exports(&p, Kind::BackupStore, "off-site backup store")?;
            Some(p)
        }
    };
    Ok(Plugins {
        target,
        validators,
        notifiers,
        offsite,
    })
}

/// Loads every environment's plugins (those with a deploy target), as the daemon does at
/// start; returns how many distinct plugins that was. With [`keep_loaded_plugins`] they stay
/// loaded for the runs. Blocking (compiles on a cache miss).
pub fn preload(config: &Config) -> Result<usize, String> {
    let mut names = std::collections::BTreeSet::new();
    for env in config.environments.values().filter(|e| e.target.is_some()) {
        let p =
            load_plugins(config, env).map_err(|e| format!("environment `{}`: {e}", env.name))?;
        names.insert(p.target.name().to_string());
        names.extend(p.validators.iter().map(|v| v.name().to_string()));
        names.extend(p.notifiers.iter().map(|v| v.name().to_string()));
        names.extend(p.offsite.iter().map(|v| v.name().to_string()));
    }
    Ok(names.len())
}

/// The artifact as the target plugin sees it, and its host path.
pub(crate) async fn artifact_for(
    env: &Environment,
    request: &Request,
    target: &Plugin,
) -> Result<(Option<PathBuf>, Artifact), String> {
    let path = request
        .artifact
        .clone()
        .or_else(|| env.artifact.path.clone());
    // The grant is checked before anything under the path is read; the file-system work runs
    // off the async workers (a slow or hostile tree cannot stall them).
    let policy = target.policy().clone();
    let name = target.name().to_string();
    let walked = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let Some(p) = path.filter(|p| p.is_dir()) else {
            return Ok((None, None, None));
        };
        let guest = guest_path(&policy, &p).ok_or_else(|| {
            format!(
                "the target plugin `{name}` cannot see the artifact {}: grant it, e.g. dirs = [{{ path = \"{}\", guest = \"/artifact\" }}] under [plugins.{name}.policy]",
                p.display(),
                p.display(),
            )
        })?;
        let digest = digest(&p).map_err(|e| format!("cannot read the artifact: {e}"))?;
        Ok((Some(p), Some(guest), Some(format!("sha256:{digest}"))))
    })
    .await
    .map_err(|e| format!("reading the artifact: {e}"))?;
    let (dir, guest, digest) = walked?;
    let path = dir.or_else(|| {
        request
            .artifact
            .clone()
            .or_else(|| env.artifact.path.clone())
    });
    let version = match (&request.version, &digest) {
        (Some(v), _) => v.clone(),
        (None, Some(d)) => d.trim_start_matches("sha256:")[..12].to_string(),
        (None, None) => {
            return Err("no version: pass --version, or give the environment an artifact".into());
        }
    };
    Ok((
        path,
        Artifact {
            version,
            path: guest,
            digest,
            labels: Vec::new(),
        },
    ))
}

/// A new run id: UTC time, then random, so ids sort by start.
pub fn new_id() -> String {
    format!(
        "{}-{}",
        crate::time::compact(crate::time::now_secs()),
        crate::random::hex(3)
    )
}

struct Run<'a> {
    config: &'a Config,
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

/// Runs a deployment: recovers interrupted runs of the environment first, then takes the
/// release through every stage. A run that starts and fails is an `Ok` outcome with status
/// `failed`; `Err` means nothing was started.
pub async fn deploy(
    config: &Config,
    request: &Request,
    reporter: &dyn Reporter,
) -> Result<Outcome, PipelineError> {
    let started = Instant::now();
    let env = config
        .environment(&request.environment)
        .map_err(PipelineError::Setup)?;
    let plugins = load_plugins(config, env).map_err(PipelineError::Setup)?;
    let (artifact_path, artifact) = artifact_for(env, request, &plugins.target)
        .await
        .map_err(PipelineError::Setup)?;
    let store = open_store(config).await?;
    let owner = Owner::this_process();
    let id = request.id.clone().unwrap_or_else(new_id);

    // lock
    let lock_started = Instant::now();
    let (lease, taken_over) = store
        .acquire(&env.name, &owner, &id, env.deploy.lock_lease)
        .await?;
    if let Some(prev) = &taken_over {
        let why = if prev.expires_at < now_ms() {
            "its lease expired"
        } else {
            "its process is gone"
        };
        reporter.note(&format!(
            "took over the lock of {} (run {}): {why}",
            prev.owner, prev.deployment_id
        ));
    }

    // A rollback or restore whose agent died comes first: the operator settles it.
    if let Err(e) = restore::refuse_over_unfinished(&store, env).await {
        lease.release().await?;
        return Err(e);
    }

    // Interrupted runs: resume the same release, supersede any other; a run that was being
    // rolled back when its agent died is rolled back to the end.
    let mut recovered = Vec::new();
    let mut resumed: Option<Deployment> = None;
    for old in store.running(&env.name).await? {
        let same = old.version == artifact.version && old.digest == artifact.digest;
        let stopped = old
            .stage
            .as_deref()
            .unwrap_or("its first stage")
            .to_string();
        let (action, detail) = if env.deploy.on_interrupt == crate::config::OnInterrupt::Rollback
            || old.stage.as_deref() == Some(recover::ROLLING_BACK)
        {
            let done = recover::roll_back(env, &store, &plugins.target, &old)
                .await
                .map_err(|e| PipelineError::Setup(format!("rolling back run {}: {e}", old.id)))?;
            let detail = format!(
                "run {} of {} stopped in {stopped}; rolled back: {done}",
                old.id, old.version
            );
            ("rolled back", detail)
        } else if same && resumed.is_none() {
            store.take_over(&old.id, &owner.0, &old.owner).await?;
            (
                "resumed",
                format!(
                    "run {} of {} stopped in {stopped}; resuming it",
                    old.id, old.version
                ),
            )
        } else {
            store
                .finish_deployment(
                    &old.id,
                    "superseded",
                    Some("interrupted; superseded by a newer run"),
                )
                .await?;
            let detail = format!(
                "run {} of {} stopped in {stopped}; superseded: this run rolls forward from the state it left (schema {}, release {})",
                old.id,
                old.version,
                old.schema_after
                    .as_deref()
                    .or(old.schema_before.as_deref())
                    .unwrap_or("unchanged"),
                old.release_id.as_deref().unwrap_or("none staged"),
            );
            ("superseded", detail)
        };
        recovered.push(
            recover::record(&store, reporter, &request.actor, env, &old, action, detail).await?,
        );
        if action == "resumed" {
            resumed = Some(old);
        }
    }

    let d = match resumed {
        Some(d) => Deployment {
            owner: owner.0.clone(),
            status: "running".into(),
            ..d
        },
        None => {
            let d = Deployment {
                id: id.clone(),
                environment: env.name.clone(),
                version: artifact.version.clone(),
                artifact: artifact_path.as_ref().map(|p| {
                    p.canonicalize()
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                }),
                digest: artifact.digest.clone(),
                actor: request.actor.clone(),
                reason: request.reason.clone(),
                host: crate::store::hostname(),
                owner: owner.0.clone(),
                status: "running".into(),
                stage: Some("lock".into()),
                started_at: now_ms(),
                finished_at: None,
                error: None,
                backup_id: None,
                schema_before: None,
                schema_after: None,
                release_id: None,
                previous_release: None,
                resumed_from: None,
            };
            store.insert_deployment(&d).await?;
            store
                .audit(AuditEntry {
                    actor: request.actor.clone(),
                    action: "deploy.started".into(),
                    environment: Some(env.name.clone()),
                    subject: Some(d.id.clone()),
                    why: request.reason.clone(),
                    detail: Some(format!("version {}", d.version)),
                })
                .await?;
            d
        }
    };
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: d.id.clone(),
    };
    let notifications = Notifications::start(plugins.notifiers.clone(), ctx.clone());
    let mut run = Run {
        config,
        env,
        store,
        plugins,
        reporter,
        notifications,
        lease: Some(lease),
        d,
        ctx,
        artifact_path,
        artifact,
        stages: Vec::new(),
        findings: Vec::new(),
        checks: Vec::new(),
        stop: request.stop.clone(),
        suspended: false,
        staged_url: None,
        waited: Duration::ZERO,
        analyses: Vec::new(),
        watch_failed: None,
    };
    run.notify(
        EventKind::Started,
        None,
        format!("Deploying {} to {}", run.d.version, env.name),
        None,
        None,
    );
    let lock_report = StageReport {
        stage: Stage::Lock,
        status: StageStatus::Done,
        duration_ms: lock_started.elapsed().as_secs_f64() * 1e3,
        detail: format!("lease {} s", env.deploy.lock_lease.as_secs()),
    };
    reporter.stage(&lock_report);
    run.stages.push(lock_report);

    let result = run.stages_in_order().await;
    if run.suspended {
        return run.suspend(started, recovered).await;
    }
    let mut error = result.err();
    let mut rolled_back = false;
    if let Some(evidence) = run.watch_failed.clone() {
        match env.rollback {
            RollbackPolicy::Auto => match run.auto_rollback(&evidence).await {
                Ok(_) => rolled_back = true,
                Err(e) => {
                    error = Some(format!(
                        "{}; automatic rollback failed: {e}",
                        error.unwrap_or_default()
                    ))
                }
            },
            RollbackPolicy::Notify => {
                error = Some(format!(
                    "{}; the release stays live (rollback policy `notify`)",
                    error.unwrap_or_default()
                ));
            }
            RollbackPolicy::Off => {}
        }
    }
    run.finish(error, rolled_back, started, recovered).await
}

impl Run<'_> {
    fn notify(
        &self,
        kind: EventKind,
        stage: Option<Stage>,
        summary: String,
        detail: Option<String>,
        duration: Option<Duration>,
    ) {
        let mut event = notify::event(
            kind,
            &self.env.name,
            &self.d.id,
            &self.d.version,
            &self.d.actor,
            stage.map(Stage::name),
            summary,
            detail,
            duration,
        );
        if let Some(url) = &self.staged_url {
            event.links.push(("release".into(), url.clone()));
        }
        self.notifications.send(event);
    }

    /// Whether the daemon asked the run to stop at its next safe point; marks it suspended.
    fn should_suspend(&mut self) -> bool {
        if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
            self.suspended = true;
        }
        self.suspended
    }

    /// Journals a stage's start; fails the run if the lock was lost.
    async fn begin(&mut self, stage: Stage) -> Result<(i64, Instant), String> {
        // Shutdown stops forward progress only: a rollback the run needs, and its last
        // notifications, still happen.
        if !matches!(stage, Stage::Rollback | Stage::Notify) && self.should_suspend() {
            return Err(SUSPENDED.into());
        }
        if self.lease.as_ref().is_some_and(Lease::lost) {
            return Err(
                "the environment lock was taken over (this agent stalled past its lease)".into(),
            );
        }
        let seq = self
            .store
            .step_started(&self.d.id, stage.name())
            .await
            .map_err(|e| e.to_string())?;
        self.d.stage = Some(stage.name().into());
        self.reporter.stage(&StageReport {
            stage,
            status: StageStatus::Started,
            duration_ms: 0.0,
            detail: String::new(),
        });
        self.notify(
            EventKind::StageStarted,
            Some(stage),
            format!("{} started", stage.name()),
            None,
            None,
        );
        failpoint::hit("before", stage.name());
        Ok((seq, Instant::now()))
    }

    /// Journals a stage's end.
    async fn end(
        &mut self,
        stage: Stage,
        (seq, started): (i64, Instant),
        status: StageStatus,
        detail: String,
    ) -> Result<(), String> {
        failpoint::hit("after", stage.name());
        let elapsed = started.elapsed();
        let word = match status {
            StageStatus::Done => "done",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
            StageStatus::Started => "started",
        };
        self.store
            .step_finished(&self.d.id, seq, word, Some(&detail))
            .await
            .map_err(|e| e.to_string())?;
        let report = StageReport {
            stage,
            status,
            duration_ms: elapsed.as_secs_f64() * 1e3,
            detail: detail.clone(),
        };
        self.reporter.stage(&report);
        self.stages.push(report);
        crate::metrics::observe(
            crate::metrics::Family::StageSeconds,
            &[("environment", &self.env.name), ("stage", stage.name())],
            elapsed.as_secs_f64(),
        );
        let kind = if status == StageStatus::Failed {
            EventKind::StageFailed
        } else {
            EventKind::StageSucceeded
        };
        self.notify(
            kind,
            Some(stage),
            format!("{} {word}", stage.name()),
            Some(detail),
            Some(elapsed),
        );
        Ok(())
    }

    /// Runs a stage body; on error journals the failure and returns it.
    async fn fail(&mut self, stage: Stage, step: (i64, Instant), error: String) -> String {
        if let Err(e) = self
            .end(stage, step, StageStatus::Failed, error.clone())
            .await
        {
            tracing::error!(
                run = self.d.id,
                stage = stage.name(),
                "cannot journal the stage's failure: {e}"
            );
        }
        format!("{}: {error}", stage.name())
    }

    async fn stages_in_order(&mut self) -> Result<(), String> {
        let gate = self.env.approval.as_ref().map(|a| a.before);
        if gate == Some(Gate::Start) {
            self.approve("start").await?;
        }
        self.validate().await?;
        self.backup_and_migrate().await?;
        self.deploy().await?;
        match self.env.deploy.strategy {
            Strategy::Staged => {
                self.verify().await?;
                if gate == Some(Gate::Promote) {
                    self.approve("promote").await?;
                }
                self.promote().await?;
            }
            Strategy::Direct => {
                if gate == Some(Gate::Promote) {
                    self.approve("promote").await?;
                }
                self.promote().await?;
                self.verify().await?;
            }
        }
        self.watch().await
    }

    async fn validate(&mut self) -> Result<(), String> {
        let step = self.begin(Stage::Validate).await?;
        let findings = validate::run(
            self.config,
            self.env,
            self.artifact_path.as_deref(),
            &self.artifact,
            &self.plugins.validators,
            &self.ctx,
        )
        .await;
        let blocking: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.blocks(self.env.strict))
            .collect();
        let detail = if blocking.is_empty() {
            format!("{} finding(s), none blocking", findings.len())
        } else {
            let first = blocking[0];
            format!(
                "{} blocking finding(s); first: [{} {}] {}{}{}",
                blocking.len(),
                first.source,
                first.code,
                first.message,
                first
                    .hint
                    .as_deref()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default(),
                if self.env.strict && first.severity == "warning" {
                    " (a warning: this environment is strict)"
                } else {
                    ""
                }
            )
        };
        let failed = !blocking.is_empty();
        self.findings = findings;
        if failed {
            return Err(self.fail(Stage::Validate, step, detail).await);
        }
        self.end(Stage::Validate, step, StageStatus::Done, detail)
            .await
    }

    async fn backup_and_migrate(&mut self) -> Result<(), String> {
        let Some(db) = self.env.database.clone() else {
            let step = self.begin(Stage::Backup).await?;
            self.end(
                Stage::Backup,
                step,
                StageStatus::Skipped,
                "no database".into(),
            )
            .await?;
            let step = self.begin(Stage::Migrate).await?;
            return self
                .end(
                    Stage::Migrate,
                    step,
                    StageStatus::Skipped,
                    "no database".into(),
                )
                .await;
        };
        let mut settings = db.settings(self.env.strict)?;
        settings.actor = self.d.actor.clone();

        let step = self.begin(Stage::Backup).await?;
        let status = match migrate::status(&settings).await {
            Ok(s) => s,
            Err(e) => return Err(self.fail(Stage::Backup, step, e.to_string()).await),
        };
        let pending = status.pending();
        if self.d.schema_before.is_none() {
            let before = status.current.map(|v| v.to_string());
            self.record(DeploymentField::SchemaBefore, before.as_deref())
                .await?;
            self.d.schema_before = before;
        }
        use crate::config::BackupWhen;
        let wanted = match self.env.deploy.backup {
            BackupWhen::Always => true,
            BackupWhen::Pending => pending > 0,
            BackupWhen::Never => false,
        };
        if let Some(id) = self.d.backup_id.clone() {
            self.end(
                Stage::Backup,
                step,
                StageStatus::Skipped,
                format!("taken before the interruption: {id}"),
            )
            .await?;
        } else if !wanted {
            let why = if self.env.deploy.backup == BackupWhen::Never {
                "backup = \"never\"".to_string()
            } else {
                "no pending migrations".to_string()
            };
            self.end(Stage::Backup, step, StageStatus::Skipped, why)
                .await?;
        } else {
            let backup_settings = match self
                .env
                .backup
                .settings(&self.env.name, crate::config::KeyUse::Write)
            {
                Ok(s) => s,
                Err(e) => return Err(self.fail(Stage::Backup, step, e).await),
            };
            let why = format!(
                "before deployment {} ({} pending migration(s))",
                self.d.id, pending
            );
            let manifest = match backup::create(
                &settings.url,
                &backup_settings,
                &self.d.actor,
                &why,
                Arc::new(AtomicU64::new(0)),
            )
            .await
            {
                Ok(m) => m,
                Err(e) => return Err(self.fail(Stage::Backup, step, e.to_string()).await),
            };
            self.store
                .insert_backup(
                    &manifest.id,
                    &self.env.name,
                    &self.d.id,
                    manifest.schema_version.map(|v| v.to_string()).as_deref(),
                )
                .await
                .map_err(|e| e.to_string())?;
            self.record(DeploymentField::BackupId, Some(&manifest.id))
                .await?;
            self.d.backup_id = Some(manifest.id.clone());
            self.audit(
                "backup.created",
                Some(manifest.id.clone()),
                Some(format!("{} bytes stored", manifest.stored_bytes)),
            )
            .await;
            let mut detail = format!(
                "{} ({})",
                manifest.id,
                crate::units::human_size(manifest.stored_bytes)
            );
            if let Some(store) = &self.plugins.offsite {
                self.reporter
                    .note(&format!("copying {} to `{}`", manifest.id, store.name()));
                match offsite::upload(store, &self.ctx, &self.env.backup.dir, &manifest).await {
                    Ok(key) => {
                        self.audit(
                            "backup.offsite",
                            Some(manifest.id.clone()),
                            Some(key.clone()),
                        )
                        .await;
                        detail.push_str(&format!(", off-site as {key}"));
                    }
                    // The local backup exists, but the promise is an off-site copy too.
                    Err(e) => return Err(self.fail(Stage::Backup, step, e).await),
                }
            }
            self.end(Stage::Backup, step, StageStatus::Done, detail)
                .await?;
        }

        let step = self.begin(Stage::Migrate).await?;
        if pending == 0 {
            let current = status.current.map(|v| v.to_string());
            self.record(DeploymentField::SchemaAfter, current.as_deref())
                .await?;
            self.d.schema_after = current.clone();
            return self
                .end(
                    Stage::Migrate,
                    step,
                    StageStatus::Skipped,
                    format!(
                        "schema up to date at {}",
                        current.as_deref().unwrap_or("no version")
                    ),
                )
                .await;
        }
        let report = match migrate::run(&settings, None, &|_, _, _| {}).await {
            Ok(r) => r,
            Err(e) => return Err(self.fail(Stage::Migrate, step, e.to_string()).await),
        };
        let after = report
            .applied
            .last()
            .map(|(v, _)| v.to_string())
            .or(self.d.schema_before.clone());
        self.record(DeploymentField::SchemaAfter, after.as_deref())
            .await?;
        self.d.schema_after = after.clone();
        self.audit(
            "migrate.applied",
            None,
            Some(format!(
                "{} migration(s), schema now {}",
                report.applied.len(),
                after.as_deref().unwrap_or("?")
            )),
        )
        .await;
        self.end(
            Stage::Migrate,
            step,
            StageStatus::Done,
            format!(
                "{} applied, schema {} -> {}",
                report.applied.len(),
                self.d.schema_before.as_deref().unwrap_or("none"),
                after.as_deref().unwrap_or("none")
            ),
        )
        .await
    }

    async fn record(&self, field: DeploymentField, value: Option<&str>) -> Result<(), String> {
        self.store
            .set_deployment(&self.d.id, field, value)
            .await
            .map_err(|e| e.to_string())
    }

    async fn audit(&self, action: &str, subject: Option<String>, detail: Option<String>) {
        let entry = AuditEntry {
            actor: self.d.actor.clone(),
            action: action.to_string(),
            environment: Some(self.env.name.clone()),
            subject: subject.or_else(|| Some(self.d.id.clone())),
            why: self.d.reason.clone(),
            detail,
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    async fn deploy(&mut self) -> Result<(), String> {
        let step = self.begin(Stage::Deploy).await?;
        let target = self.plugins.target.clone();
        if self.d.previous_release.is_none() {
            let live = self
                .store
                .releases(&self.env.name)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|r| r.state == "live")
                .map(|r| r.id);
            if let Some(live) = &live {
                self.record(DeploymentField::PreviousRelease, Some(live))
                    .await?;
            }
            self.d.previous_release = live;
        }
        let release_id = match self.d.release_id.clone() {
            Some(id) => id,
            None => {
                let staged =
                    match retrying("deploy", || target.deploy(&self.ctx, &self.artifact)).await {
                        Ok(s) => s,
                        Err(e) => return Err(self.fail(Stage::Deploy, step, e.to_string()).await),
                    };
                self.record(DeploymentField::ReleaseId, Some(&staged.release_id))
                    .await?;
                self.d.release_id = Some(staged.release_id.clone());
                self.staged_url = staged.url.clone();
                let record = ReleaseRecord {
                    environment: self.env.name.clone(),
                    id: staged.release_id.clone(),
                    deployment_id: self.d.id.clone(),
                    version: self.d.version.clone(),
                    digest: self.artifact.digest.clone(),
                    backup_id: self.d.backup_id.clone(),
                    schema_version: self.d.schema_after.clone(),
                    url: staged.url.clone(),
                    state: "staged".into(),
                    created_at: now_ms(),
                    promoted_at: None,
                };
                self.store
                    .upsert_release(&record)
                    .await
                    .map_err(|e| e.to_string())?;
                staged.release_id
            }
        };
        // Poll until ready, on the host's schedule.
        let deadline = Instant::now() + self.env.deploy.timeout;
        let mut last = String::new();
        loop {
            match target.status(&self.ctx, &release_id).await {
                Ok(s) => {
                    if s.url.is_some() {
                        self.staged_url = s.url.clone();
                    }
                    match s.state {
                        ReleaseState::Ready | ReleaseState::Live => break,
                        ReleaseState::Failed(why) => {
                            return Err(self
                                .fail(
                                    Stage::Deploy,
                                    step,
                                    format!("release {release_id} failed: {why}"),
                                )
                                .await);
                        }
                        ReleaseState::Canceled => {
                            return Err(self
                                .fail(
                                    Stage::Deploy,
                                    step,
                                    format!("release {release_id} was cancelled"),
                                )
                                .await);
                        }
                        ReleaseState::InProgress(what) => {
                            if what != last {
                                self.reporter.note(&format!("{release_id}: {what}"));
                                last = what;
                            }
                        }
                        ReleaseState::Pending => {}
                    }
                }
                Err(e) if e.retry_after().is_some() => {
                    tracing::info!("status of {release_id}: {e}; polling again");
                }
                Err(e) => return Err(self.fail(Stage::Deploy, step, e.to_string()).await),
            }
            if Instant::now() >= deadline {
                let t = self.env.deploy.timeout.as_secs();
                return Err(self
                    .fail(
                        Stage::Deploy,
                        step,
                        format!("release {release_id} was not ready after {t} s (timeout_ms)"),
                    )
                    .await);
            }
            let wait = self.env.deploy.poll_interval;
            self.waited += wait;
            tokio::time::sleep(wait).await;
        }
        let url = self
            .staged_url
            .clone()
            .map(|u| format!(" at {u}"))
            .unwrap_or_default();
        self.end(
            Stage::Deploy,
            step,
            StageStatus::Done,
            format!("release {release_id} ready{url}"),
        )
        .await
    }

    fn subst(&self) -> Subst {
        Subst {
            url: self.staged_url.clone(),
            release: self.d.release_id.clone().unwrap_or_default(),
            environment: self.env.name.clone(),
        }
    }

    async fn verify(&mut self) -> Result<(), String> {
        let step = self.begin(Stage::Verify).await?;
        let list: Vec<_> = self
            .env
            .checks
            .iter()
            .filter(|c| c.stage == CheckStage::Verify)
            .cloned()
            .collect();
        if list.is_empty() {
            return self
                .end(
                    Stage::Verify,
                    step,
                    StageStatus::Skipped,
                    "no checks".into(),
                )
                .await;
        }
        let rounds = check_rounds(
            &list,
            &self.subst(),
            &self.config.base_dir(),
            Duration::ZERO,
        )
        .await;
        self.waited += rounds.waited;
        self.checks.extend(rounds.results);
        if let Some(f) = rounds.failed {
            return Err(self.fail(Stage::Verify, step, f).await);
        }
        self.end(
            Stage::Verify,
            step,
            StageStatus::Done,
            format!("{} check(s) passed", list.len()),
        )
        .await
    }

    /// Watch checks for the window and every analysis, side by side. A failure is recorded
    /// as `watch_failed` (the evidence) for the rollback policy.
    async fn watch(&mut self) -> Result<(), String> {
        let step = self.begin(Stage::Watch).await?;
        let list: Vec<_> = self
            .env
            .checks
            .iter()
            .filter(|c| c.stage == CheckStage::Watch)
            .cloned()
            .collect();
        let analyses = self.env.analysis.clone();
        if list.is_empty() && analyses.is_empty() {
            return self
                .end(
                    Stage::Watch,
                    step,
                    StageStatus::Skipped,
                    "no watch checks or analysis".into(),
                )
                .await;
        }
        let subst = self.subst();
        let base = self.config.base_dir();
        let window = self.env.deploy.watch;
        let checks_fut = async {
            if list.is_empty() {
                Rounds::default()
            } else {
                check_rounds(&list, &subst, &base, window).await
            }
        };
        let analyses_fut = async {
            let mut out = Vec::new();
            for a in &analyses {
                out.push(analysis::run(a).await);
            }
            out
        };
        let (rounds, results) = tokio::join!(checks_fut, analyses_fut);
        self.waited += rounds.waited.max(results.iter().map(|r| r.waited).sum());
        self.checks.extend(rounds.results);
        let mut evidence: Option<String> = rounds.failed;
        for r in &results {
            self.reporter.note(&r.detail);
        }
        if evidence.is_none() {
            evidence = results
                .iter()
                .find(|r| r.verdict == analysis::Verdict::Failed)
                .map(|r| r.detail.clone());
        }
        let unsure: Vec<&analysis::AnalysisResult> = results
            .iter()
            .filter(|r| r.verdict == analysis::Verdict::Inconclusive)
            .collect();
        self.analyses.extend(results.iter().cloned());
        if evidence.is_none() && !unsure.is_empty() {
            let question = unsure
                .iter()
                .map(|r| r.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            if let Err(e) = self.wait_for_decision("analysis", &question, None).await {
                evidence = Some(format!("{question}; {e}"));
            }
        }
        if let Some(e) = evidence {
            self.watch_failed = Some(e.clone());
            return Err(self.fail(Stage::Watch, step, e).await);
        }
        let detail = format!(
            "{} check(s){}{} passed",
            list.len(),
            if rounds.rounds > 1 {
                format!(" x {} rounds", rounds.rounds)
            } else {
                String::new()
            },
            if analyses.is_empty() {
                String::new()
            } else {
                format!(", {} analysis", analyses.len())
            }
        );
        self.end(Stage::Watch, step, StageStatus::Done, detail)
            .await
    }

    /// An approval gate (`start` or `promote`).
    async fn approve(&mut self, gate: &str) -> Result<(), String> {
        let step = self.begin(Stage::Approve).await?;
        let expires = self.env.approval.as_ref().and_then(|a| a.expires);
        let question = format!("{} to {} ({gate})", self.d.version, self.env.name);
        match self.wait_for_decision(gate, &question, expires).await {
            Ok(detail) => {
                self.end(Stage::Approve, step, StageStatus::Done, detail)
                    .await
            }
            // Still waiting: the stage stays open in the journal and is resumed.
            Err(e) if self.suspended => Err(e),
            Err(e) => Err(self.fail(Stage::Approve, step, e).await),
        }
    }

    /// Opens a gate, tells everyone, and waits for `approve` / `reject` (or expiry).
    async fn wait_for_decision(
        &mut self,
        gate: &str,
        question: &str,
        expires: Option<Duration>,
    ) -> Result<String, String> {
        let expires_at = expires.map(|d| now_ms() + d.as_millis() as i64);
        let request = self
            .store
            .request_approval(&self.d.id, gate, &self.env.name, expires_at)
            .await
            .map_err(|e| e.to_string())?;
        if request.decision.is_none() {
            let how = format!(
                "waiting for a decision on {question}: `deploy-agent approve {id} --reason ...` or `deploy-agent reject {id} --reason ...`",
                id = self.d.id
            );
            self.reporter.note(&how);
            self.notify(
                EventKind::ApprovalRequested,
                Some(Stage::Approve),
                format!("Approval needed: {question}"),
                Some(how),
                None,
            );
        }
        loop {
            let a = self
                .store
                .approval(&self.d.id, gate)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the approval request vanished")?;
            let who = a.decided_by.clone().unwrap_or_default();
            let why = a
                .reason
                .clone()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            match a.decision.as_deref() {
                Some("approved") => return Ok(format!("approved by {who}{why}")),
                Some(_) => return Err(format!("rejected by {who}{why}")),
                None => {}
            }
            if a.expires_at.is_some_and(|e| e <= now_ms()) {
                return Err(format!(
                    "no decision within {} s: the approval expired",
                    expires.map_or(0, |d| d.as_secs())
                ));
            }
            if self.lease.as_ref().is_some_and(Lease::lost) {
                return Err("the environment lock was taken over while waiting".into());
            }
            if self.should_suspend() {
                return Err(SUSPENDED.into());
            }
            let pause = Duration::from_millis(200);
            tokio::time::sleep(pause).await;
            self.waited += pause;
        }
    }

    /// The rollback policy's `auto`: the previous release live again, verified, announced.
    async fn auto_rollback(&mut self, evidence: &str) -> Result<String, String> {
        let step = self.begin(Stage::Rollback).await?;
        let started = now_ms();
        let Some(previous) = self.d.previous_release.clone() else {
            return Err(self
                .fail(
                    Stage::Rollback,
                    step,
                    "there is no previous release to roll back to".into(),
                )
                .await);
        };
        let failed = self.d.release_id.clone().unwrap_or_default();
        let switched = switch_back(
            &self.store,
            &self.plugins.target,
            &self.ctx,
            self.env,
            &previous,
            Some((&failed, "failed")),
        )
        .await;
        let live = match switched {
            Ok(id) => id,
            Err(e) => return Err(self.fail(Stage::Rollback, step, e).await),
        };
        // The release's recorded URL, so `{url}` checks run against the release serving again.
        let url = self
            .store
            .releases(&self.env.name)
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|r| r.id == live))
            .and_then(|r| r.url);
        let rounds = verify_release(self.config, self.env, &live, url).await;
        self.waited += rounds.waited;
        let verified = match &rounds.failed {
            None => format!("{} check(s) pass on it", self.env.checks.len()),
            Some(f) => format!("but it fails its checks too: {f}"),
        };
        let detail =
            format!("{failed} failed its watch ({evidence}); {live} is live again, {verified}");
        let mut record = crate::store::RollbackRecord {
            id: new_id(),
            environment: self.env.name.clone(),
            initiator: "automatic".into(),
            mode: "app".into(),
            from_release: Some(failed.clone()),
            to_release: Some(live.clone()),
            actor: "agent".into(),
            reason: Some(evidence.to_string()),
            status: if rounds.failed.is_none() {
                "succeeded".into()
            } else {
                "failed".into()
            },
            detail: Some(detail.clone()),
            started_at: started,
            ..Default::default()
        };
        record.finish();
        self.store
            .save_rollback(&record)
            .await
            .map_err(|e| e.to_string())?;
        self.audit(
            "release.rolled-back",
            Some(failed.clone()),
            Some(detail.clone()),
        )
        .await;
        self.notify(
            EventKind::RolledBack,
            Some(Stage::Rollback),
            format!(
                "{} on {} was rolled back automatically: {live} is live again",
                self.d.version, self.env.name
            ),
            Some(format!("reason: {evidence}; verification: {verified}")),
            None,
        );
        if rounds.failed.is_some() {
            return Err(self.fail(Stage::Rollback, step, detail).await);
        }
        self.end(Stage::Rollback, step, StageStatus::Done, detail.clone())
            .await?;
        Ok(detail)
    }

    async fn promote(&mut self) -> Result<(), String> {
        let step = self.begin(Stage::Promote).await?;
        let Some(id) = self.d.release_id.clone() else {
            return Err(self
                .fail(Stage::Promote, step, "no release was staged".into())
                .await);
        };
        let target = &self.plugins.target;
        if let Err(e) = no_escaping_links(target).await {
            return Err(self.fail(Stage::Promote, step, format!("{id}: {e}")).await);
        }
        if let Err(e) = retrying("promote", || target.promote(&self.ctx, &id)).await {
            return Err(self.fail(Stage::Promote, step, e.to_string()).await);
        }
        if let Err(e) = self.until_live(&id).await {
            return Err(self.fail(Stage::Promote, step, e).await);
        }
        self.store
            .mark_live(&self.env.name, &id)
            .await
            .map_err(|e| e.to_string())?;
        self.audit(
            "release.promoted",
            Some(id.clone()),
            Some(format!("version {}", self.d.version)),
        )
        .await;
        let previous = self
            .d
            .previous_release
            .clone()
            .map(|p| format!(" (was {p})"))
            .unwrap_or_default();
        self.end(
            Stage::Promote,
            step,
            StageStatus::Done,
            format!("{id} is live{previous}"),
        )
        .await
    }

    /// After `promote`, waits until the target reports the release live.
    async fn until_live(&mut self, id: &str) -> Result<(), String> {
        let reporter = self.reporter;
        let waited = wait_live(
            &self.plugins.target,
            &self.ctx,
            id,
            &self.env.deploy,
            |what| reporter.note(&format!("{id}: {what}")),
        )
        .await?;
        self.waited += waited;
        Ok(())
    }

    async fn finish(
        mut self,
        error: Option<String>,
        rolled_back: bool,
        started: Instant,
        recovered: Vec<Recovery>,
    ) -> Result<Outcome, PipelineError> {
        let (status, kind, summary) = match &error {
            Some(e) if rolled_back => (
                "rolled_back",
                EventKind::Failed,
                format!(
                    "Deploying {} to {} failed in {e}; rolled back",
                    self.d.version, self.env.name
                ),
            ),
            None => (
                "succeeded",
                EventKind::Succeeded,
                format!("{} is live on {}", self.d.version, self.env.name),
            ),
            Some(e) => (
                "failed",
                EventKind::Failed,
                format!(
                    "Deploying {} to {} failed in {e}",
                    self.d.version, self.env.name
                ),
            ),
        };
        crate::metrics::inc(
            crate::metrics::Family::Deployments,
            &[("environment", &self.env.name), ("outcome", status)],
        );
        if error.is_some()
            && let Some(id) = &self.d.release_id
            && self
                .stages
                .iter()
                .all(|s| s.stage != Stage::Promote || s.status != StageStatus::Done)
            && let Err(e) = self
                .store
                .set_release_state(&self.env.name, id, "failed")
                .await
        {
            tracing::error!(
                run = self.d.id,
                release = id,
                "cannot mark the staged release failed: {e}"
            );
        }
        // notify: the final event, then wait for the queue to drain.
        let step = self.begin(Stage::Notify).await.ok();
        self.notify(kind, None, summary, error.clone(), Some(started.elapsed()));
        let notifications = std::mem::replace(
            &mut self.notifications,
            Notifications::start(Vec::new(), self.ctx.clone()),
        );
        let delivery = notifications.finish().await;
        if let Some(step) = step {
            let detail = if delivery.failed.is_empty() {
                format!("{} delivered", delivery.delivered)
            } else {
                format!(
                    "{} delivered, {} not (never fatal; see the log)",
                    delivery.delivered,
                    delivery.failed.len()
                )
            };
            if let Err(e) = self
                .end(Stage::Notify, step, StageStatus::Done, detail)
                .await
            {
                tracing::error!(run = self.d.id, "cannot journal the notify stage: {e}");
            }
        }
        self.store
            .finish_deployment(&self.d.id, status, error.as_deref())
            .await?;
        self.audit(&format!("deploy.{status}"), None, error.clone())
            .await;
        self.outcome(delivery, started, recovered, None).await
    }

    /// Releases the lock and reports the run as the store has it (`status` overriding).
    async fn outcome(
        mut self,
        delivery: notify::Delivery,
        started: Instant,
        recovered: Vec<Recovery>,
        status: Option<&str>,
    ) -> Result<Outcome, PipelineError> {
        if let Some(lease) = self.lease.take() {
            lease.release().await?;
        }
        let mut deployment = self
            .store
            .deployment(&self.d.id)
            .await?
            .unwrap_or_else(|| self.d.clone());
        if let Some(s) = status {
            deployment.status = s.to_string();
        }
        let total = started.elapsed().saturating_sub(self.waited);
        Ok(Outcome {
            deployment,
            stages: self.stages,
            findings: self.findings,
            checks: self.checks,
            analyses: self.analyses,
            recovered,
            notify_failures: delivery.failed,
            total_ms: total.as_secs_f64() * 1e3,
        })
    }
}

const SUSPENDED: &str = "suspended at a safe point for the agent's shutdown";

impl Run<'_> {
    /// Leaves the run for the next start: journaled as `running` where it stopped, its
    /// notifications delivered, its lock released, so the next `serve` (or `deploy-agent
    /// recover`) resumes it.
    async fn suspend(
        mut self,
        started: Instant,
        recovered: Vec<Recovery>,
    ) -> Result<Outcome, PipelineError> {
        let at = self.d.stage.clone().unwrap_or_else(|| "lock".into());
        self.reporter.note(&format!(
            "run {} suspended at {at}; the next start resumes it",
            self.d.id
        ));
        self.audit(
            "deploy.suspended",
            None,
            Some(format!(
                "stopped at {at} for the agent's shutdown; resumes on the next start"
            )),
        )
        .await;
        let notifications = std::mem::replace(
            &mut self.notifications,
            Notifications::start(Vec::new(), self.ctx.clone()),
        );
        let delivery = notifications.finish().await;
        self.outcome(delivery, started, recovered, Some("suspended"))
            .await
    }
}

/// Refuses a release whose target left a symbolic link pointing outside a directory it may
/// write: the deploy host (a web server serving `current`) would follow it out.
async fn no_escaping_links(target: &Plugin) -> Result<(), String> {
    let writable: Vec<std::path::PathBuf> = target
        .policy()
        .dirs
        .iter()
        .filter(|d| d.writable)
        .map(|d| d.host.clone())
        .collect();
    let found = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        for dir in &writable {
            found.extend(crate::runtime::links::escaping_links(dir)?);
        }
        Ok::<_, std::io::Error>(found)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("checking the target's directories for links: {e}"))?;
    if found.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = found.iter().take(5).map(ToString::to_string).collect();
    Err(format!(
        "refused: the target left {} link(s) pointing outside its directory, which the deploy host would follow: {}{}",
        found.len(),
        shown.join(", "),
        if found.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    ))
}

/// Makes `to` live again on the target and in the store, and gives the release it replaces
/// (`left`) its new state. Returns the id the target says is live.
pub(crate) async fn switch_back(
    store: &Store,
    target: &Plugin,
    ctx: &CallContext,
    env: &Environment,
    to: &str,
    left: Option<(&str, &str)>,
) -> Result<String, String> {
    let environment = env.name.as_str();
    let live = retrying("rollback", || target.rollback(ctx, Some(to)))
        .await
        .map_err(|e| e.to_string())?;
    wait_live(target, ctx, &live, &env.deploy, |what| {
        tracing::info!(release = live, "rolling back: {what}")
    })
    .await?;
    store
        .mark_live(environment, &live)
        .await
        .map_err(|e| e.to_string())?;
    if let Some((id, state)) = left {
        store
            .set_release_state(environment, id, state)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(live)
}

/// Attempts at a target operation that fails with a retryable plugin error.
const TARGET_ATTEMPTS: u32 = 4;
/// The longest wait between them, whatever the platform asks.
const TARGET_MAX_WAIT: Duration = Duration::from_secs(30);

/// Calls a target operation again while the plugin says the failure is transient (a 429 with
/// Retry-After, a 409 conflict, a 503), waiting what the platform asked (capped) or backing off.
/// A deadline is not retried here: the timed-out call may have taken effect.
async fn retrying<T, F, Fut>(op: &str, mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e)
                if attempt < TARGET_ATTEMPTS
                    && matches!(
                        &e,
                        CallError::Plugin {
                            error: PluginError::Retryable(_),
                            ..
                        }
                    ) =>
            {
                let wait = e
                    .retry_after()
                    .flatten()
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_millis(500 << attempt))
                    .min(TARGET_MAX_WAIT);
                tracing::info!(
                    op,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "{e}; trying again"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Polls the target until it reports `id` live, on the environment's poll interval and
/// timeout: a platform may accept a promotion or rollback and finish it later (Vercel answers
/// 202 behind a rolling release; Kubernetes rolls the pods). `note` hears each new state.
/// Returns the time spent waiting.
pub(crate) async fn wait_live(
    target: &Plugin,
    ctx: &CallContext,
    id: &str,
    settings: &crate::config::DeploySettings,
    note: impl Fn(&str),
) -> Result<Duration, String> {
    let deadline = Instant::now() + settings.timeout;
    let mut waited = Duration::ZERO;
    let mut last = String::new();
    loop {
        let what = match target.status(ctx, id).await {
            Ok(s) => match s.state {
                ReleaseState::Live => return Ok(waited),
                ReleaseState::Failed(why) => {
                    return Err(format!("release {id} failed on its way to live: {why}"));
                }
                ReleaseState::Canceled => {
                    return Err(format!("release {id} was cancelled on its way to live"));
                }
                ReleaseState::InProgress(what) => what,
                ReleaseState::Ready | ReleaseState::Pending => "waiting for the switch".into(),
            },
            Err(e) if e.retry_after().is_some() => e.to_string(),
            Err(e) => return Err(e.to_string()),
        };
        if what != last {
            note(&what);
            last = what;
        }
        if Instant::now() >= deadline {
            let t = settings.timeout.as_secs();
            return Err(format!(
                "release {id} was not live after {t} s (timeout_ms); last: {last}"
            ));
        }
        waited += settings.poll_interval;
        tokio::time::sleep(settings.poll_interval).await;
    }
}

/// Checks a release that serves again (after a rollback) with every check of the environment.
pub(crate) async fn verify_release(
    config: &Config,
    env: &Environment,
    release: &str,
    url: Option<String>,
) -> Rounds {
    let subst = Subst {
        url,
        release: release.to_string(),
        environment: env.name.clone(),
    };
    check_rounds(&env.checks, &subst, &config.base_dir(), Duration::ZERO).await
}

/// What rounds of checks found.
#[derive(Debug, Default)]
pub(crate) struct Rounds {
    pub(crate) results: Vec<CheckResult>,
    pub(crate) failed: Option<String>,
    rounds: u32,
    pub(crate) waited: Duration,
}

/// Runs `list` once, or in rounds until `window` has passed; stops at the first failure.
async fn check_rounds(
    list: &[crate::config::CheckConfig],
    subst: &Subst,
    base: &std::path::Path,
    window: Duration,
) -> Rounds {
    let mut out = Rounds::default();
    let end = Instant::now() + window;
    loop {
        out.rounds += 1;
        let results = checks::run_all(list.iter(), subst, base).await;
        for r in &results {
            if r.attempts > 1 {
                out.waited += list
                    .iter()
                    .find(|c| c.name == r.name)
                    .map_or(Duration::ZERO, |c| c.interval * (r.attempts - 1));
            }
        }
        out.failed = results.iter().find(|r| !r.passed).map(|f| {
            format!(
                "check `{}` failed after {} attempt(s): {}",
                f.name, f.attempts, f.detail
            )
        });
        out.results.extend(results);
        if out.failed.is_some() || Instant::now() >= end {
            return out;
        }
        let pause = list
            .iter()
            .map(|c| c.interval)
            .min()
            .unwrap_or(Duration::from_secs(1));
        out.waited += pause;
        tokio::time::sleep(pause).await;
    }
}
