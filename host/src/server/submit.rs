//! Submitting a run to the queue: the one way in for the API's trigger and the webhooks.

use std::sync::atomic::Ordering;

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::pipeline::new_id;
use crate::store::{QueueItem, QueueState, now_ms};

/// Queues a run (the API's trigger and the webhook's), audited.
pub async fn submit(
    state: &AppState,
    environment: &str,
    version: Option<String>,
    artifact: Option<String>,
    actor: String,
    reason: Option<String>,
    source: &str,
) -> ApiResult<QueueItem> {
    if state.stopping.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("shutting down"));
    }
    // An artifact named by a caller must lie under a root the environment grants, checked
    // on the resolved path before anything under it is read (and off the async workers).
    let artifact = match artifact {
        None => None,
        Some(path) => {
            let roots = state
                .agent
                .config
                .environment(environment)
                .map(|e| e.artifact.roots.clone())
                .unwrap_or_default();
            let asked = std::path::PathBuf::from(&path);
            let checked = tokio::task::spawn_blocking(move || {
                crate::pipeline::artifact::within_roots(&asked, &roots)
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
            match checked {
                Ok(real) => Some(real.to_string_lossy().into_owned()),
                Err(e) => {
                    let why = e.to_string();
                    state
                        .audit(&actor, "deploy.refused", environment, &path, Some(&why))
                        .await;
                    return Err(ApiError::unprocessable(why));
                }
            }
        }
    };
    let item = state
        .queue
        .push(QueueItem {
            id: new_id(),
            seq: 0,
            environment: environment.to_string(),
            version,
            artifact,
            actor: actor.clone(),
            reason,
            source: source.to_string(),
            state: QueueState::Queued,
            enqueued_at: now_ms(),
            started_at: None,
            finished_at: None,
            outcome: None,
            claimed_by: None,
            claimed_instance: None,
        })
        .await?;
    state
        .audit(
            &actor,
            "deploy.queued",
            environment,
            &item.id,
            item.reason.as_deref(),
        )
        .await;
    Ok(item)
}
