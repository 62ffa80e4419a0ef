//! The status of an environment as `status` shows it, on the host or through the daemon: what
//! the store recorded (live release, lock and what its holder is doing, last run, waiting
//! approvals, last rollback) next to what the target says is really serving (drift).

use serde::{Deserialize, Serialize};

use super::Agent;
use super::plugins::load_target;
use crate::runtime::{CallContext, ReleaseState};
use crate::store::{
    Approval, Deployment, HostRelease, LockHolder, ReleaseRecord, RollbackRecord, Step, StoreError,
};

/// The live release as the target sees it, next to what the store recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Drift {
    /// The target serves the recorded release.
    InSync {
        /// The release.
        release: String,
    },
    /// The recorded release is gone from the target (its files deleted, the deployment
    /// removed): what the target said.
    Gone {
        /// The recorded release.
        release: String,
        /// What the target said of it.
        detail: String,
        /// What the target serves instead, if anything.
        serving: Option<String>,
    },
    /// Another release is serving.
    OtherServing {
        /// The recorded release.
        release: String,
        /// What serves instead, when the target says.
        serving: Option<String>,
    },
    /// The store records nothing live, but the target serves a release.
    Unrecorded {
        /// What serves.
        serving: String,
    },
    /// The target could not be asked (unreachable, a plugin error, not loadable).
    Unreachable {
        /// Why.
        error: String,
    },
    /// An environment that spans hosts whose hosts do not all serve the recorded release (a
    /// rollout that stopped part-way and kept its hosts, a host whose rollback waits for its
    /// agent).
    HostsDiffer {
        /// The recorded release, if any.
        release: Option<String>,
        /// Each host's live release, `-` where none is recorded.
        hosts: std::collections::BTreeMap<String, String>,
    },
    /// Nothing recorded and nothing serving, or no target to ask.
    Nothing,
}

impl Drift {
    /// Whether what serves differs from what the store recorded (or cannot be known).
    pub fn drifted(&self) -> bool {
        !matches!(self, Drift::InSync { .. } | Drift::Nothing)
    }

    /// In words, for people.
    pub fn describe(&self) -> String {
        match self {
            Drift::InSync { release } => format!("in sync: the target serves {release}"),
            Drift::Gone {
                release,
                detail,
                serving,
            } => format!(
                "DRIFT: {release} is gone from the target ({detail}); {}",
                serving
                    .as_deref()
                    .map_or("nothing serves".to_string(), |s| format!("{s} serves"))
            ),
            Drift::OtherServing { release, serving } => format!(
                "DRIFT: the target serves {} instead of {release}",
                serving.as_deref().unwrap_or("another release")
            ),
            Drift::Unrecorded { serving } => {
                format!("DRIFT: the target serves {serving}, which this agent never recorded live")
            }
            Drift::Unreachable { error } => format!("UNKNOWN: the target cannot be asked: {error}"),
            Drift::HostsDiffer { release, hosts } => format!(
                "DRIFT: the hosts serve different releases (recorded live: {}): {}",
                release.as_deref().unwrap_or("none"),
                hosts
                    .iter()
                    .map(|(h, r)| format!("{h} {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Drift::Nothing => "nothing recorded, nothing serving".into(),
        }
    }
}

/// The lock and, when a live holder has it, what it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LockView {
    /// The holder, as the store has it.
    #[serde(flatten)]
    pub holder: LockHolder,
    /// Whether its holder is alive (not expired, not a dead process on this host).
    pub live: bool,
    /// The run it holds the lock for, when it is one the journal knows.
    pub run: Option<Deployment>,
}

impl LockView {
    /// Who, since when, and what it is doing, in words.
    pub fn describe(&self) -> String {
        let h = &self.holder;
        let since = crate::time::rfc3339(h.acquired_at / 1000);
        let doing = match &self.run {
            Some(d) => format!(
                "run {} of {} by {}, in {}",
                d.id,
                d.version,
                d.actor,
                d.stage.as_deref().unwrap_or("its first stage")
            ),
            None => format!("run {}", h.deployment_id),
        };
        if self.live {
            format!("held by {} since {since}: {doing}", h.owner)
        } else {
            format!("expired lease of {} ({doing})", h.owner)
        }
    }
}

/// `status`: the one view the CLI prints and `GET /v1/environments/{env}/status` answers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusView {
    /// The environment.
    pub environment: String,
    /// The lock.
    pub lock: Option<LockView>,
    /// The live release, as recorded.
    pub live: Option<ReleaseRecord>,
    /// What the target says serves, next to `live`.
    pub drift: Drift,
    /// The newest run.
    pub last: Option<Deployment>,
    /// Whether it is journaled running but its agent is gone.
    pub last_interrupted: bool,
    /// Its journal.
    pub steps: Vec<Step>,
    /// Runs waiting for a decision.
    pub waiting: Vec<Approval>,
    /// The newest rollback or restore.
    pub last_rollback: Option<RollbackRecord>,
    /// What each host serves, in an environment that spans hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostRelease>,
    /// Its scheduled jobs, their next runs and how each last went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<super::scheduler::Scheduled>,
}

/// Drift across the hosts of an environment that spans hosts: every host should serve the
/// recorded release.
fn hosts_drift(listed: &[String], recorded: &[HostRelease], live: Option<&ReleaseRecord>) -> Drift {
    let hosts: std::collections::BTreeMap<String, String> = listed
        .iter()
        .map(|h| {
            let r = recorded
                .iter()
                .find(|r| &r.host == h)
                .map_or("-".to_string(), |r| {
                    format!("{} ({})", r.version, r.release_id)
                });
            (h.clone(), r)
        })
        .collect();
    let same = listed.iter().all(|h| {
        recorded
            .iter()
            .find(|r| &r.host == h)
            .map(|r| r.release_id.as_str())
            == live.map(|l| l.id.as_str())
    });
    match (same, live) {
        (true, Some(l)) => Drift::InSync {
            release: l.id.clone(),
        },
        (true, None) => Drift::Nothing,
        (false, _) => Drift::HostsDiffer {
            release: live.map(|l| l.id.clone()),
            hosts,
        },
    }
}

/// Asks the target what serves, against the recorded live release.
pub async fn drift(agent: &Agent, environment: &str, live: Option<&ReleaseRecord>) -> Drift {
    let Ok(env) = agent.config.environment(environment) else {
        return Drift::Nothing;
    };
    if env.target.is_none() {
        return Drift::Nothing;
    }
    let target = match load_target(agent, env) {
        Ok(t) => t,
        Err(e) => {
            return Drift::Unreachable {
                error: e.to_string(),
            };
        }
    };
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: format!("status-{}", super::new_id()),
    };
    let serving = match target.list_releases(&ctx).await {
        Ok(all) => all.into_iter().find(|r| r.live).map(|r| r.id),
        Err(e) => {
            return Drift::Unreachable {
                error: e.to_string(),
            };
        }
    };
    let Some(live) = live else {
        return serving.map_or(Drift::Nothing, |serving| Drift::Unrecorded { serving });
    };
    let release = live.id.clone();
    match target.status(&ctx, &live.id).await {
        Err(e) => Drift::Unreachable {
            error: e.to_string(),
        },
        Ok(s) => match s.state {
            ReleaseState::Live if serving.as_deref().is_none_or(|s| s == release) => {
                Drift::InSync { release }
            }
            ReleaseState::Failed(detail) => Drift::Gone {
                release,
                detail,
                serving,
            },
            ReleaseState::Canceled => Drift::Gone {
                release,
                detail: "cancelled".into(),
                serving,
            },
            _ => Drift::OtherServing { release, serving },
        },
    }
}

/// An environment's status, with the target asked for drift.
pub async fn view(agent: &Agent, environment: &str) -> Result<StatusView, StoreError> {
    let s = agent.status(environment).await?;
    let lock = match s.lock {
        None => None,
        Some(holder) => {
            let run = agent.store.deployment(&holder.deployment_id).await?;
            Some(LockView {
                live: holder.is_live(),
                holder,
                run,
            })
        }
    };
    let listed = agent
        .config
        .environment(environment)
        .ok()
        .and_then(|e| e.rollout.as_ref())
        .map(|r| r.hosts.clone());
    let (drift, hosts) = match listed {
        Some(listed) => {
            let recorded = agent.store.host_releases(environment).await?;
            (hosts_drift(&listed, &recorded, s.live.as_ref()), recorded)
        }
        None => (drift(agent, environment, s.live.as_ref()).await, Vec::new()),
    };
    Ok(StatusView {
        hosts,
        environment: environment.to_string(),
        lock,
        live: s.live,
        drift,
        last: s.last,
        last_interrupted: s.last_interrupted,
        steps: s.steps,
        waiting: agent.store.pending_approvals(Some(environment)).await?,
        last_rollback: s.last_rollback,
        schedule: super::scheduler::listing(agent, Some(environment), crate::store::now_ms())
            .await?,
    })
}
