//! Secrets by reference. A plugin names a secret and receives a placeholder; the host puts
//! the value in only where agent.toml binds it, and redacts it from anything a plugin returns.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use super::forms::Forms;
use super::policy::{HostPattern, PolicyViolation};

const PREFIX: &str = "__secret__";
const SUFFIX: &str = "__";

/// A secret's value. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a resolved value.
    pub fn new(value: String) -> Self {
        SecretValue(value)
    }

    /// The value itself, for the few places that put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One granted secret and the hosts it may be sent to.
#[derive(Debug, Clone)]
pub struct Secret {
    /// The value.
    pub value: SecretValue,
    /// Hosts a request may carry it to.
    pub hosts: Vec<HostPattern>,
    /// For an AWS secret access key: the services and regions it may sign for. Such a secret
    /// is only ever used by `sigv4-signature`.
    pub sigv4: Option<Sigv4Scope>,
}

impl Secret {
    /// A secret that may be sent to `hosts`.
    pub fn new(value: SecretValue, hosts: Vec<HostPattern>) -> Self {
        Secret {
            value,
            hosts,
            sigv4: None,
        }
    }
}

/// The AWS services and regions a SigV4 secret may sign for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sigv4Scope {
    /// Services, e.g. `s3`.
    pub services: Vec<String>,
    /// Regions, e.g. `eu-west-1`.
    pub regions: Vec<String>,
}

/// The secrets granted to one plugin, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    by_name: BTreeMap<String, Secret>,
    /// Every form of every value, compiled on first use.
    forms: OnceLock<Arc<Forms>>,
}

/// Whether a secret name is usable in a placeholder: ASCII letters, digits and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Secrets {
    /// Grants a secret.
    pub fn insert(&mut self, name: String, secret: Secret) {
        self.by_name.insert(name, secret);
        self.forms = OnceLock::new();
    }

    /// The secret `name`, if granted.
    pub(crate) fn get(&self, name: &str) -> Option<&Secret> {
        self.by_name.get(name)
    }

    /// Every form (raw and encoded) of every value: what responses are scrubbed of, requests
    /// are refused for and redaction removes.
    pub(crate) fn forms(&self) -> Arc<Forms> {
        self.forms
            .get_or_init(|| {
                Arc::new(Forms::new(
                    self.by_name
                        .iter()
                        .map(|(n, s)| (n.as_str(), s.value.expose().as_bytes())),
                ))
            })
            .clone()
    }

    /// Whether any secret may be sent to `host:port` (its responses may reflect it). A SigV4
    /// secret is never sent, only signed with, so it cannot come back.
    pub(crate) fn any_bound(&self, host: &str, port: u16) -> bool {
        self.by_name
            .values()
            .filter(|s| s.sigv4.is_none())
            .any(|s| s.hosts.iter().any(|p| p.matches(host, port)))
    }

    /// What secret `index` of [`Secrets::forms`] is replaced by in a scrubbed response: its
    /// placeholder, so the plugin reads back what it sent.
    pub(crate) fn placeholders(&self) -> Vec<Vec<u8>> {
        self.by_name
            .keys()
            .map(|n| format!("{PREFIX}{n}{SUFFIX}").into_bytes())
            .collect()
    }

    /// A refusal if `text` (a request's URL, a header, a stretch of its body) carries a form
    /// of any secret's value: a plugin never holds a value, so one on its way out was
    /// extracted somehow.
    pub(crate) fn refuse_values(&self, text: &[u8], host: &str) -> Result<(), PolicyViolation> {
        match self.forms().first(text) {
            None => Ok(()),
            Some(hit) => Err(PolicyViolation::SecretValueInRequest {
                secret: self.forms().name(hit.secret).to_string(),
                host: host.to_string(),
            }),
        }
    }

    /// The granted names.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// The placeholder for a granted secret.
    pub fn placeholder(&self, name: &str) -> Option<String> {
        self.by_name
            .contains_key(name)
            .then(|| format!("{PREFIX}{name}{SUFFIX}"))
    }

    /// Replaces every placeholder in `text` with its value, if each named secret is bound to
    /// `host:port`. `Ok(None)` when there is no placeholder.
    pub fn substitute(
        &self,
        text: &str,
        host: &str,
        port: u16,
    ) -> Result<Option<String>, PolicyViolation> {
        // Placeholders are ASCII and values are text: the result is text again.
        Ok(self
            .substitute_bytes(text.as_bytes(), host, port)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// [`Secrets::substitute`] over bytes: header values need not be text.
    pub fn substitute_bytes(
        &self,
        text: &[u8],
        host: &str,
        port: u16,
    ) -> Result<Option<Vec<u8>>, PolicyViolation> {
        let prefix = PREFIX.as_bytes();
        // On the path of every request body: a vectorised search, not a byte-by-byte one.
        let find = |hay: &[u8]| memchr::memmem::find(hay, prefix);
        if find(text).is_none() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = find(rest) {
            out.extend_from_slice(&rest[..start]);
            let after = &rest[start + prefix.len()..];
            let name_len = after
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'-'))
                .unwrap_or(after.len());
            let name = String::from_utf8_lossy(&after[..name_len]);
            if name.is_empty() || !after[name_len..].starts_with(SUFFIX.as_bytes()) {
                // Not a placeholder after all; keep the text as it is.
                out.extend_from_slice(prefix);
                rest = after;
                continue;
            }
            let secret = self.bound(&name, host, port)?;
            out.extend_from_slice(secret.value.expose().as_bytes());
            rest = &after[name_len + SUFFIX.len()..];
        }
        out.extend_from_slice(rest);
        Ok(Some(out))
    }

    /// The longest placeholder of a granted secret, in bytes: how much of a stream must be
    /// kept back so that no placeholder can hide across a chunk boundary.
    pub fn longest_placeholder(&self) -> usize {
        let longest = self.by_name.keys().map(String::len).max().unwrap_or(0);
        PREFIX.len() + longest.max(64) + SUFFIX.len()
    }

    /// The secret `name`, if it is granted and bound to `host:port`.
    fn bound(&self, name: &str, host: &str, port: u16) -> Result<&Secret, PolicyViolation> {
        let secret = self
            .by_name
            .get(name)
            .ok_or_else(|| PolicyViolation::SecretNotGranted {
                secret: name.to_string(),
            })?;
        if secret.sigv4.is_some() {
            return Err(PolicyViolation::SigningRefused {
                secret: name.to_string(),
                reason: "a SigV4 secret is never sent, only signed with (sigv4-signature)".into(),
            });
        }
        if !secret.hosts.iter().any(|p| p.matches(host, port)) {
            return Err(PolicyViolation::SecretNotBound {
                secret: name.to_string(),
                host: format!("{host}:{port}"),
                bound: if secret.hosts.is_empty() {
                    "no host".to_string()
                } else {
                    secret
                        .hosts
                        .iter()
                        .map(|h| format!("`{h}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        Ok(secret)
    }

    /// `text` with every secret value, and every encoding of one, replaced by
    /// `[redacted:NAME]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        self.redact_joined(&mut [&mut out]);
        out
    }

    /// Redacts `fragments` as one text (one call's whole output), so a value split across
    /// two of them is found too.
    pub(crate) fn redact_joined(&self, fragments: &mut [&mut String]) {
        if !self.by_name.is_empty() {
            super::forms::redact_joined(&self.forms(), fragments);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        let mut s = Secrets::default();
        s.insert(
            "token".into(),
            Secret::new(
                SecretValue::new("s3cr3t-value".into()),
                vec![HostPattern::parse("api.example.com").unwrap()],
            ),
        );
        s
    }

    #[test]
    fn substitutes_only_for_bound_hosts() {
        let s = secrets();
        let p = s.placeholder("token").unwrap();
        let header = format!("Bearer {p}");
        assert_eq!(
            s.substitute(&header, "api.example.com", 443)
                .unwrap()
                .as_deref(),
            Some("Bearer s3cr3t-value")
        );
        let err = s.substitute(&header, "evil.example.net", 443).unwrap_err();
        assert!(matches!(err, PolicyViolation::SecretNotBound { .. }));
        assert!(!err.to_string().contains("s3cr3t-value"));
        assert_eq!(
            s.substitute("plain", "evil.example.net", 443).unwrap(),
            None
        );
        assert!(matches!(
            s.substitute("__secret__other__", "api.example.com", 443),
            Err(PolicyViolation::SecretNotGranted { .. })
        ));
        assert!(s.placeholder("other").is_none());
    }

    #[test]
    fn leaves_look_alikes_alone_and_redacts_values() {
        let s = secrets();
        assert_eq!(
            s.substitute("__secret__ x __secret__token", "api.example.com", 1)
                .unwrap(),
            Some("__secret__ x __secret__token".into())
        );
        assert_eq!(
            s.redact("echo: Bearer s3cr3t-value!"),
            "echo: Bearer [redacted:token]!"
        );
        assert_eq!(
            s.redact(&format!("b64 {}", hex::encode("s3cr3t-value"))),
            "b64 [redacted:token]"
        );
        assert_eq!(format!("{:?}", SecretValue::new("x".into())), "[redacted]");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
