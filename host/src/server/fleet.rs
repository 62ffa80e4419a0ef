//! This daemon in the fleet: its name, its registration and heartbeat in the state store, and
//! (on SQLite, where one daemon serves a state file) the lock that keeps a second one out.
//!
//! PostgreSQL is the coordination engine: agents find each other, and each other's deaths,
//! through rows in the shared store ([`crate::store::Store::register`], the queue's claims),
//! never over a protocol of their own.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::db::Backend;
use crate::pipeline::{Agent, notify};
use crate::runtime::{CallContext, EventKind};
use crate::store::{AuditEntry, Claimant, Owner, QueueItem, Registration, Store};

/// Why this daemon cannot join the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Another daemon serves the SQLite state file.
    #[error("{0}")]
    Taken(String),
    /// The state store refused (a live agent under this name, or it failed).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The daemon lock file.
    #[error("{what}: {source}")]
    Io {
        /// Doing what.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// This daemon's membership: heartbeating until [`Membership::leave`].
#[derive(Debug)]
pub struct Membership {
    /// Its name.
    pub name: String,
    instance: Owner,
    store: Store,
    heartbeat: tokio::task::JoinHandle<()>,
    /// The SQLite state file's daemon lock, held while the process lives.
    _sole: Option<File>,
}

impl Membership {
    /// The claimant this daemon's queue workers take work as.
    pub fn claimant(&self) -> Claimant<'_> {
        Claimant {
            name: &self.name,
            instance: &self.instance,
        }
    }

    /// Says this daemon stopped (after its runs suspended): the fleet may take them over now.
    pub async fn leave(self) {
        self.heartbeat.abort();
        if let Err(e) = self.store.agent_stopped(&self.name, &self.instance).await {
            tracing::warn!("cannot record this agent as stopped: {e}");
        }
    }
}

/// The name this daemon goes by: `--host-name`, else `[server] host_name`, else the host's.
/// Set process-wide before anything is journaled, so locks, runs and steps carry it.
pub fn name_this_host(flag: Option<&str>, configured: Option<&str>) -> String {
    match flag.or(configured) {
        Some(name) => {
            crate::store::set_host_name(name);
            name.to_string()
        }
        None => crate::store::hostname(),
    }
}

/// On SQLite, takes the state file's daemon lock, refusing (with the holder named) when
/// another daemon has it. Held until the returned file is dropped, or the process dies.
pub async fn sole(agent: &Agent) -> Result<Option<File>, FleetError> {
    match agent.store.backend().await {
        Backend::Sqlite => agent
            .store
            .sqlite_file()
            .map(|db| sole_daemon(&db))
            .transpose(),
        Backend::Postgres => Ok(None),
    }
}

/// Registers this daemon under `name` and starts its heartbeat.
pub async fn join(
    agent: &Agent,
    name: String,
    api: &str,
    sole: Option<File>,
) -> Result<Membership, FleetError> {
    let instance = Owner::this_process();
    let lease = agent.config.server.heartbeat;
    agent
        .store
        .register(&Registration {
            name: name.clone(),
            instance: instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            environments: agent.config.environments.keys().cloned().collect(),
            api: Some(api.to_string()),
            lease,
        })
        .await?;
    tracing::info!(
        agent = name,
        "joined the fleet (lease {} ms)",
        lease.as_millis()
    );
    let heartbeat = tokio::spawn(beat(
        agent.store.clone(),
        name.clone(),
        instance.clone(),
        lease,
    ));
    Ok(Membership {
        name,
        instance,
        store: agent.store.clone(),
        heartbeat,
        _sole: sole,
    })
}

async fn beat(store: Store, name: String, instance: Owner, lease: Duration) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&name, &instance).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    agent = name,
                    "this agent's registration was taken by another process (it was silent past its lease): its runs are being taken over"
                );
            }
            Err(e) => tracing::warn!(agent = name, "heartbeat: {e}"),
        }
    }
}

/// Takes the exclusive lock on `<state.db>.daemon` (the kernel releases it when the process
/// dies, kill -9 included) and writes who holds it.
fn sole_daemon(db: &Path) -> Result<File, FleetError> {
    let path = PathBuf::from(format!("{}.daemon", db.display()));
    let io = |what: &str, source| FleetError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("cannot open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut held = String::new();
            let _ = file.read_to_string(&mut held);
            let who: serde_json::Value = serde_json::from_str(&held).unwrap_or_default();
            return Err(FleetError::Taken(format!(
                "another daemon serves the state store {}: pid {} on {} since {}. One daemon per SQLite state file; stop it first, or share a PostgreSQL state (`[agent] state_url`) to run several",
                db.display(),
                who["pid"].as_u64().map_or("?".into(), |p| p.to_string()),
                who["host"].as_str().unwrap_or("?"),
                who["since"].as_str().unwrap_or("?"),
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("cannot lock", e)),
    }
    let who = serde_json::json!({
        "pid": std::process::id(),
        "host": crate::store::hostname(),
        "since": crate::time::rfc3339_ms(crate::store::now_ms()),
    });
    file.set_len(0).map_err(|e| io("cannot write", e))?;
    file.rewind().map_err(|e| io("cannot write", e))?;
    file.write_all(who.to_string().as_bytes())
        .map_err(|e| io("cannot write", e))?;
    Ok(file)
}

/// Records and announces that this agent took over `item` from `from`: audited as
/// `run.taken-over`, and told to the environment's notifiers.
pub async fn announce_takeover(
    agent: &Arc<Agent>,
    me: &str,
    item: &QueueItem,
    from: Option<&str>,
    why: &str,
) {
    let from = from.unwrap_or("an earlier agent");
    let detail = format!("taken over by {me} from {from}: {why}");
    tracing::warn!(run = item.id, environment = item.environment, "{detail}");
    if let Err(e) = agent
        .store
        .audit(AuditEntry {
            actor: format!("agent:{me}"),
            action: "run.taken-over".into(),
            environment: Some(item.environment.clone()),
            subject: Some(item.id.clone()),
            why: None,
            detail: Some(detail.clone()),
        })
        .await
    {
        tracing::error!(run = item.id, "audit: {e}");
    }
    let Ok(env) = agent.config.environment(&item.environment) else {
        return;
    };
    let plugins = match crate::pipeline::load_plugins(agent, env) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(run = item.id, "cannot announce the takeover: {e}");
            return;
        }
    };
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: item.id.clone(),
    };
    let n = notify::Notifications::start(
        plugins.notifiers.clone(),
        notify::Audience::of(&agent.config, env),
        ctx,
        agent.events().clone(),
    );
    n.send(notify::event(
        EventKind::Started,
        &env.name,
        &item.id,
        item.version.as_deref().unwrap_or(""),
        &format!("agent:{me}"),
        None,
        format!("{me} took over run {} on {} from {from}", item.id, env.name),
        Some(detail),
        None,
    ));
    let delivery = n.finish().await;
    for f in &delivery.failed {
        tracing::warn!(run = item.id, "notifier: {f}");
    }
}
