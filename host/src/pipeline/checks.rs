//! Health checks and smoke tests: HTTP(S), TCP and commands, with retries.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;

use crate::config::{CheckConfig, Probe};

/// Bodies beyond this are not read (a health endpoint is small).
const MAX_BODY: usize = 1 << 20;

/// One check's outcome.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CheckResult {
    /// The check.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's duration, ms.
    pub duration_ms: u64,
    /// What the last attempt saw.
    pub detail: String,
}

/// Why a check failed (or the request it made), in words: the evidence a person reads, kept
/// in the check's result and the stage's journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure(text)
    }
}

/// Values substituted into a check's URL, address or command.
#[derive(Debug, Clone, Default)]
pub struct Subst {
    /// `{url}`: the release's URL (staged or live).
    pub url: Option<String>,
    /// `{release}`: the target's release id.
    pub release: String,
    /// `{env}`: the environment's name (so an inherited check fits every environment).
    pub environment: String,
}

impl Subst {
    fn apply(&self, text: &str) -> Result<String, Failure> {
        if text.contains("{url}") && self.url.is_none() {
            return Err(Failure(
                "uses {url}, but the target gave this release no URL".into(),
            ));
        }
        Ok(text
            .replace("{url}", self.url.as_deref().unwrap_or(""))
            .replace("{release}", &self.release)
            .replace("{env}", &self.environment))
    }
}

/// Runs one check, retrying as configured. `base` is where commands run.
pub async fn run(check: &CheckConfig, subst: &Subst, base: &Path) -> CheckResult {
    let mut attempts = 0;
    let tries = check.retries + 1;
    loop {
        attempts += 1;
        super::progress::set(
            "check",
            format!("check `{}` attempt {attempts}/{tries}", check.name),
        );
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(check.timeout, probe(&check.probe, subst, base)).await {
                Ok(r) => r,
                Err(_) => Err(Failure(format!(
                    "no answer within {} ms",
                    check.timeout.as_millis()
                ))),
            };
        let duration_ms = started.elapsed().as_millis() as u64;
        let passed = outcome.is_ok();
        if passed || attempts > check.retries {
            return CheckResult {
                name: check.name.clone(),
                passed,
                attempts,
                duration_ms,
                detail: outcome.unwrap_or_else(|e| e.0),
            };
        }
        tracing::debug!(check = check.name, attempts, "check failed, retrying");
        super::progress::set(
            "check",
            format!(
                "check `{}` attempt {attempts}/{tries} failed ({}); again in {} ms",
                check.name,
                outcome.as_ref().err().map_or("", |e| e.0.as_str()),
                check.interval.as_millis()
            ),
        );
        tokio::time::sleep(check.interval).await;
    }
}

async fn probe(probe: &Probe, subst: &Subst, base: &Path) -> Result<String, Failure> {
    match probe {
        Probe::Tcp { address } => {
            let address = subst.apply(address)?;
            TcpStream::connect(&address)
                .await
                .map(|_| format!("connected to {address}"))
                .map_err(|e| Failure(format!("cannot connect to {address}: {e}")))
        }
        Probe::Command { command } => {
            let command = subst.apply(command)?;
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .current_dir(base)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("cannot run `{command}`: {e}"))?;
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b);
                let s = s.trim();
                s.chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            };
            if out.status.success() {
                Ok(format!("`{command}` exited 0"))
            } else {
                Err(Failure(format!(
                    "`{command}` exited {}: {}",
                    out.status
                        .code()
                        .map_or("on a signal".into(), |c| c.to_string()),
                    tail(if out.stderr.is_empty() {
                        &out.stdout
                    } else {
                        &out.stderr
                    })
                )))
            }
        }
        Probe::Http {
            url,
            expect_status,
            body_contains,
            json_pointer,
            json_equals,
            max_latency,
        } => {
            let url = subst.apply(url)?;
            let started = Instant::now();
            let (status, body) = get(&url).await?;
            let latency = started.elapsed();
            let ok_status = match expect_status {
                Some(s) => status == *s,
                None => (200..300).contains(&status),
            };
            if !ok_status {
                return Err(Failure(format!(
                    "GET {url}: status {status}, expected {}",
                    expect_status.map_or("2xx".into(), |s| s.to_string())
                )));
            }
            if let Some(needle) = body_contains
                && !String::from_utf8_lossy(&body).contains(needle.as_str())
            {
                return Err(Failure(format!(
                    "GET {url}: the body does not contain {needle:?}"
                )));
            }
            if let Some(pointer) = json_pointer {
                let doc: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("GET {url}: the body is not JSON: {e}"))?;
                let found = doc
                    .pointer(pointer)
                    .ok_or_else(|| format!("GET {url}: no {pointer} in the JSON body"))?;
                if let Some(want) = json_equals
                    && found != want
                {
                    return Err(Failure(format!(
                        "GET {url}: {pointer} is {found}, expected {want}"
                    )));
                }
            }
            if let Some(max) = max_latency
                && latency > *max
            {
                return Err(Failure(format!(
                    "GET {url}: answered in {} ms, slower than {} ms",
                    latency.as_millis(),
                    max.as_millis()
                )));
            }
            Ok(format!("GET {url}: {status} in {} ms", latency.as_millis()))
        }
    }
}

/// A GET over HTTP/1.1, TLS for https (webpki roots).
pub(crate) async fn get(url: &str) -> Result<(u16, Vec<u8>), Failure> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(Failure(format!("{url}: only http and https are supported"))),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or(host.clone());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "deploy-agent-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure(format!("GET {url}: {e}")))?;
    if tls {
        let config = crate::runtime::tls_config(&[])
            .map_err(|e| Failure(format!("TLS roots for {host}: {e}")))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(stream), request).await
    }
}

async fn exchange<I>(io: I, request: http::Request<Empty<Bytes>>) -> Result<(u16, Vec<u8>), Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(&data[..data.len().min(MAX_BODY - out.len())]);
            if out.len() >= MAX_BODY {
                break;
            }
        }
    }
    driver.abort();
    Ok((status, out))
}

/// Runs checks of one stage one after another; stops at the first failure.
pub async fn run_all<'a>(
    checks: impl Iterator<Item = &'a CheckConfig>,
    subst: &Subst,
    base: &Path,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for check in checks {
        let r = run(check, subst, base).await;
        let failed = !r.passed;
        out.push(r);
        if failed {
            break;
        }
    }
    out
}
