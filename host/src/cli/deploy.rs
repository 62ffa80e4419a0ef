//! `deploy`, `plan`, `status`, `history`, `releases` and `audit`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{EXIT_FAILED, Output};
use crate::config::Config;
use crate::pipeline::{
    self, Agent, EnvironmentStatus, Reporter, Request, StageReport, StageStatus,
};

use crate::store::{ReleaseStatus, RollbackStatus};

/// What every environment command takes.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// The environment (a section of agent.toml).
    #[arg(long, short = 'e')]
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
}

/// `deploy-agent audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest entries, oldest first.
    List {
        /// Only this environment.
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Walks the hash chain: exit 1 if an entry was edited or deleted.
    Verify {
        /// The head hash recorded earlier: also detects entries removed from the end.
        #[arg(long)]
        expect_head: Option<String>,
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn actor() -> String {
    crate::db::migrate::whoami()
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

/// A run's journal, one line per step.
fn print_steps(indent: &str, steps: &[crate::store::Step]) {
    for s in steps {
        let took = s
            .finished_at
            .map_or("unfinished".into(), |f| ms((f - s.started_at) as f64));
        say!(
            "{indent}{:<9} {:<8} {:>10}  {}",
            s.stage,
            s.status,
            took,
            s.detail.as_deref().unwrap_or("")
        );
    }
}

fn time(ms: i64) -> String {
    crate::time::rfc3339(ms / 1000)
}

/// The live view: a line per stage as it ends (and, on a terminal, the one running).
struct Live {
    tty: bool,
}

impl Reporter for Live {
    fn stage(&self, r: &StageReport) {
        use std::io::Write as _;
        let name = r.stage.name();
        if r.status == StageStatus::Started {
            if self.tty {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "  … {name:<9}");
                let _ = out.flush();
            }
            return;
        }
        let mark = match r.status {
            StageStatus::Done => "✓",
            StageStatus::Skipped => "-",
            StageStatus::Failed => "✗",
            StageStatus::Started => "…",
        };
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        say!(
            "{clear}  {mark} {name:<9} {:>9}  {}",
            ms(r.duration_ms),
            r.detail
        );
    }

    fn note(&self, text: &str) {
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        say!("{clear}  ! {text}");
    }
}

struct Silent;

impl Reporter for Silent {
    fn stage(&self, _: &StageReport) {}
    fn note(&self, _: &str) {}
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

pub(super) async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        return plan(args).await;
    }
    let config = Config::load(&args.target.config)?;
    super::environment(&config, &args.target.env)?;
    let agent = Agent::open(config).await?;
    let request = request(&args);
    let json = args.target.output == Output::Json;
    if !json {
        say!(
            "Deploying to {} ({})",
            request.environment,
            agent.config.path.display()
        );
    }
    let live = Live {
        tty: std::io::stdout().is_terminal(),
    };
    let reporter: &dyn Reporter = if json { &Silent } else { &live };
    let outcome = pipeline::deploy(&agent, &request, reporter).await?;
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
        if outcome.succeeded() {
            say!(
                "{} is live on {}: release {}, schema {}, backup {} (run {}, {} agent time)",
                d.version,
                d.environment,
                d.release_id.as_deref().unwrap_or("?"),
                d.schema_after.as_deref().unwrap_or("none"),
                d.backup_id.as_deref().unwrap_or("none"),
                d.id,
                ms(outcome.total_ms)
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
    Ok(if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

pub(super) async fn recover(args: EnvArgs, rollback: bool) -> anyhow::Result<ExitCode> {
    let agent = agent_for(&args.config, Some(&args.env)).await?;
    let json = args.output == Output::Json;
    let live = Live {
        tty: std::io::stdout().is_terminal(),
    };
    let reporter: &dyn Reporter = if json { &Silent } else { &live };
    let done = pipeline::recover::recover(&agent, &args.env, rollback, &actor(), reporter).await?;
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

/// The agent for a configuration (checking the environment named, if any, exists).
async fn agent_for(config: &Path, env: Option<&str>) -> anyhow::Result<Agent> {
    let config = Config::load(config)?;
    if let Some(env) = env {
        super::environment(&config, env)?;
    }
    Ok(Agent::open(config).await?)
}

pub(super) async fn status(args: EnvArgs) -> anyhow::Result<ExitCode> {
    let agent = agent_for(&args.config, Some(&args.env)).await?;
    let store = &agent.store;
    // A run still journaled as running whose agent is gone is interrupted (its journal says
    // `running` until it is resumed or rolled back); a rollback or restore in that state
    // is shown as `interrupted`.
    let EnvironmentStatus {
        live,
        lock,
        last,
        last_interrupted,
        steps,
        last_rollback,
        ..
    } = agent.status(&args.env).await?;
    if args.output == Output::Json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "environment": args.env, "lock": lock, "live": live, "last": last,
                "last_interrupted": last_interrupted, "steps": steps,
                "waiting": store.pending_approvals(Some(&args.env)).await?,
                "last_rollback": last_rollback,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!("Environment {}", args.env);
    match &live {
        Some(r) => say!(
            "  live:  {} (version {}, schema {}, backup {}, since {})",
            r.id,
            r.version,
            r.schema_version.as_deref().unwrap_or("none"),
            r.backup_id.as_deref().unwrap_or("none"),
            r.promoted_at.map_or("?".into(), time)
        ),
        None => say!("  live:  nothing deployed by this agent yet"),
    }
    match &lock {
        Some(h) if h.expires_at > crate::store::now_ms() => {
            say!("  lock:  held by {} for run {}", h.owner, h.deployment_id)
        }
        Some(h) => say!(
            "  lock:  expired lease of {} (run {})",
            h.owner,
            h.deployment_id
        ),
        None => say!("  lock:  free"),
    }
    if let Some(r) = &last_rollback {
        say!(
            "  rollback: {} {} ({}, {}) {} -> {} by {} at {}: {}",
            r.id,
            r.status,
            r.mode,
            r.initiator,
            r.from_release.as_deref().unwrap_or("-"),
            r.to_release.as_deref().unwrap_or("-"),
            r.actor,
            time(r.started_at),
            r.reason.as_deref().unwrap_or("")
        );
        if r.status == RollbackStatus::Interrupted {
            say!(
                "         stopped in {}: `deploy-agent recover --env {}` finishes it, `--rollback` undoes it",
                r.stopped_in(),
                args.env
            );
        }
    }
    for a in store.pending_approvals(Some(&args.env)).await? {
        say!(
            "  waits: run {} at the {} gate: `deploy-agent approve {} --reason ...`{}",
            a.deployment_id,
            a.gate,
            a.deployment_id,
            a.expires_at
                .map(|e| format!(" (expires {})", time(e)))
                .unwrap_or_default()
        );
    }
    if let Some(d) = &last {
        say!(
            "  last:  {} {} {} by {} at {}{}",
            d.id,
            d.version,
            d.status,
            d.actor,
            time(d.started_at),
            d.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        print_steps("         ", &steps);
        if last_interrupted {
            say!(
                "         interrupted: its agent is gone; `deploy-agent recover --env {}` {}",
                args.env,
                if d.stage.as_deref() == Some(pipeline::recover::ROLLING_BACK) {
                    "finishes rolling it back"
                } else {
                    "resumes it (`--rollback` rolls it back)"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn history(
    args: EnvArgs,
    limit: usize,
    id: Option<String>,
) -> anyhow::Result<ExitCode> {
    let store = agent_for(&args.config, Some(&args.env)).await?.store;
    let runs = match &id {
        Some(id) => store.deployment(id).await?.into_iter().collect(),
        None => store.deployments(&args.env, limit).await?,
    };
    if args.output == Output::Json {
        let mut out = Vec::new();
        for d in runs {
            let steps = store.steps(&d.id).await?;
            out.push(serde_json::json!({ "deployment": d, "steps": steps }));
        }
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        say!("No deployments of {} yet.", args.env);
    }
    for d in &runs {
        let took = d
            .finished_at
            .map_or("running".into(), |f| ms((f - d.started_at) as f64));
        say!(
            "{}  {:<12} {:<11} {:>9}  by {}{}{}",
            d.id,
            d.version,
            d.status,
            took,
            d.actor,
            d.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            d.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        if id.is_some() {
            print_steps("    ", &store.steps(&d.id).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn releases(args: EnvArgs) -> anyhow::Result<ExitCode> {
    let store = agent_for(&args.config, Some(&args.env)).await?.store;
    let releases = store.releases(&args.env).await?;
    if args.output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&releases)?);
        return Ok(ExitCode::SUCCESS);
    }
    if releases.is_empty() {
        say!("No releases of {} yet.", args.env);
    }
    for r in &releases {
        say!(
            "{} {:<28} {:<12} {:<10} schema {:<6} backup {}",
            if r.state == ReleaseStatus::Live {
                "*"
            } else {
                " "
            },
            r.id,
            r.version,
            r.state,
            r.schema_version.as_deref().unwrap_or("-"),
            r.backup_id.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::List {
            env,
            limit,
            config,
            output,
        } => {
            let store = agent_for(&config, env.as_deref()).await?.store;
            let entries = store.audit_entries(env.as_deref(), limit).await?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(ExitCode::SUCCESS);
            }
            for e in &entries {
                say!(
                    "{:>5} {} {:<10} {:<18} {:<10} {}{}{}",
                    e.seq,
                    time(e.at),
                    e.actor,
                    e.action,
                    e.environment.as_deref().unwrap_or("-"),
                    e.subject.as_deref().unwrap_or(""),
                    e.why
                        .as_deref()
                        .map(|w| format!(" why: {w}"))
                        .unwrap_or_default(),
                    e.detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            expect_head,
            config,
            output,
        } => {
            let store = agent_for(&config, None).await?.store;
            let mut report = store.audit_verify().await?;
            if let Some(head) = expect_head
                && head != report.head
            {
                report.problems.push(format!(
                    "the head is {}, not the expected {head}: entries were removed from the end, or the log was replaced",
                    report.head
                ));
            }
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.problems.is_empty() {
                say!(
                    "audit log intact: {} entries, head {}",
                    report.entries,
                    report.head
                );
            } else {
                say!("audit log TAMPERED ({} entries checked):", report.entries);
                for p in &report.problems {
                    say!("  {p}");
                }
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
    }
}

/// `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The release to return to (default: the one before the live one).
    #[arg(long, conflicts_with = "latest")]
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
    /// Restore a backup whose schema is not the release's.
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

pub(super) async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    use crate::pipeline::rollback::{self as rb, DbStrategy, Mode};
    let agent = agent_for(&args.target.config, Some(&args.target.env)).await?;
    let req = rb::RollbackRequest {
        environment: args.target.env.clone(),
        to: args.to.clone(),
        mode: if args.full {
            Mode::Full
        } else if args.db_only {
            Mode::Db
        } else {
            Mode::App
        },
        backup: args.backup.clone(),
        db_strategy: match args.db_strategy {
            DbStrategyArg::Restore => DbStrategy::Restore,
            DbStrategyArg::Down => DbStrategy::Down,
        },
        reason: args.reason.clone(),
        actor: actor(),
        force: args.force,
    };
    let json = args.target.output == Output::Json;
    let plan = rb::plan(&agent, &req).await?;
    if !json || !args.yes {
        let mut out = std::io::stderr().lock();
        use std::io::Write as _;
        let _ = writeln!(out, "Rollback of {} ({:?}):", plan.environment, plan.mode);
        for s in &plan.steps {
            let _ = writeln!(out, "  - {s}");
        }
        if let Some(loss) = &plan.data_loss {
            let _ = writeln!(out, "  ! {loss}");
        }
    }
    if !plan.refusals.is_empty() {
        anyhow::bail!("refusing to roll back: {}", plan.refusals.join("; "));
    }
    super::backup::confirm(
        args.yes,
        &format!("roll back {} to {}", plan.environment, plan.to.id),
    )?;
    let live = Live {
        tty: std::io::stdout().is_terminal(),
    };
    let reporter: &dyn Reporter = if json { &Silent } else { &live };
    let outcome = rb::execute(&agent, &req, reporter).await?;
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
) -> anyhow::Result<ExitCode> {
    let agent = agent_for(&args.config, None).await?;
    let who = actor();
    let a = agent
        .decide(&args.run, decision, &who, &args.reason, None)
        .await?;
    if args.output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        say!(
            "run {} ({} gate) {} by {who}",
            a.deployment_id,
            a.gate,
            decision.word()
        );
    }
    Ok(ExitCode::SUCCESS)
}
