//! The live view of a run, local or followed from a daemon: a line per stage as it ends and,
//! while one runs, what it is doing with its elapsed time. On a terminal the running stage's
//! line is redrawn in place every tick; elsewhere (a pipe, a CI log) plain lines, one when
//! what the stage is doing changes, at most one a second.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pipeline::progress::Progress;
use crate::pipeline::{Reporter, Stage, StageReport, StageStatus};

/// How often a plain (non-terminal) view writes a progress line for one stage, at most.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// A duration as the view shows it: `41.3 ms`, `2.41 s`.
pub(super) fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

/// An elapsed time on the running line: `3.4 s`, `2m 05s`.
fn elapsed(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[derive(Default)]
struct State {
    /// What the plain view last wrote for the running stage, and when.
    written: Option<(String, Instant)>,
    /// Whether a terminal line is drawn and must be cleared first.
    drawn: bool,
}

/// The live view.
pub(super) struct Live {
    tty: bool,
    width: usize,
    state: Mutex<State>,
}

impl Live {
    /// The view for this process's stdout.
    pub(super) fn new() -> Live {
        let tty = std::io::stdout().is_terminal();
        Live {
            tty,
            width: if tty { terminal_width() } else { usize::MAX },
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The prefix that clears a drawn running line.
    fn clear(&self, state: &mut State) -> &'static str {
        if self.tty && std::mem::take(&mut state.drawn) {
            "\r\x1b[2K"
        } else {
            ""
        }
    }

    fn running_line(&self, stage: Stage, ms: u64, activity: &str) -> String {
        let line = format!("  … {:<9} {:>9}  {activity}", stage.name(), elapsed(ms));
        if line.chars().count() > self.width.saturating_sub(1) {
            let cut: String = line.chars().take(self.width.saturating_sub(2)).collect();
            format!("{cut}…")
        } else {
            line
        }
    }
}

impl Reporter for Live {
    fn stage(&self, r: &StageReport) {
        let mut state = self.state();
        let clear = self.clear(&mut state);
        state.written = None;
        if r.status == StageStatus::Started {
            if self.tty {
                super::output::stdout_part(&format!(
                    "{clear}{}",
                    self.running_line(r.stage, 0, "")
                ));
                state.drawn = true;
            }
            return;
        }
        let mark = match r.status {
            StageStatus::Done => "✓",
            StageStatus::Skipped => "-",
            StageStatus::Failed => "✗",
            StageStatus::Started => "…",
        };
        say!(
            "{clear}  {mark} {:<9} {:>9}  {}",
            r.stage.name(),
            ms(r.duration_ms),
            r.detail
        );
    }

    fn note(&self, text: &str) {
        let mut state = self.state();
        let clear = self.clear(&mut state);
        say!("{clear}  ! {text}");
    }

    fn progress(&self, p: &Progress) {
        let mut state = self.state();
        if self.tty {
            let clear = if state.drawn { "\r\x1b[2K" } else { "" };
            super::output::stdout_part(&format!(
                "{clear}{}",
                self.running_line(p.stage, p.elapsed_ms, &p.activity)
            ));
            state.drawn = true;
            return;
        }
        // Plain lines: what changed, once the stage has run a second, at most once a second.
        if p.activity.is_empty() || p.elapsed_ms < PLAIN_EVERY.as_millis() as u64 {
            return;
        }
        let due = state
            .written
            .as_ref()
            .is_none_or(|(last, at)| *last != p.activity && at.elapsed() >= PLAIN_EVERY);
        if due {
            say!("{}", self.running_line(p.stage, p.elapsed_ms, &p.activity));
            state.written = Some((p.activity.clone(), Instant::now()));
        }
    }
}

/// Shows nothing (`--output json`).
pub(super) struct Silent;

impl Reporter for Silent {
    fn stage(&self, _: &StageReport) {}
    fn note(&self, _: &str) {}
}

/// The view a command shows: live for people, silent for JSON.
pub(super) fn reporter(json: bool) -> Box<dyn Reporter> {
    if json {
        Box::new(Silent)
    } else {
        Box::new(Live::new())
    }
}

/// The terminal's width in columns (80 when it cannot be told).
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c > 20)
        .unwrap_or_else(|| crate::units::terminal_columns().unwrap_or(80))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_times_read_as_people_read_them() {
        assert_eq!(elapsed(3_400), "3.4 s");
        assert_eq!(elapsed(125_000), "2m 05s");
        assert_eq!(ms(41.25), "41.2 ms");
        assert_eq!(ms(2_410.0), "2.41 s");
    }

    #[test]
    fn a_long_running_line_is_cut_to_the_terminal() {
        let live = Live {
            tty: true,
            width: 40,
            state: Mutex::default(),
        };
        let line = live.running_line(Stage::Backup, 1_000, &"x".repeat(100));
        assert_eq!(line.chars().count(), 39);
        assert!(line.ends_with('…'));
    }
}
