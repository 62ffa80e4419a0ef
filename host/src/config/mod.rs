//! `agent.toml`: read, validated and turned into typed settings.
//!
//! Every error names the file, line and column, shows the line and says how to fix it;
//! all errors in a file are reported at once. Secret values never appear in the file: a
//! secret is a reference (`${env:NAME}` or `${file:/run/secrets/x}`) resolved when a plugin
//! is loaded, and never written anywhere.
//!
//! ```no_run
//! let config = deploy_agent::config::Config::load("agent.toml".as_ref())?;
//! for (name, plugin) in &config.plugins {
//!     println!("{name}: {}", plugin.path.display());
//! }
//! # Ok::<(), deploy_agent::config::ConfigErrors>(())
//! ```

mod environment;
mod error;
mod notify_filter;
mod objectives;
mod raw;
mod references;
mod rollout;
mod schedule;
mod server;
mod state_backup;
mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub use environment::{
    AnalysisConfig, ApprovalConfig, ArtifactConfig, BackupWhen, CheckConfig, CheckStage,
    DeploySettings, Environment, Gate, OnInterrupt, Probe, RequiredEnv, RollbackPolicy, Strategy,
    TargetConfig, ValidateConfig,
};
pub(crate) use error::line_col;
pub use error::{ConfigError, ConfigErrors};
pub use notify_filter::{EVENT_KINDS, NotifyFilter, Severity};
pub use objectives::{Objectives, parse_span, span_text};
pub use schedule::{Cadence, Job, Schedule, local_text, time_zone};
pub use state_backup::{StateBackupConfig, redact_for_backup};

pub use references::{Need, ReadError, Referrer, SecretRef, SecretSource, Site, Unresolved};
pub use rollout::{Batch, OnHostFailure, Rollout};
pub use server::{GithubConfig, GithubRoute, Role, ServerConfig, TlsFiles, TokenConfig};
pub use traffic::{CanaryStep, DEFAULT_SCALE_DOWN_DELAY, Pause};

use crate::runtime::PluginSpec;
use crate::runtime::policy::{DirGrant, HostPattern, MAX_MEMORY_MIB, Policy};
use crate::runtime::secrets::{self, Secret, Secrets, Sigv4Scope};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Where the agent keeps its state and caches.
    pub state_dir: PathBuf,
    /// The state store's database when not `<state_dir>/state.db` (PostgreSQL, for a fleet).
    pub state_url: Option<UrlSource>,
    /// The plugins, by name.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// The environments, by name.
    pub environments: BTreeMap<String, Environment>,
    /// The daemon (`deploy-agent serve`).
    pub server: ServerConfig,
    /// The time zone schedules are read in (`[agent] time_zone`, else the system's).
    pub time_zone: jiff::tz::TimeZone,
    /// Backups of the agent's own state (`[agent.state_backup]`), if configured.
    pub state_backup: Option<StateBackupConfig>,
    /// Things worth fixing that do not stop the agent.
    pub warnings: Vec<ConfigError>,
}

/// The JSON Schema of agent.toml (`deploy-agent config schema`).
pub const SCHEMA: &str = include_str!("schema.json");

/// zstd level for backups unless configured (see the backup benchmark in the README).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// An environment's backup settings.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The directory.
    pub dir: PathBuf,
    /// The encryption key's source, if backups are encrypted.
    pub key: Option<SecretRef>,
    /// zstd level.
    pub zstd_level: i32,
    /// zstd worker threads (0: one per core).
    pub zstd_workers: u32,
    /// What prune keeps.
    pub retention: crate::db::backup::Retention,
    /// The backup-store plugin that keeps a copy of every backup off this host, if any.
    pub offsite: Option<String>,
    /// The recovery objectives (`rpo`, `rto`).
    pub objectives: Objectives,
}

/// What a backup key is wanted for: it decides what the error says when the key cannot be
/// had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Taking backups.
    Write,
    /// Verifying, exporting or restoring them (a restore's safety backup included).
    Read,
}

impl BackupConfig {
    /// The backup engine's settings. Fails closed: a configured key that cannot be read or
    /// parsed is an error, never an unencrypted backup nor an unreadable one.
    pub fn settings(
        &self,
        environment: &str,
        purpose: KeyUse,
    ) -> Result<crate::db::backup::BackupSettings, String> {
        let consequence = match purpose {
            KeyUse::Write => "refusing to write an unencrypted backup",
            KeyUse::Read => "the environment's encrypted backups cannot be read without it",
        };
        let key = match &self.key {
            None => None,
            Some(source) => {
                let value = source
                    .resolve()
                    .map_err(|e| format!("backup key {source}: {e}; {consequence}"))?;
                Some(
                    crate::db::backup::Key::parse(value.expose())
                        .map_err(|e| format!("backup key {source}: {e}; {consequence}"))?,
                )
            }
        };
        Ok(crate::db::backup::BackupSettings {
            environment: environment.to_string(),
            dir: self.dir.clone(),
            key,
            zstd_level: self.zstd_level,
            zstd_workers: self.zstd_workers,
            retention: self.retention,
        })
    }
}

/// An environment's database.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The URL, or a reference to where it is kept (it may hold a password).
    pub url: UrlSource,
    /// The migrations directory.
    pub migrations: PathBuf,
    /// `lock_timeout` for migration statements.
    pub lock_timeout: Duration,
    /// Retries after a `lock_timeout`.
    pub lock_retries: u32,
    /// How long to wait for the migration lock.
    pub lock_wait: Duration,
    /// How a rollback or restore puts a backup back.
    pub rollback: RollbackRestore,
}

/// How a database rollback puts a backup back (`[environments.X.database] rollback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RollbackRestore {
    /// Restore into a new database (SQLite: file) beside the live one, then switch to it in
    /// one short step, the app with it; the old one is kept under a dated name as the safety
    /// snapshot. Falls back to [`RollbackRestore::InPlace`] where renaming is not possible.
    #[default]
    Swap,
    /// Take a safety backup, then restore over the live database in one transaction.
    InPlace,
}

impl RollbackRestore {
    /// Its word in agent.toml.
    pub fn word(self) -> &'static str {
        match self {
            RollbackRestore::Swap => "swap",
            RollbackRestore::InPlace => "in-place",
        }
    }
}

/// A database URL: written out (no password allowed) or a secret reference.
#[derive(Debug, Clone)]
pub enum UrlSource {
    /// A URL without a password (`sqlite:` paths already made absolute).
    Plain(String),
    /// `${env:…}` or `${file:…}`.
    Secret(SecretRef),
}

impl UrlSource {
    /// The URL, resolved now. Never log it: use [`crate::db::redact_url`].
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            UrlSource::Plain(u) => Ok(u.clone()),
            UrlSource::Secret(s) => s
                .resolve()
                .map(|v| v.expose().to_string())
                .map_err(|e| format!("{}: {e}", s.site.describe())),
        }
    }
}

impl DatabaseConfig {
    /// The URL, resolved now. Never log it: use [`crate::db::redact_url`].
    pub fn url(&self) -> Result<String, String> {
        self.url.resolve()
    }

    /// The migration engine's settings for this database.
    pub fn settings(&self, strict: bool) -> Result<crate::db::migrate::Settings, String> {
        let mut s = crate::db::migrate::Settings::new(&self.url()?, self.migrations.clone());
        s.lock_timeout = self.lock_timeout;
        s.lock_retries = self.lock_retries;
        s.lock_wait = self.lock_wait;
        s.strict = strict;
        Ok(s)
    }
}

/// One plugin's settings.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Its name.
    pub name: String,
    /// The component file.
    pub path: PathBuf,
    /// The pinned sha256, if pinned.
    pub sha256: Option<String>,
    /// What it may do.
    pub policy: Policy,
    /// The secrets it may reference.
    pub secrets: BTreeMap<String, SecretConfig>,
    /// Its settings, as passed to it.
    pub config: serde_json::Value,
    /// As a notifier: which events it hears.
    pub notify: NotifyFilter,
}

/// A granted secret: where its value comes from and where it may go.
#[derive(Debug, Clone)]
pub struct SecretConfig {
    /// Where the value comes from, and where agent.toml says so.
    pub reference: SecretRef,
    /// The hosts it may be sent to.
    pub hosts: Vec<HostPattern>,
    /// For an AWS secret access key: what it may sign for (and then it signs only that).
    pub sigv4: Option<Sigv4Scope>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![
                ConfigError::file(path, format!("cannot read the configuration: {e}"))
                    .hint("pass the file with --config PATH (the default is ./agent.toml)"),
            ])
        })?;
        Config::parse(path, &text)
    }

    /// Validates a configuration's text; relative paths are relative to `path`'s directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = plain_serde_message(e.message().trim());
            let mut err = ConfigError::at(path, text, span, message.clone());
            if message.contains("unknown field") {
                err = err.hint(
                    "check the spelling; agent.toml in the repository documents every option",
                );
            }
            ConfigErrors(vec![err])
        })?;
        let mut v = Validator {
            file: path,
            text,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            errors: Vec::new(),
            warnings: Vec::new(),
            broken_plugins: Default::default(),
        };
        let state_dir = match &raw.agent.state_dir {
            Some(s) => v.base.join(s.get_ref()),
            None => v.base.join(".deploy-agent"),
        };
        let state_url = raw.agent.state_url.as_ref().map(|u| v.url(u));
        let mut plugins = BTreeMap::new();
        for (name, plugin) in &raw.plugins {
            match v.plugin(name, plugin) {
                Some(p) => {
                    plugins.insert(name.get_ref().clone(), p);
                }
                None => {
                    v.broken_plugins.insert(name.get_ref().clone());
                }
            }
        }
        let mut environments = BTreeMap::new();
        let resolved = environment::resolve_extends(&mut v, &raw.environments);
        // Parents before children, so an inherited mistake is reported at its source once and
        // each environment that inherits it is named on that one report.
        let mut order: Vec<(&String, Vec<String>)> = resolved
            .keys()
            .map(|name| (name, environment::extends_chain(&raw.environments, name)))
            .collect();
        order.sort_by_key(|(name, chain)| (chain.len(), *name));
        for (name, chain) in order {
            let (spanned, env) = &resolved[name];
            let before = v.errors.len();
            let e = v.environment(spanned, env, &state_dir, &plugins, state_url.is_some());
            v.fold_inherited(before, &chain);
            if let Some(e) = e {
                environments.insert(name.clone(), e);
            }
        }
        let server = match &raw.server {
            Some(s) => v.server(s, &environments),
            None => ServerConfig::default(),
        };
        let time_zone = match &raw.agent.time_zone {
            None => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
            Some(name) => time_zone(Some(name.get_ref())).unwrap_or_else(|e| {
                v.error(
                    name,
                    e,
                    "write an IANA name such as \"UTC\" or \"Europe/Berlin\" (the names under /usr/share/zoneinfo)",
                );
                jiff::tz::TimeZone::UTC
            }),
        };
        let state_backup = raw
            .agent
            .state_backup
            .as_ref()
            .and_then(|s| v.state_backup(s, &state_dir, &plugins));
        if !v.errors.is_empty() {
            v.errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(v.errors));
        }
        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            state_url,
            plugins,
            environments,
            server,
            time_zone,
            state_backup,
            warnings: v.warnings,
        })
    }

    /// An environment by name, or an error that lists the known ones.
    pub fn environment(&self, name: &str) -> Result<&Environment, String> {
        self.environments.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.environments.keys().map(String::as_str).collect();
            format!(
                "no environment `{name}` in {} (known: {})",
                self.path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    /// The directory relative paths in the file are relative to (commands run there).
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }

    /// What the runtime needs to load a plugin, with its secrets resolved now.
    pub fn plugin_spec(&self, name: &str) -> Result<PluginSpec, String> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| format!("no plugin named `{name}` in {}", self.path.display()))?;
        let mut secrets = Secrets::default();
        for (secret, cfg) in &plugin.secrets {
            let value = cfg.reference.resolve().map_err(|e| {
                format!(
                    "{}: plugin `{name}`, secret `{secret}`: {e}",
                    cfg.reference.site.describe()
                )
            })?;
            secrets.insert(
                secret.clone(),
                Secret {
                    value,
                    hosts: cfg.hosts.clone(),
                    sigv4: cfg.sigv4.clone(),
                },
            );
        }
        for dir in plugin.policy.dirs.iter().filter(|d| d.writable) {
            std::fs::create_dir_all(&dir.host).map_err(|e| {
                format!(
                    "plugin `{name}`: cannot create its directory {}: {e}",
                    dir.host.display()
                )
            })?;
        }
        Ok(PluginSpec {
            name: name.to_string(),
            path: plugin.path.clone(),
            sha256: plugin.sha256.clone(),
            policy: plugin.policy.clone(),
            secrets,
            config: plugin.config.clone(),
        })
    }
}

/// A TOML decoding message without the Rust type names serde puts in it (`expected struct
/// RawArtifact` reads `expected a table`).
fn plain_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct Raw") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct Raw".len()..];
        let end = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        out.push_str("a table (`[section]` or `{ key = value }`)");
        rest = &after[end..];
    }
    out.push_str(rest);
    out.replace("expected a map", "expected a table")
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Plugins declared with an error of their own: a reference to one is not a second error.
    broken_plugins: std::collections::BTreeSet<String>,
}

fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Config keys that suggest a secret was put where any plugin call can see it.
const SECRET_LOOKING: [&str; 6] = [
    "token",
    "password",
    "secret",
    "api_key",
    "apikey",
    "private_key",
];

impl Validator<'_> {
    /// Folds the errors found since `before` for the environment whose `extends` chain is
    /// `chain` (itself first) into identical earlier reports: the same mistake inherited from a
    /// parent is one error, at its source, naming every environment that inherits it.
    fn fold_inherited(&mut self, before: usize, chain: &[String]) {
        let new = self.errors.split_off(before);
        for e in new {
            let same = self.errors[..before]
                .iter_mut()
                .find(|o| (o.line, o.column, &o.message) == (e.line, e.column, &e.message));
            match same {
                Some(original) if chain.len() > 1 => original.inherited_by.push(chain.join(" → ")),
                _ => self.errors.push(e),
            }
        }
    }

    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>, hint: &str) {
        let mut e = ConfigError::at(self.file, self.text, at.span(), message);
        if !hint.is_empty() {
            e = e.hint(hint);
        }
        self.errors.push(e);
    }

    fn plugin(
        &mut self,
        name: &Spanned<String>,
        p: &Spanned<raw::RawPlugin>,
    ) -> Option<PluginConfig> {
        let before = self.errors.len();
        if !valid_plugin_name(name.get_ref()) {
            self.error(
                name,
                format!("plugin name `{}` is not allowed", name.get_ref()),
                "use lowercase letters, digits, `-` and `_`",
            );
        }
        let p = p.get_ref();
        let path = self.base.join(p.path.get_ref());
        if !path.is_file() {
            self.error(
                &p.path,
                format!("plugin file {} does not exist", path.display()),
                "build the plugins with `make plugins`, or fix the path (relative to this file)",
            );
        }
        let sha256 = match &p.sha256 {
            Some(s) => {
                let hex = s
                    .get_ref()
                    .trim_start_matches("sha256:")
                    .to_ascii_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    self.error(
                        s,
                        "sha256 must be 64 hexadecimal characters",
                        "`deploy-agent plugin inspect FILE.wasm` prints it",
                    );
                }
                Some(hex)
            }
            None => {
                self.warnings.push(
                    ConfigError::at(self.file, self.text, p.path.span(), format!("plugin `{}` is not pinned", name.get_ref()))
                        .hint("add `sha256 = \"...\"` (from `deploy-agent plugin inspect FILE.wasm`) so a changed file refuses to load"),
                );
                None
            }
        };
        let policy = self.policy(&p.policy);
        let mut secrets = BTreeMap::new();
        for (sname, s) in &p.secrets {
            if !secrets::valid_name(sname.get_ref()) {
                self.error(
                    sname,
                    format!("secret name `{}` is not allowed", sname.get_ref()),
                    "use letters, digits and `-`",
                );
            }
            let s = s.get_ref();
            let source = match SecretSource::parse(s.from.get_ref()) {
                Some(src) => src,
                None => {
                    self.error(
                        &s.from,
                        "a secret's `from` must be a reference, not a value",
                        "write `from = \"${env:VAR_NAME}\"` or `from = \"${file:/run/secrets/name}\"`; secret values never go in agent.toml",
                    );
                    continue;
                }
            };
            let mut hosts = Vec::new();
            if s.hosts.is_empty() {
                self.error(
                    &s.from,
                    format!(
                        "secret `{}` is bound to no host, so it could never be used",
                        sname.get_ref()
                    ),
                    "add `hosts = [\"api.example.com\"]`: the hosts a request may carry it to",
                );
            }
            for h in &s.hosts {
                match HostPattern::parse(h.get_ref()) {
                    Ok(pattern) => {
                        let covered = policy
                            .allowed_hosts
                            .iter()
                            .any(|a| *a == pattern || pattern_within(a, &pattern));
                        if !covered {
                            self.error(h, format!("secret `{}` is bound to `{pattern}`, which is not in this plugin's allowed_hosts", sname.get_ref()), "add the host to [plugins.NAME.policy] allowed_hosts, or fix the binding");
                        }
                        hosts.push(pattern);
                    }
                    Err(e) => self.error(h, e, ""),
                }
            }
            let sigv4 = s.sigv4.as_ref().map(|scope| {
                let raw = scope.get_ref();
                if raw.services.is_empty() || raw.regions.is_empty() {
                    self.error(
                        scope,
                        format!("secret `{}`: `sigv4` needs at least one service and one region", sname.get_ref()),
                        "e.g. sigv4 = { services = [\"s3\"], regions = [\"eu-west-1\"] }: what the key may sign for",
                    );
                }
                Sigv4Scope {
                    services: raw.services.clone(),
                    regions: raw.regions.clone(),
                }
            });
            secrets.insert(
                sname.get_ref().clone(),
                SecretConfig {
                    reference: SecretRef {
                        source,
                        site: Site::at(self.file, self.text, s.from.span()),
                    },
                    hosts,
                    sigv4,
                },
            );
        }
        // A plugin that imports `sigv4-signature` and is configured with an AWS access key id
        // signs AWS requests: its secret access key must say what it may sign for. (The import
        // alone proves nothing: a Python component imports every function of an interface.)
        if p.config.contains_key("access_key_id")
            && !secrets.values().any(|s| s.sigv4.is_some())
            && signs_sigv4(&path)
        {
            self.error(
                &p.path,
                format!(
                    "plugin `{}` signs AWS requests (it imports `sigv4-signature` and has an access_key_id), but none of its secrets is granted for SigV4",
                    name.get_ref()
                ),
                "bind the secret access key to what it may sign: sigv4 = { services = [\"s3\"], regions = [\"REGION\"] } under [plugins.NAME.secrets.KEY]",
            );
        }
        for key in p.config.keys() {
            let k = key.to_ascii_lowercase();
            if SECRET_LOOKING.iter().any(|s| k.contains(s)) {
                self.warnings.push(
                    ConfigError::at(self.file, self.text, p.path.span(), format!("plugin `{}` has a config key `{key}` that looks like a secret", name.get_ref()))
                        .hint("config is visible to the plugin and in logs; grant it under [plugins.NAME.secrets] instead"),
                );
            }
        }
        let config = serde_json::to_value(&p.config).unwrap_or(serde_json::Value::Null);
        let notify = self.notify_filter(p.notify.as_ref());
        if self.errors.len() > before {
            return None;
        }
        Some(PluginConfig {
            name: name.get_ref().clone(),
            path,
            sha256,
            policy,
            secrets,
            config,
            notify,
        })
    }

    fn policy(&mut self, raw: &raw::RawPolicy) -> Policy {
        let mut policy = Policy::default();
        for h in &raw.allowed_hosts {
            match HostPattern::parse(h.get_ref()) {
                Ok(p) => policy.allowed_hosts.push(p),
                Err(e) => self.error(
                    h,
                    e,
                    "examples: `api.vercel.com`, `*.s3.amazonaws.com`, `localhost:9000`",
                ),
            }
        }
        for r in &raw.allow_ip_ranges {
            match r.get_ref().parse::<ipnet::IpNet>() {
                Ok(net) => policy.allowed_ranges.push(net),
                Err(_) => match r.get_ref().parse::<std::net::IpAddr>() {
                    Ok(ip) => policy.allowed_ranges.push(ipnet::IpNet::from(ip)),
                    Err(_) => self.error(
                        r,
                        format!("`{}` is not an address range", r.get_ref()),
                        "use CIDR notation, e.g. `127.0.0.0/8` or `10.0.0.0/8`",
                    ),
                },
            }
        }
        for d in &raw.dirs {
            let dir = d.get_ref();
            let host = self.base.join(dir.path.get_ref());
            // A writable grant (a deploy target's root) is created when the plugin loads.
            if !host.is_dir() && !dir.rw {
                self.error(
                    &dir.path,
                    format!("granted directory {} does not exist", host.display()),
                    "create it, or fix the path (relative to this file)",
                );
            }
            if !dir.guest.get_ref().starts_with('/') {
                self.error(
                    &dir.guest,
                    "`guest` must be an absolute path, where the plugin sees the directory",
                    "for example `guest = \"/artifact\"`",
                );
            }
            policy.dirs.push(DirGrant {
                host,
                guest: dir.guest.get_ref().clone(),
                writable: dir.rw,
            });
        }
        if let Some(m) = &raw.memory_mb {
            if !(1..=MAX_MEMORY_MIB).contains(m.get_ref()) {
                self.error(
                    m,
                    format!("memory_mb must be between 1 and {MAX_MEMORY_MIB}"),
                    "",
                );
            }
            policy.memory_bytes = m.get_ref() << 20;
        }
        if let Some(t) = &raw.timeout_ms {
            if !(1..=3_600_000).contains(t.get_ref()) {
                self.error(t, "timeout_ms must be between 1 and 3600000 (an hour)", "");
            }
            policy.timeout = Duration::from_millis(*t.get_ref());
        }
        if let Some(b) = &raw.max_response_bytes {
            if *b.get_ref() == 0 {
                self.error(b, "max_response_bytes must be at least 1", "");
            }
            policy.max_response_bytes = *b.get_ref();
        }
        if let Some(b) = &raw.max_return_bytes {
            if !(1..=(64 << 20)).contains(b.get_ref()) {
                self.error(
                    b,
                    "max_return_bytes must be between 1 and 67108864 (64 MiB)",
                    "",
                );
            }
            policy.max_return_bytes = *b.get_ref() as usize;
        }
        if let Some(n) = &raw.max_requests {
            if *n.get_ref() > 100_000 {
                self.error(n, "max_requests must be at most 100000", "");
            }
            policy.max_requests = *n.get_ref();
        }
        for ca in &raw.tls_ca {
            self.tls_ca(ca, &mut policy);
        }
        policy
    }

    /// One `tls_ca` entry: inline PEM, or a PEM file relative to agent.toml.
    fn tls_ca(&mut self, ca: &Spanned<String>, policy: &mut Policy) {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let text = ca.get_ref();
        let (pem, from) = if text.trim_start().starts_with("-----BEGIN") {
            (text.as_bytes().to_vec(), "the inline PEM".to_string())
        } else {
            let path = self.base.join(text);
            match std::fs::read(&path) {
                Ok(bytes) => (bytes, path.display().to_string()),
                Err(e) => {
                    self.error(
                        ca,
                        format!("cannot read CA bundle {}: {e}", path.display()),
                        "give a PEM file (relative to this file) or the PEM text itself",
                    );
                    return;
                }
            }
        };
        let certs: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_slice_iter(&pem).collect();
        match certs {
            Ok(certs) if !certs.is_empty() => policy.extra_roots.extend(certs),
            Ok(_) => self.error(
                ca,
                format!("{from} holds no `BEGIN CERTIFICATE` block"),
                "a CA bundle is one or more PEM certificates",
            ),
            Err(e) => self.error(
                ca,
                format!("{from} is not valid PEM: {e}"),
                "a CA bundle is one or more PEM certificates",
            ),
        }
    }
}

/// Whether the component at `path` imports `sigv4-signature` (its name is in the file's
/// import section; a Rust component lists only the functions it uses).
fn signs_sigv4(path: &Path) -> bool {
    std::fs::read(path)
        .map(|wasm| memchr::memmem::find(&wasm, b"sigv4-signature").is_some())
        .unwrap_or(false)
}

/// Whether every host `inner` matches is also matched by `outer` (for secret bindings).
fn pattern_within(outer: &HostPattern, inner: &HostPattern) -> bool {
    let o = outer.to_string();
    let i = inner.to_string();
    let (o_host, o_port) = o
        .rsplit_once(':')
        .map_or((o.as_str(), None), |(h, p)| (h, Some(p)));
    let (i_host, i_port) = i
        .rsplit_once(':')
        .map_or((i.as_str(), None), |(h, p)| (h, Some(p)));
    if o_port.is_some() && o_port != i_port {
        return false;
    }
    match o_host.strip_prefix("*.") {
        Some(suffix) => i_host.ends_with(&format!(".{suffix}")),
        None => o_host == i_host,
    }
}
