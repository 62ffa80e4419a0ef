//! Short constructors for [`PluginError`], so plugins say what the host should do next.

use crate::{PluginError, Retryable};

/// A permanent failure: retrying will not help.
pub fn rejected(message: impl Into<String>) -> PluginError {
    PluginError::Rejected(message.into())
}

/// A transient failure; `retry_after_ms` when the platform said how long to wait.
pub fn retryable(message: impl Into<String>, retry_after_ms: Option<u64>) -> PluginError {
    PluginError::Retryable(Retryable {
        message: message.into(),
        retry_after_ms,
    })
}

/// Credentials missing, wrong or lacking a permission.
pub fn unauthorized(message: impl Into<String>) -> PluginError {
    PluginError::Unauthorized(message.into())
}

/// The plugin's configuration in agent.toml is wrong.
pub fn invalid_config(message: impl Into<String>) -> PluginError {
    PluginError::InvalidConfig(message.into())
}
