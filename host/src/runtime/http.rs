//! The sandbox's door to the network: every outgoing request of a plugin passes here.
//!
//! In order: the per-call request cap; the scheme and `allowed_hosts`; secret placeholders
//! (substituted only for hosts the secret is bound to); name resolution by the host, refusing
//! any address in a special range (loopback, private, link-local, ...) not granted; then a
//! connection to the checked address itself (so a second lookup cannot rebind it), TLS with the
//! request's host name, and a response body capped in size and in time between bytes.
//! Every refusal is recorded: the host's record, not what the plugin makes of it, is what the
//! caller reports.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::policy::{Policy, PolicyViolation};
use super::secrets::Secrets;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// The network guard of one call: policy, secrets, counters and the record of refusals.
pub(crate) struct Guard {
    plugin: Arc<str>,
    policy: Arc<Policy>,
    secrets: Arc<Secrets>,
    tls: Arc<rustls::ClientConfig>,
    requests: AtomicU32,
    violated: AtomicBool,
    violations: Mutex<Vec<PolicyViolation>>,
}

impl Guard {
    pub(crate) fn new(
        plugin: Arc<str>,
        policy: Arc<Policy>,
        secrets: Arc<Secrets>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Guard {
            plugin,
            policy,
            secrets,
            tls,
            requests: AtomicU32::new(0),
            violated: AtomicBool::new(false),
            violations: Mutex::new(Vec::new()),
        }
    }

    /// The first refusal of this call, if any.
    pub(crate) fn first_violation(&self) -> Option<PolicyViolation> {
        self.violations.lock().ok().and_then(|v| v.first().cloned())
    }

    /// Whether this call broke its policy; the call is then stopped at the next epoch tick.
    pub(crate) fn violated(&self) -> bool {
        self.violated.load(Ordering::Relaxed)
    }

    /// The secrets this call may use.
    pub(super) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Records a refusal and turns it into the error the plugin sees.
    pub(super) fn refuse(&self, violation: PolicyViolation) -> HttpError {
        tracing::warn!(plugin = %self.plugin, %violation, "sandbox refused a request");
        let error = match violation {
            PolicyViolation::AddressRefused { .. } => HttpError::DestinationIpProhibited,
            PolicyViolation::ResponseTooLarge { limit, .. } => {
                HttpError::HttpResponseBodySize(Some(limit))
            }
            _ => HttpError::HttpRequestDenied,
        };
        if let Ok(mut v) = self.violations.lock() {
            v.push(violation);
        }
        self.violated.store(true, Ordering::Relaxed);
        error
    }

    async fn send(
        self: Arc<Self>,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(Response<WasiBody>, IoFuture), HttpError> {
        let count = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if count > self.policy.max_requests {
            return Err(self.refuse(PolicyViolation::TooManyRequests {
                limit: self.policy.max_requests,
            }));
        }

        let uri = request.uri().clone();
        let use_tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => {
                return Err(self.refuse(PolicyViolation::BadRequest {
                    reason: format!("unsupported scheme in `{uri}`"),
                }));
            }
        };
        let Some(host) = uri.host() else {
            return Err(self.refuse(PolicyViolation::BadRequest {
                reason: "request without a host".into(),
            }));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if use_tls { 443 } else { 80 });
        // A secret's value, raw or encoded, in the URL or a header: refused whatever the host.
        if let Err(v) = self
            .secrets
            .refuse_values(uri.to_string().as_bytes(), &host)
        {
            return Err(self.refuse(v));
        }
        for (name, value) in request.headers() {
            let checked = self
                .secrets
                .refuse_values(name.as_str().as_bytes(), &host)
                .and_then(|()| self.secrets.refuse_values(value.as_bytes(), &host));
            if let Err(v) = checked {
                return Err(self.refuse(v));
            }
        }
        if !self.policy.host_allowed(&host, port) {
            return Err(self.refuse(PolicyViolation::HostNotAllowed { host, port }));
        }

        // Secrets: substituted into header values and the path/query only, never bodies. A
        // placeholder anywhere (a header name, a value that is not text, the body) in a
        // request to a host its secret is not bound to refuses the request.
        for (name, value) in request.headers_mut().iter_mut() {
            if let Err(v) = self
                .secrets
                .substitute_bytes(name.as_str().as_bytes(), &host, port)
            {
                return Err(self.refuse(v));
            }
            match self.secrets.substitute_bytes(value.as_bytes(), &host, port) {
                Ok(None) => {}
                Ok(Some(real)) => {
                    let mut real = HeaderValue::from_bytes(&real).map_err(|_| {
                        self.refuse(PolicyViolation::BadRequest {
                            reason: "a secret's value is not a valid header value".into(),
                        })
                    })?;
                    real.set_sensitive(true);
                    *value = real;
                }
                Err(v) => return Err(self.refuse(v)),
            }
        }
        let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let target = match self.secrets.substitute(target, &host, port) {
            Ok(None) => target.to_string(),
            Ok(Some(real)) => real,
            Err(v) => return Err(self.refuse(v)),
        };
        *request.uri_mut() = Uri::builder()
            .path_and_query(target)
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let scanner = (self.clone(), host.clone());
        let request = request.map(move |body| {
            let (guard, host) = scanner;
            super::egress::Scanned::new(body, guard, host, port).boxed_unsync()
        });

        // Resolve here, check every address, and connect to a checked one.
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(CONNECT_TIMEOUT)
            .min(CONNECT_TIMEOUT);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                match tokio::time::timeout(
                    connect_timeout,
                    tokio::net::lookup_host((host.as_str(), port)),
                )
                .await
                {
                    Err(_) => return Err(HttpError::DnsTimeout),
                    Ok(Err(_)) => return Err(HttpError::DestinationNotFound),
                    Ok(Ok(addrs)) => addrs.collect(),
                }
            }
        };
        if addrs.is_empty() {
            return Err(HttpError::DestinationNotFound);
        }
        for addr in &addrs {
            if let Err(range) = self.policy.address_allowed(addr.ip()) {
                return Err(self.refuse(PolicyViolation::AddressRefused {
                    host: host.clone(),
                    address: addr.ip(),
                    range,
                }));
            }
        }
        let tcp = connect(&addrs, connect_timeout).await?;
        let stream: Box<dyn Stream> = if use_tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    // The plugin sees only "TLS protocol error"; the operator needs the cause.
                    tracing::warn!(
                        plugin = %self.plugin,
                        host = %host,
                        "TLS handshake failed: {e} (a server with a private CA needs it in the plugin's policy: tls_ca)"
                    );
                    HttpError::Tls(e)
                })?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };

        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(FIRST_BYTE_TIMEOUT);
        let between = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(BETWEEN_BYTES_TIMEOUT)
            .max(Duration::from_millis(1));

        // Drive the connection while waiting for the response head.
        let mut conn = Box::pin(conn);
        let mut conn_done = false;
        let send = tokio::time::timeout(first_byte, sender.send_request(request));
        tokio::pin!(send);
        let response = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = send.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !conn_done && let Poll::Ready(r) = conn.as_mut().poll(cx) {
                conn_done = true;
                if let Err(e) = r {
                    return Poll::Ready(Ok(Err(e)));
                }
                return send.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;

        let limit = self.policy.max_response_bytes;
        let guard = self.clone();
        // A host a secret may be sent to may send it back: scrub what it says.
        let reflects = self.secrets.any_bound(&host, port);
        let mut response = response.map(move |incoming| {
            let capped = Capped {
                incoming,
                remaining: limit,
                guard: guard.clone(),
                host,
                idle: tokio::time::interval(between),
                started: false,
            };
            if reflects {
                let secrets = guard.secrets();
                super::reflect::Scrubbed::new(capped, secrets.forms(), secrets.placeholders())
                    .boxed_unsync()
            } else {
                capped.boxed_unsync()
            }
        });
        if reflects {
            super::reflect::scrub_headers(&self.secrets, response.headers_mut());
            // Replacing changes the body's length.
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        let io: IoFuture = Box::new(async move {
            if conn_done {
                return Ok(());
            }
            conn.await.map_err(HttpError::from)
        });
        Ok((response, io))
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    Err(last)
}

/// A response body that stops at the size cap and at a silence longer than the idle timeout.
struct Capped {
    incoming: hyper::body::Incoming,
    remaining: u64,
    guard: Arc<Guard>,
    host: String,
    idle: tokio::time::Interval,
    started: bool,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if !self.started {
            self.started = true;
            self.idle.reset();
        }
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                self.idle.reset();
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        let violation = PolicyViolation::ResponseTooLarge {
                            host: self.host.clone(),
                            limit: self.guard.policy.max_response_bytes,
                        };
                        return Poll::Ready(Some(Err(self.guard.refuse(violation))));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.idle.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// The `wasi:http` hooks of one call: all sends go through its [`Guard`].
pub(crate) struct Hooks {
    pub(crate) guard: Arc<Guard>,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        Box::new(self.guard.clone().send(request, options))
    }

    /// Small chunks, few of them: what an unsent body makes the host hold is bounded (see
    /// [`super::budget`]).
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        super::budget::OUTGOING_CHUNKS
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        super::budget::OUTGOING_CHUNK
    }
}

/// The TLS client configuration: the public web roots, plus `extra` (a plugin's granted CAs).
pub(crate) fn tls_config(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
