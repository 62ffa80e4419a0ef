//! The read views the remote CLI prints exactly as the host's CLI does: an environment's
//! status (with drift), its history with journals, what a rollback would do, and the audit
//! log's verification.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::IntoParams;

use super::api::{Limit, RollbackBody, rollback_request};
use super::error::{ApiError, ApiResult, body};
use super::state::AppState;
use crate::config::Role;
use crate::pipeline::rollback::{self as rb, RollbackPlan};
use crate::pipeline::status::{self, StatusView};
use crate::store::{AgentRecord, AuditReport, RunJournal};

/// An environment's status: live release, lock and what its holder is doing, the last run
/// with its journal, waiting approvals, the last rollback, and drift (what the target says
/// serves, next to what the store recorded).
#[utoipa::path(
    get, path = "/v1/environments/{env}/status", tag = "environments",
    params(("env" = String, Path, description = "The environment")),
    responses(
        (status = 200, description = "Its status", body = StatusView),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn env_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<Json<StatusView>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Read, &env)?;
    Ok(Json(status::view(&state.agent, &env).await?))
}

/// An environment's runs with their journals, newest first (`deploy-agent history`).
#[utoipa::path(
    get, path = "/v1/environments/{env}/history", tag = "environments",
    params(("env" = String, Path, description = "The environment"), Limit),
    responses(
        (status = 200, description = "Runs with their steps", body = [RunJournal]),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn env_history(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<RunJournal>>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Read, &env)?;
    let limit = q.limit.unwrap_or(20).min(500);
    Ok(Json(state.agent.store.history(&env, limit).await?))
}

/// What a rollback would do (releases, backup and its age, what is lost, refusals); changes
/// nothing. The body is the rollback's.
#[utoipa::path(
    post, path = "/v1/environments/{env}/rollback/plan", tag = "environments",
    params(("env" = String, Path, description = "The environment")),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "The plan (`refusals` empty when it can go ahead)", body = RollbackPlan),
        (status = 400, description = "Bad request", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
        (status = 409, description = "Nothing to roll back to", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn rollback_plan(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    b: Result<Json<RollbackBody>, JsonRejection>,
) -> ApiResult<Json<RollbackPlan>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Deploy, &env)?;
    let req = rollback_request(&env, body(b)?, caller.actor())?;
    let plan = rb::plan(&state.agent, &req)
        .await
        .map_err(|e| ApiError::conflict(format!("rollback refused: {e}")))?;
    Ok(Json(plan))
}

/// `?expect_head=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// The head hash recorded earlier: also detects entries removed from the end.
    pub expect_head: Option<String>,
}

/// Walks the audit log's hash chain (`problems` empty when intact).
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    params(VerifyQuery),
    responses(
        (status = 200, description = "What the walk found", body = AuditReport),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "A token limited to some environments", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn audit_verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<Json<AuditReport>> {
    let caller = state.caller(&headers)?;
    caller.require(Role::Read)?;
    if caller.limited() {
        return Err(ApiError::forbidden());
    }
    let mut report = state.agent.store.audit_verify().await?;
    report.expect_head(q.expect_head.as_deref());
    Ok(Json(report))
}

/// The agents sharing this daemon's state store, with their health (`deploy-agent agents`).
/// A token limited to some environments sees the agents serving them, and only those
/// environments of each.
#[utoipa::path(
    get, path = "/v1/agents", tag = "fleet",
    responses(
        (status = 200, description = "The fleet, by name", body = [AgentRecord]),
        (status = 401, description = "No valid token", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn agents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AgentRecord>>> {
    let caller = state.caller(&headers)?;
    caller.require(Role::Read)?;
    let mut agents = state.agent.store.agents().await?;
    if caller.limited() {
        for a in &mut agents {
            a.environments.retain(|e| caller.covers(e));
        }
        agents.retain(|a| !a.environments.is_empty());
    }
    Ok(Json(agents))
}

/// What `POST /v1/runs/{id}/abort` answers.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct AbortAnswer {
    /// The run.
    pub run: String,
    /// Who asked, and why, as recorded.
    pub abort_requested: String,
}

/// Ask a running run to stop: a rollout across hosts waiting on a host whose agent is down
/// stops at its next look and rolls back the hosts it did.
#[utoipa::path(
    post, path = "/v1/runs/{id}/abort", tag = "runs",
    params(("id" = String, Path, description = "The running run")),
    request_body = super::api::DecisionRequest,
    responses(
        (status = 200, description = "Asked", body = AbortAnswer),
        (status = 400, description = "Bad request", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "The token may not deploy there", body = ApiError),
        (status = 404, description = "No such run", body = ApiError),
        (status = 409, description = "It is not running", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn abort_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<super::api::DecisionRequest>, JsonRejection>,
) -> ApiResult<Json<AbortAnswer>> {
    let caller = state.caller(&headers)?;
    let d = body(b)?;
    let run = state
        .agent
        .store
        .deployment(&id)
        .await?
        .filter(|r| caller.covers(&r.environment))
        .ok_or_else(|| ApiError::not_found("run"))?;
    caller.require_env(Role::Deploy, &run.environment)?;
    if d.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a reason is required"));
    }
    let why = format!("by {}: {}", caller.actor(), d.reason);
    if !state.agent.store.request_abort(&id, &why).await? {
        return Err(ApiError::conflict(format!(
            "run {id} is {}: only a running run can be aborted",
            run.status
        )));
    }
    state
        .audit(
            &caller.actor(),
            "run.abort-requested",
            &run.environment,
            &id,
            Some(&d.reason),
        )
        .await;
    Ok(Json(AbortAnswer {
        run: id,
        abort_requested: why,
    }))
}

/// An environment's scheduled jobs: when each runs, its next three runs in the agent's time
/// zone, and its newest run (`deploy-agent schedule list --env`).
#[utoipa::path(
    get, path = "/v1/environments/{env}/schedule", tag = "environments",
    params(("env" = String, Path, description = "The environment")),
    responses(
        (status = 200, description = "Its scheduled jobs", body = [crate::pipeline::scheduler::Scheduled]),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn env_schedule(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<Json<Vec<crate::pipeline::scheduler::Scheduled>>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Read, &env)?;
    let listed =
        crate::pipeline::scheduler::listing(&state.agent, Some(&env), crate::store::now_ms())
            .await?;
    Ok(Json(listed))
}

/// How `GET /v1/runs/{id}/incident` answers.
#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct IncidentQuery {
    /// `markdown` for the report as Markdown (`text/markdown`); JSON otherwise.
    format: Option<String>,
}

/// A run's incident report (`deploy-agent incident report RUN`): detection, decision,
/// recovery, the timeline from its journal, evidence, rollbacks and the audit log, and the
/// audit chain's verification.
#[utoipa::path(
    get, path = "/v1/runs/{id}/incident", tag = "runs",
    params(("id" = String, Path, description = "The run id"), IncidentQuery),
    responses(
        (status = 200, description = "The report (JSON; Markdown with ?format=markdown)", body = crate::pipeline::incident::IncidentReport),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such run (or not one this token may see)", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn run_incident(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<IncidentQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let caller = state.caller(&headers)?;
    state
        .agent
        .store
        .deployment(&id)
        .await?
        .filter(|d| caller.covers(&d.environment))
        .ok_or_else(|| ApiError::not_found("run"))?;
    let report = crate::pipeline::incident::report(&state.agent, &id)
        .await
        .map_err(|e| {
            tracing::error!("API: incident report of {id}: {e}");
            ApiError::unavailable("the incident report could not be read from the state store")
        })?;
    Ok(match q.format.as_deref() {
        Some("markdown") => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/markdown; charset=utf-8",
            )],
            report.to_markdown(),
        )
            .into_response(),
        _ => Json(report).into_response(),
    })
}
