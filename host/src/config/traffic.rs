//! Progressive delivery in agent.toml: `strategy = "blue-green" | "canary"`, the canary's
//! `steps`, how long the old release is kept after the switch, and whether the environment's
//! target can do what the strategy asks.

use std::path::Path;
use std::time::Duration;

use super::raw::RawDeploy;
use super::{Strategy, Validator};

/// One canary step: the share of traffic the new release gets, then what to wait for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CanaryStep {
    /// Percent of requests (1 to 100) to the new release.
    pub weight: u8,
    /// What the step waits for once the weight has taken effect.
    pub pause: Pause,
}

/// What a canary step waits for at its weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "ms")]
pub enum Pause {
    /// Nothing: the next step follows once the weight has taken effect.
    None,
    /// This long, with the environment's analysis and watch checks running meanwhile.
    For(#[serde(serialize_with = "as_ms")] Duration),
    /// A person's decision at the approval gate.
    Approval,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// How long an old release is kept after the switch (Argo Rollouts' `scaleDownDelaySeconds`
/// default: time for every router to see the change).
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

impl Validator<'_> {
    /// The canary's steps: weights 1 to 100, ascending, ending at 100; only with
    /// `strategy = "canary"`, which needs them.
    pub(super) fn canary_steps(&mut self, raw: &RawDeploy, strategy: Strategy) -> Vec<CanaryStep> {
        let Some(steps) = &raw.steps else {
            if strategy == Strategy::Canary
                && let Some(s) = &raw.strategy
            {
                self.error(
                    s,
                    "a canary needs `steps`",
                    "for example `steps = [{ weight = 10, pause_ms = 60000 }, { weight = 50, pause = \"approval\" }, { weight = 100 }]`",
                );
            }
            return Vec::new();
        };
        if strategy != Strategy::Canary {
            self.error(
                steps,
                "`steps` is only for `strategy = \"canary\"`",
                "set `strategy = \"canary\"`, or remove `steps`",
            );
            return Vec::new();
        }
        let mut out: Vec<CanaryStep> = Vec::new();
        for raw_step in steps.get_ref() {
            let s = raw_step.get_ref();
            let weight = *s.weight.get_ref();
            if !(1..=100).contains(&weight) {
                self.error(
                    &s.weight,
                    format!("a step's weight is a percentage from 1 to 100, not {weight}"),
                    "weight = 10 sends a tenth of requests to the new release",
                );
                continue;
            }
            if let Some(prev) = out.last()
                && weight <= i64::from(prev.weight)
            {
                self.error(
                    &s.weight,
                    format!("step weights must rise: {weight} follows {}", prev.weight),
                    "order the steps by weight, each above the last",
                );
            }
            let pause = match (&s.pause, &s.pause_ms) {
                (Some(_), Some(ms)) => {
                    self.error(
                        ms,
                        "a step has both `pause` and `pause_ms`",
                        "use `pause_ms = N` for a timed pause, or `pause = \"approval\"`",
                    );
                    Pause::None
                }
                (Some(p), None) if p.get_ref() == "approval" => Pause::Approval,
                (Some(p), None) => {
                    self.error(
                        p,
                        format!("unknown pause `{}`", p.get_ref()),
                        "`pause = \"approval\"` waits for a person; `pause_ms = 60000` waits a minute with the analysis running",
                    );
                    Pause::None
                }
                (None, Some(ms)) => match *ms.get_ref() {
                    0 => Pause::None,
                    n if n > 86_400_000 => {
                        self.error(ms, "pause_ms must be at most 86400000 (a day)", "");
                        Pause::None
                    }
                    n => Pause::For(Duration::from_millis(n)),
                },
                (None, None) => Pause::None,
            };
            out.push(CanaryStep {
                weight: weight.clamp(1, 100) as u8,
                pause,
            });
        }
        if let Some(last) = out.last()
            && last.weight != 100
        {
            self.error(
                steps,
                format!(
                    "the last step sends {} % of traffic; a canary ends with `{{ weight = 100 }}`",
                    last.weight
                ),
                "add `{ weight = 100 }` as the last step",
            );
        }
        out
    }

    /// A strategy the target cannot carry out: canary needs a component that exports the
    /// `traffic` interface (what it can do with its settings is asked at validate). A target
    /// without it stages then switches, which is blue-green.
    pub(super) fn strategy_fits_target(
        &mut self,
        raw: &RawDeploy,
        strategy: Strategy,
        target: &str,
        component: &Path,
        hosts: bool,
    ) {
        let Some(at) = &raw.strategy else { return };
        if !matches!(strategy, Strategy::BlueGreen | Strategy::Canary) {
            return;
        }
        if hosts {
            self.error(
                at,
                "an environment that spans hosts rolls out host by host; it cannot shift traffic between releases",
                "remove `strategy`, or drop `hosts` and use a target that routes traffic",
            );
            return;
        }
        if strategy != Strategy::Canary {
            return;
        }
        // A missing or unreadable component is reported where the plugin is declared.
        let Ok(bytes) = std::fs::read(component) else {
            return;
        };
        if !exports_traffic(&bytes) {
            self.error(
                at,
                format!(
                    "the `{target}` target cannot shift traffic in steps: its component ({}) does not export the `traffic` interface",
                    component.display()
                ),
                "use `strategy = \"blue-green\"` (stage beside the live release, verify, switch at once), or a target that routes traffic (kubernetes with an HTTPRoute)",
            );
        }
    }
}

/// Whether a component exports `deploy-agent:plugin/traffic`, read from its top-level export
/// section without compiling it.
pub(crate) fn exports_traffic(bytes: &[u8]) -> bool {
    crate::runtime::inspect::exported_kinds(bytes).contains(&crate::runtime::Kind::Traffic)
}
