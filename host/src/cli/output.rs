//! Writing the command's output without panicking: a closed stdout (`| head`, a terminal that
//! went away) or stderr stops that stream's output, and nothing else. Rust's own `println!`
//! panics there, and the old `say!` ended the process with 0 in the middle of a deploy.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed: later output is dropped (the reader is gone).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes one line to `out` (stdout or stderr); a failed write is remembered for stdout and
/// ignored for stderr, where there is no one left to tell.
pub(crate) fn line<W: Write + IsStdout>(out: W, text: &str) {
    if out.is_stdout() && STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let stdout = out.is_stdout();
    let mut out = out;
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() && stdout {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        tracing::debug!("stdout is closed: output stops here, the command goes on");
    }
}

/// Whether a stream is stdout (so a failure there stops later output).
pub(crate) trait IsStdout {
    /// Is it?
    fn is_stdout(&self) -> bool;
}

impl IsStdout for std::io::Stdout {
    fn is_stdout(&self) -> bool {
        true
    }
}

impl IsStdout for std::io::Stderr {
    fn is_stdout(&self) -> bool {
        false
    }
}
