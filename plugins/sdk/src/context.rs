//! The call context: environment, the plugin's settings, and its secrets by reference.

use serde::de::DeserializeOwned;

pub use crate::bindings::deploy_agent::plugin::secrets::WebhookScheme;
use crate::bindings::deploy_agent::plugin::secrets::{self, SecretError, SignError};
use crate::{CallContext, PluginError, invalid_config, rejected};

/// What the host told the plugin about this call.
#[derive(Debug, Clone)]
pub struct Context {
    /// The environment being deployed.
    pub environment: String,
    /// The deployment run, empty outside a run.
    pub deployment_id: String,
    config: serde_json::Value,
    secrets: Vec<String>,
}

impl Context {
    /// Builds the context from what the host passed (used by [`crate::export!`]).
    pub fn from_call(call: CallContext) -> Result<Self, PluginError> {
        let config = if call.config.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&call.config).map_err(|e| {
                invalid_config(format!("the host passed config that is not JSON: {e}"))
            })?
        };
        Ok(Context {
            environment: call.environment,
            deployment_id: call.deployment_id,
            config,
            secrets: call.secrets,
        })
    }

    /// The whole `[plugins.NAME.config]` table, deserialized into `T`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_value(self.config.clone()).map_err(|e| invalid_config(e.to_string()))
    }

    /// One required setting.
    pub fn setting<T: DeserializeOwned>(&self, key: &str) -> Result<T, PluginError> {
        match self.config.get(key) {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| invalid_config(format!("setting `{key}`: {e}"))),
            None => Err(invalid_config(format!("missing setting `{key}`"))),
        }
    }

    /// One optional setting.
    pub fn optional_setting<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, PluginError> {
        match self.config.get(key) {
            Some(serde_json::Value::Null) | None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| invalid_config(format!("setting `{key}`: {e}"))),
        }
    }

    /// Whether the plugin was granted a secret of this name.
    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == name)
    }

    /// A reference to a granted secret. Put it where the value belongs in a request
    /// (a header value, or the URL's path or query); the host substitutes the value only in
    /// requests to the hosts the secret is bound to.
    pub fn secret(&self, name: &str) -> Result<SecretRef, PluginError> {
        let placeholder = secrets::placeholder(name).map_err(secret_error)?;
        Ok(SecretRef {
            name: name.to_string(),
            placeholder,
        })
    }
}

/// A secret by reference. Its `Display` is the placeholder, never the value.
#[derive(Debug, Clone)]
pub struct SecretRef {
    name: String,
    placeholder: String,
}

impl SecretRef {
    /// The secret's name in agent.toml.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Bearer <secret>`, for an `Authorization` header.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.placeholder)
    }

    /// The signature of a webhook `payload` with this secret, as `scheme` defines it, ready
    /// for its header (`sha256=…`, `v0=…`). The host builds the signed message, so the
    /// result is only ever that signature. `timestamp` (Unix seconds) is for schemes that
    /// sign one, and must be near the host's clock.
    pub fn webhook_signature(
        &self,
        scheme: WebhookScheme,
        timestamp: u64,
        payload: &[u8],
    ) -> Result<String, PluginError> {
        secrets::webhook_signature(&self.name, scheme, timestamp, payload).map_err(|e| match e {
            SignError::NotGranted(name) => secret_error(SecretError::NotGranted(name)),
            SignError::Unavailable(m) => secret_error(SecretError::Unavailable(m)),
            SignError::Refused(m) => rejected(m),
        })
    }

    /// The AWS SigV4 signature (hex) of `string_to_sign` for `date` (`yyyymmdd`), `region` and
    /// `service`, with this secret as the secret access key. The host derives the key.
    pub fn sigv4_signature(
        &self,
        date: &str,
        region: &str,
        service: &str,
        string_to_sign: &str,
    ) -> Result<String, PluginError> {
        secrets::sigv4_signature(&self.name, date, region, service, string_to_sign)
            .map_err(secret_error)
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.placeholder)
    }
}

fn secret_error(e: SecretError) -> PluginError {
    match e {
        SecretError::NotGranted(name) => invalid_config(format!(
            "secret `{name}` is not granted to this plugin; add it under [plugins.<name>.secrets] in agent.toml"
        )),
        SecretError::Unavailable(m) => rejected(format!("secret unavailable: {m}")),
    }
}
