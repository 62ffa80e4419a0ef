//! The canary's shift stage (traffic moved to the staged release step by step, with the
//! analysis at each) and the retire stage that frees the old release after a blue-green or
//! canary switch.
//!
//! Every weight change is journaled before it is asked of the target and again once it took
//! effect ([`crate::store::TrafficStep`]), so a run killed anywhere resumes at the step it
//! was on, with the weight that step had: never a step ahead, never silently back to 0.

use crate::config::{CanaryStep, Pause};
use crate::pipeline::*;
use crate::store::{ReleaseStatus, TrafficPhase};

/// Where a run's canary stands, from its journaled steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::pipeline) enum Resume {
    /// At step `step` (from 0), with the weight journaled for it.
    At { step: usize, weight: u8 },
    /// An earlier process aborted it: traffic went back to stable.
    Aborted(String),
}

/// The step a run takes up from its journal: the first not done, at its journaled weight
/// when it had begun, else at the configured one.
pub(in crate::pipeline) fn resume_point(
    steps: &[CanaryStep],
    journal: &[crate::store::TrafficStep],
) -> Resume {
    let mut next = 0usize;
    for row in journal {
        match row.phase {
            TrafficPhase::Aborted => {
                return Resume::Aborted(row.detail.clone().unwrap_or_default());
            }
            TrafficPhase::Done => next = next.max(row.step as usize + 1),
            TrafficPhase::Setting | TrafficPhase::Holding => {
                return Resume::At {
                    step: row.step as usize,
                    weight: row.weight.clamp(0, 100) as u8,
                };
            }
        }
    }
    Resume::At {
        step: next,
        weight: steps.get(next).map_or(100, |s| s.weight),
    }
}

fn weight_gauge(environment: &str, release: &str, weight: u8) {
    crate::metrics::set(
        crate::metrics::Family::TrafficWeight,
        &[("environment", environment), ("release", release)],
        f64::from(weight),
    );
}

impl Run<'_> {
    pub(in crate::pipeline) async fn shift(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Shift).await?;
        let Some(id) = self.d.release_id.clone() else {
            return Err(self
                .fail(
                    Stage::Shift,
                    step,
                    StageError::Refused("no release was staged".into()),
                )
                .await);
        };
        // A first release has nothing to share traffic with: it takes all of it at promote,
        // as Argo Rollouts fast-tracks a Rollout's first revision.
        if self.d.previous_release.is_none() {
            return self
                .end(
                    Stage::Shift,
                    step,
                    StageStatus::Skipped,
                    format!("nothing was live before; {id} takes all traffic when promoted"),
                )
                .await;
        }
        let steps = self.env.deploy.steps.clone();
        let journal = self.store.traffic_steps(&self.d.id).await?;
        let (first, resumed_weight) = match resume_point(&steps, &journal) {
            Resume::Aborted(why) => {
                let e = StageError::Refused(format!(
                    "the canary of {id} was aborted earlier ({why}); traffic is on the stable release"
                ));
                return Err(self.fail(Stage::Shift, step, e).await);
            }
            Resume::At { step, weight } => (step, weight),
        };
        let resumed = if first > 0 || !journal.is_empty() {
            let text = format!(
                "resumed at step {} of {} ({resumed_weight} %)",
                first + 1,
                steps.len()
            );
            self.reporter.note(&format!("the canary of {id} {text}"));
            format!("{text}; ")
        } else {
            String::new()
        };
        let mut taken = Vec::new();
        for (i, s) in steps.iter().enumerate().skip(first) {
            let weight = if i == first { resumed_weight } else { s.weight };
            if let Err(e) = self.shift_step(i, &id, weight, s).await {
                if matches!(e, StageError::Suspended | StageError::LockLost) {
                    return Err(e);
                }
                let summary = format!("canary step {} ({weight} %): {e}", i + 1);
                let aborted = self.abort_canary(i, &id, &summary).await;
                let evidence = self.failed_checks();
                let summary = match aborted {
                    Ok(()) => format!("{summary}; all traffic is back on the stable release"),
                    Err(a) => format!(
                        "{summary}; and traffic could not be returned to the stable release: {a}"
                    ),
                };
                return Err(self
                    .fail(
                        Stage::Shift,
                        step,
                        StageError::CheckFailed { summary, evidence },
                    )
                    .await);
            }
            taken.push(format!("{weight} %"));
        }
        self.end(
            Stage::Shift,
            step,
            StageStatus::Done,
            format!(
                "{resumed}{id} took {} of traffic, step by step",
                taken.join(" → ")
            ),
        )
        .await
    }

    /// One step: journal it, set the weight, wait until it is in effect, then pause (with the
    /// analysis and watch checks running, or at the approval gate).
    async fn shift_step(
        &mut self,
        i: usize,
        id: &str,
        weight: u8,
        s: &CanaryStep,
    ) -> Result<(), StageError> {
        let run = self.d.id.clone();
        let target = self.plugins.target.clone();
        self.store
            .traffic_step_started(&run, i as i64, id, weight)
            .await?;
        failpoint::hit("before", &format!("weight-{weight}"));
        retrying("set-weight", || target.set_weight(&self.ctx, id, weight)).await?;
        let reporter = self.reporter;
        self.waited += wait_weight(&target, &self.ctx, id, weight, &self.env.deploy, |what| {
            reporter.note(&format!("{id}: {what}"))
        })
        .await?;
        self.store
            .traffic_step_phase(&run, i as i64, TrafficPhase::Holding, None)
            .await?;
        weight_gauge(&self.env.name, id, weight);
        let at = format!(
            "canary step {} of {}: {weight} % of traffic on {id}",
            i + 1,
            self.env.deploy.steps.len()
        );
        progress::set("weight", at.clone());
        self.reporter.note(&at);
        self.notify(
            EventKind::StageSucceeded,
            Some(Stage::Shift),
            format!("{} on {}: {at}", self.d.version, self.env.name),
            None,
            None,
        );
        failpoint::hit("after", &format!("weight-{weight}"));
        let detail = match &s.pause {
            Pause::None => "no pause".to_string(),
            Pause::For(d) => {
                let list = self.env.checks_at(CheckStage::Watch);
                let began = Instant::now();
                progress::countdown("pause", "pause", began + *d);
                let gate = format!("analysis-step-{}", i + 1);
                let observed = self.observe(Stage::Shift, &list, *d, &gate).await?;
                if let Err(summary) = observed.verdict {
                    return Err(StageError::Refused(summary));
                }
                // The pause lasts its time even when the analysis finished sooner.
                if let Some(rest) = d.checked_sub(began.elapsed()) {
                    tokio::time::sleep(rest).await;
                    self.waited += rest;
                }
                format!("held {} ms; checks and analysis passed", d.as_millis())
            }
            Pause::Approval => {
                let question = format!(
                    "{} to {} at {weight} % (canary step {})",
                    self.d.version,
                    self.env.name,
                    i + 1
                );
                let gate = format!("canary-step-{}", i + 1);
                let expires = self.env.approval.as_ref().and_then(|a| a.expires);
                self.wait_for_decision(&gate, &question, expires).await?
            }
        };
        self.store
            .traffic_step_phase(&run, i as i64, TrafficPhase::Done, Some(&detail))
            .await?;
        Ok(())
    }

    /// All traffic back to the stable release: journaled, asked, waited for; the release is
    /// marked failed.
    async fn abort_canary(&mut self, i: usize, id: &str, why: &str) -> Result<(), StageError> {
        let run = self.d.id.clone();
        self.store
            .traffic_step_phase(&run, i as i64, TrafficPhase::Aborted, Some(why))
            .await?;
        let target = self.plugins.target.clone();
        self.reporter
            .note(&format!("aborting the canary of {id}: {why}"));
        retrying("abort", || target.abort_traffic(&self.ctx, id)).await?;
        let reporter = self.reporter;
        self.waited += wait_weight(&target, &self.ctx, id, 0, &self.env.deploy, |what| {
            reporter.note(&format!("{id}: {what}"))
        })
        .await?;
        weight_gauge(&self.env.name, id, 0);
        self.store
            .set_release_state(&self.env.name, id, ReleaseStatus::Failed)
            .await?;
        self.audit(
            "release.canary-aborted",
            Some(id.to_string()),
            Some(why.to_string()),
        )
        .await;
        self.notify(
            EventKind::RolledBack,
            Some(Stage::Shift),
            format!(
                "{} on {}: canary aborted, all traffic is back on the stable release",
                self.d.version, self.env.name
            ),
            Some(why.to_string()),
            None,
        );
        Ok(())
    }

    /// Blue-green and canary: after the watch passed, wait out what is left of the
    /// scale-down delay since the switch, then retire the release that was live before.
    pub(in crate::pipeline) async fn retire(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Retire).await?;
        let target = self.plugins.target.clone();
        let Some(previous) = self.d.previous_release.clone() else {
            return self
                .end(
                    Stage::Retire,
                    step,
                    StageStatus::Skipped,
                    "no earlier release".into(),
                )
                .await;
        };
        if !target.kinds().contains(&crate::runtime::Kind::Traffic) {
            return self
                .end(
                    Stage::Retire,
                    step,
                    StageStatus::Skipped,
                    format!(
                        "`{}` keeps earlier releases itself; {previous} stays for rollback",
                        target.name()
                    ),
                )
                .await;
        }
        let promoted = self
            .store
            .releases(&self.env.name)
            .await?
            .into_iter()
            .find(|r| Some(&r.id) == self.d.release_id.as_ref())
            .and_then(|r| r.promoted_at)
            .unwrap_or_else(now_ms);
        let delay = self.env.deploy.scale_down_delay;
        let until = promoted + delay.as_millis() as i64;
        let rest = Duration::from_millis((until - now_ms()).max(0) as u64);
        if !rest.is_zero() {
            progress::countdown("delay", "scale-down delay", Instant::now() + rest);
            tokio::time::sleep(rest).await;
            self.waited += rest;
        }
        if let Err(e) = retrying("retire", || target.retire(&self.ctx, &previous)).await {
            return Err(self.fail(Stage::Retire, step, e.into()).await);
        }
        self.audit(
            "release.retired",
            Some(previous.clone()),
            Some(format!("{} ms after the switch", delay.as_millis())),
        )
        .await;
        self.end(
            Stage::Retire,
            step,
            StageStatus::Done,
            format!(
                "{previous} retired, {} ms after the switch",
                delay.as_millis()
            ),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TrafficStep;

    fn steps() -> Vec<CanaryStep> {
        [10, 50, 100]
            .into_iter()
            .map(|weight| CanaryStep {
                weight,
                pause: Pause::None,
            })
            .collect()
    }

    fn row(step: i64, weight: i64, phase: TrafficPhase) -> TrafficStep {
        TrafficStep {
            run_id: "r".into(),
            step,
            release_id: "rel".into(),
            weight,
            phase,
            detail: Some("why".into()),
            started_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_run_resumes_at_its_step_with_its_weight() {
        assert_eq!(
            resume_point(&steps(), &[]),
            Resume::At {
                step: 0,
                weight: 10
            }
        );
        let done = row(0, 10, TrafficPhase::Done);
        assert_eq!(
            resume_point(&steps(), std::slice::from_ref(&done)),
            Resume::At {
                step: 1,
                weight: 50
            }
        );
        // Killed while setting or holding step 2: step 2 again, at the weight it journaled.
        for phase in [TrafficPhase::Setting, TrafficPhase::Holding] {
            assert_eq!(
                resume_point(&steps(), &[done.clone(), row(1, 50, phase)]),
                Resume::At {
                    step: 1,
                    weight: 50
                }
            );
        }
        assert_eq!(
            resume_point(&steps(), &[done, row(1, 50, TrafficPhase::Aborted)]),
            Resume::Aborted("why".into())
        );
        let all: Vec<_> = (0..3)
            .map(|i| row(i, [10, 50, 100][i as usize], TrafficPhase::Done))
            .collect();
        assert_eq!(
            resume_point(&steps(), &all),
            Resume::At {
                step: 3,
                weight: 100
            }
        );
    }
}
