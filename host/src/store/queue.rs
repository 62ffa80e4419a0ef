//! The daemon's run queue: triggers waiting for their environment, in order, in the state
//! store so a restart loses none of them; and the webhook deliveries already taken.

use serde::Serialize;

use super::{Row, Store, StoreError, now_ms, opt};
use crate::db::conn::lit;

/// One queued run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueItem {
    /// The id the run has (and will have in the journal).
    pub id: String,
    /// Its place in the global order.
    pub seq: i64,
    /// The environment.
    pub environment: String,
    /// The version asked for.
    pub version: Option<String>,
    /// The artifact directory asked for.
    pub artifact: Option<String>,
    /// Who asked (`token:NAME`, `github:LOGIN`).
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// `api` or `github`.
    pub source: String,
    /// `queued`, `running`, `done` or `cancelled`.
    pub state: String,
    /// When it was queued, ms since the epoch.
    pub enqueued_at: i64,
    /// When it started.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// How it ended (the run's status, or why it could not start).
    pub outcome: Option<String>,
}

const COLUMNS: &str = "id, CAST(seq AS TEXT), environment, version, artifact, actor, reason, source, state, CAST(enqueued_at AS TEXT), CAST(started_at AS TEXT), CAST(finished_at AS TEXT), outcome";

fn item(row: Vec<Option<String>>) -> QueueItem {
    let mut r = Row(row.into_iter());
    QueueItem {
        id: r.s(),
        seq: r.i(),
        environment: r.s(),
        version: r.o(),
        artifact: r.o(),
        actor: r.s(),
        reason: r.o(),
        source: r.s(),
        state: r.s(),
        enqueued_at: r.i(),
        started_at: r.oi(),
        finished_at: r.oi(),
        outcome: r.o(),
    }
}

impl Store {
    /// Queues a run; returns it with its place in the order.
    pub async fn enqueue(&self, q: &QueueItem) -> Result<QueueItem, StoreError> {
        self.exec(&format!(
            "INSERT INTO queue (id, seq, environment, version, artifact, actor, reason, source, state, enqueued_at) \
             SELECT {}, COALESCE(MAX(seq), 0) + 1, {}, {}, {}, {}, {}, {}, 'queued', {} FROM queue",
            lit(&q.id),
            lit(&q.environment),
            opt(q.version.as_deref()),
            opt(q.artifact.as_deref()),
            lit(&q.actor),
            opt(q.reason.as_deref()),
            lit(&q.source),
            q.enqueued_at,
        ))
        .await?;
        self.queue_item(&q.id)
            .await?
            .ok_or_else(|| StoreError::Query(format!("queued run {} vanished", q.id)))
    }

    /// One queued (or past) item.
    pub async fn queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {COLUMNS} FROM queue WHERE id = {}",
                lit(id)
            ))
            .await?;
        Ok(rows.into_iter().next().map(item))
    }

    /// The items of an environment not yet done (running first, then queued), in order.
    pub async fn pending(&self, environment: &str) -> Result<Vec<QueueItem>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {COLUMNS} FROM queue WHERE environment = {} AND state IN ('queued', 'running') ORDER BY seq",
                lit(environment)
            ))
            .await?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// Every item not yet done, in order.
    pub async fn all_pending(&self) -> Result<Vec<QueueItem>, StoreError> {
        let rows = self
            .rows(&format!(
                "SELECT {COLUMNS} FROM queue WHERE state IN ('queued', 'running') ORDER BY seq"
            ))
            .await?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// Marks an item running.
    pub async fn queue_started(&self, id: &str) -> Result<(), StoreError> {
        self.exec(&format!(
            "UPDATE queue SET state = 'running', started_at = {} WHERE id = {}",
            now_ms(),
            lit(id)
        ))
        .await?;
        Ok(())
    }

    /// Ends an item: `done` with the run's outcome, or `cancelled`. Only an item still
    /// pending changes; returns whether it did.
    pub async fn queue_finished(
        &self,
        id: &str,
        state: &str,
        outcome: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(&format!(
                "UPDATE queue SET state = {}, outcome = {}, finished_at = {} WHERE id = {} AND state IN ('queued', 'running')",
                lit(state),
                lit(outcome),
                now_ms(),
                lit(id)
            ))
            .await?;
        Ok(n > 0)
    }

    /// Cancels an item still waiting (not one already running); returns whether it did.
    pub async fn cancel_queued(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .exec(&format!(
                "UPDATE queue SET state = 'cancelled', outcome = 'cancelled', finished_at = {} WHERE id = {} AND state = 'queued'",
                now_ms(),
                lit(id)
            ))
            .await?;
        Ok(n > 0)
    }

    /// Records a webhook delivery id; `false` when it was seen before (a replay). Forgets ids
    /// older than `keep_ms`, which the caller's replay window already refuses by their age.
    pub async fn record_delivery(&self, id: &str, keep_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        self.exec(&format!(
            "DELETE FROM webhook_deliveries WHERE received_at < {}",
            now - keep_ms
        ))
        .await?;
        let n = self
            .exec(&format!(
                "INSERT INTO webhook_deliveries (id, received_at) VALUES ({}, {now}) ON CONFLICT (id) DO NOTHING",
                lit(id)
            ))
            .await?;
        Ok(n > 0)
    }
}
