//! `deploy`, `plan`, `recover`, `rollback`, `approve` and `reject`: on this host, or through
//! the daemon (`--server`) with the same output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::live::{ms, reporter};
use super::remote::{about_env, follow, refused, seg};
use super::{EXIT_FAILED, Output};
use crate::config::{Config, Need};
use crate::pipeline::{self, Agent, PipelineError, Request, Stage};
use crate::remote::Client;
use crate::server::api::RunView;
use crate::store::StoreError;

/// What every environment command takes.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// The environment (a section of agent.toml).
    #[arg(long, short = 'e', add = clap_complete::engine::ArgValueCompleter::new(super::complete::environments))]
    pub env: String,
    /// The configuration.
    #[arg(long, default_value = "agent.toml")]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// `deploy` and `plan`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The version being deployed (default: the first 12 hex digits of the artifact digest).
    #[arg(long)]
    pub version: Option<String>,
    /// The artifact directory (default: the environment's `[artifact] path`).
    #[arg(long)]
    pub artifact: Option<PathBuf>,
    /// Why, for the audit log and the notifications.
    #[arg(long)]
    pub reason: Option<String>,
    /// Show what would happen, step by step (the migration dry run included); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --server: stream the run live until it ends (without it, the run is queued and
    /// its id printed). On this host a deploy always shows its progress.
    #[arg(long)]
    pub follow: bool,
    /// When another live agent holds the environment's lock, wait for it instead of failing.
    #[arg(long)]
    pub wait: bool,
}

fn actor() -> String {
    crate::db::migrate::whoami()
}

fn request(args: &DeployArgs) -> Request {
    Request {
        environment: args.target.env.clone(),
        version: args.version.clone(),
        artifact: args.artifact.clone(),
        actor: actor(),
        reason: args.reason.clone(),
        ..Default::default()
    }
}

pub(super) async fn deploy(args: DeployArgs, remote: Option<Client>) -> anyhow::Result<ExitCode> {
    if let Some(client) = remote {
        return deploy_remote(args, client).await;
    }
    if args.dry_run {
        return plan(args).await;
    }
    let agent = agent_needing(&args.target.config, &args.target.env, Need::Everything).await?;
    let request = request(&args);
    let json = args.target.output == Output::Json;
    if !json {
        say!(
            "Deploying to {} ({})",
            request.environment,
            agent.config.path.display()
        );
    }
    let view = reporter(json);
    let reporter = view.as_ref();
    let outcome = loop {
        match pipeline::deploy(&agent, &request, reporter).await {
            Err(PipelineError::Store(StoreError::Locked { .. })) => {
                let held = locked_by(&agent, &request.environment).await;
                if !args.wait {
                    anyhow::bail!(
                        "environment `{}` is locked: {held}; `deploy --wait` waits for it",
                        request.environment
                    );
                }
                reporter.note(&format!("waiting for the lock: {held}"));
                wait_for_lock(&agent, &request.environment).await?;
            }
            other => break other?,
        }
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        let d = &outcome.deployment;
        for f in outcome.findings.iter().filter(|f| f.severity != "info") {
            say!("  {} [{}] {}", f.severity, f.source, f.message);
            if let Some(h) = &f.hint {
                say!("      hint: {h}");
            }
        }
        for n in &outcome.notify_failures {
            say!("  notifier: {n}");
        }
        say!("");
        show_end(
            d,
            outcome.succeeded(),
            &format!("{} agent time", ms(outcome.total_ms)),
        );
    }
    Ok(if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

pub(super) async fn recover(args: EnvArgs, rollback: bool) -> anyhow::Result<ExitCode> {
    let agent = agent_needing(&args.config, &args.env, Need::Everything).await?;
    let json = args.output == Output::Json;
    let view = reporter(json);
    let done =
        pipeline::recover::recover(&agent, &args.env, rollback, &actor(), view.as_ref()).await?;
    let ok = done
        .outcome
        .as_ref()
        .is_none_or(pipeline::Outcome::succeeded);
    if json {
        say!("{}", serde_json::to_string_pretty(&done)?);
    } else if done.recovered.is_empty() {
        say!("No interrupted run in {}.", args.env);
    } else {
        for r in &done.recovered {
            say!(
                "run {} (stopped in {}): {}",
                r.deployment_id,
                r.stopped_in.as_deref().unwrap_or("?"),
                r.action
            );
        }
        if let Some(o) = &done.outcome {
            say!(
                "{}",
                if o.succeeded() {
                    format!(
                        "{} is live on {}",
                        o.deployment.version, o.deployment.environment
                    )
                } else {
                    format!(
                        "the resumed run failed: {}",
                        o.deployment.error.as_deref().unwrap_or("?")
                    )
                }
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

pub(super) async fn plan(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let agent = agent_for(&args.target.config, Some(&args.target.env)).await?;
    let plan = pipeline::plan::plan(&agent, &request(&args)).await?;
    if args.target.output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        say!(
            "Plan: deploy {} to {}{}",
            plan.version,
            plan.environment,
            plan.digest
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
        for (i, step) in plan.steps.iter().enumerate() {
            say!("  {}. {:<9} {}", i + 1, step.stage.name(), step.action);
            for d in &step.details {
                say!("       {d}");
            }
        }
        if !plan.schedule.is_empty() {
            say!("Scheduled jobs (they wait for a deployment's lock):");
            for j in &plan.schedule {
                say!(
                    "  {:<15} {:<22} next: {}",
                    j.job,
                    j.schedule,
                    j.next.join(", ")
                );
            }
        }
        if !plan.findings.is_empty() {
            say!("Findings:");
            for f in &plan.findings {
                say!("  {} [{}] {}", f.severity, f.source, f.message);
                if let Some(h) = &f.hint {
                    say!("      hint: {h}");
                }
            }
        }
        say!(
            "{}",
            if plan.blocked {
                "This deployment would stop: see above. Nothing was changed."
            } else {
                "Nothing was changed. Run it with `deploy-agent deploy`."
            }
        );
    }
    Ok(if plan.blocked {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Who holds an environment's lock and what it is doing, in words.
async fn locked_by(agent: &Agent, env: &str) -> String {
    match pipeline::status::view(agent, env).await {
        Ok(v) => v.lock.map_or("by another agent".into(), |l| l.describe()),
        Err(e) => format!("(its holder cannot be read: {e})"),
    }
}

/// Waits until the environment's lock is free or its holder is gone.
async fn wait_for_lock(agent: &Agent, env: &str) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match agent.store.lock_holder(env).await? {
            Some(h) if h.is_live() => {}
            _ => return Ok(()),
        }
    }
}

/// `deploy --server`: queued on the daemon; with `--follow`, streamed to its end.
async fn deploy_remote(args: DeployArgs, client: Client) -> anyhow::Result<ExitCode> {
    let env = &args.target.env;
    if args.dry_run {
        return Err(super::Usage(
            "`deploy --dry-run` (and `plan`) runs on the deploy host: it reads the database and the artifact there".into(),
        )
        .into());
    }
    let body = crate::server::api::TriggerRequest {
        environment: env.clone(),
        version: args.version.clone(),
        artifact: args
            .artifact
            .as_ref()
            .map(|a| a.to_string_lossy().into_owned()),
        reason: args.reason.clone(),
    };
    let queued: RunView = about_env(&client, env, client.post("/v1/deployments", &body).await)?;
    let json = args.target.output == Output::Json;
    if !args.follow {
        if json {
            say!("{}", serde_json::to_string_pretty(&queued)?);
        } else {
            say!(
                "Queued run {} for {} on {}{}: follow it with `deploy-agent --server {} runs follow {}`",
                queued.id,
                env,
                client.url(),
                queued
                    .position
                    .map(|p| format!(" (place {p} in its queue)"))
                    .unwrap_or_default(),
                client.url(),
                queued.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        say!("Deploying to {env} (run {} on {})", queued.id, client.url());
    }
    let view = reporter(json);
    follow(&client, &queued.id, view.as_ref()).await?;
    let ended = super::remote::ended_run(&client, &queued.id).await?;
    show_remote_end(&ended, json)
}

/// A journaled run's agent time, as a local deploy counts it: from start to end, less the
/// time its approval gates waited for people.
fn agent_ms(started: i64, finished: i64, steps: &[crate::store::Step]) -> f64 {
    let waited: i64 = steps
        .iter()
        .filter(|s| s.stage == "approve")
        .filter_map(|s| Some(s.finished_at? - s.started_at))
        .sum();
    (finished - started - waited).max(0) as f64
}

/// A followed run's end, as a local deploy prints it.
pub(super) fn show_remote_end(v: &RunView, json: bool) -> anyhow::Result<ExitCode> {
    let ok = v.status == "succeeded";
    if json {
        say!("{}", serde_json::to_string_pretty(v)?);
    } else {
        say!("");
        match &v.deployment {
            Some(d) => show_end(
                d,
                ok,
                &d.finished_at.map_or("?".into(), |f| {
                    format!("{} agent time", ms(agent_ms(d.started_at, f, &v.steps)))
                }),
            ),
            None => say!(
                "Run {} {}: {}",
                v.id,
                v.status,
                v.queue
                    .as_ref()
                    .and_then(|q| q.outcome.as_deref())
                    .unwrap_or("it did not start")
            ),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// A run's last line: live, or failed with where to read its journal. `took` is the time
/// shown (`412.0 ms agent time`).
fn show_end(d: &crate::store::Deployment, live: bool, took: &str) {
    if live {
        say!(
            "{} is live on {}: release {}, schema {}, backup {} (run {}, {took})",
            d.version,
            d.environment,
            d.release_id.as_deref().unwrap_or("?"),
            d.schema_after.as_deref().unwrap_or("none"),
            d.backup_id.as_deref().unwrap_or("none"),
            d.id,
        );
    } else {
        say!(
            "Deployment {} of {} to {} FAILED: {}",
            d.id,
            d.version,
            d.environment,
            d.error.as_deref().unwrap_or("unknown error")
        );
        say!(
            "  the journal: deploy-agent history --env {} --id {}",
            d.environment,
            d.id
        );
    }
}

/// The agent for a configuration (checking the environment named, if any, exists).
/// The agent, once the environment is known and every reference it reads for `need` can be
/// read (otherwise exit 2, before anything is printed).
async fn agent_needing(config: &Path, env: &str, need: Need) -> anyhow::Result<Agent> {
    let config = Config::load(config)?;
    super::environment_needing(&config, env, need)?;
    Ok(Agent::open(config).await?)
}

pub(super) async fn agent_for(config: &Path, env: Option<&str>) -> anyhow::Result<Agent> {
    let config = Config::load(config)?;
    if let Some(env) = env {
        super::environment(&config, env)?;
    }
    Ok(Agent::open(config).await?)
}

/// `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The release to return to (default: the one before the live one).
    #[arg(long, conflicts_with = "latest", add = clap_complete::engine::ArgValueCompleter::new(super::complete::releases))]
    pub to: Option<String>,
    /// Return to the release before the live one (the default, spelled out).
    #[arg(long)]
    pub latest: bool,
    /// The app only: the target's earlier release (the default).
    #[arg(long, group = "what")]
    pub app_only: bool,
    /// The database only: restore the backup that holds the release's schema.
    #[arg(long, group = "what")]
    pub db_only: bool,
    /// The app and the database.
    #[arg(long, group = "what")]
    pub full: bool,
    /// Restore this backup instead of the one the release is pinned to.
    #[arg(long)]
    pub backup: Option<String>,
    /// `restore` a backup (data since is lost, kept in a safety snapshot) or run `down` migrations.
    #[arg(long, value_enum, default_value = "restore")]
    pub db_strategy: DbStrategyArg,
    /// Why: recorded, audited and sent to the notifiers.
    #[arg(long)]
    pub reason: String,
    /// Do not ask (required when not on a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Restore a backup whose schema is not the release's; or, with `--app-only`, switch to
    /// a release built for an older schema that migrations since have contracted (dropped,
    /// renamed or retyped what it uses).
    #[arg(long)]
    pub force: bool,
}

/// `--db-strategy`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DbStrategyArg {
    /// Restore a backup.
    Restore,
    /// Down migrations.
    Down,
}

pub(super) async fn rollback(
    args: RollbackArgs,
    remote: Option<Client>,
) -> anyhow::Result<ExitCode> {
    use crate::pipeline::rollback::{self as rb, RollbackOutcome, RollbackPlan};
    let env = &args.target.env;
    let mode = if args.full {
        "full"
    } else if args.db_only {
        "db"
    } else {
        "app"
    };
    let strategy = match args.db_strategy {
        DbStrategyArg::Restore => "restore",
        DbStrategyArg::Down => "down",
    };
    let body = crate::server::api::RollbackBody {
        mode: Some(mode.into()),
        to: args.to.clone(),
        backup: args.backup.clone(),
        db_strategy: Some(strategy.into()),
        reason: args.reason.clone(),
        force: args.force,
    };
    let json = args.target.output == Output::Json;
    // The plan, here or on the daemon; the same words either way.
    let (local, plan): (Option<(Agent, rb::RollbackRequest)>, RollbackPlan) = match &remote {
        Some(c) => {
            let plan = about_env(
                c,
                env,
                c.post(
                    &format!("/v1/environments/{}/rollback/plan", seg(env)),
                    &body,
                )
                .await,
            )?;
            (None, plan)
        }
        None => {
            let agent = agent_needing(&args.target.config, env, Need::Everything).await?;
            let req = crate::server::api::rollback_request(env, body.clone(), actor())
                .map_err(|e| super::Usage(e.error))?;
            let plan = rb::plan(&agent, &req).await?;
            (Some((agent, req)), plan)
        }
    };
    if !json || !args.yes {
        tell!("Rollback of {} ({}):", plan.environment, plan.mode.word());
        for s in &plan.steps {
            tell!("  - {s}");
        }
        if let Some(loss) = &plan.data_loss {
            tell!("  ! {loss}");
        }
    }
    if !plan.refusals.is_empty() {
        anyhow::bail!("refusing to roll back: {}", plan.refusals.join("; "));
    }
    super::backup::confirm(
        args.yes,
        &format!("roll back {} to {}", plan.environment, plan.to.id),
    )?;
    let outcome: RollbackOutcome = match (&remote, local) {
        (Some(c), _) => {
            let view = reporter(json);
            let path = format!("/v1/environments/{}/rollback", seg(env));
            let post = c.post(&path, &body);
            refused(super::remote::show_while(c, env, Stage::Rollback, view.as_ref(), post).await?)?
        }
        (None, Some((agent, req))) => {
            let view = reporter(json);
            rb::execute(&agent, &req, view.as_ref()).await?
        }
        (None, None) => anyhow::bail!("no rollback planned"),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for s in &outcome.steps {
            say!("  ✓ {:<9} {:>9}  {}", s.name, ms(s.duration_ms), s.detail);
        }
        say!(
            "rollback {} {}: {} is live ({} agent time)",
            outcome.record.id,
            outcome.record.status,
            outcome.record.to_release.as_deref().unwrap_or("?"),
            ms(outcome.total_ms)
        );
        if let Some(s) = &outcome.record.safety_backup {
            say!(
                "  safety snapshot: {s} (restore it with `deploy-agent backup restore --env {} {s}`)",
                outcome.record.environment
            );
        }
        if let Some(s) = outcome
            .record
            .database_swap
            .as_ref()
            .filter(|s| s.phase == crate::store::SwapPhase::Switched)
        {
            say!(
                "  safety snapshot: the database from before, kept as `{}` (drop it when you no longer need it)",
                s.aside
            );
            if let Some(us) = s.window_us {
                let what = if outcome.record.mode == "full" {
                    "database and app switched"
                } else {
                    "database switched"
                };
                say!("  {what} within {:.1} ms", us as f64 / 1e3);
            }
        }
    }
    Ok(if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `approve` and `reject`.
#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The waiting run (its id is in the notification, `status` and the deploy's output).
    pub run: String,
    /// Why: recorded in the audit log.
    #[arg(long)]
    pub reason: String,
    /// The configuration.
    #[arg(long, default_value = "agent.toml")]
    pub config: PathBuf,
    /// Output format (JSON: the decided approval, as the API answers it).
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub(super) async fn decide(
    args: DecideArgs,
    decision: crate::store::Decision,
    remote: Option<Client>,
) -> anyhow::Result<ExitCode> {
    let a = match &remote {
        Some(c) => {
            let body = crate::server::api::DecisionRequest {
                reason: args.reason.clone(),
            };
            let path = format!("/v1/runs/{}/{}", seg(&args.run), decision.verb());
            match c.post(&path, &body).await {
                Err(crate::remote::RemoteError::Refused { status: 404, .. }) => {
                    return Err(pipeline::DecideError::NotWaiting(args.run.clone()).into());
                }
                r => refused(r)?,
            }
        }
        None => {
            let agent = agent_for(&args.config, None).await?;
            agent
                .decide(&args.run, decision, &actor(), &args.reason, None)
                .await?
        }
    };
    if args.output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        say!(
            "run {} ({} gate) {} by {}",
            a.deployment_id,
            a.gate,
            decision.word(),
            a.decided_by.as_deref().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}
