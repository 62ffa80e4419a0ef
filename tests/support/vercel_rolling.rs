//! Vercel Rolling Releases in the Vercel stand-in (`PLATFORM-FACTS-2.md` §1):
//!
//! - the project's config (`GET`/`PATCH`/`DELETE …/rolling-release/config`), checked as the
//!   CLI checks it (stages 1–99 ascending then 100, 2–10 of them; durations in minutes on
//!   every stage but the last with `automatic`, none with `manual-approval`);
//! - with the config enabled, promoting a deployment while another serves production starts
//!   a rolling release at stage 0 (201), or queues it behind an active one (202);
//! - `approve-stage` moves to `nextStageIndex` (400 unless it is the next stage of the active
//!   canary), `complete` makes the canary serve everything, and a rollback while a release
//!   is active aborts it (`ABORTED`, no active stage);
//! - production requests are served from the canary or the current deployment by the active
//!   stage's percentage, deterministically (request n goes to the canary when
//!   ⌊(n+1)·p/100⌋ > ⌊n·p/100⌋, so any window of 100 requests splits exactly).

use serde_json::{Value, json};

use super::vercel::{State, error, site_host};
use crate::standin::{Reply, Request};

/// One configured or running stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub percent: u64,
    /// Minutes, as configured (automatic advancement only).
    pub minutes: Option<u64>,
}

/// A rolling release.
#[derive(Debug, Clone)]
pub struct Release {
    pub state: &'static str,
    pub current: Option<String>,
    pub canary: String,
    pub queued: Option<String>,
    pub automatic: bool,
    pub stages: Vec<Stage>,
    pub active: Option<usize>,
    pub started: u64,
    pub updated: u64,
}

/// What the stand-in keeps about Rolling Releases.
#[derive(Debug, Default)]
pub struct Rolling {
    /// The enabled config: its advancement and stages; `None` when off.
    pub config: Option<(bool, Vec<Stage>)>,
    /// The latest rolling release, whatever its state.
    pub release: Option<Release>,
    /// `GET …/billing`'s `reason`; empty means `unlimited_slots`.
    pub billing: &'static str,
    /// Production requests served while a release was active.
    served: u64,
    /// Every approval and completion, in order: `(stage index, canary)`.
    pub approvals: Vec<(usize, String)>,
}

impl Rolling {
    /// The active release, if one is.
    pub fn active(&self) -> Option<&Release> {
        self.release.as_ref().filter(|r| r.state == "ACTIVE")
    }

    /// The canary's share now (0 without an active release).
    pub fn percent(&self) -> u64 {
        self.active()
            .and_then(|r| r.active.map(|i| r.stages[i].percent))
            .unwrap_or(0)
    }

    /// The deployment that serves the next production request.
    pub fn serve(&mut self, production: Option<&str>) -> Option<String> {
        let Some(r) = self.active() else {
            return production.map(str::to_string);
        };
        let p = self.percent();
        let n = self.served;
        let canary = (n + 1) * p / 100 > n * p / 100;
        let id = if canary {
            Some(r.canary.clone())
        } else {
            r.current.clone()
        };
        self.served += 1;
        id
    }
}

/// The config body the CLI sends, checked as the CLI checks it.
fn parse_config(body: &Value) -> Result<Option<(bool, Vec<Stage>)>, String> {
    let enabled = body["enabled"]
        .as_bool()
        .ok_or("`enabled` (a boolean) is required")?;
    if !enabled {
        return Ok(None);
    }
    let automatic = match body["advancementType"].as_str() {
        Some("automatic") => true,
        Some("manual-approval") => false,
        _ => return Err("`advancementType` must be automatic or manual-approval".into()),
    };
    let stages: Vec<Stage> = body["stages"]
        .as_array()
        .ok_or("`stages` is required")?
        .iter()
        .map(|s| Stage {
            percent: s["targetPercentage"].as_f64().unwrap_or(-1.0) as u64,
            minutes: s["duration"].as_f64().map(|d| d as u64),
        })
        .collect();
    if !(2..=10).contains(&stages.len()) {
        return Err("a rolling release has 2 to 10 stages".into());
    }
    let (last, before) = stages.split_last().ok_or("no stages")?;
    if last.percent != 100 || last.minutes.is_some() {
        return Err("the last stage is 100 % and has no duration".into());
    }
    if before.windows(2).any(|w| w[0].percent >= w[1].percent)
        || before.iter().any(|s| !(1..=99).contains(&s.percent))
    {
        return Err("stages must be 1 to 99 % and strictly ascending".into());
    }
    if before
        .iter()
        .any(|s| s.minutes.is_some() != automatic || s.minutes == Some(0))
    {
        return Err(if automatic {
            "with automatic advancement every stage but the last needs a duration in minutes"
        } else {
            "stages of a manual-approval release have no duration"
        }
        .into());
    }
    Ok(Some((automatic, stages)))
}

fn config_json(st: &State) -> Value {
    match &st.rr.config {
        None => json!({"rollingRelease": null}),
        Some((_, stages)) => json!({"rollingRelease": {"target": "production",
            "stages": stages.iter().map(|s| {
                let mut v = json!({"targetPercentage": s.percent, "requireApproval": s.minutes.is_none() && s.percent < 100});
                if let Some(m) = s.minutes { v["duration"] = json!(m); }
                v
            }).collect::<Vec<_>>(),
            "canaryResponseHeader": false}}),
    }
}

/// The project's `rollingRelease` field.
pub fn project_field(st: &State) -> Value {
    config_json(st)["rollingRelease"].clone()
}

fn stage_json(r: &Release, i: usize) -> Value {
    let s = &r.stages[i];
    let last = i + 1 == r.stages.len();
    json!({"index": i, "isFinalStage": last, "targetPercentage": s.percent,
        "requireApproval": !r.automatic && !last,
        "duration": s.minutes.filter(|_| !last).map(|m| m * 60), "linearShift": false})
}

fn deployment(st: &State, id: &Option<String>) -> Value {
    let Some(d) = id
        .as_ref()
        .and_then(|id| st.deployments.iter().find(|d| &d.id == id))
    else {
        return Value::Null;
    };
    json!({"id": d.id, "name": st.project_name, "url": site_host(st, &d.id),
        "createdAt": d.created, "readyState": d.ready_state(), "target": d.target, "source": "cli"})
}

/// `GET …/rolling-release` (and what approve and complete answer).
pub fn release_json(st: &State) -> Value {
    let Some(r) = &st.rr.release else {
        return json!({"rollingRelease": null});
    };
    let active = r.state == "ACTIVE";
    json!({"rollingRelease": {
        "state": r.state,
        "currentDeployment": deployment(st, &r.current),
        "canaryDeployment": deployment(st, &Some(r.canary.clone())),
        "queuedDeploymentId": r.queued,
        "advancementType": if r.automatic { "automatic" } else { "manual-approval" },
        "stages": (0..r.stages.len()).map(|i| stage_json(r, i)).collect::<Vec<_>>(),
        "activeStage": r.active.map(|i| stage_json(r, i)),
        "nextStage": r.active.filter(|i| active && i + 1 < r.stages.len()).map(|i| stage_json(r, i + 1)),
        "startedAt": r.started,
        "updatedAt": r.updated,
    }})
}

/// A promote of `did`: starts (201) or queues (202) a rolling release when the config is on
/// and something else serves production; `None` when a plain promotion applies.
pub fn on_promote(st: &mut State, did: &str) -> Option<Reply> {
    let (automatic, stages) = st.rr.config.clone()?;
    let current = st.production.clone().filter(|p| p != did)?;
    if let Some(r) = st.rr.release.as_mut().filter(|r| r.state == "ACTIVE") {
        if r.canary == did {
            return Some(Reply::Raw(201, vec![], vec![]));
        }
        r.queued = Some(did.to_string());
        return Some(Reply::Raw(202, vec![], vec![]));
    }
    st.rr.release = Some(Release {
        state: "ACTIVE",
        current: Some(current),
        canary: did.to_string(),
        queued: None,
        automatic,
        stages,
        active: Some(0),
        started: st.clock,
        updated: st.clock,
    });
    st.rr.served = 0;
    Some(Reply::Raw(201, vec![], vec![]))
}

/// A rollback while a release is active aborts it.
pub fn on_rollback(st: &mut State) {
    let clock = st.clock;
    if let Some(r) = st.rr.release.as_mut().filter(|r| r.state == "ACTIVE") {
        r.state = "ABORTED";
        r.active = None;
        r.queued = None;
        r.updated = clock;
    }
}

/// Whether `id` is the active release's canary (its `readySubstate` is ROLLING).
pub fn is_rolling(st: &State, id: &str) -> bool {
    st.rr.active().is_some_and(|r| r.canary == id)
}

/// The `/v1/projects/{idOrName}/rolling-release…` operations.
pub fn handle(st: &mut State, r: &Request, project: &str, rest: &[&str]) -> Reply {
    if project != st.project_id && project != st.project_name {
        return error(404, "not_found", "Project not found");
    }
    match (r.method.as_str(), rest) {
        ("GET", ["config"]) => Reply::Json(200, config_json(st)),
        ("PATCH", ["config"]) => match parse_config(&r.json()) {
            Ok(config) => {
                st.rr.config = config;
                let mut out = config_json(st);
                if let Some(rr) = out["rollingRelease"].as_object_mut() {
                    rr.retain(|k, _| k == "stages");
                }
                Reply::Json(200, out)
            }
            Err(e) => error(400, "bad_request", &e),
        },
        ("DELETE", ["config"]) => {
            st.rr.config = None;
            Reply::Json(200, json!({"rollingRelease": null}))
        }
        ("GET", []) => Reply::Json(200, release_json(st)),
        ("GET", ["billing"]) => Reply::Json(
            200,
            match st.rr.billing {
                "plan_not_supported" => {
                    json!({"availableSlots": 0, "reason": "plan_not_supported", "message": "Rolling Releases need a Pro or Enterprise plan"})
                }
                _ => {
                    json!({"availableSlots": "unlimited", "reason": "unlimited_slots", "message": "ok"})
                }
            },
        ),
        ("POST", ["approve-stage"]) => {
            let body = r.json();
            let (Some(next), Some(canary)) = (
                body["nextStageIndex"].as_f64(),
                body["canaryDeploymentId"].as_str(),
            ) else {
                return error(
                    400,
                    "bad_request",
                    "nextStageIndex and canaryDeploymentId are required",
                );
            };
            approve(st, next as usize, canary)
        }
        ("POST", ["complete"]) => {
            let Some(canary) = r.json()["canaryDeploymentId"].as_str().map(str::to_string) else {
                return error(400, "bad_request", "canaryDeploymentId is required");
            };
            let last = st.rr.active().map_or(0, |r| r.stages.len() - 1);
            approve(st, last, &canary)
        }
        _ => error(404, "not_found", "The requested path was not found"),
    }
}

fn approve(st: &mut State, next: usize, canary: &str) -> Reply {
    let clock = st.clock;
    let Some(r) = st.rr.release.as_mut().filter(|r| r.state == "ACTIVE") else {
        return error(400, "bad_request", "There is no active rolling release");
    };
    if r.canary != canary {
        return error(
            400,
            "bad_request",
            "The deployment is not the active canary of the rolling release",
        );
    }
    let last = r.stages.len() - 1;
    let at = r.active.unwrap_or(0);
    if next != last && next != at + 1 {
        return error(
            400,
            "bad_request",
            &format!("Stage {next} is not the next stage (the active stage is {at})"),
        );
    }
    r.active = Some(next);
    r.updated = clock;
    st.rr.approvals.push((next, canary.to_string()));
    if next == last {
        r.state = "COMPLETE";
        st.production = Some(canary.to_string());
        if let Some(queued) = r.queued.take() {
            // The queued deployment's promotion begins once this one completes.
            on_promote(st, &queued);
        }
    }
    Reply::Json(200, release_json(st))
}
