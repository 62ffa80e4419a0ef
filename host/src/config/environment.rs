//! One environment's settings: what it deploys, to which target, through which checks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, Merge};
use super::{
    BackupConfig, ConfigError, DEFAULT_ZSTD_LEVEL, DatabaseConfig, Job, RollbackRestore, SecretRef,
    SecretSource, Site, UrlSource, Validator, valid_plugin_name,
};

/// One environment (`local`, `staging`, `production`, ...).
#[derive(Debug, Clone)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// The environment it inherits from, if any.
    pub extends: Option<String>,
    /// Strict: warnings (lint findings included) block.
    pub strict: bool,
    /// Where releases go.
    pub target: Option<TargetConfig>,
    /// What is deployed.
    pub artifact: ArtifactConfig,
    /// What is checked before anything changes.
    pub validate: ValidateConfig,
    /// Its application database, if it has one.
    pub database: Option<DatabaseConfig>,
    /// Where and how its database backups are kept.
    pub backup: BackupConfig,
    /// How a deployment runs.
    pub deploy: DeploySettings,
    /// Health checks and smoke tests.
    pub checks: Vec<CheckConfig>,
    /// Notifier plugins told of every transition.
    pub notifiers: Vec<String>,
    /// What a failed watch does.
    pub rollback: RollbackPolicy,
    /// An approval gate, if the environment requires one.
    pub approval: Option<ApprovalConfig>,
    /// Metric analysis during the watch window.
    pub analysis: Vec<AnalysisConfig>,
    /// The hosts it spans and how a run rolls out across them, if it spans hosts.
    pub rollout: Option<super::Rollout>,
    /// Jobs the daemon runs on a schedule (backups, prune, restore drills, off-site checks).
    pub schedule: super::Schedule,
}

impl Environment {
    /// Its checks of one stage, in order.
    pub fn checks_at(&self, stage: CheckStage) -> Vec<CheckConfig> {
        self.checks
            .iter()
            .filter(|c| c.stage == stage)
            .cloned()
            .collect()
    }

    /// The plugins it uses (target, validators, off-site backup store, notifiers), sorted.
    pub fn plugins_used(&self) -> Vec<String> {
        let mut names: Vec<String> = self.target.iter().map(|t| t.plugin.clone()).collect();
        names.extend(self.validate.plugins.iter().cloned());
        names.extend(self.backup.offsite.iter().cloned());
        names.extend(self.notifiers.iter().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Whether it uses `plugin` only to notify: then the plugin's problems never block.
    pub fn only_notifies(&self, plugin: &str) -> bool {
        self.notifiers.iter().any(|n| n == plugin)
            && self.target.as_ref().is_none_or(|t| t.plugin != plugin)
            && !self.validate.plugins.iter().any(|p| p == plugin)
            && self.backup.offsite.as_deref() != Some(plugin)
    }
}

/// What a release that fails its watch (checks or analysis) after promotion gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackPolicy {
    /// The previous release is made live again, verified, and everyone told (the default).
    Auto,
    /// Everyone is told, with the evidence; the release stays live.
    Notify,
    /// The run fails; nothing else happens.
    Off,
}

/// Where a run waits for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// Before anything (right after taking the lock).
    Start,
    /// Before promotion, once the release is staged and verified.
    Promote,
}

/// An approval gate.
#[derive(Debug, Clone)]
pub struct ApprovalConfig {
    /// Where.
    pub before: Gate,
    /// A request not decided within this fails the run.
    pub expires: Option<Duration>,
}

/// One metric analysis: a Prometheus query measured `count` times, `interval` apart.
#[derive(Debug, Clone)]
pub struct AnalysisConfig {
    /// Its name, in reports.
    pub name: String,
    /// The Prometheus-compatible server's base URL (`/api/v1/query` is appended).
    pub prometheus: String,
    /// The PromQL query; it must return one number (a scalar or a one-sample vector).
    pub query: String,
    /// A measurement above this fails.
    pub max: Option<f64>,
    /// A measurement below this fails.
    pub min: Option<f64>,
    /// Between measurements.
    pub interval: Duration,
    /// Measurements to take.
    pub count: u32,
    /// More failed measurements than this fails the analysis.
    pub failure_limit: u32,
    /// This many passing measurements in a row pass it early (0: never early).
    pub consecutive_success_limit: u32,
    /// More inconclusive measurements (no data) than this pauses for a decision.
    pub inconclusive_limit: u32,
}

/// The deploy-target plugin and this environment's settings for it.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// The plugin's name.
    pub plugin: String,
    /// Keys that override the plugin's `[plugins.NAME.config]` for this environment.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// The artifact: a directory on the deploy host.
#[derive(Debug, Clone, Default)]
pub struct ArtifactConfig {
    /// The directory (overridden by `deploy --artifact`).
    pub path: Option<PathBuf>,
    /// Its pinned digest (`sha256:…` over the tree), if pinned.
    pub sha256: Option<String>,
    /// Where an artifact named by an API caller or a webhook route may lie (absolute; an
    /// artifact must be inside one of them after its links are resolved). None: such an
    /// artifact is refused.
    pub roots: Vec<PathBuf>,
}

/// Built-in and plugin validators.
#[derive(Debug, Clone, Default)]
pub struct ValidateConfig {
    /// Validator plugins, by name.
    pub plugins: Vec<String>,
    /// Environment variables the agent's process must have.
    pub required_env: Vec<RequiredEnv>,
    /// Minimum length of every secret this environment uses (0: unchecked).
    pub min_secret_length: usize,
}

/// An environment variable the agent's process must have, and where agent.toml asks for it.
#[derive(Debug, Clone)]
pub struct RequiredEnv {
    /// The variable.
    pub name: String,
    /// Where `required_env` lists it.
    pub site: Site,
}

/// How a release takes over from the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Deploy, verify the staged release, then promote it (two-phase; the default).
    Staged,
    /// Deploy and promote, then verify the live release (for targets without previews).
    Direct,
    /// Stage beside the live release, verify it on its preview address, switch all traffic
    /// at once, keep the old one for `scale_down_delay_ms` (and the watch), then retire it.
    BlueGreen,
    /// Stage, verify, then shift traffic to it in `steps`, with the analysis at each; then
    /// promote it and retire the old one as blue-green does.
    Canary,
}

impl Strategy {
    /// Whether the old release is kept after the switch and retired once the watch passes.
    pub fn retires(self) -> bool {
        matches!(self, Strategy::BlueGreen | Strategy::Canary)
    }
}

/// When a deployment backs up the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupWhen {
    /// Only when migrations are pending (the default).
    Pending,
    /// Every deployment.
    Always,
    /// Never (the plan says so, loudly).
    Never,
}

/// How a deployment runs.
#[derive(Debug, Clone)]
pub struct DeploySettings {
    /// Staged or direct.
    pub strategy: Strategy,
    /// When to back up.
    pub backup: BackupWhen,
    /// How often the target's status is polled.
    pub poll_interval: Duration,
    /// How long a release may take to become ready.
    pub timeout: Duration,
    /// The environment lock's lease; a dead agent's lock expires after it.
    pub lock_lease: Duration,
    /// How long `watch` checks keep running after promotion (0: once).
    pub watch: Duration,
    /// What the next start does with a run that was interrupted.
    pub on_interrupt: OnInterrupt,
    /// A canary's steps (empty for other strategies).
    pub steps: Vec<super::CanaryStep>,
    /// Blue-green and canary: how long the old release is kept after the switch.
    pub scale_down_delay: Duration,
}

/// What happens to a run found interrupted (the agent died mid-run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInterrupt {
    /// Finish it: the same release is resumed where it stopped; a run of another release is
    /// superseded by the new one (the default).
    Resume,
    /// Undo it: the release live before it is made live again and, if its migrations ran,
    /// the database is restored from the backup it took.
    Rollback,
}

impl Default for DeploySettings {
    fn default() -> Self {
        DeploySettings {
            strategy: Strategy::Staged,
            backup: BackupWhen::Pending,
            poll_interval: Duration::from_millis(1_000),
            timeout: Duration::from_secs(600),
            lock_lease: Duration::from_secs(60),
            watch: Duration::ZERO,
            on_interrupt: OnInterrupt::Resume,
            steps: Vec::new(),
            scale_down_delay: super::DEFAULT_SCALE_DOWN_DELAY,
        }
    }
}

/// One health check or smoke test.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Its name, in reports.
    pub name: String,
    /// What it probes.
    pub probe: Probe,
    /// Before promotion (`verify`) or after (`watch`).
    pub stage: CheckStage,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first failure.
    pub retries: u32,
    /// Between attempts.
    pub interval: Duration,
}

/// When a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStage {
    /// After deploy, before promote (the staged release).
    Verify,
    /// After promote (the live release), for `watch_ms`.
    Watch,
}

/// What a check probes. `{url}`, `{release}` and `{env}` in a URL, address or command are
/// replaced by the release's URL, its id and the environment's name.
#[derive(Debug, Clone)]
pub enum Probe {
    /// An HTTP(S) GET.
    Http {
        /// The URL.
        url: String,
        /// Expected status (default: any 2xx).
        expect_status: Option<u16>,
        /// A substring the body must contain.
        body_contains: Option<String>,
        /// A JSON pointer (`/status`) into the body...
        json_pointer: Option<String>,
        /// ...and the value it must equal (default: it must exist).
        json_equals: Option<serde_json::Value>,
        /// Slower than this fails.
        max_latency: Option<Duration>,
    },
    /// A TCP connect to `host:port`.
    Tcp {
        /// The address.
        address: String,
    },
    /// A shell command (`sh -c`) that must exit 0; run in the config file's directory.
    Command {
        /// The command.
        command: String,
    },
}

/// `name` and its ancestors through `extends`, nearest first (stops at a missing name or a
/// cycle, which `resolve_extends` reports).
pub(super) fn extends_chain(
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawEnvironment>>,
    name: &str,
) -> Vec<String> {
    let by_name: BTreeMap<&str, &raw::RawEnvironment> = raw
        .iter()
        .map(|(k, e)| (k.get_ref().as_str(), e.get_ref()))
        .collect();
    let mut chain = vec![name.to_string()];
    let mut at = name;
    while let Some(parent) = by_name.get(at).and_then(|e| e.extends.as_ref()) {
        let parent = parent.get_ref().as_str();
        if chain.iter().any(|c| c == parent) || !by_name.contains_key(parent) {
            break;
        }
        chain.push(parent.to_string());
        at = parent;
    }
    chain
}

/// Resolves `extends` chains: the child wins field by field, section by section. Linear in
/// the number of environments: each is merged once, onto its parent's already resolved
/// settings (merging is associative, so this equals walking the whole chain each time).
pub(super) fn resolve_extends(
    v: &mut Validator<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawEnvironment>>,
) -> BTreeMap<String, (Spanned<String>, raw::RawEnvironment)> {
    let by_name: BTreeMap<&str, &raw::RawEnvironment> = raw
        .iter()
        .map(|(k, e)| (k.get_ref().as_str(), e.get_ref()))
        .collect();
    // Resolved settings, or `None` for an environment whose chain is broken.
    let mut memo: HashMap<&str, Option<raw::RawEnvironment>> = HashMap::new();
    for name in raw.keys() {
        let name = name.get_ref().as_str();
        if memo.contains_key(name) {
            continue;
        }
        // Walk up to a resolved ancestor or a root, remembering the way.
        let mut chain: Vec<&str> = vec![name];
        let mut on_chain: HashMap<&str, usize> = HashMap::from([(name, 0)]);
        let broken = loop {
            let Some(parent) = chain.last().and_then(|c| by_name[c].extends.as_ref()) else {
                break false;
            };
            let pname = parent.get_ref().as_str();
            if let Some(done) = memo.get(pname) {
                if done.is_none() {
                    v.error(
                        parent,
                        format!("`extends` names `{pname}`, whose own `extends` is broken"),
                        "see the error about that environment",
                    );
                }
                break done.is_none();
            }
            if let Some(&start) = on_chain.get(pname) {
                cycle_errors(v, &by_name, &chain, start);
                break true;
            }
            if !by_name.contains_key(pname) {
                let known: Vec<&str> = by_name.keys().copied().collect();
                v.error(
                    parent,
                    format!("`extends` names no environment `{pname}`"),
                    &format!("known environments: {}", known.join(", ")),
                );
                break true;
            }
            on_chain.insert(pname, chain.len());
            chain.push(pname);
        };
        // Resolve from the top of the chain down, each onto its resolved parent.
        for env in chain.iter().rev() {
            let resolved = if broken {
                None
            } else {
                let mut merged = by_name[env].clone();
                let parent = merged
                    .extends
                    .as_ref()
                    .and_then(|p| memo.get(p.get_ref().as_str()))
                    .and_then(Option::as_ref);
                if let Some(parent) = parent {
                    merged.merge(parent);
                    #[cfg(test)]
                    MERGES.with(|m| m.set(m.get() + 1));
                }
                Some(merged)
            };
            memo.insert(env, resolved);
        }
    }
    raw.keys()
        .filter_map(|name| {
            let merged = memo.remove(name.get_ref().as_str()).flatten()?;
            Some((name.get_ref().clone(), (name.clone(), merged)))
        })
        .collect()
}

#[cfg(test)]
thread_local! {
    /// Merges `resolve_extends` performed on this thread (its cost, for the tests).
    static MERGES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Reports a cycle `chain[start..]` (whose last environment extends `chain[start]`) once from
/// each environment that reaches it, as walking its own chain would find it.
fn cycle_errors(
    v: &mut Validator<'_>,
    by_name: &BTreeMap<&str, &raw::RawEnvironment>,
    chain: &[&str],
    start: usize,
) {
    let cycle = &chain[start..];
    for from in 0..chain.len() {
        // From `chain[from]`: along the chain, around the cycle, back to where it repeats.
        let mut path: Vec<&str> = chain[from..].to_vec();
        let repeat = if from >= start {
            path.extend_from_slice(&cycle[..from - start]);
            chain[from]
        } else {
            cycle[0]
        };
        path.push(repeat);
        // The reference that closes it: the `extends` of the environment before the repeat.
        let closer = path[path.len() - 2];
        if let Some(parent) = by_name[closer].extends.as_ref() {
            v.error(
                parent,
                format!("`extends` makes a cycle: {}", path.join(" -> ")),
                "an environment cannot inherit from itself, directly or not",
            );
        }
    }
}

pub(super) fn ms(
    v: &mut Validator<'_>,
    value: &Option<Spanned<u64>>,
    default: Duration,
    what: &str,
    (min, max): (u64, u64),
) -> Duration {
    match value {
        Some(x) if *x.get_ref() < min || *x.get_ref() > max => {
            v.error(x, format!("{what} must be between {min} and {max}"), "");
            default
        }
        Some(x) => Duration::from_millis(*x.get_ref()),
        None => default,
    }
}

impl Validator<'_> {
    pub(super) fn environment(
        &mut self,
        name: &Spanned<String>,
        env: &raw::RawEnvironment,
        state_dir: &Path,
        plugins: &BTreeMap<String, super::PluginConfig>,
        shared: bool,
    ) -> Option<Environment> {
        let before = self.errors.len();
        let rollout = self.rollout(env, shared);
        if !valid_plugin_name(name.get_ref()) {
            self.error(
                name,
                format!("environment name `{}` is not allowed", name.get_ref()),
                "use lowercase letters, digits, `-` and `_`",
            );
        }
        let database = env
            .database
            .as_ref()
            .and_then(|d| self.database(name, d.get_ref()));
        let backup = self.backup(name.get_ref(), env.backup.as_ref(), state_dir);
        let plugin_ref = |this: &mut Self, p: &Spanned<String>, role: &str| {
            // A declared plugin with its own error was reported there; not again here.
            if !plugins.contains_key(p.get_ref()) && !this.broken_plugins.contains(p.get_ref()) {
                let mut known: Vec<&str> = plugins
                    .keys()
                    .chain(this.broken_plugins.iter())
                    .map(String::as_str)
                    .collect();
                known.sort_unstable();
                this.error(
                    p,
                    format!("{role} `{}` is not a configured plugin", p.get_ref()),
                    &format!(
                        "declare it under [plugins.{}] (known: {})",
                        p.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        };
        let target = env.target.as_ref().and_then(|t| {
            let t = t.get_ref();
            let Some(plugin) = &t.plugin else {
                self.error(
                    name,
                    format!(
                        "environment `{}` has a [target] without `plugin`",
                        name.get_ref()
                    ),
                    "add `plugin = \"NAME\"` under the environment's [target]",
                );
                return None;
            };
            plugin_ref(self, plugin, "target plugin");
            let config = match serde_json::to_value(t.config.clone().unwrap_or_default()) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            Some(TargetConfig {
                plugin: plugin.get_ref().clone(),
                config,
            })
        });
        let artifact = env
            .artifact
            .as_ref()
            .map_or_else(ArtifactConfig::default, |a| {
                let a = a.get_ref();
                let sha256 = a.sha256.as_ref().and_then(|s| {
                    let hex = s
                        .get_ref()
                        .trim_start_matches("sha256:")
                        .to_ascii_lowercase();
                    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        Some(hex)
                    } else {
                        self.error(
                            s,
                            "sha256 must be 64 hexadecimal characters",
                            "`deploy-agent plan` prints the artifact's digest",
                        );
                        None
                    }
                });
                let roots = a
                    .roots
                    .iter()
                    .flatten()
                    .map(|r| self.base.join(r.get_ref()))
                    .collect();
                ArtifactConfig {
                    path: a.path.as_ref().map(|p| self.base.join(p.get_ref())),
                    sha256,
                    roots,
                }
            });
        let validate = env
            .validate
            .as_ref()
            .map_or_else(ValidateConfig::default, |val| {
                let val = val.get_ref();
                let mut out = ValidateConfig::default();
                for p in val.plugins.iter().flatten() {
                    plugin_ref(self, p, "validator plugin");
                    out.plugins.push(p.get_ref().clone());
                }
                for e in val.required_env.iter().flatten() {
                    let ok = !e.get_ref().is_empty()
                        && e.get_ref()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ok {
                        self.error(
                            e,
                            format!("`{}` is not an environment variable name", e.get_ref()),
                            "",
                        );
                    }
                    out.required_env.push(RequiredEnv {
                        name: e.get_ref().clone(),
                        site: Site::at(self.file, self.text, e.span()),
                    });
                }
                out.min_secret_length = val.min_secret_length.as_ref().map_or(0, |m| *m.get_ref());
                out
            });
        if let Some(o) = env
            .backup
            .as_ref()
            .and_then(|b| b.get_ref().offsite.as_ref())
        {
            plugin_ref(self, o, "off-site backup store");
        }
        let mut notifiers = Vec::new();
        for n in env.notifiers.iter().flatten() {
            plugin_ref(self, n, "notifier");
            notifiers.push(n.get_ref().clone());
        }
        let deploy = self.deploy(env.deploy.as_ref().map(Spanned::get_ref));
        if let (Some(raw), Some(t)) = (env.deploy.as_ref(), target.as_ref())
            && let Some(plugin) = plugins.get(&t.plugin)
        {
            self.strategy_fits_target(
                raw.get_ref(),
                deploy.strategy,
                &t.plugin,
                &plugin.path,
                env.hosts.is_some(),
            );
        }
        let mut checks = Vec::new();
        for c in env.checks.iter().flatten() {
            if let Some(check) = self.check(c.get_ref()) {
                if checks.iter().any(|x: &CheckConfig| x.name == check.name) {
                    self.error(
                        &c.get_ref().name,
                        format!("two checks are named `{}`", check.name),
                        "give each check its own name",
                    );
                }
                checks.push(check);
            }
        }
        let rollback = match env
            .rollback
            .as_ref()
            .and_then(|r| r.get_ref().policy.as_ref())
        {
            None => RollbackPolicy::Auto,
            Some(p) => match p.get_ref().as_str() {
                "auto" => RollbackPolicy::Auto,
                "notify" => RollbackPolicy::Notify,
                "off" => RollbackPolicy::Off,
                other => {
                    self.error(p, format!("unknown rollback policy `{other}`"), "use `auto` (roll back and tell), `notify` (tell, keep the release) or `off`");
                    RollbackPolicy::Auto
                }
            },
        };
        let approval = env
            .approval
            .as_ref()
            .map(Spanned::get_ref)
            .filter(|a| a.required.unwrap_or(true))
            .map(|a| {
                let before = match a.before.as_ref() {
                    None => Gate::Promote,
                    Some(b) => match b.get_ref().as_str() {
                        "promote" => Gate::Promote,
                        "start" => Gate::Start,
                        other => {
                            self.error(
                                b,
                                format!("unknown approval gate `{other}`"),
                                "use `promote` (after verify) or `start` (before anything)",
                            );
                            Gate::Promote
                        }
                    },
                };
                let expires = a.expires_ms.as_ref().map(|e| {
                    ms(
                        self,
                        &Some(e.clone()),
                        Duration::ZERO,
                        "expires_ms",
                        (1_000, 30 * 86_400_000),
                    )
                });
                ApprovalConfig { before, expires }
            });
        let mut analysis = Vec::new();
        for a in env.analysis.iter().flatten() {
            let a = a.get_ref();
            let p = a.prometheus.get_ref();
            if !(p.starts_with("http://") || p.starts_with("https://")) {
                self.error(
                    &a.prometheus,
                    "`prometheus` must be an http:// or https:// base URL",
                    "for example `http://prometheus:9090`",
                );
            }
            if a.max.is_none() && a.min.is_none() {
                self.error(
                    &a.name,
                    format!(
                        "analysis `{}` sets neither `max` nor `min`, so it could never fail",
                        a.name.get_ref()
                    ),
                    "add `max = 0.01` (error rate) or `min = ...`",
                );
            }
            analysis.push(AnalysisConfig {
                name: a.name.get_ref().clone(),
                prometheus: p.trim_end_matches('/').to_string(),
                query: a.query.clone(),
                max: a.max,
                min: a.min,
                interval: ms(
                    self,
                    &a.interval_ms,
                    Duration::from_secs(10),
                    "interval_ms",
                    (10, 3_600_000),
                ),
                count: a.count.unwrap_or(3).max(1),
                failure_limit: a.failure_limit.unwrap_or(0),
                consecutive_success_limit: a.consecutive_success_limit.unwrap_or(0),
                inconclusive_limit: a.inconclusive_limit.unwrap_or(0),
            });
        }
        let schedule = self.schedule(env.schedule.as_ref());
        for (job, _) in &schedule.jobs {
            let needs_database = matches!(job, Job::Backup | Job::RestoreDrill);
            let needs_offsite = *job == Job::OffsiteVerify;
            let raw_key = env
                .schedule
                .iter()
                .flatten()
                .find(|(k, _)| k.get_ref() == job.name());
            let Some((key, _)) = raw_key else { continue };
            if needs_database && database.is_none() {
                self.error(
                    key,
                    format!(
                        "schedule `{job}`: environment `{}` has no [database] to back up",
                        name.get_ref()
                    ),
                    "add the environment's [database], or remove the job",
                );
            }
            if needs_offsite && backup.offsite.is_none() {
                self.error(
                    key,
                    format!(
                        "schedule `{job}`: environment `{}` keeps no off-site copies",
                        name.get_ref()
                    ),
                    "set `offsite = \"PLUGIN\"` under its [backup], or remove the job",
                );
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Environment {
            schedule,
            rollback,
            approval,
            analysis,
            rollout,
            name: name.get_ref().clone(),
            extends: env.extends.as_ref().map(|e| e.get_ref().clone()),
            strict: env.strict.unwrap_or(false),
            target,
            artifact,
            validate,
            database,
            backup,
            deploy,
            checks,
            notifiers,
        })
    }

    fn deploy(&mut self, raw: Option<&raw::RawDeploy>) -> DeploySettings {
        let d = DeploySettings::default();
        let Some(raw) = raw else { return d };
        let strategy = match raw.strategy.as_ref() {
            None => d.strategy,
            Some(s) => match s.get_ref().as_str() {
                "staged" => Strategy::Staged,
                "direct" => Strategy::Direct,
                "blue-green" => Strategy::BlueGreen,
                "canary" => Strategy::Canary,
                other => {
                    self.error(s, format!("unknown strategy `{other}`"), "use `staged` (deploy, verify, promote), `direct` (deploy and promote, then verify), `blue-green` (switch at once, keep the old release for a while) or `canary` (shift traffic in `steps`)");
                    d.strategy
                }
            },
        };
        let backup = match raw.backup.as_ref() {
            None => d.backup,
            Some(s) => {
                match s.get_ref().as_str() {
                    "pending" => BackupWhen::Pending,
                    "always" => BackupWhen::Always,
                    "never" => BackupWhen::Never,
                    other => {
                        self.error(s, format!("unknown backup setting `{other}`"), "use `pending` (back up when migrations are pending), `always` or `never`");
                        d.backup
                    }
                }
            }
        };
        let on_interrupt = match raw.on_interrupt.as_ref() {
            None => d.on_interrupt,
            Some(s) => match s.get_ref().as_str() {
                "resume" => OnInterrupt::Resume,
                "rollback" => OnInterrupt::Rollback,
                other => {
                    self.error(
                        s,
                        format!("unknown on_interrupt `{other}`"),
                        "use `resume` (finish the interrupted run) or `rollback` (undo it)",
                    );
                    d.on_interrupt
                }
            },
        };
        let steps = self.canary_steps(raw, strategy);
        DeploySettings {
            strategy,
            backup,
            on_interrupt,
            steps,
            scale_down_delay: ms(
                self,
                &raw.scale_down_delay_ms,
                d.scale_down_delay,
                "scale_down_delay_ms",
                (0, 86_400_000),
            ),
            poll_interval: ms(
                self,
                &raw.poll_interval_ms,
                d.poll_interval,
                "poll_interval_ms",
                (10, 600_000),
            ),
            timeout: ms(
                self,
                &raw.timeout_ms,
                d.timeout,
                "timeout_ms",
                (1, 86_400_000),
            ),
            lock_lease: ms(
                self,
                &raw.lock_lease_ms,
                d.lock_lease,
                "lock_lease_ms",
                (1_000, 3_600_000),
            ),
            watch: ms(self, &raw.watch_ms, d.watch, "watch_ms", (0, 86_400_000)),
        }
    }

    fn check(&mut self, raw: &raw::RawCheck) -> Option<CheckConfig> {
        let kinds = [raw.http.is_some(), raw.tcp.is_some(), raw.command.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.error(
                &raw.name,
                format!("check `{}` must have exactly one of `http`, `tcp` and `command`", raw.name.get_ref()),
                "for example `http = \"https://{url}/healthz\"`, `tcp = \"db:5432\"` or `command = \"./smoke-test\"`",
            );
            return None;
        }
        let http_only = [
            raw.expect_status.is_some(),
            raw.body_contains.is_some(),
            raw.json_pointer.is_some(),
            raw.json_equals.is_some(),
            raw.max_latency_ms.is_some(),
        ];
        if raw.http.is_none() && http_only.iter().any(|x| *x) {
            self.error(
                &raw.name,
                format!(
                    "check `{}` sets HTTP expectations but is not an `http` check",
                    raw.name.get_ref()
                ),
                "",
            );
        }
        let probe = if let Some(url) = &raw.http {
            let u = url.get_ref();
            if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("{url}")) {
                self.error(
                    url,
                    "an http check needs an http:// or https:// URL",
                    "`{url}` stands for the staged release's URL, e.g. `{url}/healthz`",
                );
            }
            if let Some(p) = &raw.json_pointer
                && !p.get_ref().is_empty()
                && !p.get_ref().starts_with('/')
            {
                self.error(
                    p,
                    "a JSON pointer starts with `/`",
                    "for example `/status` or `/checks/0/ok`",
                );
            }
            if let Some(s) = &raw.expect_status
                && !(100..=599).contains(s.get_ref())
            {
                self.error(s, "expect_status must be an HTTP status (100 to 599)", "");
            }
            Probe::Http {
                url: u.clone(),
                expect_status: raw.expect_status.as_ref().map(|s| *s.get_ref()),
                body_contains: raw.body_contains.clone(),
                json_pointer: raw.json_pointer.as_ref().map(|p| p.get_ref().clone()),
                json_equals: raw
                    .json_equals
                    .as_ref()
                    .and_then(|v| serde_json::to_value(v).ok()),
                max_latency: raw.max_latency_ms.map(Duration::from_millis),
            }
        } else if let Some(a) = &raw.tcp {
            if !a.get_ref().contains(':') {
                self.error(a, "a tcp check needs `host:port`", "");
            }
            Probe::Tcp {
                address: a.get_ref().clone(),
            }
        } else {
            let command = raw
                .command
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_default();
            Probe::Command { command }
        };
        let stage = match raw.stage.as_ref() {
            None => CheckStage::Verify,
            Some(s) => match s.get_ref().as_str() {
                "verify" => CheckStage::Verify,
                "watch" => CheckStage::Watch,
                other => {
                    self.error(
                        s,
                        format!("unknown check stage `{other}`"),
                        "use `verify` (before promotion) or `watch` (after)",
                    );
                    CheckStage::Verify
                }
            },
        };
        Some(CheckConfig {
            name: raw.name.get_ref().clone(),
            probe,
            stage,
            timeout: ms(
                self,
                &raw.timeout_ms,
                Duration::from_secs(10),
                "timeout_ms",
                (1, 600_000),
            ),
            retries: raw.retries.unwrap_or(0),
            interval: Duration::from_millis(raw.interval_ms.unwrap_or(1_000)),
        })
    }

    fn database(&mut self, env: &Spanned<String>, d: &raw::RawDatabase) -> Option<DatabaseConfig> {
        let Some(url_spanned) = &d.url else {
            self.error(
                env,
                format!(
                    "environment `{}` has a [database] without `url`",
                    env.get_ref()
                ),
                "add `url = \"sqlite:app.db\"` or `url = \"${env:DATABASE_URL}\"`",
            );
            return None;
        };
        let url = self.url(url_spanned);
        let migrations = self.base.join(
            d.migrations
                .as_ref()
                .map_or("migrations", |m| m.get_ref().as_str()),
        );
        if !migrations.is_dir() {
            let at = d
                .migrations
                .as_ref()
                .map_or(url_spanned.span(), |m| m.span());
            self.errors.push(
                ConfigError::at(
                    self.file,
                    self.text,
                    at,
                    format!(
                        "migrations directory {} does not exist",
                        migrations.display()
                    ),
                )
                .hint("create it, or set `migrations = \"path\"` (relative to this file)"),
            );
        }
        let lock_timeout = ms(
            self,
            &d.lock_timeout_ms,
            Duration::from_millis(2_000),
            "lock_timeout_ms",
            (1, 600_000),
        );
        let lock_wait = ms(
            self,
            &d.lock_wait_ms,
            Duration::from_millis(60_000),
            "lock_wait_ms",
            (1, 3_600_000),
        );
        let lock_retries = d.lock_retries.as_ref().map_or(5, |r| *r.get_ref());
        let rollback = match d.rollback.as_ref() {
            None => RollbackRestore::Swap,
            Some(r) => match r.get_ref().as_str() {
                "swap" => RollbackRestore::Swap,
                "in-place" => RollbackRestore::InPlace,
                other => {
                    self.error(
                        r,
                        format!("`rollback = \"{other}\"` is not a way to restore"),
                        "use `\"swap\"` (restore beside the live database, then switch; the default) or `\"in-place\"` (restore over it in one transaction)",
                    );
                    RollbackRestore::Swap
                }
            },
        };
        Some(DatabaseConfig {
            url,
            migrations,
            lock_timeout,
            lock_retries,
            lock_wait,
            rollback,
        })
    }

    /// A database URL: a secret reference, or a URL without a password.
    pub(super) fn url(&mut self, url_spanned: &Spanned<String>) -> UrlSource {
        let url_text = url_spanned.get_ref().trim();
        match SecretSource::parse(url_text) {
            Some(source) => UrlSource::Secret(SecretRef {
                source,
                site: Site::at(self.file, self.text, url_spanned.span()),
            }),
            None => {
                if crate::db::backend_of(url_text).is_none() {
                    self.error(url_spanned, format!("`{url_text}` is not a database URL"), "use `sqlite:path/to/app.db`, `postgres://user@host/db`, or a reference such as `${env:DATABASE_URL}`");
                }
                if crate::db::redact_url(url_text) != url_text {
                    self.error(url_spanned, "this URL contains a password", "keep the URL in the environment or a file: `url = \"${env:DATABASE_URL}\"`; secrets never go in agent.toml");
                }
                match url_text.strip_prefix("sqlite:") {
                    Some(path)
                        if !path.starts_with('/')
                            && !path.starts_with(':')
                            && !path.starts_with("//") =>
                    {
                        UrlSource::Plain(format!("sqlite:{}", self.base.join(path).display()))
                    }
                    _ => UrlSource::Plain(url_text.to_string()),
                }
            }
        }
    }

    fn backup(
        &mut self,
        env: &str,
        raw: Option<&Spanned<raw::RawBackup>>,
        state_dir: &Path,
    ) -> BackupConfig {
        let default_dir = state_dir.join("backups").join(env);
        let Some(raw) = raw.map(Spanned::get_ref) else {
            return BackupConfig {
                dir: default_dir,
                key: None,
                zstd_level: DEFAULT_ZSTD_LEVEL,
                zstd_workers: 0,
                retention: crate::db::backup::Retention {
                    keep_last: 10,
                    keep_daily: 7,
                    keep_weekly: 4,
                },
                offsite: None,
                objectives: super::Objectives::default(),
            };
        };
        let key = raw.key.as_ref().and_then(|k| match SecretSource::parse(k.get_ref()) {
            Some(source) => Some(SecretRef {
                source,
                site: Site::at(self.file, self.text, k.span()),
            }),
            None => {
                self.error(k, "the backup key must be a reference, not a value", "write `key = \"${file:/etc/deploy-agent/backup.key}\"` (32 bytes, hex or base64); secret values never go in agent.toml");
                None
            }
        });
        let zstd_level = match &raw.zstd_level {
            Some(l) if !(-7..=19).contains(l.get_ref()) => {
                self.error(
                    l,
                    "zstd_level must be between -7 and 19",
                    "negative levels are zstd's fast modes; 3 is zstd's default",
                );
                DEFAULT_ZSTD_LEVEL
            }
            Some(l) => *l.get_ref(),
            None => DEFAULT_ZSTD_LEVEL,
        };
        BackupConfig {
            dir: raw
                .dir
                .as_ref()
                .map_or(default_dir, |d| self.base.join(d.get_ref())),
            key,
            zstd_level,
            zstd_workers: raw.zstd_workers.unwrap_or(0),
            retention: crate::db::backup::Retention {
                keep_last: raw.keep_last.unwrap_or(10),
                keep_daily: raw.keep_daily.unwrap_or(7),
                keep_weekly: raw.keep_weekly.unwrap_or(4),
            },
            offsite: raw.offsite.as_ref().map(|o| o.get_ref().clone()),
            objectives: super::Objectives {
                rpo: self.objective(raw.rpo.as_ref(), "rpo"),
                rto: self.objective(raw.rto.as_ref(), "rto"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MERGES;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn a_long_extends_chain_is_resolved_in_one_merge_per_environment() {
        // e0 (strict) <- e1 <- ... <- e1999, declared newest first: each environment is
        // merged once onto its resolved parent, never by walking its whole chain again.
        let n = 2000;
        let mut text = String::new();
        for i in (1..n).rev() {
            text.push_str(&format!("[environments.e{i}]\nextends = \"e{}\"\n", i - 1));
        }
        text.push_str("[environments.e0]\nstrict = true\n");
        MERGES.with(|m| m.set(0));
        let config = Config::parse(Path::new("agent.toml"), &text).unwrap();
        assert_eq!(MERGES.with(std::cell::Cell::get), n - 1);
        let last = config.environment(&format!("e{}", n - 1)).unwrap();
        assert!(last.strict, "inherited down the whole chain");
    }

    #[test]
    fn every_environment_on_a_broken_chain_gets_its_error() {
        let text = "[environments.a]\nextends = \"b\"\n[environments.b]\nextends = \"c\"\n\
                    [environments.c]\nextends = \"b\"\n[environments.d]\nextends = \"a\"\n";
        let err = Config::parse(Path::new("agent.toml"), text)
            .unwrap_err()
            .to_string();
        for expected in [
            "`extends` makes a cycle: a -> b -> c -> b",
            "`extends` makes a cycle: b -> c -> b",
            "`extends` makes a cycle: c -> b -> c",
            "`extends` names `a`, whose own `extends` is broken",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
