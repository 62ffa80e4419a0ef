//! Environments that span hosts: `hosts = [...]` and `[environments.X.rollout]`, the batches a
//! run goes through host by host.

use std::time::Duration;

use toml::Spanned;

use super::Validator;
use super::raw::{RawBatch, RawEnvironment};

/// How a run of an environment that spans hosts rolls out: the per-host stages (deploy,
/// verify, promote) host by host in batches, each host's own agent doing its host's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The hosts, by agent name (`--host-name` / `[server] host_name`), in rollout order.
    pub hosts: Vec<String>,
    /// How many hosts each batch takes.
    pub batch: Batch,
    /// How long to wait after a batch before the next.
    pub wait: Duration,
    /// How many hosts may fail before the rollout stops (default 0: the first failure stops it).
    pub max_failures: usize,
    /// What the hosts already done get when the rollout stops.
    pub on_failure: OnHostFailure,
}

/// A batch's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many hosts.
    Hosts(usize),
    /// This share of the hosts, rounded up (at least one).
    Percent(u8),
}

/// What a stopped rollout does with the hosts it already did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnHostFailure {
    /// Each goes back to the release it had (the default).
    Rollback,
    /// They keep the new release; `status` reports the drift.
    Keep,
}

impl Rollout {
    /// The hosts in their batches, in order.
    pub fn batches(&self) -> Vec<Vec<String>> {
        let n = self.hosts.len();
        let size = match self.batch {
            Batch::Hosts(k) => k,
            Batch::Percent(p) => (n * usize::from(p)).div_ceil(100),
        }
        .clamp(1, n.max(1));
        self.hosts.chunks(size).map(<[String]>::to_vec).collect()
    }
}

impl Validator<'_> {
    /// The environment's rollout across hosts, if it has `hosts`: they must be distinct agent
    /// names, the state shared (PostgreSQL), and the target one that lives on each host.
    pub(super) fn rollout(&mut self, env: &RawEnvironment, shared: bool) -> Option<Rollout> {
        let Some(hosts) = &env.hosts else {
            if let Some(r) = &env.rollout {
                self.error(
                    r,
                    "`rollout` without `hosts`",
                    "list the hosts the environment spans: `hosts = [\"web-1\", \"web-2\"]`",
                );
            }
            return None;
        };
        let mut names: Vec<String> = Vec::new();
        for h in hosts.get_ref() {
            let ok = !h.get_ref().is_empty()
                && h.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                self.error(
                    h,
                    format!("`{}` is not an agent name", h.get_ref()),
                    "use the name each host's daemon goes by (`serve --host-name`): letters, digits, `-`, `_`, `.`",
                );
            } else if names.contains(h.get_ref()) {
                self.error(h, format!("host `{}` is listed twice", h.get_ref()), "");
            } else {
                names.push(h.get_ref().clone());
            }
        }
        if names.is_empty() && hosts.get_ref().is_empty() {
            self.error(
                hosts,
                "`hosts` is empty",
                "list at least one host, or remove `hosts`",
            );
        }
        if !shared {
            self.error(
                hosts,
                "an environment that spans hosts needs a state store its hosts share",
                "set `[agent] state_url` to a PostgreSQL database every host's agent uses",
            );
        }
        let per_host = env
            .target
            .as_ref()
            .and_then(|t| t.get_ref().per_host)
            .unwrap_or(false);
        if !per_host {
            self.error(
                hosts,
                "an environment that spans hosts needs a target that acts on the host it runs on",
                "mark it `per_host = true` under the environment's `[target]` (the local target is one); a platform target (Vercel, Kubernetes) spreads a release itself: remove `hosts`",
            );
        }
        let raw = env.rollout.as_ref().map(Spanned::get_ref);
        let batch = match raw.and_then(|r| r.batch.as_ref()) {
            None => Batch::Hosts(1),
            Some(b) => match b.get_ref() {
                RawBatch::Hosts(k) if *k >= 1 => Batch::Hosts(usize::try_from(*k).unwrap_or(1)),
                RawBatch::Percent(p) => match p
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<u8>().ok())
                {
                    Some(n) if (1..=100).contains(&n) => Batch::Percent(n),
                    _ => {
                        self.error(b, format!("`{p}` is not a share of the hosts"), "write a count (`batch = 1`) or a percentage from 1% to 100% (`batch = \"33%\"`)");
                        Batch::Hosts(1)
                    }
                },
                RawBatch::Hosts(_) => {
                    self.error(b, "a batch takes at least one host", "");
                    Batch::Hosts(1)
                }
            },
        };
        let wait = super::environment::ms(
            self,
            &raw.and_then(|r| r.wait_ms.clone()),
            Duration::ZERO,
            "wait_ms",
            (0, 3_600_000),
        );
        let on_failure = match raw.and_then(|r| r.on_failure.as_ref()) {
            None => OnHostFailure::Rollback,
            Some(p) => match p.get_ref().as_str() {
                "rollback" => OnHostFailure::Rollback,
                "keep" => OnHostFailure::Keep,
                other => {
                    self.error(
                        p,
                        format!("unknown `on_failure` `{other}`"),
                        "use `rollback` (the hosts done go back) or `keep` (they keep the new release)",
                    );
                    OnHostFailure::Rollback
                }
            },
        };
        Some(Rollout {
            hosts: names,
            batch,
            wait,
            max_failures: raw
                .and_then(|r| r.max_failures)
                .map_or(0, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            on_failure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(n: usize, batch: Batch) -> Rollout {
        Rollout {
            hosts: (1..=n).map(|i| format!("web-{i}")).collect(),
            batch,
            wait: Duration::ZERO,
            max_failures: 0,
            on_failure: OnHostFailure::Rollback,
        }
    }

    #[test]
    fn batches_take_a_count_or_a_share_rounded_up() {
        let sizes = |r: Rollout| r.batches().iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(rollout(3, Batch::Hosts(1))), [1, 1, 1]);
        assert_eq!(sizes(rollout(5, Batch::Hosts(2))), [2, 2, 1]);
        assert_eq!(sizes(rollout(3, Batch::Percent(33))), [1, 1, 1]);
        assert_eq!(sizes(rollout(10, Batch::Percent(25))), [3, 3, 3, 1]);
        assert_eq!(sizes(rollout(2, Batch::Percent(100))), [2]);
        assert_eq!(sizes(rollout(2, Batch::Hosts(9))), [2]);
    }
}
