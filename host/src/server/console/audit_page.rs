//! The audit log: its newest entries, and whether its hash chain verifies.

use std::fmt::Write;

use super::page::{ago, badge, esc};
use crate::config::Role;
use crate::server::error::ApiResult;
use crate::server::session::SignedIn;
use crate::server::state::AppState;

/// Entries shown.
const SHOWN: usize = 200;

/// The audit page's `<main>`: one environment's entries (`env`), or every entry for a token
/// not limited to some environments. A limited token sees its environments' entries only,
/// and the chain's verification (which reads every entry) is not shown to it.
pub async fn main(state: &AppState, who: &SignedIn<'_>, env: Option<&str>) -> ApiResult<String> {
    let store = &state.agent.store;
    let mut out = String::from("<h1>Audit log</h1>");
    let entries = match env {
        Some(e) => {
            state.known_env(&who.caller, Role::Read, e)?;
            store.audit_entries(Some(e), SHOWN).await?
        }
        None if who.caller.limited() => {
            let mut all = Vec::new();
            for e in state.agent.config.environments.keys() {
                if who.caller.covers(e) {
                    all.extend(store.audit_entries(Some(e), SHOWN).await?);
                }
            }
            all.sort_by_key(|a| a.seq);
            let skip = all.len().saturating_sub(SHOWN);
            all.split_off(skip)
        }
        None => store.audit_entries(None, SHOWN).await?,
    };
    if who.caller.limited() {
        out.push_str("<p class=\"sub\">The chain is verified with a token for every environment; this one sees its own environments' entries.</p>");
    } else {
        let report = store.audit_verify().await?;
        if report.problems.is_empty() {
            let _ = write!(
                out,
                "<p class=\"chain\">{} hash chain of {} entries verifies; head <code>{}</code></p>",
                badge("intact"),
                report.entries,
                esc(&report.head)
            );
        } else {
            let _ = write!(
                out,
                "<div class=\"chain\" role=\"alert\">{} the hash chain does not verify:<ul>{}</ul></div>",
                badge("broken"),
                report
                    .problems
                    .iter()
                    .map(|p| format!("<li>{}</li>", esc(p)))
                    .collect::<String>()
            );
        }
    }
    out.push_str("<table class=\"audit\"><thead><tr><th scope=\"col\">#</th><th scope=\"col\">When</th><th scope=\"col\">Who</th><th scope=\"col\">Action</th><th scope=\"col\">Environment</th><th scope=\"col\">Subject</th><th scope=\"col\">Why</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
    for a in entries.iter().rev() {
        let _ = write!(
            out,
            "<tr data-action=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.action),
            a.seq,
            ago(a.at),
            esc(&a.actor),
            esc(&a.action),
            esc(a.environment.as_deref().unwrap_or("")),
            esc(a.subject.as_deref().unwrap_or("")),
            esc(a.why.as_deref().unwrap_or("")),
            esc(a.detail.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</tbody></table>");
    Ok(out)
}
