//! What the console does, each a form POST carrying the session's CSRF token and each audited
//! with the signed-in token's name: approve or reject at a gate, cancel a queued run, and the
//! emergency rollback, planned and shown first, exactly as the CLI shows it, then confirmed.

use std::fmt::Write;

use serde::Deserialize;

use super::page::{csrf_field, esc, took, url};
use crate::config::Role;
use crate::pipeline::rollback as rb;
use crate::server::api::{RollbackBody, decide_as, rollback_now, rollback_request};
use crate::server::error::{ApiError, ApiResult};
use crate::server::session::SignedIn;
use crate::server::state::AppState;
use crate::store::Decision;

/// `POST /runs/{id}/decide`.
#[derive(Debug, Deserialize)]
pub struct DecideForm {
    /// The session's CSRF token.
    pub csrf: Option<String>,
    /// `approve` or `reject`.
    pub decision: String,
    /// Why.
    pub reason: String,
}

/// Approves or rejects a waiting run.
pub async fn decide(
    state: &AppState,
    who: &SignedIn<'_>,
    id: &str,
    f: &DecideForm,
) -> ApiResult<()> {
    let decision = match f.decision.as_str() {
        "approve" => Decision::Approved,
        "reject" => Decision::Rejected,
        other => {
            return Err(ApiError::bad_request(format!(
                "decision `{other}`: approve or reject"
            )));
        }
    };
    decide_as(state, &who.caller, id, decision, &f.reason, "the console").await?;
    Ok(())
}

/// Cancels a queued run.
pub async fn cancel(state: &AppState, who: &SignedIn<'_>, id: &str) -> ApiResult<()> {
    let item = state
        .agent
        .store
        .queue_item(id)
        .await?
        .filter(|q| who.caller.covers(&q.environment))
        .ok_or_else(|| ApiError::not_found("queued run"))?;
    who.caller.require_env(Role::Deploy, &item.environment)?;
    if !state.agent.store.cancel_queued(id).await? {
        return Err(ApiError::conflict(format!(
            "run {id} is {}: only a queued run can be cancelled",
            item.state
        )));
    }
    state
        .audit(
            &who.caller.actor(),
            "deploy.cancelled",
            &item.environment,
            id,
            Some("from the console"),
        )
        .await;
    Ok(())
}

/// The rollback form (the plan's and the confirmation's).
#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    /// The session's CSRF token.
    pub csrf: Option<String>,
    /// `app`, `db` or `full`.
    pub mode: Option<String>,
    /// The release to return to (empty: the one before the live one).
    pub to: Option<String>,
    /// Why.
    pub reason: String,
}

impl RollbackForm {
    /// The rollback it asks for, in an environment the session may deploy to.
    fn request(
        &self,
        state: &AppState,
        env: &str,
        who: &SignedIn<'_>,
    ) -> ApiResult<rb::RollbackRequest> {
        state.known_env(&who.caller, Role::Deploy, env)?;
        rollback_request(
            env,
            RollbackBody {
                mode: self.mode.clone(),
                to: self.to.clone().filter(|t| !t.is_empty()),
                backup: None,
                db_strategy: None,
                reason: self.reason.trim().to_string(),
                force: false,
            },
            who.caller.actor(),
        )
    }
}

/// The plan, in the CLI's words, with the confirmation to go ahead (or the refusals).
pub async fn plan(
    state: &AppState,
    who: &SignedIn<'_>,
    env: &str,
    f: &RollbackForm,
) -> ApiResult<String> {
    let req = f.request(state, env, who)?;
    let plan = rb::plan(&state.agent, &req)
        .await
        .map_err(|e| ApiError::conflict(format!("rollback refused: {e}")))?;
    let mut out = format!(
        "<h1>Rollback of {} ({})</h1><ul class=\"plan\">",
        esc(&plan.environment),
        plan.mode.word()
    );
    for s in &plan.steps {
        let _ = write!(out, "<li>{}</li>", esc(s));
    }
    out.push_str("</ul>");
    if let Some(loss) = &plan.data_loss {
        let _ = write!(out, "<p class=\"loss\" role=\"alert\">! {}</p>", esc(loss));
    }
    if !plan.refusals.is_empty() {
        let _ = write!(
            out,
            "<p class=\"refusal\" role=\"alert\">refusing to roll back: {}</p><p><a href=\"/environments/{}\">Back</a></p>",
            esc(&plan.refusals.join("; ")),
            url(env)
        );
        return Ok(out);
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/environments/{}/rollback\" class=\"confirm\">{}\
         <input type=\"hidden\" name=\"mode\" value=\"{}\"><input type=\"hidden\" name=\"to\" value=\"{}\">\
         <input type=\"hidden\" name=\"reason\" value=\"{}\">\
         <p>Roll back {} to {}?</p><div class=\"buttons\"><button type=\"submit\" class=\"danger\">Roll back {} to {}</button>\
         <a href=\"/environments/{}\">Cancel</a></div></form>",
        url(env),
        csrf_field(who),
        esc(f.mode.as_deref().unwrap_or("app")),
        esc(&plan.to.id),
        esc(&req.reason),
        esc(&plan.environment),
        esc(&plan.to.id),
        esc(&plan.environment),
        esc(&plan.to.id),
        url(env)
    );
    Ok(out)
}

/// Runs the confirmed rollback; what it did, step by step.
pub async fn rollback(
    state: &AppState,
    who: &SignedIn<'_>,
    env: &str,
    f: &RollbackForm,
) -> ApiResult<String> {
    let req = f.request(state, env, who)?;
    let outcome = rollback_now(state, env, &req).await?;
    let mut out = format!(
        "<h1>Rollback {} {}</h1><ul class=\"plan\">",
        esc(&outcome.record.id),
        esc(&outcome.record.status.to_string())
    );
    for s in &outcome.steps {
        let _ = write!(
            out,
            "<li>✓ {} <small>{}</small> {}</li>",
            esc(&s.name),
            took(s.duration_ms as i64),
            esc(&s.detail)
        );
    }
    let _ = write!(
        out,
        "</ul><p class=\"done\" role=\"status\">{} is live ({} agent time)</p><p><a href=\"/\">Back to the board</a></p>",
        esc(outcome.record.to_release.as_deref().unwrap_or("?")),
        took(outcome.total_ms as i64)
    );
    Ok(out)
}
