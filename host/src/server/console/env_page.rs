//! An environment's page: its runs (filtered by outcome), its releases, its backups (age,
//! size, when last verified), its scheduled jobs and, for a token that may deploy there, the emergency rollback
//! form.

use std::fmt::Write;

use super::page::{ago, badge, csrf_field, esc, took, url};
use crate::config::Role;
use crate::db::backup;
use crate::server::error::ApiResult;
use crate::server::session::SignedIn;
use crate::server::state::AppState;
use crate::units::human_size;

/// Runs shown at most.
const RUNS: usize = 100;

/// The environment page's `<main>`; `outcome` filters the runs (`succeeded`, `failed`...).
pub async fn main(
    state: &AppState,
    who: &SignedIn<'_>,
    env: &str,
    outcome: Option<&str>,
) -> ApiResult<String> {
    state.known_env(&who.caller, Role::Read, env)?;
    let store = &state.agent.store;
    let mut out = format!(
        "<h1>{}</h1><p class=\"sub\"><a href=\"/\">Board</a> · runs, releases, backups</p>",
        esc(env)
    );
    let releases = store.releases(env).await?;
    if who.caller.require_env(Role::Deploy, env).is_ok() && releases.len() > 1 {
        rollback_form(&mut out, who, env, &releases);
    }

    // Runs, by outcome.
    let runs = store.deployments(env, RUNS).await?;
    out.push_str("<h2 id=\"runs\">Runs</h2><form method=\"get\" class=\"filter\"><label for=\"outcome\">Outcome</label><select id=\"outcome\" name=\"outcome\">");
    for (value, label) in [
        ("", "any"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("rolled_back", "rolled back"),
        ("running", "running"),
        ("superseded", "superseded"),
    ] {
        let _ = write!(
            out,
            "<option value=\"{value}\"{}>{label}</option>",
            if outcome.unwrap_or("") == value {
                " selected"
            } else {
                ""
            }
        );
    }
    out.push_str("</select><button type=\"submit\">Filter</button></form>");
    out.push_str("<table class=\"runs\"><thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Version</th><th scope=\"col\">Outcome</th><th scope=\"col\">Started</th><th scope=\"col\">Took</th><th scope=\"col\">By</th></tr></thead><tbody>");
    let mut shown = 0;
    for d in runs
        .iter()
        .filter(|d| outcome.is_none_or(|o| o.is_empty() || d.status.as_str() == o))
    {
        shown += 1;
        let _ = write!(
            out,
            "<tr><td><a href=\"/runs/{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url(&d.id),
            esc(&d.id),
            esc(&d.version),
            badge(d.status.as_str()),
            ago(d.started_at),
            d.finished_at
                .map(|f| took(f - d.started_at))
                .unwrap_or_else(|| "…".into()),
            esc(&d.actor)
        );
    }
    out.push_str("</tbody></table>");
    if shown == 0 {
        out.push_str("<p>No runs match.</p>");
    }

    out.push_str("<h2 id=\"releases\">Releases</h2><table class=\"releases\"><thead><tr><th scope=\"col\">Release</th><th scope=\"col\">Version</th><th scope=\"col\">State</th><th scope=\"col\">Schema</th><th scope=\"col\">Backup</th><th scope=\"col\">Created</th></tr></thead><tbody>");
    for r in &releases {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.id),
            esc(&r.version),
            badge(r.state.as_str()),
            esc(r.schema_version.as_deref().unwrap_or("–")),
            esc(r.backup_id.as_deref().unwrap_or("–")),
            ago(r.created_at)
        );
    }
    out.push_str("</tbody></table>");

    out.push_str("<h2 id=\"backups\">Backups</h2>");
    let environment = state
        .agent
        .config
        .environment(env)
        .ok()
        .map(|e| e.backup.dir.clone());
    let listed = match environment {
        Some(dir) => tokio::task::spawn_blocking(move || backup::list(&dir))
            .await
            .ok()
            .map(|r| r.map(|(all, _)| all).map_err(|e| e.to_string())),
        None => None,
    };
    match listed {
        Some(Ok(all)) if !all.is_empty() => {
            let verified = store.audit_entries(Some(env), 1000).await?;
            out.push_str("<table class=\"backups\"><thead><tr><th scope=\"col\">Backup</th><th scope=\"col\">Taken</th><th scope=\"col\">Size</th><th scope=\"col\">Schema</th><th scope=\"col\">Encrypted</th><th scope=\"col\">Verified</th></tr></thead><tbody>");
            for m in &all {
                let last = verified.iter().rev().find(|a| {
                    a.action == "backup.verified" && a.subject.as_deref() == Some(m.id.as_str())
                });
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&m.id),
                    m.started_ms.map(ago).unwrap_or_else(|| esc(&m.started_at)),
                    human_size(m.stored_bytes),
                    m.schema_version.map_or("–".into(), |v| v.to_string()),
                    if m.encryption.is_some() { "yes" } else { "no" },
                    match last {
                        Some(a) => format!("{} {}", badge("passed"), ago(a.at)),
                        None => "not yet <small>(<code>deploy-agent backup verify</code>)</small>"
                            .into(),
                    }
                );
            }
            out.push_str("</tbody></table>");
        }
        Some(Err(e)) => {
            let _ = write!(
                out,
                "<p class=\"error\">The backups cannot be listed: {}</p>",
                esc(&e)
            );
        }
        _ => out.push_str("<p>No backups.</p>"),
    }
    schedule(&mut out, state, env).await?;
    Ok(out)
}

/// The scheduled jobs: when each runs, its next runs, how its last run went.
async fn schedule(out: &mut String, state: &AppState, env: &str) -> ApiResult<()> {
    let jobs = crate::pipeline::scheduler::listing(&state.agent, Some(env), crate::store::now_ms())
        .await?;
    out.push_str("<h2 id=\"schedule\">Scheduled jobs</h2>");
    if jobs.is_empty() {
        out.push_str("<p>Nothing scheduled <small>(<code>[environments.NAME.schedule]</code> in agent.toml)</small>.</p>");
        return Ok(());
    }
    out.push_str("<table class=\"schedule\"><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">When</th><th scope=\"col\">Next runs</th><th scope=\"col\">Last run</th></tr></thead><tbody>");
    for j in &jobs {
        let last = match &j.last {
            Some(r) => format!(
                "{} {} <small>{}</small>",
                badge(r.status.as_str()),
                ago(r.updated_at),
                esc(r.detail.as_deref().unwrap_or(""))
            ),
            None => "not yet".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code> <small>{}</small></td><td>{}</td><td>{}</td></tr>",
            esc(&j.job),
            esc(&j.schedule),
            esc(&j.description),
            esc(&j.next.join(", ")),
            last
        );
    }
    out.push_str("</tbody></table>");
    Ok(())
}

fn rollback_form(
    out: &mut String,
    who: &SignedIn<'_>,
    env: &str,
    releases: &[crate::store::ReleaseRecord],
) {
    let _ = write!(
        out,
        "<section class=\"rollback\" aria-labelledby=\"rb-h\"><h2 id=\"rb-h\">Emergency rollback</h2>\
         <form method=\"post\" action=\"/environments/{}/rollback/plan\">{}\
         <fieldset><legend>What goes back</legend>\
         <label><input type=\"radio\" name=\"mode\" value=\"app\" checked> the app only</label>\
         <label><input type=\"radio\" name=\"mode\" value=\"db\"> the database only</label>\
         <label><input type=\"radio\" name=\"mode\" value=\"full\"> both (full)</label></fieldset>\
         <label for=\"rb-to\">To release</label><select id=\"rb-to\" name=\"to\"><option value=\"\">the one before the live one</option>",
        url(env),
        csrf_field(who)
    );
    for r in releases {
        let _ = write!(
            out,
            "<option value=\"{}\">{} ({}, {})</option>",
            esc(&r.id),
            esc(&r.id),
            esc(&r.version),
            r.state.as_str()
        );
    }
    out.push_str(
        "</select><label for=\"rb-reason\">Reason (recorded, audited, sent to the notifiers)</label>\
         <input id=\"rb-reason\" name=\"reason\" required autocomplete=\"off\">\
         <button type=\"submit\">Show the plan</button></form></section>",
    );
}
