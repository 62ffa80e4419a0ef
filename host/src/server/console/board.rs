//! The board: every environment the signed-in token may see, with its live release (version,
//! schema version, age, who deployed it), the run going or waiting, the health of the last
//! checks and the lock holder. Refreshed live by the environments' events.

use std::fmt::Write;

use super::page::{ago, badge, esc, url};
use crate::server::error::ApiResult;
use crate::server::session::SignedIn;
use crate::server::state::AppState;
use crate::store::QueueState;

/// The board's `<main>`.
pub async fn main(state: &AppState, who: &SignedIn<'_>) -> ApiResult<String> {
    let store = &state.agent.store;
    let mut rows = String::new();
    let names: Vec<&String> = state
        .agent
        .config
        .environments
        .keys()
        .filter(|e| who.caller.covers(e))
        .collect();
    let waiting = store.pending_approvals(None).await?;
    for name in &names {
        let status = state.agent.status(name).await?;
        let pending = store.pending(name).await?;
        let live = match &status.live {
            Some(r) => {
                let by = store
                    .deployment(&r.deployment_id)
                    .await?
                    .map(|d| d.actor)
                    .unwrap_or_else(|| "?".into());
                format!(
                    "<td data-label=\"Live\"><strong class=\"version\">{}</strong> <small>{}</small></td>\
                     <td data-label=\"Schema\">{}</td><td data-label=\"Age\">{}</td><td data-label=\"By\">{}</td>",
                    esc(&r.version),
                    esc(&r.id),
                    esc(r.schema_version.as_deref().unwrap_or("–")),
                    ago(r.promoted_at.unwrap_or(r.created_at)),
                    esc(&by)
                )
            }
            None => "<td data-label=\"Live\">nothing live</td><td data-label=\"Schema\">–</td><td data-label=\"Age\">–</td><td data-label=\"By\">–</td>".into(),
        };
        let mut run = String::new();
        if let Some(p) = pending.iter().find(|p| p.state == QueueState::Running) {
            let stage = store
                .deployment(&p.id)
                .await?
                .and_then(|d| d.stage)
                .unwrap_or_else(|| "starting".into());
            let gate = waiting.iter().find(|a| a.deployment_id == p.id);
            let _ = write!(
                run,
                "<a href=\"/runs/{}\">{}</a> {} <small>{}</small>",
                url(&p.id),
                esc(p.version.as_deref().unwrap_or(&p.id)),
                if gate.is_some() {
                    badge("waiting")
                } else {
                    badge("running")
                },
                esc(&match gate {
                    Some(a) => format!("approval before {}", a.gate),
                    None => stage,
                })
            );
            if let Some(agent) = &p.claimed_by {
                let _ = write!(run, " <small class=\"agent\">on {}</small>", esc(agent));
            }
        }
        let queued = pending
            .iter()
            .filter(|p| p.state == QueueState::Queued)
            .count();
        if queued > 0 {
            let _ = write!(run, " <small>+{queued} queued</small>");
        }
        if run.is_empty() {
            match &status.last {
                Some(d) => {
                    let _ = write!(
                        run,
                        "last: <a href=\"/runs/{}\">{}</a> {}",
                        url(&d.id),
                        esc(&d.version),
                        badge(d.status.as_str())
                    );
                }
                None => run.push_str("no runs yet"),
            }
        }
        if !status.interrupted.is_empty() {
            let _ = write!(
                run,
                " {} <small>run <code>deploy-agent recover</code></small>",
                badge("interrupted")
            );
        }
        let health = match &status.last {
            Some(d) => {
                let ev = store.evidence(&d.id).await?;
                let checks: Vec<_> = ev.iter().filter(|e| e.kind == "check").collect();
                let failed: Vec<&str> = checks
                    .iter()
                    .filter(|e| e.outcome != "pass")
                    .map(|e| e.name.as_str())
                    .collect();
                if checks.is_empty() {
                    "no checks recorded".to_string()
                } else if failed.is_empty() {
                    format!("{} {} check(s)", badge("pass"), checks.len())
                } else {
                    format!("{} {}", badge("fail"), esc(&failed.join(", ")))
                }
            }
            None => "–".into(),
        };
        let lock = match &status.lock {
            Some(l) => format!(
                "{} <small>since {}</small>",
                esc(&l.owner),
                ago(l.acquired_at)
            ),
            None => "free".into(),
        };
        let _ = write!(
            rows,
            "<tr data-env=\"{e}\"><th scope=\"row\"><a href=\"/environments/{u}\">{e}</a></th>{live}\
             <td data-label=\"Run\" class=\"run\">{run}</td><td data-label=\"Checks\">{health}</td><td data-label=\"Lock\">{lock}</td></tr>",
            e = esc(name),
            u = url(name),
        );
    }
    let agents = agents_section(state, who).await?;
    Ok(format!(
        "<h1>Board</h1><p class=\"sub\">{} environment(s) · updates live</p>\
         <table class=\"board\"><thead><tr><th scope=\"col\">Environment</th><th scope=\"col\">Live release</th>\
         <th scope=\"col\">Schema</th><th scope=\"col\">Age</th><th scope=\"col\">Deployed by</th><th scope=\"col\">Run</th>\
         <th scope=\"col\">Last checks</th><th scope=\"col\">Lock</th></tr></thead><tbody>{rows}</tbody></table>{agents}",
        names.len()
    ))
}

/// The agents sharing the state store (those serving an environment the token may see), alive
/// or dead by their heartbeat.
async fn agents_section(state: &AppState, who: &SignedIn<'_>) -> ApiResult<String> {
    let now = crate::store::now_ms();
    let mut rows = String::new();
    for a in state.agent.store.agents().await? {
        let envs: Vec<&str> = a
            .environments
            .iter()
            .filter(|e| who.caller.covers(e))
            .map(String::as_str)
            .collect();
        if envs.is_empty() {
            continue;
        }
        let _ = write!(
            rows,
            "<tr data-agent=\"{n}\"><th scope=\"row\">{n}</th><td data-label=\"Health\">{}</td>\
             <td data-label=\"Host\">{} <small>pid {}</small></td><td data-label=\"Heartbeat\">{:.1} s ago</td>\
             <td data-label=\"Version\">{}</td><td data-label=\"Environments\">{}</td></tr>",
            badge(&a.health),
            esc(&a.host),
            a.pid,
            (now - a.heartbeat_at) as f64 / 1e3,
            esc(&a.version),
            esc(&envs.join(", ")),
            n = esc(&a.name),
        );
    }
    if rows.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "<h2>Agents</h2><table class=\"agents\"><thead><tr><th scope=\"col\">Agent</th><th scope=\"col\">Health</th>\
         <th scope=\"col\">Host</th><th scope=\"col\">Heartbeat</th><th scope=\"col\">Version</th>\
         <th scope=\"col\">Environments</th></tr></thead><tbody>{rows}</tbody></table>"
    ))
}
