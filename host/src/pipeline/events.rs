//! The process's event bus: every event the notifiers get, numbered, for the daemon's live
//! event streams.
//!
//! [`super::notify::Notifications::send`] publishes here, so a stream sees exactly what a
//! notifier sees, in the same order. The last [`HISTORY`] events are kept so a client that
//! connects late (or reconnects with `Last-Event-ID`) misses nothing recent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::runtime::{Event, EventKind};

/// Events kept for late subscribers.
pub const HISTORY: usize = 2048;

/// One published event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// Its number in this process (the SSE event id).
    pub seq: u64,
    /// What happened.
    pub kind: EventType,
    /// The environment.
    pub environment: String,
    /// The run (or the rollback) it belongs to.
    pub deployment_id: String,
    /// The version.
    pub version: String,
    /// Who started it.
    pub actor: String,
    /// The stage, for stage events.
    pub stage: Option<String>,
    /// One line.
    pub summary: String,
    /// More, when there is more.
    pub detail: Option<String>,
    /// How long it took, ms.
    pub duration_ms: Option<u64>,
    /// Labelled links (the release's URL...).
    pub links: Vec<(String, String)>,
    /// When, ms since the epoch (`at` on the wire, in RFC 3339 like every time in JSON).
    #[serde(rename = "at", with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub at_ms: u64,
}

impl EventRecord {
    /// Whether this event ends its run: nothing follows it. A deploy run ends `succeeded` or
    /// `failed` (its automatic rollback, in the `rollback` stage, comes before that); an
    /// operator's rollback is one `rolled-back` event, with no stage.
    pub fn is_final(&self) -> bool {
        matches!(self.kind, EventType::Succeeded | EventType::Failed)
            || (self.kind == EventType::RolledBack && self.stage.is_none())
    }
}

/// An event's kind, named as in the WIT (`stage-started`): the WIT's own enum is generated
/// by bindgen, without serde, so the bus carries this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    /// A run started.
    Started,
    /// A stage started.
    StageStarted,
    /// A stage succeeded.
    StageSucceeded,
    /// A stage failed.
    StageFailed,
    /// A run waits for a person.
    ApprovalRequested,
    /// A run ended with its release live.
    Succeeded,
    /// A run ended on an error.
    Failed,
    /// A previous release was made live again.
    RolledBack,
    /// What the running stage is doing (`summary`), with its elapsed time (`duration_ms`):
    /// the live view's, never sent to notifiers.
    Progress,
}

impl EventType {
    /// Its name, as in the WIT (and the SSE `event:` field).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Started => "started",
            EventType::StageStarted => "stage-started",
            EventType::StageSucceeded => "stage-succeeded",
            EventType::StageFailed => "stage-failed",
            EventType::ApprovalRequested => "approval-requested",
            EventType::Succeeded => "succeeded",
            EventType::Failed => "failed",
            EventType::RolledBack => "rolled-back",
            EventType::Progress => "progress",
        }
    }
}

impl From<EventKind> for EventType {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Started => EventType::Started,
            EventKind::StageStarted => EventType::StageStarted,
            EventKind::StageSucceeded => EventType::StageSucceeded,
            EventKind::StageFailed => EventType::StageFailed,
            EventKind::ApprovalRequested => EventType::ApprovalRequested,
            EventKind::Succeeded => EventType::Succeeded,
            EventKind::Failed => EventType::Failed,
            EventKind::RolledBack => EventType::RolledBack,
        }
    }
}

/// The bus: one per [`super::Agent`].
#[derive(Debug)]
pub struct Bus {
    tx: broadcast::Sender<Arc<EventRecord>>,
    history: Mutex<VecDeque<Arc<EventRecord>>>,
    seq: AtomicU64,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            tx: broadcast::channel(HISTORY).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            seq: AtomicU64::new(0),
        }
    }
}

impl Bus {
    /// Publishes an event.
    pub fn publish(&self, e: &Event) {
        self.push(e.kind.into(), e);
    }

    /// Publishes a sample of a running stage (never a notifier's).
    pub(crate) fn progress(
        &self,
        p: &super::progress::Publish,
        sample: &super::progress::Progress,
    ) {
        let e = Event {
            kind: EventKind::StageStarted,
            environment: p.environment.clone(),
            deployment_id: p.run.clone(),
            version: p.version.clone(),
            actor: p.actor.clone(),
            stage: Some(sample.stage.name().to_string()),
            summary: sample.activity.clone(),
            detail: None,
            duration_ms: Some(sample.elapsed_ms),
            links: Vec::new(),
            at_ms: crate::store::now_ms() as u64,
        };
        self.push(EventType::Progress, &e);
    }

    fn push(&self, kind: EventType, e: &Event) {
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Numbered under the lock, so history and the channel agree on the order.
        let record = Arc::new(EventRecord {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            kind,
            environment: e.environment.clone(),
            deployment_id: e.deployment_id.clone(),
            version: e.version.clone(),
            actor: e.actor.clone(),
            stage: e.stage.clone(),
            summary: e.summary.clone(),
            detail: e.detail.clone(),
            duration_ms: e.duration_ms,
            links: e.links.clone(),
            at_ms: e.at_ms,
        });
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(record.clone());
        let _ = self.tx.send(record);
    }

    /// Subscribes: the kept events after `after` (all kept ones when `None`) that `filter`
    /// takes, then the live ones. Taken under the publish lock, so nothing falls between.
    pub fn subscribe(
        &self,
        after: Option<u64>,
        filter: impl Fn(&EventRecord) -> bool,
    ) -> (Vec<Arc<EventRecord>>, broadcast::Receiver<Arc<EventRecord>>) {
        let history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.tx.subscribe();
        let past = history
            .iter()
            .filter(|e| after.is_none_or(|a| e.seq > a) && filter(e))
            .cloned()
            .collect();
        (past, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::notify;

    #[test]
    fn kept_events_replay_in_order_and_runs_end_where_they_end() {
        let ev = |kind, run: &str, stage: Option<&str>| {
            notify::event(
                kind,
                "t-env",
                run,
                "v1",
                "me",
                stage,
                run.to_string(),
                None,
                None,
            )
        };
        let bus = Bus::default();
        bus.publish(&ev(EventKind::Started, "t-run-1", None));
        bus.publish(&ev(EventKind::Started, "t-run-2", None));
        bus.publish(&ev(EventKind::RolledBack, "t-run-1", Some("rollback")));
        bus.publish(&ev(EventKind::Failed, "t-run-1", None));
        let (past, _rx) = bus.subscribe(None, |e| e.deployment_id == "t-run-1");
        let kinds: Vec<&str> = past.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["started", "rolled-back", "failed"]);
        assert!(past.windows(2).all(|w| w[0].seq < w[1].seq));
        // The automatic rollback is not the end of its run; the run's failure is.
        assert!(!past[1].is_final());
        assert!(past[2].is_final());
        // An operator's rollback is one event with no stage: it is its own end.
        bus.publish(&ev(EventKind::RolledBack, "t-rb-1", None));
        let (rb, _) = bus.subscribe(None, |e| e.deployment_id == "t-rb-1");
        assert!(rb[0].is_final());
        // Last-Event-ID: only what came after.
        let (after, _) = bus.subscribe(Some(past[1].seq), |e| e.deployment_id == "t-run-1");
        assert_eq!(after.len(), 1);
    }
}
