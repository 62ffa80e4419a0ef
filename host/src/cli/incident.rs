//! `incident report RUN`: a run's incident timeline, as Markdown or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::Output;
use crate::config::Config;
use crate::pipeline::{Agent, incident};

/// `deploy-agent incident ...`
#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Write the incident report of a run: what failed and when (the first failing check,
    /// else the failed step), the decision to roll back (who, why), the actions, what was
    /// restored, the time to recovery, a timeline from the run's journal, its evidence, the
    /// rollbacks of its release and the audit log, and the audit chain's verification; with
    /// the root cause and follow-ups left to write. Markdown, or `--output json`.
    Report {
        /// The run (its id is in `history`, `status` and the notifications).
        run: String,
        /// The configuration.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Output format: Markdown for people, JSON for programs.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

pub(super) async fn incident(command: IncidentCommand) -> anyhow::Result<ExitCode> {
    match command {
        IncidentCommand::Report {
            run,
            config,
            output,
        } => {
            let agent = Agent::open(Config::load(&config)?).await?;
            let report = incident::report(&agent, &run).await?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                say!("{}", report.to_markdown());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
