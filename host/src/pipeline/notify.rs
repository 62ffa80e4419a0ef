//! Notifications: every transition goes to every notifier, in order, in the background.
//!
//! A failing notifier never fails a deployment: retryable errors are retried (three attempts,
//! honouring Retry-After up to 5 s), the rest are logged, and the run carries on. Sending
//! happens off the pipeline's path, so a slow chat service does not slow a deploy; the run
//! waits for the queue to drain only at its end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::events::Bus;
use crate::runtime::{CallContext, CallError, Event, EventKind, Plugin};

/// The queue to the notifiers of one run.
#[derive(Debug)]
pub struct Notifications {
    tx: Option<mpsc::UnboundedSender<Event>>,
    worker: Option<tokio::task::JoinHandle<Delivery>>,
    events: Arc<Bus>,
}

/// What was delivered.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Events delivered to a notifier.
    pub delivered: usize,
    /// Events a notifier could not take, with why.
    pub failed: Vec<String>,
}

const ATTEMPTS: u32 = 3;

impl Notifications {
    /// Starts the queue for `notifiers`; every event is also published on `events`.
    pub fn start(notifiers: Vec<Plugin>, ctx: CallContext, events: Arc<Bus>) -> Notifications {
        if notifiers.is_empty() {
            return Notifications {
                tx: None,
                worker: None,
                events,
            };
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let worker = tokio::spawn(async move {
            let mut report = Delivery::default();
            while let Some(event) = rx.recv().await {
                for plugin in &notifiers {
                    match deliver(plugin, &ctx, &event).await {
                        Ok(()) => report.delivered += 1,
                        Err(e) => {
                            tracing::warn!("notifier `{}`: {e}", plugin.name());
                            report.failed.push(format!("{}: {e}", plugin.name()));
                        }
                    }
                }
            }
            report
        });
        Notifications {
            tx: Some(tx),
            worker: Some(worker),
            events,
        }
    }

    /// Queues an event, and publishes it on the agent's event bus (the daemon's streams).
    pub fn send(&self, event: Event) {
        self.events.publish(&event);
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    /// Waits for every queued event to be delivered (or given up on).
    pub async fn finish(mut self) -> Delivery {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w.await.unwrap_or_default(),
            None => Delivery::default(),
        }
    }
}

/// An event a notifier did not take: how its last call failed, after how many attempts.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {attempts} attempt(s))")]
struct Undelivered {
    error: Box<CallError>,
    attempts: u32,
}

async fn deliver(plugin: &Plugin, ctx: &CallContext, event: &Event) -> Result<(), Undelivered> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match plugin.notify(ctx, event).await {
            Ok(()) => return Ok(()),
            Err(e) => match e.retry_after() {
                Some(after) if attempt < ATTEMPTS => {
                    let wait = after
                        .map_or(Duration::from_millis(200 * u64::from(attempt)), |ms| {
                            Duration::from_millis(ms.min(5_000))
                        });
                    tracing::info!(
                        "notifier `{}` asked to retry ({e}); attempt {} in {} ms",
                        plugin.name(),
                        attempt + 1,
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    return Err(Undelivered {
                        error: Box::new(e),
                        attempts: attempt,
                    });
                }
            },
        }
    }
}

/// Builds an event.
#[allow(clippy::too_many_arguments)]
pub fn event(
    kind: EventKind,
    environment: &str,
    deployment: &str,
    version: &str,
    actor: &str,
    stage: Option<&str>,
    summary: String,
    detail: Option<String>,
    duration: Option<Duration>,
) -> Event {
    Event {
        kind,
        environment: environment.to_string(),
        deployment_id: deployment.to_string(),
        version: version.to_string(),
        actor: actor.to_string(),
        stage: stage.map(str::to_string),
        summary,
        detail,
        duration_ms: duration.map(|d| d.as_millis() as u64),
        links: Vec::new(),
        at_ms: crate::store::now_ms() as u64,
    }
}
