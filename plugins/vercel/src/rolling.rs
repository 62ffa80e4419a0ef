//! Canary releases through Vercel Rolling Releases, driven the way the Vercel CLI drives them
//! (`PLATFORM-FACTS-2.md` §1):
//!
//! - **configure**: at `deploy`, the host's canary steps (the artifact label
//!   `deploy-agent.dev/canary-steps`) become the project's rolling-release config,
//!   `PATCH /v1/projects/{id}/rolling-release/config` with `advancementType:
//!   "manual-approval"`, so Vercel advances only when the host says so;
//! - **start**: the first weight promotes the deployment (`POST /v10/projects/{id}/promote/
//!   {deploymentId}`), which, with the config enabled, starts a rolling release at its first
//!   stage instead of taking all traffic;
//! - **approve**: each later weight approves the stage that has it
//!   (`POST …/rolling-release/approve-stage`);
//! - **complete**: 100 % force-completes it (`POST …/rolling-release/complete`);
//! - **abort**: rolls production back to the release's `currentDeployment`
//!   (`POST /v9/projects/{id}/rollback/{deploymentId}`, as `vercel rr abort` does).
//!
//! The weight the host reads back is the active stage's `targetPercentage`; the stage has
//! taken effect once Vercel reports it active with the canary ready.

use deploy_agent_sdk::http;
use deploy_agent_sdk::prelude::*;
use serde_json::{Value, json};

use super::{Api, ok, project_id};

/// The label the host sets on a canary's artifact: its weights, comma-separated.
pub(crate) const STEPS_LABEL: &str = "deploy-agent.dev/canary-steps";

fn path(pid: &str, rest: &str) -> String {
    format!("/v1/projects/{}/rolling-release{rest}", http::encode(pid))
}

/// The weights a canary artifact carries, checked the way the CLI checks stages before it
/// sends them: 1–99 strictly ascending, then 100.
pub(crate) fn steps_of(release: &Artifact) -> Result<Option<Vec<u8>>, PluginError> {
    let Some((_, text)) = release.labels.iter().find(|(k, _)| k == STEPS_LABEL) else {
        return Ok(None);
    };
    let weights = text
        .split(',')
        .map(|w| w.trim().parse::<u8>())
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid_config(format!("canary steps `{text}` are not percentages")))?;
    let (last, before) = weights
        .split_last()
        .ok_or_else(|| invalid_config("a canary needs steps"))?;
    let ascending = before.windows(2).all(|w| w[0] < w[1]);
    if *last != 100 || !ascending || before.iter().any(|w| !(1..=99).contains(w)) {
        return Err(invalid_config(format!(
            "Vercel rolling-release stages must rise from 1 to 99 and end at 100; got {text}"
        )));
    }
    if !(2..=10).contains(&weights.len()) {
        return Err(invalid_config(format!(
            "a Vercel rolling release has 2 to 10 stages; got {}",
            weights.len()
        )));
    }
    Ok(Some(weights))
}

/// The project's rolling-release config: manual approval at each of `weights` (the last is
/// 100). Left alone when it is that already.
pub(crate) fn configure(api: &Api, pid: &str, weights: &[u8]) -> Result<(), PluginError> {
    let r = api.get(&path(pid, "/config"), &[])?;
    let current: Value = ok(r, "reading the rolling-release config")?.json()?;
    let have = stages_of(current.pointer("/rollingRelease/stages"));
    let manual = have.iter().all(|s| s.1.is_none());
    let same = have
        .iter()
        .map(|s| s.0)
        .eq(weights.iter().map(|w| u64::from(*w)));
    if same && manual {
        return Ok(());
    }
    let stages: Vec<Value> = weights
        .iter()
        .map(|w| json!({ "targetPercentage": w }))
        .collect();
    let body = json!({"enabled": true, "advancementType": "manual-approval", "stages": stages});
    let r = api
        .authed(http::patch(&api.url(&path(pid, "/config"), &[])))
        .json(&body)?
        .send()?;
    ok(r, "configuring the rolling release")?;
    log::info(format!(
        "rolling release configured: {} with manual approval",
        weights
            .iter()
            .map(|w| format!("{w} %"))
            .collect::<Vec<_>>()
            .join(" → ")
    ));
    Ok(())
}

/// `(targetPercentage, duration)` of each stage in a config or a release.
fn stages_of(stages: Option<&Value>) -> Vec<(u64, Option<u64>)> {
    stages
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s.get("targetPercentage")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0) as u64,
                s.get("duration").and_then(Value::as_f64).map(|d| d as u64),
            )
        })
        .collect()
}

/// The project's rolling release as Vercel has it now.
struct Rolling {
    state: String,
    canary: Option<String>,
    current: Option<String>,
    /// The stages' percentages, by index.
    stages: Vec<u64>,
    active: Option<usize>,
    canary_ready: bool,
}

impl Rolling {
    fn is_canary(&self, release: &str) -> bool {
        self.state == "ACTIVE" && self.canary.as_deref() == Some(release)
    }

    fn active_weight(&self) -> u8 {
        self.active
            .and_then(|i| self.stages.get(i))
            .map_or(0, |p| (*p).min(100) as u8)
    }
}

fn rolling(api: &Api, pid: &str) -> Result<Option<Rolling>, PluginError> {
    let r = api.get(&path(pid, ""), &[])?;
    let body: Value = ok(r, "reading the rolling release")?.json()?;
    let Some(rr) = body.get("rollingRelease").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let id = |key: &str| {
        rr.get(key)
            .and_then(|d| d.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Some(Rolling {
        state: rr
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        canary: id("canaryDeployment"),
        current: id("currentDeployment"),
        stages: stages_of(rr.get("stages")).iter().map(|s| s.0).collect(),
        active: rr
            .pointer("/activeStage/index")
            .and_then(Value::as_f64)
            .map(|i| i as usize),
        canary_ready: rr
            .pointer("/canaryDeployment/readyState")
            .and_then(Value::as_str)
            == Some("READY"),
    }))
}

/// The stage index that sends `weight` percent to the canary.
fn stage_at(stages: &[u64], weight: u8) -> Result<usize, PluginError> {
    stages
        .iter()
        .position(|p| *p == u64::from(weight))
        .ok_or_else(|| {
            let list: Vec<String> = stages.iter().map(|p| format!("{p} %")).collect();
            rejected(format!(
                "the rolling release has no stage at {weight} % (its stages: {}); the config was changed outside the agent",
                list.join(", ")
            ))
        })
}

fn promote(api: &Api, pid: &str, release: &str) -> Result<(), PluginError> {
    let path = format!(
        "/v10/projects/{}/promote/{}",
        http::encode(pid),
        http::encode(release)
    );
    let r = api.authed(http::post(&api.url(&path, &[]))).send()?;
    if r.status == 202 {
        return Err(retryable(
            "Vercel queued the promotion behind a rolling release that is still active",
            None,
        ));
    }
    ok(r, &format!("starting the rolling release of {release}")).map(|_| ())
}

/// Completes a rolling release a plain promotion of `release` started.
pub(crate) fn complete_if_started(api: &Api, pid: &str, release: &str) -> Result<(), PluginError> {
    if !rolling(api, pid)?.is_some_and(|r| r.is_canary(release)) {
        return Ok(());
    }
    log::info(format!(
        "the project has Rolling Releases on; completing the one {release} started (a canary's stages come from `strategy = \"canary\"`)"
    ));
    let r = api.post_json(
        &path(pid, "/complete"),
        &json!({ "canaryDeploymentId": release }),
    )?;
    ok(r, &format!("completing the rolling release of {release}")).map(|_| ())
}

/// Moves the rolling release of `release` to the stage at `weight`.
pub(crate) fn set_weight(api: &Api, release: &str, weight: u8) -> Result<(), PluginError> {
    if weight > 100 {
        return Err(rejected(format!("weight {weight} is over 100")));
    }
    let project = api.project()?;
    let pid = project_id(&project)?;
    let live = super::live_id(&project);
    let mut rr = rolling(api, &pid)?;
    if !rr.as_ref().is_some_and(|r| r.is_canary(release)) {
        if live.as_deref() == Some(release) {
            return if weight == 100 {
                Ok(())
            } else {
                Err(rejected(format!(
                    "{release} already takes all production traffic"
                )))
            };
        }
        if weight == 0 {
            return Ok(());
        }
        if let Some(other) = rr
            .as_ref()
            .filter(|r| r.state == "ACTIVE")
            .and_then(|r| r.canary.clone())
        {
            return Err(rejected(format!(
                "another rolling release (canary {other}) is active on the project; complete or abort it first"
            )));
        }
        promote(api, &pid, release)?;
        rr = rolling(api, &pid)?;
    }
    let rr = rr.filter(|r| r.is_canary(release)).ok_or_else(|| {
        rejected(format!(
            "promoting {release} did not start a rolling release; are Rolling Releases enabled for the project?"
        ))
    })?;
    let wanted = stage_at(&rr.stages, weight)?;
    let mut at = rr.active.unwrap_or(0);
    if wanted < at {
        return Err(rejected(format!(
            "the rolling release of {release} is past {weight} % (at {} %); abort it to go back",
            rr.active_weight()
        )));
    }
    if wanted + 1 == rr.stages.len() {
        let r = api.post_json(
            &path(&pid, "/complete"),
            &json!({ "canaryDeploymentId": release }),
        )?;
        return ok(r, &format!("completing the rolling release of {release}")).map(|_| ());
    }
    while at < wanted {
        let body = json!({"activeStageIndex": at, "nextStageIndex": at + 1, "canaryDeploymentId": release});
        let r = api.post_json(&path(&pid, "/approve-stage"), &body)?;
        ok(r, &format!("approving stage {} of {release}", at + 1))?;
        at += 1;
    }
    Ok(())
}

/// The share of production traffic `release` takes now.
pub(crate) fn weight(api: &Api, release: &str) -> Result<TrafficStatus, PluginError> {
    let project = api.project()?;
    let pid = project_id(&project)?;
    match rolling(api, &pid)? {
        Some(rr) if rr.is_canary(release) => {
            let weight = rr.active_weight();
            let taken_effect = rr.active.is_some() && rr.canary_ready;
            Ok(TrafficStatus {
                weight,
                taken_effect,
                detail: if taken_effect {
                    String::new()
                } else {
                    "the rolling release has no active stage yet".into()
                },
            })
        }
        _ => {
            let live = super::live_id(&project).as_deref() == Some(release);
            Ok(TrafficStatus {
                weight: if live { 100 } else { 0 },
                taken_effect: true,
                detail: String::new(),
            })
        }
    }
}

/// Production back to the deployment that served before the rolling release of `release`.
pub(crate) fn abort(api: &Api, release: &str) -> Result<(), PluginError> {
    let project = api.project()?;
    let pid = project_id(&project)?;
    let Some(rr) = rolling(api, &pid)?.filter(|r| r.is_canary(release)) else {
        return Ok(());
    };
    let current = rr.current.ok_or_else(|| {
        rejected("the rolling release names no current deployment to return traffic to")
    })?;
    let path = format!(
        "/v9/projects/{}/rollback/{}",
        http::encode(&pid),
        http::encode(&current)
    );
    let r = api.post_json(&path, &json!({}))?;
    ok(r, &format!("aborting the rolling release of {release}"))?;
    log::info(format!(
        "rolling release of {release} aborted; {current} serves production"
    ));
    Ok(())
}

impl Traffic for super::Vercel {
    fn strategies(ctx: &Context) -> Result<Vec<Strategy>, PluginError> {
        let api = Api::new(ctx)?;
        if api.s.target != "production" {
            // Rolling Releases shift production traffic only; a preview is promoted at once.
            return Ok(vec![Strategy::BlueGreen]);
        }
        let project = api.project()?;
        let pid = project_id(&project)?;
        let r = api.get(&path(&pid, "/billing"), &[])?;
        let billing: Value = ok(r, "reading Rolling Releases' availability")?.json()?;
        let reason = billing
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let enabled_here = billing
            .get("enabledProjects")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|p| p.as_str() == Some(pid.as_str())));
        Ok(match reason {
            "plan_not_supported" => vec![Strategy::BlueGreen],
            "no_available_slots" if !enabled_here => vec![Strategy::BlueGreen],
            _ => vec![Strategy::BlueGreen, Strategy::Canary],
        })
    }

    fn set_weight(ctx: &Context, release_id: &str, weight: u8) -> Result<(), PluginError> {
        set_weight(&Api::new(ctx)?, release_id, weight)
    }

    fn weight(ctx: &Context, release_id: &str) -> Result<TrafficStatus, PluginError> {
        weight(&Api::new(ctx)?, release_id)
    }

    fn abort(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        abort(&Api::new(ctx)?, release_id)
    }

    fn retire(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        let project = api.project()?;
        if super::live_id(&project).as_deref() == Some(release_id) {
            return Err(rejected(format!(
                "{release_id} serves production; it cannot be retired"
            )));
        }
        // Vercel keeps every deployment and bills none that takes no traffic; a rollback to
        // it stays instant.
        log::info(format!(
            "Vercel keeps {release_id} for rollback; nothing to scale down"
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(steps: &str) -> Artifact {
        Artifact {
            version: "v1".into(),
            path: None,
            digest: None,
            labels: vec![(STEPS_LABEL.into(), steps.into())],
        }
    }

    #[test]
    fn steps_are_checked_as_the_cli_checks_stages() {
        assert_eq!(
            steps_of(&artifact("10,50,100")).ok().flatten(),
            Some(vec![10, 50, 100])
        );
        for bad in [
            "10,50",
            "50,10,100",
            "0,100",
            "10,x,100",
            "10,10,100",
            "100",
        ] {
            assert!(steps_of(&artifact(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_weight_maps_to_its_stage_or_is_refused() {
        assert_eq!(stage_at(&[10, 50, 100], 50).ok(), Some(1));
        let e = stage_at(&[10, 50, 100], 25).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("10 %, 50 %, 100 %")));
    }
}
