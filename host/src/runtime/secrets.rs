//! Secrets by reference. A plugin names a secret and receives a placeholder; the host puts
//! the value in only where agent.toml binds it, and redacts it from anything a plugin returns.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

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
}

/// The secrets granted to one plugin, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    by_name: BTreeMap<String, Secret>,
}

/// Whether a secret name is usable in a placeholder: ASCII letters, digits and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Secrets {
    /// Grants a secret.
    pub fn insert(&mut self, name: String, secret: Secret) {
        self.by_name.insert(name, secret);
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

    /// HMAC-SHA256 of `data` keyed by `prefix` + the secret's value.
    pub fn hmac_sha256(&self, name: &str, prefix: &str, data: &[u8]) -> Option<Vec<u8>> {
        let secret = self.by_name.get(name)?;
        let mut key = Vec::with_capacity(prefix.len() + secret.value.0.len());
        key.extend_from_slice(prefix.as_bytes());
        key.extend_from_slice(secret.value.0.as_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
        mac.update(data);
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// An AWS Signature Version 4 signature (lowercase hex) of `string_to_sign`: the signing
    /// key is derived here from the secret `name` (`AWS4` + secret → date → region → service →
    /// `aws4_request`), so neither the secret nor a derived key leaves the host.
    pub fn sigv4_signature(
        &self,
        name: &str,
        date: &str,
        region: &str,
        service: &str,
        string_to_sign: &str,
    ) -> Option<String> {
        let step = |key: &[u8], data: &str| -> Option<Vec<u8>> {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
            mac.update(data.as_bytes());
            Some(mac.finalize().into_bytes().to_vec())
        };
        let k_date = self.hmac_sha256(name, "AWS4", date.as_bytes())?;
        let k_region = step(&k_date, region)?;
        let k_service = step(&k_region, service)?;
        let k_signing = step(&k_service, "aws4_request")?;
        Some(hex::encode(step(&k_signing, string_to_sign)?))
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

    /// `text` with every secret value replaced by `[redacted:NAME]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, secret) in &self.by_name {
            let value = secret.value.expose();
            if !value.is_empty() && out.contains(value) {
                out = out.replace(value, &format!("[redacted:{name}]"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        let mut s = Secrets::default();
        s.insert(
            "token".into(),
            Secret {
                value: SecretValue::new("s3cr3t-value".into()),
                hosts: vec![HostPattern::parse("api.example.com").unwrap()],
            },
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
        assert_eq!(format!("{:?}", SecretValue::new("x".into())), "[redacted]");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mut s = Secrets::default();
        s.insert(
            "k".into(),
            Secret {
                value: SecretValue::new("Jefe".into()),
                hosts: vec![],
            },
        );
        let mac = s
            .hmac_sha256("k", "", b"what do ya want for nothing?")
            .unwrap();
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The AWS SigV4 test suite's `get-vanilla` case (secret, scope and string to sign from
    /// the suite; the signature is the suite's expected one).
    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        let mut s = Secrets::default();
        s.insert(
            "aws".into(),
            Secret {
                value: SecretValue::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
                hosts: vec![],
            },
        );
        let sts = "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63";
        assert_eq!(
            s.sigv4_signature("aws", "20150830", "us-east-1", "service", sts)
                .as_deref(),
            Some("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        assert_eq!(
            s.sigv4_signature("nope", "20150830", "us-east-1", "service", sts),
            None
        );
    }
}
