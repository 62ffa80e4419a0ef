//! The process's metrics, in the Prometheus text format (`GET /metrics` on the daemon).
//!
//! A handful of families, recorded where things happen (the pipeline, the rollback, the
//! plugin runtime, the API) and rendered on demand; the queue depth is read from the state
//! store when scraped. Labels are environment,
//! stage, plugin and outcome names: bounded by agent.toml, never a run id or a value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

/// Histogram buckets, seconds: plugin calls are milliseconds, stages seconds to minutes.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0,
];

/// A metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// Runs that ended, by environment and outcome.
    Deployments,
    /// Stage durations, by environment and stage.
    StageSeconds,
    /// Rollbacks, by environment, initiator (operator, automatic, interrupted) and outcome.
    Rollbacks,
    /// From the decision to roll back to the previous release live, by environment.
    RecoverySeconds,
    /// Plugin call latency, by plugin and operation.
    PluginCallSeconds,
    /// Plugin calls that failed, by plugin, operation and error class.
    PluginCallFailures,
    /// Runs waiting in an environment's queue.
    QueueDepth,
    /// API requests, by route and status code.
    HttpRequests,
    /// Webhook deliveries, by source and outcome.
    Webhooks,
    /// The share of traffic (percent) a canary release receives, by environment and release.
    TrafficWeight,
    /// The age of the newest backup, by environment.
    BackupAgeSeconds,
    /// The age of the newest backup a restore drill proved, by environment.
    VerifiedBackupAgeSeconds,
    /// How long the last restore drill took, by environment.
    RestoreDrillSeconds,
}

impl Family {
    fn meta(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Deployments => (
                "deploy_agent_deployments_total",
                "counter",
                "Deployment runs that ended, by environment and outcome.",
            ),
            Family::StageSeconds => (
                "deploy_agent_stage_duration_seconds",
                "histogram",
                "Pipeline stage durations, by environment and stage.",
            ),
            Family::Rollbacks => (
                "deploy_agent_rollbacks_total",
                "counter",
                "Rollbacks, by environment, initiator and outcome.",
            ),
            Family::RecoverySeconds => (
                "deploy_agent_time_to_recovery_seconds",
                "histogram",
                "From the decision to roll back to the previous release live again.",
            ),
            Family::PluginCallSeconds => (
                "deploy_agent_plugin_call_duration_seconds",
                "histogram",
                "Plugin call latency (fresh instance included), by plugin and operation.",
            ),
            Family::PluginCallFailures => (
                "deploy_agent_plugin_call_failures_total",
                "counter",
                "Plugin calls that failed, by plugin, operation and error class.",
            ),
            Family::QueueDepth => (
                "deploy_agent_queue_depth",
                "gauge",
                "Runs waiting in an environment's queue (the running one not counted).",
            ),
            Family::HttpRequests => (
                "deploy_agent_http_requests_total",
                "counter",
                "API requests, by route and status code.",
            ),
            Family::Webhooks => (
                "deploy_agent_webhooks_total",
                "counter",
                "Webhook deliveries, by source and outcome.",
            ),
            Family::TrafficWeight => (
                "deploy_agent_traffic_weight",
                "gauge",
                "Percent of requests the release being rolled out receives, by environment and release (0 once aborted).",
            ),
            Family::BackupAgeSeconds => (
                "deploy_agent_backup_age_seconds",
                "gauge",
                "Age of the environment's newest backup.",
            ),
            Family::VerifiedBackupAgeSeconds => (
                "deploy_agent_last_verified_backup_age_seconds",
                "gauge",
                "Age of the environment's newest backup a restore drill proved (its recovery point).",
            ),
            Family::RestoreDrillSeconds => (
                "deploy_agent_restore_drill_seconds",
                "gauge",
                "How long the environment's last restore drill took (its measured recovery time).",
            ),
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    Histogram {
        counts: [u64; BUCKETS.len()],
        count: u64,
        sum: f64,
    },
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Registry {
    series: BTreeMap<(Family, Labels), Value>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut r = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut r)
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// Adds one to a counter.
pub fn inc(family: Family, l: &[(&'static str, &str)]) {
    with(|r| {
        let v = r
            .series
            .entry((family, labels(l)))
            .or_insert(Value::Number(0.0));
        if let Value::Number(n) = v {
            *n += 1.0;
        }
    });
}

/// Sets a gauge.
pub fn set(family: Family, l: &[(&'static str, &str)], value: f64) {
    with(|r| {
        r.series.insert((family, labels(l)), Value::Number(value));
    });
}

/// Records a duration in a histogram.
pub fn observe(family: Family, l: &[(&'static str, &str)], seconds: f64) {
    with(|r| {
        let v = r
            .series
            .entry((family, labels(l)))
            .or_insert(Value::Histogram {
                counts: [0; BUCKETS.len()],
                count: 0,
                sum: 0.0,
            });
        if let Value::Histogram { counts, count, sum } = v {
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    counts[i] += 1;
                }
            }
            *count += 1;
            *sum += seconds;
        }
    });
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(l: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Everything, in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    with(|r| {
        let mut last: Option<Family> = None;
        for ((family, l), value) in &r.series {
            let (name, kind, help) = family.meta();
            if last != Some(*family) {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                last = Some(*family);
            }
            match value {
                Value::Number(n) => {
                    let _ = writeln!(out, "{name}{} {n}", label_text(l, None));
                }
                Value::Histogram { counts, count, sum } => {
                    for (b, c) in BUCKETS.iter().zip(counts) {
                        let le = b.to_string();
                        let _ =
                            writeln!(out, "{name}_bucket{} {c}", label_text(l, Some(("le", &le))));
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        label_text(l, Some(("le", "+Inf")))
                    );
                    let _ = writeln!(out, "{name}_sum{} {sum}", label_text(l, None));
                    let _ = writeln!(out, "{name}_count{} {count}", label_text(l, None));
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        inc(Family::Webhooks, &[("source", "test\"q"), ("outcome", "x")]);
        inc(Family::Webhooks, &[("source", "test\"q"), ("outcome", "x")]);
        observe(Family::RecoverySeconds, &[("environment", "t1")], 0.3);
        observe(Family::RecoverySeconds, &[("environment", "t1")], 2.0);
        let text = render();
        assert!(
            text.contains("deploy_agent_webhooks_total{source=\"test\\\"q\",outcome=\"x\"} 2"),
            "{text}"
        );
        // 0.3 s falls in 0.5 and above; 2.0 s in 2.5 and above: cumulative.
        assert!(text.contains(
            "deploy_agent_time_to_recovery_seconds_bucket{environment=\"t1\",le=\"0.25\"} 0"
        ));
        assert!(text.contains(
            "deploy_agent_time_to_recovery_seconds_bucket{environment=\"t1\",le=\"0.5\"} 1"
        ));
        assert!(text.contains(
            "deploy_agent_time_to_recovery_seconds_bucket{environment=\"t1\",le=\"2.5\"} 2"
        ));
        assert!(text.contains(
            "deploy_agent_time_to_recovery_seconds_bucket{environment=\"t1\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("deploy_agent_time_to_recovery_seconds_sum{environment=\"t1\"} 2.3"));
        assert_eq!(
            text.matches("# TYPE deploy_agent_webhooks_total counter")
                .count(),
            1
        );
    }
}
