//! `agents`: the fleet sharing this state store, with each agent's health; `abort`: stop a
//! run waiting on a host.

use std::path::Path;
use std::process::ExitCode;

use super::Output;
use super::deploy::agent_for;
use super::remote::refused;
use crate::remote::Client;
use crate::store::AgentRecord;

pub(super) async fn agents(
    config: &Path,
    output: Output,
    remote: Option<Client>,
) -> anyhow::Result<ExitCode> {
    let agents: Vec<AgentRecord> = match &remote {
        Some(c) => refused(c.get("/v1/agents").await)?,
        None => agent_for(config, None).await?.store.agents().await?,
    };
    if output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(ExitCode::SUCCESS);
    }
    if agents.is_empty() {
        say!("No agent has registered with this state store yet (`deploy-agent serve` does).");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<16} {:<8} {:<16} {:>8} {:<9} {:>10}  {:<24} ENVIRONMENTS",
        "AGENT",
        "HEALTH",
        "HOST",
        "PID",
        "VERSION",
        "HEARTBEAT",
        "API"
    );
    let now = crate::store::now_ms();
    for a in &agents {
        say!(
            "{:<16} {:<8} {:<16} {:>8} {:<9} {:>9}s  {:<24} {}",
            a.name,
            a.health,
            a.host,
            a.pid,
            a.version,
            format!("{:.1}", (now - a.heartbeat_at) as f64 / 1e3),
            a.api.as_deref().unwrap_or("-"),
            a.environments.join(",")
        );
    }
    let dead: Vec<&str> = agents
        .iter()
        .filter(|a| a.health == "dead")
        .map(|a| a.name.as_str())
        .collect();
    if !dead.is_empty() {
        tell!(
            "dead (heartbeat older than its lease): {}; their runs are taken over by an agent serving the same environments",
            dead.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `abort RUN --reason`: asks a running run to stop. A rollout waiting on a host whose agent
/// is down stops at its next look and rolls back the hosts it did.
pub(super) async fn abort(
    args: super::deploy::DecideArgs,
    remote: Option<Client>,
) -> anyhow::Result<ExitCode> {
    if let Some(c) = &remote {
        let body = serde_json::json!({ "reason": args.reason });
        let answer: serde_json::Value = refused(
            c.post(
                &format!("/v1/runs/{}/abort", super::remote::seg(&args.run)),
                &body,
            )
            .await,
        )?;
        if args.output == Output::Json {
            say!("{answer}");
        } else {
            say!(
                "Asked run {} to stop ({}); a rollout waiting on a host stops at its next look and rolls back the hosts it did.",
                args.run,
                answer["abort_requested"].as_str().unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = agent_for(&args.config, None).await?.store;
    let Some(run) = store.deployment(&args.run).await? else {
        return Err(super::Usage(format!("no run `{}` in the state store", args.run)).into());
    };
    let who = crate::db::migrate::whoami();
    let why = format!("by {who}: {}", args.reason);
    if !store.request_abort(&run.id, &why).await? {
        return Err(super::Usage(format!(
            "run {} is not running (it is {}): nothing to abort",
            run.id, run.status
        ))
        .into());
    }
    store
        .audit(crate::store::AuditEntry {
            actor: who,
            action: "run.abort-requested".into(),
            environment: Some(run.environment.clone()),
            subject: Some(run.id.clone()),
            why: Some(args.reason.clone()),
            detail: None,
        })
        .await?;
    if args.output == Output::Json {
        say!(
            "{}",
            serde_json::json!({"run": run.id, "abort_requested": why})
        );
    } else {
        say!(
            "Asked run {} on {} to stop ({why}); a rollout waiting on a host stops at its next look and rolls back the hosts it did.",
            run.id,
            run.environment
        );
    }
    Ok(ExitCode::SUCCESS)
}
