//! A run's evidence: each check result and each analysis measurement, as it was taken.

use serde::Serialize;

use super::{Row, Store, StoreError, now_ms};

/// One piece of evidence.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Evidence {
    /// Its order within the run.
    pub seq: i64,
    /// The stage that took it (`verify`, `watch`...).
    pub stage: String,
    /// `check` or `analysis`.
    pub kind: String,
    /// The check's or the analysis' name.
    pub name: String,
    /// `pass`, `fail` or `inconclusive`.
    pub outcome: String,
    /// The measured value (analyses).
    pub value: Option<f64>,
    /// The analysis' lower bound.
    pub min: Option<f64>,
    /// The analysis' upper bound.
    pub max: Option<f64>,
    /// What it saw, in words.
    pub detail: Option<String>,
    /// When, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
}

/// What is recorded: [`Evidence`] before the store numbers and dates it.
#[derive(Debug, Clone, Default)]
pub struct NewEvidence<'a> {
    /// The stage.
    pub stage: &'a str,
    /// `check` or `analysis`.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// `pass`, `fail` or `inconclusive`.
    pub outcome: &'a str,
    /// The value.
    pub value: Option<f64>,
    /// The lower bound.
    pub min: Option<f64>,
    /// The upper bound.
    pub max: Option<f64>,
    /// In words.
    pub detail: Option<&'a str>,
}

fn number(text: Option<String>) -> Option<f64> {
    text.and_then(|t| t.parse().ok())
}

impl Store {
    /// Records one piece of evidence for `deployment`, after its others.
    pub async fn record_evidence(
        &self,
        deployment: &str,
        e: NewEvidence<'_>,
    ) -> Result<(), StoreError> {
        let text = |v: Option<f64>| v.map(|v| v.to_string());
        let (value, min, max) = (text(e.value), text(e.min), text(e.max));
        self.exec(
            "INSERT INTO evidence (deployment_id, seq, stage, kind, name, outcome, value, min, max, detail, at) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM evidence WHERE deployment_id = $1",
            &[
                deployment.into(),
                e.stage.into(),
                e.kind.into(),
                e.name.into(),
                e.outcome.into(),
                value.as_deref().into(),
                min.as_deref().into(),
                max.as_deref().into(),
                e.detail.into(),
                now_ms().into(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// A run's evidence, in the order it was taken.
    pub async fn evidence(&self, deployment: &str) -> Result<Vec<Evidence>, StoreError> {
        let rows = self
            .rows(
                "SELECT seq, stage, kind, name, outcome, value, min, max, detail, at FROM evidence WHERE deployment_id = $1 ORDER BY seq",
                &[deployment.into()],
            )
            .await?;
        rows.into_iter()
            .map(|mut r: Row| {
                Ok(Evidence {
                    seq: r.i()?,
                    stage: r.s()?,
                    kind: r.s()?,
                    name: r.s()?,
                    outcome: r.s()?,
                    value: number(r.o()?),
                    min: number(r.o()?),
                    max: number(r.o()?),
                    detail: r.o()?,
                    at: r.i()?,
                })
            })
            .collect()
    }
}
