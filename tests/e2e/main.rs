//! End-to-end tests: real plugin components under the real sandbox, the real CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authoring;
mod backup;
mod cli;
mod cli_output;
mod config;
mod console;
mod contract;
mod daemon;
mod daemon_artifacts;
mod fleet;
mod hosts;
mod incident;
mod leaks;
mod live_view;
mod migrate;
mod objectives;
mod pipeline;
mod platforms;
mod progressive;
mod project;
mod remote;
mod restore_kill;
mod rollback;
mod rolling;
mod sandbox;
mod schedule;
mod severity;
mod state_backup;
mod store_upgrade;
mod wit_compat;
