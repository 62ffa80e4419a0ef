//! Environment locks as leases: held while renewed, expired when the holder dies.
//!
//! A lock row names its owner (`host:pid:start-time`) and an expiry. Taking it is one upsert
//! that succeeds only when the row is absent, expired, or already ours. The holder renews it
//! every third of the lease; a holder that dies stops renewing and the lock expires. On the
//! same host the agent can tell sooner: if the owner's process is gone (same pid and start
//! time), the lock is taken over at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms};

/// This agent process, as lock owners and runs record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(pub String);

impl Owner {
    /// `host:pid:start` for this process.
    pub fn this_process() -> Owner {
        let pid = std::process::id();
        Owner(format!(
            "{}:{pid}:{}",
            hostname(),
            start_time(pid).unwrap_or(0)
        ))
    }

    /// Whether the owner is a process on this host that no longer exists.
    pub fn is_dead_here(&self) -> bool {
        let mut parts = self.0.rsplitn(3, ':');
        let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if host != hostname() {
            return false;
        }
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            return false;
        };
        start_time(pid) != Some(start)
    }
}

static HOST_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static THIS_PROCESS: std::sync::OnceLock<Owner> = std::sync::OnceLock::new();

/// Names this host for the rest of the process (the daemon's `--host-name`, for several
/// agents on one machine standing for several hosts); call before anything is journaled.
/// `false` when a name was already set.
pub fn set_host_name(name: &str) -> bool {
    HOST_NAME.set(name.to_string()).is_ok()
}

/// This process as an owner, computed once.
pub(crate) fn this_process() -> &'static Owner {
    THIS_PROCESS.get_or_init(Owner::this_process)
}

/// The host's name: the one set by [`set_host_name`], else the kernel's.
pub fn hostname() -> String {
    if let Some(name) = HOST_NAME.get() {
        return name.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A process's start time (clock ticks since boot): with the pid, it names one process even
/// after the pid is reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Who holds an environment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LockHolder {
    /// The owner.
    pub owner: String,
    /// Its run.
    pub deployment_id: String,
    /// When it took the lock, ms since the epoch.
    #[serde(default)]
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub acquired_at: i64,
    /// When the lease ends, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: i64,
}

impl LockHolder {
    /// Whether a live process holds it: not expired, and not a dead process on this host.
    pub fn is_live(&self) -> bool {
        self.expires_at > super::now_ms() && !Owner(self.owner.clone()).is_dead_here()
    }
}

/// Whether a record marked running was interrupted, given the environment's lock: not while
/// a live process holds the lock for `subject` (or is recovering the environment); otherwise
/// its agent died.
pub fn interrupted(lock: Option<&LockHolder>, subject: &str) -> bool {
    !matches!(lock, Some(h)
        if h.is_live()
            && (h.deployment_id == subject || h.deployment_id.starts_with("recover-")))
}

/// A held lock. Renewed in the background until released; [`Lease::lost`] turns true if a
/// renewal finds the lock gone (taken over after this agent stalled past the lease).
#[derive(Debug)]
pub struct Lease {
    store: Store,
    environment: String,
    owner: Owner,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    /// A lease dropped without `release` (an error path) stops being renewed, so it expires
    /// after its term; it is never renewed forever by a forgotten task.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Lease {
    /// Whether the lock was lost.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock.
    pub async fn release(self) -> Result<(), StoreError> {
        self.renewer.abort();
        self.store
            .exec(
                "DELETE FROM locks WHERE environment = $1 AND owner = $2",
                &[(&self.environment).into(), (&self.owner.0).into()],
            )
            .await?;
        Ok(())
    }
}

impl Store {
    /// Who holds an environment's lock now, if anyone (expired leases included).
    pub async fn lock_holder(&self, environment: &str) -> Result<Option<LockHolder>, StoreError> {
        let rows = self
            .rows(
                "SELECT owner, deployment_id, acquired_at, expires_at FROM locks WHERE environment = $1",
                &[environment.into()],
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|mut r| {
                Ok(LockHolder {
                    owner: r.s()?,
                    deployment_id: r.s()?,
                    acquired_at: r.i()?,
                    expires_at: r.i()?,
                })
            })
            .transpose()
    }

    /// Takes an environment's lock for `deployment`, or says who holds it. Returns the lease
    /// and, when it was taken over from a dead or expired holder, that holder.
    pub async fn acquire(
        &self,
        environment: &str,
        owner: &Owner,
        deployment: &str,
        lease: Duration,
    ) -> Result<(Lease, Option<LockHolder>), StoreError> {
        let previous = self.lock_holder(environment).await?;
        let now = now_ms();
        let expires = now + lease.as_millis() as i64;
        // A holder whose process is gone from this host is as good as expired.
        let dead = previous
            .as_ref()
            .filter(|h| h.owner != owner.0 && Owner(h.owner.clone()).is_dead_here())
            .map(|h| h.owner.as_str());
        let taken = self
            .exec(
                "INSERT INTO locks (environment, owner, deployment_id, acquired_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (environment) DO UPDATE SET owner = excluded.owner, deployment_id = excluded.deployment_id, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
                 WHERE locks.expires_at < $4 OR locks.owner = $2 OR locks.owner = $6",
                &[
                    environment.into(),
                    (&owner.0).into(),
                    deployment.into(),
                    now.into(),
                    expires.into(),
                    dead.into(),
                ],
            )
            .await?;
        if taken == 0 {
            let holder = self.lock_holder(environment).await?;
            let h = holder.unwrap_or(LockHolder {
                owner: "another agent".into(),
                deployment_id: "?".into(),
                acquired_at: now,
                expires_at: now,
            });
            return Err(StoreError::Locked {
                environment: environment.to_string(),
                holder: h.owner,
                deployment: h.deployment_id,
                expires_in_s: (h.expires_at - now).max(0) / 1000,
            });
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            self.clone(),
            environment.to_string(),
            owner.clone(),
            lease,
            lost.clone(),
        ));
        let taken_over = previous.filter(|h| h.owner != owner.0);
        Ok((
            Lease {
                store: self.clone(),
                environment: environment.to_string(),
                owner: owner.clone(),
                lost,
                renewer,
            },
            taken_over,
        ))
    }
}

async fn renew(
    store: Store,
    environment: String,
    owner: Owner,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = store
            .exec(
                "UPDATE locks SET expires_at = $1 WHERE environment = $2 AND owner = $3",
                &[
                    (now_ms() + lease.as_millis() as i64).into(),
                    (&environment).into(),
                    (&owner.0).into(),
                ],
            )
            .await;
        match renewed {
            Ok(0) => {
                tracing::error!(
                    environment,
                    "the environment lock was taken over: this run must stop"
                );
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(environment, "cannot renew the environment lock: {e}"),
        }
    }
}
