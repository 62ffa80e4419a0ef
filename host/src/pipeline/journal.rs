//! The run's state machine, behind a narrow seam.
//!
//! Everything a run decides about its own course lives here, apart from the stages' work:
//! whether a stage may start (a shutdown suspends the run, a lost lock stops it), the rows a
//! stage writes as it starts and ends, the failure it becomes, what the run does after its
//! stages (finish, roll back automatically, keep the release live), and the status it ends
//! with. The journal is a trait: the state store is the real one; the tests below use one in
//! memory, so the machine is tested without wasm or a database. Which interrupted run is
//! resumed, superseded or rolled back is [`super::sequence::Interrupted::decide`], tested
//! beside it.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use super::{Stage, StageError, StageReport, StageStatus};
use crate::config::RollbackPolicy;
use crate::store::{RunStatus, Store, StoreError};

/// A journal write in flight.
pub(crate) type Write<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where a run writes its stages: a row when one starts, completed when it ends.
pub(crate) trait Journal: Send + Sync {
    /// `stage` of `run` started; returns its row's number.
    fn started<'a>(&'a self, run: &'a str, stage: Stage) -> Write<'a, i64>;
    /// Row `seq` of `run` ended.
    fn finished<'a>(
        &'a self,
        run: &'a str,
        seq: i64,
        status: StageStatus,
        detail: &'a str,
    ) -> Write<'a, ()>;
}

impl Journal for Store {
    fn started<'a>(&'a self, run: &'a str, stage: Stage) -> Write<'a, i64> {
        Box::pin(self.step_started(run, stage.name()))
    }

    fn finished<'a>(
        &'a self,
        run: &'a str,
        seq: i64,
        status: StageStatus,
        detail: &'a str,
    ) -> Write<'a, ()> {
        Box::pin(self.step_finished(run, seq, status.word(), Some(detail)))
    }
}

impl StageStatus {
    /// The journal's word for it.
    pub fn word(self) -> &'static str {
        match self {
            StageStatus::Done => "done",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
            StageStatus::Started => "started",
        }
    }
}

/// A stage that has started: its row and when.
pub(crate) type Open = (i64, Instant);

/// Whether `stage` may start. A shutdown stops forward progress only: a rollback the run
/// needs, and its last notifications, still happen. A run whose lock was taken over (it
/// stalled past its lease) does nothing more.
pub(crate) fn checkpoint(stage: Stage, stop: bool, lock_lost: bool) -> Result<(), StageError> {
    if stop && !matches!(stage, Stage::Rollback | Stage::Notify) {
        return Err(StageError::Suspended);
    }
    if lock_lost {
        return Err(StageError::LockLost);
    }
    Ok(())
}

/// Starts a stage in the journal, if it may start.
pub(crate) async fn begin(
    journal: &dyn Journal,
    run: &str,
    stage: Stage,
    stop: bool,
    lock_lost: bool,
) -> Result<Open, StageError> {
    checkpoint(stage, stop, lock_lost)?;
    let seq = journal.started(run, stage).await?;
    Ok((seq, Instant::now()))
}

/// Ends a stage in the journal; its report.
pub(crate) async fn end(
    journal: &dyn Journal,
    run: &str,
    stage: Stage,
    (seq, started): Open,
    status: StageStatus,
    detail: String,
) -> Result<StageReport, StageError> {
    let elapsed = started.elapsed();
    journal.finished(run, seq, status, &detail).await?;
    Ok(StageReport {
        stage,
        status,
        duration_ms: elapsed.as_secs_f64() * 1e3,
        detail,
    })
}

/// What a run does once its stages stop.
#[derive(Debug)]
pub(crate) enum After {
    /// Leave it for the next start (shutdown): journaled as running, lock released.
    Suspend,
    /// End it, failed or not.
    Finish(Option<StageError>),
    /// Its watch failed under `rollback = "auto"`: make the previous release live, then end
    /// it failed (rolled back, or the rollback's failure too).
    RollBack(StageError),
}

/// What follows the stages, from how they ended and the rollback policy.
pub(crate) fn after(
    result: Result<(), StageError>,
    suspended: bool,
    watch_failed: bool,
    policy: RollbackPolicy,
) -> After {
    if suspended {
        return After::Suspend;
    }
    match result {
        Ok(()) => After::Finish(None),
        Err(e) if !watch_failed => After::Finish(Some(e)),
        Err(e) => match policy {
            RollbackPolicy::Auto => After::RollBack(e),
            RollbackPolicy::Notify => After::Finish(Some(StageError::KeptLive(Box::new(e)))),
            RollbackPolicy::Off => After::Finish(Some(e)),
        },
    }
}

/// The status a run ends with.
pub(crate) fn status(error: Option<&StageError>, rolled_back: bool) -> RunStatus {
    match error {
        None => RunStatus::Succeeded,
        Some(_) if rolled_back => RunStatus::RolledBack,
        Some(_) => RunStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::config::{Config, Environment};
    use crate::pipeline::sequence::{Step, sequence};

    /// One row: the run, the stage, and how it ended (with its detail), once it has.
    type Row = (String, Stage, Option<(StageStatus, String)>);

    /// A journal in memory: the rows, and a switch that makes writes fail.
    #[derive(Default)]
    struct Memory {
        rows: Mutex<Vec<Row>>,
        broken: std::sync::atomic::AtomicBool,
    }

    impl Memory {
        fn rows(&self) -> Vec<(Stage, Option<StageStatus>)> {
            let rows = self.rows.lock().unwrap();
            rows.iter()
                .map(|(_, s, end)| (*s, end.as_ref().map(|e| e.0)))
                .collect()
        }
        fn check(&self) -> Result<(), StoreError> {
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                Err(StoreError::Query("the disk is full".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Journal for Memory {
        fn started<'a>(&'a self, run: &'a str, stage: Stage) -> Write<'a, i64> {
            Box::pin(async move {
                self.check()?;
                let mut rows = self.rows.lock().unwrap();
                rows.push((run.to_string(), stage, None));
                Ok(rows.len() as i64)
            })
        }
        fn finished<'a>(
            &'a self,
            _run: &'a str,
            seq: i64,
            status: StageStatus,
            detail: &'a str,
        ) -> Write<'a, ()> {
            Box::pin(async move {
                self.check()?;
                let mut rows = self.rows.lock().unwrap();
                rows[seq as usize - 1].2 = Some((status, detail.to_string()));
                Ok(())
            })
        }
    }

    /// The run's walk through an environment's stages, as the run makes it: each stage
    /// begins (or the run stops there), then ends as `outcome` says.
    async fn walk(
        journal: &Memory,
        steps: &[Step],
        stop_before: Option<Stage>,
        lock_lost_before: Option<Stage>,
        fails: Option<(Stage, StageError)>,
    ) -> Result<(), StageError> {
        let mut fails = fails;
        for stage in steps.iter().flat_map(|s| s.stages().iter().copied()) {
            let open = begin(
                journal,
                "r1",
                stage,
                stop_before == Some(stage),
                lock_lost_before == Some(stage),
            )
            .await?;
            match fails.take_if(|(s, _)| *s == stage) {
                Some((_, e)) => {
                    journal
                        .finished("r1", open.0, StageStatus::Failed, &e.to_string())
                        .await?;
                    return Err(StageError::In {
                        stage,
                        cause: Box::new(e),
                    });
                }
                None => {
                    end(journal, "r1", stage, open, StageStatus::Done, "ok".into()).await?;
                }
            }
        }
        Ok(())
    }

    fn env(keys: &str) -> Environment {
        let text = format!("[environments.e]\n{keys}\n");
        let config = Config::parse(Path::new("agent.toml"), &text).expect("parses");
        config.environments["e"].clone()
    }

    #[tokio::test]
    async fn a_shutdown_suspends_before_the_next_stage_but_never_before_rollback_or_notify() {
        let j = Memory::default();
        let steps = sequence(&env(""));
        let r = walk(&j, &steps, Some(Stage::Deploy), None, None).await;
        assert!(matches!(r, Err(StageError::Suspended)), "{r:?}");
        // Everything before deploy is journaled done; deploy never started.
        let rows = j.rows();
        assert!(rows.iter().all(|(_, s)| *s == Some(StageStatus::Done)));
        assert!(!rows.iter().any(|(s, _)| *s == Stage::Deploy));
        assert!(matches!(
            after(r, true, false, RollbackPolicy::Auto),
            After::Suspend
        ));
        for stage in [Stage::Rollback, Stage::Notify] {
            assert!(checkpoint(stage, true, false).is_ok(), "{stage:?}");
        }
    }

    #[tokio::test]
    async fn a_lost_lock_stops_the_run_even_before_rollback() {
        let j = Memory::default();
        let steps = sequence(&env(""));
        let r = walk(&j, &steps, None, Some(Stage::Promote), None).await;
        assert!(matches!(r, Err(StageError::LockLost)), "{r:?}");
        assert!(!j.rows().iter().any(|(s, _)| *s == Stage::Promote));
        assert!(matches!(
            checkpoint(Stage::Rollback, false, true),
            Err(StageError::LockLost)
        ));
        let after = after(r, false, false, RollbackPolicy::Auto);
        let After::Finish(Some(e)) = after else {
            panic!("{after:?}")
        };
        assert_eq!(status(Some(&e), false), RunStatus::Failed);
    }

    #[tokio::test]
    async fn a_failed_stage_is_journaled_with_its_cause_and_keeps_its_class() {
        let j = Memory::default();
        let steps = sequence(&env(""));
        let cause = StageError::Release("release r9 failed: image not found".into());
        let r = walk(&j, &steps, None, None, Some((Stage::Deploy, cause))).await;
        let e = r.expect_err("deploy fails");
        assert_eq!(e.to_string(), "deploy: release r9 failed: image not found");
        assert_eq!(e.stage(), Some(Stage::Deploy));
        assert!(matches!(e.cause(), StageError::Release(_)));
        assert_eq!(
            j.rows().last(),
            Some(&(Stage::Deploy, Some(StageStatus::Failed)))
        );
        let rows = j.rows.lock().unwrap();
        assert_eq!(
            rows.last().unwrap().2.as_ref().unwrap().1,
            "release r9 failed: image not found"
        );
    }

    #[tokio::test]
    async fn a_journal_that_cannot_write_stops_the_run_with_the_stores_error() {
        let j = Memory::default();
        j.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = walk(&j, &sequence(&env("")), None, None, None).await;
        assert!(matches!(r, Err(StageError::Store(_))), "{r:?}");
        assert!(j.rows().is_empty());
    }

    #[test]
    fn a_failed_watch_follows_the_rollback_policy() {
        let watch = || StageError::In {
            stage: Stage::Watch,
            cause: Box::new(StageError::Refused("5xx rate 0.2 > 0.01".into())),
        };
        assert!(matches!(
            after(Err(watch()), false, true, RollbackPolicy::Auto),
            After::RollBack(_)
        ));
        let After::Finish(Some(kept)) = after(Err(watch()), false, true, RollbackPolicy::Notify)
        else {
            panic!("notify finishes")
        };
        assert_eq!(
            kept.to_string(),
            "watch: 5xx rate 0.2 > 0.01; the release stays live (rollback policy `notify`)"
        );
        assert_eq!(status(Some(&kept), false), RunStatus::Failed);
        assert!(matches!(
            after(Err(watch()), false, true, RollbackPolicy::Off),
            After::Finish(Some(StageError::In { .. }))
        ));
        // A failure that is not the watch's never rolls back, whatever the policy.
        assert!(matches!(
            after(
                Err(StageError::LockLost),
                false,
                false,
                RollbackPolicy::Auto
            ),
            After::Finish(Some(StageError::LockLost))
        ));
        assert_eq!(status(Some(&watch()), true), RunStatus::RolledBack);
        assert_eq!(status(None, false), RunStatus::Succeeded);
    }
}
