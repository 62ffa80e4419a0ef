//! A small, blocking HTTP client over `wasi:http`, with errors mapped to [`PluginError`].
//!
//! ```no_run
//! # use deploy_agent_sdk::prelude::*;
//! # fn f(ctx: &Context) -> Result<(), PluginError> {
//! let token = ctx.secret("token")?;
//! let project: serde_json::Value = http::get("https://api.example.com/v1/projects/web")
//!     .header("authorization", token.bearer())
//!     .send()?
//!     .error_for_status()?
//!     .json()?;
//! # Ok(()) }
//! ```
//!
//! Requests go only to the hosts agent.toml grants the plugin; the host refuses the rest
//! (the plugin sees [`PluginError::Rejected`] naming the host).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::{PluginError, rejected, retryable, unauthorized};

/// Read size for response bodies.
const READ_CHUNK: u64 = 64 * 1024;

/// A request being built.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Starts a GET request.
pub fn get(url: &str) -> RequestBuilder {
    request("GET", url)
}
/// Starts a POST request.
pub fn post(url: &str) -> RequestBuilder {
    request("POST", url)
}
/// Starts a PUT request.
pub fn put(url: &str) -> RequestBuilder {
    request("PUT", url)
}
/// Starts a PATCH request.
pub fn patch(url: &str) -> RequestBuilder {
    request("PATCH", url)
}
/// Starts a DELETE request.
pub fn delete(url: &str) -> RequestBuilder {
    request("DELETE", url)
}

/// Starts a request with any method.
pub fn request(method: &str, url: &str) -> RequestBuilder {
    RequestBuilder {
        method: method.to_string(),
        url: url.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl RequestBuilder {
    /// Adds a header. A [`crate::SecretRef`]'s placeholder may appear in the value.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, PluginError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| rejected(format!("cannot encode request body as JSON: {e}")))?;
        Ok(self
            .header("content-type", "application/json; charset=utf-8")
            .body(body))
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, PluginError> {
        send(self)
    }

    /// Sends the request (writes its body) and returns without waiting for the response.
    pub fn start(self) -> Result<Pending, PluginError> {
        start(self)
    }
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            rejected(format!(
                "HTTP {}: response is not the JSON expected: {e}; body starts: {}",
                self.status,
                snippet(&self.text())
            ))
        })
    }

    /// `Ok(self)` for 2xx; otherwise the error variant that tells the host what to do:
    /// 401/403 unauthorized; 408/425/429/5xx retryable (with `Retry-After` when sent);
    /// other statuses rejected.
    pub fn error_for_status(self) -> Result<Self, PluginError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        Err(self.status_error(&snippet(&self.text())))
    }

    /// `Ok(self)` for 2xx; otherwise the error `error` makes of the response (a platform's
    /// own error body, say).
    pub fn error_for_status_with(
        self,
        error: impl FnOnce(&Response) -> PluginError,
    ) -> Result<Self, PluginError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(error(&self))
        }
    }

    /// The error variant for this response's status, with `message` as the explanation.
    pub fn status_error(&self, message: &str) -> PluginError {
        let text = format!("HTTP {}: {message}", self.status);
        match self.status {
            401 | 403 => unauthorized(text),
            408 | 425 | 429 | 500 | 502 | 503 | 504 => retryable(text, self.retry_after_ms()),
            _ => rejected(text),
        }
    }

    /// `Retry-After` in milliseconds (delta-seconds form).
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.header("retry-after")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|s| s.saturating_mul(1000))
    }
}

/// Percent-encodes `s` for a URL's path segment or query value: everything but the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    /// As written after the authority: empty, `/…` or `?…`.
    path_and_query: &'a str,
}

impl Url<'_> {
    /// The request target, always starting with `/`.
    fn target(&self) -> String {
        if self.path_and_query.starts_with('/') {
            self.path_and_query.to_string()
        } else {
            format!("/{}", self.path_and_query)
        }
    }
}

fn parse_url(url: &str) -> Result<Url<'_>, PluginError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(rejected(format!(
            "unsupported URL `{url}`: expected http:// or https://"
        )));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(rejected(format!("URL `{url}` has no host")));
    }
    Ok(Url {
        scheme,
        authority,
        path_and_query: path,
    })
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    }
}

fn transport(e: ErrorCode, url: &str) -> PluginError {
    match e {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => rejected(format!(
            "request to {url} refused by the sandbox policy (the agent's log says which rule)"
        )),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout
        | ErrorCode::DestinationUnavailable
        // A connection closed before (or in the middle of) the response: transient.
        | ErrorCode::HttpProtocolError
        | ErrorCode::HttpResponseIncomplete => retryable(format!("{url}: {e:?}"), None),
        other => rejected(format!("{url}: {other:?}")),
    }
}

fn send(req: RequestBuilder) -> Result<Response, PluginError> {
    start(req)?.wait()
}

/// A request sent (its body written) whose response has not been read yet. Several may be
/// in flight at once, each on its own connection: start them, then [`Pending::wait`] for each.
#[derive(Debug)]
pub struct Pending {
    future: crate::bindings::wasi::http::types::FutureIncomingResponse,
    url: String,
}

fn start(req: RequestBuilder) -> Result<Pending, PluginError> {
    let url = parse_url(&req.url)?;
    let headers = Fields::new();
    for (name, value) in &req.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| rejected(format!("header `{name}`: {e:?}")))?;
    }
    // A request with a body, even an empty one (POST, PUT, PATCH, DELETE), says how long it
    // is: without a length it goes out chunked, which some servers refuse (411, S3-compatible
    // stores on DELETE) and which is not what the APIs' documents describe.
    if !req.body.is_empty() || !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        let len = req.body.len().to_string();
        headers
            .append("content-length", len.as_bytes())
            .map_err(|e| rejected(format!("header `content-length`: {e:?}")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let bad = |what: &str| rejected(format!("invalid {what} in `{}`", req.url));
    outgoing
        .set_method(&method(&req.method))
        .map_err(|()| bad("method"))?;
    outgoing
        .set_scheme(Some(&url.scheme))
        .map_err(|()| bad("scheme"))?;
    outgoing
        .set_authority(Some(url.authority))
        .map_err(|()| bad("host"))?;
    outgoing
        .set_path_with_query(Some(&url.target()))
        .map_err(|()| bad("path"))?;
    let body = outgoing.body().map_err(|()| bad("body"))?;

    // Hand the request to the host before writing the body: the host streams it as it comes.
    let future = outgoing_handler::handle(outgoing, None).map_err(|e| transport(e, &req.url))?;
    {
        let stream = body.write().map_err(|()| bad("body stream"))?;
        crate::io::write_all(&stream, &req.body).map_err(|e| stream_error(e, &req.url))?;
    }
    OutgoingBody::finish(body, None).map_err(|e| transport(e, &req.url))?;
    Ok(Pending {
        future,
        url: req.url,
    })
}

impl Pending {
    /// Waits for the response and reads it whole.
    pub fn wait(self) -> Result<Response, PluginError> {
        let Pending { future, url } = self;
        receive(future, &url)
    }
}

fn receive(
    future: crate::bindings::wasi::http::types::FutureIncomingResponse,
    url: &str,
) -> Result<Response, PluginError> {
    let response = loop {
        match future.get() {
            Some(result) => break result,
            None => future.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| rejected(format!("{url}: response already taken")))?
        .map_err(|e| transport(e, url))?;

    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| rejected(format!("{url}: response body already taken")))?;
    let body = read_all(&incoming, url)?;
    drop(response);
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_all(incoming: &IncomingBody, url: &str) -> Result<Vec<u8>, PluginError> {
    let stream = incoming
        .stream()
        .map_err(|()| rejected(format!("{url}: response body already taken")))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(stream_error(e, url)),
        }
    }
    Ok(out)
}

fn stream_error(e: StreamError, url: &str) -> PluginError {
    match e {
        StreamError::Closed => rejected(format!("{url}: connection closed")),
        StreamError::LastOperationFailed(err) => {
            retryable(format!("{url}: {}", err.to_debug_string()), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = parse_url("https://api.vercel.com/v13/deployments?teamId=t").unwrap();
        assert_eq!(u.authority, "api.vercel.com");
        assert_eq!(u.path_and_query, "/v13/deployments?teamId=t");
        let u = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.target(), "/");
        let u = parse_url("http://h?x=1").unwrap();
        assert_eq!(u.authority, "h");
        assert_eq!(u.target(), "/?x=1");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https:///x").is_err());
    }

    #[test]
    fn encodes_components() {
        assert_eq!(
            encode("app=web,tier in (a b)"),
            "app%3Dweb%2Ctier%20in%20%28a%20b%29"
        );
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
