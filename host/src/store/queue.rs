//! The daemon's run queue: triggers waiting for their environment, in order, in the state
//! store so a restart loses none of them; and the webhook deliveries already taken.

use serde::Serialize;

use super::{Backend, Owner, QueueState, Row, Store, StoreError, now_ms};

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
    /// The agent that claimed it.
    #[serde(default)]
    pub claimed_by: Option<String>,
    /// That agent's process (`host:pid:start`).
    #[serde(default, skip_serializing)]
    pub claimed_instance: Option<String>,
}

const COLUMNS: &str = "id, seq, environment, version, artifact, actor, reason, source, state, enqueued_at, started_at, finished_at, outcome, claimed_by, claimed_instance";

/// An agent taking queued work: its name and its process.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    /// The agent's name.
    pub name: &'a str,
    /// Its process.
    pub instance: &'a Owner,
}

/// What an agent claimed.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The environment's next queued run.
    Next(QueueItem),
    /// A run already started whose claimant is gone: resumed (or rolled back) by this agent.
    TakenOver {
        /// The run, now this agent's.
        item: QueueItem,
        /// The agent that had it (`None`: a run from before claims were recorded).
        from: Option<String>,
        /// Why it was free: its agent's heartbeat lapsed, it stopped, its process is gone.
        why: String,
    },
}

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
        claimed_by: r.o()?,
        claimed_instance: r.o()?,
    })
}

impl Store {
    /// Queues a run; returns it with its place in the order.
    pub async fn enqueue(&self, q: &QueueItem) -> Result<QueueItem, StoreError> {
        // Two agents taking the next place at once: one wins the unique index, the other
        // takes the place after it.
        let mut attempt = 0;
        loop {
            match self.insert_queued(q).await {
                Err(StoreError::Query(e)) if attempt < 5 && is_seq_conflict(&e) => attempt += 1,
                other => return other,
            }
        }
    }

    async fn insert_queued(&self, q: &QueueItem) -> Result<QueueItem, StoreError> {
        // PostgreSQL answers with the row in the same round trip. SQLite gets no RETURNING:
        // sqlx leaves such a statement's implicit transaction open on the connection (the
        // next reads saw a stale snapshot and writes failed BUSY); its round trips are local.
        let returning = match self.pool.backend() {
            Backend::Postgres => format!(" RETURNING {COLUMNS}"),
            Backend::Sqlite => String::new(),
        };
        let rows = self
            .rows(
                &format!(
                    "INSERT INTO queue (id, seq, environment, version, artifact, actor, reason, source, state, enqueued_at) \
                     SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, 'queued', $8 FROM queue{returning}"
                ),
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
        let queued = match rows.into_iter().next() {
            Some(r) => Some(item(r)?),
            None => self.queue_item(&q.id).await?,
        };
        queued.ok_or_else(|| StoreError::Query(format!("queued run {} vanished", q.id)))
    }

    /// A queued item's place among its environment's waiting items (1: next).
    pub async fn queue_position(&self, environment: &str, seq: i64) -> Result<usize, StoreError> {
        let rows = self
            .rows(
                "SELECT COUNT(*) FROM queue WHERE environment = $1 AND state = 'queued' AND seq <= $2",
                &[environment.into(), seq.into()],
            )
            .await?;
        let n = match rows.into_iter().next() {
            Some(mut r) => r.i()?,
            None => 0,
        };
        Ok(usize::try_from(n).unwrap_or(0))
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

    /// Claims work for `environment`, in order, once: a run whose claimant died first (it
    /// is the oldest), else the next queued run, if no live agent is running one.
    pub async fn claim(
        &self,
        environment: &str,
        who: &Claimant<'_>,
    ) -> Result<Option<Claim>, StoreError> {
        if let Some(taken) = self.take_over_run(environment, who).await? {
            return Ok(Some(taken));
        }
        // One statement: the oldest pending item, if it is still queued, becomes this agent's.
        // On PostgreSQL a row another agent is claiming this instant is skipped, not waited
        // for (and then the oldest pending item is no longer queued: nothing is claimed). On
        // SQLite (one daemon per file, one connection) the claimed row is read back after.
        let (lock, returning) = match self.pool.backend() {
            Backend::Postgres => (" FOR UPDATE SKIP LOCKED", format!(" RETURNING {COLUMNS}")),
            Backend::Sqlite => ("", String::new()),
        };
        let now = now_ms();
        let sql = format!(
            "UPDATE queue SET state = 'running', claimed_by = $2, claimed_instance = $3, claimed_at = $4, started_at = $4 \
             WHERE id = (SELECT q.id FROM queue q WHERE q.environment = $1 AND q.state = 'queued' \
             AND q.seq = (SELECT MIN(p.seq) FROM queue p WHERE p.environment = $1 AND p.state IN ('queued', 'running')){lock}) \
             AND state = 'queued'{returning}"
        );
        let args = [
            environment.into(),
            who.name.into(),
            (&who.instance.0).into(),
            now.into(),
        ];
        let claimed = match self.pool.backend() {
            Backend::Postgres => self.rows(&sql, &args).await?.into_iter().next(),
            Backend::Sqlite => {
                if self.exec(&sql, &args).await? == 0 {
                    None
                } else {
                    self.rows(
                        &format!("SELECT {COLUMNS} FROM queue WHERE environment = $1 AND state = 'running' AND claimed_instance = $2 ORDER BY seq LIMIT 1"),
                        &[environment.into(), (&who.instance.0).into()],
                    )
                    .await?
                    .into_iter()
                    .next()
                }
            }
        };
        Ok(claimed.map(item).transpose()?.map(Claim::Next))
    }

    /// Takes over the environment's oldest running item when its claimant is not alive (or
    /// is this very process, retrying it). A compare-and-set on the claimant: two agents
    /// taking over at once, one wins.
    async fn take_over_run(
        &self,
        environment: &str,
        who: &Claimant<'_>,
    ) -> Result<Option<Claim>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM queue WHERE environment = $1 AND state = 'running' ORDER BY seq LIMIT 1"),
                &[environment.into()],
            )
            .await?;
        let Some(running) = rows.into_iter().next().map(item).transpose()? else {
            return Ok(None);
        };
        if running.claimed_instance.as_deref() == Some(who.instance.0.as_str()) {
            // Ours: a run this process put back to wait (the environment was locked).
            return Ok(Some(Claim::Next(running)));
        }
        let why = match (&running.claimed_by, &running.claimed_instance) {
            (Some(name), Some(instance)) => match self.agent(name).await? {
                Some(a) if a.instance == *instance && a.is_alive() => return Ok(None),
                Some(a) if a.instance != *instance => {
                    format!(
                        "its process {instance} is gone ({name} restarted as {})",
                        a.instance
                    )
                }
                Some(a) if a.stopped_at.is_some() => format!("{name} stopped"),
                Some(a) if Owner(a.instance.clone()).is_dead_here() => {
                    format!("{name}'s process is gone")
                }
                Some(a) => format!(
                    "{name}'s heartbeat lapsed {:.1} s ago (lease {} ms)",
                    (now_ms() - a.heartbeat_at) as f64 / 1e3,
                    a.lease_ms
                ),
                None => format!("{name} is not registered"),
            },
            _ => "it was left running by an agent from before the fleet".into(),
        };
        let n = self
            .exec(
                "UPDATE queue SET claimed_by = $1, claimed_instance = $2, claimed_at = $3 \
                 WHERE id = $4 AND state = 'running' AND COALESCE(claimed_instance, '') = $5",
                &[
                    who.name.into(),
                    (&who.instance.0).into(),
                    now_ms().into(),
                    (&running.id).into(),
                    running.claimed_instance.as_deref().unwrap_or("").into(),
                ],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        let from = running.claimed_by.clone();
        let item = QueueItem {
            claimed_by: Some(who.name.to_string()),
            claimed_instance: Some(who.instance.0.clone()),
            ..running
        };
        Ok(Some(Claim::TakenOver { item, from, why }))
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

/// Whether a failed insert lost the race for the next place in the order.
fn is_seq_conflict(e: &str) -> bool {
    e.contains("queue_seq") || e.contains("queue.seq")
}
