//! `deploy-agent config check`.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

pub(super) fn check(path: &Path) -> anyhow::Result<ExitCode> {
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
