//! The deploy, verify and promote stages: stage the release on the target, check it, make it live.

use crate::pipeline::*;
use crate::store::ReleaseStatus;

impl Run<'_> {
    pub(in crate::pipeline) async fn deploy(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Deploy).await?;
        let target = self.plugins.target.clone();
        self.note_previous_release().await?;
        let release_id = match self.d.release_id.clone() {
            Some(id) => id,
            None => {
                let staged =
                    match retrying("deploy", || target.deploy(&self.ctx, &self.artifact)).await {
                        Ok(s) => s,
                        Err(e) => return Err(self.fail(Stage::Deploy, step, e.into()).await),
                    };
                self.record(DeploymentField::ReleaseId, Some(&staged.release_id))
                    .await?;
                self.d.release_id = Some(staged.release_id.clone());
                self.staged_url = staged.url.clone();
                let record = ReleaseRecord {
                    environment: self.env.name.clone(),
                    id: staged.release_id.clone(),
                    deployment_id: self.d.id.clone(),
                    version: self.d.version.clone(),
                    digest: self.artifact.digest.clone(),
                    backup_id: self.d.backup_id.clone(),
                    schema_version: self.d.schema_after.clone(),
                    url: staged.url.clone(),
                    state: ReleaseStatus::Staged,
                    created_at: now_ms(),
                    promoted_at: None,
                };
                self.store.upsert_release(&record).await?;
                staged.release_id
            }
        };
        // Poll until ready, on the host's schedule.
        let reporter = self.reporter;
        match wait_ready(&target, &self.ctx, &release_id, &self.env.deploy, |what| {
            reporter.note(&format!("{release_id}: {what}"))
        })
        .await
        {
            Ok((url, waited)) => {
                if url.is_some() {
                    self.staged_url = url;
                }
                self.waited += waited;
            }
            Err(e) => return Err(self.fail(Stage::Deploy, step, e).await),
        }
        let url = self
            .staged_url
            .clone()
            .map(|u| format!(" at {u}"))
            .unwrap_or_default();
        self.end(
            Stage::Deploy,
            step,
            StageStatus::Done,
            format!("release {release_id} ready{url}"),
        )
        .await
    }

    /// Records the release live before this run (what a rollback goes back to), once.
    pub(in crate::pipeline) async fn note_previous_release(&mut self) -> Result<(), StageError> {
        if self.d.previous_release.is_some() {
            return Ok(());
        }
        let live = self
            .store
            .releases(&self.env.name)
            .await?
            .into_iter()
            .find(|r| r.state == ReleaseStatus::Live)
            .map(|r| r.id);
        // Blue-green and canary retire what was live before; on a first run the agent has no
        // record of it, so the target says what serves now.
        let live = match live {
            None if self.env.deploy.strategy.retires() => {
                match self.plugins.target.list_releases(&self.ctx).await {
                    Ok(all) => all.into_iter().find(|r| r.live).map(|r| r.id),
                    Err(e) => {
                        tracing::warn!("asking the target what is live: {e}");
                        None
                    }
                }
            }
            other => other,
        };
        if let Some(live) = &live {
            self.record(DeploymentField::PreviousRelease, Some(live))
                .await?;
        }
        self.d.previous_release = live;
        Ok(())
    }

    pub(in crate::pipeline) fn subst(&self) -> Subst {
        Subst {
            url: self.staged_url.clone(),
            release: self.d.release_id.clone().unwrap_or_default(),
            environment: self.env.name.clone(),
        }
    }

    pub(in crate::pipeline) async fn verify(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Verify).await?;
        let list = self.env.checks_at(CheckStage::Verify);
        if list.is_empty() {
            return self
                .end(
                    Stage::Verify,
                    step,
                    StageStatus::Skipped,
                    "no checks".into(),
                )
                .await;
        }
        let rounds = check_rounds(
            &list,
            &self.subst(),
            &self.config.base_dir(),
            Duration::ZERO,
        )
        .await;
        self.waited += rounds.waited;
        self.record_checks(Stage::Verify, &rounds.results).await;
        self.checks.extend(rounds.results);
        if let Some(summary) = rounds.failed {
            let evidence = self.failed_checks();
            return Err(self
                .fail(
                    Stage::Verify,
                    step,
                    StageError::CheckFailed { summary, evidence },
                )
                .await);
        }
        self.end(
            Stage::Verify,
            step,
            StageStatus::Done,
            format!("{} check(s) passed", list.len()),
        )
        .await
    }

    pub(in crate::pipeline) async fn promote(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Promote).await?;
        let Some(id) = self.d.release_id.clone() else {
            return Err(self
                .fail(
                    Stage::Promote,
                    step,
                    StageError::Refused("no release was staged".into()),
                )
                .await);
        };
        let target = &self.plugins.target;
        if let Err(e) = no_escaping_links(target).await {
            return Err(self
                .fail(
                    Stage::Promote,
                    step,
                    StageError::Refused(format!("{id}: {e}")),
                )
                .await);
        }
        if let Err(e) = retrying("promote", || target.promote(&self.ctx, &id)).await {
            return Err(self.fail(Stage::Promote, step, e.into()).await);
        }
        if let Err(e) = self.until_live(&id).await {
            return Err(self.fail(Stage::Promote, step, e).await);
        }
        self.store.mark_live(&self.env.name, &id).await?;
        self.audit(
            "release.promoted",
            Some(id.clone()),
            Some(format!("version {}", self.d.version)),
        )
        .await;
        let previous = self
            .d
            .previous_release
            .clone()
            .map(|p| format!(" (was {p})"))
            .unwrap_or_default();
        self.end(
            Stage::Promote,
            step,
            StageStatus::Done,
            format!("{id} is live{previous}"),
        )
        .await
    }

    /// After `promote`, waits until the target reports the release live.
    pub(in crate::pipeline) async fn until_live(&mut self, id: &str) -> Result<(), StageError> {
        let reporter = self.reporter;
        let waited = wait_live(
            &self.plugins.target,
            &self.ctx,
            id,
            &self.env.deploy,
            |what| reporter.note(&format!("{id}: {what}")),
        )
        .await?;
        self.waited += waited;
        Ok(())
    }
}
