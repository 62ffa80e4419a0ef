//! The validate stage: built-in validators, then validator plugins. Each finding says which
//! validator said it.

use std::path::Path;

use serde::Serialize;

use crate::config::{Config, Environment, Need, Referrer};
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

/// Every reference a deployment reads (database URL, backup key, plugin secrets,
/// `required_env`) that cannot be read now, as findings at the line agent.toml writes it:
/// the same words `deploy` refuses with before a run starts. A notifier's are advisory.
pub fn references(config: &Config, env: &Environment) -> Vec<Finding> {
    let mut out = Vec::new();
    for u in config.unresolved(env, Need::Everything) {
        let source = match u.referrer {
            Referrer::RequiredEnv => ("builtin:env", "env-missing"),
            Referrer::Database => ("builtin:database", "database-url"),
            Referrer::BackupKey | Referrer::PluginSecret => {
                ("builtin:secrets", "secret-unavailable")
            }
        };
        let e = &u.error;
        let mut message = format!("{}:{}: {}", e.file.display(), e.line, e.message);
        if let Some(chain) = &e.environment {
            message.push_str(&format!(" (environment {chain})"));
        }
        let mut f = Finding::new(source.0, "error", source.1, message);
        f.hint = e.hint.clone();
        out.push(if u.advisory { f.advisory() } else { f });
    }
    out
}

/// Runs every validator. `artifact_path` is the host path (for the built-in check);
/// `artifact` is what plugins see.
pub async fn run(
    config: &Config,
    env: &Environment,
    artifact_path: Option<&Path>,
    artifact: &Artifact,
    validators: &[Plugin],
    target: &Plugin,
    ctx: &CallContext,
) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(references(config, env));
    out.extend(strategy(env, target, ctx).await);
    if env.validate.min_secret_length > 0 {
        for name in env.plugins_used() {
            let Some(plugin) = config.plugins.get(&name) else {
                continue;
            };
            for (secret, cfg) in &plugin.secrets {
                let Ok(value) = cfg.reference.resolve() else {
                    continue;
                };
                if value.expose().chars().count() < env.validate.min_secret_length {
                    let f = Finding::new("builtin:secrets", "error", "secret-too-short", format!(
                        "plugin `{name}`, secret `{secret}` ({}) is {} characters, shorter than min_secret_length = {}",
                        cfg.reference,
                        value.expose().chars().count(),
                        env.validate.min_secret_length
                    ))
                    .hint("a truncated or placeholder secret: check where it comes from");
                    out.push(if env.only_notifies(&name) {
                        f.advisory()
                    } else {
                        f
                    });
                }
            }
        }
    }
    if let Some(db) = &env.database {
        database(db, env.strict, &mut out).await;
        objectives(env, &mut out);
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

/// Whether the target can carry out the environment's strategy with its settings: a target
/// that exports `traffic` says which it can; one that does not stages then switches, which is
/// blue-green (and `config check` already refused a canary on it).
async fn strategy(env: &Environment, target: &Plugin, ctx: &CallContext) -> Option<Finding> {
    use crate::config::Strategy;
    use crate::runtime::{Kind, Strategy as Can};
    let wanted = match env.deploy.strategy {
        Strategy::BlueGreen => Can::BlueGreen,
        Strategy::Canary => Can::Canary,
        Strategy::Staged | Strategy::Direct => return None,
    };
    let word = |s: Can| match s {
        Can::BlueGreen => "blue-green",
        Can::Canary => "canary",
    };
    if !target.kinds().contains(&Kind::Traffic) {
        return (wanted == Can::Canary).then(|| {
            Finding::new(
                "builtin:strategy",
                "error",
                "strategy-unsupported",
                format!(
                    "the `{}` target does not shift traffic, so it cannot run a canary",
                    target.name()
                ),
            )
            .hint("use `strategy = \"blue-green\"`")
        });
    }
    match target.strategies(ctx).await {
        Ok(can) if can.contains(&wanted) => None,
        Ok(can) => Some(
            Finding::new(
                "builtin:strategy",
                "error",
                "strategy-unsupported",
                format!(
                    "the `{}` target cannot run `strategy = \"{}\"` with its settings (it can: {})",
                    target.name(),
                    word(wanted),
                    if can.is_empty() {
                        "neither blue-green nor canary; it replaces the live release in place".to_string()
                    } else {
                        can.into_iter().map(word).collect::<Vec<_>>().join(", ")
                    }
                ),
            )
            .hint("configure the target for it (kubernetes: `services`, and `route` for a canary; vercel: a plan with Rolling Releases), or change `strategy`"),
        ),
        Err(e) => Some(Finding::new(
            "builtin:strategy",
            "error",
            "strategy-unknown",
            format!("asking `{}` which strategies it supports: {e}", target.name()),
        )),
    }
}

/// The environment against its recovery objectives: the newest backup a restore drill
/// proved must be younger than `rpo`, the last drill must have passed within `rto`. A
/// warning: it blocks a strict environment.
fn objectives(env: &Environment, out: &mut Vec<Finding>) {
    let o = env.backup.objectives;
    if o.rpo.is_none() && o.rto.is_none() {
        return;
    }
    let manifests = crate::db::backup::list(&env.backup.dir)
        .map(|(all, _)| all)
        .unwrap_or_default();
    let st = crate::db::backup::standing(&manifests, o.rpo, o.rto, crate::store::now_ms());
    let span = |s: u64| crate::config::span_text(std::time::Duration::from_secs(s));
    let drill = format!(
        "deploy-agent backup restore latest --test --env {}",
        env.name
    );
    if let Some((rpo, false)) = st.rpo {
        let message = match &st.verified {
            Some((id, age)) => format!(
                "the newest backup a restore drill proved ({id}) is {} old; the recovery point objective is {}",
                span(*age),
                span(rpo)
            ),
            None => format!(
                "no backup has been proved by a restore drill; the recovery point objective is {}",
                span(rpo)
            ),
        };
        out.push(
            Finding::new("builtin:objectives", "warning", "rpo-exceeded", message).hint(format!(
                "take a backup (`deploy-agent backup create --env {}`) and drill it (`{drill}`)",
                env.name
            )),
        );
    }
    if let Some((rto, false)) = st.rto {
        let message = match &st.last_drill {
            Some((id, secs, true)) => format!(
                "the last restore drill ({id}) took {secs:.1} s; the recovery time objective is {}",
                span(rto)
            ),
            Some((id, _, false)) => format!(
                "the last restore drill ({id}) failed, so no restore is known to finish within {}",
                span(rto)
            ),
            None => format!(
                "no restore drill has run, so no restore is known to finish within {}",
                span(rto)
            ),
        };
        out.push(
            Finding::new("builtin:objectives", "warning", "rto-exceeded", message).hint(format!(
                "run `{drill}`; if it is too slow, make restores faster (a smaller database, more restore jobs) or raise `rto`"
            )),
        );
    }
}

async fn database(db: &crate::config::DatabaseConfig, strict: bool, out: &mut Vec<Finding>) {
    // A URL that cannot be read was reported above, where agent.toml writes it.
    let Ok(settings) = db.settings(strict) else {
        return;
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
