//! A client of the daemon's API, for the CLI's remote mode (`--server URL`): JSON requests
//! with the bearer token, and the live event stream (server-sent events) of a run.
//!
//! HTTP/1.1 over TCP, or TLS for `https` (the web's roots, plus a CA file for a daemon with
//! its own certificate). One connection per request: the CLI makes a handful.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::pipeline::events::EventRecord;

/// How long connecting and each ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server URL is not one this client can use.
    #[error("server URL `{url}`: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The daemon could not be reached.
    #[error("cannot reach the daemon at {server}: {why}")]
    Unreachable {
        /// Where.
        server: String,
        /// Why.
        why: String,
    },
    /// The daemon answered with an error.
    #[error("the daemon refused {what} ({status}): {message}")]
    Refused {
        /// The request, `POST /v1/...`.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The daemon's `error`.
        message: String,
    },
    /// The answer was not what the API document says.
    #[error("the daemon's answer to {what} is not what this client expects: {why}")]
    Protocol {
        /// The request.
        what: String,
        /// What was wrong.
        why: String,
    },
}

impl RemoteError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The daemon's API at one URL, with a token.
#[derive(Clone)]
pub struct Client {
    url: String,
    host: String,
    port: u16,
    prefix: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("url", &self.url).finish()
    }
}

/// A response being read.
type Body = hyper::body::Incoming;

impl Client {
    /// A client of the daemon at `url` (`http://host:port` or `https://...`, a path prefix
    /// allowed), sending `token` as the bearer token, trusting `ca_pem` besides the web's
    /// roots for HTTPS.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, RemoteError> {
        let bad = |why: &str| RemoteError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("it must start with http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_string();
        let tls = if tls {
            let mut extra = Vec::new();
            if let Some(pem) = ca_pem {
                for cert in rustls_pemfile_certs(pem).map_err(|e| bad(&e))? {
                    extra.push(cert);
                }
            }
            Some(crate::runtime::tls_config(&extra).map_err(|e| bad(&format!("TLS: {e}")))?)
        } else {
            None
        };
        Ok(Client {
            url: url.trim_end_matches('/').to_string(),
            host,
            port,
            prefix,
            tls,
            token,
        })
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<(u16, Body), RemoteError> {
        let what = format!("{method} {path}");
        let unreachable = |why: String| RemoteError::Unreachable {
            server: self.url.clone(),
            why,
        };
        let stream = tokio::time::timeout(
            REQUEST_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable("no connection within 60 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(
                http::header::USER_AGENT,
                concat!("deploy-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, accept);
        if let Some(t) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RemoteError::Protocol {
                what: what.clone(),
                why: e.to_string(),
            })?;
        let response = match &self.tls {
            None => exchange(TokioIo::new(stream), request).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| unreachable(e.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                exchange(TokioIo::new(stream), request).await
            }
        }
        .map_err(unreachable)?;
        Ok((response.status().as_u16(), response.into_body()))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RemoteError> {
        let what = format!("{method} {path}");
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT * 10, async {
            let (status, body) = self.send(method, path, body, "application/json").await?;
            let bytes = body
                .collect()
                .await
                .map_err(|e| RemoteError::Unreachable {
                    server: self.url.clone(),
                    why: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, RemoteError>((status, bytes))
        })
        .await
        .map_err(|_| RemoteError::Unreachable {
            server: self.url.clone(),
            why: format!("no answer to {what} within 600 s"),
        })??;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(RemoteError::Refused {
                what,
                status,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| RemoteError::Protocol {
            what,
            why: e.to_string(),
        })
    }

    /// `GET path`, its JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RemoteError> {
        self.json("GET", path, None).await
    }

    /// `POST path` with a JSON body, its JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, RemoteError> {
        let body = serde_json::to_vec(body).map_err(|e| RemoteError::Protocol {
            what: format!("POST {path}"),
            why: e.to_string(),
        })?;
        self.json("POST", path, Some(body)).await
    }

    /// The server-sent events at `path` (a run's: `/v1/runs/{id}/events`).
    pub async fn events(&self, path: &str) -> Result<Events, RemoteError> {
        let (status, body) = self.send("GET", path, None, "text/event-stream").await?;
        if status != 200 {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(RemoteError::Refused {
                what: format!("GET {path}"),
                status,
                message,
            });
        }
        Ok(Events {
            body,
            buf: Vec::new(),
            what: format!("GET {path}"),
        })
    }
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file: {e}"))
}

async fn exchange<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<Body>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request: {e}"))
}

/// A stream of server-sent events being read.
#[derive(Debug)]
pub struct Events {
    body: Body,
    buf: Vec<u8>,
    what: String,
}

impl Events {
    /// The next event (comments and keep-alives skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<EventRecord>, RemoteError> {
        loop {
            while let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                let text = String::from_utf8_lossy(&block[..end.0]);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let record =
                    serde_json::from_str(&data.join("\n")).map_err(|e| RemoteError::Protocol {
                        what: self.what.clone(),
                        why: format!("an event that is not an EventRecord: {e}"),
                    })?;
                return Ok(Some(record));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(RemoteError::Protocol {
                        what: self.what.clone(),
                        why: format!("the stream broke: {e}"),
                    });
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
            }
        }
    }
}

/// Where the first event block ends: (end of its text, end including the blank line).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| (i, i + 2));
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_blocks_end_at_a_blank_line_in_either_line_ending() {
        assert_eq!(find_blank_line(b"id: 1\ndata: {}\n\nrest"), Some((14, 16)));
        assert_eq!(find_blank_line(b"data: {}\r\n\r\n"), Some((8, 12)));
        assert_eq!(find_blank_line(b"data: {}\n"), None);
    }

    #[test]
    fn a_server_url_is_checked_and_the_token_never_shows() {
        let c = Client::new(
            "http://127.0.0.1:8470/agent/",
            Some("dat_secret".into()),
            None,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.prefix, "/agent");
        assert_eq!(c.port, 8470);
        assert!(!format!("{c:?}").contains("dat_secret"));
        assert!(matches!(
            Client::new("127.0.0.1:8470", None, None),
            Err(RemoteError::Url { .. })
        ));
    }
}
