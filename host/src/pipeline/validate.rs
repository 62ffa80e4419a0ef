//! The validate stage: built-in validators, then validator plugins. Each finding says which
//! validator said it.

use std::path::Path;

use serde::Serialize;

use crate::config::{Config, Environment};
use crate::db::migrate;
use crate::runtime::{Artifact, CallContext, Plugin, Severity};

/// One finding, with its source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// The validator: `builtin:database`, `plugin:NAME`...
    pub source: String,
    /// `info`, `warning` or `error`.
    pub severity: &'static str,
    /// A stable code.
    pub code: String,
    /// What it found.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// Never blocks, even in a strict environment: it is about a notifier, and notifiers are
    /// never fatal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub advisory: bool,
}

impl Finding {
    fn new(source: &str, severity: &'static str, code: &str, message: String) -> Finding {
        Finding {
            source: source.to_string(),
            severity,
            code: code.to_string(),
            message,
            hint: None,
            advisory: false,
        }
    }

    /// A warning about a notifier: shown, never blocking.
    fn advisory(mut self) -> Finding {
        self.severity = "warning";
        self.advisory = true;
        self
    }

    fn hint(mut self, hint: impl Into<String>) -> Finding {
        self.hint = Some(hint.into());
        self
    }

    /// Whether it stops the deployment.
    pub fn blocks(&self, strict: bool) -> bool {
        !self.advisory && (self.severity == "error" || (strict && self.severity == "warning"))
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

/// The plugins an environment uses.
pub fn plugins_used(env: &Environment) -> Vec<String> {
    let mut names: Vec<String> = env.target.iter().map(|t| t.plugin.clone()).collect();
    names.extend(env.validate.plugins.iter().cloned());
    names.extend(env.notifiers.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Runs every validator. `artifact_path` is the host path (for the built-in check);
/// `artifact` is what plugins see.
pub async fn run(
    config: &Config,
    env: &Environment,
    artifact_path: Option<&Path>,
    artifact: &Artifact,
    validators: &[Plugin],
    ctx: &CallContext,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for var in &env.validate.required_env {
        if std::env::var(var).map_or(true, |v| v.is_empty()) {
            out.push(
                Finding::new(
                    "builtin:env",
                    "error",
                    "env-missing",
                    format!("environment variable {var} is not set"),
                )
                .hint(
                    "set it in the agent's environment (systemd: Environment= or EnvironmentFile=)",
                ),
            );
        }
    }
    for name in plugins_used(env) {
        let Some(plugin) = config.plugins.get(&name) else {
            continue;
        };
        // A plugin the environment uses only to notify: its problems never block.
        let only_notifies = env.notifiers.contains(&name)
            && env.target.as_ref().is_none_or(|t| t.plugin != name)
            && !env.validate.plugins.contains(&name)
            && env.backup.offsite.as_ref() != Some(&name);
        let about = |f: Finding| if only_notifies { f.advisory() } else { f };
        for (secret, cfg) in &plugin.secrets {
            match cfg.source.resolve() {
                Err(e) => out.push(about(
                    Finding::new("builtin:secrets", "error", "secret-unavailable", format!("plugin `{name}`, secret `{secret}`: {e}"))
                        .hint(format!("provide {}", cfg.source)),
                )),
                Ok(value) if value.expose().len() < env.validate.min_secret_length => out.push(about(
                    Finding::new("builtin:secrets", "error", "secret-too-short", format!(
                        "plugin `{name}`, secret `{secret}` ({}) is {} characters, shorter than min_secret_length = {}",
                        cfg.source,
                        value.expose().chars().count(),
                        env.validate.min_secret_length
                    ))
                    .hint("a truncated or placeholder secret: check where it comes from"),
                )),
                Ok(_) => {}
            }
        }
    }
    if let Some(db) = &env.database {
        database(db, env.strict, &mut out).await;
    }
    if let Some(path) = artifact_path {
        if !path.is_dir() {
            out.push(
                Finding::new(
                    "builtin:artifact",
                    "error",
                    "artifact-missing",
                    format!("artifact {} is not a directory", path.display()),
                )
                .hint("build it first, or pass --artifact PATH"),
            );
        } else if let (Some(pinned), Some(actual)) = (&env.artifact.sha256, &artifact.digest) {
            let actual = actual.trim_start_matches("sha256:");
            if pinned != actual {
                out.push(
                    Finding::new(
                        "builtin:artifact",
                        "error",
                        "digest-mismatch",
                        format!(
                            "artifact {} has digest sha256:{actual}, but sha256:{pinned} is pinned",
                            path.display()
                        ),
                    )
                    .hint(
                        "this is not the artifact that was approved: rebuild it, or update the pin",
                    ),
                );
            }
        }
    }
    for plugin in validators {
        let source = format!("plugin:{}", plugin.name());
        match plugin.validate(ctx, artifact).await {
            Ok(findings) => out.extend(findings.into_iter().map(|f| Finding {
                source: source.clone(),
                severity: severity(f.severity),
                code: f.code,
                message: f.message,
                hint: f.hint,
                advisory: false,
            })),
            Err(e) => out.push(Finding::new(
                &source,
                "error",
                "validator-failed",
                e.to_string(),
            )),
        }
    }
    out
}

async fn database(db: &crate::config::DatabaseConfig, strict: bool, out: &mut Vec<Finding>) {
    let settings = match db.settings(strict) {
        Ok(s) => s,
        Err(e) => {
            out.push(Finding::new("builtin:database", "error", "database-url", e));
            return;
        }
    };
    let status = match migrate::status(&settings).await {
        Ok(s) => s,
        Err(e) => {
            out.push(
                Finding::new("builtin:database", "error", "database-unreachable", e.to_string())
                    .hint("check the URL and that the server is up: `deploy-agent migrate status --env ENV`"),
            );
            return;
        }
    };
    for v in &status.versions {
        let (sev, code, what, hint) = match v.state {
            migrate::State::Changed => (
                "error",
                "checksum-mismatch",
                "was applied, but its file changed since",
                "restore the file, or `deploy-agent migrate accept` if the change is intended",
            ),
            migrate::State::Missing => (
                "warning",
                "migration-missing",
                "is applied, but its file is gone",
                "restore the file from version control",
            ),
            migrate::State::Failed => (
                "error",
                "migration-failed",
                "failed part-way outside a transaction",
                "finish or undo it by hand, then `deploy-agent migrate accept`",
            ),
            _ => continue,
        };
        out.push(
            Finding::new(
                "builtin:database",
                sev,
                code,
                format!("migration {} ({}) {what}", v.version, v.description),
            )
            .hint(hint),
        );
    }
    match migrate::lint_files(&settings) {
        Ok(findings) => {
            let pending: Vec<i64> = status
                .versions
                .iter()
                .filter(|v| v.state == migrate::State::Pending)
                .map(|v| v.version)
                .collect();
            for f in findings
                .into_iter()
                .filter(|f| pending.contains(&f.version))
            {
                // The same verdict as `migrate lint` and `migrate run`: waived with a
                // reason, it is recorded and does not block.
                let at = format!("{}:{}:{}", f.file, f.line, f.column);
                let finding = match &f.waived {
                    Some(reason) => Finding::new(
                        "builtin:lint",
                        "info",
                        &f.rule,
                        format!("{at}: [{}] {} (waived: {reason})", f.rule, f.message),
                    ),
                    None => {
                        let mut hint = f.hint.clone().map(|h| format!("{h}; ")).unwrap_or_default();
                        if f.rule != "waiver-needs-reason" && f.rule != "unknown-waiver" {
                            hint.push_str(&format!(
                                "if it is safe here, waive it in the file: `{}`",
                                f.waiver_line()
                            ));
                        }
                        Finding::new(
                            "builtin:lint",
                            "warning",
                            &f.rule,
                            format!("{at}: [{}] {}", f.rule, f.message),
                        )
                        .hint(hint)
                    }
                };
                out.push(finding);
            }
        }
        Err(e) => out.push(Finding::new(
            "builtin:lint",
            "error",
            "migrations-unreadable",
            e.to_string(),
        )),
    }
}
