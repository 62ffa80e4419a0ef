//! Interrupted runs: what the next start does with a run whose agent died.
//!
//! A run is *resumed* when the same release is deployed again (every stage is idempotent
//! given what the run recorded), or *rolled back* (`on_interrupt = "rollback"`, or
//! `recover --rollback`): the target returns to the release live before the run, and if the
//! run's migrations moved the schema, the database is restored from the backup the run took.

use serde::Serialize;

use super::Agent;
use super::{
    Outcome, PipelineError, Recovery, RecoveryAction, Reporter, Request, StageError, load_plugins,
};
use crate::config::{Environment, OnInterrupt};
use crate::db::{backup, migrate};
use crate::runtime::{CallContext, Plugin};
use crate::store::{AuditEntry, Deployment, Owner, Store};
use crate::store::{ReleaseStatus, RunStatus};

/// What `recover` did.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    /// Each interrupted run and what became of it.
    pub recovered: Vec<Recovery>,
    /// The resumed run's outcome, when one was resumed.
    pub outcome: Option<Outcome>,
}

/// The stage a run is journaled in while it is being rolled back: if the agent dies there,
/// every later start rolls it back to the end (never resumes it).
pub const ROLLING_BACK: &str = "rollback";

/// Rolls an interrupted run back. Returns what it did, in words. Journaled as the run's
/// `rollback` step first, and idempotent, so an interruption anywhere in it is finished by
/// the next `recover` or deploy.
pub(crate) async fn roll_back(
    env: &Environment,
    store: &Store,
    target: &Plugin,
    old: &Deployment,
) -> Result<String, StageError> {
    let seq = store.step_started(&old.id, ROLLING_BACK).await?;
    let result = roll_back_steps(env, store, target, old).await;
    let (status, detail) = match &result {
        Ok(done) => ("done", done.clone()),
        Err(e) => ("failed", e.to_string()),
    };
    store
        .step_finished(&old.id, seq, status, Some(&detail))
        .await?;
    let said = result?;
    store
        .finish_deployment(
            &old.id,
            RunStatus::RolledBack,
            Some("interrupted; rolled back"),
        )
        .await?;
    Ok(said)
}

async fn roll_back_steps(
    env: &Environment,
    store: &Store,
    target: &Plugin,
    old: &Deployment,
) -> Result<String, StageError> {
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: old.id.clone(),
    };
    let mut said = Vec::new();
    if let Some(id) = &old.release_id {
        // Ask the target what is live: a crash can fall between its switch and our record.
        let live = target
            .list_releases(&ctx)
            .await?
            .into_iter()
            .find(|r| r.live)
            .map(|r| r.id);
        if live.as_deref() == Some(id.as_str()) {
            match &old.previous_release {
                Some(prev) => {
                    let now = super::switch_back(store, target, &ctx, env, prev, None).await?;
                    said.push(format!("release {id} was live; {now} is live again"));
                }
                None => said.push(format!(
                    "release {id} is live and no earlier release exists to return to: it stays"
                )),
            }
        } else {
            said.push(format!("release {id} was never promoted"));
        }
        if live.as_deref() != Some(id.as_str()) || old.previous_release.is_some() {
            store
                .set_release_state(&env.name, id, ReleaseStatus::Failed)
                .await?;
        }
    }
    if let Some(db) = &env.database {
        let settings = db.settings(env.strict).map_err(StageError::Refused)?;
        let current = migrate::status(&settings)
            .await?
            .current
            .map(|v| v.to_string());
        if current == old.schema_before {
            said.push("the database was not changed".into());
        } else {
            match &old.backup_id {
                Some(b) => {
                    let bs = env
                        .backup
                        .settings(&env.name, crate::config::KeyUse::Read)
                        .map_err(StageError::Refused)?;
                    let manifest = backup::find(&bs.dir, b)?;
                    backup::restore(&manifest, &bs.dir, bs.key.as_ref(), &settings.url)
                        .await?;
                    said.push(format!(
                        "database restored from {b} (schema {} -> {})",
                        current.as_deref().unwrap_or("none"),
                        old.schema_before.as_deref().unwrap_or("none")
                    ));
                }
                None => said.push(format!(
                    "the schema moved to {} and the run recorded no backup: the database is left as is",
                    current.as_deref().unwrap_or("none")
                )),
            }
        }
    }
    Ok(said.join("; "))
}

/// Says, audits and returns what became of an interrupted run.
pub(crate) async fn record(
    store: &Store,
    reporter: &dyn Reporter,
    actor: &str,
    env: &Environment,
    old: &Deployment,
    action: RecoveryAction,
    detail: String,
) -> Result<Recovery, PipelineError> {
    reporter.note(&detail);
    store
        .audit(AuditEntry {
            actor: actor.to_string(),
            action: format!("deploy.{}", action.as_str().replace(' ', "-")),
            environment: Some(env.name.clone()),
            subject: Some(old.id.clone()),
            why: Some("interrupted".into()),
            detail: Some(detail.clone()),
        })
        .await?;
    Ok(Recovery {
        deployment_id: old.id.clone(),
        stopped_in: old.stage.clone(),
        action,
        detail,
    })
}

/// Finds the environment's interrupted runs and resumes (the default) or rolls them back,
/// without starting anything new. What the daemon does on start; `deploy-agent recover`.
pub async fn recover(
    agent: &Agent,
    environment: &str,
    rollback: bool,
    actor: &str,
    reporter: &dyn Reporter,
) -> Result<Recovered, PipelineError> {
    let config = &*agent.config;
    let env = config
        .environment(environment)
        .map_err(PipelineError::Setup)?;
    let store = agent.store.clone();
    // Rollbacks and restores cut short first: finished, or undone with `--rollback`.
    let mut recovered =
        super::restore::settle_unfinished(agent, env, &store, rollback, actor, reporter).await?;
    let interrupted = store.running(&env.name).await?;
    let Some(newest) = interrupted.last().cloned() else {
        return Ok(Recovered {
            recovered,
            outcome: None,
        });
    };
    let being_rolled_back = interrupted
        .iter()
        .any(|d| d.stage.as_deref() == Some(ROLLING_BACK));
    if rollback || being_rolled_back || env.deploy.on_interrupt == OnInterrupt::Rollback {
        let plugins = load_plugins(agent, env)?;
        let owner = Owner::this_process();
        let (lease, _) = store
            .acquire(
                &env.name,
                &owner,
                &format!("recover-{}", newest.id),
                env.deploy.lock_lease,
            )
            .await?;
        let mut failure = None;
        for old in &interrupted {
            match roll_back(env, &store, &plugins.target, old).await {
                Ok(done) => {
                    let detail = format!("run {} of {} rolled back: {done}", old.id, old.version);
                    recovered.push(
                        record(
                            &store,
                            reporter,
                            actor,
                            env,
                            old,
                            RecoveryAction::RolledBack,
                            detail,
                        )
                        .await?,
                    );
                }
                Err(cause) => {
                    failure = Some(PipelineError::Recovery {
                        run: old.id.clone(),
                        cause,
                    });
                    break;
                }
            }
        }
        lease.release().await?;
        if let Some(e) = failure {
            return Err(e);
        }
        return Ok(Recovered {
            recovered,
            outcome: None,
        });
    }
    // Resume: deploy the same release again; the run is found and finished.
    let request = resume_request(env, &newest, actor)?;
    let outcome = super::deploy(agent, &request, reporter).await?;
    recovered.extend(outcome.recovered.iter().cloned());
    Ok(Recovered {
        recovered,
        outcome: Some(outcome),
    })
}

/// The request that resumes an interrupted run: the same version and artifact, refused when
/// the artifact changed since (the run would not be the same release). A run another agent
/// started (taken over in a fleet) resumes from this agent's own copy of the artifact, the
/// environment's configured one, when it has the digest the run recorded: the other host's
/// path is not this host's to read.
pub fn resume_request(
    env: &Environment,
    run: &Deployment,
    actor: &str,
) -> Result<Request, PipelineError> {
    let recorded_path = run.artifact.as_ref().map(std::path::PathBuf::from);
    let mut candidates = Vec::new();
    if run.host != crate::store::hostname()
        && let Some(own) = &env.artifact.path
    {
        candidates.push(own.clone());
    }
    candidates.extend(recorded_path.clone());
    let artifact = match &run.digest {
        Some(recorded) => {
            let matching = candidates.iter().find(|path| {
                super::digest(path)
                    .map(|d| format!("sha256:{d}"))
                    .is_ok_and(|now| now == *recorded)
            });
            match (matching, &recorded_path) {
                (Some(path), _) => Some(path.clone()),
                (None, None) => None,
                (None, Some(path)) => {
                    return Err(PipelineError::Setup(format!(
                        "cannot resume run {}: its artifact {} changed since (or is gone); roll it back with `deploy-agent recover --env {} --rollback`",
                        run.id,
                        path.display(),
                        env.name
                    )));
                }
            }
        }
        None => recorded_path,
    };
    Ok(Request {
        environment: env.name.clone(),
        version: Some(run.version.clone()),
        artifact,
        actor: actor.to_string(),
        reason: Some(format!("resuming interrupted run {}", run.id)),
        id: Some(run.id.clone()),
        ..Default::default()
    })
}
