//! A loopback HTTP/1.1 server (optionally over TLS) for platform stand-ins: each request is
//! parsed, checked against the platform's OpenAPI document, recorded and handed to the
//! stand-in's handler. A request that does not fit the document is answered 400 and kept as
//! a violation, so a test fails on it even if the plugin shrugs the 400 off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::openapi::{Call, Spec};

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The path's segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_matches('/').split('/').collect()
    }
}

/// What the handler answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Json(u16, serde_json::Value),
    /// A status, extra headers and a body.
    Raw(u16, Vec<(String, String)>, Vec<u8>),
    /// Never answers (a hung server).
    Hang,
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running stand-in; it stops when the test's runtime ends.
pub struct Standin {
    pub port: u16,
    pub tls: bool,
    seen: Arc<Mutex<Vec<Request>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Standin {
    /// Starts a stand-in. Requests under `unchecked` (the platform's sites, which the agent's
    /// checks read, not the plugin) are not API calls and skip the spec.
    pub async fn start(
        spec: Arc<Spec>,
        unchecked: Option<&'static str>,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
    ) -> Standin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (seen.clone(), violations.clone());
        let acceptor = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (s, v, spec, handler) = (s.clone(), v.clone(), spec.clone(), handler.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(stream) = a.accept(socket).await {
                                serve(stream, &spec, unchecked, &handler, &s, &v).await;
                            }
                        }
                        None => serve(socket, &spec, unchecked, &handler, &s, &v).await,
                    }
                });
            }
        });
        Standin {
            port,
            tls: tls.is_some(),
            seen,
            violations,
        }
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that did not fit the spec.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Asserts that every request fitted the spec and returns how many there were.
    pub fn assert_fits_spec(&self) -> usize {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "requests that do not fit the spec:\n{}",
            v.join("\n")
        );
        self.seen().len()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    spec: &Spec,
    unchecked: Option<&str>,
    handler: &Handler,
    seen: &Mutex<Vec<Request>>,
    violations: &Mutex<Vec<String>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    if unchecked.is_some_and(|p| request.path.starts_with(p)) {
        seen.lock().unwrap().push(request.clone());
        let reply = handler(&request);
        return respond(stream, reply).await;
    }
    let errors = spec.check(&Call {
        method: &request.method,
        path: &request.path,
        query: &request.query,
        headers: &request.headers,
        body: &request.body,
    });
    seen.lock().unwrap().push(request.clone());
    let reply = if errors.is_empty() {
        handler(&request)
    } else {
        violations.lock().unwrap().extend(errors.iter().cloned());
        Reply::Json(
            400,
            serde_json::json!({"error": {"code": "bad_request", "message": errors.join("; ")}}),
        )
    };
    respond(stream, reply).await;
}

async fn respond<S: AsyncWrite + Unpin>(mut stream: S, reply: Reply) {
    let (status, headers, body) = match reply {
        Reply::Json(status, v) => (
            status,
            vec![("content-type".to_string(), "application/json".to_string())],
            serde_json::to_vec(&v).unwrap_or_default(),
        ),
        Reply::Raw(status, headers, body) => (status, headers, body),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP/1.1 request off the wire: method, target, headers (names lowercased) and body
/// (by Content-Length, or chunked).
pub async fn read_raw<S: AsyncRead + Unpin>(
    socket: &mut S,
) -> Option<(String, String, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers = header_lines(lines);
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut body = buf[head_end + 4..].to_vec();
    if chunked {
        // Read until the last chunk, then decode.
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = socket.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body)?;
    }
    while !chunked && body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((method, target, headers, body))
}

async fn read_request<S: AsyncRead + Unpin>(socket: &mut S) -> Option<Request> {
    let (method, target, headers, body) = read_raw(socket).await?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: decode(path),
        query,
        headers,
        body,
    })
}

/// The size line at the start of a chunked body: (chunk size, the line's length with its
/// CRLF); `None` until the line is complete.
pub fn chunk_header(raw: &[u8]) -> Option<(usize, usize)> {
    let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
    let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
    let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
    Some((size, line_end + 2))
}

/// A complete chunked body, decoded; `None` when it is cut short or malformed.
pub fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (size, header) = chunk_header(raw)?;
        raw = &raw[header..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Header lines (after the request or status line): names lowercased, values trimmed.
pub fn header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it.
pub struct TestCa {
    pub ca_pem: String,
    /// The server certificate and its key, PEM (for a server configured from files).
    pub server_pem: String,
    pub server_key_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "deploy-agent test cluster CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        TestCa {
            ca_pem: ca_cert.pem(),
            server_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            server: Arc::new(server),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A plain-HTTP GET from the test itself (the stand-ins' sites): status and body.
pub async fn fetch(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
