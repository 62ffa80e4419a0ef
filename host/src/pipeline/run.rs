//! A run's journal: starting and ending stages in the state store, the audit entries,
//! notifications, and how a run ends (finished, suspended for shutdown).

use super::*;
use crate::store::{ReleaseStatus, RunStatus};
use journal::{After, Open};
use sequence::{Interrupted, Step};

/// Runs a deployment: recovers interrupted runs of the environment first, then takes the
/// release through every stage. A run that starts and fails is an `Ok` outcome with status
/// `failed`; `Err` means nothing was started.
pub async fn deploy(
    agent: &Agent,
    request: &Request,
    reporter: &dyn Reporter,
) -> Result<Outcome, PipelineError> {
    let started = Instant::now();
    let config = &*agent.config;
    let (env, plugins, artifact_path, artifact) = prepare(agent, request).await?;
    let store = agent.store.clone();
    let owner = Owner::this_process();
    let id = request.id.clone().unwrap_or_else(new_id);

    // lock
    let lock_started = Instant::now();
    let (lease, taken_over) = store
        .acquire(&env.name, &owner, &id, env.deploy.lock_lease)
        .await?;
    if let Some(prev) = &taken_over {
        let why = if prev.expires_at < now_ms() {
            "its lease expired"
        } else {
            "its process is gone"
        };
        reporter.note(&format!(
            "took over the lock of {} (run {}): {why}",
            prev.owner, prev.deployment_id
        ));
    }

    // A rollback or restore whose agent died comes first: the operator settles it.
    if let Err(e) = restore::refuse_over_unfinished(&store, env).await {
        lease.release().await?;
        return Err(e);
    }

    // Interrupted runs: resume the same release, supersede any other; a run that was being
    // rolled back when its agent died is rolled back to the end.
    let mut recovered = Vec::new();
    let mut resumed: Option<Deployment> = None;
    for old in store.running(&env.name).await? {
        let decision = Interrupted::decide(env, &old, &artifact, resumed.is_some());
        let stopped = old
            .stage
            .as_deref()
            .unwrap_or("its first stage")
            .to_string();
        let detail = if decision == Interrupted::RollBack {
            let done = recover::roll_back(env, &store, &plugins.target, &old)
                .await
                .map_err(|cause| PipelineError::Recovery {
                    run: old.id.clone(),
                    cause,
                })?;
            format!(
                "run {} of {} stopped in {stopped}; rolled back: {done}",
                old.id, old.version
            )
        } else if decision == Interrupted::Resume {
            store.take_over(&old.id, &owner.0, &old.owner).await?;
            format!(
                "run {} of {} stopped in {stopped}; resuming it",
                old.id, old.version
            )
        } else {
            store
                .finish_deployment(
                    &old.id,
                    RunStatus::Superseded,
                    Some("interrupted; superseded by a newer run"),
                )
                .await?;
            format!(
                "run {} of {} stopped in {stopped}; superseded: this run rolls forward from the state it left (schema {}, release {})",
                old.id,
                old.version,
                old.schema_after
                    .as_deref()
                    .or(old.schema_before.as_deref())
                    .unwrap_or("unchanged"),
                old.release_id.as_deref().unwrap_or("none staged"),
            )
        };
        recovered.push(
            recover::record(
                &store,
                reporter,
                &request.actor,
                env,
                &old,
                decision.action(),
                detail,
            )
            .await?,
        );
        if decision == Interrupted::Resume {
            resumed = Some(old);
        }
    }

    let d = match resumed {
        Some(d) => Deployment {
            owner: owner.0.clone(),
            status: RunStatus::Running,
            ..d
        },
        None => {
            let d = Deployment {
                id: id.clone(),
                environment: env.name.clone(),
                version: artifact.version.clone(),
                artifact: artifact_path.as_ref().map(|p| {
                    p.canonicalize()
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                }),
                digest: artifact.digest.clone(),
                actor: request.actor.clone(),
                reason: request.reason.clone(),
                host: crate::store::hostname(),
                owner: owner.0.clone(),
                status: RunStatus::Running,
                stage: Some("lock".into()),
                started_at: now_ms(),
                ..Default::default()
            };
            store.insert_deployment(&d).await?;
            store
                .audit(AuditEntry {
                    actor: request.actor.clone(),
                    action: "deploy.started".into(),
                    environment: Some(env.name.clone()),
                    subject: Some(d.id.clone()),
                    why: request.reason.clone(),
                    detail: Some(format!("version {}", d.version)),
                })
                .await?;
            d
        }
    };
    let ctx = CallContext {
        environment: env.name.clone(),
        deployment_id: d.id.clone(),
    };
    let notifications = Notifications::start(
        plugins.notifiers.clone(),
        super::notify::Audience::of(config, env),
        ctx.clone(),
        agent.events().clone(),
    );
    let mut run = Run {
        config,
        server: agent.server_url().map(str::to_string),
        events: agent.events().clone(),
        env,
        store,
        plugins,
        reporter,
        notifications,
        lease: Some(lease),
        d,
        ctx,
        artifact_path,
        artifact,
        stages: Vec::new(),
        findings: Vec::new(),
        checks: Vec::new(),
        stop: request.stop.clone(),
        suspended: false,
        staged_url: None,
        waited: Duration::ZERO,
        analyses: Vec::new(),
        watch_failed: None,
    };
    run.notify(
        EventKind::Started,
        None,
        format!("Deploying {} to {}", run.d.version, env.name),
        None,
        None,
    );
    let lock_report = StageReport {
        stage: Stage::Lock,
        status: StageStatus::Done,
        duration_ms: lock_started.elapsed().as_secs_f64() * 1e3,
        detail: format!("lease {} s", env.deploy.lock_lease.as_secs()),
    };
    reporter.stage(&lock_report);
    run.stages.push(lock_report);

    let result = run.stages_in_order().await;
    let watch_failed = run.watch_failed.clone();
    // Migrations that contract the schema make an app-only rollback unsafe: hold and notify.
    let contract = if watch_failed.is_some() && env.rollback == crate::config::RollbackPolicy::Auto
    {
        run.contract_changes()
    } else {
        Vec::new()
    };
    let policy = if contract.is_empty() {
        env.rollback
    } else {
        crate::config::RollbackPolicy::Notify
    };
    match journal::after(result, run.suspended, watch_failed.is_some(), policy) {
        After::Suspend => run.suspend(started, recovered).await,
        After::Finish(Some(StageError::KeptLive(error))) if !contract.is_empty() => {
            let held = StageError::Held {
                error,
                changes: migrate::contract::describe(&contract),
            };
            run.finish(Some(held), false, started, recovered).await
        }
        After::Finish(error) => run.finish(error, false, started, recovered).await,
        After::RollBack(failed) => {
            let evidence = watch_failed.unwrap_or_default();
            match run.auto_rollback(&evidence).await {
                Ok(_) => run.finish(Some(failed), true, started, recovered).await,
                Err(e) => {
                    let error = StageError::RollbackFailed {
                        error: Box::new(failed),
                        rollback: Box::new(e),
                    };
                    run.finish(Some(error), false, started, recovered).await
                }
            }
        }
    }
}

impl Run<'_> {
    /// The contract changes among the migrations this run applied (none without a database,
    /// or when it applied none).
    fn contract_changes(&self) -> Vec<migrate::contract::ContractChange> {
        let (Some(db), Some(after)) = (&self.env.database, &self.d.schema_after) else {
            return Vec::new();
        };
        if self.d.schema_before.as_ref() == Some(after) {
            return Vec::new();
        }
        let Ok(settings) = db.settings(self.env.strict) else {
            return Vec::new();
        };
        let version = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<i64>().ok());
        migrate::contract::between(
            &settings.dir,
            version(&self.d.schema_before),
            version(&Some(after.clone())),
        )
        .unwrap_or_else(|e| {
            tracing::warn!("reading the migrations to classify them: {e}");
            Vec::new()
        })
    }

    pub(super) fn notify(
        &self,
        kind: EventKind,
        stage: Option<Stage>,
        summary: String,
        detail: Option<String>,
        duration: Option<Duration>,
    ) {
        let mut event = notify::event(
            kind,
            &self.env.name,
            &self.d.id,
            &self.d.version,
            &self.d.actor,
            stage.map(Stage::name),
            summary,
            detail,
            duration,
        );
        if let Some(url) = &self.staged_url {
            event.links.push(("release".into(), url.clone()));
        }
        self.notifications.send(event);
    }

    /// Whether the daemon asked the run to stop at its next safe point; marks it suspended.
    pub(super) fn should_suspend(&mut self) -> bool {
        if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
            self.suspended = true;
        }
        self.suspended
    }

    /// Journals a stage's start, if it may start (see [`journal::checkpoint`]).
    pub(super) async fn begin(&mut self, stage: Stage) -> Result<Open, StageError> {
        let stop = self.stop.as_ref().is_some_and(|s| *s.borrow());
        let lost = self.lease.as_ref().is_some_and(Lease::lost);
        let open = journal::begin(&self.store, &self.d.id, stage, stop, lost)
            .await
            .inspect_err(|e| self.suspended |= matches!(e, StageError::Suspended))?;
        self.d.stage = Some(stage.name().into());
        progress::started(stage);
        self.reporter.stage(&StageReport {
            stage,
            status: StageStatus::Started,
            duration_ms: 0.0,
            detail: String::new(),
        });
        self.notify(
            EventKind::StageStarted,
            Some(stage),
            format!("{} started", stage.name()),
            None,
            None,
        );
        failpoint::hit("before", stage.name());
        Ok(open)
    }

    /// Journals a stage's end.
    pub(super) async fn end(
        &mut self,
        stage: Stage,
        step: Open,
        status: StageStatus,
        detail: String,
    ) -> Result<(), StageError> {
        failpoint::hit("after", stage.name());
        progress::ended();
        let elapsed = step.1.elapsed();
        let word = status.word();
        let report = journal::end(&self.store, &self.d.id, stage, step, status, detail).await?;
        let detail = report.detail.clone();
        self.reporter.stage(&report);
        self.stages.push(report);
        crate::metrics::observe(
            crate::metrics::Family::StageSeconds,
            &[("environment", &self.env.name), ("stage", stage.name())],
            elapsed.as_secs_f64(),
        );
        let kind = if status == StageStatus::Failed {
            EventKind::StageFailed
        } else {
            EventKind::StageSucceeded
        };
        self.notify(
            kind,
            Some(stage),
            format!("{} {word}", stage.name()),
            Some(detail),
            Some(elapsed),
        );
        Ok(())
    }

    /// Records a stage's check results as the run's evidence (logged if the store refuses:
    /// evidence never fails a run).
    pub(super) async fn record_checks(&self, stage: Stage, results: &[CheckResult]) {
        for c in results {
            let e = crate::store::NewEvidence {
                stage: stage.name(),
                kind: "check",
                name: &c.name,
                outcome: if c.passed { "pass" } else { "fail" },
                detail: Some(&c.detail),
                ..Default::default()
            };
            if let Err(e) = self.store.record_evidence(&self.d.id, e).await {
                tracing::warn!(run = self.d.id, "recording check `{}`: {e}", c.name);
            }
        }
    }

    /// The checks of this run that failed so far: a failed stage's evidence.
    pub(super) fn failed_checks(&self) -> Vec<CheckResult> {
        self.checks.iter().filter(|c| !c.passed).cloned().collect()
    }

    /// Journals a stage's failure and returns it, with the stage.
    pub(super) async fn fail(&mut self, stage: Stage, step: Open, error: StageError) -> StageError {
        if let Err(e) = self
            .end(stage, step, StageStatus::Failed, error.to_string())
            .await
        {
            tracing::error!(
                run = self.d.id,
                stage = stage.name(),
                "cannot journal the stage's failure: {e}"
            );
        }
        StageError::In {
            stage,
            cause: Box::new(error),
        }
    }

    pub(super) async fn stages_in_order(&mut self) -> Result<(), StageError> {
        // The order is the environment's, computed once for the run and for `plan`. Each
        // stage runs pumped: the live view and the event stream see what it is doing.
        let reporter = self.reporter;
        let publish = self.publishing();
        for step in sequence::sequence(self.env) {
            let work = async {
                match step {
                    Step::Approve(gate) => self.approve(sequence::gate_name(gate)).await,
                    Step::Validate => self.validate().await,
                    Step::BackupAndMigrate => self.backup_and_migrate().await,
                    Step::Deploy => self.deploy().await,
                    Step::Verify => self.verify().await,
                    Step::Shift => self.shift().await,
                    Step::Promote => self.promote().await,
                    Step::Rollout => self.rollout().await,
                    Step::Watch => self.watch().await,
                    Step::Retire => self.retire().await,
                }
            };
            progress::pumped(reporter, Some(&publish), work).await?;
        }
        Ok(())
    }

    /// Who this run's progress events belong to.
    pub(super) fn publishing(&self) -> progress::Publish {
        progress::Publish {
            bus: self.events.clone(),
            environment: self.env.name.clone(),
            run: self.d.id.clone(),
            version: self.d.version.clone(),
            actor: self.d.actor.clone(),
        }
    }

    pub(super) async fn record(
        &self,
        field: DeploymentField,
        value: Option<&str>,
    ) -> Result<(), StageError> {
        Ok(self.store.set_deployment(&self.d.id, field, value).await?)
    }

    pub(super) async fn audit(
        &self,
        action: &str,
        subject: Option<String>,
        detail: Option<String>,
    ) {
        let entry = AuditEntry {
            actor: self.d.actor.clone(),
            action: action.to_string(),
            environment: Some(self.env.name.clone()),
            subject: subject.or_else(|| Some(self.d.id.clone())),
            why: self.d.reason.clone(),
            detail,
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    pub(super) async fn finish(
        mut self,
        error: Option<StageError>,
        rolled_back: bool,
        started: Instant,
        recovered: Vec<Recovery>,
    ) -> Result<Outcome, PipelineError> {
        let status = journal::status(error.as_ref(), rolled_back);
        // From here on the error is text: the journal's, the events' and the audit's.
        let error = error.map(|e| e.to_string());
        let (kind, summary) = match &error {
            Some(e) if rolled_back => (
                EventKind::Failed,
                format!(
                    "Deploying {} to {} failed in {e}; rolled back",
                    self.d.version, self.env.name
                ),
            ),
            None => (
                EventKind::Succeeded,
                format!("{} is live on {}", self.d.version, self.env.name),
            ),
            Some(e) => (
                EventKind::Failed,
                format!(
                    "Deploying {} to {} failed in {e}",
                    self.d.version, self.env.name
                ),
            ),
        };
        crate::metrics::inc(
            crate::metrics::Family::Deployments,
            &[
                ("environment", &self.env.name),
                ("outcome", status.as_str()),
            ],
        );
        if error.is_some()
            && let Some(id) = &self.d.release_id
            && self
                .stages
                .iter()
                .all(|s| s.stage != Stage::Promote || s.status != StageStatus::Done)
            && let Err(e) = self
                .store
                .set_release_state(&self.env.name, id, ReleaseStatus::Failed)
                .await
        {
            tracing::error!(
                run = self.d.id,
                release = id,
                "cannot mark the staged release failed: {e}"
            );
        }
        // notify: the final event, then wait for the queue to drain.
        let step = self.begin(Stage::Notify).await.ok();
        self.notify(kind, None, summary, error.clone(), Some(started.elapsed()));
        let notifications = std::mem::replace(
            &mut self.notifications,
            Notifications::start(
                Vec::new(),
                Default::default(),
                self.ctx.clone(),
                self.events.clone(),
            ),
        );
        let delivery = notifications.finish().await;
        if let Some(step) = step {
            let detail = if delivery.failed.is_empty() {
                format!("{} delivered", delivery.delivered)
            } else {
                format!(
                    "{} delivered, {} not (never fatal; see the log)",
                    delivery.delivered,
                    delivery.failed.len()
                )
            };
            if let Err(e) = self
                .end(Stage::Notify, step, StageStatus::Done, detail)
                .await
            {
                tracing::error!(run = self.d.id, "cannot journal the notify stage: {e}");
            }
        }
        self.store
            .finish_deployment(&self.d.id, status, error.as_deref())
            .await?;
        self.audit(&format!("deploy.{status}"), None, error.clone())
            .await;
        self.outcome(delivery, started, recovered, None).await
    }

    /// Releases the lock and reports the run as the store has it (`status` overriding).
    pub(super) async fn outcome(
        mut self,
        delivery: notify::Delivery,
        started: Instant,
        recovered: Vec<Recovery>,
        status: Option<RunStatus>,
    ) -> Result<Outcome, PipelineError> {
        if let Some(lease) = self.lease.take() {
            lease.release().await?;
        }
        let mut deployment = self
            .store
            .deployment(&self.d.id)
            .await?
            .unwrap_or_else(|| self.d.clone());
        if let Some(s) = status {
            deployment.status = s;
        }
        let total = started.elapsed().saturating_sub(self.waited);
        Ok(Outcome {
            deployment,
            stages: self.stages,
            findings: self.findings,
            checks: self.checks,
            analyses: self.analyses,
            recovered,
            notify_failures: self
                .plugins
                .unloaded_notifiers
                .iter()
                .cloned()
                .chain(delivery.failed)
                .collect(),
            total_ms: total.as_secs_f64() * 1e3,
        })
    }
}

impl Run<'_> {
    /// Leaves the run for the next start: journaled as `running` where it stopped, its
    /// notifications delivered, its lock released, so the next `serve` (or `deploy-agent
    /// recover`) resumes it.
    pub(super) async fn suspend(
        mut self,
        started: Instant,
        recovered: Vec<Recovery>,
    ) -> Result<Outcome, PipelineError> {
        let at = self.d.stage.clone().unwrap_or_else(|| "lock".into());
        self.reporter.note(&format!(
            "run {} suspended at {at}; the next start resumes it",
            self.d.id
        ));
        self.audit(
            "deploy.suspended",
            None,
            Some(format!(
                "stopped at {at} for the agent's shutdown; resumes on the next start"
            )),
        )
        .await;
        let notifications = std::mem::replace(
            &mut self.notifications,
            Notifications::start(
                Vec::new(),
                Default::default(),
                self.ctx.clone(),
                self.events.clone(),
            ),
        );
        let delivery = notifications.finish().await;
        self.outcome(delivery, started, recovered, Some(RunStatus::Suspended))
            .await
    }
}
