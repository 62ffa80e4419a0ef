//! This process's peak resident memory, for the benchmarks that bound it.

/// Peak resident memory of this process, in KiB (since start or the last [`reset_peak`]).
pub fn peak_rss_kib() -> u64 {
    status_kib("self", "VmHWM:")
}

/// Resident memory of another process (the daemon under test), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}

/// A KiB field of `/proc/<who>/status`; 0 when unreadable.
fn status_kib(who: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{who}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets the peak to the current resident size (Linux `clear_refs`).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
