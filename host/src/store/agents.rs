//! The fleet: the agents (daemons) sharing this state store, by name, with their heartbeats.
//!
//! A daemon registers under its host name when it starts and heartbeats every third of its
//! lease. An agent whose last heartbeat is older than its lease, or that said it stopped, is
//! dead: the runs it claimed are taken over by another agent serving their environment
//! ([`Store::claim`]). A name is held by one live process at a time; a second daemon
//! under a live name is refused.

use std::time::Duration;

use serde::Serialize;

use super::{Owner, Row, Store, StoreError, now_ms};

/// What a daemon registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its name in the fleet (its host's, unless configured).
    pub name: String,
    /// Its process.
    pub instance: Owner,
    /// The agent's version.
    pub version: String,
    /// The environments it serves.
    pub environments: Vec<String>,
    /// Where its API listens.
    pub api: Option<String>,
    /// Its lease: silent for longer, it is dead.
    pub lease: Duration,
}

/// An agent as the store knows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AgentRecord {
    /// Its name.
    pub name: String,
    /// Its process (`host:pid:start`).
    pub instance: String,
    /// The host its process runs on.
    pub host: String,
    /// Its pid.
    pub pid: i64,
    /// The agent's version.
    pub version: String,
    /// The environments it serves.
    pub environments: Vec<String>,
    /// Where its API listens.
    pub api: Option<String>,
    /// When it started.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// Its last heartbeat.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub heartbeat_at: i64,
    /// Its lease, ms.
    pub lease_ms: i64,
    /// When it stopped, if it said so.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stopped_at: Option<i64>,
    /// `alive`, `dead` (its heartbeat lapsed or its process is gone) or `stopped`.
    pub health: String,
}

impl AgentRecord {
    /// Whether it is alive now: heartbeating within its lease, not stopped, and not a process
    /// known to be gone from this host.
    pub fn is_alive(&self) -> bool {
        self.stopped_at.is_none()
            && self.heartbeat_at + self.lease_ms > now_ms()
            && !Owner(self.instance.clone()).is_dead_here()
    }
}

const COLUMNS: &str = "id, instance, host, pid, version, environments, api, started_at, heartbeat_at, lease_ms, stopped_at";

fn record(mut r: Row) -> Result<AgentRecord, StoreError> {
    let mut a = AgentRecord {
        name: r.s()?,
        instance: r.s()?,
        host: r.s()?,
        pid: r.i()?,
        version: r.s()?,
        environments: r
            .s()?
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect(),
        api: r.o()?,
        started_at: r.i()?,
        heartbeat_at: r.i()?,
        lease_ms: r.i()?,
        stopped_at: r.oi()?,
        health: String::new(),
    };
    a.health = match (a.stopped_at, a.is_alive()) {
        (Some(_), _) => "stopped",
        (None, true) => "alive",
        (None, false) => "dead",
    }
    .into();
    Ok(a)
}

impl Store {
    /// Registers this daemon under its name, or refuses while a live process holds the name
    /// (naming it).
    pub async fn register(&self, r: &Registration) -> Result<(), StoreError> {
        let now = now_ms();
        let existing = self.agent(&r.name).await?;
        // A holder whose process is gone from this host is as good as dead.
        let dead_here = existing
            .as_ref()
            .filter(|a| a.instance != r.instance.0 && Owner(a.instance.clone()).is_dead_here())
            .map(|a| a.instance.clone());
        let host = super::hostname();
        let environments = r.environments.join(",");
        let lease_ms = i64::try_from(r.lease.as_millis()).unwrap_or(i64::MAX);
        let taken = self
            .exec(
                &format!(
                    "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, NULL) \
                     ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, host = excluded.host, pid = excluded.pid, \
                     version = excluded.version, environments = excluded.environments, api = excluded.api, \
                     started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, lease_ms = excluded.lease_ms, stopped_at = NULL \
                     WHERE agents.instance = excluded.instance OR agents.stopped_at IS NOT NULL \
                     OR agents.heartbeat_at + agents.lease_ms < $8 OR agents.instance = $10"
                ),
                &[
                    (&r.name).into(),
                    (&r.instance.0).into(),
                    host.as_str().into(),
                    i64::from(std::process::id()).into(),
                    (&r.version).into(),
                    environments.as_str().into(),
                    r.api.as_deref().into(),
                    now.into(),
                    lease_ms.into(),
                    dead_here.as_deref().into(),
                ],
            )
            .await?;
        if taken == 0 {
            let holder = self.agent(&r.name).await?;
            return Err(StoreError::AgentTaken {
                name: r.name.clone(),
                holder: holder.as_ref().map_or("another process".into(), |a| {
                    format!("pid {} on {}", a.pid, a.host)
                }),
                since: holder.as_ref().map_or(now, |a| a.started_at),
            });
        }
        Ok(())
    }

    /// Records a heartbeat; `false` when the name is no longer this process's.
    pub async fn heartbeat(&self, name: &str, instance: &Owner) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE agents SET heartbeat_at = $1 WHERE id = $2 AND instance = $3",
                &[now_ms().into(), name.into(), (&instance.0).into()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Records that this daemon stopped: its runs (suspended at shutdown) may be taken over at
    /// once.
    pub async fn agent_stopped(&self, name: &str, instance: &Owner) -> Result<(), StoreError> {
        self.exec(
            "UPDATE agents SET stopped_at = $1 WHERE id = $2 AND instance = $3",
            &[now_ms().into(), name.into(), (&instance.0).into()],
        )
        .await?;
        Ok(())
    }

    /// One agent by name.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM agents WHERE id = $1"),
                &[name.into()],
            )
            .await?;
        rows.into_iter().next().map(record).transpose()
    }

    /// Every agent the store knows, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = self
            .rows(&format!("SELECT {COLUMNS} FROM agents ORDER BY id"), &[])
            .await?;
        rows.into_iter().map(record).collect()
    }
}
