//! The conformance kit's stand-in server: it plays the platform from a script (or forwards to
//! a server of yours), records every request, and injects the faults the kit asks for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::script::{ObjectAction, Route, Script};

/// The largest request body the stand-in reads (a backup-store check uploads less).
const MAX_BODY: usize = 64 << 20;

/// A failure the stand-in plays instead of answering normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer every request with this status (and `Retry-After: secs` if given).
    Status(u16, Option<u64>),
    /// Close the connection without answering.
    Reset,
    /// Never answer.
    Hang,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Whether a scripted route (or the upstream) answered it.
    pub answered: bool,
}

/// A running stand-in; it stops when dropped.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    routes: Vec<Route>,
    upstream: Option<String>,
    url: String,
    secrets: BTreeMap<String, String>,
    state: Mutex<State>,
}

struct State {
    scenario: String,
    /// The objects `object` routes keep: key -> (body, metadata).
    objects: BTreeMap<String, (Bytes, Vec<(String, String)>)>,
    hits: Vec<usize>,
    seen: Vec<Seen>,
    fault: Option<Fault>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts a stand-in on a loopback port. `secrets` are the values the plugin's secrets
    /// have, for `{{secret.NAME}}` in the script.
    pub async fn start(
        script: &Script,
        upstream: Option<String>,
        secrets: BTreeMap<String, String>,
    ) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let upstream = upstream.or_else(|| script.upstream.clone());
        let shared = Arc::new(Shared {
            routes: script.routes.clone(),
            upstream: upstream.map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            }),
            url: format!("http://{addr}"),
            secrets,
            state: Mutex::new(State {
                scenario: "start".into(),
                objects: BTreeMap::new(),
                hits: vec![0; script.routes.len()],
                seen: Vec::new(),
                fault: None,
            }),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(StandIn { addr, shared, task })
    }

    /// The base URL the plugin is configured with (`{standin}`).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Plays `fault` for every request until cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.lock().fault = fault;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.shared.lock().seen.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The reason a connection is closed without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by the conformance kit")]
struct Reset;

type Answer = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, Reset> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), ToString::to_string);
    let fault = {
        let mut state = shared.lock();
        state.seen.push(Seen {
            method: parts.method.to_string(),
            target: target.clone(),
            answered: true,
        });
        state.fault
    };
    match fault {
        Some(Fault::Status(status, retry_after)) => {
            let mut r = text(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &format!("{{\"error\":\"HTTP {status} injected by the conformance kit\"}}"),
            );
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", http::HeaderValue::from(secs));
            }
            return Ok(r);
        }
        Some(Fault::Reset) => return Err(Reset),
        Some(Fault::Hang) => std::future::pending::<()>().await,
        None => {}
    }
    if let Some(upstream) = &shared.upstream {
        return Ok(forward(upstream, parts, body).await.unwrap_or_else(|e| {
            text(
                StatusCode::BAD_GATEWAY,
                &format!("the stand-in's upstream {upstream} failed: {e}"),
            )
        }));
    }
    Ok(scripted(&shared, &parts, &body, &target))
}

fn text(status: StatusCode, body: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Forwards the request unchanged (its `Host` header included, so signatures still verify).
async fn forward(
    upstream: &str,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::from_parts(parts, Full::new(body));
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), ToString::to_string);
    *req.uri_mut() = path.parse()?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// What the script says to the request.
fn scripted(shared: &Shared, parts: &http::request::Parts, body: &[u8], target: &str) -> Answer {
    let path = parts.uri.path();
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let mut state = shared.lock();
    let found = shared.routes.iter().enumerate().find_map(|(i, r)| {
        let method_ok = r.method == "*" || r.method.eq_ignore_ascii_case(parts.method.as_str());
        let when_ok = r.when.as_deref().is_none_or(|w| w == state.scenario);
        if !(method_ok && when_ok) {
            return None;
        }
        r.captures(path).map(|caps| (i, r, caps))
    });
    let Some((i, route, caps)) = found else {
        if let Some(last) = state.seen.last_mut() {
            last.answered = false;
        }
        return text(
            StatusCode::NOT_FOUND,
            &format!(
                "{{\"error\":\"no route in the stand-in script answers {} {target} in state {}\"}}",
                parts.method,
                serde_json::Value::String(state.scenario.clone())
            ),
        );
    };
    state.hits[i] += 1;
    let vars = Vars {
        n: state.hits[i],
        state: &state.scenario,
        standin: &shared.url,
        path: &caps,
        query: &query,
        json: json.as_ref(),
        secrets: &shared.secrets,
    };
    for (name, want) in &route.require_headers {
        let want = vars.render(want);
        let got = parts
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok());
        if got != Some(want.as_str()) {
            return text(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "{{\"error\":\"the stand-in script requires header `{name}` on {} {}\"}}",
                    parts.method, route.path
                ),
            );
        }
    }
    if let Some(action) = route.object {
        let key = caps.get("key").cloned().unwrap_or_default();
        return object(&mut state, action, key, parts, body, &query);
    }
    let reply = route.reply_for(vars.n);
    let mut r = Response::new(Full::new(Bytes::from(vars.render(&reply.body))));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    if !reply
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("content-type"))
    {
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
    }
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(&vars.render(v)),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    if let Some(then) = &route.then {
        state.scenario = then.clone();
    }
    r
}

/// An object-store route's answer.
fn object(
    state: &mut State,
    action: ObjectAction,
    key: String,
    parts: &http::request::Parts,
    body: &[u8],
    query: &BTreeMap<String, String>,
) -> Answer {
    let missing = || text(StatusCode::NOT_FOUND, "{\"error\":\"no such object\"}");
    match action {
        ObjectAction::Put => {
            let meta = parts
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.as_str().strip_prefix("x-meta-")?;
                    Some((name.to_string(), v.to_str().ok()?.to_string()))
                })
                .collect();
            state
                .objects
                .insert(key, (Bytes::copy_from_slice(body), meta));
            text(StatusCode::CREATED, "{}")
        }
        ObjectAction::Get => match state.objects.get(&key) {
            None => missing(),
            Some((bytes, meta)) => {
                let mut r = Response::new(Full::new(bytes.clone()));
                for (k, v) in meta {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(format!("x-meta-{k}").as_bytes()),
                        http::HeaderValue::from_str(v),
                    ) {
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
        },
        ObjectAction::Delete => match state.objects.remove(&key) {
            None => missing(),
            Some(_) => {
                let mut r = text(StatusCode::NO_CONTENT, "");
                *r.body_mut() = Full::new(Bytes::new());
                r
            }
        },
        ObjectAction::List => {
            let prefix = query
                .get("prefix")
                .map(|p| super::script::percent_decode(p))
                .unwrap_or_default();
            let objects: Vec<serde_json::Value> = state
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, (b, _))| serde_json::json!({ "key": k, "size": b.len() }))
                .collect();
            text(
                StatusCode::OK,
                &serde_json::json!({ "objects": objects }).to_string(),
            )
        }
    }
}

/// What `{{...}}` in a script can name.
struct Vars<'a> {
    n: usize,
    state: &'a str,
    standin: &'a str,
    path: &'a BTreeMap<String, String>,
    query: &'a BTreeMap<String, String>,
    json: Option<&'a serde_json::Value>,
    secrets: &'a BTreeMap<String, String>,
}

impl Vars<'_> {
    fn render(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find("}}") else {
                break;
            };
            let name = rest[start + 2..start + end].trim();
            out.push_str(&self.value(name));
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn value(&self, name: &str) -> String {
        let (scope, key) = name.split_once('.').unwrap_or((name, ""));
        match scope {
            "n" => self.n.to_string(),
            "state" => self.state.to_string(),
            "standin" => self.standin.to_string(),
            "path" => self.path.get(key).cloned().unwrap_or_default(),
            "query" => self.query.get(key).cloned().unwrap_or_default(),
            "secret" => self.secrets.get(key).cloned().unwrap_or_default(),
            "json" => {
                let found = self
                    .json
                    .and_then(|json| key.split('.').try_fold(json, |v, k| v.get(k)))
                    .cloned();
                match found {
                    Some(serde_json::Value::String(s)) => s,
                    Some(v) => v.to_string(),
                    None => String::new(),
                }
            }
            _ => String::new(),
        }
    }
}
