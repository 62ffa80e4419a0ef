//! Stream helpers over `wasi:io`.

use crate::bindings::wasi::io::streams::{OutputStream, StreamError};

/// Writes all of `data` to `stream` in as few calls as the stream allows (each write takes
/// what `check-write` grants, not `blocking-write-and-flush`'s 4 KiB), then flushes.
pub fn write_all(stream: &OutputStream, mut data: &[u8]) -> Result<(), StreamError> {
    while !data.is_empty() {
        let budget = loop {
            let n = stream.check_write()?;
            if n > 0 {
                break n;
            }
            stream.subscribe().block();
        };
        let take = usize::try_from(budget)
            .unwrap_or(usize::MAX)
            .min(data.len());
        stream.write(&data[..take])?;
        data = &data[take..];
    }
    match stream.blocking_flush() {
        // The reader took everything and closed (an HTTP body that reached its length).
        Err(StreamError::Closed) => Ok(()),
        other => other,
    }
}
