//! `deploy-agent config check`.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_CONFIG, Output};
use crate::config::Config;

pub(super) fn check(path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    if output == Output::Json {
        // Errors are the answer here, not a failure to answer: JSON on stdout, exit 2.
        let (report, code) = match Config::load(path) {
            Ok(config) => (
                serde_json::json!({
                    "config": path, "ok": true, "plugins": config.plugins.len(),
                    "warnings": config.warnings, "errors": [],
                }),
                ExitCode::SUCCESS,
            ),
            Err(errors) => (
                serde_json::json!({
                    "config": path, "ok": false, "plugins": null,
                    "warnings": [], "errors": errors.0,
                }),
                ExitCode::from(EXIT_CONFIG),
            ),
        };
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    let config = Config::load(path)?;
    for w in &config.warnings {
        tell!("warning: {w}\n");
    }
    say!(
        "{}: ok ({} plugin{}{})",
        path.display(),
        config.plugins.len(),
        if config.plugins.len() == 1 { "" } else { "s" },
        match config.warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning{}", if n == 1 { "" } else { "s" }),
        }
    );
    Ok(ExitCode::SUCCESS)
}
