//! The HTTP API, `/v1`: handlers and the OpenAPI document generated from them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, body};
use super::state::AppState;
use super::submit::submit;
use crate::config::Role;
use crate::metrics::{self, Family};
use crate::pipeline::rollback::{self as rb, DbStrategy, Mode, RollbackOutcome};
use crate::pipeline::{DecideError, Quiet};
use crate::store::QueueState;
use crate::store::{
    Approval, AuditRecord, Decision, Deployment, Evidence, LockHolder, QueueItem, ReleaseRecord,
    RollbackRecord, Step,
};

/// `POST /v1/deployments`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// The environment.
    pub environment: String,
    /// The version (default: the artifact digest's first 12 hex digits).
    pub version: Option<String>,
    /// The artifact directory on the deploy host (default: the environment's).
    pub artifact: Option<String>,
    /// Why: in the audit log and the notifications.
    pub reason: Option<String>,
}

/// A run: queued, running or ended.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    /// Its id.
    pub id: String,
    /// The environment.
    pub environment: String,
    /// `queued`, `running`, `succeeded`, `failed`, `rolled_back`, `superseded`, `cancelled`,
    /// or `error` (it could not start; see `queue.outcome`).
    pub status: String,
    /// Its place among the environment's waiting runs (1: next), while queued.
    pub position: Option<usize>,
    /// The queue's record (runs triggered through the daemon).
    pub queue: Option<QueueItem>,
    /// The journal's record, once it started.
    pub deployment: Option<Deployment>,
    /// Its steps, as journaled.
    pub steps: Vec<Step>,
    /// Approval gates waiting for a decision.
    pub waiting: Vec<Approval>,
    /// Its checks' results and analyses' measurements, in the order they were taken.
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// Each host's part, in an environment that spans hosts: rolled out, failed, rolled
    /// back, or waiting (and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<crate::store::HostStep>,
    /// A canary's steps: the weight each gave the release, and how far it got (the last
    /// row's weight is the traffic it has now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<crate::store::TrafficStep>,
}

pub(super) async fn run_view(state: &AppState, id: &str) -> ApiResult<Option<RunView>> {
    let queue = state.agent.store.queue_item(id).await?;
    let deployment = state.agent.store.deployment(id).await?;
    let Some(environment) = deployment
        .as_ref()
        .map(|d| d.environment.clone())
        .or_else(|| queue.as_ref().map(|q| q.environment.clone()))
    else {
        return Ok(None);
    };
    let steps = state.agent.store.steps(id).await?;
    let evidence = state.agent.store.evidence(id).await?;
    let waiting = state
        .agent
        .store
        .pending_approvals(Some(&environment))
        .await?
        .into_iter()
        .filter(|a| a.deployment_id == id)
        .collect();
    let mut position = None;
    let status = match (&deployment, &queue) {
        (Some(d), _) => d.status.to_string(),
        (None, Some(q)) if q.state == QueueState::Queued => {
            let pending = state.agent.store.pending(&environment).await?;
            position = pending
                .iter()
                .filter(|p| p.state == QueueState::Queued)
                .position(|p| p.id == id)
                .map(|p| p + 1);
            "queued".into()
        }
        (None, Some(q)) if q.state == QueueState::Cancelled => "cancelled".into(),
        (None, Some(q)) if q.state == QueueState::Running => "running".into(),
        (None, Some(_)) => "error".into(),
        (None, None) => return Ok(None),
    };
    Ok(Some(RunView {
        id: id.to_string(),
        environment,
        status,
        position,
        queue,
        deployment,
        steps,
        waiting,
        evidence,
        hosts: state.agent.store.host_steps(id).await?,
        traffic: state.agent.store.traffic_steps(id).await?,
    }))
}

/// Queue a deployment.
#[utoipa::path(
    post, path = "/v1/deployments", tag = "runs",
    request_body = TriggerRequest,
    responses(
        (status = 202, description = "Queued; follow it at /v1/runs/{id}", body = RunView),
        (status = 400, description = "Bad request", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "The token may not deploy there", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
        (status = 422, description = "The artifact is not under the environment's artifact roots (audited)", body = ApiError),
        (status = 503, description = "Shutting down", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn trigger(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Json<TriggerRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    let caller = state.caller(&headers)?;
    caller.require(Role::Deploy)?;
    let t = body(b)?;
    state.known_env(&caller, Role::Deploy, &t.environment)?;
    let env = state
        .agent
        .config
        .environment(&t.environment)
        .map_err(ApiError::bad_request)?;
    if env.target.is_none() {
        return Err(ApiError::bad_request(format!(
            "environment `{}` has no deploy target",
            env.name
        )));
    }
    if t.version.is_none() && t.artifact.is_none() && env.artifact.path.is_none() {
        return Err(ApiError::bad_request(
            "no version: give `version` or `artifact` (the environment has no [artifact] path)",
        ));
    }
    let item = submit(
        &state,
        &t.environment,
        t.version,
        t.artifact,
        caller.actor(),
        t.reason,
        "api",
    )
    .await?;
    // The answer is the item as queued: it has no journal yet, so no more reads are needed
    // than its place in line (a worker may take it the next moment; GET /v1/runs/{id} follows).
    let position = state
        .agent
        .store
        .queue_position(&item.environment, item.seq)
        .await?;
    let view = RunView {
        id: item.id.clone(),
        environment: item.environment.clone(),
        status: "queued".into(),
        position: (position > 0).then_some(position),
        queue: Some(item),
        deployment: None,
        steps: Vec::new(),
        waiting: Vec::new(),
        evidence: Vec::new(),
        hosts: Vec::new(),
        traffic: Vec::new(),
    };
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// A run: queued, running or ended, with its journal.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such run (or not one this token may see)", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let caller = state.caller(&headers)?;
    let view = run_view(&state, &id)
        .await?
        .filter(|v| caller.covers(&v.environment))
        .ok_or_else(|| ApiError::not_found("run"))?;
    Ok(Json(view))
}

/// Cancel a run still waiting in its queue.
#[utoipa::path(
    delete, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "Cancelled", body = RunView),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "The token may not deploy there", body = ApiError),
        (status = 404, description = "No such run", body = ApiError),
        (status = 409, description = "It already started", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn cancel_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let caller = state.caller(&headers)?;
    let item = state
        .agent
        .store
        .queue_item(&id)
        .await?
        .filter(|q| caller.covers(&q.environment))
        .ok_or_else(|| ApiError::not_found("queued run"))?;
    caller.require_env(Role::Deploy, &item.environment)?;
    if !state.agent.store.cancel_queued(&id).await? {
        return Err(ApiError::conflict(format!(
            "run {id} is {}: only a queued run can be cancelled (reject or roll back a running one)",
            item.state
        )));
    }
    state
        .audit(
            &caller.actor(),
            "deploy.cancelled",
            &item.environment,
            &id,
            None,
        )
        .await;
    let view = run_view(&state, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    Ok(Json(view))
}

/// `approve` / `reject`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why: recorded in the audit log.
    pub reason: String,
}

/// Approve a run waiting at an approval gate.
#[utoipa::path(
    post, path = "/v1/runs/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "The waiting run")),
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "Decided", body = Approval),
        (status = 400, description = "Bad request", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "The token may not approve there", body = ApiError),
        (status = 404, description = "No such run waiting", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn approve(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    id: Path<String>,
    b: Result<Json<DecisionRequest>, JsonRejection>,
) -> ApiResult<Json<Approval>> {
    decide(state, headers, id, b, Decision::Approved).await
}

/// Reject a run waiting at an approval gate: it stops (after promotion: it is rolled back).
#[utoipa::path(
    post, path = "/v1/runs/{id}/reject", tag = "approvals",
    params(("id" = String, Path, description = "The waiting run")),
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "Decided", body = Approval),
        (status = 400, description = "Bad request", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "The token may not approve there", body = ApiError),
        (status = 404, description = "No such run waiting", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn reject(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    id: Path<String>,
    b: Result<Json<DecisionRequest>, JsonRejection>,
) -> ApiResult<Json<Approval>> {
    decide(state, headers, id, b, Decision::Rejected).await
}

pub(super) async fn decide(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<DecisionRequest>, JsonRejection>,
    decision: Decision,
) -> ApiResult<Json<Approval>> {
    let caller = state.caller(&headers)?;
    caller.require(Role::Approve)?;
    let d = body(b)?;
    Ok(Json(
        decide_as(&state, &caller, &id, decision, &d.reason, "the API").await?,
    ))
}

/// Decides a waiting run as `caller` (the API's and the console's): a reason is required, and
/// a run the caller may not see is not found.
pub(super) async fn decide_as(
    state: &AppState,
    caller: &super::auth::Caller<'_>,
    id: &str,
    decision: Decision,
    reason: &str,
    via: &str,
) -> ApiResult<Approval> {
    caller.require(Role::Approve)?;
    if reason.trim().is_empty() {
        return Err(ApiError::bad_request("a reason is required"));
    }
    let waiting = state
        .agent
        .store
        .pending_approvals(None)
        .await?
        .into_iter()
        .find(|a| a.deployment_id == id && caller.covers(&a.environment))
        .ok_or_else(|| ApiError::not_found("run waiting for a decision"))?;
    caller.require_env(Role::Approve, &waiting.environment)?;
    state
        .agent
        .decide(id, decision, &caller.actor(), reason.trim(), Some(via))
        .await
        .map_err(|e| match e {
            DecideError::NotWaiting(_) => ApiError::conflict(e.to_string()),
            DecideError::Store(e) => e.into(),
        })
}

/// An environment at a glance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    /// Its name.
    pub name: String,
    /// The live release.
    pub live: Option<ReleaseRecord>,
    /// Who holds its lock.
    pub lock: Option<LockHolder>,
    /// The run in progress.
    pub running: Option<String>,
    /// Runs waiting, in order.
    pub queued: Vec<String>,
    /// Rollbacks and restores whose agent died part-way (status `interrupted`): nothing else
    /// runs until `deploy-agent recover` finishes or undoes them.
    pub interrupted: Vec<RollbackRecord>,
}

/// The environments this token may see.
#[utoipa::path(
    get, path = "/v1/environments", tag = "environments",
    responses(
        (status = 200, description = "Environments", body = [EnvironmentView]),
        (status = 401, description = "No valid token", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn environments(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    let caller = state.caller(&headers)?;
    let mut out = Vec::new();
    for name in state
        .agent
        .config
        .environments
        .keys()
        .filter(|e| caller.covers(e))
    {
        let pending = state.agent.store.pending(name).await?;
        let status = state.agent.status(name).await?;
        out.push(EnvironmentView {
            name: name.clone(),
            live: status.live,
            lock: status.lock,
            running: pending
                .iter()
                .find(|p| p.state == QueueState::Running)
                .map(|p| p.id.clone()),
            queued: pending
                .iter()
                .filter(|p| p.state == QueueState::Queued)
                .map(|p| p.id.clone())
                .collect(),
            interrupted: status.interrupted,
        });
    }
    Ok(Json(out))
}

/// `?limit=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// How many (default 20, at most 500).
    pub limit: Option<usize>,
}

/// An environment's runs, newest first.
#[utoipa::path(
    get, path = "/v1/environments/{env}/runs", tag = "environments",
    params(("env" = String, Path, description = "The environment"), Limit),
    responses(
        (status = 200, description = "Runs", body = [Deployment]),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn env_runs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<Deployment>>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Read, &env)?;
    let limit = q.limit.unwrap_or(20).min(500);
    Ok(Json(state.agent.store.deployments(&env, limit).await?))
}

/// An environment's releases, newest first.
#[utoipa::path(
    get, path = "/v1/environments/{env}/releases", tag = "environments",
    params(("env" = String, Path, description = "The environment")),
    responses(
        (status = 200, description = "Releases", body = [ReleaseRecord]),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn env_releases(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<Json<Vec<ReleaseRecord>>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Read, &env)?;
    Ok(Json(state.agent.store.releases(&env).await?))
}

/// `POST /v1/environments/{env}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// `app` (default), `db` or `full`.
    pub mode: Option<String>,
    /// The release to return to (default: the one before the live one).
    pub to: Option<String>,
    /// Restore this backup instead of the one the release is pinned to.
    pub backup: Option<String>,
    /// `restore` (default) or `down`.
    pub db_strategy: Option<String>,
    /// Why: recorded, audited and sent to the notifiers.
    pub reason: String,
    /// Restore a backup whose schema is not the release's.
    #[serde(default)]
    pub force: bool,
}

/// Emergency rollback: the app, the database, or both, to the previous or a named release.
#[utoipa::path(
    post, path = "/v1/environments/{env}/rollback", tag = "environments",
    params(("env" = String, Path, description = "The environment")),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "Done (see `record.status`)", body = RollbackOutcome),
        (status = 400, description = "Bad request", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
        (status = 409, description = "A run is in progress, or the rollback was refused", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    b: Result<Json<RollbackBody>, JsonRejection>,
) -> ApiResult<Json<RollbackOutcome>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Deploy, &env)?;
    let req = rollback_request(&env, body(b)?, caller.actor())?;
    Ok(Json(rollback_now(&state, &env, &req).await?))
}

/// Runs a rollback once the environment is free (a run that just ended releases it within
/// moments; one still going is a conflict): the API's and the console's.
pub(super) async fn rollback_now(
    state: &AppState,
    env: &str,
    req: &rb::RollbackRequest,
) -> ApiResult<RollbackOutcome> {
    let slot = state
        .queue
        .slot(env)
        .ok_or_else(|| ApiError::not_found("environment"))?;
    // A run that just ended releases the environment within moments; one still going does not.
    let Ok(_busy) = tokio::time::timeout(std::time::Duration::from_secs(3), slot.busy.lock()).await
    else {
        let current = slot
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        return Err(ApiError::conflict(format!(
            "run {current} is in progress in {env}: reject it (POST /v1/runs/{current}/reject) or wait for it, then roll back"
        )));
    };
    let outcome = rb::execute(&state.agent, req, &Quiet)
        .await
        .map_err(|e| ApiError::conflict(format!("rollback refused: {e}")))?;
    Ok(outcome)
}

/// The rollback a request body asks for, or 400.
pub fn rollback_request(
    env: &str,
    r: RollbackBody,
    actor: String,
) -> ApiResult<rb::RollbackRequest> {
    if r.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a reason is required"));
    }
    let mode = match r.mode.as_deref().unwrap_or("app") {
        "app" => Mode::App,
        "db" => Mode::Db,
        "full" => Mode::Full,
        other => {
            return Err(ApiError::bad_request(format!(
                "mode `{other}`: one of app, db, full"
            )));
        }
    };
    let db_strategy = match r.db_strategy.as_deref().unwrap_or("restore") {
        "restore" => DbStrategy::Restore,
        "down" => DbStrategy::Down,
        other => {
            return Err(ApiError::bad_request(format!(
                "db_strategy `{other}`: one of restore, down"
            )));
        }
    };
    Ok(rb::RollbackRequest {
        environment: env.to_string(),
        to: r.to,
        mode,
        backup: r.backup,
        db_strategy,
        reason: r.reason,
        actor,
        force: r.force,
    })
}

/// `?environment=&limit=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this environment (required for a token limited to some environments).
    pub environment: Option<String>,
    /// How many (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// The audit log's newest entries, oldest first.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries", body = [AuditRecord]),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn audit_log(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    let caller = state.caller(&headers)?;
    match &q.environment {
        Some(e) => caller.require_env(Role::Read, e)?,
        None if caller.limited() => return Err(ApiError::forbidden()),
        None => {}
    }
    let limit = q.limit.unwrap_or(50).min(1000);
    Ok(Json(
        state
            .agent
            .store
            .audit_entries(q.environment.as_deref(), limit)
            .await?,
    ))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, description = "Alive", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: plugins loaded, queue running, not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "service", responses(
    (status = 200, description = "Ready", body = String),
    (status = 503, description = "Starting or stopping", body = String),
))]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "No valid token", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn metrics_text(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    state.caller(&headers)?;
    // Queue depth is read from the store when scraped, not tracked on every trigger.
    let pending = state.agent.store.all_pending().await?;
    for env in state.agent.config.environments.keys() {
        let waiting = pending
            .iter()
            .filter(|i| i.environment == *env && i.state == QueueState::Queued)
            .count();
        metrics::set(Family::QueueDepth, &[("environment", env)], waiting as f64);
    }
    // Backup ages, likewise, from each environment's manifests (small JSON files).
    let config = state.agent.config.clone();
    let standings = tokio::task::spawn_blocking(move || backup_standings(&config))
        .await
        .unwrap_or_default();
    for (env, st) in standings {
        let l = [("environment", env.as_str())];
        if let Some((_, age)) = st.newest {
            metrics::set(Family::BackupAgeSeconds, &l, age as f64);
        }
        if let Some((_, age)) = st.verified {
            metrics::set(Family::VerifiedBackupAgeSeconds, &l, age as f64);
        }
        if let Some((_, secs, _)) = st.last_drill {
            metrics::set(Family::RestoreDrillSeconds, &l, secs);
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    ))
}

/// Each environment with a database and backups: where it stands against its objectives.
fn backup_standings(config: &crate::config::Config) -> Vec<(String, crate::db::backup::Standing)> {
    config
        .environments
        .values()
        .filter(|env| env.database.is_some())
        .filter_map(|env| {
            let (all, _) = crate::db::backup::list(&env.backup.dir).ok()?;
            let o = env.backup.objectives;
            Some((
                env.name.clone(),
                crate::db::backup::standing(&all, o.rpo, o.rto, crate::store::now_ms()),
            ))
        })
        .collect()
}
