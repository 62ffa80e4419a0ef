//! Emergency rollback: the app (the target's previous or named release), the database (the
//! backup that holds that release's schema, or down migrations), or both.
//!
//! [`plan`] works out what would happen and what it would cost (release ids, the backup and
//! its age, what would be lost) without changing anything, and refuses a restore whose
//! backup does not hold the schema the release runs on (unless forced). [`execute`] does it
//! under the environment's lock: switch the app, take a safety snapshot, restore, verify the
//! release with the environment's checks, record and announce it.

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

async fn plan_with(
    env: &Environment,
    store: &Store,
    req: &RollbackRequest,
) -> Result<RollbackPlan, PipelineError> {
    let setup = PipelineError::Setup;
    if env.rollout.is_some() && req.mode != Mode::Db {
        // The app lives on each host, behind each host's own agent: one agent's rollback
        // would switch its own host and leave the others.
        return Err(setup(format!(
            "{} spans hosts: an app rollback goes host by host, as a run: deploy the earlier version again (`deploy-agent deploy --env {} --version ...`), or `--db-only` for the database",
            env.name, env.name
        )));
    }
    let releases = store.releases(&env.name).await?;
    let from = releases
        .iter()
        .find(|r| r.state == ReleaseStatus::Live)
        .cloned();
    let to = match &req.to {
        Some(id) => releases
            .iter()
            .find(|r| &r.id == id)
            .cloned()
            .ok_or_else(|| {
                setup(format!(
                    "no release `{id}` in {} (see `deploy-agent releases --env {}`)",
                    env.name, env.name
                ))
            })?,
        None => {
            let live_at = from.as_ref().map_or(i64::MAX, |l| l.created_at);
            releases
                .iter()
                .filter(|r| {
                    r.created_at < live_at
                        // The newest release that was live before and left normally: a
                        // rolled-back or failed release is never a default target.
                        && r.state == ReleaseStatus::Superseded
                })
                .max_by_key(|r| r.created_at)
                .cloned()
                .ok_or_else(|| {
                    setup(format!(
                        "no earlier release of {} to roll back to",
                        env.name
                    ))
                })?
        }
    };
    let mut steps = Vec::new();
    let mut refusals = Vec::new();
    if app(req.mode) {
        match &from {
            Some(l) if l.id == to.id && req.mode == Mode::App => {
                refusals.push(format!("{} is already live", to.id));
            }
            Some(l) => steps.push(format!(
                "switch the app from {} ({}) to {} ({})",
                l.id, l.version, to.id, to.version
            )),
            None => steps.push(format!("make {} ({}) live", to.id, to.version)),
        }
    }
    let mut schema_now = None;
    let mut choice = None;
    let mut database_switch = None;
    let mut data_loss = None;
    if req.mode == Mode::App
        && let Some(database) = &env.database
        && let Ok(settings) = database.settings(env.strict)
    {
        let now = migrate::status(&settings)
            .await
            .ok()
            .and_then(|s| s.current);
        let built_for = to
            .schema_version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok());
        if now.is_some() && now > built_for {
            let changes = migrate::contract::between(&settings.dir, built_for, now)
                .map_err(|e| setup(e.to_string()))?;
            if !changes.is_empty() {
                let msg = format!(
                    "{} was built for schema {}, and the database is at {} after migrations that contract it: {}; the release cannot run on it",
                    to.id,
                    built_for.map_or("none".into(), |v| v.to_string()),
                    now.map_or("none".into(), |v| v.to_string()),
                    migrate::contract::describe(&changes)
                );
                if req.force {
                    steps.push(format!("{msg} (forced)"));
                } else {
                    refusals.push(format!(
                        "{msg}; roll back with `--full` (the app and the database together), or pass --force to switch only the app anyway"
                    ));
                }
            }
        }
    }
    if db(req.mode) {
        let Some(database) = &env.database else {
            return Err(setup(format!(
                "environment `{}` has no database to roll back",
                env.name
            )));
        };
        let settings = database.settings(env.strict).map_err(setup)?;
        schema_now = migrate::status(&settings)
            .await
            .map_err(|e| setup(e.to_string()))?
            .current
            .map(|v| v.to_string());
        let want = to.schema_version.clone();
        match req.db_strategy {
            DbStrategy::Down => {
                if schema_now == want {
                    steps.push(format!(
                        "the database is already at schema {}: nothing to revert",
                        want.as_deref().unwrap_or("none")
                    ));
                } else {
                    steps.push(format!(
                        "take a safety snapshot, then run down migrations from schema {} to {}",
                        schema_now.as_deref().unwrap_or("none"),
                        want.as_deref().unwrap_or("none")
                    ));
                }
            }
            DbStrategy::Restore => {
                // The backup that holds `to`'s schema: named, else the first one taken after
                // `to` (before the next release migrated), else any with that schema.
                let id = match &req.backup {
                    Some(b) => Some(b.clone()),
                    None => {
                        // Backups taken before later releases migrated. The newest that holds
                        // the release's schema loses the least; failing that, the oldest (the
                        // refusal below then explains the mismatch).
                        let mut later: Vec<&ReleaseRecord> = releases
                            .iter()
                            .filter(|r| r.created_at > to.created_at && r.backup_id.is_some())
                            .collect();
                        later.sort_by_key(|r| std::cmp::Reverse(r.created_at));
                        let holds = |r: &&ReleaseRecord| {
                            r.backup_id
                                .as_deref()
                                .and_then(|b| backup::find(&env.backup.dir, b).ok())
                                .is_some_and(|m| m.schema_version.map(|v| v.to_string()) == want)
                        };
                        later
                            .iter()
                            .copied()
                            .find(holds)
                            .or(later.last().copied())
                            .and_then(|r| r.backup_id.clone())
                    }
                };
                match id {
                    None if schema_now == want => steps.push(format!(
                        "the database is already at schema {}: nothing to restore (name a backup with --backup to restore data anyway)",
                        want.as_deref().unwrap_or("none")
                    )),
                    None => refusals.push(format!(
                        "no recorded backup holds schema {} (the database is at {}): name one with --backup ID, or use --db-strategy down",
                        want.as_deref().unwrap_or("none"),
                        schema_now.as_deref().unwrap_or("none")
                    )),
                    Some(id) => {
                        let m = backup::find(&env.backup.dir, &id).map_err(|e| setup(e.to_string()))?;
                        let taken = crate::time::parse_rfc3339(&m.finished_at).unwrap_or(0);
                        let age_s = (now_ms() / 1000 - taken).max(0);
                        let held = m.schema_version.map(|v| v.to_string());
                        if held != want {
                            let msg = format!(
                                "backup {id} holds schema {}, but release {} runs on schema {}: restoring it would leave the release on a schema it was not built for",
                                held.as_deref().unwrap_or("none"),
                                to.id,
                                want.as_deref().unwrap_or("none")
                            );
                            if req.force {
                                steps.push(format!("{msg} (forced)"));
                            } else {
                                refusals.push(format!("{msg}; pass --force to restore it anyway"));
                            }
                        }
                        let how = swap::method(env, &settings.url).await;
                        let what = format!(
                            "backup {id} (schema {}, taken {}, {} ago)",
                            held.as_deref().unwrap_or("none"),
                            m.finished_at,
                            age(age_s)
                        );
                        let keeps = match how.method {
                            Method::Swap => {
                                let n = crate::db::swap::names(&settings.url, "<rollback id>")
                                    .map_err(|e| setup(e.to_string()))?;
                                let (live, staged, aside) = (n.live, n.staged, n.aside);
                                steps.push(format!(
                                    "restore {what} into a new database `{staged}` beside the live one (in parallel; the live database keeps serving), and check its schema fingerprint against the backup's"
                                ));
                                steps.push(if app(req.mode) {
                                    format!(
                                        "switch in one step: `{live}` is renamed `{aside}` (kept: the safety snapshot, no dump needed) and the restored database `{live}`, then {} is made live",
                                        to.id
                                    )
                                } else {
                                    format!(
                                        "switch in one step: `{live}` is renamed `{aside}` (kept: the safety snapshot, no dump needed) and the restored database `{live}`"
                                    )
                                });
                                format!("the database kept as `{aside}` has it")
                            }
                            Method::InPlace => {
                                steps.push(format!(
                                    "restore in place ({}): take a safety snapshot of the database as it is now",
                                    how.why.as_deref().unwrap_or("configured")
                                ));
                                steps.push(format!("restore {what} over it in one transaction"));
                                "the safety snapshot keeps it".into()
                            }
                        };
                        database_switch = Some(how);
                        data_loss = Some(format!(
                            "everything written to the database since {} ({} ago) is replaced by the backup; {keeps}",
                            m.finished_at,
                            age(age_s)
                        ));
                        choice = Some(BackupChoice {
                            id,
                            schema_version: m.schema_version,
                            taken_at: m.finished_at,
                            age_s,
                        });
                    }
                }
            }
        }
    }
    if app(req.mode)
        && database_switch
            .as_ref()
            .is_some_and(|d| d.method == Method::Swap)
        && steps
            .first()
            .is_some_and(|s| s.starts_with("switch the app") || s.starts_with("make "))
    {
        // The app switches with the database, in the switch step.
        steps.remove(0);
    }
    let checks = env.checks.len();
    steps.push(format!(
        "verify {} with the environment's {checks} check(s)",
        to.id
    ));
    steps.push("record the rollback, write the audit log, notify".into());
    Ok(RollbackPlan {
        environment: env.name.clone(),
        mode: req.mode,
        db_strategy: req.db_strategy,
        from,
        to,
        schema_now,
        backup: choice,
        database_switch,
        steps,
        data_loss,
        refusals,
    })
}

fn age(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
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
