//! `serve` and `token`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

/// `deploy-agent token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an API token: prints it once, and the agent.toml entry that holds only its hash.
    New {
        /// Its name: the actor in the audit log (`token:NAME`).
        #[arg(long)]
        name: String,
        /// What it may do: read; deploy (read, trigger, roll back, cancel); approve (read,
        /// approve, reject); admin (everything).
        #[arg(long, value_parser = ["read", "deploy", "approve", "admin"])]
        role: String,
        /// Limit it to these environments (repeat the flag); default: all.
        #[arg(long = "env", short = 'e', add = clap_complete::engine::ArgValueCompleter::new(super::complete::environments))]
        environments: Vec<String>,
    },
}

pub(super) async fn serve(
    config: &Path,
    listen: Option<SocketAddr>,
    host_name: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    crate::server::serve(config, listen, host_name).await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::New {
        name,
        role,
        environments,
    } = command;
    let token = crate::server::auth::new_token();
    let hash = hex::encode(crate::server::auth::hash(&token));
    let envs = if environments.is_empty() {
        String::new()
    } else {
        format!(
            "\nenvironments = [{}]",
            environments
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    tell!("The token (shown once; give it to its user, keep it out of agent.toml):");
    say!("{token}");
    tell!(
        "\nAdd to agent.toml:\n\n[[server.tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nrole = \"{role}\"{envs}"
    );
    Ok(ExitCode::SUCCESS)
}
