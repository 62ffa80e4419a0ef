//! Secret and environment-variable references (`${env:NAME}`, `${file:PATH}`): what they
//! point at, where agent.toml writes each one, and what to say when one cannot be read.
//!
//! A reference is resolved when it is used, never at load time (a daemon started before a
//! secret was provisioned must still start). [`Config::unresolved`] reads every reference an
//! environment uses and reports each one that cannot be read as a [`ConfigError`] at the
//! line that writes it, with the environment chain that inherits it and how to fix it:
//! commands refuse with it (exit 2), `plan` and the validate stage list it as a finding.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Environment};
use crate::runtime::secrets::SecretValue;

/// Where a reference comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the agent's process.
    Env(String),
    /// A file (a systemd credential, a mounted Kubernetes secret...); trailing newline trimmed.
    File(PathBuf),
}

/// Why a reference cannot be read. Names the source, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The variable is not in the agent's environment.
    #[error("environment variable {0} is not set")]
    NotSet(String),
    /// The variable is set to nothing.
    #[error("environment variable {0} is empty")]
    Empty(String),
    /// The file holds nothing.
    #[error("secret file {} is empty", .0.display())]
    FileEmpty(PathBuf),
    /// The file cannot be read.
    #[error("cannot read secret file {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
}

impl ReadError {
    /// How to fix it.
    pub fn hint(&self) -> String {
        match self {
            ReadError::NotSet(name) | ReadError::Empty(name) => format!(
                "set {name} in the agent's environment (systemd: Environment= or EnvironmentFile= in the unit; a running daemon must be restarted to see it), or point the reference at a file: `${{file:/run/secrets/...}}`"
            ),
            ReadError::FileEmpty(path) | ReadError::Unreadable { path, .. } => format!(
                "write the value to {} (readable by the agent's user only), or change the reference",
                path.display()
            ),
        }
    }
}

impl SecretSource {
    /// Parses `${env:NAME}` or `${file:PATH}`.
    pub fn parse(text: &str) -> Option<Self> {
        let inner = text.trim().strip_prefix("${")?.strip_suffix('}')?;
        if let Some(name) = inner.strip_prefix("env:") {
            let ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            return ok.then(|| SecretSource::Env(name.to_string()));
        }
        let path = inner.strip_prefix("file:")?;
        (!path.is_empty()).then(|| SecretSource::File(PathBuf::from(path)))
    }

    /// Reads the value now.
    pub fn resolve(&self) -> Result<SecretValue, ReadError> {
        match self {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(SecretValue::new(v)),
                Ok(_) => Err(ReadError::Empty(name.clone())),
                Err(_) => Err(ReadError::NotSet(name.clone())),
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\n', '\r']).to_string();
                    if v.is_empty() {
                        Err(ReadError::FileEmpty(path.clone()))
                    } else {
                        Ok(SecretValue::new(v))
                    }
                }
                Err(e) => Err(ReadError::Unreadable {
                    path: path.clone(),
                    reason: match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file".into(),
                        std::io::ErrorKind::PermissionDenied => {
                            "permission denied for the agent's user".into()
                        }
                        _ => e.to_string(),
                    },
                }),
            },
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "${{env:{n}}}"),
            SecretSource::File(p) => write!(f, "${{file:{}}}", p.display()),
        }
    }
}

/// A place in agent.toml: file, line, column and the line itself.
#[derive(Debug, Clone)]
pub struct Site(ConfigError);

impl Site {
    /// The place at a byte span of `text`.
    pub(super) fn at(file: &Path, text: &str, span: std::ops::Range<usize>) -> Site {
        Site(ConfigError::at(file, text, span, ""))
    }

    /// An error at this place.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
            ..self.0.clone()
        }
    }

    /// `file:line`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.0.file.display(), self.0.line)
    }
}

/// A reference and the place that writes it.
#[derive(Debug, Clone)]
pub struct SecretRef {
    /// What it points at.
    pub source: SecretSource,
    /// Where agent.toml writes it.
    pub site: Site,
}

impl SecretRef {
    /// Reads the value now.
    pub fn resolve(&self) -> Result<SecretValue, ReadError> {
        self.source.resolve()
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

/// Which of an environment's references a command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The database URL (`migrate`, `backup list`).
    Database,
    /// The database URL and the backup key (`backup create/verify/restore`).
    Backups,
    /// Everything: the database, the backup key and the secrets of every plugin the
    /// environment uses (`deploy`, `plan`, `rollback`).
    Everything,
}

/// What a reference is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referrer {
    /// An environment's database URL.
    Database,
    /// An environment's backup key.
    BackupKey,
    /// A plugin's secret.
    PluginSecret,
    /// A variable `validate.required_env` lists.
    RequiredEnv,
}

/// A reference that cannot be read now.
#[derive(Debug, Clone)]
pub struct Unresolved {
    /// What it is for.
    pub referrer: Referrer,
    /// The error, at the line that writes the reference, with the environment chain.
    pub error: ConfigError,
    /// It belongs to a plugin the environment only notifies through: a warning, never a
    /// refusal (notifiers are never fatal).
    pub advisory: bool,
}

impl Config {
    /// `name` and the environments it inherits from, nearest first.
    pub fn chain(&self, name: &str) -> Vec<String> {
        let mut chain = vec![name.to_string()];
        let mut at = self.environments.get(name);
        while let Some(parent) = at.and_then(|e| e.extends.as_deref()) {
            if chain.iter().any(|c| c == parent) {
                break;
            }
            chain.push(parent.to_string());
            at = self.environments.get(parent);
        }
        chain
    }

    /// Every reference `env` uses for `need` that cannot be read now, in file order.
    pub fn unresolved(&self, env: &Environment, need: Need) -> Vec<Unresolved> {
        let chain = self.chain(&env.name).join(" → ");
        let mut out = Vec::new();
        let mut check = |r: &SecretRef, referrer: Referrer, what: String, advisory: bool| {
            if let Err(e) = r.resolve() {
                let mut error = r.site.error(format!("{what}: {e}")).hint(e.hint());
                error.environment = Some(chain.clone());
                out.push(Unresolved {
                    referrer,
                    error,
                    advisory,
                });
            }
        };
        if let Some(super::UrlSource::Secret(r)) = env.database.as_ref().map(|db| &db.url) {
            check(r, Referrer::Database, "database URL".into(), false);
        }
        if let Some(key) = env.backup.key.as_ref().filter(|_| need != Need::Database) {
            check(key, Referrer::BackupKey, "backup key".into(), false);
        }
        if need == Need::Everything {
            for name in env.plugins_used() {
                let Some(plugin) = self.plugins.get(&name) else {
                    continue;
                };
                let advisory = env.only_notifies(&name);
                for (secret, cfg) in &plugin.secrets {
                    let what = format!("plugin `{name}`, secret `{secret}`");
                    check(&cfg.reference, Referrer::PluginSecret, what, advisory);
                }
            }
            for var in &env.validate.required_env {
                let r = SecretRef {
                    source: SecretSource::Env(var.name.clone()),
                    site: var.site.clone(),
                };
                check(
                    &r,
                    Referrer::RequiredEnv,
                    "validate.required_env".into(),
                    false,
                );
            }
        }
        out.sort_by_key(|u| (u.error.line, u.error.column));
        out
    }

    /// The references `env` needs for `need` that cannot be read, as errors (exit 2); the
    /// advisory ones (a notifier's) are logged as warnings and let through. `required_env`
    /// is the validate stage's own check: a recorded, blocked run with its findings.
    pub fn require(&self, env: &Environment, need: Need) -> Result<(), super::ConfigErrors> {
        let (advisory, fatal): (Vec<_>, Vec<_>) = self
            .unresolved(env, need)
            .into_iter()
            .filter(|u| u.referrer != Referrer::RequiredEnv)
            .partition(|u| u.advisory);
        for u in advisory {
            tracing::warn!("{}; notifications through it will fail", u.error);
        }
        if fatal.is_empty() {
            Ok(())
        } else {
            Err(super::ConfigErrors(
                fatal.into_iter().map(|u| u.error).collect(),
            ))
        }
    }
}
