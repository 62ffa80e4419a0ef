//! A run's incident report in the console: detection, decision, recovery, what was restored,
//! the timeline and the audit chain's verification, with the Markdown to download (the same
//! report as `deploy-agent incident report RUN` and `GET /v1/runs/{id}/incident`).

use std::fmt::Write;

use super::page::{esc, url};
use crate::pipeline::incident::{self, IncidentReport};
use crate::server::error::{ApiError, ApiResult};
use crate::server::session::SignedIn;
use crate::server::state::AppState;

/// The report for `id`, if this session may see its run.
pub async fn report(state: &AppState, who: &SignedIn<'_>, id: &str) -> ApiResult<IncidentReport> {
    state
        .agent
        .store
        .deployment(id)
        .await?
        .filter(|d| who.caller.covers(&d.environment))
        .ok_or_else(|| ApiError::not_found("run"))?;
    incident::report(&state.agent, id).await.map_err(|e| {
        tracing::error!("console: incident report of {id}: {e}");
        ApiError::unavailable("the incident report could not be read from the state store")
    })
}

/// The page's `<main>`, and its title.
pub async fn main(state: &AppState, who: &SignedIn<'_>, id: &str) -> ApiResult<(String, String)> {
    let r = report(state, who, id).await?;
    let t = crate::time::rfc3339_ms;
    let mut out = String::new();
    let _ = write!(
        out,
        "<h1>Incident: <code>{}</code></h1><p class=\"sub\"><a href=\"/runs/{u}\">the run</a> · <a href=\"/runs/{u}/incident.md\" download=\"incident-{}.md\">Markdown</a></p>",
        esc(id),
        esc(id),
        u = url(id)
    );
    let _ = write!(
        out,
        "<section aria-labelledby=\"summary-h\"><h2 id=\"summary-h\">Summary</h2><p>{}</p><p>{}</p></section>",
        esc(&r.summary),
        esc(&r.impact)
    );
    let when = |at: Option<i64>| at.map_or("–".to_string(), t);
    let _ = write!(
        out,
        "<dl class=\"facts\"><dt>Detected</dt><dd>{} — {}</dd><dt>Decided</dt><dd>{} — {}</dd><dt>Recovered</dt><dd>{}{}</dd><dt>Restored</dt><dd>{}</dd></dl>",
        esc(&when(r.detected_at)),
        esc(r.detection.as_deref().unwrap_or("–")),
        esc(&when(r.decided_at)),
        esc(r.decision.as_deref().unwrap_or("–")),
        esc(&when(r.recovered_at)),
        r.time_to_recovery_ms
            .map(|ms| format!(" (time to recovery {:.1} s)", ms as f64 / 1e3))
            .unwrap_or_default(),
        esc(&if r.restored.is_empty() {
            "–".to_string()
        } else {
            r.restored.join("; ")
        })
    );
    out.push_str("<section aria-labelledby=\"timeline-h\"><h2 id=\"timeline-h\">Timeline</h2><table><thead><tr><th scope=\"col\">Time (UTC)</th><th scope=\"col\">Source</th><th scope=\"col\">Who</th><th scope=\"col\">What</th><th scope=\"col\">Why</th></tr></thead><tbody>");
    for e in &r.timeline {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t(e.at)),
            e.source,
            esc(e.who.as_deref().unwrap_or("")),
            esc(&e.what),
            esc(e.why.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</tbody></table></section>");
    let _ = write!(
        out,
        "<p class=\"sub\">The audit chain {} ({} entries, head <code>{}</code>).</p>",
        if r.audit.intact {
            "verifies"
        } else {
            "does NOT verify"
        },
        r.audit.entries,
        esc(&r.audit.head)
    );
    Ok((format!("Incident {id}"), out))
}
