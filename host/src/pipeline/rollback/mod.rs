//! Emergency rollback: the app (the target's previous or named release), the database (the
//! backup that holds that release's schema, or down migrations), or both.
//!
//! [`plan`] works out what would happen and what it would cost (release ids, the backup and
//! its age, what would be lost) without changing anything, and refuses a restore whose
//! backup does not hold the schema the release runs on (unless forced) ([`plan`]'s work is in
//! `plan.rs`). [`execute`] does it under the environment's lock: by swap (restore beside the
//! live database, then switch the database and the app in one short step: see
//! [`super::swap`]) or in place (switch the app, take a safety snapshot, restore), then
//! verifies the release with the environment's checks, records and announces it.

mod plan;

use std::time::Instant;

use serde::Serialize;

use super::Agent;
use super::checks::CheckResult;
use super::notify::{self, Notifications};
use super::swap::{self, AppSwitch, DbSwitch, Method};
use super::{
    PipelineError, Reporter, Stage, StageError, StageReport, StageStatus, load_plugins, new_id,
    progress,
};
use crate::config::Environment;
use crate::db::{backup, migrate};
use crate::runtime::{CallContext, EventKind};
use crate::store::{AuditEntry, Owner, ReleaseRecord, RollbackRecord, Store, now_ms};
use crate::store::{ReleaseStatus, RollbackStatus};
use plan::plan_with;

/// What to roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The app only: the target's earlier release.
    App,
    /// The database only.
    Db,
    /// Both.
    Full,
}

impl Mode {
    /// Its word, as the API takes it.
    pub fn word(self) -> &'static str {
        match self {
            Mode::App => "app",
            Mode::Db => "db",
            Mode::Full => "full",
        }
    }
}

/// How the database goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DbStrategy {
    /// Restore the backup that holds the release's schema (data written since is lost).
    Restore,
    /// Run down migrations to the release's schema version (data kept where they allow).
    Down,
}

/// A rollback request.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    /// The environment.
    pub environment: String,
    /// The release to return to (default: the newest earlier release that was superseded,
    /// never one that was rolled back or failed).
    pub to: Option<String>,
    /// What to roll back.
    pub mode: Mode,
    /// The backup to restore, instead of the one that holds the release's schema.
    pub backup: Option<String>,
    /// Restore or down migrations.
    pub db_strategy: DbStrategy,
    /// Why (required: it goes in the record, the audit log and the notifications).
    pub reason: String,
    /// Who.
    pub actor: String,
    /// Restore even when the backup's schema is not the release's.
    pub force: bool,
}

/// The backup a restore would use.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BackupChoice {
    /// Its id.
    pub id: String,
    /// The schema version it holds.
    pub schema_version: Option<i64>,
    /// When it finished.
    pub taken_at: String,
    /// Its age, seconds.
    pub age_s: i64,
}

/// What a rollback would do.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RollbackPlan {
    /// The environment.
    pub environment: String,
    /// What.
    pub mode: Mode,
    /// How the database goes back.
    pub db_strategy: DbStrategy,
    /// The release live now.
    pub from: Option<ReleaseRecord>,
    /// The release to return to.
    pub to: ReleaseRecord,
    /// The database's schema version now.
    pub schema_now: Option<String>,
    /// The backup to restore (strategy `restore`).
    pub backup: Option<BackupChoice>,
    /// How the backup goes back: beside the live database and switched, or in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_switch: Option<DbSwitch>,
    /// What would happen, step by step.
    pub steps: Vec<String>,
    /// What would be lost.
    pub data_loss: Option<String>,
    /// Reasons to refuse; empty when it can go ahead.
    pub refusals: Vec<String>,
}

/// One step of an executed rollback.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RollbackStep {
    /// Its name.
    pub name: String,
    /// How long, ms.
    pub duration_ms: f64,
    /// What it did.
    pub detail: String,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RollbackOutcome {
    /// The record, as stored.
    pub record: RollbackRecord,
    /// Step by step.
    pub steps: Vec<RollbackStep>,
    /// Checks of the release after the rollback.
    pub checks: Vec<CheckResult>,
    /// The whole rollback, ms (checks' retry waits excluded).
    pub total_ms: f64,
}

impl RollbackOutcome {
    /// Whether it worked and the release passed its checks.
    pub fn succeeded(&self) -> bool {
        self.record.status == RollbackStatus::Succeeded
    }
}

fn app(mode: Mode) -> bool {
    matches!(mode, Mode::App | Mode::Full)
}

fn db(mode: Mode) -> bool {
    matches!(mode, Mode::Db | Mode::Full)
}

/// Works out the rollback; changes nothing.
pub async fn plan(agent: &Agent, req: &RollbackRequest) -> Result<RollbackPlan, PipelineError> {
    let config = &*agent.config;
    let env = config
        .environment(&req.environment)
        .map_err(PipelineError::Setup)?;
    let store = agent.store.clone();
    plan_with(env, &store, req).await
}

/// Tells `reporter` and the bus that the rollback stage started or ended.
fn stage_event(
    p: &progress::Publish,
    reporter: &dyn Reporter,
    status: StageStatus,
    duration_ms: f64,
    detail: String,
) {
    let (kind, word) = match status {
        StageStatus::Started => (EventKind::StageStarted, "started"),
        StageStatus::Failed => (EventKind::StageFailed, "failed"),
        _ => (EventKind::StageSucceeded, "done"),
    };
    p.bus.publish(&crate::runtime::Event {
        kind,
        environment: p.environment.clone(),
        deployment_id: p.run.clone(),
        version: p.version.clone(),
        actor: p.actor.clone(),
        stage: Some(Stage::Rollback.name().to_string()),
        summary: format!("rollback {word}"),
        detail: (!detail.is_empty()).then(|| detail.clone()),
        duration_ms: (status != StageStatus::Started).then_some(duration_ms as u64),
        links: Vec::new(),
        at_ms: now_ms() as u64,
    });
    reporter.stage(&StageReport {
        stage: Stage::Rollback,
        status,
        duration_ms,
        detail,
    });
}

/// Carries out a plan made by [`plan`] (re-checked under the lock).
pub async fn execute(
    agent: &Agent,
    req: &RollbackRequest,
    reporter: &dyn Reporter,
) -> Result<RollbackOutcome, PipelineError> {
    let config = &*agent.config;
    let started = Instant::now();
    let env = config
        .environment(&req.environment)
        .map_err(PipelineError::Setup)?;
    let store = agent.store.clone();
    let id = new_id();
    let mut steps: Vec<RollbackStep> = Vec::new();
    let mut step = |name: &'static str, at: Instant, detail: String, _: &dyn Reporter| {
        steps.push(RollbackStep {
            name: name.to_string(),
            duration_ms: at.elapsed().as_secs_f64() * 1e3,
            detail,
        });
    };

    let at = Instant::now();
    let (lease, _) = store
        .acquire(
            &env.name,
            &Owner::this_process(),
            &format!("rollback-{id}"),
            env.deploy.lock_lease,
        )
        .await?;
    let plan = match plan_with(env, &store, req).await {
        Ok(p) if p.refusals.is_empty() => p,
        Ok(p) => {
            lease.release().await?;
            return Err(PipelineError::Setup(p.refusals.join("; ")));
        }
        Err(e) => {
            lease.release().await?;
            return Err(e);
        }
    };
    step(
        "lock",
        at,
        format!("lease {} s", env.deploy.lock_lease.as_secs()),
        reporter,
    );
    let mut record = RollbackRecord {
        id: id.clone(),
        environment: env.name.clone(),
        initiator: "operator".into(),
        mode: format!("{:?}", req.mode).to_lowercase(),
        from_release: plan.from.as_ref().map(|r| r.id.clone()),
        to_release: Some(plan.to.id.clone()),
        backup_id: plan.backup.as_ref().map(|b| b.id.clone()),
        actor: req.actor.clone(),
        reason: Some(req.reason.clone()),
        status: RollbackStatus::Running,
        started_at: now_ms(),
        ..Default::default()
    };
    store.save_rollback(&record).await?;
    // Loaded once: the target for the app, the notifiers for the announcement.
    let plugins = load_plugins(agent, env).map_err(std::sync::Arc::new);
    // The live view, here and for anyone following the environment's events: one
    // `rollback` stage, saying which step it is on and how long it has taken.
    let publish = progress::Publish {
        bus: agent.events().clone(),
        environment: env.name.clone(),
        run: id.clone(),
        version: plan.to.version.clone(),
        actor: req.actor.clone(),
    };
    let stage_at = Instant::now();
    stage_event(&publish, reporter, StageStatus::Started, 0.0, String::new());
    let result = progress::pumped(reporter, Some(&publish), async {
        progress::started(Stage::Rollback);
        let result = run_steps(
            agent,
            &plugins,
            env,
            &store,
            req,
            &plan,
            &mut record,
            &mut step,
            reporter,
        )
        .await;
        progress::ended();
        result
    })
    .await;
    let (status, detail) = match &result {
        Ok(_) => (StageStatus::Done, format!("{} is live", plan.to.id)),
        Err(e) => (StageStatus::Failed, e.to_string()),
    };
    let took = stage_at.elapsed().as_secs_f64() * 1e3;
    stage_event(&publish, reporter, status, took, detail);
    let (checks, waited) = match result {
        Ok(c) => c,
        Err(e) => {
            record.status = RollbackStatus::Failed;
            record.detail = Some(e.to_string());
            (Vec::new(), std::time::Duration::ZERO)
        }
    };
    if record.status == RollbackStatus::Running {
        record.status = if checks.iter().all(|c| c.passed) {
            RollbackStatus::Succeeded
        } else {
            RollbackStatus::Failed
        };
    }
    record.finish();
    let summary = steps
        .iter()
        .map(|s| format!("{} {:.0} ms: {}", s.name, s.duration_ms, s.detail))
        .collect::<Vec<_>>()
        .join("; ");
    if record.detail.is_none() {
        record.detail = Some(summary.clone());
    }
    store.save_rollback(&record).await?;
    store
        .audit(AuditEntry {
            actor: req.actor.clone(),
            action: format!("rollback.{}", record.mode),
            environment: Some(env.name.clone()),
            subject: Some(id.clone()),
            why: Some(req.reason.clone()),
            detail: record.detail.clone(),
        })
        .await?;
    // Tell the environment's notifiers.
    if let Ok(plugins) = &plugins {
        let ctx = CallContext {
            environment: env.name.clone(),
            deployment_id: id.clone(),
        };
        let n = Notifications::start(
            plugins.notifiers.clone(),
            notify::Audience::of(config, env),
            ctx,
            agent.events().clone(),
        );
        n.send(notify::event(
            EventKind::RolledBack,
            &env.name,
            &id,
            &plan.to.version,
            &req.actor,
            None,
            format!(
                "{} rolled back ({}) to {} by {}: {}",
                env.name, record.mode, plan.to.id, req.actor, record.status
            ),
            Some(format!(
                "reason: {}; {}",
                req.reason,
                record.detail.clone().unwrap_or_default()
            )),
            Some(started.elapsed()),
        ));
        let delivery = n.finish().await;
        for f in &delivery.failed {
            reporter.note(&format!("notifier: {f}"));
        }
    }
    lease.release().await?;
    Ok(RollbackOutcome {
        record,
        steps,
        checks,
        total_ms: started.elapsed().saturating_sub(waited).as_secs_f64() * 1e3,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_steps(
    agent: &Agent,
    plugins: &Result<super::Plugins, std::sync::Arc<super::PluginsError>>,
    env: &Environment,
    store: &Store,
    req: &RollbackRequest,
    plan: &RollbackPlan,
    record: &mut RollbackRecord,
    step: &mut (impl FnMut(&'static str, Instant, String, &dyn Reporter) + Send),
    reporter: &dyn Reporter,
) -> Result<(Vec<CheckResult>, std::time::Duration), StageError> {
    let config = &*agent.config;
    let to = &plan.to;
    let swapping = db(req.mode)
        && plan.backup.is_some()
        && plan
            .database_switch
            .as_ref()
            .is_some_and(|d| d.method == Method::Swap);
    let app_needed = app(req.mode) && plan.from.as_ref().is_none_or(|f| f.id != to.id);
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: record.id.clone(),
    };
    // Going back marks the release it left `rolled_back`; going forward (`--to` a newer
    // release) leaves it `superseded`, as a deploy would.
    let left = plan
        .from
        .as_ref()
        .filter(|f| f.created_at > to.created_at)
        .map(|f| (f.id.as_str(), ReleaseStatus::RolledBack));
    let target = || {
        plugins
            .as_ref()
            .map(|p| &p.target)
            .map_err(|e| StageError::Plugins(e.clone()))
    };
    if app_needed && !swapping {
        // In place: the app first, then the database (the two do not match meanwhile).
        let at = Instant::now();
        let target = target()?;
        progress::set(
            "rollback",
            format!("making {} live on `{}`", to.id, target.name()),
        );
        let live = super::switch_back(store, target, &ctx, env, &to.id, left).await?;
        step("app", at, format!("{live} is live"), reporter);
    }
    if swapping {
        let database = env
            .database
            .as_ref()
            .ok_or_else(|| StageError::Config("no database".into()))?;
        let url = database
            .settings(env.strict)
            .map_err(StageError::Config)?
            .url;
        let bs = env
            .backup
            .settings(&env.name, crate::config::KeyUse::Read)
            .map_err(StageError::Config)?;
        let app_switch = match app_needed {
            true => Some(AppSwitch {
                target: target()?,
                ctx: ctx.clone(),
                to: to.id.clone(),
                left: left.map(|(id, s)| (id.to_string(), s)),
            }),
            false => None,
        };
        // Recorded before anything is created: an interrupted swap is finished or undone
        // from what the record says (see `swap::carry`).
        record.database_swap = Some(swap::start(&url, &record.id)?);
        store.save_rollback(record).await?;
        let mut said =
            |name: &'static str, at: Instant, detail: String| step(name, at, detail, reporter);
        let carried = swap::carry(env, store, record, &url, &bs, app_switch, &mut said).await;
        if carried.is_err() {
            swap::clean_up(&url, record).await;
        }
        carried?;
    }
    if db(req.mode) && !swapping {
        let database = env
            .database
            .as_ref()
            .ok_or_else(|| StageError::Config("no database".into()))?;
        let settings = database.settings(env.strict).map_err(StageError::Config)?;
        let want = to
            .schema_version
            .as_ref()
            .and_then(|v| v.parse::<i64>().ok());
        let needs_down =
            req.db_strategy == DbStrategy::Down && plan.schema_now != to.schema_version;
        if plan.backup.is_some() || needs_down {
            let at = Instant::now();
            let bs = env
                .backup
                .settings(&env.name, crate::config::KeyUse::Read)
                .map_err(StageError::Config)?;
            // Recorded before the restore starts: an interrupted rollback is then finished
            // or undone from what the record says (see `restore`).
            progress::set("rollback", "taking a safety snapshot of the database");
            let safety = super::restore::safety_backup(env, record, &settings.url, &bs).await?;
            store.save_rollback(record).await?;
            step("snapshot", at, safety, reporter);
            let at = Instant::now();
            if let Some(choice) = &plan.backup {
                let m = backup::find(&bs.dir, &choice.id)?;
                progress::set("rollback", format!("restoring backup {}", choice.id));
                backup::restore(&m, &bs.dir, bs.key.as_ref(), &settings.url).await?;
                step(
                    "restore",
                    at,
                    format!(
                        "{} restored (schema {})",
                        choice.id,
                        choice
                            .schema_version
                            .map_or("none".into(), |v| v.to_string())
                    ),
                    reporter,
                );
            } else {
                progress::set("rollback", "reverting migrations");
                let reverted = migrate::revert(&settings, Some(want.unwrap_or(0))).await?;
                step(
                    "down",
                    at,
                    format!(
                        "reverted {} migration(s) to schema {}",
                        reverted.len(),
                        want.map_or("none".into(), |v| v.to_string())
                    ),
                    reporter,
                );
            }
        }
    }
    let at = Instant::now();
    progress::set("rollback", format!("checking {}", to.id));
    let rounds = super::verify_release(config, env, &to.id, to.url.clone()).await;
    let detail = match &rounds.failed {
        None => format!("{} check(s) passed on {}", env.checks.len(), to.id),
        Some(f) => format!("{} fails its checks: {f}", to.id),
    };
    step("verify", at, detail, reporter);
    Ok((rounds.results, rounds.waited))
}
