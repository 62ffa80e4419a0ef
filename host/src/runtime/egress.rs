//! Outgoing request bodies, checked for secret placeholders and values on their way out.
//!
//! Placeholders are never substituted into bodies (a platform may echo or log a body), and a
//! placeholder in a request to a host its secret is not bound to refuses the request, body
//! included. A secret's value, raw or encoded, refuses the request whatever its host. The
//! body is scanned as it streams, with enough of each chunk held back that a placeholder or
//! value split across chunks is still seen, and the request is cut off before it leaves.
//! Nothing is buffered whole.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use super::http::Guard;

/// A request body that refuses placeholders for secrets not bound to its host.
pub(super) struct Scanned {
    inner: WasiBody,
    guard: Arc<Guard>,
    host: String,
    port: u16,
    /// The last bytes that came, not yet sent: a placeholder may continue in the next chunk.
    /// Never more than `hold`.
    held: Vec<u8>,
    /// How much to hold back: the longest placeholder there can be.
    hold: usize,
    /// Frames checked and ready to go, in order.
    ready: VecDeque<Frame<Bytes>>,
    done: bool,
}

impl Scanned {
    pub(super) fn new(inner: WasiBody, guard: Arc<Guard>, host: String, port: u16) -> Scanned {
        let hold = guard
            .secrets()
            .longest_placeholder()
            .max(guard.secrets().forms().longest());
        Scanned {
            inner,
            guard,
            host,
            port,
            held: Vec::new(),
            hold,
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// Refuses `bytes` if they hold a placeholder not bound to this request's host, or a
    /// secret's value.
    fn check(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        let secrets = self.guard.secrets();
        let checked = secrets
            .substitute_bytes(bytes, &self.host, self.port)
            .and_then(|_| secrets.refuse_values(bytes, &self.host));
        match checked {
            Ok(()) => Ok(()),
            Err(violation) => {
                self.held.clear();
                self.ready.clear();
                self.done = true;
                Err(self.guard.refuse(violation))
            }
        }
    }

    /// Checks a chunk and queues what may go now. A placeholder that crosses from the held
    /// bytes into this chunk ends within its first `hold` bytes; one inside the chunk is found
    /// in the chunk. The chunk itself goes out as a slice, uncopied; only its last `hold`
    /// bytes are copied, to be held.
    fn take(&mut self, data: Bytes) -> Result<(), HttpError> {
        if !self.held.is_empty() {
            let mut seam = self.held.clone();
            seam.extend_from_slice(&data[..data.len().min(self.hold)]);
            self.check(&seam)?;
        }
        self.check(&data)?;
        let keep = data.len().min(self.hold);
        let cut = data.len() - keep;
        if cut > 0 {
            self.flush();
            self.ready.push_back(Frame::data(data.slice(..cut)));
            self.held = data[cut..].to_vec();
        } else {
            self.held.extend_from_slice(&data);
            if self.held.len() > self.hold {
                let send: Vec<u8> = self.held.drain(..self.held.len() - self.hold).collect();
                self.ready.push_back(Frame::data(Bytes::from(send)));
            }
        }
        Ok(())
    }

    /// Queues the held bytes (all already checked).
    fn flush(&mut self) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.ready.push_back(Frame::data(Bytes::from(held)));
        }
    }
}

impl Body for Scanned {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = self.take(data) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    // The held bytes go before the trailers.
                    Err(trailers) => {
                        self.flush();
                        self.ready.push_back(trailers);
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    self.flush();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }

    /// The same length as the body it scans (bytes are held back, never added or dropped),
    /// so an exact length still becomes `content-length`.
    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let queued: usize = self
            .ready
            .iter()
            .filter_map(|f| f.data_ref().map(Bytes::len))
            .sum();
        let pending = (self.held.len() + queued) as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};

    use super::Scanned;
    use crate::runtime::http::{Guard, tls_config};
    use crate::runtime::policy::{HostPattern, Policy};
    use crate::runtime::secrets::{Secret, SecretValue, Secrets};

    fn guard() -> Arc<Guard> {
        let mut secrets = Secrets::default();
        secrets.insert(
            "token".into(),
            Secret::new(
                SecretValue::new("s3cr3t-value".into()),
                vec![HostPattern::parse("api.example.com").unwrap()],
            ),
        );
        Arc::new(Guard::new(
            "test".into(),
            Arc::new(Policy::default()),
            Arc::new(secrets),
            tls_config(&[]).unwrap(),
        ))
    }

    /// Streams `chunks` through the scanner for `host`; what went out, and the error if any.
    async fn send(chunks: &[&str], host: &str) -> (Vec<u8>, Option<String>) {
        let frames: Vec<Result<Frame<Bytes>, wasmtime_wasi_http::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from(c.to_string()))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let mut scanned = Scanned::new(body, guard(), host.into(), 443);
        let mut out = Vec::new();
        while let Some(frame) = scanned.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn a_placeholder_split_across_chunks_is_caught_before_it_leaves() {
        let chunks = ["{\"a\": \"x\", \"t\": \"__sec", "ret__tok", "en__\"}"];
        let (out, err) = send(&chunks, "evil.example.net").await;
        assert!(err.is_some(), "refused");
        assert!(!String::from_utf8_lossy(&out).contains("__sec"), "{out:?}");
        // After a chunk long enough to be sent on: its tail is held, so the start of the
        // placeholder never leaves either.
        let long = format!("{}__secr", "x".repeat(1000));
        let (out, err) = send(&[&long, "et__token__ done"], "evil.example.net").await;
        assert!(err.is_some(), "refused");
        assert!(!String::from_utf8_lossy(&out).contains("__secr"), "{out:?}");
        assert!(
            out.len() < 1000 && !out.is_empty(),
            "the chunk's head went out uncopied"
        );
        // To the bound host the body goes out whole, the placeholder not substituted.
        let (out, err) = send(&chunks, "api.example.com").await;
        assert_eq!(err, None);
        assert_eq!(out, chunks.concat().into_bytes());
        // A body with no placeholder passes unchanged, however it is cut.
        let plain = ["a".repeat(100_000), "b".repeat(3)];
        let (out, err) = send(&[&plain[0], &plain[1]], "evil.example.net").await;
        assert_eq!(err, None);
        assert_eq!(out.len(), 100_003);
    }

    /// A value the plugin got hold of, base64-encoded and cut in two: refused before the
    /// part that carries it leaves, to any host, the bound one included.
    #[tokio::test]
    async fn a_secret_value_in_a_body_is_refused_whatever_the_host() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t-value");
        let body = format!("{{\"x\": \"{b64}\"}}");
        let (a, b) = body.split_at(12);
        for host in ["evil.example.net", "api.example.com"] {
            let (out, err) = send(&[a, b], host).await;
            let err = err.expect("refused");
            assert!(!err.contains("s3cr3t"), "{err}");
            assert!(
                !String::from_utf8_lossy(&out).contains(&b64[..8]),
                "{out:?}"
            );
        }
    }
}
