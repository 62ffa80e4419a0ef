//! The router and the OpenAPI document generated from the handlers.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use super::error::ApiError;
use super::state::AppState;
use super::{api, stream, views, webhook};
use crate::metrics::{self, Family};

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "service", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "deploy-agent",
        description = "The deploy agent's daemon: trigger deployments, follow them live, approve, roll back, read the audit log. Bearer tokens from agent.toml [[server.tokens]]."
    ),
    paths(
        api::trigger, api::get_run, api::cancel_run, api::approve, api::reject, views::abort_run,
        stream::run_events, api::environments, api::env_runs, api::env_releases, api::rollback,
        stream::env_events, api::audit_log, views::env_status, views::env_history, views::env_schedule, views::run_incident,
        views::rollback_plan, views::audit_verify, views::agents, api::healthz, api::readyz, api::metrics_text,
        openapi_json, webhook::github
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/deployments", post(api::trigger))
        .route("/v1/runs/{id}", get(api::get_run).delete(api::cancel_run))
        .route("/v1/runs/{id}/approve", post(api::approve))
        .route("/v1/runs/{id}/reject", post(api::reject))
        .route("/v1/runs/{id}/abort", post(views::abort_run))
        .route("/v1/runs/{id}/events", get(stream::run_events))
        .route("/v1/runs/{id}/incident", get(views::run_incident))
        .route("/v1/environments", get(api::environments))
        .route("/v1/environments/{env}/runs", get(api::env_runs))
        .route("/v1/environments/{env}/releases", get(api::env_releases))
        .route("/v1/environments/{env}/rollback", post(api::rollback))
        .route(
            "/v1/environments/{env}/rollback/plan",
            post(views::rollback_plan),
        )
        .route("/v1/environments/{env}/status", get(views::env_status))
        .route("/v1/environments/{env}/history", get(views::env_history))
        .route("/v1/environments/{env}/schedule", get(views::env_schedule))
        .route("/v1/audit/verify", get(views::audit_verify))
        .route("/v1/agents", get(views::agents))
        .route("/v1/environments/{env}/events", get(stream::env_events))
        .route("/v1/audit", get(api::audit_log))
        .route("/v1/webhooks/github", post(webhook::github))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics_text))
        .merge(super::console::routes())
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(state)
}

async fn count_requests(
    path: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = path.map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::inc(
        Family::HttpRequests,
        &[("route", &route), ("status", &status)],
    );
    res
}
