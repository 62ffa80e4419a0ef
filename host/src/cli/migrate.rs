//! `deploy-agent migrate status|run|dry-run|lint|revert|accept --env NAME`.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_FAILED, Output};
use crate::db::migrate::{self, Settings, State};
use crate::db::redact_url;

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MigrateCommand {
    /// Where every version stands: applied, pending, changed, missing, failed.
    Status(MigrateArgs),
    /// Apply pending migrations (up to --target), or revert down to --target.
    Run(ToVersion),
    /// Execute pending migrations in a transaction, report what changes, roll back.
    DryRun(ToVersion),
    /// Lint migrations for destructive and locking changes (squawk rules).
    Lint(MigrateArgs),
    /// Revert the last migration, or down to --target, with stored down SQL.
    Revert(ToVersion),
    /// Accept a changed or failed migration as applied, on purpose (recorded).
    Accept {
        /// The version.
        version: i64,
        /// Why (recorded in the migration log).
        #[arg(long)]
        reason: String,
        /// Common options.
        #[command(flatten)]
        args: MigrateArgs,
    },
}

/// Options every migrate command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The environment (a section of agent.toml).
    #[arg(long, short = 'e', add = clap_complete::engine::ArgValueCompleter::new(super::complete::environments))]
    pub env: String,
    /// The configuration.
    #[arg(long, default_value = "agent.toml")]
    pub config: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// The options of a command that moves the schema: the common ones and where to stop.
#[derive(Debug, Clone, clap::Args)]
pub struct ToVersion {
    /// Common options.
    #[command(flatten)]
    pub args: MigrateArgs,
    /// Migrate up or down to this version.
    #[arg(long)]
    pub target: Option<i64>,
}

fn settings(config_path: &Path, env: &str) -> anyhow::Result<Settings> {
    let (env, db) = super::environment_database(config_path, env, crate::config::Need::Database)?;
    db.settings(env.strict).map_err(anyhow::Error::msg)
}

fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(super) async fn run(command: MigrateCommand) -> anyhow::Result<ExitCode> {
    match command {
        MigrateCommand::Status(a) => {
            let s = settings(&a.config, &a.env)?;
            let status = migrate::status(&s).await?;
            if a.output == Output::Json {
                json(&status)?;
            } else {
                say!(
                    "{} ({}), migrations in {}",
                    redact_url(&s.url),
                    status.backend.name(),
                    s.dir.display()
                );
                for v in &status.versions {
                    let state = match v.state {
                        State::Applied => "applied",
                        State::Pending => "PENDING",
                        State::Changed => "CHANGED since applied",
                        State::Missing => "MISSING file",
                        State::Failed => "FAILED part-way",
                    };
                    say!(
                        "  {:>16}  {:<22} {}{}",
                        v.version,
                        state,
                        v.description,
                        if v.reversible { "  (reversible)" } else { "" }
                    );
                }
                say!(
                    "current version: {}, pending: {}",
                    status.current.map_or("none".into(), |v| v.to_string()),
                    status.pending()
                );
            }
            let bad = status
                .versions
                .iter()
                .any(|v| matches!(v.state, State::Changed | State::Missing | State::Failed));
            Ok(if bad {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        MigrateCommand::Run(ToVersion { args: a, target }) => {
            let s = settings(&a.config, &a.env)?;
            let bar = progress_bar();
            let report = migrate::run(&s, target, &|i, n, m| {
                if let Some(bar) = &bar {
                    bar.set_length(n as u64);
                    bar.set_position(i as u64);
                    bar.set_message(format!("{} {}", m.version, m.description));
                } else {
                    tracing::info!(
                        version = m.version,
                        "applying {}/{}: {}",
                        i + 1,
                        n,
                        m.description
                    );
                }
            })
            .await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let report = report?;
            if a.output == Output::Json {
                json(&report)?;
            } else {
                for c in &report.prechecks {
                    say!("  pre   {:<24} {:<8} {}", c.name, c.status, c.detail);
                }
                for f in &report.lint {
                    say!(
                        "  lint  {}:{}:{} {} {}{}",
                        f.file,
                        f.line,
                        f.column,
                        f.rule,
                        f.message,
                        f.waived
                            .as_ref()
                            .map(|w| format!(" (waived: {w})"))
                            .unwrap_or_default()
                    );
                }
                for v in &report.reverted {
                    say!("  reverted {v}");
                }
                for (v, ms) in &report.applied {
                    say!("  applied  {v} in {ms:.1} ms");
                }
                for c in &report.postchecks {
                    say!("  post  {:<24} {:<8} {}", c.name, c.status, c.detail);
                }
                say!(
                    "{} applied, {} reverted; current version {}",
                    report.applied.len(),
                    report.reverted.len(),
                    report.current.map_or("none".into(), |v| v.to_string())
                );
            }
            let failed = report.postchecks.iter().any(|c| c.status == "error");
            Ok(if failed {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        MigrateCommand::DryRun(ToVersion { args: a, target }) => {
            let s = settings(&a.config, &a.env)?;
            let dry = migrate::dry_run(&s, target).await?;
            if a.output == Output::Json {
                json(&dry)?;
            } else {
                for step in &dry.steps {
                    let what = if step.executed {
                        format!(
                            "ok in {:.1} ms, {} row(s)",
                            step.duration_ms, step.rows_affected
                        )
                    } else if let Some(e) = &step.error {
                        format!("FAILS: {e}")
                    } else {
                        step.skipped.clone().unwrap_or_default()
                    };
                    say!("  {} {}: {what}", step.version, step.description);
                    for c in &step.changes {
                        say!("      {} {} {}", c.change, c.kind, c.name);
                    }
                    for st in &step.statements {
                        say!("      > {}", st.replace('\n', " "));
                    }
                }
                for f in &dry.lint {
                    say!(
                        "  lint  {}:{}:{} {} {}",
                        f.file,
                        f.line,
                        f.column,
                        f.rule,
                        f.message
                    );
                }
                say!(
                    "rolled back: {}",
                    if dry.rolled_back {
                        "yes, the schema is unchanged"
                    } else {
                        "NO: the schema differs"
                    }
                );
                let seq = &dry.sequences;
                if seq.unchanged {
                    say!(
                        "sequences: unchanged ({} drawn from copies the rollback discarded)",
                        seq.isolated
                    );
                } else {
                    say!(
                        "sequences: MOVED during the dry run: {}",
                        seq.moved.join("; ")
                    );
                }
                if let Some(note) = &seq.note {
                    say!("  {note}");
                }
            }
            let failed = dry.steps.iter().any(|s| s.error.is_some()) || !dry.rolled_back;
            Ok(if failed {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        MigrateCommand::Lint(a) => {
            let s = settings(&a.config, &a.env)?;
            let findings = migrate::lint_files(&s)?;
            if crate::db::backend_of(&s.url) == Some(crate::db::Backend::Sqlite)
                && a.output == Output::Human
            {
                say!(
                    "the lint rules are PostgreSQL's (squawk); SQLite migrations take the database lock whole, so they are not linted"
                );
            }
            let blocking = findings.iter().filter(|f| f.blocks()).count();
            if a.output == Output::Json {
                json(&findings)?;
            } else {
                for f in &findings {
                    let level = if f.waived.is_some() {
                        "waived"
                    } else if s.strict {
                        "error"
                    } else {
                        "warning"
                    };
                    say!(
                        "{}:{}:{}: {level}: {} [{}]",
                        f.file,
                        f.line,
                        f.column,
                        f.message,
                        f.rule
                    );
                    if let Some(h) = &f.hint {
                        say!("  hint: {h}");
                    }
                    match &f.waived {
                        Some(w) => say!("  waived: {w}"),
                        None => say!("  to waive it here: `{}`", f.waiver_line()),
                    }
                }
                say!(
                    "{} finding(s), {blocking} not waived{}",
                    findings.len(),
                    if s.strict {
                        " (strict: they block)"
                    } else {
                        ""
                    }
                );
            }
            Ok(if s.strict && blocking > 0 {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        MigrateCommand::Revert(ToVersion { args: a, target }) => {
            let s = settings(&a.config, &a.env)?;
            let reverted = migrate::revert(&s, target).await?;
            if a.output == Output::Json {
                json(&reverted)?;
            } else if reverted.is_empty() {
                say!("nothing to revert");
            } else {
                for v in &reverted {
                    say!("reverted {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Accept {
            version,
            reason,
            args,
        } => {
            let s = settings(&args.config, &args.env)?;
            migrate::accept(&s, version, &reason).await?;
            if args.output == Output::Json {
                json(
                    &serde_json::json!({ "version": version, "accepted": true, "reason": reason }),
                )?;
            } else {
                say!(
                    "migration {version} accepted with its current checksum (recorded with your reason)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A progress bar on a terminal; `None` when output is not a terminal (plain log lines then).
fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} eta {eta} {msg}")
    {
        bar.set_style(style);
    }
    Some(bar)
}
