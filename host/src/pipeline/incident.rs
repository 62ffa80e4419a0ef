//! Incident reports: what happened to a run, told from what the agent recorded (the run's
//! journal, its check and analysis evidence, the rollbacks that left its release, the audit
//! log around it), as a timeline with detection, decision, actions and recovery, and a
//! post-incident template to finish by hand (root cause, follow-ups).
//!
//! Everything in it comes from the state store; nothing is inferred that was not recorded.

use serde::Serialize;

use super::{Agent, PipelineError};
use crate::store::{AuditRecord, Deployment, RollbackRecord, RollbackStatus, Store};

/// Where a timeline entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The run's journal (its steps).
    Journal,
    /// A check result or an analysis measurement.
    Evidence,
    /// A rollback record.
    Rollback,
    /// The audit log.
    Audit,
}

/// One moment of the incident.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// When, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// Where it was recorded.
    pub source: Source,
    /// Who (an operator, a token, `agent`).
    pub who: Option<String>,
    /// What happened.
    pub what: String,
    /// Why, as recorded.
    pub why: Option<String>,
}

/// The audit chain, verified when the report was written.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditCheck {
    /// Entries checked.
    pub entries: usize,
    /// The newest entry's hash.
    pub head: String,
    /// Whether the chain is intact.
    pub intact: bool,
    /// What is wrong with it, if anything.
    pub problems: Vec<String>,
}

/// An incident report for one run.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct IncidentReport {
    /// The run.
    pub run: Deployment,
    /// One paragraph: what happened and how it ended.
    pub summary: String,
    /// What was affected, and for how long.
    pub impact: String,
    /// When the problem was first recorded (the first failing check, else the failed step).
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub detected_at: Option<i64>,
    /// What detected it.
    pub detection: Option<String>,
    /// When the decision to roll back was taken, by whom and why.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decided_at: Option<i64>,
    /// The decision, in words.
    pub decision: Option<String>,
    /// When the environment was healthy again (the rollback that succeeded).
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub recovered_at: Option<i64>,
    /// From detection to recovery, ms.
    pub time_to_recovery_ms: Option<i64>,
    /// What was put back: releases made live again, backups restored.
    pub restored: Vec<String>,
    /// The rollbacks that left the run's release.
    pub rollbacks: Vec<RollbackRecord>,
    /// Everything, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// The audit chain's verification.
    pub audit: AuditCheck,
}

/// How many audit entries of the environment are read to find the run's.
const AUDIT_WINDOW: usize = 5_000;

/// Writes the report for run `id`.
pub async fn report(agent: &Agent, id: &str) -> Result<IncidentReport, PipelineError> {
    let store = agent.store.clone();
    let run = store.deployment(id).await?.ok_or_else(|| {
        PipelineError::Setup(format!(
            "no run `{id}` (see `deploy-agent history --env NAME`)"
        ))
    })?;
    build(&store, run).await
}

async fn build(store: &Store, run: Deployment) -> Result<IncidentReport, PipelineError> {
    let steps = store.steps(&run.id).await?;
    let evidence = store.evidence(&run.id).await?;
    // The rollbacks that left this run's release: automatic (its watch failed) or by an
    // operator afterwards.
    let rollbacks: Vec<RollbackRecord> = match &run.release_id {
        Some(release) => store
            .rollbacks(&run.environment)
            .await?
            .into_iter()
            .rev()
            .filter(|r| {
                r.from_release.as_deref() == Some(release) && r.started_at >= run.started_at
            })
            .collect(),
        None => Vec::new(),
    };
    let end = rollbacks
        .iter()
        .filter_map(|r| r.finished_at)
        .chain(run.finished_at)
        .max()
        .unwrap_or(i64::MAX);
    let related = |a: &AuditRecord| {
        a.subject.as_deref() == Some(run.id.as_str())
            || run.release_id.is_some() && a.subject == run.release_id
            || rollbacks
                .iter()
                .any(|r| a.subject.as_deref() == Some(r.id.as_str()))
            || (a.at >= run.started_at && a.at <= end)
    };
    let audit: Vec<AuditRecord> = store
        .audit_entries(Some(&run.environment), AUDIT_WINDOW)
        .await?
        .into_iter()
        .filter(related)
        .collect();
    let verified = store.audit_verify().await?;

    let mut timeline = Vec::new();
    timeline.push(TimelineEntry {
        at: run.started_at,
        source: Source::Journal,
        who: Some(run.actor.clone()),
        what: format!(
            "run {} of {} started on {} ({})",
            run.id, run.version, run.environment, run.host
        ),
        why: run.reason.clone(),
    });
    for s in &steps {
        let what = match &s.detail {
            Some(d) if !d.is_empty() => format!("{} {}: {d}", s.stage, s.status),
            _ => format!("{} {}", s.stage, s.status),
        };
        timeline.push(TimelineEntry {
            at: s.finished_at.unwrap_or(s.started_at),
            source: Source::Journal,
            who: s.owner.clone(),
            what,
            why: None,
        });
    }
    for e in evidence.iter().filter(|e| e.outcome != "pass") {
        let value = e.value.map(|v| format!(" = {v}")).unwrap_or_default();
        timeline.push(TimelineEntry {
            at: e.at,
            source: Source::Evidence,
            who: None,
            what: format!(
                "{} `{}` {}{value} ({}){}",
                e.kind,
                e.name,
                e.outcome,
                e.stage,
                e.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            why: None,
        });
    }
    for r in &rollbacks {
        timeline.push(TimelineEntry {
            at: r.started_at,
            source: Source::Rollback,
            who: Some(r.actor.clone()),
            what: format!(
                "{} rollback {} ({}) from {} to {} started",
                r.initiator,
                r.id,
                r.mode,
                r.from_release.as_deref().unwrap_or("-"),
                r.to_release.as_deref().unwrap_or("-")
            ),
            why: r.reason.clone(),
        });
        if let Some(done) = r.finished_at {
            timeline.push(TimelineEntry {
                at: done,
                source: Source::Rollback,
                who: Some(r.actor.clone()),
                what: format!(
                    "rollback {} {}: {}",
                    r.id,
                    r.status,
                    r.detail.as_deref().unwrap_or("")
                ),
                why: None,
            });
        }
    }
    for a in &audit {
        timeline.push(TimelineEntry {
            at: a.at,
            source: Source::Audit,
            who: Some(a.actor.clone()),
            what: format!(
                "{}{}",
                a.action,
                a.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            why: a.why.clone(),
        });
    }
    // Stable: equal times keep the order above (journal, evidence, rollbacks, audit).
    timeline.sort_by_key(|e| e.at);

    let failing = evidence.iter().find(|e| e.outcome == "fail");
    let failed_step = steps.iter().find(|s| s.status == "failed");
    let (detected_at, detection) = match (failing, failed_step) {
        (Some(e), _) => (
            Some(e.at),
            Some(format!(
                "{} `{}` failed during {}{}",
                e.kind,
                e.name,
                e.stage,
                e.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )),
        ),
        (None, Some(s)) => (
            Some(s.finished_at.unwrap_or(s.started_at)),
            Some(format!(
                "{} failed: {}",
                s.stage,
                s.detail.as_deref().unwrap_or("")
            )),
        ),
        (None, None) => (None, run.error.clone()),
    };
    let first = rollbacks.first();
    let decided_at = first.map(|r| r.started_at);
    let decision = first.map(|r| {
        format!(
            "{} by {}: roll back ({}) to {}{}",
            if r.initiator == "automatic" {
                "automatic rollback (policy `auto`)"
            } else {
                "emergency rollback"
            },
            r.actor,
            r.mode,
            r.to_release.as_deref().unwrap_or("-"),
            r.reason
                .as_deref()
                .map(|w| format!(", because {w}"))
                .unwrap_or_default()
        )
    });
    let recovered = rollbacks
        .iter()
        .find(|r| r.status == RollbackStatus::Succeeded);
    let recovered_at = recovered.and_then(|r| r.finished_at);
    let time_to_recovery_ms = match (detected_at, recovered_at) {
        (Some(d), Some(r)) => Some((r - d).max(0)),
        _ => None,
    };
    let mut restored = Vec::new();
    for r in rollbacks
        .iter()
        .filter(|r| r.status == RollbackStatus::Succeeded)
    {
        if let Some(to) = &r.to_release {
            restored.push(format!("release {to} live again"));
        }
        if let Some(b) = &r.backup_id {
            restored.push(format!("database restored from backup {b}"));
        }
    }
    let summary = match (&detection, recovered) {
        (Some(d), Some(r)) => format!(
            "{} of {} on {} went wrong: {d}. It was rolled back ({}) by {}; {} is live again.",
            run.id,
            run.version,
            run.environment,
            r.mode,
            r.actor,
            r.to_release.as_deref().unwrap_or("the earlier release")
        ),
        (Some(d), None) => format!(
            "{} of {} on {} went wrong: {d}. It ended {}{}.",
            run.id,
            run.version,
            run.environment,
            run.status,
            if rollbacks.is_empty() {
                ", not rolled back"
            } else {
                "; the rollback did not succeed"
            }
        ),
        (None, _) => format!(
            "{} of {} on {} ended {}; nothing failing was recorded.",
            run.id, run.version, run.environment, run.status
        ),
    };
    let impact = match (&run.release_id, time_to_recovery_ms) {
        (Some(release), Some(ms)) => format!(
            "{} served release {release} ({}) with the problem for {:.1} s, from detection to recovery.",
            run.environment,
            run.version,
            ms as f64 / 1e3
        ),
        (Some(release), None) => format!(
            "{} may still serve release {release} ({}): no recovery was recorded.",
            run.environment, run.version
        ),
        (None, _) => format!(
            "No release of {} went live: what was live stayed live.",
            run.version
        ),
    };
    Ok(IncidentReport {
        run,
        summary,
        impact,
        detected_at,
        detection,
        decided_at,
        decision,
        recovered_at,
        time_to_recovery_ms,
        restored,
        rollbacks,
        timeline,
        audit: AuditCheck {
            entries: verified.entries,
            head: verified.head,
            intact: verified.problems.is_empty(),
            problems: verified.problems,
        },
    })
}

impl IncidentReport {
    /// The report as Markdown, in the runbooks' post-incident shape.
    pub fn to_markdown(&self) -> String {
        let t = crate::time::rfc3339_ms;
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut md = String::new();
        let r = &self.run;
        md.push_str(&format!(
            "# Incident: {} on {} ({})\n\n",
            r.version, r.environment, r.id
        ));
        md.push_str(&format!("## Summary\n\n{}\n\n", self.summary));
        md.push_str(&format!("## Impact\n\n{}\n\n", self.impact));
        md.push_str("## Detection, decision, recovery\n\n");
        md.push_str(&format!(
            "- **Detected:** {} — {}\n",
            self.detected_at.map_or("—".into(), t),
            or(&self.detection)
        ));
        md.push_str(&format!(
            "- **Decided:** {} — {}\n",
            self.decided_at.map_or("—".into(), t),
            or(&self.decision)
        ));
        md.push_str(&format!(
            "- **Recovered:** {}{}\n",
            self.recovered_at.map_or("—".into(), t),
            self.time_to_recovery_ms
                .map(|ms| format!(" (time to recovery {:.1} s)", ms as f64 / 1e3))
                .unwrap_or_default()
        ));
        if !self.restored.is_empty() {
            md.push_str(&format!("- **Restored:** {}\n", self.restored.join("; ")));
        }
        md.push_str(
            "\n## Timeline\n\n| Time (UTC) | Source | Who | What | Why |\n|---|---|---|---|---|\n",
        );
        for e in &self.timeline {
            md.push_str(&format!(
                "| {} | {:?} | {} | {} | {} |\n",
                t(e.at),
                e.source,
                cell(e.who.as_deref().unwrap_or("")),
                cell(&e.what),
                cell(e.why.as_deref().unwrap_or(""))
            ));
        }
        md.push_str("\n## Root cause\n\n_To be written: what in the change caused this, and why the earlier checks did not catch it._\n\n");
        md.push_str("## Follow-ups\n\n- [ ] A check or analysis that would have caught this before promotion\n- [ ] Fix forward, and deploy it\n- [ ] Review the runbook for this kind of failure\n\n");
        md.push_str(&format!(
            "## Audit\n\nThe audit chain {} ({} entries, head `{}`){}.\n",
            if self.audit.intact {
                "verifies"
            } else {
                "does NOT verify"
            },
            self.audit.entries,
            self.audit.head,
            if self.audit.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", self.audit.problems.join("; "))
            }
        ));
        md
    }
}
