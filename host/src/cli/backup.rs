//! `deploy-agent backup create|list|verify|restore|export|prune --env NAME`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{EXIT_FAILED, Output, human_size};
use crate::config::KeyUse;
use crate::db::backup::{self, BackupSettings};

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up the environment's database now.
    Create {
        /// Common options.
        #[command(flatten)]
        args: BackupArgs,
        /// Why (recorded in the manifest).
        #[arg(long, default_value = "manual backup")]
        reason: String,
    },
    /// The environment's backups, newest first.
    List(BackupArgs),
    /// The environment against its recovery objectives: the newest backup, the newest one a
    /// restore drill proved (`restore ID --test`), the last drill's time, `rpo` and `rto`.
    /// Exits 1 when an objective is not met (for a monitor to run).
    Status(BackupArgs),
    /// Check a backup: checksum, then decrypt and decompress it whole without writing.
    Verify {
        /// The backup's id, or `latest` for the newest.
        id: String,
        /// Common options.
        #[command(flatten)]
        args: BackupArgs,
    },
    /// Restore a backup into the environment's database (a safety backup is taken first).
    Restore {
        /// The backup's id.
        id: String,
        /// Common options.
        #[command(flatten)]
        args: BackupArgs,
        /// Restore into a scratch database, check it, compare its fingerprint, drop it.
        #[arg(long)]
        test: bool,
        /// Skip the safety backup of the current database (an interrupted restore then
        /// cannot be undone, only finished).
        #[arg(long)]
        no_safety_backup: bool,
        /// Why, for the record and the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// Do it without asking (required when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Write a backup out as a plain dump (`pg_restore` accepts it) or SQLite file.
    Export {
        /// The backup's id.
        id: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Common options.
        #[command(flatten)]
        args: BackupArgs,
    },
    /// Delete backups the retention policy does not keep (here and off-site).
    Prune {
        /// Common options.
        #[command(flatten)]
        args: BackupArgs,
        /// Say what would be deleted, here and off-site, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Options every backup command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
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

struct Target {
    url: String,
    backup: BackupSettings,
    objectives: crate::config::Objectives,
}

fn target(config: &Path, env: &str, purpose: KeyUse) -> anyhow::Result<Target> {
    let (env, db) = super::environment_database(config, env, crate::config::Need::Backups)?;
    Ok(Target {
        url: db.url().map_err(anyhow::Error::msg)?,
        backup: env
            .backup
            .settings(&env.name, purpose)
            .map_err(anyhow::Error::msg)?,
        objectives: env.backup.objectives,
    })
}

/// An environment's standing against its objectives, in lines.
fn standing_text(env: &str, st: &backup::Standing) -> String {
    let span = |s: u64| crate::config::span_text(std::time::Duration::from_secs(s));
    let mut out = vec![format!("{env}:")];
    out.push(match &st.newest {
        Some((id, age)) => format!("  newest backup         {id}, {} old", span(*age)),
        None => "  newest backup         none".into(),
    });
    out.push(match &st.verified {
        Some((id, age)) => format!("  newest drilled backup {id}, {} old", span(*age)),
        None => {
            "  newest drilled backup none (run `deploy-agent backup restore latest --test`)".into()
        }
    });
    out.push(match &st.last_drill {
        Some((id, secs, passed)) => format!(
            "  last restore drill    {id}: {} in {secs:.1} s",
            if *passed { "passed" } else { "FAILED" }
        ),
        None => "  last restore drill    none".into(),
    });
    let word = |met: bool| if met { "met" } else { "NOT MET" };
    out.push(match st.rpo {
        Some((s, met)) => format!("  rpo {:<17} {}", span(s), word(met)),
        None => "  rpo                   not set (`rpo = \"1h\"` under [environments.NAME.backup])"
            .into(),
    });
    out.push(match st.rto {
        Some((s, met)) => format!("  rto {:<17} {}", span(s), word(met)),
        None => "  rto                   not set (`rto = \"15m\"`)".into(),
    });
    out.join("\n")
}

/// Takes a backup with a progress line (bytes, rate) on a terminal, log lines otherwise.
pub(crate) async fn create_with_progress(
    url: &str,
    settings: &BackupSettings,
    why: &str,
) -> anyhow::Result<backup::Manifest> {
    use std::io::IsTerminal;
    let progress = Arc::new(AtomicU64::new(0));
    let estimate = backup::estimate_bytes(url).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reporter = {
        let (progress, done) = (progress.clone(), done.clone());
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let bar = tty.then(|| {
                // The total is an estimate (the database's size), so the ETA is an upper bound.
                let (bar, template) = match estimate {
                    Some(total) => (
                        indicatif::ProgressBar::new(total),
                        "{bar:30} {bytes} of ~{total_bytes}, {bytes_per_sec}, eta {eta} (at most)",
                    ),
                    None => (
                        indicatif::ProgressBar::new_spinner(),
                        "{spinner} {bytes} dumped, {bytes_per_sec}, {elapsed}",
                    ),
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                    bar.set_style(style);
                }
                bar
            });
            let mut ticks = 0u64;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ticks += 1;
                let n = progress.load(Ordering::Relaxed);
                match &bar {
                    Some(bar) => bar.set_position(n),
                    None if ticks.is_multiple_of(25) => {
                        tracing::info!(bytes = n, "backup in progress: {} dumped", human_size(n))
                    }
                    None => {}
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        })
    };
    let result = backup::create(url, settings, &crate::db::migrate::whoami(), why, progress).await;
    done.store(true, Ordering::Relaxed);
    let _ = reporter.await;
    Ok(result?)
}

pub(super) async fn run(command: BackupCommand) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create { args, reason } => {
            let t = target(&args.config, &args.env, KeyUse::Write)?;
            let m = create_with_progress(&t.url, &t.backup, &reason).await?;
            if let Some((store, ctx)) = offsite_store(&args.config, &args.env)? {
                let key = crate::pipeline::offsite::upload(&store, &ctx, &t.backup.dir, &m)
                    .await
                    .map_err(anyhow::Error::msg)?;
                tracing::info!("copied off-site as {key}");
            }
            if args.output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                say!(
                    "backup {} written: {} dump -> {} stored ({}{}), schema version {}",
                    m.id,
                    human_size(m.raw_bytes),
                    human_size(m.stored_bytes),
                    m.compression,
                    m.encryption
                        .as_ref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_else(|| ", NOT encrypted".into()),
                    m.schema_version.map_or("none".into(), |v| v.to_string())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::List(args) => {
            let t = target(&args.config, &args.env, KeyUse::Read)?;
            let (all, partial) = backup::list(&t.backup.dir)?;
            if args.output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for m in &all {
                    say!(
                        "{}  {}  {:>10}  schema {:<16} {}{}",
                        m.id,
                        m.started_at,
                        human_size(m.stored_bytes),
                        m.schema_version.map_or("-".into(), |v| v.to_string()),
                        m.why,
                        if m.encryption.is_some() {
                            ""
                        } else {
                            "  (unencrypted)"
                        }
                    );
                }
                for p in &partial {
                    say!("incomplete (not a backup; safe to delete): {}", p.display());
                }
                say!("{} backup(s) in {}", all.len(), t.backup.dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Status(args) => {
            let t = target(&args.config, &args.env, KeyUse::Read)?;
            let (all, _) = backup::list(&t.backup.dir)?;
            let o = t.objectives;
            let st = backup::standing(&all, o.rpo, o.rto, crate::store::now_ms());
            if args.output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                say!("{}", standing_text(&args.env, &st));
            }
            let unmet = [st.rpo, st.rto].iter().flatten().any(|(_, met)| !met);
            Ok(if unmet {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        BackupCommand::Verify { id, args } => {
            let t = target(&args.config, &args.env, KeyUse::Read)?;
            let m = backup::find(&t.backup.dir, &id)?;
            let (dir, key) = (t.backup.dir.clone(), t.backup.key.clone());
            let v = tokio::task::spawn_blocking(move || backup::verify(&m, &dir, key.as_ref()))
                .await??;
            // Recorded, so the console (and the audit log) can say when it was last verified.
            let agent =
                crate::pipeline::Agent::open(crate::config::Config::load(&args.config)?).await?;
            agent
                .store
                .audit(crate::store::AuditEntry {
                    actor: crate::db::migrate::whoami(),
                    action: "backup.verified".into(),
                    environment: Some(args.env.clone()),
                    subject: Some(v.id.clone()),
                    why: None,
                    detail: Some(format!("checksum ok, {} decoded", human_size(v.raw_bytes))),
                })
                .await?;
            if args.output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                say!(
                    "backup {} verified: checksum ok, {} decoded",
                    v.id,
                    human_size(v.raw_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Restore {
            id,
            args,
            test,
            no_safety_backup,
            reason,
            yes,
        } => {
            let t = target(&args.config, &args.env, KeyUse::Read)?;
            let m = match backup::find(&t.backup.dir, &id) {
                Ok(m) => m,
                // Gone from this host: the off-site copy, when there is one.
                Err(e) => match offsite_store(&args.config, &args.env)? {
                    None => return Err(e.into()),
                    Some((store, ctx)) => {
                        say!("backup {id} is not on this host; fetching the off-site copy");
                        crate::pipeline::offsite::fetch(
                            &store,
                            &ctx,
                            &args.env,
                            &id,
                            &t.backup.dir,
                        )
                        .await
                        .map_err(anyhow::Error::msg)?;
                        backup::find(&t.backup.dir, &id)?
                    }
                },
            };
            if test {
                // A restore drill: timed, and its result kept in the backup's manifest.
                let (r, drill) =
                    backup::drill(&m, &t.backup.dir, t.backup.key.as_ref(), &t.url).await?;
                if args.output == Output::Json {
                    let mut v = serde_json::to_value(&r)?;
                    if v.is_null() {
                        v = serde_json::json!({ "id": m.id });
                    }
                    v["drill"] = serde_json::to_value(&drill)?;
                    say!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for c in r.iter().flat_map(|r| &r.checks) {
                        say!("  {:<24} {:<8} {}", c.name, c.status, c.detail);
                    }
                    say!(
                        "restore test of {}: {} in {:.1} s (recorded in its manifest)",
                        m.id,
                        if drill.passed {
                            "passed, schema matches the manifest".to_string()
                        } else {
                            format!("FAILED: {}", drill.detail)
                        },
                        drill.seconds
                    );
                }
                return Ok(if drill.passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILED)
                });
            }
            confirm(
                yes,
                &format!(
                    "restore backup {} ({}) over the `{}` database, replacing its contents",
                    m.id, m.started_at, args.env
                ),
            )?;
            let agent =
                crate::pipeline::Agent::open(crate::config::Config::load(&args.config)?).await?;
            let record = crate::pipeline::restore::restore(
                &agent,
                &crate::pipeline::restore::RestoreRequest {
                    environment: args.env.clone(),
                    backup_id: m.id.clone(),
                    actor: crate::db::migrate::whoami(),
                    reason: reason.unwrap_or_else(|| format!("backup restore {}", m.id)),
                    safety_backup: !no_safety_backup,
                },
                &Notes,
            )
            .await?;
            if args.output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                say!(
                    "restored {} (schema version {}){}",
                    m.id,
                    m.schema_version.map_or("none".into(), |v| v.to_string()),
                    record
                        .safety_backup
                        .as_deref()
                        .map(|s| format!("; safety backup {s}"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Export { id, out, args } => {
            let t = target(&args.config, &args.env, KeyUse::Read)?;
            let m = backup::find(&t.backup.dir, &id)?;
            let (dir, key, o) = (t.backup.dir.clone(), t.backup.key.clone(), out.clone());
            let n = tokio::task::spawn_blocking(move || backup::export(&m, &dir, key.as_ref(), &o))
                .await??;
            say!("exported {} to {} ({})", id, out.display(), human_size(n));
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Prune { args, dry_run } => {
            // Backups that recorded releases depend on (what their rollback restores) stay;
            // the same retention for the off-site copies.
            let agent =
                crate::pipeline::Agent::open(crate::config::Config::load(&args.config)?).await?;
            let env = agent
                .config
                .environment(&args.env)
                .map_err(anyhow::Error::msg)?
                .clone();
            let report = crate::pipeline::maintenance::prune(&agent, &env, dry_run).await?;
            let (deleted, offsite_deleted) = (&report.deleted, &report.offsite_deleted);
            if args.output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let (deletes, removes) = if dry_run {
                    ("would delete", "would remove")
                } else {
                    ("deleted", "removed")
                };
                for id in deleted {
                    say!("{deletes} {id}");
                }
                for path in &report.leftovers_removed {
                    say!(
                        "{removes} {} (left by an interrupted backup)",
                        path.display()
                    );
                }
                for key in offsite_deleted {
                    say!("{deletes} off-site {key}");
                }
                say!(
                    "{} backup(s) {deletes}, {} off-site object(s){}",
                    deleted.len(),
                    offsite_deleted.len(),
                    if dry_run {
                        "; nothing changed (--dry-run)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The environment's off-site backup store, loaded, when it has one.
fn offsite_store(
    config: &std::path::Path,
    env: &str,
) -> anyhow::Result<Option<(crate::runtime::Plugin, crate::runtime::CallContext)>> {
    let config = crate::config::Config::load(config)?;
    let Some(name) = config
        .environment(env)
        .map_err(anyhow::Error::msg)?
        .backup
        .offsite
        .clone()
    else {
        return Ok(None);
    };
    let runtime = crate::runtime::Runtime::new(config.cache_dir())?;
    let store =
        crate::pipeline::load_plugin(&config, &runtime, &name, None).map_err(anyhow::Error::msg)?;
    Ok(Some((store, crate::runtime::CallContext::new(env))))
}

/// Shows a long operation's remarks on stderr, so stdout stays the result.
struct Notes;

impl crate::pipeline::Reporter for Notes {
    fn stage(&self, _: &crate::pipeline::StageReport) {}
    fn note(&self, text: &str) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "  ! {text}");
    }
}

/// Asks on a terminal; refuses in a script unless `--yes`.
pub(crate) fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("about to {what}; not a terminal, so pass --yes to confirm");
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "About to {what}.\nType `yes` to continue: ");
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        anyhow::bail!("not confirmed; nothing changed");
    }
    Ok(())
}
