//! The application object: what the CLI and the daemon both build, once per process, and
//! every pipeline entry point takes.
//!
//! It holds the configuration, the state store (for views, decisions and the audit log), the
//! plugins when they are kept loaded (the daemon's choice: its configuration is fixed while
//! it runs), and the event bus the notifications are published on (the daemon's streams read
//! it). There are no process-wide globals besides: two agents in one process (the tests, a
//! future multi-config daemon) do not share a plugin cache or an event stream.
//!
//! A run opens its own connection to the state store, so a long run never holds the one the
//! edges read and decide through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::events::Bus;
use super::open_store;
use crate::config::Config;
use crate::runtime::{Plugin, Runtime, RuntimeError};
use crate::store::{
    Approval, AuditEntry, Decision, Deployment, LockHolder, ReleaseRecord, ReleaseStatus,
    RollbackRecord, RollbackStatus, RunStatus, Step, Store, StoreError, interrupted,
};

/// The application.
pub struct Agent {
    /// The configuration, fixed for the agent's life.
    pub config: Arc<Config>,
    /// The state store.
    pub store: Store,
    plugins: Option<Mutex<HashMap<String, Plugin>>>,
    events: Arc<Bus>,
    runtime: OnceLock<Runtime>,
    server: OnceLock<String>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config.path)
            .field("store", &self.store)
            .field("keeps_plugins", &self.plugins.is_some())
            .finish()
    }
}

/// Why a decision on a waiting run was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// Nothing is waiting: an unknown run, already decided, or expired.
    #[error("run {0} is not waiting for a decision (unknown run, already decided, or expired)")]
    NotWaiting(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An environment as the store has it, with what is really running: the one status view the
/// CLI and the API both show.
#[derive(Debug, Clone)]
pub struct EnvironmentStatus {
    /// The live release.
    pub live: Option<ReleaseRecord>,
    /// Who holds the lock.
    pub lock: Option<LockHolder>,
    /// The newest run, as journaled.
    pub last: Option<Deployment>,
    /// Whether it is journaled `running` but its agent is gone.
    pub last_interrupted: bool,
    /// The newest run's journal.
    pub steps: Vec<Step>,
    /// The newest rollback or restore, `interrupted` when its agent is gone.
    pub last_rollback: Option<RollbackRecord>,
    /// Rollbacks and restores whose agent died part-way: nothing else runs until `recover`
    /// finishes or undoes them.
    pub interrupted: Vec<RollbackRecord>,
}

impl Agent {
    /// Builds the agent for a configuration: opens (and upgrades) its state store.
    pub async fn open(config: Config) -> Result<Agent, StoreError> {
        let store = open_store(&config).await?;
        Ok(Agent {
            config: Arc::new(config),
            store,
            plugins: None,
            events: Arc::new(Bus::default()),
            runtime: OnceLock::new(),
            server: OnceLock::new(),
        })
    }

    /// The sandbox's runtime (its engine), started on first use and kept for the agent's life.
    pub(crate) fn runtime(&self) -> Result<&Runtime, RuntimeError> {
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let r = Runtime::pooled(self.config.cache_dir())?;
        Ok(self.runtime.get_or_init(|| r))
    }

    /// Keeps loaded plugins for the agent's life, so each run does not read, verify and link
    /// them again: the daemon's choice (a changed plugin file or secret takes a restart). The
    /// one-shot commands load afresh.
    pub fn keeping_plugins(mut self) -> Agent {
        self.plugins = Some(Mutex::default());
        self
    }

    /// Records the daemon's URL, once it listens: what a waiting run tells people to pass as
    /// `--server` to approve it from anywhere.
    pub fn serving_at(&self, url: String) {
        let _ = self.server.set(url);
    }

    /// The daemon's URL, when this agent is a daemon's.
    pub fn server_url(&self) -> Option<&str> {
        self.server.get().map(String::as_str)
    }

    /// Where the runs' events are published.
    pub fn events(&self) -> &Arc<Bus> {
        &self.events
    }

    /// A kept plugin, by its cache key.
    pub(crate) fn kept(&self, key: &str) -> Option<Plugin> {
        let kept = self.plugins.as_ref()?;
        kept.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Keeps a plugin, when this agent keeps them.
    pub(crate) fn keep(&self, key: String, plugin: &Plugin) {
        if let Some(kept) = &self.plugins {
            kept.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, plugin.clone());
        }
    }

    /// Approves or rejects a run waiting at a gate, and writes the audit entry: the one way
    /// the CLI, the API and the console decide. `via` says through what (`the API`).
    pub async fn decide(
        &self,
        run: &str,
        decision: Decision,
        who: &str,
        reason: &str,
        via: Option<&str>,
    ) -> Result<Approval, DecideError> {
        let a = self
            .store
            .decide(run, decision, who, reason)
            .await?
            .ok_or_else(|| DecideError::NotWaiting(run.to_string()))?;
        let mut detail = format!("gate {}", a.gate);
        if let Some(via) = via {
            detail.push_str(&format!(", via {via}"));
        }
        self.store
            .audit(AuditEntry {
                actor: who.to_string(),
                action: format!("approval.{}", decision.word()),
                environment: Some(a.environment.clone()),
                subject: Some(a.deployment_id.clone()),
                why: Some(reason.to_string()),
                detail: Some(detail),
            })
            .await?;
        Ok(a)
    }

    /// An environment's status (see [`EnvironmentStatus`]).
    pub async fn status(&self, environment: &str) -> Result<EnvironmentStatus, StoreError> {
        let store = &self.store;
        let lock = store.lock_holder(environment).await?;
        let live = store
            .releases(environment)
            .await?
            .into_iter()
            .find(|r| r.state == ReleaseStatus::Live);
        let last = store.deployments(environment, 1).await?.into_iter().next();
        let last_interrupted = last
            .as_ref()
            .is_some_and(|d| d.status == RunStatus::Running && interrupted(lock.as_ref(), &d.id));
        let steps = match &last {
            Some(d) => store.steps(&d.id).await?,
            None => Vec::new(),
        };
        let cut_short: Vec<RollbackRecord> = store
            .unfinished_rollbacks(environment)
            .await?
            .into_iter()
            .filter(|r| interrupted(lock.as_ref(), &r.lease_subject()))
            .map(|r| RollbackRecord {
                status: RollbackStatus::Interrupted,
                ..r
            })
            .collect();
        let mut last_rollback = store.rollbacks(environment).await?.into_iter().next();
        if let Some(r) = last_rollback.as_mut()
            && r.status == RollbackStatus::Running
            && interrupted(lock.as_ref(), &r.lease_subject())
        {
            r.status = RollbackStatus::Interrupted;
        }
        Ok(EnvironmentStatus {
            live,
            lock,
            last,
            last_interrupted,
            steps,
            last_rollback,
            interrupted: cut_short,
        })
    }
}
