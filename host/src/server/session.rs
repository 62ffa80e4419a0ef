//! Console sessions: an API token presented once at sign-in, then an HttpOnly, SameSite=Strict
//! cookie naming a session held in memory, with the CSRF token its forms carry.
//!
//! ```text
//! GET  /login   the form, with a sign-in CSRF token (a cookie and a hidden field: double submit)
//! POST /login   token checked as the API checks it → session cookie, 303 to where it was going
//! any page      cookie → session → the token's role and environments, exactly as the API's
//! any POST      the form's `csrf` must equal the session's (constant time), else 403
//! POST /logout  session forgotten, cookie cleared
//! ```
//!
//! Sessions live in the daemon's memory for [`LIFETIME`]: a restart signs everyone out, and
//! nothing a cookie names is ever written to disk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use super::auth::{self, Caller};
use crate::config::TokenConfig;

/// The session cookie's name.
pub const COOKIE: &str = "da_session";
/// The sign-in form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "da_login";
/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most: the oldest go first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
struct Session {
    token: usize,
    csrf: String,
    expires: Instant,
}

/// The signed-in sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// A signed-in request: who, and the CSRF token its forms must carry.
#[derive(Debug, Clone)]
pub struct SignedIn<'a> {
    /// The token it signed in with.
    pub caller: Caller<'a>,
    /// The token's name.
    pub name: &'a str,
    /// The token's role, in words.
    pub role: &'static str,
    /// The CSRF token.
    pub csrf: String,
}

/// A cookie's value in a request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether two secrets are equal, in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/`; `Secure` when served over TLS.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

impl Sessions {
    /// Signs in with `token` (the secret the user typed): the new session's id, or `None`
    /// when no declared token matches.
    pub fn sign_in(&self, tokens: &[TokenConfig], token: &str) -> Option<String> {
        let caller = auth::authenticate_token(tokens, token).ok()?;
        let index = tokens
            .iter()
            .position(|t| std::ptr::eq(t, caller.token()))?;
        let id = crate::random::hex(32);
        let mut all = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        all.retain(|_, s| s.expires > now);
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(
            id.clone(),
            Session {
                token: index,
                csrf: crate::random::hex(32),
                expires: now + LIFETIME,
            },
        );
        Some(id)
    }

    /// The session a request's cookie names, if it is live.
    pub fn signed_in<'a>(
        &self,
        tokens: &'a [TokenConfig],
        headers: &HeaderMap,
    ) -> Option<SignedIn<'a>> {
        let id = cookie(headers, COOKIE)?;
        let all = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.get(id).filter(|s| s.expires > Instant::now())?;
        let token = tokens.get(s.token)?;
        Some(SignedIn {
            caller: Caller::of(token),
            name: &token.name,
            role: token.role.name(),
            csrf: s.csrf.clone(),
        })
    }

    /// Forgets a request's session.
    pub fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.by_id
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    #[test]
    fn a_session_carries_its_token_and_csrf_and_ends_at_sign_out() {
        let tokens = [TokenConfig {
            name: "ops".into(),
            sha256: auth::hash("s3cret"),
            role: Role::Approve,
            environments: None,
        }];
        let sessions = Sessions::default();
        assert!(sessions.sign_in(&tokens, "wrong").is_none());
        let id = sessions.sign_in(&tokens, "s3cret").expect("signs in");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={id}").parse().expect("header"),
        );
        let s = sessions.signed_in(&tokens, &h).expect("signed in");
        assert_eq!((s.name, s.role, s.csrf.len()), ("ops", "approve", 64));
        assert!(same(&s.csrf, &s.csrf.clone()) && !same(&s.csrf, "x"));
        sessions.sign_out(&h);
        assert!(sessions.signed_in(&tokens, &h).is_none());
        let mut other = HeaderMap::new();
        other.insert(header::COOKIE, format!("{COOKIE}=nope").parse().expect("h"));
        assert!(sessions.signed_in(&tokens, &other).is_none());
    }
}
