//! `status`, `history`, `releases` and `audit`: read on this host from the state store, or
//! through the daemon (`--server`), and printed by the same functions either way.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::deploy::{EnvArgs, agent_for};
use super::live::ms;
use super::remote::{about_env, refused, seg};
use super::{EXIT_FAILED, Output};
use crate::pipeline::status::{self, StatusView};
use crate::remote::{Client, RemoteError};
use crate::server::api::RunView;
use crate::store::{
    AuditRecord, AuditReport, ReleaseRecord, ReleaseStatus, RollbackStatus, RunJournal, Step,
};

/// `deploy-agent audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest entries, oldest first.
    List {
        /// Only this environment.
        #[arg(long, short = 'e', add = clap_complete::engine::ArgValueCompleter::new(super::complete::environments))]
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

fn json(value: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn time(ms: i64) -> String {
    crate::time::rfc3339(ms / 1000)
}

/// A run's journal, one line per step.
pub(super) fn print_steps(indent: &str, steps: &[Step]) {
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

pub(super) async fn status(args: EnvArgs, remote: Option<Client>) -> anyhow::Result<ExitCode> {
    let env = &args.env;
    let view: StatusView = match &remote {
        Some(c) => about_env(
            c,
            env,
            c.get(&format!("/v1/environments/{}/status", seg(env)))
                .await,
        )?,
        None => {
            let agent = agent_for(&args.config, Some(env)).await?;
            status::view(&agent, env).await?
        }
    };
    if args.output == Output::Json {
        return json(&view);
    }
    show_status(&view);
    Ok(ExitCode::SUCCESS)
}

fn show_status(v: &StatusView) {
    let env = &v.environment;
    say!("Environment {env}");
    match &v.live {
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
    say!("  target: {}", v.drift.describe());
    for h in &v.hosts {
        say!(
            "  host {}: {} ({}), by run {}",
            h.host,
            h.version,
            h.release_id,
            h.run_id
        );
    }
    match &v.lock {
        Some(l) => say!("  lock:  {}", l.describe()),
        None => say!("  lock:  free"),
    }
    if let Some(r) = &v.last_rollback {
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
                "         stopped in {}: `deploy-agent recover --env {env}` finishes it, `--rollback` undoes it",
                r.stopped_in(),
            );
        }
    }
    for j in &v.schedule {
        say!(
            "  scheduled {}: {}; next {}; last: {}",
            j.job,
            j.schedule,
            j.next.first().map_or("-", String::as_str),
            j.last.as_ref().map_or("not yet".to_string(), |r| format!(
                "{}{}",
                r.status,
                r.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ))
        );
    }
    for a in &v.waiting {
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
    if let Some(d) = &v.last {
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
        print_steps("         ", &v.steps);
        if v.last_interrupted {
            say!(
                "         interrupted: its agent is gone; `deploy-agent recover --env {env}` {}",
                if d.stage.as_deref() == Some(crate::pipeline::recover::ROLLING_BACK) {
                    "finishes rolling it back"
                } else {
                    "resumes it (`--rollback` rolls it back)"
                }
            );
        }
    }
}

pub(super) async fn history(
    args: EnvArgs,
    limit: usize,
    id: Option<String>,
    remote: Option<Client>,
) -> anyhow::Result<ExitCode> {
    let env = &args.env;
    let runs: Vec<RunJournal> = match (&remote, &id) {
        (Some(c), Some(id)) => {
            // The environment first, so an unknown one is the usage error it is on the host.
            let known = c
                .get::<Vec<ReleaseRecord>>(&format!("/v1/environments/{}/releases", seg(env)))
                .await;
            about_env(c, env, known)?;
            match c.get::<RunView>(&format!("/v1/runs/{}", seg(id))).await {
                Err(RemoteError::Refused { status: 404, .. }) => Vec::new(),
                r => {
                    let v = refused(r)?;
                    v.deployment
                        .filter(|d| d.environment == *env)
                        .map(|deployment| RunJournal {
                            deployment,
                            steps: v.steps,
                        })
                        .into_iter()
                        .collect()
                }
            }
        }
        (Some(c), None) => about_env(
            c,
            env,
            c.get(&format!(
                "/v1/environments/{}/history?limit={limit}",
                seg(env)
            ))
            .await,
        )?,
        (None, _) => {
            let store = agent_for(&args.config, Some(env)).await?.store;
            match &id {
                Some(id) => match store.deployment(id).await? {
                    Some(deployment) => {
                        let steps = store.steps(&deployment.id).await?;
                        vec![RunJournal { deployment, steps }]
                    }
                    None => Vec::new(),
                },
                None => store.history(env, limit).await?,
            }
        }
    };
    if args.output == Output::Json {
        return json(&runs);
    }
    if runs.is_empty() {
        say!("No deployments of {env} yet.");
    }
    for RunJournal {
        deployment: d,
        steps,
    } in &runs
    {
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
            print_steps("    ", steps);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn releases(args: EnvArgs, remote: Option<Client>) -> anyhow::Result<ExitCode> {
    let env = &args.env;
    let releases: Vec<ReleaseRecord> = match &remote {
        Some(c) => about_env(
            c,
            env,
            c.get(&format!("/v1/environments/{}/releases", seg(env)))
                .await,
        )?,
        None => {
            agent_for(&args.config, Some(env))
                .await?
                .store
                .releases(env)
                .await?
        }
    };
    if args.output == Output::Json {
        return json(&releases);
    }
    if releases.is_empty() {
        say!("No releases of {env} yet.");
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

pub(super) async fn audit(
    command: AuditCommand,
    remote: Option<Client>,
) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::List {
            env,
            limit,
            config,
            output,
        } => {
            let entries: Vec<AuditRecord> = match &remote {
                Some(c) => {
                    let mut path = format!("/v1/audit?limit={limit}");
                    if let Some(e) = &env {
                        path.push_str(&format!("&environment={}", seg(e)));
                    }
                    refused(c.get(&path).await)?
                }
                None => {
                    let store = agent_for(&config, env.as_deref()).await?.store;
                    store.audit_entries(env.as_deref(), limit).await?
                }
            };
            if output == Output::Json {
                return json(&entries);
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
            let report: AuditReport = match &remote {
                Some(c) => {
                    let path = match &expect_head {
                        Some(h) => format!("/v1/audit/verify?expect_head={}", seg(h)),
                        None => "/v1/audit/verify".to_string(),
                    };
                    refused(c.get(&path).await)?
                }
                None => {
                    let store = agent_for(&config, None).await?.store;
                    let mut report = store.audit_verify().await?;
                    report.expect_head(expect_head.as_deref());
                    report
                }
            };
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
