//! The rollout of an environment that spans hosts, as the agent that claimed the run drives
//! it: each batch's hosts written to the store for their own agents, waited on, the next batch
//! after; a host that fails stops it and the hosts done go back (or stay, per policy).
//!
//! The coordinator never calls a host: the rows in `host_steps` are the whole protocol, so a
//! coordinator that dies is replaced by the agent that takes its run over, which reads the
//! rows and goes on from the batch they show.

use std::collections::BTreeSet;

use crate::config::{OnHostFailure, Rollout};
use crate::pipeline::*;
use crate::store::{HostAction, HostState, HostStep, ReleaseStatus};

/// How often the coordinator looks at the hosts' rows.
const LOOK: Duration = Duration::from_millis(250);

impl Run<'_> {
    /// The rollout stage: every host of the environment, batch by batch.
    pub(in crate::pipeline) async fn rollout(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Rollout).await?;
        let Some(rollout) = self.env.rollout.clone() else {
            let e = StageError::Config("the environment lists no hosts".into());
            return Err(self.fail(Stage::Rollout, step, e).await);
        };
        match self.roll_out(&rollout).await {
            Ok(detail) => {
                self.end(Stage::Rollout, step, StageStatus::Done, detail)
                    .await
            }
            // The rows stay as they are; the run resumes from them.
            Err(StageError::Suspended) => Err(StageError::Suspended),
            Err(e) => Err(self.fail(Stage::Rollout, step, e).await),
        }
    }

    async fn roll_out(&mut self, r: &Rollout) -> Result<String, StageError> {
        self.note_previous_release().await?;
        let batches = r.batches();
        let mut failed = Vec::new();
        for (i, hosts) in batches.iter().enumerate() {
            let rows: Vec<(String, Option<String>)> =
                hosts.iter().map(|h| (h.clone(), None)).collect();
            self.store
                .queue_hosts(
                    &self.d.id,
                    &self.env.name,
                    i as i64,
                    &rows,
                    HostAction::Rollout,
                )
                .await?;
            self.reporter.note(&format!(
                "batch {}/{}: {}",
                i + 1,
                batches.len(),
                hosts.join(", ")
            ));
            let ended = match self.wait_hosts(hosts, HostAction::Rollout, true).await {
                Ok(ended) => ended,
                Err(StageError::Refused(why)) => {
                    return Err(self.stop_rollout(r, &why).await);
                }
                Err(e) => return Err(e),
            };
            failed.extend(
                ended
                    .into_iter()
                    .filter(|s| s.state == HostState::Failed)
                    .map(|s| format!("{}: {}", s.host, s.detail.unwrap_or_default())),
            );
            if failed.len() > r.max_failures {
                let why = format!("{} host(s) failed: {}", failed.len(), failed.join("; "));
                return Err(self.stop_rollout(r, &why).await);
            }
            if i + 1 < batches.len() && !r.wait.is_zero() {
                progress::set(
                    "rollout",
                    format!("waiting {} s before the next batch", r.wait.as_secs()),
                );
                tokio::time::sleep(r.wait).await;
            }
        }
        let done: Vec<HostStep> = self
            .store
            .host_steps(&self.d.id)
            .await?
            .into_iter()
            .filter(|s| s.action == HostAction::Rollout && s.state == HostState::Done)
            .collect();
        let id = done
            .iter()
            .find_map(|s| s.release_id.clone())
            .unwrap_or_else(|| self.d.id.clone());
        self.record(DeploymentField::ReleaseId, Some(&id)).await?;
        self.d.release_id = Some(id.clone());
        self.store
            .upsert_release(&ReleaseRecord {
                environment: self.env.name.clone(),
                id: id.clone(),
                deployment_id: self.d.id.clone(),
                version: self.d.version.clone(),
                digest: self.artifact.digest.clone(),
                backup_id: self.d.backup_id.clone(),
                schema_version: self.d.schema_after.clone(),
                url: None,
                state: ReleaseStatus::Staged,
                created_at: now_ms(),
                promoted_at: None,
            })
            .await?;
        self.store.mark_live(&self.env.name, &id).await?;
        self.audit(
            "release.promoted",
            Some(id.clone()),
            Some(format!(
                "version {} on {}",
                self.d.version,
                done.iter()
                    .map(|s| s.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        )
        .await;
        let failures = if failed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} failed within max_failures: {}",
                failed.len(),
                failed.join("; ")
            )
        };
        Ok(format!(
            "{id} live on {} of {} host(s) in {} batch(es){failures}",
            done.len(),
            r.hosts.len(),
            batches.len()
        ))
    }

    /// Stops the rollout for `why`: the hosts done go back to what they had (unless the
    /// policy keeps them), and the error says what each host did.
    async fn stop_rollout(&mut self, r: &Rollout, why: &str) -> StageError {
        if r.on_failure == OnHostFailure::Keep {
            return StageError::Release(format!(
                "{why}; the hosts done keep the new release (on_failure = \"keep\"): `status` shows the drift"
            ));
        }
        match self.roll_back_done_hosts().await {
            Ok(back) if back.is_empty() => {
                StageError::Release(format!("{why}; no host had gone live"))
            }
            Ok(back) => StageError::Release(format!("{why}; rolled back {}", back.join(", "))),
            Err(StageError::Suspended) => StageError::Suspended,
            Err(e) => {
                StageError::Release(format!("{why}; rolling the hosts done back failed: {e}"))
            }
        }
    }

    /// Puts every host this run made live (or may have: a row that started) back on
    /// the release it had: rows for their agents, waited on while their agents are alive; a
    /// host whose agent is down gets its row when it returns. What each host did.
    async fn roll_back_done_hosts(&mut self) -> Result<Vec<String>, StageError> {
        let touched = self
            .store
            .cancel_rollout(&self.d.id, "cancelled: the rollout stopped")
            .await?;
        let back: Vec<(String, Option<String>)> = self
            .store
            .host_steps(&self.d.id)
            .await?
            .into_iter()
            .filter(|s| {
                // Done, or started before it failed or was cancelled: the host may have
                // changed, and going back to the release it had is safe either way.
                s.action == HostAction::Rollout
                    && (s.state == HostState::Done
                        || s.started_at.is_some()
                        || touched.contains(&s.host))
            })
            .map(|s| (s.host, s.previous_release))
            .collect();
        if back.is_empty() {
            return Ok(Vec::new());
        }
        let hosts: Vec<String> = back.iter().map(|(h, _)| h.clone()).collect();
        self.reporter
            .note(&format!("rolling back {}", hosts.join(", ")));
        self.store
            .queue_hosts(&self.d.id, &self.env.name, 0, &back, HostAction::Rollback)
            .await?;
        let ended = self.wait_hosts(&hosts, HostAction::Rollback, false).await?;
        let failed: Vec<String> = ended
            .iter()
            .filter(|s| s.state == HostState::Failed)
            .map(|s| format!("{}: {}", s.host, s.detail.clone().unwrap_or_default()))
            .collect();
        if !failed.is_empty() {
            return Err(StageError::Release(failed.join("; ")));
        }
        Ok(ended
            .iter()
            .map(|s| match s.state {
                HostState::Done => format!("{} ({})", s.host, s.detail.clone().unwrap_or_default()),
                _ => format!("{} (queued until its agent returns)", s.host),
            })
            .collect())
    }

    /// A watch that failed in an environment that spans hosts, policy `auto`: every host
    /// goes back.
    pub(in crate::pipeline) async fn roll_back_hosts(
        &mut self,
        evidence: &str,
    ) -> Result<String, StageError> {
        let step = self.begin(Stage::Rollback).await?;
        match self.roll_back_done_hosts().await {
            Ok(back) => {
                if let Some(id) = self.d.release_id.clone() {
                    self.store
                        .set_release_state(&self.env.name, &id, ReleaseStatus::Failed)
                        .await?;
                }
                if let Some(previous) = self.d.previous_release.clone() {
                    self.store.mark_live(&self.env.name, &previous).await?;
                }
                let detail = format!(
                    "the watch failed ({evidence}); rolled back {}",
                    back.join(", ")
                );
                self.end(Stage::Rollback, step, StageStatus::Done, detail.clone())
                    .await?;
                Ok(detail)
            }
            Err(e) => Err(self.fail(Stage::Rollback, step, e).await),
        }
    }

    /// Waits until the rows for `action` on `hosts` have all ended; returns them. A host whose
    /// agent is down blocks a rollout with its reason shown (in the row, the live view and the
    /// log) until it returns, and an operator's `abort` ends the wait as `Refused`; a rollback
    /// does not wait for a host whose agent is down (its row waits for it instead).
    async fn wait_hosts(
        &mut self,
        hosts: &[String],
        action: HostAction,
        abortable: bool,
    ) -> Result<Vec<HostStep>, StageError> {
        let rollback = action == HostAction::Rollback;
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        loop {
            let rows: Vec<HostStep> = self
                .store
                .host_steps(&self.d.id)
                .await?
                .into_iter()
                .filter(|s| s.action == action && hosts.contains(&s.host))
                .collect();
            let open: Vec<&HostStep> = rows
                .iter()
                .filter(|s| matches!(s.state, HostState::Queued | HostState::Running))
                .collect();
            if open.is_empty() {
                return Ok(rows);
            }
            if abortable && let Some(why) = self.store.abort_requested(&self.d.id).await? {
                return Err(StageError::Refused(format!("aborted: {why}")));
            }
            let agents = self.store.agents().await?;
            for s in &open {
                let down = match agents.iter().find(|a| a.name == s.host) {
                    None => Some("has never joined the fleet".to_string()),
                    Some(a) if !a.is_alive() => Some(format!(
                        "is {} (last heartbeat {} s ago)",
                        a.health,
                        (now_ms() - a.heartbeat_at).max(0) / 1000
                    )),
                    Some(_) => None,
                };
                match down {
                    Some(how) if blocked.insert(s.host.clone()) => {
                        let why = if rollback {
                            format!(
                                "the agent of host {} {how}: it rolls back when it returns",
                                s.host
                            )
                        } else {
                            format!(
                                "blocked: the agent of host {} {how}; the batch waits for it to return, or `deploy-agent abort {}`",
                                s.host, self.d.id
                            )
                        };
                        self.reporter.note(&why);
                        tracing::warn!(run = self.d.id, host = s.host, "{why}");
                        self.store.note_host_step(s, &why).await?;
                    }
                    None if blocked.remove(&s.host) => {
                        self.reporter
                            .note(&format!("host {}'s agent is back", s.host));
                        self.store.note_host_step(s, "").await?;
                    }
                    _ => {}
                }
            }
            if rollback && open.iter().all(|s| blocked.contains(&s.host)) {
                return Ok(rows);
            }
            progress::set(
                "rollout",
                format!(
                    "{} on {}",
                    action,
                    open.iter()
                        .map(|s| s.host.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            if self.lease.as_ref().is_some_and(Lease::lost) {
                return Err(StageError::LockLost);
            }
            if self.should_suspend() {
                return Err(StageError::Suspended);
            }
            tokio::time::sleep(LOOK).await;
        }
    }
}
