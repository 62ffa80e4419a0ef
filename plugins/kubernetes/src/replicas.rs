//! Canary by replica ratio, where no HTTPRoute is configured: the share of traffic is the
//! canary's share of the ready pods behind the active Service, as in Argo Rollouts' basic
//! canary.
//!
//! For a weight `w` of `N` replicas (the template Deployment's count), the counts are Argo
//! Rollouts' `approximateWeightedCanaryStableReplicaCounts` ([`counts`]). While the weight is
//! above 0 the active Service selects every pod of the app (its selector loses the release
//! key; the release it pinned is kept in the annotation `deploy-agent.dev/stable`), so both
//! Deployments serve; the weight is taken when both have their counts ready. Abort scales the
//! canary to 0, the stable release back to `N`, and pins the Service to it again.

use deploy_agent_sdk::http;
use deploy_agent_sdk::prelude::*;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::releases::{RELEASE_LABEL, services};
use super::{Api, ok};

/// The annotation on the active Service naming the stable release while it is unpinned.
const STABLE: &str = "deploy-agent.dev/stable";
/// The annotation on a canary's Deployment holding the weight asked of it.
const WEIGHT: &str = "deploy-agent.dev/weight";
/// The annotation on a release's Deployment holding its full size, set when it is made.
pub(crate) const SIZE: &str = "deploy-agent.dev/replicas";

/// Argo Rollouts' replica counts for a canary weight (`utils/replicaset/canary.go`):
/// `(canary, stable)` for `weight` percent of `n` replicas, `surge` when the Deployment may
/// run one more than `n` (a maxSurge above 0).
pub(crate) fn counts(n: i32, weight: u8, surge: bool) -> (i32, i32) {
    let w = i32::from(weight);
    let zero_ok = w == 0 || w == 100 || (n == 1 && !surge);
    let exact = f64::from(n) * f64::from(w) / 100.0;
    let (ceil, floor) = (exact.ceil() as i32, exact.floor() as i32);
    let tied = (exact - exact.floor() - 0.5).abs() < f64::EPSILON;
    let mut candidates = Vec::new();
    if ceil != n || zero_ok {
        candidates.push(ceil);
    }
    if floor != ceil && !tied && (floor != 0 || zero_ok) {
        candidates.push(floor);
    }
    let totals: &[i32] = if surge { &[n, n + 1] } else { &[n] };
    let mut best: Option<(f64, i32, i32)> = None;
    for &c in &candidates {
        for &total in totals {
            if total == 0 || c > total {
                continue;
            }
            let off = (f64::from(c) * 100.0 / f64::from(total) - f64::from(w)).abs();
            if best.is_none_or(|(b, _, _)| off < b) {
                best = Some((off, c, total));
            }
        }
    }
    match best {
        Some((_, c, total)) => (c, total - c),
        None => (0, n),
    }
}

fn deployment_path(api: &Api, name: &str) -> String {
    format!(
        "{}/{}",
        api.ns_path("apps/v1", "deployments"),
        http::encode(name)
    )
}

fn get(api: &Api, name: &str) -> Result<Deployment, PluginError> {
    ok(
        api.get(&deployment_path(api, name))?,
        &format!("reading Deployment {name}"),
    )?
    .json()
}

fn patch(api: &Api, path: &str, body: &Value, doing: &str) -> Result<(), PluginError> {
    let r = api
        .authed(http::patch(&api.url(path)))
        .header("content-type", "application/merge-patch+json")
        .json(body)?
        .send()?;
    ok(r, doing)?;
    Ok(())
}

/// The stable release: the one the active Service pins, or the one it remembers while both
/// serve.
fn stable(api: &Api) -> Result<Option<String>, PluginError> {
    let names = services(api)?;
    let s = api.service(&names.active)?;
    Ok(s["spec"]["selector"][RELEASE_LABEL]
        .as_str()
        .or_else(|| s["metadata"]["annotations"][STABLE].as_str())
        .map(str::to_string))
}

/// The Deployment that runs `release`: its own, or the template's for the release the
/// set-up pinned.
fn deployment_of(api: &Api, release: &str) -> Result<String, PluginError> {
    let own = api.release_name(release);
    let r = api.get(&deployment_path(api, &own))?;
    Ok(if r.status == 404 {
        api.s.deployment.clone()
    } else {
        own
    })
}

/// The replicas a weight divides: the canary's full size, as recorded when it was made.
fn n(api: &Api, canary: &Deployment) -> Result<i32, PluginError> {
    match canary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIZE))
        .and_then(|v| v.parse().ok())
    {
        Some(size) => Ok(size),
        None => super::releases::desired_replicas(api, &api.deployment()?),
    }
}

/// Sets the canary's replica share for `weight`.
pub(crate) fn set(api: &Api, release: &str, weight: u8) -> Result<(), PluginError> {
    let names = services(api)?;
    let stable_id = stable(api)?.ok_or_else(|| {
        rejected(format!(
            "Service {} pins no release; set its selector's {RELEASE_LABEL}",
            names.active
        ))
    })?;
    if stable_id == release {
        return Err(rejected(format!(
            "release {release} is the stable one; it takes no canary weight"
        )));
    }
    let canary_name = api.release_name(release);
    let total = n(api, &get(api, &canary_name)?)?;
    let (canary, stable_count) = counts(total, weight, true);
    patch(
        api,
        &deployment_path(api, &canary_name),
        &json!({"metadata": {"annotations": {WEIGHT: weight.to_string()}}, "spec": {"replicas": canary}}),
        "scaling the canary",
    )?;
    patch(
        api,
        &deployment_path(api, &deployment_of(api, &stable_id)?),
        &json!({"spec": {"replicas": if weight == 0 { total } else { stable_count }}}),
        "scaling the stable release",
    )?;
    let service = api.service_path(&names.active);
    let body = if weight == 0 {
        // Pinned to the stable release again.
        json!({"metadata": {"annotations": {STABLE: null}}, "spec": {"selector": {RELEASE_LABEL: stable_id}}})
    } else {
        // Both releases serve: the Service selects every pod of the app.
        json!({"metadata": {"annotations": {STABLE: stable_id}}, "spec": {"selector": {RELEASE_LABEL: null}}})
    };
    patch(api, &service, &body, "selecting the pods that serve")?;
    log::info(format!(
        "canary {release} at {weight} %: {canary} canary and {stable_count} stable replica(s) of {total}"
    ));
    Ok(())
}

/// The weight asked of the canary, taken once both Deployments have their counts ready.
pub(crate) fn status(api: &Api, release: &str) -> Result<TrafficStatus, PluginError> {
    let canary = get(api, &api.release_name(release))?;
    let weight: u8 = canary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHT))
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let Some(stable_id) = stable(api)? else {
        return Ok(TrafficStatus {
            weight,
            taken_effect: false,
            detail: "the active Service pins no release".into(),
        });
    };
    let stable_d = get(api, &deployment_of(api, &stable_id)?)?;
    let ready = |d: &Deployment| {
        (
            d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            d.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        )
    };
    let (cw, cr) = ready(&canary);
    let (sw, sr) = ready(&stable_d);
    let pinned = api.selected(&services(api)?.active)?.is_some();
    let settled = cw == cr && sw == sr && pinned == (weight == 0);
    Ok(TrafficStatus {
        weight,
        taken_effect: settled,
        detail: if settled {
            String::new()
        } else {
            format!("canary {cr} of {cw} pods ready, stable {sr} of {sw}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::counts;

    /// The cases PLATFORM-FACTS-2 §2c lists from Argo Rollouts' own tests.
    #[test]
    fn counts_round_as_argo_rollouts_does() {
        assert_eq!(counts(10, 10, true), (1, 9));
        assert_eq!(counts(10, 20, true), (2, 8));
        assert_eq!(counts(10, 25, true), (3, 8));
        assert_eq!(counts(10, 50, true), (5, 5));
        assert_eq!(counts(10, 25, false), (3, 7));
        assert_eq!(counts(4, 25, true), (1, 3));
        assert_eq!(counts(3, 50, false), (2, 1));
        assert_eq!(counts(1, 40, false), (0, 1));
        assert_eq!(counts(1, 50, false), (1, 0));
        assert_eq!(counts(1, 60, false), (1, 0));
        assert_eq!(counts(2, 75, false), (0, 2));
        assert_eq!(counts(10, 0, true), (0, 10));
        assert_eq!(counts(10, 100, true), (10, 0));
    }
}
