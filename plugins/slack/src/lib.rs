//! The Slack notifier: one Block Kit message per deployment event, with a plain `text`
//! fallback, through an incoming webhook or `chat.postMessage`.
//!
//! - **Webhook**: the secret `webhook` holds the URL's path after `/services/`
//!   (`T…/B…/…`); the host puts it into the URL only for requests to the hosts it is bound
//!   to. Slack answers `ok`, or a plain-text error code with a status.
//! - **chat.postMessage**: the secret `token` holds the bot token (`xoxb-…`) and `channel`
//!   names the channel. With a writable `thread_dir` granted, the events of one deployment go
//!   into one thread: the first message's `ts` is kept there per run; the final outcome is
//!   also broadcast to the channel.
//!
//! Block Kit's limits are kept: at most 50 blocks, section text at most 3000 characters,
//! header text at most 150; what does not fit is cut with a note saying so. HTTP 429 is
//! retryable with `Retry-After`; Slack's error codes become messages that say what to fix.

use std::fs;
use std::path::PathBuf;

use deploy_agent_sdk::http::{self, Response};
use deploy_agent_sdk::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// The plugin.
pub struct Slack;

/// Block Kit: most blocks in one message.
const MAX_BLOCKS: usize = 50;
/// Block Kit: longest section text.
const MAX_SECTION: usize = 3000;
/// Block Kit: longest header text.
const MAX_HEADER: usize = 150;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// `webhook` or `api` (chat.postMessage).
    #[serde(default = "default_mode")]
    mode: String,
    /// Where incoming webhooks live.
    #[serde(default = "default_hooks")]
    webhook_base: String,
    /// The Web API's base URL.
    #[serde(default = "default_api")]
    api: String,
    /// The channel id or name, for `api`.
    #[serde(default)]
    channel: Option<String>,
    /// A writable granted directory where thread timestamps are kept, for `api`.
    #[serde(default)]
    thread_dir: Option<String>,
    /// A link to the agent's logs for a run; `{run}` and `{env}` are filled in.
    #[serde(default)]
    logs_url: Option<String>,
}

fn default_mode() -> String {
    "webhook".into()
}
fn default_hooks() -> String {
    "https://hooks.slack.com/services".into()
}
fn default_api() -> String {
    "https://slack.com/api".into()
}

/// Cuts `text` to `max` characters, saying so.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let note = "… (truncated)";
    let keep = max - note.chars().count();
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(note);
    out
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn icon(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Started => ":rocket:",
        EventKind::StageStarted => ":hourglass_flowing_sand:",
        EventKind::StageSucceeded => ":white_check_mark:",
        EventKind::StageFailed => ":x:",
        EventKind::ApprovalRequested => ":raised_hand:",
        EventKind::Succeeded => ":large_green_circle:",
        EventKind::Failed => ":red_circle:",
        EventKind::RolledBack => ":rewind:",
    }
}

fn outcome(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Started => "started",
        EventKind::StageStarted => "stage started",
        EventKind::StageSucceeded => "stage done",
        EventKind::StageFailed => "stage failed",
        EventKind::ApprovalRequested => "waiting for approval",
        EventKind::Succeeded => "succeeded",
        EventKind::Failed => "failed",
        EventKind::RolledBack => "rolled back",
    }
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    }
}

/// The message: blocks within Block Kit's limits, and the `text` fallback.
fn message(event: &Event, links: &[(String, String)]) -> Value {
    let title = cut(
        &format!("{} {}", icon(event.kind), event.summary),
        MAX_HEADER,
    );
    let mut fields = vec![
        format!("*Environment*\n{}", escape(&event.environment)),
        format!("*Version*\n{}", escape(&event.version)),
        format!("*Who*\n{}", escape(&event.actor)),
        format!("*Outcome*\n{}", outcome(event.kind)),
    ];
    if let Some(stage) = &event.stage {
        fields.push(format!("*Stage*\n{}", escape(stage)));
    }
    if let Some(ms) = event.duration_ms {
        fields.push(format!("*Duration*\n{}", duration(ms)));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title, "emoji": true}}),
        json!({"type": "section", "fields": fields.iter().map(|f| json!({"type": "mrkdwn", "text": cut(f, 2000)})).collect::<Vec<_>>()}),
    ];
    // Links before the reason: a reason long enough to be cut must not take them with it.
    if !links.is_empty() {
        let text = links
            .iter()
            .map(|(label, url)| format!("<{url}|{}>", escape(label)))
            .collect::<Vec<_>>()
            .join("  ·  ");
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&text, MAX_SECTION)}]}));
    }
    if let Some(detail) = &event.detail {
        let label = match event.kind {
            EventKind::RolledBack => "*Why, and the rollback taken*",
            _ => "*Reason*",
        };
        // A long reason spreads over several sections rather than being lost.
        let text = escape(detail);
        let chars: Vec<char> = text.chars().collect();
        for (i, part) in chars.chunks(MAX_SECTION - 40).enumerate() {
            let part: String = part.iter().collect();
            let body = if i == 0 {
                format!("{label}\n```{part}```")
            } else {
                format!("```{part}```")
            };
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&body, MAX_SECTION)}}));
        }
    }
    if blocks.len() > MAX_BLOCKS {
        let dropped = blocks.len() - (MAX_BLOCKS - 1);
        blocks.truncate(MAX_BLOCKS - 1);
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": format!("_{dropped} more block(s) left out: Slack allows {MAX_BLOCKS} per message_")}]}));
    }
    let mut text = format!(
        "{}: {} ({} on {})",
        outcome(event.kind),
        event.summary,
        event.version,
        event.environment
    );
    if let Some(detail) = &event.detail {
        text.push_str(&format!(": {}", cut(detail, 500)));
    }
    json!({"text": cut(&text, 3000), "blocks": blocks})
}

/// A webhook's plain-text error code in words.
fn webhook_error(r: &Response) -> PluginError {
    let code = r.text();
    let code = code.trim();
    let what = match code {
        "invalid_payload" => "Slack could not read the message (invalid_payload)".to_string(),
        "user_not_found" => "the webhook's user no longer exists (user_not_found)".to_string(),
        "channel_not_found" => {
            "the webhook's channel no longer exists (channel_not_found); create a new webhook"
                .to_string()
        }
        "channel_is_archived" => {
            "the webhook's channel is archived (channel_is_archived); unarchive it or point a new webhook elsewhere".to_string()
        }
        "action_prohibited" => {
            "an admin has restricted posting to this channel (action_prohibited)".to_string()
        }
        "invalid_token" | "no_service" | "no_service_id" | "no_team" | "team_disabled" => {
            format!("the webhook URL is not valid any more ({code}); create a new webhook")
        }
        other => format!("Slack webhook: {other}"),
    };
    match r.status {
        403 if code == "action_prohibited" => rejected(what),
        401 | 403 => unauthorized(what),
        404 | 410 if code.starts_with("no_") || code == "invalid_token" => unauthorized(what),
        _ => r.status_error(&what),
    }
}

/// A Web API `{ok:false, error}` in words.
fn api_error(error: &str) -> PluginError {
    match error {
        "not_authed" | "invalid_auth" | "account_inactive" | "token_revoked" | "token_expired"
        | "no_permission" | "missing_scope" => unauthorized(format!(
            "Slack refused the bot token ({error}); check the `token` secret and the app's chat:write scope"
        )),
        "channel_not_found" => rejected(format!(
            "Slack cannot find the channel ({error}); check `channel`, and invite the app to a private channel"
        )),
        "not_in_channel" => rejected(format!(
            "the app is not in the channel ({error}); invite it with /invite"
        )),
        "is_archived" => rejected(format!("the channel is archived ({error})")),
        "ratelimited" | "rate_limited" => retryable(format!("Slack: {error}"), None),
        "fatal_error" | "internal_error" | "service_unavailable" | "request_timeout" => {
            retryable(format!("Slack: {error}"), None)
        }
        other => rejected(format!("Slack: {other}")),
    }
}

fn links(s: &Settings, event: &Event) -> Vec<(String, String)> {
    let mut out = event.links.clone();
    if let Some(logs) = &s.logs_url {
        out.push((
            "logs".into(),
            logs.replace("{run}", &event.deployment_id)
                .replace("{env}", &event.environment),
        ));
    }
    out
}

fn thread_file(s: &Settings, run: &str) -> Option<PathBuf> {
    let dir = s.thread_dir.as_ref()?;
    if run.is_empty() {
        return None;
    }
    let safe: String = run
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(PathBuf::from(dir).join(format!("{safe}.ts")))
}

fn post_api(ctx: &Context, s: &Settings, event: &Event) -> Result<(), PluginError> {
    let channel = s
        .channel
        .clone()
        .ok_or_else(|| invalid_config("mode = \"api\" needs `channel`"))?;
    let token = ctx.secret("token")?;
    let mut body = message(event, &links(s, event));
    body["channel"] = json!(channel);
    let file = thread_file(s, &event.deployment_id);
    let thread = file.as_ref().and_then(|f| fs::read_to_string(f).ok());
    if let Some(ts) = &thread {
        body["thread_ts"] = json!(ts.trim());
        if matches!(
            event.kind,
            EventKind::Succeeded | EventKind::Failed | EventKind::RolledBack
        ) {
            body["reply_broadcast"] = json!(true);
        }
    }
    let url = format!("{}/chat.postMessage", s.api.trim_end_matches('/'));
    let r = http::post(&url)
        .header("authorization", token.bearer())
        .json(&body)?
        .send()?;
    if r.status == 429 {
        return Err(retryable(
            "Slack: rate limited (HTTP 429)",
            r.retry_after_ms().or(Some(1000)),
        ));
    }
    let r = r.error_for_status()?;
    let reply: Value = r.json()?;
    if reply["ok"] != true {
        return Err(api_error(
            reply["error"].as_str().unwrap_or("unknown_error"),
        ));
    }
    if thread.is_none()
        && let (Some(file), Some(ts)) = (file, reply["ts"].as_str())
        && let Err(e) = fs::write(&file, ts)
    {
        log::warn(format!(
            "cannot keep the thread of {} in {}: {e}",
            event.deployment_id,
            file.display()
        ));
    }
    Ok(())
}

fn post_webhook(ctx: &Context, s: &Settings, event: &Event) -> Result<(), PluginError> {
    let path = ctx.secret("webhook")?;
    let url = format!("{}/{path}", s.webhook_base.trim_end_matches('/'));
    let r = http::post(&url)
        .json(&message(event, &links(s, event)))?
        .send()?;
    match r.status {
        200 => Ok(()),
        429 => Err(retryable(
            "Slack: rate limited (HTTP 429)",
            r.retry_after_ms().or(Some(1000)),
        )),
        _ => Err(webhook_error(&r)),
    }
}

impl Notifier for Slack {
    fn notify(ctx: &Context, event: Event) -> Result<(), PluginError> {
        let s: Settings = ctx.config()?;
        match s.mode.as_str() {
            "webhook" => post_webhook(ctx, &s, &event),
            "api" => post_api(ctx, &s, &event),
            other => Err(invalid_config(format!(
                "mode `{other}`: expected `webhook` or `api`"
            ))),
        }
    }
}

export!(Slack: notifier);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail: Option<String>) -> Event {
        Event {
            kind: EventKind::RolledBack,
            environment: "production".into(),
            deployment_id: "run-1".into(),
            version: "v2".into(),
            actor: "ops".into(),
            stage: Some("watch".into()),
            summary: "v2 rolled back on production".into(),
            detail,
            duration_ms: Some(65_000),
            links: vec![("release".into(), "https://example.com".into())],
            at_ms: 0,
        }
    }

    #[test]
    fn messages_keep_block_kit_limits() {
        let long = "x".repeat(200_000);
        let m = message(&event(Some(long)), &[]);
        let blocks = m["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), MAX_BLOCKS);
        assert!(
            blocks[MAX_BLOCKS - 1]["elements"][0]["text"]
                .as_str()
                .unwrap()
                .contains("more block(s) left out")
        );
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= MAX_SECTION);
            }
        }
        assert!(m["text"].as_str().unwrap().chars().count() <= 3000);
    }

    #[test]
    fn messages_carry_what_happened() {
        let m = message(
            &event(Some("check `api` failed: 503".into())),
            &[("logs".into(), "https://logs/run-1".into())],
        );
        let all = m.to_string();
        for want in [
            "production",
            "v2",
            "ops",
            "watch",
            "1 min 5 s",
            "rolled back",
            "check `api` failed: 503",
            "<https://logs/run-1|logs>",
        ] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
        assert!(m["text"].as_str().unwrap().contains("rolled back"));
    }
}
