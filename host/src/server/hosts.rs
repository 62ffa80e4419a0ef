//! This agent's part in environments that span hosts: it takes the rows the coordinating
//! agents write for its host ([`crate::store::Store::claim_host_step`]) and does them with its
//! own target and files ([`crate::pipeline::host_work`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::pipeline::{Agent, host_work};
use crate::store::{AuditEntry, HostAction, HostState, HostStep, Owner, RunStatus};

/// How often an idle host worker looks for its host's rows.
const POLL: Duration = Duration::from_millis(250);

/// Starts the worker for host `name` if an environment of this agent lists it in `hosts`.
pub fn start(
    agent: Arc<Agent>,
    name: String,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let serves = agent
        .config
        .environments
        .values()
        .any(|e| e.rollout.as_ref().is_some_and(|r| r.hosts.contains(&name)));
    serves.then(|| tokio::spawn(work(agent, name, stop)))
}

async fn work(agent: Arc<Agent>, name: String, mut stop: watch::Receiver<bool>) {
    let instance = crate::store::this_process().clone();
    loop {
        if *stop.borrow() {
            return;
        }
        match agent.store.claim_host_step(&name, &instance).await {
            Ok(Some(step)) => one(&agent, step, &instance).await,
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(host = name, "looking for this host's work: {e}");
                tokio::time::sleep(POLL * 4).await;
            }
        }
    }
}

async fn one(agent: &Agent, step: HostStep, instance: &Owner) {
    let store = &agent.store;
    // A rollout whose run ended or was aborted before this host's turn is not started.
    if step.action == HostAction::Rollout {
        let live = match store.deployment(&step.run_id).await {
            Ok(Some(d)) => {
                d.status == RunStatus::Running
                    && store
                        .abort_requested(&step.run_id)
                        .await
                        .ok()
                        .flatten()
                        .is_none()
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(run = step.run_id, "reading the run: {e}");
                return;
            }
        };
        if !live {
            let why = "cancelled: the run ended before this host's turn";
            if let Err(e) = store
                .finish_host_step(&step, instance, HostState::Failed, why)
                .await
            {
                tracing::warn!(run = step.run_id, "{e}");
            }
            return;
        }
    }
    tracing::info!(
        run = step.run_id,
        environment = step.environment,
        "{} on this host",
        step.action
    );
    let (step, state, detail) = host_work::execute(agent, step).await;
    match store
        .finish_host_step(&step, instance, state, &detail)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                run = step.run_id,
                "this host's row was ended by the coordinator while it ran ({detail})"
            );
        }
        Err(e) => tracing::error!(run = step.run_id, "recording this host's result: {e}"),
    }
    let entry = AuditEntry {
        actor: format!("agent:{}", step.host),
        action: format!("host.{}.{}", step.action, state),
        environment: Some(step.environment.clone()),
        subject: Some(step.run_id.clone()),
        why: None,
        detail: Some(detail),
    };
    if let Err(e) = store.audit(entry).await {
        tracing::error!(run = step.run_id, "audit: {e}");
    }
}
