//! What the running stage is doing right now, for the live view and the event stream.
//!
//! The work says what it is doing where it does it ([`set`], [`bytes`], [`countdown`]): the
//! check and its attempt, backup bytes, migration N of M, a watch window's time left, an
//! analysis's last value. That lands in the task's [`Activity`], a cell the work writes and
//! a pump beside it reads: [`pumped`] runs a stage and, every [`TICK`], hands the reporter a
//! [`Progress`] sample with the stage's elapsed time, and publishes what changed on the bus
//! (at most once a second), so a remote `--follow` sees the same. Outside a pumped stage the
//! calls do nothing, so the lower layers (checks, migrations) need not know who listens.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::events::Bus;
use super::{Reporter, Stage};

/// How often the pump samples the running stage.
pub const TICK: Duration = Duration::from_millis(200);
/// How often a changed activity is published on the bus, at most.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

tokio::task_local! {
    static ACTIVITY: Activity;
}

/// One sample of the running stage, for [`Reporter::progress`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Since it started, ms.
    pub elapsed_ms: u64,
    /// What it is doing, in words (empty when it has not said).
    pub activity: String,
}

/// A part of the activity that is rendered when sampled.
#[derive(Debug)]
enum Part {
    Text(String),
    /// Bytes counted by the work, with the rate since `since`.
    Bytes {
        verb: &'static str,
        counter: Arc<AtomicU64>,
        since: Instant,
    },
    /// Time left until `until`.
    Countdown {
        label: String,
        until: Instant,
    },
}

impl Part {
    fn render(&self) -> String {
        match self {
            Part::Text(t) => t.clone(),
            Part::Bytes {
                verb,
                counter,
                since,
            } => {
                let n = counter.load(Ordering::Relaxed);
                let secs = since.elapsed().as_secs_f64().max(0.001);
                format!(
                    "{} {verb}, {}/s",
                    crate::units::human_size(n),
                    crate::units::human_size((n as f64 / secs) as u64)
                )
            }
            Part::Countdown { label, until } => {
                let left = until.saturating_duration_since(Instant::now());
                format!("{label}: {} s left", left.as_secs())
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    stage: Option<(Stage, Instant)>,
    parts: Vec<(&'static str, Part)>,
}

/// The cell a stage's work writes and the pump reads.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Mutex<State>>);

impl Activity {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn put(&self, slot: &'static str, part: Part) {
        self.with(|s| match s.parts.iter_mut().find(|(k, _)| *k == slot) {
            Some((_, p)) => *p = part,
            None => s.parts.push((slot, part)),
        });
    }

    /// The running stage's sample, if a stage is running.
    pub fn sample(&self) -> Option<Progress> {
        self.with(|s| {
            let (stage, started) = s.stage?;
            let activity = s
                .parts
                .iter()
                .map(|(_, p)| p.render())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" · ");
            Some(Progress {
                stage,
                elapsed_ms: started.elapsed().as_millis() as u64,
                activity,
            })
        })
    }
}

fn current(f: impl FnOnce(&Activity)) {
    let _ = ACTIVITY.try_with(f);
}

/// A stage started: the activity starts afresh.
pub(crate) fn started(stage: Stage) {
    current(|a| {
        a.with(|s| {
            s.stage = Some((stage, Instant::now()));
            s.parts.clear();
        })
    });
}

/// The stage ended: nothing is running until the next starts.
pub(crate) fn ended() {
    current(|a| {
        a.with(|s| {
            s.stage = None;
            s.parts.clear();
        })
    });
}

/// Says what the work in `slot` is doing (`check`, `migrate`...), replacing what it said.
pub(crate) fn set(slot: &'static str, text: impl Into<String>) {
    let text = text.into();
    current(|a| a.put(slot, Part::Text(text)));
}

/// Shows a byte counter the work advances, with its rate.
pub(crate) fn bytes(slot: &'static str, verb: &'static str, counter: Arc<AtomicU64>) {
    current(|a| {
        a.put(
            slot,
            Part::Bytes {
                verb,
                counter,
                since: Instant::now(),
            },
        )
    });
}

/// Shows the time left until `until`.
pub(crate) fn countdown(slot: &'static str, label: impl Into<String>, until: Instant) {
    let label = label.into();
    current(|a| a.put(slot, Part::Countdown { label, until }));
}

/// Who the published progress events belong to.
#[derive(Debug, Clone)]
pub(crate) struct Publish {
    /// The bus.
    pub bus: Arc<Bus>,
    /// The environment.
    pub environment: String,
    /// The run (or rollback).
    pub run: String,
    /// The version.
    pub version: String,
    /// Who started it.
    pub actor: String,
}

/// Runs `work` with a fresh [`Activity`], sampling it every [`TICK`] for `reporter` and the
/// bus while it runs.
pub(crate) async fn pumped<F: Future>(
    reporter: &dyn Reporter,
    publish: Option<&Publish>,
    work: F,
) -> F::Output {
    let activity = Activity::default();
    let mut work = pin!(ACTIVITY.scope(activity.clone(), work));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let Some(sample) = activity.sample() else { continue };
                reporter.progress(&sample);
                if let Some(p) = publish {
                    let text = format!("{}: {}", sample.stage.name(), sample.activity);
                    let due = published.as_ref().is_none_or(|(last, at)| {
                        *last != text && at.elapsed() >= PUBLISH_EVERY
                    });
                    if !sample.activity.is_empty() && due {
                        p.bus.progress(p, &sample);
                        published = Some((text, Instant::now()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::StageReport;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Progress>>);

    impl Reporter for Seen {
        fn stage(&self, _: &StageReport) {}
        fn note(&self, _: &str) {}
        fn progress(&self, p: &Progress) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p.clone());
        }
    }

    #[tokio::test]
    async fn a_pumped_stage_reports_what_its_work_says_with_the_time_it_has_taken() {
        let seen = Seen::default();
        let bus = Arc::new(Bus::default());
        let publish = Publish {
            bus: bus.clone(),
            environment: "t".into(),
            run: "r1".into(),
            version: "v".into(),
            actor: "me".into(),
        };
        let counter = Arc::new(AtomicU64::new(0));
        pumped(&seen, Some(&publish), async {
            started(Stage::Backup);
            bytes("backup", "written", counter.clone());
            for _ in 0..6 {
                counter.fetch_add(1 << 20, Ordering::Relaxed);
                tokio::time::sleep(TICK).await;
            }
            set("check", "check `x` attempt 2/3");
            tokio::time::sleep(TICK * 2).await;
            ended();
            tokio::time::sleep(TICK * 2).await;
        })
        .await;
        let seen = seen.0.into_inner().unwrap_or_else(|e| e.into_inner());
        assert!(seen.len() >= 5, "{seen:?}");
        assert!(seen.iter().all(|p| p.stage == Stage::Backup));
        // Elapsed time grows and the byte count moves: it never looks frozen.
        assert!(seen.windows(2).all(|w| w[0].elapsed_ms <= w[1].elapsed_ms));
        assert!(
            seen.first()
                .is_some_and(|p| p.elapsed_ms < seen[seen.len() - 1].elapsed_ms)
        );
        let distinct: std::collections::HashSet<&str> =
            seen.iter().map(|p| p.activity.as_str()).collect();
        assert!(distinct.len() >= 3, "{distinct:?}");
        assert!(seen.iter().any(|p| p.activity.contains("MiB written")));
        assert!(
            seen.last()
                .is_some_and(|p| p.activity.ends_with("check `x` attempt 2/3")),
            "{seen:?}"
        );
        // Nothing is sampled once the stage ended; the bus got the changes, not every tick.
        let (events, _) = bus.subscribe(None, |e| e.deployment_id == "r1");
        assert!(
            !events.is_empty() && events.len() < seen.len(),
            "{events:?}"
        );
        assert!(events.iter().all(|e| e.kind.as_str() == "progress"));
        // Outside a pumped stage the calls are no-ops.
        set("check", "nobody listens");
    }
}
