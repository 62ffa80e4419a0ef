//! deploy-agent: takes an application from "this commit" to "live in production" safely,
//! and back again when it goes wrong.
//!
//! The library behind the `deploy-agent` binary:
//! - [`config`]: `agent.toml`, typed and validated, errors with file, line and column;
//! - [`runtime`]: sandboxed WebAssembly component plugins (validators, deploy targets,
//!   notifiers, backup stores);
//! - [`db`]: the migration and backup core (PostgreSQL and SQLite);
//! - [`pipeline`]: one release through one environment, journaled;
//! - [`server`]: the daemon (`serve`): HTTP API, webhooks, event streams, metrics;
//! - [`cli`]: the command line.
#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod conformance;
pub mod db;
pub mod metrics;
pub mod pipeline;
mod random;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod time;
