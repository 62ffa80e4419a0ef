//! A run's page: its stages on a time axis (the current one live), what it is doing now,
//! its checks and analysis measurements as they arrive (each analysis charted against its
//! bounds), the events its notifiers were sent, its journal, a "crashed / resumed here" mark
//! on a resumed run, and the actions it allows (approve / reject at a gate, cancel while
//! queued).

use std::fmt::Write;

use super::page::{ago, badge, csrf_field, esc, took, url};
use super::svg;
use crate::config::Role;
use crate::pipeline::events::EventType;
use crate::server::api::run_view;
use crate::server::error::{ApiError, ApiResult};
use crate::server::session::SignedIn;
use crate::server::state::AppState;
use crate::store::{Evidence, Step, now_ms};

/// Where a resumed run was picked up: the start of the first stage begun after one left
/// unfinished by the agent that died.
fn resumed_at(steps: &[Step]) -> Option<i64> {
    let cut = steps
        .iter()
        .position(|s| s.finished_at.is_none() && s.status == "started")?;
    steps.get(cut + 1).map(|s| s.started_at)
}

/// The run page's `<main>`, and its title.
pub async fn main(state: &AppState, who: &SignedIn<'_>, id: &str) -> ApiResult<(String, String)> {
    let view = run_view(state, id)
        .await?
        .filter(|v| who.caller.covers(&v.environment))
        .ok_or_else(|| ApiError::not_found("run"))?;
    let mut out = String::new();
    let version = view
        .deployment
        .as_ref()
        .map(|d| d.version.clone())
        .or_else(|| view.queue.as_ref().and_then(|q| q.version.clone()))
        .unwrap_or_else(|| "(from the artifact)".into());
    let title = format!("{version} on {}", view.environment);
    let _ = write!(
        out,
        "<h1>Run <code>{}</code></h1><p class=\"sub\"><a href=\"/environments/{}\">{}</a> · version <strong>{}</strong> · {}</p>",
        esc(id),
        url(&view.environment),
        esc(&view.environment),
        esc(&version),
        badge(&view.status)
    );
    out.push_str("<dl class=\"facts\">");
    if let Some(d) = &view.deployment {
        let _ = write!(
            out,
            "<dt>Started by</dt><dd>{}</dd><dt>Why</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>",
            esc(&d.actor),
            esc(d.reason.as_deref().unwrap_or("–")),
            ago(d.started_at)
        );
        if let Some(f) = d.finished_at {
            let _ = write!(out, "<dt>Took</dt><dd>{}</dd>", took(f - d.started_at));
        }
        let _ = write!(
            out,
            "<dt>Schema</dt><dd>{} → {}</dd><dt>Backup</dt><dd>{}</dd>",
            esc(d.schema_before.as_deref().unwrap_or("–")),
            esc(d.schema_after.as_deref().unwrap_or("–")),
            esc(d.backup_id.as_deref().unwrap_or("none"))
        );
        if let Some(e) = &d.error {
            let _ = write!(
                out,
                "<dt>Error</dt><dd class=\"error\">{} · <a href=\"/runs/{}/incident\">Incident report</a></dd>",
                esc(e),
                url(id)
            );
        }
        if let Some(prev) = &d.resumed_from {
            let _ = write!(
                out,
                "<dt>Resumed</dt><dd>{} crashed part-way; {} resumed it from its journal</dd>",
                esc(prev),
                esc(&d.owner)
            );
        }
    } else if let Some(q) = &view.queue {
        let _ = write!(
            out,
            "<dt>Queued by</dt><dd>{}</dd><dt>Queued</dt><dd>{}</dd>{}",
            esc(&q.actor),
            ago(q.enqueued_at),
            view.position
                .map(|p| format!("<dt>Place</dt><dd>{p} in the queue</dd>"))
                .unwrap_or_default()
        );
    }
    out.push_str("</dl>");

    // Actions this token may take on it.
    let env = &view.environment;
    for gate in &view.waiting {
        if who.caller.require_env(Role::Approve, env).is_ok() {
            let _ = write!(
                out,
                "<section class=\"gate\" aria-labelledby=\"gate-h\"><h2 id=\"gate-h\">Waiting for approval before {}</h2>\
                 <form method=\"post\" action=\"/runs/{u}/decide\">{}\
                 <label for=\"reason\">Reason (recorded in the audit log)</label>\
                 <input id=\"reason\" name=\"reason\" required autocomplete=\"off\">\
                 <div class=\"buttons\"><button type=\"submit\" name=\"decision\" value=\"approve\" class=\"primary\">Approve</button>\
                 <button type=\"submit\" name=\"decision\" value=\"reject\" class=\"danger\">Reject</button></div></form></section>",
                esc(&gate.gate),
                csrf_field(who),
                u = url(id)
            );
        } else {
            let _ = write!(
                out,
                "<section class=\"gate\"><h2>Waiting for approval before {}</h2><p>Your token ({}) may not approve in {}.</p></section>",
                esc(&gate.gate),
                who.role,
                esc(env)
            );
        }
    }
    if view.status == "queued" && who.caller.require_env(Role::Deploy, env).is_ok() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/runs/{}/cancel\" class=\"inline\">{}<button type=\"submit\" class=\"danger\">Cancel this queued run</button></form>",
            url(id),
            csrf_field(who)
        );
    }

    // What it is doing now, and what the notifiers were told (kept in the daemon's memory).
    let want = id.to_string();
    let (events, _) = state
        .agent
        .events()
        .subscribe(None, move |e| e.deployment_id == want);
    if view.status == "running"
        && let Some(p) = events.iter().rev().find(|e| e.kind == EventType::Progress)
    {
        let _ = write!(
            out,
            "<p class=\"now\" role=\"status\"><span class=\"badge busy\">now</span> {}{}</p>",
            esc(&p.summary),
            p.duration_ms
                .map(|d| format!(" <small>({})</small>", took(d as i64)))
                .unwrap_or_default()
        );
    }
    out.push_str("<h2>Timeline</h2>");
    let resumed = view
        .deployment
        .as_ref()
        .filter(|d| d.resumed_from.is_some())
        .and_then(|_| resumed_at(&view.steps));
    out.push_str(&svg::timeline(&view.steps, now_ms(), resumed));

    evidence_section(&mut out, &view.evidence);

    out.push_str("<h2>Notifications</h2>");
    let sent: Vec<_> = events
        .iter()
        .filter(|e| e.kind != EventType::Progress)
        .collect();
    if sent.is_empty() {
        out.push_str("<p>None kept: this daemon has not seen this run's events (they are kept in memory, since it started).</p>");
    } else {
        out.push_str("<ol class=\"events\">");
        for e in sent {
            let _ = write!(
                out,
                "<li data-kind=\"{k}\"><code>{k}</code> {} {}</li>",
                esc(&e.summary),
                ago(e.at_ms as i64),
                k = e.kind.as_str()
            );
        }
        out.push_str("</ol>");
    }

    if !view.hosts.is_empty() {
        hosts_section(&mut out, &view.hosts);
    }
    if !view.traffic.is_empty() {
        traffic_section(&mut out, &view.traffic);
    }
    out.push_str("<h2>Journal</h2>");
    if view.steps.is_empty() {
        out.push_str("<p>Nothing journaled yet.</p>");
    } else {
        out.push_str("<table class=\"journal\"><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Stage</th><th scope=\"col\">Outcome</th><th scope=\"col\">Took</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
        for s in &view.steps {
            let _ = write!(
                out,
                "<tr data-stage=\"{st}\"><td>{}</td><td>{st}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.seq,
                badge(&s.status),
                s.finished_at
                    .map(|f| took(f - s.started_at))
                    .unwrap_or_else(|| "…".into()),
                esc(s.detail.as_deref().unwrap_or("")),
                st = esc(&s.stage),
            );
        }
        out.push_str("</tbody></table>");
    }
    Ok((title, out))
}

/// Each host's part of a run of an environment that spans hosts.
fn hosts_section(out: &mut String, hosts: &[crate::store::HostStep]) {
    out.push_str("<h2>Hosts</h2><table class=\"checks hosts\"><thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Batch</th><th scope=\"col\">Action</th><th scope=\"col\">State</th><th scope=\"col\">Took</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
    for h in hosts {
        let _ = write!(
            out,
            "<tr data-host=\"{host}\"><td>{host}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.batch + 1,
            h.action,
            badge(h.state.as_str()),
            match (h.started_at, h.finished_at) {
                (Some(s), Some(f)) => took(f - s),
                (Some(_), None) => "…".into(),
                _ => String::new(),
            },
            esc(h.detail.as_deref().unwrap_or("")),
            host = esc(&h.host),
        );
    }
    out.push_str("</tbody></table>");
}

/// A canary's steps: the weight now first, then each step with how far it got.
fn traffic_section(out: &mut String, steps: &[crate::store::TrafficStep]) {
    use crate::store::TrafficPhase;
    let now = steps.last().map_or(0, |s| match s.phase {
        TrafficPhase::Aborted => 0,
        _ => s.weight,
    });
    let _ = write!(
        out,
        "<h2>Traffic</h2><p class=\"weight\">The release has <strong data-weight=\"{now}\">{now} %</strong> of traffic.</p><table class=\"checks traffic\"><thead><tr><th scope=\"col\">Step</th><th scope=\"col\">Weight</th><th scope=\"col\">State</th><th scope=\"col\">Took</th><th scope=\"col\">Detail</th></tr></thead><tbody>"
    );
    for s in steps {
        let _ = write!(
            out,
            "<tr data-step=\"{}\"><td>{}</td><td>{} %</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.step + 1,
            s.step + 1,
            s.weight,
            badge(s.phase.as_str()),
            took(s.updated_at - s.started_at),
            esc(s.detail.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
}

fn evidence_section(out: &mut String, evidence: &[Evidence]) {
    out.push_str("<h2>Checks and analysis</h2>");
    if evidence.is_empty() {
        out.push_str("<p>No checks or measurements yet.</p>");
        return;
    }
    let mut names: Vec<&str> = Vec::new();
    for e in evidence.iter().filter(|e| e.kind == "analysis") {
        if !names.contains(&e.name.as_str()) {
            names.push(&e.name);
        }
    }
    for n in names {
        let points: Vec<&Evidence> = evidence
            .iter()
            .filter(|e| e.kind == "analysis" && e.name == n)
            .collect();
        let _ = write!(
            out,
            "<figure>{}<figcaption>analysis <code>{}</code>: {}</figcaption></figure>",
            svg::analysis_chart(n, &points),
            esc(n),
            points
                .iter()
                .map(|p| match p.value {
                    Some(v) => format!("{v} ({})", p.outcome),
                    None => "inconclusive".into(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out.push_str("<table class=\"checks\"><thead><tr><th scope=\"col\">Stage</th><th scope=\"col\">Kind</th><th scope=\"col\">Name</th><th scope=\"col\">Outcome</th><th scope=\"col\">Value</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
    for e in evidence {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.stage),
            esc(&e.kind),
            esc(&e.name),
            badge(&e.outcome),
            e.value.map(|v| v.to_string()).unwrap_or_default(),
            esc(e.detail.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</tbody></table>");
}
