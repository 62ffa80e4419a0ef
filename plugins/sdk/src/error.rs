//! Short constructors for [`PluginError`], so plugins say what the host should do next.

use crate::{Finding, PluginError, Retryable, Severity};

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

/// A validator's finding: how serious, a stable code, what was found, and how to fix it.
pub fn finding(
    severity: Severity,
    code: &str,
    message: impl Into<String>,
    hint: Option<&str>,
) -> Finding {
    Finding {
        severity,
        code: code.into(),
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}
