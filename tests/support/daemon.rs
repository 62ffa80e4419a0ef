//! The daemon under test: `deploy-agent serve` as a child process, a small HTTP/1.1 client
//! (plain or TLS) for its API, and a server-sent-events reader.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bin;
use crate::standin::{chunk_header, dechunk, header_lines};

/// A running `deploy-agent serve`.
pub struct Daemon {
    child: Option<Child>,
    client: Client,
}

/// A client of a daemon's API (cheap to clone, one per task).
#[derive(Clone)]
pub struct Client {
    /// Its address, `127.0.0.1:PORT`.
    pub addr: String,
    /// The daemon's log, for failure messages.
    log: Arc<Mutex<String>>,
    /// TLS client settings when it serves HTTPS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::ops::Deref for Daemon {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Daemon {
    /// Starts `serve --config agent.toml --listen 127.0.0.1:0` in `dir` with `env` set and waits
    /// until /readyz answers 200.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(dir, env, None).await
    }

    /// As [`Daemon::start`], trusting `ca_pem` for HTTPS.
    pub async fn start_with(dir: &Path, env: &[(&str, &str)], ca_pem: Option<&str>) -> Daemon {
        Daemon::launch(dir, env, &[], ca_pem).await
    }

    /// As [`Daemon::start`], with more arguments to `serve` (`--host-name web-1`).
    pub async fn start_args(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        Daemon::launch(dir, env, args, None).await
    }

    async fn launch(
        dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
        ca_pem: Option<&str>,
    ) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.current_dir(dir)
            .args(["serve", "--config", "agent.toml", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("DEPLOY_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
                let mut l = sink.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve did not listen:\n{}", log.lock().expect("log")));
        let addr = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let tls = ca_pem.map(client_tls);
        let d = Daemon {
            child: Some(child),
            client: Client { addr, log, tls },
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = d.request("GET", "/readyz", None, None).await
                && r.status == 200
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "not ready:\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the process to end; returns its exit code
    /// (`None`: killed by a signal).
    pub fn signal(&mut self, sig: &str) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status();
        child.wait().expect("waits").code()
    }

    /// Sends a signal and waits up to `limit` for the process to end: its exit code, or
    /// `Err` if it was still running then (it is SIGKILLed, so the test does not leak it).
    /// The limit is a liveness bound (a daemon that ignores SIGTERM never ends), not a
    /// performance figure.
    pub fn signal_within(&mut self, sig: &str, limit: Duration) -> Result<Option<i32>, String> {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status();
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if let Some(status) = child.try_wait().expect("waits") {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("still running {limit:?} after SIG{sig}"))
    }

    /// Waits for the process to end by itself (a failpoint).
    pub fn wait(&mut self) -> Option<i32> {
        self.child
            .take()
            .expect("running")
            .wait()
            .expect("waits")
            .code()
    }
}

impl Client {
    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?
                    .to_owned();
                let s = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Box::new(s))
            }
        }
    }

    /// One request; `body` is sent as JSON (or raw with [`Daemon::raw`]).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> std::io::Result<Response> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let mut headers = vec![];
        if bytes.is_some() {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        self.raw(method, path, token, &headers, bytes.as_deref())
            .await
    }

    /// One request with exactly these headers and body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        let mut s = self.connect().await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
            self.addr
        );
        if let Some(t) = token {
            head.push_str(&format!("authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("content-length: {}\r\n", b.len()));
        } else if method != "GET" && method != "HEAD" {
            head.push_str("content-length: 0\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        if let Some(b) = body {
            s.write_all(b).await?;
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok(Response::parse(&raw))
    }

    /// Calls the API and checks the call and its answer against `spec` (the daemon's own
    /// OpenAPI document): the operation exists, parameters and body fit, and the response's
    /// status and JSON body are ones the document declares.
    pub async fn call(
        &self,
        spec: &crate::openapi::Spec,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let r = self
            .request(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()));
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let query: Vec<(String, String)> = q
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut headers = vec![];
        if let Some(t) = token {
            headers.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if body.is_some() {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        let call = crate::openapi::Call {
            method,
            path: p,
            query: &query,
            headers: &headers,
            body: &bytes,
        };
        // A refused call need not fit (that is what is being tested); an accepted one must.
        if r.status < 400 {
            let problems = spec.check(&call);
            assert!(problems.is_empty(), "{method} {path}: {problems:#?}");
        }
        let problems = spec.check_response(method, p, r.status, &r.body);
        assert!(
            problems.is_empty(),
            "{method} {path} answered {}: {problems:#?}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        r
    }

    /// Opens an SSE stream.
    pub async fn events(&self, path: &str, token: &str, last_id: Option<u64>) -> EventStream {
        let mut s = self.connect().await.expect("connects");
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\nauthorization: Bearer {token}\r\n",
            self.addr
        );
        if let Some(id) = last_id {
            head.push_str(&format!("last-event-id: {id}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.expect("writes");
        let mut es = EventStream {
            io: s,
            buf: Vec::new(),
            text: String::new(),
            status: 0,
            chunked: false,
            ended: false,
        };
        es.read_head().await;
        es
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw.get(split + 4..).unwrap_or_default().to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = header_lines(lines);
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body).expect("a complete chunked body");
        }
        Response {
            status,
            headers,
            body,
        }
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// `id:`.
    pub id: Option<u64>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` (lines joined), parsed as JSON.
    pub data: Value,
}

/// A server-sent-events stream being read.
pub struct EventStream {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    text: String,
    /// The response status.
    pub status: u16,
    chunked: bool,
    ended: bool,
}

impl EventStream {
    async fn fill(&mut self) -> bool {
        let mut b = [0u8; 8192];
        match self.io.read(&mut b).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_ascii_lowercase();
                self.status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                self.chunked = head.contains("transfer-encoding: chunked");
                self.buf.drain(..p + 4);
                return;
            }
            if !self.fill().await {
                return;
            }
        }
    }

    /// Moves complete chunks from `buf` to `text`; sets `ended` once the terminating chunk came.
    fn decode(&mut self) {
        if !self.chunked {
            self.text.push_str(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
            return;
        }
        loop {
            let Some((size, header)) = chunk_header(&self.buf) else {
                return;
            };
            if size == 0 {
                self.ended = true;
                self.buf.clear();
                return;
            }
            if self.buf.len() < header + size + 2 {
                return;
            }
            let chunk = self.buf[header..header + size].to_vec();
            self.text.push_str(&String::from_utf8_lossy(&chunk));
            self.buf.drain(..header + size + 2);
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends or
    /// nothing comes within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.decode();
            while let Some(p) = self.text.find("\n\n") {
                let block: String = self.text.drain(..p + 2).collect();
                let mut ev = Sse {
                    id: None,
                    event: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    return Some(ev);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                _ => return None,
            }
        }
    }

    /// Events until one of kind `kind` (included), failing after `wait`.
    pub async fn until(&mut self, kind: &str, wait: Duration) -> Vec<Sse> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(e) = self.next(left).await else {
                panic!(
                    "no `{kind}` event; saw {:?}",
                    seen.iter()
                        .map(|e: &Sse| e.event.clone())
                        .collect::<Vec<_>>()
                );
            };
            let done = e.event.as_deref() == Some(kind);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Whether the server ended the stream (within `wait`).
    pub async fn ends(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.decode();
            if self.ended {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// HMAC-SHA256 signature header value of `body` under `secret`, as GitHub sends it.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A token and the `[[server.tokens]]` entry that admits it.
pub fn token_entry(name: &str, role: &str, envs: Option<&[&str]>) -> (String, String) {
    use sha2::Digest;
    let token = format!(
        "dat_test_{name}_{}",
        hex::encode(sha2::Sha256::digest(name.as_bytes()))
    );
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let envs = envs.map_or(String::new(), |e| {
        format!(
            "\nenvironments = [{}]",
            e.iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    (
        token,
        format!(
            "[[server.tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nrole = \"{role}\"{envs}\n"
        ),
    )
}

/// A project for the load test: `envs` environments `e00`.., each deploying the same site with
/// the local target, no database, no checks; one admin token. Returns the token.
pub fn load_project(dir: &Path, envs: usize) -> String {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>load</h1>").expect("index");
    let (token, entry) = token_entry("load", "admin", None);
    let mut toml = format!(
        r#"[agent]
state_dir = "state"

{local_table}"#,
        local_table = crate::local_plugin_table()
    );
    for e in 0..envs {
        toml.push_str(&local_environment(e));
    }
    toml.push_str("\n[server]\n");
    toml.push_str(&entry);
    std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
    token
}

/// Environment `eNN` on the local target (site root `/srv/eNN`, artifact `site`), its
/// `[environments.eNN.deploy]` table open last for more settings.
pub fn local_environment(e: usize) -> String {
    format!(
        r#"
[environments.e{e:02}]
[environments.e{e:02}.target]
plugin = "local"
config = {{ root = "/srv/e{e:02}", keep = 3 }}
[environments.e{e:02}.artifact]
path = "site"
[environments.e{e:02}.deploy]
poll_interval_ms = 10
"#
    )
}

/// What [`load`] measured and found.
#[derive(Debug)]
pub struct LoadReport {
    /// Triggers sent.
    pub triggers: usize,
    /// From the first trigger to the last run ended.
    pub wall: Duration,
    /// Trigger (POST) latencies, sorted.
    pub post_latency: Vec<Duration>,
    /// Read (GET /v1/runs/{id}) latencies under load, sorted.
    pub get_latency: Vec<Duration>,
    /// What is wrong: lost, duplicated or reordered runs, failures. Empty when all is well.
    pub problems: Vec<String>,
}

/// The `q`-quantile of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Sends `per_env` triggers to each of `envs` environments from `clients` concurrent
/// clients (each environment's triggers in order, from one client), waits until every run
/// ended (at most `limit`), and checks that each environment ran exactly its triggers, once
/// each, in the order sent, all succeeded.
pub async fn load(
    d: &Client,
    token: &str,
    envs: usize,
    per_env: usize,
    clients: usize,
    limit: Duration,
) -> LoadReport {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let d = d.clone();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sent: Vec<(String, String, String)> = Vec::new();
            let mut post = Vec::new();
            let mut get = Vec::new();
            for k in 1..=per_env {
                for e in (0..envs).filter(|e| e % clients == c) {
                    let env = format!("e{e:02}");
                    let version = format!("{env}-{k:03}");
                    let body = serde_json::json!({"environment": env, "version": version});
                    let at = Instant::now();
                    let r = d.json("POST", "/v1/deployments", &token, Some(&body)).await;
                    post.push(at.elapsed());
                    let id = r["id"].as_str().unwrap_or_default().to_string();
                    let at = Instant::now();
                    let _ = d.json("GET", &format!("/v1/runs/{id}"), &token, None).await;
                    get.push(at.elapsed());
                    sent.push((env, version, id));
                }
            }
            (sent, post, get)
        }));
    }
    let mut sent = Vec::new();
    let mut post = Vec::new();
    let mut get = Vec::new();
    for t in tasks {
        let (s, p, g) = t.await.expect("client");
        sent.extend(s);
        post.extend(p);
        get.extend(g);
    }
    // Wait for the queues to drain.
    let mut problems = Vec::new();
    loop {
        let all = d.json("GET", "/v1/environments", token, None).await;
        let busy = all.as_array().map_or(1, |a| {
            a.iter()
                .filter(|e| {
                    !e["running"].is_null() || e["queued"].as_array().is_some_and(|q| !q.is_empty())
                })
                .count()
        });
        if busy == 0 {
            break;
        }
        if started.elapsed() > limit {
            problems.push(format!(
                "{busy} environments still busy after {} s",
                limit.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    for e in 0..envs {
        let env = format!("e{e:02}");
        let expected: Vec<&(String, String, String)> = sent.iter().filter(|s| s.0 == env).collect();
        let runs = d
            .json(
                "GET",
                &format!("/v1/environments/{env}/runs?limit=500"),
                token,
                None,
            )
            .await;
        let mut runs: Vec<Value> = runs.as_array().cloned().unwrap_or_default();
        runs.reverse(); // oldest first
        let got: Vec<(String, String)> = runs
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or_default().to_string(),
                    r["version"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|s| (s.2.clone(), s.1.clone()))
            .collect();
        if got != want {
            problems.push(format!("{env}: ran {got:?}, expected {want:?}"));
        }
        for r in &runs {
            if r["status"] != "succeeded" {
                problems.push(format!(
                    "{env}: run {} {}: {}",
                    r["id"], r["status"], r["error"]
                ));
            }
        }
    }
    post.sort();
    get.sort();
    LoadReport {
        triggers: sent.len(),
        wall,
        post_latency: post,
        get_latency: get,
        problems,
    }
}

impl Client {
    /// Signs in to the console as its form does (the sign-in cookie's CSRF token, then the
    /// token); the session cookie, `da_session=...`.
    pub async fn sign_in(&self, token: &str) -> String {
        let form = self.raw("GET", "/login", None, &[], None).await.unwrap();
        let cookie = |r: &Response, name: &str| {
            r.headers
                .iter()
                .filter(|(k, _)| k == "set-cookie")
                .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
                .and_then(|c| c.split(';').next())
                .map(str::to_string)
        };
        let login = cookie(&form, "da_login").expect("a sign-in cookie");
        let body = format!("csrf={login}&next=%2F&token={token}");
        let headers = [
            ("cookie".to_string(), format!("da_login={login}")),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let r = self
            .raw("POST", "/login", None, &headers, Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(r.status, 303, "sign-in");
        format!(
            "da_session={}",
            cookie(&r, "da_session").expect("a session")
        )
    }

    /// A call's JSON answer (`null` when it failed or was not JSON).
    pub async fn json(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Value {
        match self.request(method, path, Some(token), body).await {
            Ok(r) => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}
