//! The daemon's run queue: triggers waiting for their environment, in order, in the state
//! store so a restart loses none of them; and the webhook deliveries already taken.

use serde::Serialize;

use super::{QueueState, Row, Store, StoreError, now_ms};

/// One queued run.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
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
    /// Where it stands.
    pub state: QueueState,
    /// When it was queued, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub enqueued_at: i64,
    /// When it started.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    /// When it ended.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// How it ended (the run's status, or why it could not start).
    pub outcome: Option<String>,
}

const COLUMNS: &str = "id, seq, environment, version, artifact, actor, reason, source, state, enqueued_at, started_at, finished_at, outcome";

fn item(mut r: Row) -> Result<QueueItem, StoreError> {
    Ok(QueueItem {
        id: r.s()?,
        seq: r.i()?,
        environment: r.s()?,
        version: r.o()?,
        artifact: r.o()?,
        actor: r.s()?,
        reason: r.o()?,
        source: r.s()?,
        state: r.w(QueueState::parse)?,
        enqueued_at: r.i()?,
        started_at: r.oi()?,
        finished_at: r.oi()?,
        outcome: r.o()?,
    })
}

impl Store {
    /// Queues a run; returns it with its place in the order.
    pub async fn enqueue(&self, q: &QueueItem) -> Result<QueueItem, StoreError> {
        self.exec(
            "INSERT INTO queue (id, seq, environment, version, artifact, actor, reason, source, state, enqueued_at) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, 'queued', $8 FROM queue",
            &[
                (&q.id).into(),
                (&q.environment).into(),
                q.version.as_deref().into(),
                q.artifact.as_deref().into(),
                (&q.actor).into(),
                q.reason.as_deref().into(),
                (&q.source).into(),
                q.enqueued_at.into(),
            ],
        )
        .await?;
        self.queue_item(&q.id)
            .await?
            .ok_or_else(|| StoreError::Query(format!("queued run {} vanished", q.id)))
    }

    /// One queued (or past) item.
    pub async fn queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM queue WHERE id = $1"),
                &[id.into()],
            )
            .await?;
        rows.into_iter().next().map(item).transpose()
    }

    /// The items of an environment not yet done (running first, then queued), in order.
    pub async fn pending(&self, environment: &str) -> Result<Vec<QueueItem>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM queue WHERE environment = $1 AND state IN ('queued', 'running') ORDER BY seq"),
                &[environment.into()],
            )
            .await?;
        rows.into_iter().map(item).collect()
    }

    /// Every item not yet done, in order.
    pub async fn all_pending(&self) -> Result<Vec<QueueItem>, StoreError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT {COLUMNS} FROM queue WHERE state IN ('queued', 'running') ORDER BY seq"
                ),
                &[],
            )
            .await?;
        rows.into_iter().map(item).collect()
    }

    /// Marks an item running.
    pub async fn queue_started(&self, id: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE queue SET state = 'running', started_at = $1 WHERE id = $2",
            &[now_ms().into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// Ends an item: `done` with the run's outcome, or `cancelled`. Only an item still
    /// pending changes; returns whether it did.
    pub async fn queue_finished(
        &self,
        id: &str,
        state: QueueState,
        outcome: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE queue SET state = $1, outcome = $2, finished_at = $3 WHERE id = $4 AND state IN ('queued', 'running')",
                &[state.as_str().into(), outcome.into(), now_ms().into(), id.into()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Cancels an item still waiting (not one already running); returns whether it did.
    pub async fn cancel_queued(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE queue SET state = 'cancelled', outcome = 'cancelled', finished_at = $1 WHERE id = $2 AND state = 'queued'",
                &[now_ms().into(), id.into()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Records a webhook delivery id; `false` when it was seen before (a replay). Forgets ids
    /// older than `keep_ms`, which the caller's replay window already refuses by their age.
    pub async fn record_delivery(&self, id: &str, keep_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        self.exec(
            "DELETE FROM webhook_deliveries WHERE received_at < $1",
            &[(now - keep_ms).into()],
        )
        .await?;
        let n = self
            .exec(
                "INSERT INTO webhook_deliveries (id, received_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[id.into(), now.into()],
            )
            .await?;
        Ok(n > 0)
    }
}
