//! Errors of the plugin runtime: loading a plugin, and calling it.
//!
//! Each failure mode of a call is its own variant, worded for the operator: a trap, a timeout,
//! a memory cap, a policy refusal, an oversized return and an error the plugin itself returned.

use std::path::PathBuf;

use super::bindings::PluginError;
use super::policy::PolicyViolation;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The `.wasm` file could not be read.
    #[error("cannot read plugin `{plugin}` from {path}: {source}")]
    Read {
        /// The plugin's name in agent.toml.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's sha256 is not the one pinned in agent.toml.
    #[error(
        "refusing to load plugin `{plugin}` from {path}: its sha256 is {actual}, but agent.toml pins {expected}\n  hint: if you rebuilt or upgraded the plugin on purpose, set `sha256 = \"{actual}\"` under [plugins.{plugin}]"
    )]
    DigestMismatch {
        /// The plugin's name in agent.toml.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file is not a WebAssembly component this engine can compile.
    #[error("plugin `{plugin}` ({path}) is not a valid WebAssembly component: {reason}")]
    Compile {
        /// The plugin's name in agent.toml.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// What the compiler said.
        reason: String,
    },
    /// The component imports something the host does not provide, or exports none of our interfaces.
    #[error("plugin `{plugin}` cannot be linked: {reason}")]
    Link {
        /// The plugin's name in agent.toml.
        plugin: String,
        /// What is missing.
        reason: String,
    },
    /// A granted secret or directory could not be prepared.
    #[error("plugin `{plugin}`: {reason}")]
    Grant {
        /// The plugin's name in agent.toml.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why a call into a plugin failed. None of these takes the agent down.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline (a loop, a hung server, a dripping response).
    #[error("plugin `{plugin}` timed out in {op} after {limit_ms} ms (its per-call deadline)")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The function called.
        op: &'static str,
        /// The deadline.
        limit_ms: u64,
    },
    /// The plugin tried to use more memory than granted.
    #[error(
        "plugin `{plugin}` exceeded its memory limit in {op}: it tried to grow to {wanted_mib} MiB, the limit is {limit_mib} MiB"
    )]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// The function called.
        op: &'static str,
        /// The cap.
        limit_mib: u64,
        /// What it asked for.
        wanted_mib: u64,
    },
    /// The plugin trapped: a panic, a stack overflow, an out-of-bounds access.
    #[error("plugin `{plugin}` crashed in {op}: {reason}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The function called.
        op: &'static str,
        /// What happened (the trap's first line).
        reason: String,
    },
    /// The plugin tried something its sandbox policy refuses.
    #[error("plugin `{plugin}` was refused by its sandbox policy in {op}: {violation}")]
    Policy {
        /// The plugin.
        plugin: String,
        /// The function called.
        op: &'static str,
        /// The first refusal.
        violation: PolicyViolation,
    },
    /// The plugin returned more data than the return cap allows.
    #[error(
        "plugin `{plugin}` returned {size} bytes from {op}, more than its limit of {limit} bytes"
    )]
    ReturnTooLarge {
        /// The plugin.
        plugin: String,
        /// The function called.
        op: &'static str,
        /// What it returned.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The plugin ran and reported an error.
    #[error("plugin `{plugin}` failed in {op}: {}", describe(.error))]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The function called.
        op: &'static str,
        /// What it said, with secret values redacted.
        error: PluginError,
    },
    /// The plugin does not export the interface asked for.
    #[error("plugin `{plugin}` is not a {interface} (it does not export that interface)")]
    NotExported {
        /// The plugin.
        plugin: String,
        /// The interface.
        interface: &'static str,
    },
    /// A fresh instance could not be created.
    #[error("cannot start plugin `{plugin}`: {reason}")]
    Instantiate {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
}

impl CallError {
    /// A short class name, for metrics: `timeout`, `memory`, `trap`, `policy`, `too-large`,
    /// `retryable`, `rejected`, `unauthorized`, `invalid-config`, `other`, `not-exported`.
    pub fn class(&self) -> &'static str {
        match self {
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimit { .. } => "memory",
            CallError::Trap { .. } => "trap",
            CallError::Policy { .. } => "policy",
            CallError::ReturnTooLarge { .. } => "too-large",
            CallError::NotExported { .. } => "not-exported",
            CallError::Instantiate { .. } => "instantiate",
            CallError::Plugin { error, .. } => match error {
                PluginError::Retryable(_) => "retryable",
                PluginError::Rejected(_) => "rejected",
                PluginError::Unauthorized(_) => "unauthorized",
                PluginError::InvalidConfig(_) => "invalid-config",
                PluginError::Other(_) => "other",
            },
        }
    }

    /// The texts in it that came from the plugin (for redaction and cutting).
    pub(crate) fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            CallError::Trap { reason, .. } => vec![reason],
            CallError::Plugin { error, .. } => match error {
                PluginError::Retryable(r) => vec![&mut r.message],
                PluginError::Rejected(m)
                | PluginError::Unauthorized(m)
                | PluginError::InvalidConfig(m)
                | PluginError::Other(m) => vec![m],
            },
            _ => Vec::new(),
        }
    }

    /// Whether the host should back off and retry, and after how long (when the plugin said).
    pub fn retry_after(&self) -> Option<Option<u64>> {
        match self {
            CallError::Plugin {
                error: PluginError::Retryable(r),
                ..
            } => Some(r.retry_after_ms),
            CallError::Timeout { .. } => Some(None),
            _ => None,
        }
    }
}

/// A plugin error in words.
pub fn describe(error: &PluginError) -> String {
    match error {
        PluginError::Retryable(r) => match r.retry_after_ms {
            Some(ms) => format!("{} (retryable after {ms} ms)", r.message),
            None => format!("{} (retryable)", r.message),
        },
        PluginError::Rejected(m) => format!("{m} (rejected)"),
        PluginError::Unauthorized(m) => {
            format!("{m} (unauthorized: check the plugin's credentials)")
        }
        PluginError::InvalidConfig(m) => {
            format!("{m} (invalid config: fix the plugin's [plugins.NAME.config] in agent.toml)")
        }
        PluginError::Other(m) => m.clone(),
    }
}
