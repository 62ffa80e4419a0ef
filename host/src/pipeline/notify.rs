//! Notifications: every transition goes to every notifier that hears it (its
//! `[plugins.NAME.notify]` filter: kinds, least severity), in order, in the background. The
//! agent judges each event's severity ([`severity`]).
//!
//! A failing notifier never fails a deployment: retryable errors are retried (three attempts,
//! honouring Retry-After up to 5 s), the rest are logged, and the run carries on. Sending
//! happens off the pipeline's path, so a slow chat service does not slow a deploy; the run
//! waits for the queue to drain only at its end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::events::{Bus, EventType};
use crate::config::{Config, Environment, NotifyFilter, Severity};
use crate::runtime::{CallContext, CallError, Event, EventKind, Plugin};

/// Who hears what: each notifier's filter, and whether the environment is strict (where an
/// automatic rollback is critical).
#[derive(Debug, Clone, Default)]
pub struct Audience {
    filters: std::collections::BTreeMap<String, NotifyFilter>,
    strict: bool,
}

impl Audience {
    /// The filters of `env`'s notifiers, as `config` declares them.
    pub fn of(config: &Config, env: &Environment) -> Audience {
        Audience {
            filters: env
                .notifiers
                .iter()
                .filter_map(|n| config.plugins.get(n).map(|p| (n.clone(), p.notify.clone())))
                .collect(),
            strict: env.strict,
        }
    }

    /// Whether `plugin` hears `event`.
    fn admits(&self, plugin: &str, event: &Event) -> bool {
        let kind = EventType::from(event.kind).as_str();
        self.filters
            .get(plugin)
            .is_none_or(|f| f.admits(kind, severity(event, self.strict)))
    }
}

/// How much `event` matters: progress is info; an awaited approval, a failed stage and an
/// operator's rollback are warnings; a failed run or job is an error; an automatic rollback
/// is critical in a strict environment (production was serving the failing release), an
/// error elsewhere.
pub fn severity(event: &Event, strict: bool) -> Severity {
    match event.kind {
        EventKind::Started
        | EventKind::StageStarted
        | EventKind::StageSucceeded
        | EventKind::Succeeded => Severity::Info,
        EventKind::ApprovalRequested | EventKind::StageFailed => Severity::Warning,
        EventKind::Failed => Severity::Error,
        // Automatic: the run's own `rollback` stage (its watch failed), or the agent itself.
        EventKind::RolledBack
            if event.stage.as_deref() == Some("rollback") || event.actor == "agent" =>
        {
            if strict {
                Severity::Critical
            } else {
                Severity::Error
            }
        }
        EventKind::RolledBack => Severity::Warning,
    }
}

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
    /// Events a notifier's filter kept from it.
    pub filtered: usize,
}

const ATTEMPTS: u32 = 3;

impl Notifications {
    /// Starts the queue for `notifiers` (each hears what `audience` says it does); every
    /// event is also published on `events`.
    pub fn start(
        notifiers: Vec<Plugin>,
        audience: Audience,
        ctx: CallContext,
        events: Arc<Bus>,
    ) -> Notifications {
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
                    if !audience.admits(plugin.name(), &event) {
                        report.filtered += 1;
                        continue;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_judges_each_events_severity() {
        let of = |kind, actor: &str, strict| {
            severity(
                &event(
                    kind,
                    "prod",
                    "r1",
                    "v1",
                    actor,
                    None,
                    String::new(),
                    None,
                    None,
                ),
                strict,
            )
        };
        let in_run = |strict| {
            let e = event(
                EventKind::RolledBack,
                "prod",
                "r1",
                "v1",
                "ci",
                Some("rollback"),
                String::new(),
                None,
                None,
            );
            severity(&e, strict)
        };
        assert_eq!(
            in_run(true),
            Severity::Critical,
            "a run's automatic rollback"
        );
        assert_eq!(in_run(false), Severity::Error);
        assert_eq!(of(EventKind::StageSucceeded, "ci", true), Severity::Info);
        assert_eq!(
            of(EventKind::ApprovalRequested, "ci", false),
            Severity::Warning
        );
        assert_eq!(of(EventKind::Failed, "ci", false), Severity::Error);
        assert_eq!(of(EventKind::RolledBack, "agent", true), Severity::Critical);
        assert_eq!(of(EventKind::RolledBack, "agent", false), Severity::Error);
        assert_eq!(of(EventKind::RolledBack, "alice", true), Severity::Warning);
    }
}
