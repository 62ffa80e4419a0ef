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
pub mod units;

#[cfg(test)]
mod layering {
    /// The library never reaches up into the command line: `cli/` is an edge that uses the
    /// library, not the other way round.
    #[test]
    fn nothing_outside_cli_imports_from_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![src.clone()];
        let mut offenders = Vec::new();
        // Spelled in pieces, so this file does not match itself.
        let needles = [["crate", "::cli"].concat(), ["super", "::cli"].concat()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("reads src") {
                let path = entry.expect("entry").path();
                if path == src.join("cli") || path == src.join("main.rs") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("reads a source file");
                    for (n, line) in text.lines().enumerate() {
                        if needles.iter().any(|n| line.contains(n.as_str())) {
                            offenders.push(format!(
                                "{}:{}: {}",
                                path.display(),
                                n + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "library code imports the CLI:\n{}",
            offenders.join("\n")
        );
    }
}
