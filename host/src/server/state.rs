//! What the handlers share: the agent, the run queue, readiness and shutdown.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::http::HeaderMap;
use tokio::sync::watch;

use super::auth::{self, Caller};
use super::error::{ApiError, ApiResult};
use super::queue::Queue;
use super::session::Sessions;
use crate::config::Role;
use crate::pipeline::Agent;
use crate::runtime::secrets::SecretValue;
use crate::store::AuditEntry;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The agent: configuration (fixed for the daemon's life), state store, kept plugins,
    /// event bus.
    pub agent: Arc<Agent>,
    /// The run queue.
    pub queue: Arc<Queue>,
    /// Plugins loaded, workers started.
    pub ready: AtomicBool,
    /// SIGTERM received.
    pub stopping: AtomicBool,
    /// The GitHub webhook secret, resolved at start.
    pub github_secret: Option<SecretValue>,
    /// Turns `true` at shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// The web console's signed-in sessions.
    pub console: Sessions,
}

impl AppState {
    /// The caller a request's token names.
    pub fn caller(&self, headers: &HeaderMap) -> ApiResult<Caller<'_>> {
        auth::authenticate(&self.agent.config.server.tokens, headers)
    }

    /// Refuses an environment the caller may not act on, or that does not exist.
    pub fn known_env(&self, caller: &Caller<'_>, needed: Role, env: &str) -> ApiResult<()> {
        caller.require_env(needed, env)?;
        if self.agent.config.environments.contains_key(env) {
            Ok(())
        } else {
            Err(ApiError::not_found("environment"))
        }
    }

    /// Writes an audit entry for an API action (logged if the store cannot take it).
    pub async fn audit(
        &self,
        caller: &str,
        action: &str,
        env: &str,
        subject: &str,
        why: Option<&str>,
    ) {
        if let Err(e) = self
            .agent
            .store
            .audit(AuditEntry {
                actor: caller.to_string(),
                action: action.to_string(),
                environment: Some(env.to_string()),
                subject: Some(subject.to_string()),
                why: why.map(str::to_string),
                detail: Some("via the API".into()),
            })
            .await
        {
            tracing::error!("audit: {e}");
        }
    }
}
