//! GitHub push webhooks: a signed delivery starts a deploy for the configured
//! repository/branch → environment route.
//!
//! A delivery is taken only when all of these hold, checked in this order:
//! 1. `X-Hub-Signature-256` is `sha256=` and the HMAC-SHA256 of the raw body under the
//!    webhook secret, compared in constant time (`Mac::verify_slice`);
//! 2. the push is recent: `repository.pushed_at` (inside the signed body) is within the
//!    replay window of now, so a captured delivery cannot be replayed later;
//! 3. its `X-GitHub-Delivery` id was not taken before (kept in the state store for the
//!    window), so it cannot be replayed within the window either.
//!
//! Refusals say `unauthorized` and nothing more; the reason goes to the log.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::error::ApiError;
use super::state::AppState;
use crate::metrics::{self, Family};
use crate::store::now_ms;

/// What a delivery did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookOutcome {
    /// `queued`, `ignored` or `pong`.
    pub result: String,
    /// The queued runs' ids.
    pub runs: Vec<String>,
    /// Why it was ignored.
    pub detail: Option<String>,
}

fn count(outcome: &str) {
    metrics::inc(
        Family::Webhooks,
        &[("source", "github"), ("outcome", outcome)],
    );
}

fn refuse(why: &str) -> ApiError {
    tracing::warn!("GitHub webhook refused: {why}");
    count("refused");
    ApiError::unauthorized()
}

/// Checks `X-Hub-Signature-256` over the raw body.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// A GitHub webhook delivery (push events deploy; `ping` answers; others are ignored).
#[utoipa::path(
    post, path = "/v1/webhooks/github", tag = "webhooks",
    request_body(content = Object, description = "GitHub's push event payload, as GitHub sends it (content type application/json)"),
    params(
        ("X-Hub-Signature-256" = String, Header, description = "sha256=HMAC of the body under the webhook secret"),
        ("X-GitHub-Event" = String, Header, description = "push, ping, ..."),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's GUID"),
    ),
    responses(
        (status = 202, description = "Runs queued", body = WebhookOutcome),
        (status = 200, description = "Ping answered, or nothing to deploy", body = WebhookOutcome),
        (status = 400, description = "Not a push payload", body = ApiError),
        (status = 401, description = "Bad signature, stale or replayed delivery", body = ApiError),
        (status = 404, description = "No GitHub webhook configured", body = ApiError),
    )
)]
pub async fn github(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookOutcome>), ApiError> {
    let (Some(cfg), Some(secret)) = (&state.agent.config.server.github, &state.github_secret)
    else {
        return Err(ApiError::not_found("route"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !verify_signature(
        secret.expose().as_bytes(),
        &body,
        header("x-hub-signature-256"),
    ) {
        return Err(refuse("the X-Hub-Signature-256 signature does not match"));
    }
    let event = header("x-github-event").unwrap_or_default().to_string();
    let delivery = header("x-github-delivery").unwrap_or_default().to_string();
    if event == "ping" {
        count("ping");
        return Ok((
            StatusCode::OK,
            Json(WebhookOutcome {
                result: "pong".into(),
                runs: Vec::new(),
                detail: None,
            }),
        ));
    }
    let payload: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "the body is not JSON: set the webhook's content type to application/json",
        )
    })?;
    let window = cfg.replay_window.as_millis() as i64;
    let pushed_ms = payload["repository"]["pushed_at"]
        .as_i64()
        .map(|s| s * 1000);
    match pushed_ms {
        _ if event != "push" => {}
        None => {
            return Err(refuse(
                "the push has no repository.pushed_at: its age is unknown",
            ));
        }
        Some(at) if (now_ms() - at).abs() > window => {
            return Err(refuse(&format!(
                "the push is {} s old, outside the replay window of {} s",
                (now_ms() - at) / 1000,
                window / 1000
            )));
        }
        Some(_) => {}
    }
    if delivery.is_empty() {
        return Err(refuse("no X-GitHub-Delivery id"));
    }
    if !state
        .agent
        .store
        .record_delivery(&delivery, 2 * window)
        .await?
    {
        return Err(refuse(&format!(
            "delivery {delivery} was already taken (a replay)"
        )));
    }
    let ignored = |why: String| {
        count("ignored");
        Ok((
            StatusCode::OK,
            Json(WebhookOutcome {
                result: "ignored".into(),
                runs: Vec::new(),
                detail: Some(why),
            }),
        ))
    };
    if event != "push" {
        return ignored(format!("`{event}` events do not deploy"));
    }
    let Some(branch) = payload["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("refs/heads/"))
    else {
        return ignored("not a branch push".into());
    };
    if payload["deleted"] == true {
        return ignored(format!("branch {branch} was deleted"));
    }
    let repo = payload["repository"]["full_name"]
        .as_str()
        .unwrap_or_default();
    let sha = payload["after"].as_str().unwrap_or_default();
    if sha.len() < 12 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("the push has no `after` commit"));
    }
    let who = payload["sender"]["login"]
        .as_str()
        .or(payload["pusher"]["name"].as_str())
        .unwrap_or("unknown");
    let mut runs = Vec::new();
    for route in cfg
        .routes
        .iter()
        .filter(|r| r.repository.eq_ignore_ascii_case(repo) && r.branch == branch)
    {
        let artifact = route
            .artifact
            .as_ref()
            .map(|a| a.replace("{sha}", sha).replace("{branch}", branch));
        let item = super::submit::submit(
            &state,
            &route.environment,
            Some(sha[..12].to_string()),
            artifact,
            format!("github:{who}"),
            Some(format!(
                "push of {} to {repo}@{branch} (delivery {delivery})",
                &sha[..12]
            )),
            "github",
        )
        .await?;
        runs.push(item.id);
    }
    if runs.is_empty() {
        return ignored(format!("no route for {repo}@{branch}"));
    }
    count("queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(WebhookOutcome {
            result: "queued".into(),
            runs,
            detail: None,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_github_s() {
        // GitHub's documented example: secret "It's a Secret to Everybody", payload
        // "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some(sig)
        ));
        assert!(!verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            Some(sig)
        ));
        assert!(!verify_signature(b"other", b"Hello, World!", Some(sig)));
        assert!(!verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some(&sig.replace("sha256=", "sha1="))
        ));
        assert!(!verify_signature(b"x", b"Hello, World!", None));
    }
}
