//! `agents`: the fleet sharing this state store, with each agent's health.

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
