//! Bearer tokens: declared in agent.toml by their SHA-256, each with a role and optionally a
//! set of environments.
//!
//! The presented token is hashed and compared with every declared hash in constant time, all
//! of them every time, so neither a match's position nor a near miss shows in the timing.
//! Tokens are 256 random bits (`deploy-agent token new`), so one SHA-256 is the right
//! storage: there is nothing to brute-force that a slow password hash would protect.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{Role, TokenConfig};

/// Who is calling: the declared token the request presented.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    token: &'a TokenConfig,
}

impl<'a> Caller<'a> {
    /// The caller a declared token is (a console session's).
    pub fn of(token: &'a TokenConfig) -> Caller<'a> {
        Caller { token }
    }

    /// The token's name.
    pub fn name(&self) -> &'a str {
        &self.token.name
    }

    /// The declared token it is.
    pub fn token(&self) -> &'a TokenConfig {
        self.token
    }

    /// The audit log's actor.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token.name)
    }

    /// Refuses a caller whose role does not allow `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.token.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// Refuses a caller who may not act on `environment` (or whose role does not allow it).
    pub fn require_env(&self, needed: Role, environment: &str) -> Result<(), ApiError> {
        self.require(needed)?;
        if self.covers(environment) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// Whether it covers `environment`.
    pub fn covers(&self, environment: &str) -> bool {
        self.token.covers(environment)
    }

    /// Whether it is limited to some environments.
    pub fn limited(&self) -> bool {
        self.token.environments.is_some()
    }
}

/// The SHA-256 of a token, as agent.toml records it.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token: `dat_` and 256 random bits, hex.
pub fn new_token() -> String {
    format!("dat_{}", crate::random::hex(32))
}

/// Authenticates a request: `Authorization: Bearer TOKEN` against the declared tokens.
pub fn authenticate<'a>(
    tokens: &'a [TokenConfig],
    headers: &HeaderMap,
) -> Result<Caller<'a>, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    authenticate_token(tokens, presented).inspect_err(|_| {
        tracing::warn!("API call with an unknown token refused");
    })
}

/// Authenticates a presented token (a bearer header's, or the console's sign-in form's)
/// against the declared tokens: its declared entry, or `unauthorized`.
pub fn authenticate_token<'a>(
    tokens: &'a [TokenConfig],
    presented: &str,
) -> Result<Caller<'a>, ApiError> {
    let presented = presented.trim();
    if presented.is_empty() {
        return Err(ApiError::unauthorized());
    }
    let digest = hash(presented);
    let mut found: Option<&TokenConfig> = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&digest)) {
            found = Some(t);
        }
    }
    found
        .map(|token| Caller { token })
        .ok_or_else(ApiError::unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, role: Role, envs: Option<&[&str]>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: hash(secret),
            role,
            environments: envs.map(|e| e.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().expect("header"),
        );
        h
    }

    #[test]
    fn roles_and_environments() {
        let tokens = [
            token("ci", "s3cret-ci", Role::Deploy, Some(&["staging"])),
            token("ops", "s3cret-ops", Role::Admin, None),
            token("lead", "s3cret-lead", Role::Approve, None),
        ];
        let ci = authenticate(&tokens, &bearer("s3cret-ci")).expect("ci");
        assert_eq!(ci.actor(), "token:ci");
        assert!(ci.require_env(Role::Deploy, "staging").is_ok());
        assert!(ci.require_env(Role::Deploy, "production").is_err());
        assert!(ci.require(Role::Approve).is_err());
        assert!(ci.require(Role::Read).is_ok());
        let lead = authenticate(&tokens, &bearer("s3cret-lead")).expect("lead");
        assert!(lead.require(Role::Approve).is_ok());
        assert!(lead.require(Role::Deploy).is_err());
        let ops = authenticate(&tokens, &bearer("s3cret-ops")).expect("ops");
        assert!(ops.require_env(Role::Approve, "production").is_ok());
        assert!(authenticate(&tokens, &bearer("s3cret-c")).is_err());
        assert!(authenticate(&tokens, &HeaderMap::new()).is_err());
        assert!(new_token().starts_with("dat_") && new_token().len() == 68);
    }
}
