//! Approval gates: a run waits at a gate until someone approves or rejects it, or it expires.

use serde::Serialize;

use super::{Row, Store, StoreError, now_ms};

/// A gate's request and, once made, its decision.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Approval {
    /// The run.
    pub deployment_id: String,
    /// The gate: `start`, `promote`, or `analysis` (an inconclusive analysis).
    pub gate: String,
    /// The environment.
    pub environment: String,
    /// Asked, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: i64,
    /// Expires, ms since the epoch.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// `approved` or `rejected`, once decided.
    pub decision: Option<String>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When, ms since the epoch.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decided_at: Option<i64>,
    /// Why, as they said.
    pub reason: Option<String>,
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on.
    Approved,
    /// Stop.
    Rejected,
}

impl Decision {
    /// The stored word: `approved` or `rejected`.
    pub fn word(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }

    /// The command and the API's verb: `approve` or `reject`.
    pub fn verb(self) -> &'static str {
        match self {
            Decision::Approved => "approve",
            Decision::Rejected => "reject",
        }
    }
}

const COLUMNS: &str = "deployment_id, gate, environment, requested_at, expires_at, decision, decided_by, decided_at, reason";

fn approval(mut r: Row) -> Result<Approval, StoreError> {
    Ok(Approval {
        deployment_id: r.s()?,
        gate: r.s()?,
        environment: r.s()?,
        requested_at: r.i()?,
        expires_at: r.oi()?,
        decision: r.o()?,
        decided_by: r.o()?,
        decided_at: r.oi()?,
        reason: r.o()?,
    })
}

impl Store {
    /// Opens a gate (keeps an existing request, and its decision, when a resumed run asks again).
    pub async fn request_approval(
        &self,
        deployment: &str,
        gate: &str,
        environment: &str,
        expires_at: Option<i64>,
    ) -> Result<Approval, StoreError> {
        self.exec(
            "INSERT INTO approvals (deployment_id, gate, environment, requested_at, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (deployment_id, gate) DO NOTHING",
            &[
                deployment.into(),
                gate.into(),
                environment.into(),
                now_ms().into(),
                expires_at.into(),
            ],
        )
        .await?;
        self.approval(deployment, gate)
            .await?
            .ok_or_else(|| StoreError::Query("the approval request vanished".into()))
    }

    /// One gate.
    pub async fn approval(
        &self,
        deployment: &str,
        gate: &str,
    ) -> Result<Option<Approval>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM approvals WHERE deployment_id = $1 AND gate = $2"),
                &[deployment.into(), gate.into()],
            )
            .await?;
        rows.into_iter().next().map(approval).transpose()
    }

    /// Gates still waiting (undecided, unexpired), oldest first.
    pub async fn pending_approvals(
        &self,
        environment: Option<&str>,
    ) -> Result<Vec<Approval>, StoreError> {
        // No environment: every one (`$2 IS NULL`).
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM approvals WHERE decision IS NULL AND (expires_at IS NULL OR expires_at > $1) AND ($2 IS NULL OR environment = $2) ORDER BY requested_at"),
                &[now_ms().into(), environment.into()],
            )
            .await?;
        rows.into_iter().map(approval).collect()
    }

    /// Decides the run's open gate; `None` when nothing is waiting (decided, expired, unknown).
    pub async fn decide(
        &self,
        deployment: &str,
        decision: Decision,
        who: &str,
        reason: &str,
    ) -> Result<Option<Approval>, StoreError> {
        let now = now_ms();
        let changed = self
            .exec(
                "UPDATE approvals SET decision = $1, decided_by = $2, decided_at = $3, reason = $4 WHERE deployment_id = $5 AND decision IS NULL AND (expires_at IS NULL OR expires_at > $3)",
                &[
                    decision.word().into(),
                    who.into(),
                    now.into(),
                    reason.into(),
                    deployment.into(),
                ],
            )
            .await?;
        if changed == 0 {
            return Ok(None);
        }
        let rows = self
            .rows(
                &format!(
                    "SELECT {COLUMNS} FROM approvals WHERE deployment_id = $1 AND decided_at = $2"
                ),
                &[deployment.into(), now.into()],
            )
            .await?;
        rows.into_iter()
            .next()
            .map(approval)
            .transpose()?
            .ok_or_else(|| StoreError::Query("the decision vanished".into()))
            .map(Some)
    }
}
