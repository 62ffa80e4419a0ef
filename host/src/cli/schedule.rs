//! `schedule list` / `schedule run`: the daemon's scheduled jobs; `state backup` / `state
//! list` / `state restore`: the agent's own state.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{EXIT_FAILED, Output};
use crate::config::{Config, Job, local_text};
use crate::pipeline::scheduler::{self, Scheduler, SystemClock};
use crate::pipeline::{Agent, state_backup};
use crate::store::JobStatus;

/// `deploy-agent schedule ...`
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Every scheduled job (`[environments.X.schedule]`, `[agent.state_backup] schedule`):
    /// when it runs, its next three runs in the agent's time zone, and how its last run went.
    List {
        /// Only this environment's jobs.
        #[arg(long)]
        env: Option<String>,
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run one job now, as the daemon would (the environment's lock, journaled, audited,
    /// notified on failure), once: a failure is not retried. Exit 1 when it fails.
    Run {
        /// The job: backup, prune, restore_drill, offsite_verify or state_backup.
        job: String,
        /// The environment (not for state_backup).
        #[arg(long)]
        env: Option<String>,
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `deploy-agent state ...`
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Back up the agent's state (the state store, the audit chain's head, agent.toml with
    /// references only), encrypted with `[agent.state_backup] key`, here and off-site.
    Backup {
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The state backups on this host, newest first.
    List {
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Rebuild a lost host's state from a state backup (`latest`: the newest here or
    /// off-site): restores the state store, verifies the audit chain against the head the
    /// backup recorded (exit 1 if it does not match), and writes the backed-up agent.toml
    /// beside yours as agent.toml.restored when they differ. See "We lost the deploy host"
    /// in the README.
    Restore {
        /// The state backup's id, or `latest`.
        #[arg(default_value = "latest")]
        id: String,
        /// Overwrite a state store that already has history (not needed on a fresh host).
        #[arg(long)]
        replace: bool,
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

pub(super) async fn schedule(command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match command {
        ScheduleCommand::List {
            env,
            config,
            output,
        } => {
            let agent = Agent::open(Config::load(&config)?).await?;
            if let Some(e) = &env {
                agent.config.environment(e).map_err(anyhow::Error::msg)?;
            }
            let tz = &agent.config.time_zone;
            let listed = scheduler::listing(&agent, env.as_deref(), crate::store::now_ms()).await?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(ExitCode::SUCCESS);
            }
            if listed.is_empty() {
                say!(
                    "Nothing is scheduled: add [environments.NAME.schedule] (backup, prune, restore_drill, offsite_verify) or [agent.state_backup] schedule to {}.",
                    config.display()
                );
            }
            for l in &listed {
                let env = if l.environment.is_empty() {
                    "(agent)"
                } else {
                    &l.environment
                };
                say!("{env} {}: {} ({})", l.job, l.schedule, l.description);
                say!("  next: {}", l.next.join(", "));
                if let Some(r) = &l.last {
                    say!(
                        "  last: {} for {}: {}",
                        r.status,
                        local_text(r.due_at, tz),
                        r.detail.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Run {
            job,
            env,
            config,
            output,
        } => {
            let j = Job::parse(&job).ok_or_else(|| {
                anyhow::anyhow!(
                    "no job `{job}`: the jobs are backup, prune, restore_drill, offsite_verify and state_backup"
                )
            })?;
            let agent = std::sync::Arc::new(Agent::open(Config::load(&config)?).await?);
            let environment = match (j, env) {
                (Job::StateBackup, None) => String::new(),
                (Job::StateBackup, Some(_)) => {
                    anyhow::bail!("state_backup is the agent's own job: leave out --env")
                }
                (_, Some(e)) => {
                    agent.config.environment(&e).map_err(anyhow::Error::msg)?;
                    e
                }
                (_, None) => anyhow::bail!("`{job}` needs --env"),
            };
            let s = Scheduler::new(
                agent.clone(),
                crate::store::hostname(),
                std::sync::Arc::new(SystemClock),
            );
            let run = s.run_now(&environment, j).await?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                say!(
                    "{} {}: {}",
                    run.job,
                    run.status,
                    run.detail.as_deref().unwrap_or("")
                );
            }
            Ok(if run.status == JobStatus::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
    }
}

pub(super) async fn state(command: StateCommand) -> anyhow::Result<ExitCode> {
    match command {
        StateCommand::Backup { config, output } => {
            let agent = Agent::open(Config::load(&config)?).await?;
            let taken = state_backup::backup(&agent, &crate::db::migrate::whoami()).await?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&taken)?);
            } else {
                say!(
                    "state backup {} written ({} bytes, encrypted): {} audit entries to head {}{}",
                    taken.id,
                    taken.stored_bytes,
                    taken.audit_entries,
                    taken.audit_head,
                    taken
                        .offsite
                        .as_deref()
                        .map(|k| format!("; copied off-site as {k}"))
                        .unwrap_or_else(|| "; NOT copied off-site (no `offsite` store)".into())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::List { config, output } => {
            let all = state_backup::list(&Config::load(&config)?)?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for m in &all {
                    say!("{}  {}  {:>10} bytes", m.id, m.started_at, m.stored_bytes);
                }
                say!("{} state backup(s)", all.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Restore {
            id,
            replace,
            config,
            output,
        } => {
            let cfg = Config::load(&config)?;
            let r =
                state_backup::restore(&cfg, &id, replace, &crate::db::migrate::whoami()).await?;
            let intact = r.audit.problems.is_empty();
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                say!(
                    "state restored from {}{}",
                    r.id,
                    if r.fetched {
                        " (fetched from off-site)"
                    } else {
                        ""
                    }
                );
                if intact {
                    say!(
                        "audit chain verified: {} entries, head {} as recorded",
                        r.audit.entries,
                        r.recorded_head
                    );
                } else {
                    for p in &r.audit.problems {
                        say!("AUDIT CHAIN PROBLEM: {p}");
                    }
                }
                if let Some(p) = &r.config_written {
                    say!(
                        "the backed-up configuration differs from {}: written to {} to compare",
                        config.display(),
                        p.display()
                    );
                }
            }
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
    }
}
