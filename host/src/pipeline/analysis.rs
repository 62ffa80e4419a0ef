//! Metric analysis during the watch window, in the spirit of Argo Rollouts: a Prometheus
//! query is measured `count` times, `interval` apart; more failures than `failure_limit`
//! fail it, `consecutive_success_limit` passes in a row pass it early, and measurements with
//! no data are *inconclusive*: past `inconclusive_limit` the run pauses for a person's
//! decision instead of passing.

use std::time::Duration;

use serde::Serialize;

use crate::config::AnalysisConfig;
use crate::store::{NewEvidence, Store};

/// One measurement.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Measurement {
    /// Within bounds.
    Pass {
        /// The value.
        value: f64,
    },
    /// Out of bounds.
    Fail {
        /// The value.
        value: f64,
    },
    /// No answer to judge (no data, NaN, an unreachable server).
    Inconclusive {
        /// Why.
        reason: String,
    },
}

/// How an analysis ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Passed.
    Successful,
    /// Failed: the release is bad.
    Failed,
    /// Could not tell: a person decides.
    Inconclusive,
}

/// An analysis' result, with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisResult {
    /// The analysis.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Every measurement, in order.
    pub measurements: Vec<Measurement>,
    /// In words, with the values.
    pub detail: String,
    /// Time spent waiting between measurements.
    #[serde(skip)]
    pub waited: Duration,
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Takes one measurement.
pub async fn measure(a: &AnalysisConfig) -> Measurement {
    let url = format!("{}/api/v1/query?query={}", a.prometheus, encode(&a.query));
    let inconclusive = |reason: String| Measurement::Inconclusive { reason };
    let (status, body) =
        match tokio::time::timeout(Duration::from_secs(10), super::checks::get(&url)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return inconclusive(e.0),
            Err(_) => return inconclusive("the query server did not answer within 10 s".into()),
        };
    let doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return inconclusive(format!("status {status}, not JSON: {e}")),
    };
    if doc["status"] != "success" {
        return inconclusive(format!(
            "status {status}: {} {}",
            doc["errorType"].as_str().unwrap_or("error"),
            doc["error"].as_str().unwrap_or("")
        ));
    }
    // A scalar is [ts, "v"]; a vector is [{ "value": [ts, "v"] }, ...] and must hold one sample.
    let data = &doc["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => Some(&data["result"]),
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([]) | None => return inconclusive("no data".into()),
            Some([one]) => Some(&one["value"]),
            Some(many) => {
                return inconclusive(format!(
                    "the query returned {} series; it must return one number (aggregate it)",
                    many.len()
                ));
            }
        },
        other => return inconclusive(format!("unsupported result type {other:?}")),
    };
    let Some(value) = sample
        .and_then(|s| s.get(1))
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return inconclusive("the sample is not a number".into());
    };
    if value.is_nan() {
        return inconclusive("NaN (no traffic to divide by?)".into());
    }
    let bad = a.max.is_some_and(|m| value > m) || a.min.is_some_and(|m| value < m);
    if bad {
        Measurement::Fail { value }
    } else {
        Measurement::Pass { value }
    }
}

fn bounds(a: &AnalysisConfig) -> String {
    match (a.min, a.max) {
        (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (None, None) => "anything".into(),
    }
}

/// Runs an analysis to its verdict, recording each measurement as the run's evidence
/// (`record`: the store, the run and the stage) as it is taken.
pub async fn run(a: &AnalysisConfig, record: Option<(&Store, &str, &str)>) -> AnalysisResult {
    let mut measurements = Vec::new();
    let (mut failures, mut inconclusive, mut streak) = (0u32, 0u32, 0u32);
    let mut waited = Duration::ZERO;
    let verdict = loop {
        let m = measure(a).await;
        super::progress::set(
            "analysis",
            format!(
                "analysis `{}` {}/{}: {}",
                a.name,
                measurements.len() + 1,
                a.count,
                match &m {
                    Measurement::Pass { value } => format!("{value} (pass)"),
                    Measurement::Fail { value } => format!("{value} (fail)"),
                    Measurement::Inconclusive { reason } => format!("inconclusive: {reason}"),
                }
            ),
        );
        if let Some((store, run, stage)) = record {
            let (outcome, value, detail) = match &m {
                Measurement::Pass { value } => ("pass", Some(*value), None),
                Measurement::Fail { value } => ("fail", Some(*value), None),
                Measurement::Inconclusive { reason } => {
                    ("inconclusive", None, Some(reason.as_str()))
                }
            };
            let e = NewEvidence {
                stage,
                kind: "analysis",
                name: &a.name,
                outcome,
                value,
                min: a.min,
                max: a.max,
                detail,
            };
            if let Err(e) = store.record_evidence(run, e).await {
                tracing::warn!("recording analysis `{}`'s measurement: {e}", a.name);
            }
        }
        match &m {
            Measurement::Pass { .. } => streak += 1,
            Measurement::Fail { .. } => {
                failures += 1;
                streak = 0;
            }
            Measurement::Inconclusive { .. } => {
                inconclusive += 1;
                streak = 0;
            }
        }
        measurements.push(m);
        if failures > a.failure_limit {
            break Verdict::Failed;
        }
        if inconclusive > a.inconclusive_limit {
            break Verdict::Inconclusive;
        }
        if a.consecutive_success_limit > 0 && streak >= a.consecutive_success_limit {
            break Verdict::Successful;
        }
        if measurements.len() as u32 >= a.count {
            // A success streak was asked for and never reached: that is not a pass.
            break if a.consecutive_success_limit > 0 {
                Verdict::Inconclusive
            } else {
                Verdict::Successful
            };
        }
        tokio::time::sleep(a.interval).await;
        waited += a.interval;
    };
    let values: Vec<String> = measurements
        .iter()
        .map(|m| match m {
            Measurement::Pass { value } => format!("{value}"),
            Measurement::Fail { value } => format!("{value} (fail)"),
            Measurement::Inconclusive { reason } => format!("? ({reason})"),
        })
        .collect();
    let detail = format!(
        "analysis `{}` {}: `{}` must be {}; measured {}",
        a.name,
        match verdict {
            Verdict::Successful => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "was inconclusive",
        },
        a.query,
        bounds(a),
        values.join(", ")
    );
    AnalysisResult {
        name: a.name.clone(),
        verdict,
        measurements,
        detail,
        waited,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::encode("sum(rate(x{code=~\"5..\"}[1m]))"),
            "sum%28rate%28x%7Bcode%3D~%225..%22%7D%5B1m%5D%29%29"
        );
    }
}
