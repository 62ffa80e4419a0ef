//! Crash injection for the recovery tests: `DEPLOY_AGENT_FAILPOINT=before:migrate` (or
//! `after:deploy`, ...) makes the agent SIGKILL itself at that step boundary, exactly as an
//! operator's `kill -9` or a power cut would, with nothing flushed or cleaned up.
//!
//! `before:STAGE` fires after the step's start is journaled and before it does anything;
//! `after:STAGE` fires after it did its work and before its end is journaled: the two
//! windows a crash can leave behind.
//!
//! Compiled only with the `failpoints` feature (the tests enable it); otherwise [`hit`] is
//! an empty inline function and the variable means nothing.

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_when: &str, _stage: &str) {}

/// Kills the process if the failpoint names this boundary.
#[cfg(feature = "failpoints")]
pub fn hit(when: &str, stage: &str) {
    let Ok(point) = std::env::var("DEPLOY_AGENT_FAILPOINT") else {
        return;
    };
    if point == format!("{when}:{stage}") {
        tracing::warn!("failpoint {point}: killing the agent");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        // `kill` should not return; if it cannot run, crash anyway.
        std::process::abort();
    }
}
