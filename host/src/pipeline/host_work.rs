//! A host's part of a run of an environment that spans hosts, done by that host's own agent:
//! stage the release with its own target and files, verify it there, make it live there; or
//! put back the release the host had.
//!
//! The coordinating agent wrote the row ([`crate::store::Store::queue_hosts`]); this agent
//! claimed it. Each part is idempotent (the release id is the run id, so staging again finds
//! the release already made, and promoting a live release does nothing), so a row taken again
//! after this agent died is simply done again.

use super::*;
use crate::store::{HostAction, HostState, HostStep};

/// Does `step` on this host; the row as it should be recorded (release ids filled in), its
/// end state and what happened.
pub async fn execute(agent: &Agent, mut step: HostStep) -> (HostStep, HostState, String) {
    let outcome = match step.action {
        HostAction::Rollout => roll_out(agent, &mut step).await,
        HostAction::Rollback => roll_back(agent, &step).await,
    };
    match outcome {
        Ok(detail) => (step, HostState::Done, detail),
        Err(e) => (step, HostState::Failed, e.to_string()),
    }
}

fn context(step: &HostStep) -> CallContext {
    CallContext {
        environment: step.environment.clone(),
        deployment_id: step.run_id.clone(),
    }
}

async fn roll_out(agent: &Agent, step: &mut HostStep) -> Result<String, StageError> {
    let env = agent
        .config
        .environment(&step.environment)
        .map_err(StageError::Config)?;
    let run =
        agent.store.deployment(&step.run_id).await?.ok_or_else(|| {
            StageError::Refused(format!("run {} is not in the store", step.run_id))
        })?;
    let plugins = load_plugins(agent, env).map_err(|e| StageError::Plugins(Arc::new(e)))?;
    let target = &plugins.target;
    // This host's own copy of the artifact: the run's digest, or nothing goes live here.
    let request = Request {
        environment: env.name.clone(),
        version: Some(run.version.clone()),
        ..Default::default()
    };
    let (_, artifact) = artifact::artifact_for(env, &request, target)
        .await
        .map_err(|e| StageError::Refused(format!("the artifact on this host: {e}")))?;
    if run.digest.is_some() && artifact.digest != run.digest {
        return Err(StageError::Refused(format!(
            "this host's artifact is {} but the run deploys {}: build the same artifact on every host",
            artifact.digest.as_deref().unwrap_or("missing"),
            run.digest.as_deref().unwrap_or("?"),
        )));
    }
    let ctx = context(step);
    let staged = retrying("deploy", || target.deploy(&ctx, &artifact)).await?;
    let id = staged.release_id.clone();
    step.release_id = Some(id.clone());
    let (url, _) = wait_ready(target, &ctx, &id, &env.deploy, |what| {
        tracing::info!(release = id, "staging: {what}")
    })
    .await?;
    let url = url.or(staged.url);
    let list = env.checks_at(CheckStage::Verify);
    let subst = Subst {
        url,
        release: id.clone(),
        environment: env.name.clone(),
    };
    let rounds = check_rounds(&list, &subst, &agent.config.base_dir(), Duration::ZERO).await;
    if let Some(summary) = rounds.failed {
        return Err(StageError::CheckFailed {
            summary,
            evidence: rounds.results.into_iter().filter(|c| !c.passed).collect(),
        });
    }
    no_escaping_links(target).await?;
    retrying("promote", || target.promote(&ctx, &id)).await?;
    wait_live(target, &ctx, &id, &env.deploy, |what| {
        tracing::info!(release = id, "promoting: {what}")
    })
    .await?;
    agent
        .store
        .set_host_release(&env.name, &step.host, &id, &run.version, &step.run_id)
        .await?;
    let was = step
        .previous_release
        .as_deref()
        .map(|p| format!(" (was {p})"))
        .unwrap_or_default();
    Ok(format!(
        "{id} live{was}; {} check(s) passed",
        rounds.results.len()
    ))
}

async fn roll_back(agent: &Agent, step: &HostStep) -> Result<String, StageError> {
    let env = agent
        .config
        .environment(&step.environment)
        .map_err(StageError::Config)?;
    let plugins = load_plugins(agent, env).map_err(|e| StageError::Plugins(Arc::new(e)))?;
    let target = &plugins.target;
    let ctx = context(step);
    let Some(to) = step.previous_release.clone() else {
        return Ok("nothing was live on this host before the run: left as it is".into());
    };
    let live = retrying("rollback", || target.rollback(&ctx, Some(&to))).await?;
    wait_live(target, &ctx, &live, &env.deploy, |what| {
        tracing::info!(release = live, "rolling back: {what}")
    })
    .await?;
    let version = agent
        .store
        .releases(&env.name)
        .await?
        .into_iter()
        .find(|r| r.id == live)
        .map_or_else(|| live.clone(), |r| r.version);
    agent
        .store
        .set_host_release(&env.name, &step.host, &live, &version, &step.run_id)
        .await?;
    Ok(format!("{live} live again"))
}
