//! The command line: argument parsing, logging set-up, and the one place errors become exit codes.
//!
//! Exit codes: 0 success; 1 the operation failed (a plugin refused to load, a check failed);
//! 2 bad usage or a configuration error.

#![allow(clippy::print_stdout)]

/// Prints a line of command output. When stdout is closed (`| head`, a terminal gone) the
/// output stops and the command goes on: a deploy is never cut short by its reader leaving,
/// and the exit code still says how the command ended. Never panics.
macro_rules! say {
    ($($arg:tt)*) => {{
        $crate::cli::output::stdout_line(&format!($($arg)*));
    }};
}

/// Prints a line to stderr (errors, warnings, prompts), ignoring a closed stderr.
macro_rules! tell {
    ($($arg:tt)*) => {{
        $crate::cli::output::stderr_line(&format!($($arg)*));
    }};
}

pub(crate) mod output;

mod backup;
mod bench;
mod complete;
mod config;
mod deploy;
mod fleet;
mod incident;
mod live;
mod migrate;
mod plugin;
mod remote;
mod schedule;
mod serve;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code: the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_CONFIG: u8 = 2;

/// deploy-agent: takes an application from a commit to production, safely, and back again.
///
/// Plugins (deploy targets, validators, notifiers, backup stores) are WebAssembly components
/// run in a sandbox that grants each only the hosts, files, memory, time and secrets that
/// agent.toml gives it.
#[derive(Debug, Parser)]
#[command(
    name = "deploy-agent",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success; 1 the operation failed (a deployment, a check, a validation); 2 bad usage or configuration.\n\nThe main job: deploy-agent deploy --env local"
)]
pub struct Cli {
    /// Log verbosity: -v for debug, -vv for trace. DEPLOY_AGENT_LOG overrides (tracing filter syntax).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The daemon to act through, instead of this host.
    #[command(flatten)]
    pub server: remote::ServerArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of commands that report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Human,
    /// For programs.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a release through the environment's pipeline: lock, validate, back up, migrate,
    /// deploy (staged), verify, promote, watch, notify. Resumes a run interrupted by a crash.
    Deploy(deploy::DeployArgs),
    /// What `deploy` would do, step by step (migration dry run and lint included); changes nothing.
    Plan(deploy::DeployArgs),
    /// Finish or undo a run interrupted by a crash (kill -9, power loss), starting nothing new:
    /// resume it (the default), or roll it back (`--rollback`, or `on_interrupt = "rollback"`).
    Recover {
        /// Environment, config and output.
        #[command(flatten)]
        target: deploy::EnvArgs,
        /// Roll the interrupted run back: the previous release live again, the database
        /// restored from the backup the run took if its migrations ran.
        #[arg(long)]
        rollback: bool,
    },
    /// Emergency rollback: the app (`--app-only`, the default), the database (`--db-only`) or
    /// both (`--full`), to the previous or a named release. Shows what will happen (releases,
    /// backup and its age, what is lost) and asks; in a script it needs `--yes`.
    Rollback(deploy::RollbackArgs),
    /// Approve a run waiting at an approval gate (or an inconclusive analysis).
    Approve(deploy::DecideArgs),
    /// Ask a running run to stop: a rollout across hosts waiting on a host whose agent is down
    /// stops at its next look and rolls back the hosts it did (on the deploy host, or through a
    /// daemon with --server).
    Abort(deploy::DecideArgs),
    /// Reject a run waiting at an approval gate: it stops (after promotion: it is rolled back).
    Reject(deploy::DecideArgs),
    /// The environment's live release, lock and last run with its journal.
    Status(deploy::EnvArgs),
    /// Past deployments, newest first (`--id` for one run's journal).
    History {
        /// Environment, config and output.
        #[command(flatten)]
        target: deploy::EnvArgs,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One run, with its journaled steps.
        #[arg(long)]
        id: Option<String>,
    },
    /// Releases this agent made, newest first (`*` marks the live one).
    Releases(deploy::EnvArgs),
    /// The hash-chained audit log: list, verify.
    #[command(subcommand)]
    Audit(views::AuditCommand),
    /// Runs on a daemon (`--server`): follow one live.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// The agents (daemons) sharing this state store: name, health (alive, dead when its
    /// heartbeat is older than its lease, stopped), host, pid, version, last heartbeat, API
    /// and the environments each serves.
    Agents {
        /// The configuration (its state store).
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) that offers
    /// the environments of agent.toml and the releases in the state store as you type:
    /// `source <(deploy-agent completions bash)` in ~/.bashrc.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Inspect and check plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Check agent.toml.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Database migrations: status, run, dry-run, lint, revert, accept.
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Database backups: create, list, verify, restore, export, prune.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Incident reports: a run's timeline from the journal, evidence, rollbacks and the audit
    /// log, with detection, decision and time to recovery (`incident report RUN`).
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
    /// Scheduled jobs the daemon runs (backups, prune, restore drills, off-site checks,
    /// state backups): list them with their next runs, or run one now.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// The agent's own state: back it up (encrypted, off-site) and rebuild a lost host from
    /// it.
    #[command(subcommand)]
    State(schedule::StateCommand),
    /// Run as a daemon: the HTTP API (/v1, OpenAPI at /v1/openapi.json), GitHub webhooks, live
    /// event streams, /metrics, /healthz and /readyz; runs queued per environment. Loopback
    /// by default; SIGTERM suspends running runs at a safe point and the next start resumes
    /// them. Under systemd: Type=notify with a watchdog (see deploy/systemd/).
    Serve {
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// IP:PORT to listen on (default: [server] listen, else 127.0.0.1:8470).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The name this agent goes by in the fleet, its runs and its locks (default:
        /// [server] host_name, else the host's name). Agents sharing a PostgreSQL state need
        /// distinct names; a second daemon under a live agent's name is refused.
        #[arg(long)]
        host_name: Option<String>,
    },
    /// API tokens for the daemon.
    #[command(subcommand)]
    Token(serve::TokenCommand),
    /// Benchmarks that print figures (never pass/fail).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `deploy-agent runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Stream a daemon's run live, stage by stage, until it ends (exit 0 when it went live,
    /// 1 when it failed). Needs --server.
    Follow {
        /// The run's id (the deploy prints it; `history` lists them).
        run: String,
        /// Output format (JSON: the run at its end).
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `deploy-agent plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Describe a component: kinds, WIT package version, imports, size, sha256.
    Inspect {
        /// The .wasm component.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Load every configured plugin under its policy and report each.
    Check {
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Start a plugin project that builds as is: a Rust crate on the SDK, or a Python
    /// project for componentize-py, with a README, a test, and a stand-in script for
    /// `plugin test`.
    New(plugin::NewArgs),
    /// Build the plugin project in a directory for wasm32-wasip2 (size-optimised) and print
    /// the component's path, size and the sha256 to pin in agent.toml.
    Build(plugin::BuildArgs),
    /// The conformance kit: run a component under the real sandbox against a stand-in of
    /// its platform and check its kind's contract (terminal states, rollback, error
    /// variants, Retry-After waits, idempotence, granted hosts only, deadlines).
    /// Exit 0 when every check passes, 1 when one fails.
    Test(plugin::TestArgs),
}

/// `deploy-agent config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate agent.toml; errors name file, line and column and say how to fix them.
    Check {
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format (JSON: `{ok, plugins, warnings, errors}`, errors with file, line,
        /// column, message and hint).
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the JSON Schema of agent.toml, for editors (e.g. taplo, Even Better TOML).
    Schema,
}

/// `deploy-agent bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Plugin runtime costs: compile, load from cache, fresh-instance calls (p50/p90).
    Plugins {
        /// A component exporting `validator` (trivial) and `notifier` (logs once):
        /// the `echo` test fixture.
        #[arg(
            long,
            default_value = "plugins/target/wasm32-wasip2/release/fixture_echo.wasm"
        )]
        plugin: PathBuf,
        /// Calls per measurement.
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
    },
}

/// Parses arguments, runs, and returns the exit code.
pub fn main() -> ExitCode {
    complete::answer_if_asked();
    let cli = Cli::parse();
    // Benchmarks measure the runtime, not the terminal; the pipeline commands show their own
    // live view. Only warnings unless asked (-v).
    let quiet = matches!(
        cli.command,
        Command::Bench(_)
            | Command::Deploy(_)
            | Command::Plan(_)
            | Command::Recover { .. }
            | Command::Rollback(_)
            | Command::Approve(_)
            | Command::Abort(_)
            | Command::Reject(_)
            | Command::Status(_)
            | Command::History { .. }
            | Command::Releases(_)
            | Command::Audit(_)
            | Command::Runs(_)
            | Command::Agents { .. }
    );
    init_logging(cli.verbose, quiet);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(errors) = e.downcast_ref::<crate::config::ConfigErrors>() {
                tell!("{errors}");
                return ExitCode::from(EXIT_CONFIG);
            }
            tell!("error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                return ExitCode::from(EXIT_CONFIG);
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

pub(crate) use crate::units::human_size;

/// A usage or configuration mistake the command found itself (an unknown environment, say):
/// exit code 2, like clap's and agent.toml's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub String);

/// The environment a command names, or a usage error (exit 2) listing the known ones.
pub(crate) fn environment<'c>(
    config: &'c crate::config::Config,
    name: &str,
) -> Result<&'c crate::config::Environment, Usage> {
    config.environment(name).map_err(Usage)
}

/// The environment a command names, once every reference it reads for `need` can be read:
/// otherwise the errors, at the lines that write them (exit 2).
pub(crate) fn environment_needing<'c>(
    config: &'c crate::config::Config,
    name: &str,
    need: crate::config::Need,
) -> anyhow::Result<&'c crate::config::Environment> {
    let env = environment(config, name)?;
    config.require(env, need)?;
    Ok(env)
}

/// The commands that work on this host or through a daemon (`--server`).
async fn environment_command(
    command: Command,
    remote: Option<crate::remote::Client>,
) -> anyhow::Result<ExitCode> {
    use crate::store::Decision;
    match command {
        Command::Deploy(args) => deploy::deploy(args, remote).await,
        Command::Status(args) => views::status(args, remote).await,
        Command::Rollback(args) => deploy::rollback(args, remote).await,
        Command::Approve(args) => deploy::decide(args, Decision::Approved, remote).await,
        Command::Abort(args) => fleet::abort(args, remote).await,
        Command::Reject(args) => deploy::decide(args, Decision::Rejected, remote).await,
        Command::History { target, limit, id } => views::history(target, limit, id, remote).await,
        Command::Releases(args) => views::releases(args, remote).await,
        Command::Audit(command) => views::audit(command, remote).await,
        Command::Runs(RunsCommand::Follow { run, output }) => {
            remote::follow_command(remote, &run, output).await
        }
        Command::Agents { config, output } => fleet::agents(&config, output, remote).await,
        _ => Err(Usage("not an environment command".into()).into()),
    }
}

/// Whether a command can act through a daemon.
fn remote_capable(command: &Command) -> bool {
    matches!(
        command,
        Command::Deploy(_)
            | Command::Status(_)
            | Command::Rollback(_)
            | Command::Approve(_)
            | Command::Abort(_)
            | Command::Reject(_)
            | Command::History { .. }
            | Command::Releases(_)
            | Command::Audit(_)
            | Command::Runs(_)
            | Command::Agents { .. }
    )
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let remote = remote::client(&cli.server)?;
    if remote.is_some()
        && !remote_capable(&cli.command)
        && !matches!(cli.command, Command::Completions { .. })
    {
        return Err(Usage(
            "this command runs on the deploy host only; --server (or DEPLOY_AGENT_SERVER) works with deploy, status, history, releases, approve, reject, abort, rollback, audit, agents and runs follow".into(),
        )
        .into());
    }
    let result = match cli.command {
        Command::Plugin(PluginCommand::Inspect { file, output }) => plugin::inspect(&file, output),
        Command::Plugin(PluginCommand::Check { config, output }) => {
            runtime.block_on(plugin::check(&config, output))
        }
        Command::Plugin(PluginCommand::New(args)) => plugin::new(&args),
        Command::Plugin(PluginCommand::Build(args)) => plugin::build(&args),
        Command::Plugin(PluginCommand::Test(args)) => runtime.block_on(plugin::test(&args)),
        Command::Config(ConfigCommand::Check { config, output }) => config::check(&config, output),
        Command::Config(ConfigCommand::Schema) => {
            say!("{}", crate::config::SCHEMA.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => runtime.block_on(deploy::plan(args)),
        Command::Recover { target, rollback } => {
            runtime.block_on(deploy::recover(target, rollback))
        }
        Command::Completions { shell } => {
            say!("{}", complete::script(shell)?.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            config,
            listen,
            host_name,
        } => runtime.block_on(serve::serve(&config, listen, host_name.as_deref())),
        Command::Token(command) => serve::token(command),
        Command::Migrate(command) => runtime.block_on(migrate::run(command)),
        Command::Backup(command) => runtime.block_on(backup::run(command)),
        Command::Schedule(command) => runtime.block_on(schedule::schedule(command)),
        Command::Incident(command) => runtime.block_on(incident::incident(command)),
        Command::State(command) => runtime.block_on(schedule::state(command)),
        Command::Bench(BenchCommand::Plugins { plugin, iterations }) => {
            runtime.block_on(bench::plugins(&plugin, iterations))
        }
        // The rest work on this host or through a daemon.
        command => runtime.block_on(environment_command(command, remote)),
    };
    // The command is done (a daemon's grace period is over): file-system work still on the
    // blocking pool (a huge artifact's digest, say) is abandoned rather than waited for, so
    // the process ends now, as a kill would end it; what it was doing is journaled.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 if quiet => "warn",
        0 => "warn,deploy_agent=info,plugin=info",
        1 => "info,deploy_agent=debug,plugin=debug",
        _ => "debug,deploy_agent=trace,plugin=trace",
    };
    let filter =
        EnvFilter::try_from_env("DEPLOY_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// An environment and its database, from the configuration.
pub(crate) fn environment_database(
    config: &std::path::Path,
    env: &str,
    need: crate::config::Need,
) -> anyhow::Result<(crate::config::Environment, crate::config::DatabaseConfig)> {
    let config = crate::config::Config::load(config)?;
    let env = environment_needing(&config, env, need)?.clone();
    let db = env.database.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "environment `{}` has no database: add [environments.{}.database] to {}",
            env.name,
            env.name,
            config.path.display()
        )
    })?;
    Ok((env, db))
}
