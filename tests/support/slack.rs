//! A Slack stand-in (`PLATFORM-FACTS.md` §3): incoming webhooks and `chat.postMessage`.
//!
//! - Webhooks (`/services/T…/B…/…`, not in the Web API document) answer `ok`, or a plain-text
//!   error code with its status: 400 `invalid_payload`/`invalid_blocks`, 404 `no_service`
//!   for an unknown hook, 410 `channel_is_archived`.
//! - `chat.postMessage` answers HTTP 200 with `{ok:true, channel, ts, message}` or
//!   `{ok:false, error}` (`not_authed`, `invalid_auth`, `channel_not_found`, `is_archived`,
//!   `not_in_channel`), and adds the `missing_charset` warning to JSON without a charset.
//!   Its requests are checked against the Web API document.
//! - Both answer scripted 429s with `Retry-After`.
//! - Every message is checked against Block Kit's limits (50 blocks, 3000-character
//!   sections, 150-character headers, a `text` fallback); a breach is kept as a violation.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::openapi::Spec;
use crate::standin::{Reply, Request, Standin};

pub fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec = Spec::load("slack_web_openapi_v2.json", false);
        // The document declares the token as a `token` header; Slack's docs (and every
        // client) send it as `Authorization: Bearer`, which the security check requires.
        spec.drop_parameter("header", "token");
        Arc::new(spec)
    })
    .clone()
}

pub const CHANNEL: &str = "C0DEPLOYS";
pub const ARCHIVED: &str = "C0ARCHIVED";
pub const OUTSIDE: &str = "C0PRIVATE";
pub const HOOK: &str = "T0TEAM/B0HOOK/s3cr3tW3bh00kPath";
pub const ARCHIVED_HOOK: &str = "T0TEAM/B0OLD/archivedHookPath";

#[derive(Debug, Clone)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub broadcast: bool,
    pub body: Value,
}

#[derive(Debug, Default)]
pub struct State {
    pub token: String,
    pub messages: Vec<Message>,
    pub rate_limit: u32,
    pub block_kit_violations: Vec<String>,
    clock: u64,
}

pub struct Slack {
    pub server: Standin,
    pub state: Arc<Mutex<State>>,
}

impl Slack {
    pub async fn start(token: &str) -> Slack {
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            ..Default::default()
        }));
        let s = state.clone();
        let server = Standin::start(
            spec(),
            Some("/services/"),
            None,
            Arc::new(move |r: &Request| handle(&mut s.lock().unwrap(), r)),
        )
        .await;
        Slack { server, state }
    }

    pub fn base(&self) -> String {
        self.server.base()
    }

    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Asserts every message kept Block Kit's limits and every API call fitted the spec.
    pub fn assert_valid(&self) {
        let v = self.state.lock().unwrap().block_kit_violations.clone();
        assert!(v.is_empty(), "Block Kit violations:\n{}", v.join("\n"));
        self.server.assert_fits_spec();
    }
}

fn text(status: u16, body: &str) -> Reply {
    Reply::Raw(
        status,
        vec![("content-type".into(), "text/html".into())],
        body.as_bytes().to_vec(),
    )
}

/// Block Kit's limits; `Err` names the first breach.
fn block_kit(body: &Value) -> Result<(), String> {
    if body["text"].as_str().is_none_or(str::is_empty) {
        return Err("no top-level `text` fallback".into());
    }
    let Some(blocks) = body.get("blocks") else {
        return Ok(());
    };
    let blocks = blocks.as_array().ok_or("`blocks` is not an array")?;
    if blocks.len() > 50 {
        return Err(format!("{} blocks (at most 50)", blocks.len()));
    }
    for (i, b) in blocks.iter().enumerate() {
        let kind = b["type"].as_str().unwrap_or("");
        match kind {
            "header" => {
                let t = b["text"]["text"].as_str().unwrap_or("");
                if b["text"]["type"] != "plain_text" || t.chars().count() > 150 {
                    return Err(format!(
                        "block {i}: a header is plain_text of at most 150 characters"
                    ));
                }
            }
            "section" => {
                if let Some(t) = b["text"]["text"].as_str()
                    && t.chars().count() > 3000
                {
                    return Err(format!("block {i}: section text over 3000 characters"));
                }
                if let Some(fields) = b["fields"].as_array()
                    && (fields.len() > 10
                        || fields
                            .iter()
                            .any(|f| f["text"].as_str().unwrap_or("").chars().count() > 2000))
                {
                    return Err(format!(
                        "block {i}: more than 10 fields or a field over 2000 characters"
                    ));
                }
            }
            "context" | "divider" | "actions" => {}
            other => return Err(format!("block {i}: unexpected type {other:?}")),
        }
    }
    Ok(())
}

fn rate_limited(st: &mut State) -> Option<Reply> {
    if st.rate_limit == 0 {
        return None;
    }
    st.rate_limit -= 1;
    Some(Reply::Raw(
        429,
        vec![("retry-after".into(), "1".into())],
        b"rate_limited".to_vec(),
    ))
}

fn handle(st: &mut State, r: &Request) -> Reply {
    if let Some(reply) = rate_limited(st) {
        return reply;
    }
    if let Some(hook) = r.path.strip_prefix("/services/") {
        let body = r.json();
        if body.is_null() {
            return text(400, "invalid_payload");
        }
        if let Err(e) = block_kit(&body) {
            st.block_kit_violations.push(e);
            return text(400, "invalid_blocks");
        }
        return match hook {
            HOOK => {
                st.clock += 1;
                st.messages.push(Message {
                    channel: CHANNEL.into(),
                    ts: format!("1763700000.{:06}", st.clock),
                    thread_ts: None,
                    broadcast: false,
                    body,
                });
                text(200, "ok")
            }
            ARCHIVED_HOOK => text(410, "channel_is_archived"),
            _ => text(404, "no_service"),
        };
    }
    if r.method != "POST" || r.path != "/api/chat.postMessage" {
        return Reply::Json(404, json!({"ok": false, "error": "unknown_method"}));
    }
    let fail = |error: &str| Reply::Json(200, json!({"ok": false, "error": error}));
    match r.header("authorization") {
        None => return fail("not_authed"),
        Some(a) if a != format!("Bearer {}", st.token) => return fail("invalid_auth"),
        Some(_) => {}
    }
    let body = r.json();
    if let Err(e) = block_kit(&body) {
        st.block_kit_violations.push(e);
        return fail("invalid_blocks");
    }
    let channel = body["channel"].as_str().unwrap_or_default().to_string();
    match channel.as_str() {
        CHANNEL => {}
        ARCHIVED => return fail("is_archived"),
        OUTSIDE => return fail("not_in_channel"),
        _ => return fail("channel_not_found"),
    }
    let thread_ts = body["thread_ts"].as_str().map(str::to_string);
    if let Some(t) = &thread_ts
        && !st
            .messages
            .iter()
            .any(|m| &m.ts == t && m.thread_ts.is_none())
    {
        return fail("thread_not_found");
    }
    st.clock += 1;
    let ts = format!("1763700000.{:06}", st.clock);
    st.messages.push(Message {
        channel: channel.clone(),
        ts: ts.clone(),
        thread_ts: thread_ts.clone(),
        broadcast: body["reply_broadcast"] == true,
        body: body.clone(),
    });
    let mut reply = json!({"ok": true, "channel": channel, "ts": ts,
        "message": {"type": "message", "text": body["text"], "ts": ts, "thread_ts": thread_ts}});
    if !r
        .header("content-type")
        .unwrap_or_default()
        .contains("charset")
    {
        reply["warning"] = json!("missing_charset");
        reply["response_metadata"] = json!({"warnings": ["missing_charset"]});
    }
    Reply::Json(200, reply)
}
