//! Outgoing request bodies, checked for secret placeholders on their way out.
//!
//! Placeholders are never substituted into bodies (a platform may echo or log a body), and a
//! placeholder in a request to a host its secret is not bound to refuses the request, body
//! included: the body is scanned as it streams, with enough of each chunk held back that a
//! placeholder split across chunks is still seen, and the request is cut off before the
//! placeholder leaves. Nothing is buffered whole.

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
    /// The tail of what came so far, not yet sent: a placeholder may continue in the next
    /// chunk.
    held: Vec<u8>,
    /// How much to hold back.
    hold: usize,
    /// A frame that arrived while held bytes still had to go first (trailers).
    next: Option<Frame<Bytes>>,
    done: bool,
}

impl Scanned {
    pub(super) fn new(inner: WasiBody, guard: Arc<Guard>, host: String, port: u16) -> Scanned {
        let hold = guard.secrets().longest_placeholder();
        Scanned {
            inner,
            guard,
            host,
            port,
            held: Vec::new(),
            hold,
            next: None,
            done: false,
        }
    }

    /// Checks `held` (with the new data appended) and splits off what may be sent now.
    fn release(&mut self, last: bool) -> Result<Option<Bytes>, HttpError> {
        if let Err(violation) = self
            .guard
            .secrets()
            .substitute_bytes(&self.held, &self.host, self.port)
        {
            self.held.clear();
            self.done = true;
            return Err(self.guard.refuse(violation));
        }
        let keep = if last {
            0
        } else {
            self.hold.min(self.held.len())
        };
        let send = self.held.len() - keep;
        if send == 0 {
            return Ok(None);
        }
        let out: Vec<u8> = self.held.drain(..send).collect();
        Ok(Some(Bytes::from(out)))
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
            if let Some(frame) = self.next.take() {
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
                        self.held.extend_from_slice(&data);
                        match self.release(false) {
                            Err(e) => return Poll::Ready(Some(Err(e))),
                            Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                            Ok(None) => continue,
                        }
                    }
                    Err(trailers) => {
                        // The held bytes go before the trailers.
                        match self.release(true) {
                            Err(e) => return Poll::Ready(Some(Err(e))),
                            Ok(Some(out)) => {
                                self.next = Some(trailers);
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            Ok(None) => return Poll::Ready(Some(Ok(trailers))),
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    match self.release(true) {
                        Err(e) => return Poll::Ready(Some(Err(e))),
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) => return Poll::Ready(None),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none() && self.held.is_empty()
    }

    /// The same length as the body it scans (bytes are held back, never added or dropped),
    /// so an exact length still becomes `content-length`.
    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
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
            Secret {
                value: SecretValue::new("s3cr3t".into()),
                hosts: vec![HostPattern::parse("api.example.com").unwrap()],
            },
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
}
