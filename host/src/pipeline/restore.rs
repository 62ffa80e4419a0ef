//! Database restores journaled like a deploy step, and what becomes of a rollback or restore
//! whose agent died.
//!
//! `backup restore` runs under the environment's lock and is recorded as a rollback of mode
//! `restore` (who, why, which backup, the safety backup) before anything is written; an
//! emergency rollback is recorded the same way. A record still `running` when the lock is
//! free was interrupted: `status` says so, a deploy refuses to start over it, and
//! `recover` finishes it (the default: the operator asked for it) or, with `--rollback`,
//! undoes it. Both are safe at any point because each step is: the target switch is
//! idempotent, the safety backup is recorded before the restore starts, and a PostgreSQL
//! restore commits whole or not at all, so restoring again always lands on the backup.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::Agent;
use super::swap::{self, AppSwitch};
use super::{
    PipelineError, Recovery, RecoveryAction, Reporter, StageError, load_plugins, switch_back,
};
use crate::config::{Environment, KeyUse};
use crate::db::{backup, migrate};
use crate::runtime::CallContext;
use crate::store::{AuditEntry, Owner, RollbackRecord, Store, now_ms};
use crate::store::{ReleaseStatus, RollbackStatus};

/// A restore of a named backup over an environment's database.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The environment.
    pub environment: String,
    /// The backup.
    pub backup_id: String,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Take a safety backup of the database first.
    pub safety_backup: bool,
}

/// Restores a backup over the environment's database, under its lock, journaled: the record
/// exists (and says which backup, and the safety backup once taken) before anything changes.
pub async fn restore(
    agent: &Agent,
    req: &RestoreRequest,
    reporter: &dyn Reporter,
) -> Result<RollbackRecord, PipelineError> {
    let config = &*agent.config;
    let env = config
        .environment(&req.environment)
        .map_err(PipelineError::Setup)?;
    let store = agent.store.clone();
    let mut record = RollbackRecord {
        id: super::new_id(),
        environment: env.name.clone(),
        initiator: "operator".into(),
        mode: "restore".into(),
        backup_id: Some(req.backup_id.clone()),
        actor: req.actor.clone(),
        reason: Some(req.reason.clone()),
        status: RollbackStatus::Running,
        started_at: now_ms(),
        ..Default::default()
    };
    let (lease, _) = store
        .acquire(
            &env.name,
            &Owner::this_process(),
            &record.lease_subject(),
            env.deploy.lock_lease,
        )
        .await?;
    refuse_over_unfinished(&store, env).await?;
    store.save_rollback(&record).await?;
    let result = restore_steps(env, &store, &mut record, req.safety_backup, reporter).await;
    record.status = if result.is_ok() {
        RollbackStatus::Succeeded
    } else {
        RollbackStatus::Failed
    };
    record.detail = Some(match &result {
        Ok(done) => done.clone(),
        Err(e) => e.to_string(),
    });
    record.finish();
    store.save_rollback(&record).await?;
    store
        .audit(AuditEntry {
            actor: req.actor.clone(),
            action: "backup.restore".into(),
            environment: Some(env.name.clone()),
            subject: Some(req.backup_id.clone()),
            why: Some(req.reason.clone()),
            detail: record.detail.clone(),
        })
        .await?;
    lease.release().await?;
    result?;
    Ok(record)
}

async fn restore_steps(
    env: &Environment,
    store: &Store,
    record: &mut RollbackRecord,
    safety: bool,
    reporter: &dyn Reporter,
) -> Result<String, StageError> {
    let (url, bs) = database(env)?;
    let id = record.backup_id.clone().unwrap_or_default();
    let manifest = backup::find(&bs.dir, &id)?;
    if safety {
        let taken = safety_backup(env, record, &url, &bs).await?;
        store.save_rollback(record).await?;
        reporter.note(&format!("safety backup {taken} taken"));
    }
    super::failpoint::hit("before", "restore");
    backup::restore(&manifest, &bs.dir, bs.key.as_ref(), &url).await?;
    Ok(format!(
        "restored {id} (schema {}){}",
        manifest
            .schema_version
            .map_or("none".into(), |v| v.to_string()),
        record
            .safety_backup
            .as_deref()
            .map(|s| format!("; safety backup {s}"))
            .unwrap_or_default()
    ))
}

/// The environment's database URL and backup settings.
fn database(env: &Environment) -> Result<(String, backup::BackupSettings), StageError> {
    let db = env
        .database
        .as_ref()
        .ok_or_else(|| StageError::Config(format!("environment `{}` has no database", env.name)))?;
    let url = db.settings(env.strict).map_err(StageError::Config)?.url;
    let backup = env
        .backup
        .settings(&env.name, KeyUse::Read)
        .map_err(StageError::Config)?;
    Ok((url, backup))
}

/// Takes the snapshot a restore is undone with, and records it on `record`.
pub(crate) async fn safety_backup(
    env: &Environment,
    record: &mut RollbackRecord,
    url: &str,
    bs: &backup::BackupSettings,
) -> Result<String, StageError> {
    let safety = backup::create(
        url,
        bs,
        &record.actor,
        &format!("safety snapshot before {} {}", record.mode, record.id),
        Arc::new(AtomicU64::new(0)),
    )
    .await
    .map_err(|cause| StageError::SafetySnapshot {
        environment: env.name.clone(),
        cause: Box::new(cause),
    })?;
    record.safety_backup = Some(safety.id.clone());
    Ok(safety.id)
}

/// Refuses to start over a rollback or restore whose agent died (the caller holds the lock,
/// so every record still running is one).
pub(crate) async fn refuse_over_unfinished(
    store: &Store,
    env: &Environment,
) -> Result<(), PipelineError> {
    let unfinished = store.unfinished_rollbacks(&env.name).await?;
    match unfinished.first() {
        None => Ok(()),
        Some(r) => Err(PipelineError::Setup(format!(
            "environment `{}` has an interrupted {} {} (stopped in {}, by {}): finish it with `deploy-agent recover --env {}`, or undo it with `--rollback`, before anything else runs",
            env.name,
            if r.mode == "restore" {
                "restore"
            } else {
                "rollback"
            },
            r.id,
            r.stopped_in(),
            r.actor,
            env.name
        ))),
    }
}

/// Finishes (or, with `undo`, reverts) every rollback and restore of the environment whose
/// agent died, under the environment's lock.
pub(crate) async fn settle_unfinished(
    agent: &Agent,
    env: &Environment,
    store: &Store,
    undo: bool,
    actor: &str,
    reporter: &dyn Reporter,
) -> Result<Vec<Recovery>, PipelineError> {
    if store.unfinished_rollbacks(&env.name).await?.is_empty() {
        return Ok(Vec::new());
    }
    let (lease, _) = store
        .acquire(
            &env.name,
            &Owner::this_process(),
            "recover-rollbacks",
            env.deploy.lock_lease,
        )
        .await?;
    let mut recovered = Vec::new();
    let mut failure = None;
    for mut record in store.unfinished_rollbacks(&env.name).await? {
        let stopped = record.stopped_in();
        let done = if undo {
            undo_one(agent, env, store, &record).await
        } else {
            finish_one(agent, env, store, &mut record).await
        };
        let (action, status) = if undo {
            (RecoveryAction::Undone, RollbackStatus::Undone)
        } else {
            (RecoveryAction::Finished, RollbackStatus::Succeeded)
        };
        match done {
            Ok(said) => {
                let detail = format!(
                    "{} {} (stopped in {stopped}) {action}: {said}",
                    record.mode, record.id
                );
                record.status = status;
                record.detail = Some(format!("interrupted; {action} by recover: {said}"));
                record.finish();
                store.save_rollback(&record).await?;
                reporter.note(&detail);
                store
                    .audit(AuditEntry {
                        actor: actor.to_string(),
                        action: format!("rollback.{action}"),
                        environment: Some(env.name.clone()),
                        subject: Some(record.id.clone()),
                        why: Some("interrupted".into()),
                        detail: Some(detail.clone()),
                    })
                    .await?;
                recovered.push(Recovery {
                    deployment_id: record.id.clone(),
                    stopped_in: Some(stopped.to_string()),
                    action,
                    detail,
                });
            }
            Err(e) => {
                failure = Some(PipelineError::Setup(format!(
                    "{} {} could not be {action}: {e}; it stays interrupted (run `deploy-agent recover --env {}` again)",
                    record.mode, record.id, env.name
                )));
                break;
            }
        }
    }
    lease.release().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(recovered),
    }
}

/// Carries an interrupted rollback or restore to its end: each step again, idempotently.
async fn finish_one(
    agent: &Agent,
    env: &Environment,
    store: &Store,
    record: &mut RollbackRecord,
) -> Result<String, StageError> {
    let config = &*agent.config;
    let mut said = Vec::new();
    // The release to make live, and what becomes of the one it leaves: going back marks it
    // `rolled_back`; going forward (`--to` a newer release) does not.
    let app = match (record.mode.as_str(), record.to_release.clone()) {
        ("app" | "full", Some(to)) => {
            let releases = store.releases(&env.name).await?;
            let created = |id: &str| releases.iter().find(|r| r.id == id).map(|r| r.created_at);
            let left = record
                .from_release
                .clone()
                .filter(|from| *from != to && created(from) > created(&to))
                .map(|from| (from, ReleaseStatus::RolledBack));
            Some((to, left))
        }
        _ => None,
    };
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: record.id.clone(),
    };
    if record.database_swap.is_some() {
        // A swap: carried on from the phase it recorded, the app with the database.
        let (url, bs) = database(env)?;
        let plugins = match app {
            Some(_) => Some(load_plugins(agent, env)?),
            None => None,
        };
        let app_switch = plugins.as_ref().zip(app).map(|(p, (to, left))| AppSwitch {
            target: &p.target,
            ctx: ctx.clone(),
            to,
            left,
        });
        let mut notes = Vec::new();
        let mut note = |_: &'static str, _: std::time::Instant, detail: String| notes.push(detail);
        swap::carry(env, store, record, &url, &bs, app_switch, &mut note).await?;
        said.extend(notes);
        return Ok(verified(config, env, record, said).await);
    }
    if let Some((to, left)) = &app {
        let plugins = load_plugins(agent, env)?;
        let left = left.as_ref().map(|(id, s)| (id.as_str(), *s));
        let live = switch_back(store, &plugins.target, &ctx, env, to, left).await?;
        said.push(format!("{live} is live"));
    }
    if matches!(record.mode.as_str(), "db" | "full" | "restore") {
        let (url, bs) = database(env)?;
        if record.safety_backup.is_none() {
            // The restore starts only once the safety backup is recorded: the database is
            // as it was, so this is the snapshot the interrupted run did not get to take.
            let taken = safety_backup(env, record, &url, &bs).await?;
            store.save_rollback(record).await?;
            said.push(format!("safety backup {taken} taken"));
        }
        match &record.backup_id {
            Some(id) => {
                let m = backup::find(&bs.dir, id)?;
                backup::restore(&m, &bs.dir, bs.key.as_ref(), &url).await?;
                said.push(format!("{id} restored"));
            }
            None => {
                // A rollback by down migrations: revert to the schema of the release it
                // returns to (each revert is its own transaction, so this resumes it).
                let want = match &record.to_release {
                    Some(to) => store
                        .releases(&env.name)
                        .await?
                        .into_iter()
                        .find(|r| &r.id == to)
                        .and_then(|r| r.schema_version)
                        .and_then(|v| v.parse::<i64>().ok()),
                    None => None,
                };
                let settings = env
                    .database
                    .as_ref()
                    .ok_or_else(|| StageError::Config("no database".into()))?
                    .settings(env.strict)
                    .map_err(StageError::Config)?;
                let reverted = migrate::revert(&settings, Some(want.unwrap_or(0))).await?;
                said.push(format!("reverted {} more migration(s)", reverted.len()));
            }
        }
    }
    Ok(verified(config, env, record, said).await)
}

/// `said`, then what the checks of the release a recovered rollback made live say.
async fn verified(
    config: &crate::config::Config,
    env: &Environment,
    record: &RollbackRecord,
    mut said: Vec<String>,
) -> String {
    if let Some(to) = &record.to_release {
        let rounds = super::verify_release(config, env, to, None).await;
        said.push(match rounds.failed {
            None => format!("{} check(s) passed on {to}", env.checks.len()),
            Some(f) => format!("{to} fails its checks: {f}"),
        });
    }
    said.join("; ")
}

/// Reverts an interrupted rollback or restore: the database back to its safety backup (when
/// the restore had started), the app back to the release that was live.
async fn undo_one(
    agent: &Agent,
    env: &Environment,
    store: &Store,
    record: &RollbackRecord,
) -> Result<String, StageError> {
    let mut said = Vec::new();
    if record.database_swap.is_some() {
        let (url, _) = database(env)?;
        said.push(swap::undo(&url, record).await?);
    } else if record.mode != "app" {
        match &record.safety_backup {
            Some(id) => {
                let (url, bs) = database(env)?;
                let m = backup::find(&bs.dir, id)?;
                backup::restore(&m, &bs.dir, bs.key.as_ref(), &url).await?;
                said.push(format!("the database is back to its safety backup {id}"));
            }
            None => said.push("the database was not touched".into()),
        }
    }
    if matches!(record.mode.as_str(), "app" | "full")
        && let Some(from) = &record.from_release
    {
        let plugins = load_plugins(agent, env)?;
        let ctx = CallContext {
            environment: env.name.clone(),
            deployment_id: record.id.clone(),
        };
        let live = switch_back(store, &plugins.target, &ctx, env, from, None).await?;
        said.push(format!("{live} is live again"));
    }
    Ok(said.join("; "))
}
