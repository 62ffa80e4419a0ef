//! Responses from a host a secret is bound to, scrubbed before the plugin reads a byte.
//!
//! A platform may reflect what it was sent: an error page or a debug endpoint that echoes the
//! request's headers hands back the very value the host substituted for a placeholder. So
//! every form of every secret's value (see [`super::forms`]) is replaced by the secret's
//! placeholder, in the response's headers and in its body, as the body streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::Error as HttpError;

use super::forms::{Forms, Scrub};
use super::secrets::Secrets;

/// Replaces every form of a value in `headers` by its placeholder.
pub(super) fn scrub_headers(secrets: &Secrets, headers: &mut HeaderMap) {
    let forms = secrets.forms();
    let placeholders = secrets.placeholders();
    let with = |i: usize| placeholders[i].clone();
    for value in headers.values_mut() {
        if let Some(clean) = forms.replace(value.as_bytes(), &with)
            && let Ok(clean) = HeaderValue::from_bytes(&clean)
        {
            *value = clean;
        }
    }
}

/// A response body with every form of a value replaced by its placeholder.
pub(super) struct Scrubbed<B> {
    inner: B,
    scrub: Scrub,
    /// Trailers (or the end) wait until the held bytes are out.
    pending: Option<Frame<Bytes>>,
    done: bool,
}

impl<B> Scrubbed<B> {
    pub(super) fn new(inner: B, forms: Arc<Forms>, placeholders: Vec<Vec<u8>>) -> Self {
        Scrubbed {
            inner,
            scrub: Scrub::new(forms, placeholders),
            pending: None,
            done: false,
        }
    }
}

impl<B> Body for Scrubbed<B>
where
    B: Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        loop {
            if let Some(frame) = self.pending.take() {
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
                        let out = self.scrub.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => {
                        let rest = self.scrub.finish();
                        self.pending = Some(trailers);
                        if !rest.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    let rest = self.scrub.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    /// Replacing changes the length: no exact size.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
