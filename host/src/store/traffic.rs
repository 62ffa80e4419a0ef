//! A run's canary steps: the weight each set, and how far it got. Written before the weight
//! is asked of the target and again after each change, so a run that dies resumes at the
//! same step with the weight it had.

use serde::{Deserialize, Serialize};

use super::{Row, Store, StoreError, now_ms};

/// How far a canary step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrafficPhase {
    /// The weight was journaled and asked of the target; not yet seen taking effect.
    Setting,
    /// The weight took effect; the step's pause (analysis, approval) is running.
    Holding,
    /// The step passed.
    Done,
    /// Traffic went back to the stable release: the step failed, or the run was aborted.
    Aborted,
}

impl TrafficPhase {
    /// The store's word.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPhase::Setting => "setting",
            TrafficPhase::Holding => "holding",
            TrafficPhase::Done => "done",
            TrafficPhase::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Option<TrafficPhase> {
        [
            TrafficPhase::Setting,
            TrafficPhase::Holding,
            TrafficPhase::Done,
            TrafficPhase::Aborted,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// One canary step of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TrafficStep {
    /// The run.
    pub run_id: String,
    /// The step, from 0, in the order of `steps`.
    pub step: i64,
    /// The release getting the traffic.
    pub release_id: String,
    /// Percent of requests it gets at this step.
    pub weight: i64,
    /// How far the step got.
    pub phase: TrafficPhase,
    /// What happened (the analysis verdict, the decision, why it aborted).
    pub detail: Option<String>,
    /// When the step began.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// When it last changed.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

const COLUMNS: &str = "run_id, step, release_id, weight, phase, detail, started_at, updated_at";

fn traffic_step(mut r: Row) -> Result<TrafficStep, StoreError> {
    Ok(TrafficStep {
        run_id: r.s()?,
        step: r.i()?,
        release_id: r.s()?,
        weight: r.i()?,
        phase: r.w(TrafficPhase::parse)?,
        detail: r.o()?,
        started_at: r.i()?,
        updated_at: r.i()?,
    })
}

impl Store {
    /// Journals that step `step` of `run` sets `weight` for `release`, before it is asked.
    /// A step already journaled keeps its row (a resumed run sets the same weight again).
    pub async fn traffic_step_started(
        &self,
        run: &str,
        step: i64,
        release: &str,
        weight: u8,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.exec(
            &format!(
                "INSERT INTO traffic_steps ({COLUMNS}) VALUES ($1, $2, $3, $4, 'setting', NULL, $5, $5) \
                 ON CONFLICT (run_id, step) DO NOTHING"
            ),
            &[
                run.into(),
                step.into(),
                release.into(),
                i64::from(weight).into(),
                now.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Moves step `step` of `run` to `phase`.
    pub async fn traffic_step_phase(
        &self,
        run: &str,
        step: i64,
        phase: TrafficPhase,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE traffic_steps SET phase = $1, detail = COALESCE($2, detail), updated_at = $3 \
             WHERE run_id = $4 AND step = $5",
            &[
                phase.as_str().into(),
                detail.into(),
                now_ms().into(),
                run.into(),
                step.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// A run's canary steps, in order.
    pub async fn traffic_steps(&self, run: &str) -> Result<Vec<TrafficStep>, StoreError> {
        self.rows(
            &format!("SELECT {COLUMNS} FROM traffic_steps WHERE run_id = $1 ORDER BY step"),
            &[run.into()],
        )
        .await?
        .into_iter()
        .map(traffic_step)
        .collect()
    }
}
