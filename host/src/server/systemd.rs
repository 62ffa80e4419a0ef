//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify` units: `READY=1`
//! once the daemon serves, `WATCHDOG=1` at half the unit's `WatchdogSec`, `STOPPING=1` at
//! shutdown, `STATUS=` lines for `systemctl status`.
//!
//! A datagram to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); nothing at all when the variable is not set (not under systemd).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` to systemd; a no-op outside systemd. Errors are logged, never fatal.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!("sd_notify to {path}: {e}");
    }
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID`), halved as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
