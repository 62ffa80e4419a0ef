//! Runs queued per environment: one at a time per environment, environments in parallel,
//! the queue in the state store.
//!
//! A trigger is written to the store's `queue` table (with the run id it will have) before the
//! API answers, so a restart loses none. Each environment has one worker task per agent that
//! claims its items in order ([`crate::store::Store::claim`]: one statement, so of several
//! agents sharing a PostgreSQL store exactly one gets each item, and none starts an item while
//! an older one of the environment is still running). An item is claimed `running` before its
//! run starts and marked `done` after it ends. An item left `running` by an agent that died (its
//! heartbeat lapsed, its process is gone) or stopped is taken over by a worker serving the
//! environment, and its run resumed from the journal (or rolled back) under the same id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, watch};

use crate::config::OnInterrupt;
use crate::pipeline::{self, Agent, Quiet, RecoveryAction, Request, recover};
use crate::store::{Claim, Claimant, Owner, QueueItem, StoreError};
use crate::store::{QueueState, RunStatus};

/// The queue and its workers.
#[derive(Debug)]
pub struct Queue {
    agent: Arc<Agent>,
    envs: HashMap<String, Arc<EnvSlot>>,
    stop: watch::Receiver<bool>,
    /// This agent's name in the fleet and its process.
    name: String,
    instance: Owner,
    /// How often to look for work other agents queued or left behind (a shared store).
    poll: Option<Duration>,
}

/// One environment's worker state.
#[derive(Debug, Default)]
pub struct EnvSlot {
    wake: Notify,
    /// Held while a run (or an API rollback) acts on the environment.
    pub busy: Mutex<()>,
    /// The run in progress, if any.
    pub current: std::sync::Mutex<Option<String>>,
}

/// How long to wait before trying again when another agent holds the environment's lock.
const LOCKED_RETRY: Duration = Duration::from_millis(500);

/// How often a worker on a shared (PostgreSQL) store looks for work queued through another
/// agent, or left behind by a dead one.
const POLL: Duration = Duration::from_secs(1);

impl Queue {
    /// The queue for the agent's environments, claiming work as agent `name`; call
    /// [`Queue::start`] to run it.
    pub fn new(
        agent: Arc<Agent>,
        stop: watch::Receiver<bool>,
        name: String,
        shared: bool,
    ) -> Queue {
        let envs = agent
            .config
            .environments
            .keys()
            .map(|e| (e.clone(), Arc::new(EnvSlot::default())))
            .collect();
        Queue {
            agent,
            envs,
            stop,
            name,
            instance: crate::store::this_process().clone(),
            poll: shared.then_some(POLL),
        }
    }

    /// An environment's slot.
    pub fn slot(&self, environment: &str) -> Option<&Arc<EnvSlot>> {
        self.envs.get(environment)
    }

    /// Starts one worker per environment; returns their handles (they end at shutdown).
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.envs
            .keys()
            .map(|env| {
                let q = self.clone();
                let env = env.clone();
                tokio::spawn(async move { q.work(&env).await })
            })
            .collect()
    }

    /// Queues a run and wakes its environment's worker.
    pub async fn push(&self, item: QueueItem) -> Result<QueueItem, StoreError> {
        let queued = self.agent.store.enqueue(&item).await?;
        if let Some(slot) = self.envs.get(&item.environment) {
            slot.wake.notify_one();
        }
        Ok(queued)
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn work(&self, environment: &str) {
        let Some(slot) = self.envs.get(environment).cloned() else {
            return;
        };
        let mut stop = self.stop.clone();
        loop {
            if self.stopping() {
                return;
            }
            let who = Claimant {
                name: &self.name,
                instance: &self.instance,
            };
            let claimed = match self.agent.store.claim(environment, &who).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(environment, "the queue cannot be read: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(LOCKED_RETRY) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            };
            let Some(claim) = claimed else {
                let poll = self.poll.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = slot.wake.notified() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                continue;
            };
            let item = match claim {
                Claim::Next(item) => item,
                Claim::TakenOver { item, from, why } => {
                    super::fleet::announce_takeover(
                        &self.agent,
                        &self.name,
                        &item,
                        from.as_deref(),
                        &why,
                    )
                    .await;
                    item
                }
            };
            let guard = slot.busy.lock().await;
            *slot
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(item.id.clone());
            let retry = self.run(&item).await;
            *slot
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            drop(guard);
            if retry {
                tokio::select! {
                    _ = tokio::time::sleep(LOCKED_RETRY) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Records that an item is done. A store that cannot take it is logged with the run and
    /// the outcome: the item stays `running` and the next start settles it from the journal.
    async fn finished(&self, item: &QueueItem, outcome: &str) {
        if let Err(e) = self
            .agent
            .store
            .queue_finished(&item.id, QueueState::Done, outcome)
            .await
        {
            tracing::error!(
                run = item.id,
                outcome,
                "cannot record the queue item as done ({e}); the next start settles it from the run's journal"
            );
        }
    }

    /// Runs one item to its end (or its suspension); returns whether to retry it later.
    async fn run(&self, item: &QueueItem) -> bool {
        let config = &*self.agent.config;
        let Ok(env) = config.environment(&item.environment) else {
            self.finished(item, "error: the environment is no longer configured")
                .await;
            return false;
        };
        let request = match self.request_for(env, item).await {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            // The dead agent's environment lock has not expired yet: its lease will.
            Err(pipeline::PipelineError::Store(StoreError::Locked { holder, .. })) => {
                tracing::info!(
                    run = item.id,
                    holder,
                    "the environment is still locked; waiting"
                );
                return true;
            }
            Err(e) => {
                tracing::error!(run = item.id, "cannot start: {e}");
                self.finished(item, &format!("error: {e}")).await;
                return false;
            }
        };
        tracing::info!(run = item.id, environment = item.environment, "run starts");
        match pipeline::deploy(&self.agent, &request, &Quiet).await {
            Ok(outcome) if outcome.deployment.status == RunStatus::Suspended => {
                tracing::info!(
                    run = item.id,
                    "run suspended for shutdown; the next start resumes it"
                );
                false
            }
            Ok(outcome) => {
                tracing::info!(
                    run = item.id,
                    status = %outcome.deployment.status,
                    "run ended"
                );
                self.finished(item, outcome.deployment.status.as_str())
                    .await;
                false
            }
            Err(pipeline::PipelineError::Store(StoreError::Locked { holder, .. })) => {
                tracing::info!(
                    run = item.id,
                    holder,
                    "the environment is locked by another agent; waiting"
                );
                true
            }
            Err(e) => {
                tracing::warn!(run = item.id, "could not start: {e}");
                self.finished(item, &format!("error: {e}")).await;
                false
            }
        }
    }

    /// The pipeline request for an item; `None` when there is nothing left to run (the run
    /// ended before the last daemon could record it, or was rolled back now).
    async fn request_for(
        &self,
        env: &crate::config::Environment,
        item: &QueueItem,
    ) -> Result<Option<Request>, pipeline::PipelineError> {
        let existing = self.agent.store.deployment(&item.id).await?;
        let mut request = match existing {
            // Ended while the last daemon was going down: record it.
            Some(d) if d.status != RunStatus::Running => {
                self.agent
                    .store
                    .queue_finished(&item.id, QueueState::Done, d.status.as_str())
                    .await?;
                return Ok(None);
            }
            // Interrupted (killed, or suspended at shutdown).
            Some(d) => {
                if env.deploy.on_interrupt == OnInterrupt::Rollback {
                    let done =
                        recover::recover(&self.agent, &env.name, true, "agent", &Quiet).await?;
                    let what = done
                        .recovered
                        .iter()
                        .find(|r| r.deployment_id == item.id)
                        .map_or(RecoveryAction::RolledBack, |r| r.action);
                    self.agent
                        .store
                        .queue_finished(&item.id, QueueState::Done, &format!("interrupted; {what}"))
                        .await?;
                    return Ok(None);
                }
                recover::resume_request(env, &d, &item.actor)?
            }
            None => Request {
                environment: item.environment.clone(),
                version: item.version.clone(),
                artifact: item.artifact.as_ref().map(std::path::PathBuf::from),
                actor: item.actor.clone(),
                reason: item.reason.clone(),
                id: Some(item.id.clone()),
                stop: None,
            },
        };
        request.stop = Some(self.stop.clone());
        Ok(Some(request))
    }
}
