//! The live event streams (server-sent events): one run's, one environment's.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;

use super::api::run_view;
use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::config::Role;
use crate::pipeline::events::EventRecord;

/// Live events of one run: what has happened so far (kept in memory), then each event as it
/// happens; the stream ends with the run's last event.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "The run (or rollback) id")),
    responses(
        (status = 200, description = "Server-sent events: `id` is the event's number, `event` its kind, `data` an EventRecord", content_type = "text/event-stream", body = EventRecord),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such run", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn run_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let caller = state.caller(&headers)?;
    // A run the store knows, or a rollback's events still in memory.
    let env = match run_view(&state, &id).await? {
        Some(v) => Some((
            v.environment,
            matches!(v.status.as_str(), "queued" | "running"),
        )),
        None => None,
    };
    let after = last_event_id(&headers);
    let want = id.clone();
    let (past, rx) = state
        .agent
        .events()
        .subscribe(after, move |e| e.deployment_id == want);
    let (environment, open) = match env {
        Some(e) => e,
        None => match past.first() {
            Some(e) => (e.environment.clone(), !past.iter().any(|e| e.is_final())),
            None => return Err(ApiError::not_found("run")),
        },
    };
    if !caller.covers(&environment) {
        return Err(ApiError::not_found("run"));
    }
    let done = !open || past.iter().any(|e| e.is_final());
    let want = id.clone();
    Ok(sse(
        past,
        rx,
        move |e| e.deployment_id == want,
        true,
        done,
        state.shutdown.clone(),
    ))
}

/// Live events of one environment (every run and rollback in it), as they happen; with
/// `Last-Event-ID`, the kept events after it first.
#[utoipa::path(
    get, path = "/v1/environments/{env}/events", tag = "events",
    params(("env" = String, Path, description = "The environment")),
    responses(
        (status = 200, description = "Server-sent events: `id` is the event's number, `event` its kind, `data` an EventRecord", content_type = "text/event-stream", body = EventRecord),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not this token's environment", body = ApiError),
        (status = 404, description = "No such environment", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn env_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let caller = state.caller(&headers)?;
    state.known_env(&caller, Role::Read, &env)?;
    let after = last_event_id(&headers);
    let want = env.clone();
    let (past, rx) = state
        .agent
        .events()
        .subscribe(after, move |e| e.environment == want);
    let past = if after.is_some() { past } else { Vec::new() };
    Ok(sse(
        past,
        rx,
        move |e| e.environment == env,
        false,
        false,
        state.shutdown.clone(),
    ))
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

struct Feed<F> {
    past: std::collections::VecDeque<Arc<EventRecord>>,
    rx: tokio::sync::broadcast::Receiver<Arc<EventRecord>>,
    filter: F,
    end_on_final: bool,
    last: u64,
    done: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

fn sse_event(e: &EventRecord) -> SseEvent {
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event"))
}

pub(super) fn sse<F>(
    past: Vec<Arc<EventRecord>>,
    rx: tokio::sync::broadcast::Receiver<Arc<EventRecord>>,
    filter: F,
    end_on_final: bool,
    done: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>>
where
    F: Fn(&EventRecord) -> bool + Send + 'static,
{
    let feed = Feed {
        last: past.last().map_or(0, |e| e.seq),
        past: past.into(),
        rx,
        filter,
        end_on_final,
        done,
        shutdown,
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if let Some(e) = f.past.pop_front() {
            if f.end_on_final && e.is_final() {
                f.done = true;
                f.past.clear();
            }
            return Some((Ok(sse_event(&e)), f));
        }
        if f.done || *f.shutdown.borrow() {
            return None;
        }
        loop {
            let next = tokio::select! {
                r = f.rx.recv() => r,
                _ = f.shutdown.changed() => return None,
            };
            match next {
                Ok(e) if e.seq > f.last && (f.filter)(&e) => {
                    f.last = e.seq;
                    if f.end_on_final && e.is_final() {
                        f.done = true;
                    }
                    return Some((Ok(sse_event(&e)), f));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = SseEvent::default()
                        .comment(format!("{n} events dropped: this client was too slow"));
                    return Some((Ok(note), f));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
