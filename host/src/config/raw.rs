//! The shape of agent.toml as written, with spans kept for error messages.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub plugins: BTreeMap<Spanned<String>, Spanned<RawPlugin>>,
    #[serde(default)]
    pub environments: BTreeMap<Spanned<String>, Spanned<RawEnvironment>>,
    pub server: Option<Spanned<RawServer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub grace_period_ms: Option<Spanned<u64>>,
    pub host_name: Option<Spanned<String>>,
    pub heartbeat_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub tokens: Vec<Spanned<RawToken>>,
    pub github: Option<Spanned<RawGithub>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub name: Spanned<String>,
    pub sha256: Spanned<String>,
    pub role: Spanned<String>,
    pub environments: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGithub {
    pub secret: Spanned<String>,
    pub replay_window_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub repository: Spanned<String>,
    pub branch: Spanned<String>,
    pub environment: Spanned<String>,
    pub artifact: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub extends: Option<Spanned<String>>,
    pub strict: Option<bool>,
    pub target: Option<Spanned<RawTarget>>,
    pub artifact: Option<Spanned<RawArtifact>>,
    pub validate: Option<Spanned<RawValidate>>,
    pub database: Option<Spanned<RawDatabase>>,
    pub backup: Option<Spanned<RawBackup>>,
    pub deploy: Option<Spanned<RawDeploy>>,
    pub checks: Option<Vec<Spanned<RawCheck>>>,
    pub notifiers: Option<Vec<Spanned<String>>>,
    pub rollback: Option<Spanned<RawRollback>>,
    pub approval: Option<Spanned<RawApproval>>,
    pub analysis: Option<Vec<Spanned<RawAnalysis>>>,
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub rollout: Option<Spanned<RawRollout>>,
    pub schedule: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub batch: Option<Spanned<RawBatch>>,
    pub wait_ms: Option<Spanned<u64>>,
    pub max_failures: Option<u64>,
    pub on_failure: Option<Spanned<String>>,
}

/// `batch = 1` or `batch = "33%"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawBatch {
    Hosts(u64),
    Percent(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollback {
    pub policy: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    pub required: Option<bool>,
    pub before: Option<Spanned<String>>,
    pub expires_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysis {
    pub name: Spanned<String>,
    pub prometheus: Spanned<String>,
    pub query: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub interval_ms: Option<Spanned<u64>>,
    pub count: Option<u32>,
    pub failure_limit: Option<u32>,
    pub consecutive_success_limit: Option<u32>,
    pub inconclusive_limit: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub plugin: Option<Spanned<String>>,
    pub config: Option<toml::Table>,
    pub per_host: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArtifact {
    pub path: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
    pub roots: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValidate {
    pub plugins: Option<Vec<Spanned<String>>>,
    pub required_env: Option<Vec<Spanned<String>>>,
    pub min_secret_length: Option<Spanned<usize>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    pub strategy: Option<Spanned<String>>,
    pub backup: Option<Spanned<String>>,
    pub poll_interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub lock_lease_ms: Option<Spanned<u64>>,
    pub watch_ms: Option<Spanned<u64>>,
    pub on_interrupt: Option<Spanned<String>>,
    pub steps: Option<Spanned<Vec<Spanned<RawStep>>>>,
    pub scale_down_delay_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub weight: Spanned<i64>,
    pub pause_ms: Option<Spanned<u64>>,
    pub pause: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub name: Spanned<String>,
    pub http: Option<Spanned<String>>,
    pub tcp: Option<Spanned<String>>,
    pub command: Option<Spanned<String>>,
    pub stage: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<u16>>,
    pub body_contains: Option<String>,
    pub json_pointer: Option<Spanned<String>>,
    pub json_equals: Option<toml::Value>,
    pub max_latency_ms: Option<u64>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub retries: Option<u32>,
    pub interval_ms: Option<u64>,
}

/// `extends`: a child's settings win, field by field, section by section.
pub(super) trait Merge {
    fn merge(&mut self, parent: &Self);
}

fn take<T: Clone>(child: &mut Option<T>, parent: &Option<T>) {
    if child.is_none() {
        child.clone_from(parent);
    }
}

fn nested<T: Merge + Clone>(child: &mut Option<Spanned<T>>, parent: &Option<Spanned<T>>) {
    match (child.as_mut(), parent) {
        (Some(c), Some(p)) => c.get_mut().merge(p.get_ref()),
        (None, Some(_)) => child.clone_from(parent),
        _ => {}
    }
}

impl Merge for RawEnvironment {
    fn merge(&mut self, p: &Self) {
        take(&mut self.strict, &p.strict);
        nested(&mut self.target, &p.target);
        nested(&mut self.artifact, &p.artifact);
        nested(&mut self.validate, &p.validate);
        nested(&mut self.database, &p.database);
        nested(&mut self.backup, &p.backup);
        nested(&mut self.deploy, &p.deploy);
        take(&mut self.checks, &p.checks);
        take(&mut self.notifiers, &p.notifiers);
        nested(&mut self.rollback, &p.rollback);
        nested(&mut self.approval, &p.approval);
        take(&mut self.analysis, &p.analysis);
        take(&mut self.hosts, &p.hosts);
        nested(&mut self.rollout, &p.rollout);
        // Job by job: a child's own times win, the parent's other jobs are inherited.
        if let Some(parent) = &p.schedule {
            let child = self.schedule.get_or_insert_with(BTreeMap::new);
            for (k, v) in parent {
                if !child.keys().any(|c| c.get_ref() == k.get_ref()) {
                    child.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

impl Merge for RawRollout {
    fn merge(&mut self, p: &Self) {
        take(&mut self.batch, &p.batch);
        take(&mut self.wait_ms, &p.wait_ms);
        take(&mut self.max_failures, &p.max_failures);
        take(&mut self.on_failure, &p.on_failure);
    }
}

impl Merge for RawRollback {
    fn merge(&mut self, p: &Self) {
        take(&mut self.policy, &p.policy);
    }
}

impl Merge for RawApproval {
    fn merge(&mut self, p: &Self) {
        take(&mut self.required, &p.required);
        take(&mut self.before, &p.before);
        take(&mut self.expires_ms, &p.expires_ms);
    }
}

impl Merge for RawTarget {
    fn merge(&mut self, p: &Self) {
        let same_plugin = match (&self.plugin, &p.plugin) {
            (Some(c), Some(pp)) => c.get_ref() == pp.get_ref(),
            _ => true,
        };
        take(&mut self.plugin, &p.plugin);
        take(&mut self.per_host, &p.per_host);
        // Config is the parent's, overridden key by key, unless the plugin changed.
        if same_plugin && let Some(parent) = &p.config {
            let mut merged = parent.clone();
            merged.extend(self.config.take().unwrap_or_default());
            self.config = Some(merged);
        }
    }
}

impl Merge for RawArtifact {
    fn merge(&mut self, p: &Self) {
        take(&mut self.path, &p.path);
        take(&mut self.sha256, &p.sha256);
        take(&mut self.roots, &p.roots);
    }
}

impl Merge for RawValidate {
    fn merge(&mut self, p: &Self) {
        take(&mut self.plugins, &p.plugins);
        take(&mut self.required_env, &p.required_env);
        take(&mut self.min_secret_length, &p.min_secret_length);
    }
}

impl Merge for RawDeploy {
    fn merge(&mut self, p: &Self) {
        take(&mut self.strategy, &p.strategy);
        take(&mut self.backup, &p.backup);
        take(&mut self.poll_interval_ms, &p.poll_interval_ms);
        take(&mut self.timeout_ms, &p.timeout_ms);
        take(&mut self.lock_lease_ms, &p.lock_lease_ms);
        take(&mut self.watch_ms, &p.watch_ms);
        take(&mut self.on_interrupt, &p.on_interrupt);
        take(&mut self.steps, &p.steps);
        take(&mut self.scale_down_delay_ms, &p.scale_down_delay_ms);
    }
}

impl Merge for RawDatabase {
    fn merge(&mut self, p: &Self) {
        take(&mut self.url, &p.url);
        take(&mut self.migrations, &p.migrations);
        take(&mut self.lock_timeout_ms, &p.lock_timeout_ms);
        take(&mut self.lock_retries, &p.lock_retries);
        take(&mut self.lock_wait_ms, &p.lock_wait_ms);
        take(&mut self.rollback, &p.rollback);
    }
}

impl Merge for RawBackup {
    fn merge(&mut self, p: &Self) {
        take(&mut self.dir, &p.dir);
        take(&mut self.key, &p.key);
        take(&mut self.zstd_level, &p.zstd_level);
        take(&mut self.zstd_workers, &p.zstd_workers);
        take(&mut self.keep_last, &p.keep_last);
        take(&mut self.keep_daily, &p.keep_daily);
        take(&mut self.keep_weekly, &p.keep_weekly);
        take(&mut self.offsite, &p.offsite);
        take(&mut self.rpo, &p.rpo);
        take(&mut self.rto, &p.rto);
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    pub dir: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub zstd_level: Option<Spanned<i32>>,
    pub zstd_workers: Option<u32>,
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub offsite: Option<Spanned<String>>,
    pub rpo: Option<Spanned<String>>,
    pub rto: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub url: Option<Spanned<String>>,
    pub migrations: Option<Spanned<String>>,
    pub lock_timeout_ms: Option<Spanned<u64>>,
    pub lock_retries: Option<Spanned<u32>>,
    pub lock_wait_ms: Option<Spanned<u64>>,
    pub rollback: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub state_dir: Option<Spanned<String>>,
    pub state_url: Option<Spanned<String>>,
    pub time_zone: Option<Spanned<String>>,
    pub state_backup: Option<Spanned<RawStateBackup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStateBackup {
    pub key: Spanned<String>,
    pub dir: Option<Spanned<String>>,
    pub offsite: Option<Spanned<String>>,
    pub schedule: Option<Spanned<String>>,
    pub keep_last: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub path: Spanned<String>,
    pub sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub secrets: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
    #[serde(default)]
    pub config: toml::Table,
    pub notify: Option<Spanned<RawNotify>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub events: Option<Vec<Spanned<String>>>,
    pub min_severity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_ip_ranges: Vec<Spanned<String>>,
    #[serde(default)]
    pub dirs: Vec<Spanned<RawDir>>,
    pub memory_mb: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub max_response_bytes: Option<Spanned<u64>>,
    pub max_return_bytes: Option<Spanned<u64>>,
    pub max_requests: Option<Spanned<u32>>,
    #[serde(default)]
    pub tls_ca: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDir {
    pub path: Spanned<String>,
    pub guest: Spanned<String>,
    #[serde(default)]
    pub rw: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub from: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    pub sigv4: Option<Spanned<RawSigv4>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigv4 {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}
