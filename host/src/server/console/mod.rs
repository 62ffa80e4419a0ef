//! The web console: server-rendered pages over the same [`crate::pipeline::Agent`] and event
//! stream as the API, for the people who deploy and approve from their own machines.
//!
//! ```text
//! GET  /                       the board (every environment the token may see), live
//! GET  /runs/{id}              a run: timeline, evidence, notifications, journal, actions
//! GET  /environments/{env}     runs (by outcome), releases, backups, the rollback form
//! GET  /audit                  the audit log and its chain's verification
//! POST /runs/{id}/decide       approve / reject (CSRF, audited as the token)
//! POST /runs/{id}/cancel       cancel a queued run
//! POST /environments/{env}/rollback/plan → the plan, as the CLI shows it → confirm
//! POST /environments/{env}/rollback       the rollback
//! GET  /console/events?run=ID  the page's live feed (SSE, the session's environments only)
//! ```
//!
//! Reading works without JavaScript; `console.js` (ours, no build step) only refreshes
//! `<main>` when the page's feed says something changed. Roles and environment scopes are
//! the API's, checked on every request with the session's token.

mod actions;
mod audit_page;
mod board;
mod env_page;
mod incident_page;
mod page;
mod run_page;
mod svg;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::session::{COOKIE, LIFETIME, LOGIN_COOKIE, SignedIn, cookie, same, set_cookie};
use super::state::AppState;
use page::{Page, esc, refusal};

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The console's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(board))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/incident", get(incident))
        .route("/runs/{id}/incident.md", get(incident_markdown))
        .route("/runs/{id}/decide", post(decide))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/environments/{env}", get(environment))
        .route("/environments/{env}/rollback/plan", post(rollback_plan))
        .route("/environments/{env}/rollback", post(rollback))
        .route("/audit", get(audit))
        .route("/console/events", get(events))
        .route(
            "/console/console.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript", JS) }),
        )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `?fragment=1`: only `<main>`'s content (the live refresh).
#[derive(Debug, Default, Deserialize)]
struct View {
    fragment: Option<u8>,
    outcome: Option<String>,
    env: Option<String>,
}

impl View {
    fn fragment(&self) -> bool {
        self.fragment == Some(1)
    }
}

fn signed_in<'a>(state: &'a AppState, headers: &HeaderMap) -> Option<SignedIn<'a>> {
    state
        .console
        .signed_in(&state.agent.config.server.tokens, headers)
}

/// No session: a page sends the browser to sign in; anything else is refused.
fn to_login(next: &str) -> Response {
    Redirect::to(&format!("/login?next={}", page::url(next))).into_response()
}

/// An API error as a page: what was refused, and what to do.
fn failed(e: ApiError) -> Response {
    let hint = match e.status() {
        StatusCode::FORBIDDEN => {
            "Your token's role or environments do not allow this; sign in with one that does."
        }
        StatusCode::NOT_FOUND => "It does not exist, or your token may not see it.",
        StatusCode::CONFLICT => "Nothing was changed.",
        StatusCode::BAD_REQUEST => "Correct the form and try again.",
        _ => "Nothing was changed; the daemon's log says more.",
    };
    refusal(e.status(), &e.error, hint)
}

/// A signed-in page: its title and `<main>` in the frame (`live`: the feed that refreshes
/// it), or the error as a page.
fn show(
    who: &SignedIn<'_>,
    page: ApiResult<(String, String)>,
    live: Option<String>,
    fragment: bool,
) -> Response {
    match page {
        Ok((title, main)) => Page {
            title,
            who: Some(who),
            main,
            live,
        }
        .render(fragment),
        Err(e) => failed(e),
    }
}

/// The refusal of a form without the session's CSRF token (`None`: it carries it).
fn csrf_refusal(who: &SignedIn<'_>, presented: Option<&str>) -> Option<Response> {
    match presented {
        Some(t) if same(t, &who.csrf) => None,
        _ => Some(refusal(
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong.",
            "Reload the page and submit it again.",
        )),
    }
}

fn no_session() -> Response {
    refusal(
        StatusCode::UNAUTHORIZED,
        "You are not signed in (or your session ended).",
        "Sign in with an API token at /login.",
    )
}

async fn board(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(v): Query<View>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return to_login("/");
    };
    let main = board::main(&state, &who).await;
    let live = "/console/events".to_string();
    show(
        &who,
        main.map(|m| ("Board".into(), m)),
        Some(live),
        v.fragment(),
    )
}

async fn run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(v): Query<View>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return to_login(&format!("/runs/{id}"));
    };
    let main = run_page::main(&state, &who, &id).await;
    let live = format!("/console/events?run={}", page::url(&id));
    show(&who, main, Some(live), v.fragment())
}

async fn incident(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(v): Query<View>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return to_login(&format!("/runs/{id}/incident"));
    };
    let main = incident_page::main(&state, &who, &id).await;
    show(&who, main, None, v.fragment())
}

async fn incident_markdown(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return to_login(&format!("/runs/{id}/incident"));
    };
    match incident_page::report(&state, &who, &id).await {
        Ok(r) => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            r.to_markdown(),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

async fn environment(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    Query(v): Query<View>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return to_login(&format!("/environments/{env}"));
    };
    let main = env_page::main(&state, &who, &env, v.outcome.as_deref()).await;
    let live = format!("/console/events?env={}", page::url(&env));
    show(
        &who,
        main.map(|m| (env.clone(), m)),
        Some(live),
        v.fragment(),
    )
}

async fn audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(v): Query<View>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return to_login("/audit");
    };
    let main = audit_page::main(&state, &who, v.env.as_deref()).await;
    show(
        &who,
        main.map(|m| ("Audit log".into(), m)),
        None,
        v.fragment(),
    )
}

async fn decide(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<actions::DecideForm>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return no_session();
    };
    if let Some(r) = csrf_refusal(&who, f.csrf.as_deref()) {
        return r;
    }
    match actions::decide(&state, &who, &id, &f).await {
        Ok(()) => Redirect::to(&format!("/runs/{}", page::url(&id))).into_response(),
        Err(e) => failed(e),
    }
}

/// A form with only the CSRF token.
#[derive(Debug, Deserialize)]
struct CsrfOnly {
    csrf: Option<String>,
}

async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return no_session();
    };
    if let Some(r) = csrf_refusal(&who, f.csrf.as_deref()) {
        return r;
    }
    match actions::cancel(&state, &who, &id).await {
        Ok(()) => Redirect::to(&format!("/runs/{}", page::url(&id))).into_response(),
        Err(e) => failed(e),
    }
}

async fn rollback_plan(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    env: Path<String>,
    f: Form<actions::RollbackForm>,
) -> Response {
    rollback_step(state, headers, env, f, false).await
}

async fn rollback(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    env: Path<String>,
    f: Form<actions::RollbackForm>,
) -> Response {
    rollback_step(state, headers, env, f, true).await
}

/// The rollback's plan (`confirmed`: false) or, once confirmed, the rollback itself.
async fn rollback_step(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    Form(f): Form<actions::RollbackForm>,
    confirmed: bool,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return no_session();
    };
    if let Some(r) = csrf_refusal(&who, f.csrf.as_deref()) {
        return r;
    }
    let main = if confirmed {
        actions::rollback(&state, &who, &env, &f).await
    } else {
        actions::plan(&state, &who, &env, &f).await
    };
    show(
        &who,
        main.map(|m| (format!("Rollback of {env}"), m)),
        None,
        false,
    )
}

/// `?next=`.
#[derive(Debug, Deserialize)]
struct Next {
    next: Option<String>,
    failed: Option<u8>,
}

/// Only a path on this console: never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

fn secure(state: &AppState) -> bool {
    state.agent.config.server.tls.is_some()
}

async fn login_form(State(state): State<Arc<AppState>>, Query(n): Query<Next>) -> Response {
    let csrf = crate::random::hex(32);
    let next = safe_next(n.next.as_deref());
    let main = format!(
        "<h1>Sign in</h1>{}<form method=\"post\" action=\"/login\" class=\"login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" required autocomplete=\"current-password\" spellcheck=\"false\">\
         <p class=\"hint\">A token from <code>[[server.tokens]]</code> in agent.toml (<code>deploy-agent token new</code>). \
         The console acts with exactly its role and environments.</p>\
         <button type=\"submit\" class=\"primary\">Sign in</button></form>",
        if n.failed == Some(1) {
            "<p class=\"refusal\" role=\"alert\">That token is not one this daemon knows.</p>"
        } else {
            ""
        },
        esc(next)
    );
    let mut r = Page {
        title: "Sign in".into(),
        who: None,
        main,
        live: None,
    }
    .render(false);
    if let Ok(v) = set_cookie(
        LOGIN_COOKIE,
        &csrf,
        std::time::Duration::from_secs(3600),
        secure(&state),
    )
    .parse()
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `POST /login`.
#[derive(Debug, Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE);
    match (expected, f.csrf.as_deref()) {
        (Some(a), Some(b)) if same(a, b) => {}
        _ => {
            return refusal(
                StatusCode::FORBIDDEN,
                "The sign-in form's CSRF token is missing or wrong.",
                "Open /login again and sign in from there.",
            );
        }
    }
    let next = safe_next(f.next.as_deref()).to_string();
    let Some(id) = state
        .console
        .sign_in(&state.agent.config.server.tokens, &f.token)
    else {
        tracing::warn!("console sign-in with an unknown token refused");
        return Redirect::to(&format!("/login?failed=1&next={}", page::url(&next))).into_response();
    };
    let mut r = Redirect::to(&next).into_response();
    for c in [
        set_cookie(COOKIE, &id, LIFETIME, secure(&state)),
        set_cookie(LOGIN_COOKIE, "", std::time::Duration::ZERO, secure(&state)),
    ] {
        if let Ok(v) = c.parse() {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let Some(who) = signed_in(&state, &headers) else {
        return Redirect::to("/login").into_response();
    };
    if let Some(r) = csrf_refusal(&who, f.csrf.as_deref()) {
        return r;
    }
    state.console.sign_out(&headers);
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = set_cookie(COOKIE, "", std::time::Duration::ZERO, secure(&state)).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `?run=` or `?env=`: whose events (default: every environment the session may see).
#[derive(Debug, Deserialize)]
struct Feed {
    run: Option<String>,
    env: Option<String>,
}

async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<Feed>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Response> {
    let Some(who) = signed_in(&state, &headers) else {
        return Err(no_session());
    };
    // The environments this session may see, fixed for the stream's life.
    let covered: Vec<String> = state
        .agent
        .config
        .environments
        .keys()
        .filter(|e| who.caller.covers(e))
        .cloned()
        .collect();
    if let Some(e) = &q.env
        && !covered.contains(e)
    {
        return Err(failed(ApiError::not_found("environment")));
    }
    let (run, env) = (q.run.clone(), q.env.clone());
    let filter = move |e: &crate::pipeline::events::EventRecord| {
        covered.contains(&e.environment)
            && run.as_ref().is_none_or(|r| *r == e.deployment_id)
            && env.as_ref().is_none_or(|v| *v == e.environment)
    };
    let (_, rx) = state.agent.events().subscribe(None, |_| false);
    Ok(super::stream::sse(
        Vec::new(),
        rx,
        filter,
        false,
        false,
        state.shutdown.clone(),
    ))
}
