//! The watch stage, and the automatic rollback a failed watch triggers.

use crate::pipeline::*;
use crate::store::{ReleaseStatus, RollbackStatus};

/// What [`Run::observe`] found.
pub(in crate::pipeline) struct Observed {
    /// How many rounds of checks ran.
    pub rounds: u32,
    /// `Err(summary)`: a check or an analysis failed (or an inconclusive one was rejected).
    pub verdict: Result<(), String>,
}

impl Run<'_> {
    /// Runs `checks` in rounds for `window` and every analysis of the environment, side by
    /// side, recording their evidence under `stage`; an inconclusive analysis waits for a
    /// person's decision at `gate`.
    pub(in crate::pipeline) async fn observe(
        &mut self,
        stage: Stage,
        list: &[crate::config::CheckConfig],
        window: Duration,
        gate: &str,
    ) -> Result<Observed, StageError> {
        let subst = self.subst();
        let base = self.config.base_dir();
        let analyses = self.env.analysis.clone();
        let checks_fut = async {
            if list.is_empty() {
                Rounds::default()
            } else {
                check_rounds(list, &subst, &base, window).await
            }
        };
        let (store, run_id) = (&self.store, self.d.id.as_str());
        let analyses_fut = async {
            let mut out = Vec::new();
            for a in &analyses {
                out.push(analysis::run(a, Some((store, run_id, stage.name()))).await);
            }
            out
        };
        let (rounds, results) = tokio::join!(checks_fut, analyses_fut);
        self.waited += rounds.waited.max(results.iter().map(|r| r.waited).sum());
        self.record_checks(stage, &rounds.results).await;
        self.checks.extend(rounds.results);
        let mut evidence: Option<String> = rounds.failed;
        for r in &results {
            self.reporter.note(&r.detail);
        }
        if evidence.is_none() {
            evidence = results
                .iter()
                .find(|r| r.verdict == analysis::Verdict::Failed)
                .map(|r| r.detail.clone());
        }
        let unsure: Vec<&analysis::AnalysisResult> = results
            .iter()
            .filter(|r| r.verdict == analysis::Verdict::Inconclusive)
            .collect();
        self.analyses.extend(results.iter().cloned());
        if evidence.is_none() && !unsure.is_empty() {
            let question = unsure
                .iter()
                .map(|r| r.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            if let Err(e) = self.wait_for_decision(gate, &question, None).await {
                evidence = Some(format!("{question}; {e}"));
            }
        }
        Ok(Observed {
            rounds: rounds.rounds,
            verdict: evidence.map_or(Ok(()), Err),
        })
    }

    /// Watch checks for the window and every analysis, side by side. A failure is recorded
    /// as `watch_failed` (the evidence) for the rollback policy.
    pub(in crate::pipeline) async fn watch(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Watch).await?;
        let list = self.env.checks_at(CheckStage::Watch);
        if list.is_empty() && self.env.analysis.is_empty() {
            return self
                .end(
                    Stage::Watch,
                    step,
                    StageStatus::Skipped,
                    "no watch checks or analysis".into(),
                )
                .await;
        }
        let window = self.env.deploy.watch;
        let observed = self
            .observe(Stage::Watch, &list, window, "analysis")
            .await?;
        if let Err(summary) = observed.verdict {
            self.watch_failed = Some(summary.clone());
            let evidence = self.failed_checks();
            return Err(self
                .fail(
                    Stage::Watch,
                    step,
                    StageError::CheckFailed { summary, evidence },
                )
                .await);
        }
        let detail = format!(
            "{} check(s){}{} passed",
            list.len(),
            if observed.rounds > 1 {
                format!(" x {} rounds", observed.rounds)
            } else {
                String::new()
            },
            if self.env.analysis.is_empty() {
                String::new()
            } else {
                format!(", {} analysis", self.env.analysis.len())
            }
        );
        self.end(Stage::Watch, step, StageStatus::Done, detail)
            .await
    }

    /// The rollback policy's `auto`: the previous release live again, verified, announced.
    pub(in crate::pipeline) async fn auto_rollback(
        &mut self,
        evidence: &str,
    ) -> Result<String, StageError> {
        if self.env.rollout.is_some() {
            return self.roll_back_hosts(evidence).await;
        }
        let step = self.begin(Stage::Rollback).await?;
        let started = now_ms();
        let Some(previous) = self.d.previous_release.clone() else {
            return Err(self
                .fail(
                    Stage::Rollback,
                    step,
                    StageError::Refused("there is no previous release to roll back to".into()),
                )
                .await);
        };
        let failed = self.d.release_id.clone().unwrap_or_default();
        let switched = switch_back(
            &self.store,
            &self.plugins.target,
            &self.ctx,
            self.env,
            &previous,
            Some((&failed, ReleaseStatus::Failed)),
        )
        .await;
        let live = match switched {
            Ok(id) => id,
            Err(e) => return Err(self.fail(Stage::Rollback, step, e).await),
        };
        // The release's recorded URL, so `{url}` checks run against the release serving again.
        let url = self
            .store
            .releases(&self.env.name)
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|r| r.id == live))
            .and_then(|r| r.url);
        let rounds = verify_release(self.config, self.env, &live, url).await;
        self.waited += rounds.waited;
        let verified = match &rounds.failed {
            None => format!("{} check(s) pass on it", self.env.checks.len()),
            Some(f) => format!("but it fails its checks too: {f}"),
        };
        let detail =
            format!("{failed} failed its watch ({evidence}); {live} is live again, {verified}");
        let mut record = crate::store::RollbackRecord {
            id: new_id(),
            environment: self.env.name.clone(),
            initiator: "automatic".into(),
            mode: "app".into(),
            from_release: Some(failed.clone()),
            to_release: Some(live.clone()),
            actor: "agent".into(),
            reason: Some(evidence.to_string()),
            status: if rounds.failed.is_none() {
                RollbackStatus::Succeeded
            } else {
                RollbackStatus::Failed
            },
            detail: Some(detail.clone()),
            started_at: started,
            ..Default::default()
        };
        record.finish();
        self.store.save_rollback(&record).await?;
        self.audit(
            "release.rolled-back",
            Some(failed.clone()),
            Some(detail.clone()),
        )
        .await;
        self.notify(
            EventKind::RolledBack,
            Some(Stage::Rollback),
            format!(
                "{} on {} was rolled back automatically: {live} is live again",
                self.d.version, self.env.name
            ),
            Some(format!("reason: {evidence}; verification: {verified}")),
            None,
        );
        if rounds.failed.is_some() {
            let evidence = rounds.results.into_iter().filter(|r| !r.passed).collect();
            return Err(self
                .fail(
                    Stage::Rollback,
                    step,
                    StageError::CheckFailed {
                        summary: detail,
                        evidence,
                    },
                )
                .await);
        }
        self.end(Stage::Rollback, step, StageStatus::Done, detail.clone())
            .await?;
        Ok(detail)
    }
}
