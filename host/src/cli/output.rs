//! Writing the command's output without panicking: a closed stdout (`| head`, a terminal that
//! went away) or stderr stops that stream's output, and nothing else. Rust's own `println!`
//! panics there, and the old `say!` ended the process with 0 in the middle of a deploy.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed: later output is dropped (the reader is gone).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// One line of command output; after a failed write, stdout stays silent.
pub(crate) fn stdout_line(text: &str) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        tracing::debug!("stdout is closed: output stops here, the command goes on");
    }
}

/// One line to stderr; a failure is ignored (there is no one left to tell).
pub(crate) fn stderr_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Part of a line (a live view's running line, redrawn in place), flushed at once.
pub(crate) fn stdout_part(text: &str) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if write!(out, "{text}").and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}
