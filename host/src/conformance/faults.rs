//! The fault checks every kind shares: the stand-in fails the way platforms fail, and the
//! plugin must say so with the variant that tells the host what to do.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::standin::Fault;
use super::{Kit, said};
use crate::runtime::{CallContext, CallError, Plugin, PluginError};

/// The deadline the hang check runs the plugin under.
pub(super) const HANG_DEADLINE: Duration = Duration::from_millis(1500);

/// A call that reaches the platform, made once per fault.
pub(super) type Probe<'p> = &'p (
        dyn for<'a> Fn(
    &'a Plugin,
    &'a CallContext,
) -> Pin<Box<dyn Future<Output = Result<(), CallError>> + Send + 'a>>
            + Sync
    );

/// What each fault must turn into.
#[derive(Clone, Copy)]
enum Want {
    /// Retryable, carrying exactly this wait.
    RetryAfter(u64),
    /// Retryable.
    Retryable,
    /// Unauthorized.
    Unauthorized,
    /// Rejected or invalid-config: permanent.
    Permanent,
}

const CASES: [(&str, Fault, Want); 6] = [
    (
        "HTTP 429 with Retry-After: 7 is retryable with a 7000 ms wait",
        Fault::Status(429, Some(7)),
        Want::RetryAfter(7000),
    ),
    (
        "HTTP 503 is retryable",
        Fault::Status(503, None),
        Want::Retryable,
    ),
    (
        "HTTP 401 is unauthorized",
        Fault::Status(401, None),
        Want::Unauthorized,
    ),
    (
        "HTTP 403 is unauthorized",
        Fault::Status(403, None),
        Want::Unauthorized,
    ),
    (
        "HTTP 400 is rejected (or invalid-config), not retried",
        Fault::Status(400, None),
        Want::Permanent,
    ),
    (
        "a reset connection is retryable",
        Fault::Reset,
        Want::Retryable,
    ),
];

/// Runs every fault against `probe` (named `op` in the report).
pub(super) async fn run(kit: &mut Kit, op: &'static str, probe: Probe<'_>) {
    for (what, fault, want) in CASES {
        let name = format!("{op}: {what}");
        kit.standin.set_fault(Some(fault));
        let before = kit.standin.count();
        let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
        let out = kit.call(op, probe(&plugin, &ctx)).await;
        kit.standin.set_fault(None);
        if kit.standin.count() == before {
            kit.fail(
                name,
                "the call sent no request, so the fault never reached the plugin",
            );
            continue;
        }
        match judge(&out, want) {
            Ok(()) => kit.pass(name, describe(&out)),
            Err(e) => kit.fail(name, e),
        }
    }
    hang(kit, op, probe).await;
}

/// A server that never answers: the call ends at the deadline, as a timeout, and the next
/// call works.
async fn hang(kit: &mut Kit, op: &'static str, probe: Probe<'_>) {
    let name = format!(
        "{op}: a server that never answers ends at the {} ms deadline",
        HANG_DEADLINE.as_millis()
    );
    kit.standin.set_fault(Some(Fault::Hang));
    let (hasty, ctx) = (kit.hasty.clone(), kit.ctx.clone());
    let began = Instant::now();
    let out = probe(&hasty, &ctx).await;
    let took = began.elapsed();
    kit.standin.set_fault(None);
    let slack = Duration::from_secs(2);
    match out {
        Err(CallError::Timeout { .. }) if took <= HANG_DEADLINE + slack => {
            kit.pass(name, format!("timed out after {} ms", took.as_millis()))
        }
        Err(CallError::Timeout { .. }) => kit.fail(
            name,
            format!("timed out, but only after {} ms", took.as_millis()),
        ),
        other => kit.fail(
            name,
            format!(
                "expected the deadline to stop it; got {} after {} ms",
                describe(&other),
                took.as_millis()
            ),
        ),
    }
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let after = kit.call(op, probe(&plugin, &ctx)).await;
    let name = format!("{op}: works again once the platform recovers");
    match after {
        Ok(()) => kit.pass(name, "the next call succeeded"),
        Err(e) => kit.fail(name, said(&e)),
    }
}

fn describe(out: &Result<(), CallError>) -> String {
    match out {
        Ok(()) => "succeeded".into(),
        Err(e) => said(e),
    }
}

fn judge(out: &Result<(), CallError>, want: Want) -> Result<(), String> {
    let error = match out {
        Err(CallError::Plugin { error, .. }) => error,
        other => {
            return Err(format!("expected a plugin error; got {}", describe(other)));
        }
    };
    let ok = match (want, error) {
        (Want::RetryAfter(ms), PluginError::Retryable(r)) => {
            if r.retry_after_ms != Some(ms) {
                return Err(format!(
                    "retryable, but with retry-after-ms {:?}: read Retry-After (seconds) into retry-after-ms",
                    r.retry_after_ms
                ));
            }
            true
        }
        (Want::Retryable, PluginError::Retryable(_)) => true,
        (Want::Unauthorized, PluginError::Unauthorized(_)) => true,
        (Want::Permanent, PluginError::Rejected(_) | PluginError::InvalidConfig(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let expected = match want {
            Want::RetryAfter(_) | Want::Retryable => "retryable",
            Want::Unauthorized => "unauthorized",
            Want::Permanent => "rejected or invalid-config",
        };
        Err(format!("expected {expected}; got {}", describe(out)))
    }
}
