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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    #[serde(default)]
    pub strict: bool,
    pub database: Option<Spanned<RawDatabase>>,
    pub backup: Option<Spanned<RawBackup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    pub dir: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub zstd_level: Option<Spanned<i32>>,
    pub zstd_workers: Option<u32>,
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub url: Spanned<String>,
    pub migrations: Option<Spanned<String>>,
    pub lock_timeout_ms: Option<Spanned<u64>>,
    pub lock_retries: Option<Spanned<u32>>,
    pub lock_wait_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub state_dir: Option<Spanned<String>>,
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
}
