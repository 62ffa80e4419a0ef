//! `plan` / `deploy --dry-run`: what a deployment would do, step by step, changing nothing.
//!
//! Validators run (they only read), the pending migrations are dry-run (executed inside a
//! transaction that is rolled back) and linted; nothing is locked, backed up, staged or sent.

use serde::Serialize;

use super::Agent;
use super::sequence::{Interrupted, Step, sequence};
use super::validate::{self, Finding};
use super::{PipelineError, Request, Stage, prepare};
use crate::config::{BackupWhen, CheckStage, Environment, Probe, Strategy};
use crate::db::migrate;
use crate::runtime::CallContext;

/// The rollout across hosts: its batches and what stops it.
fn rollout_step(env: &Environment) -> PlanStep {
    let r = env.rollout.as_ref();
    let batches = r.map(crate::config::Rollout::batches).unwrap_or_default();
    let mut details: Vec<String> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| format!("batch {}: {}", i + 1, b.join(", ")))
        .collect();
    if let Some(r) = r {
        details.push(format!(
            "each host's agent stages, verifies and promotes on its host; {} s between batches; stops after {} failed host(s), then {}",
            r.wait.as_secs(),
            r.max_failures + 1,
            match r.on_failure {
                crate::config::OnHostFailure::Rollback => "rolls back the hosts done",
                crate::config::OnHostFailure::Keep => "keeps the hosts done (status shows the drift)",
            }
        ));
    }
    PlanStep {
        stage: Stage::Rollout,
        action: format!(
            "roll out to {} host(s) in {} batch(es)",
            r.map_or(0, |r| r.hosts.len()),
            batches.len()
        ),
        details,
    }
}

/// One step of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    /// The stage.
    pub stage: Stage,
    /// What it would do.
    pub action: String,
    /// Details (one per line).
    pub details: Vec<String>,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The environment.
    pub environment: String,
    /// The version.
    pub version: String,
    /// The artifact's digest.
    pub digest: Option<String>,
    /// Step by step.
    pub steps: Vec<PlanStep>,
    /// What the validators found.
    pub findings: Vec<Finding>,
    /// The migration dry run, when migrations are pending.
    pub dry_run: Option<migrate::DryRun>,
    /// Whether the deployment would stop (a blocking finding, a failing dry run).
    pub blocked: bool,
    /// The environment's scheduled jobs with their next three runs (they wait for the
    /// deployment's lock).
    pub schedule: Vec<super::scheduler::Scheduled>,
}

fn probe_text(p: &Probe) -> String {
    match p {
        Probe::Http { url, .. } => format!("GET {url}"),
        Probe::Tcp { address } => format!("connect to {address}"),
        Probe::Command { command } => format!("run `{command}`"),
    }
}

/// Builds the plan.
pub async fn plan(agent: &Agent, request: &Request) -> Result<Plan, PipelineError> {
    let config = &*agent.config;
    let (env, plugins, artifact_path, artifact) = match prepare(agent, request).await {
        Ok(prepared) => prepared,
        Err(e) => {
            // A setting that cannot be read (a plugin's secret, say) is a finding, where
            // agent.toml writes it, not an aborted plan.
            let env = config
                .environment(&request.environment)
                .map_err(PipelineError::Setup)?;
            let findings = validate::references(config, env);
            if findings.iter().all(|f| !f.blocks(env.strict)) {
                return Err(e);
            }
            return Ok(Plan {
                environment: env.name.clone(),
                version: request.version.clone().unwrap_or_default(),
                digest: None,
                steps: vec![PlanStep {
                    stage: Stage::Validate,
                    action: "cannot plan further: settings the deployment reads cannot be read"
                        .into(),
                    details: vec![],
                }],
                findings,
                dry_run: None,
                blocked: true,
                schedule: Vec::new(),
            });
        }
    };
    let store = agent.store.clone();
    let mut steps = Vec::new();
    let mut blocked = false;

    let mut lock = vec![];
    if let Some(h) = store.lock_holder(&env.name).await? {
        lock.push(format!("now held by {} (run {})", h.owner, h.deployment_id));
    }
    let mut resuming = false;
    for old in store.running(&env.name).await? {
        // The same decision the run will make.
        let decision = Interrupted::decide(env, &old, &artifact, resuming);
        resuming |= decision == Interrupted::Resume;
        lock.push(format!(
            "interrupted run {} ({}, stopped in {}) would be {}",
            old.id,
            old.version,
            old.stage.as_deref().unwrap_or("?"),
            decision.action()
        ));
    }
    steps.push(PlanStep {
        stage: Stage::Lock,
        action: format!(
            "take the lock on `{}` (lease {} s)",
            env.name,
            env.deploy.lock_lease.as_secs()
        ),
        details: lock,
    });

    let ctx = CallContext::new(&env.name);
    let findings = validate::run(
        config,
        env,
        artifact_path.as_deref(),
        &artifact,
        &plugins.validators,
        &plugins.target,
        &ctx,
    )
    .await;
    blocked |= findings.iter().any(|f| f.blocks(env.strict));
    let mut names = vec!["builtin: env, secrets, database, lint, artifact".to_string()];
    names.extend(
        plugins
            .validators
            .iter()
            .map(|p| format!("plugin: {}", p.name())),
    );
    steps.push(PlanStep {
        stage: Stage::Validate,
        action: format!(
            "run {} validator group(s){}",
            names.len(),
            if env.strict {
                " (strict: warnings block)"
            } else {
                ""
            }
        ),
        details: names,
    });

    let mut dry_run = None;
    let mut contract: Vec<migrate::contract::ContractChange> = Vec::new();
    match env.database.as_ref().map(|db| db.settings(env.strict)) {
        None => {
            for stage in [Stage::Backup, Stage::Migrate] {
                steps.push(PlanStep {
                    stage,
                    action: "skip: no database".into(),
                    details: vec![],
                });
            }
        }
        Some(Err(_)) => {
            // The URL cannot be read: a finding above says where it is written.
            blocked = true;
            for stage in [Stage::Backup, Stage::Migrate] {
                steps.push(PlanStep {
                    stage,
                    action: "cannot plan: the database URL cannot be read (see findings)".into(),
                    details: vec![],
                });
            }
        }
        Some(Ok(settings)) => {
            let status = migrate::status(&settings).await.ok();
            let current = status.as_ref().and_then(|s| s.current);
            contract = migrate::contract::between(&settings.dir, current, None).unwrap_or_default();
            let pending: Vec<String> = status
                .iter()
                .flat_map(|s| s.versions.iter())
                .filter(|v| v.state == migrate::State::Pending)
                .map(|v| format!("{} {}", v.version, v.description))
                .collect();
            let backup = match env.deploy.backup {
                BackupWhen::Always => "back up the database (backup = \"always\")".to_string(),
                BackupWhen::Never => "skip: backup = \"never\" (no restore point!)".to_string(),
                BackupWhen::Pending if pending.is_empty() => {
                    "skip: no pending migrations".to_string()
                }
                BackupWhen::Pending => format!(
                    "back up the database to {}{}",
                    env.backup.dir.display(),
                    if env.backup.key.is_some() {
                        " (encrypted)"
                    } else {
                        ""
                    }
                ),
            };
            steps.push(PlanStep {
                stage: Stage::Backup,
                action: backup,
                details: vec![],
            });
            let mut details = pending.clone();
            if !contract.is_empty() {
                details.push(format!(
                    "contract: {} (the previous release cannot run on the schema after them)",
                    migrate::contract::describe(&contract)
                ));
            }
            if !pending.is_empty() {
                match migrate::dry_run(&settings, None).await {
                    Ok(d) => {
                        for s in &d.steps {
                            if let Some(e) = &s.error {
                                blocked = true;
                                details.push(format!("dry run: {} fails: {e}", s.version));
                            } else if let Some(why) = &s.skipped {
                                details.push(format!("dry run: {} not executed: {why}", s.version));
                            } else {
                                details.push(format!(
                                    "dry run: {} ok, {} change(s), {} row(s), {:.1} ms",
                                    s.version,
                                    s.changes.len(),
                                    s.rows_affected,
                                    s.duration_ms
                                ));
                            }
                        }
                        details.push(if d.sequences.unchanged {
                            format!(
                                "dry run: sequences unchanged ({} drawn from copies the rollback discarded)",
                                d.sequences.isolated
                            )
                        } else {
                            format!(
                                "dry run: sequences MOVED: {}",
                                d.sequences.moved.join("; ")
                            )
                        });
                        if let Some(note) = &d.sequences.note {
                            details.push(format!("dry run: {note}"));
                        }
                        dry_run = Some(d);
                    }
                    Err(e) => {
                        blocked = true;
                        details.push(format!("dry run failed: {e}"));
                    }
                }
            }
            steps.push(PlanStep {
                stage: Stage::Migrate,
                action: if pending.is_empty() {
                    format!(
                        "skip: schema up to date at {}",
                        status
                            .and_then(|s| s.current)
                            .map_or("no version".into(), |v| v.to_string())
                    )
                } else {
                    format!(
                        "apply {} migration(s), each in a transaction",
                        pending.len()
                    )
                },
                details,
            });
        }
    }

    steps.push(PlanStep {
        stage: Stage::Deploy,
        action: format!(
            "stage {} on `{}` (poll every {} ms, up to {} s)",
            artifact.version,
            plugins.target.name(),
            env.deploy.poll_interval.as_millis(),
            env.deploy.timeout.as_secs()
        ),
        details: artifact_path
            .iter()
            .map(|p| {
                format!(
                    "artifact {} (the plugin sees {})",
                    p.display(),
                    artifact.path.as_deref().unwrap_or("?")
                )
            })
            .chain(artifact.digest.iter().map(|d| format!("digest {d}")))
            .collect(),
    });
    let checks_of = |which: CheckStage| -> Vec<String> {
        env.checks
            .iter()
            .filter(|c| c.stage == which)
            .map(|c| {
                format!(
                    "{}: {} (retries {})",
                    c.name,
                    probe_text(&c.probe),
                    c.retries
                )
            })
            .collect()
    };
    let verify = PlanStep {
        stage: Stage::Verify,
        action: if checks_of(CheckStage::Verify).is_empty() {
            "skip: no verify checks".into()
        } else if env.deploy.strategy != Strategy::Direct {
            "check the staged release".into()
        } else {
            "check the live release (strategy = \"direct\")".into()
        },
        details: checks_of(CheckStage::Verify),
    };
    let promote = PlanStep {
        stage: Stage::Promote,
        action: match env.deploy.strategy {
            Strategy::BlueGreen => format!(
                "switch all traffic to it at once on `{}` (blue-green)",
                plugins.target.name()
            ),
            Strategy::Canary => format!(
                "make it the stable release on `{}` (it has all the traffic)",
                plugins.target.name()
            ),
            _ => format!("make it live on `{}`", plugins.target.name()),
        },
        details: vec![],
    };
    let approve = env.approval.as_ref().map(|a| PlanStep {
        stage: Stage::Approve,
        action: format!(
            "wait for `deploy-agent approve RUN`{}",
            a.expires
                .map(|e| format!(" (expires after {} s)", e.as_secs()))
                .unwrap_or_default()
        ),
        details: vec![],
    });
    let mut watch = checks_of(CheckStage::Watch);
    watch.extend(env.analysis.iter().map(|a| {
        format!(
            "analysis {}: `{}` {} times, every {} s",
            a.name,
            a.query,
            a.count,
            a.interval.as_secs()
        )
    }));
    let held;
    let policy = match env.rollback {
        crate::config::RollbackPolicy::Auto if !contract.is_empty() => {
            held = format!(
                "on failure: hold and notify (not roll back: {} contract the schema, so the previous release cannot run on it)",
                migrate::contract::describe(&contract)
            );
            held.as_str()
        }
        crate::config::RollbackPolicy::Auto => "on failure: roll back to the previous release",
        crate::config::RollbackPolicy::Notify => "on failure: notify, keep the release",
        crate::config::RollbackPolicy::Off => "on failure: stop",
    };
    let watch = PlanStep {
        stage: Stage::Watch,
        action: if watch.is_empty() {
            "skip: no watch checks or analysis".into()
        } else {
            format!(
                "watch the live release for {} s; {policy}",
                env.deploy.watch.as_secs()
            )
        },
        details: watch,
    };
    // The steps in the order the run will take them (lock first, notify last).
    let of = |stages: &[Stage]| -> Vec<PlanStep> {
        steps
            .iter()
            .filter(|s| stages.contains(&s.stage))
            .cloned()
            .collect()
    };
    let mut ordered = of(&[Stage::Lock]);
    for step in sequence(env) {
        match step {
            Step::Approve(_) => ordered.extend(approve.clone()),
            Step::Validate => ordered.extend(of(&[Stage::Validate])),
            Step::BackupAndMigrate => ordered.extend(of(&[Stage::Backup, Stage::Migrate])),
            Step::Deploy => ordered.extend(of(&[Stage::Deploy])),
            Step::Verify => ordered.push(verify.clone()),
            Step::Shift => ordered.push(shift_step(env, plugins.target.name())),
            Step::Promote => ordered.push(promote.clone()),
            Step::Rollout => ordered.push(rollout_step(env)),
            Step::Watch => ordered.push(watch.clone()),
            Step::Retire => ordered.push(retire_step(env)),
        }
    }
    let mut steps = ordered;
    steps.push(PlanStep {
        stage: Stage::Notify,
        action: if env.notifiers.is_empty() {
            "no notifiers".into()
        } else {
            format!("tell {} of every transition", env.notifiers.join(", "))
        },
        // What each hears, where its `[plugins.NAME.notify]` filters it.
        details: env
            .notifiers
            .iter()
            .filter_map(|n| config.plugins.get(n).map(|p| (n, &p.notify)))
            .filter(|(_, f)| **f != crate::config::NotifyFilter::default())
            .map(|(n, f)| format!("{n} hears {}", f.describe()))
            .collect(),
    });
    Ok(Plan {
        environment: env.name.clone(),
        version: artifact.version,
        digest: artifact.digest,
        steps,
        findings,
        dry_run,
        blocked,
        schedule: super::scheduler::listing(agent, Some(&env.name), crate::store::now_ms()).await?,
    })
}

/// The canary's steps, as `plan` shows them.
fn shift_step(env: &Environment, target: &str) -> PlanStep {
    use crate::config::Pause;
    let n = env.deploy.steps.len();
    PlanStep {
        stage: Stage::Shift,
        action: format!(
            "shift traffic to it on `{target}` in {n} step(s): {}; a failed step sends all traffic back to the stable release",
            env.deploy
                .steps
                .iter()
                .map(|s| format!("{} %", s.weight))
                .collect::<Vec<_>>()
                .join(" → ")
        ),
        details: env
            .deploy
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pause = match &s.pause {
                    Pause::None => "then the next step".to_string(),
                    Pause::For(d) => format!(
                        "hold {} s with the watch checks and {} analysis",
                        d.as_secs(),
                        env.analysis.len()
                    ),
                    Pause::Approval => "wait for `deploy-agent approve RUN`".to_string(),
                };
                format!("step {}: {} % of traffic, {pause}", i + 1, s.weight)
            })
            .collect(),
    }
}

/// Retiring the old release after a blue-green or canary switch.
fn retire_step(env: &Environment) -> PlanStep {
    PlanStep {
        stage: Stage::Retire,
        action: format!(
            "retire the release live before, {} s after the switch and once the watch passed",
            env.deploy.scale_down_delay.as_secs()
        ),
        details: vec![],
    }
}
