//! Canary by Gateway API HTTPRoute backend weights.
//!
//! The route (`route.name`) has, in every rule, a backendRef to the active Service and one to
//! the preview Service. A weight of `w` percent for the release is `preview = w`,
//! `active = 100 - w` in every rule, as Argo Rollouts' Gateway API plugin sets them.
//!
//! - The write is a read-modify-write with optimistic concurrency: the whole `spec.rules`
//!   (an atomic list: a merge patch replaces it whole) with the `metadata.resourceVersion`
//!   that was read, as a JSON merge patch (CRDs refuse strategic-merge). A concurrent writer
//!   makes it a 409, which the host retries.
//! - The weight has taken effect when, for each of the route's parentRefs, the parent status
//!   written by the configured controller has `Accepted` and `ResolvedRefs` true at the
//!   route's current generation, and, with any weight on it, the preview Service has ready
//!   endpoints.

use deploy_agent_sdk::http;
use deploy_agent_sdk::prelude::*;
use serde_json::{Value, json};

use super::releases::services;
use super::{Api, ok};

fn route_settings(api: &Api) -> Result<&super::RouteSettings, PluginError> {
    api.s.route.as_ref().ok_or_else(|| {
        invalid_config(
            "a canary needs `route = { name = \"web\", controller = \"example.net/gateway-controller\" }` (an HTTPRoute with backendRefs to both Services)",
        )
    })
}

pub(crate) fn route_path(api: &Api, name: &str) -> String {
    format!(
        "{}/{}",
        api.ns_path("gateway.networking.k8s.io/v1", "httproutes"),
        http::encode(name)
    )
}

fn read(api: &Api) -> Result<Value, PluginError> {
    let r = route_settings(api)?;
    ok(api.get(&route_path(api, &r.name))?, "reading the HTTPRoute")?.json()
}

/// The weight `w` of every rule set for the two Services: `preview = w`, `active = 100 - w`.
/// `Err` names a rule without a backendRef to one of them.
fn reweighted(rules: &Value, active: &str, preview: &str, w: u8) -> Result<Value, String> {
    let mut rules = rules.clone();
    for (i, rule) in rules.as_array_mut().into_iter().flatten().enumerate() {
        let refs = rule["backendRefs"].as_array_mut();
        let mut found = (false, false);
        for b in refs.into_iter().flatten() {
            let name = b["name"].as_str().unwrap_or_default().to_string();
            if name == active {
                b["weight"] = json!(100 - i64::from(w));
                found.0 = true;
            } else if name == preview {
                b["weight"] = json!(i64::from(w));
                found.1 = true;
            }
        }
        if !(found.0 && found.1) {
            return Err(format!(
                "rule {i} of the HTTPRoute has no backendRef to {}",
                if found.0 { preview } else { active }
            ));
        }
    }
    Ok(rules)
}

/// The preview's share in percent, from the first rule's weights (a backendRef's weight
/// defaults to 1).
fn share(route: &Value, active: &str, preview: &str) -> u8 {
    let weight = |name: &str| {
        route["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["name"] == name)
            .map(|b| b["weight"].as_i64().unwrap_or(1).max(0))
            .unwrap_or(0)
    };
    let (a, p) = (weight(active), weight(preview));
    if a + p == 0 {
        return 0;
    }
    ((p * 100 + (a + p) / 2) / (a + p)).clamp(0, 100) as u8
}

/// Sets the weights for `release` (the preview Service must select it, unless `w` is 0).
pub(crate) fn set(api: &Api, release: &str, w: u8) -> Result<(), PluginError> {
    let names = services(api)?;
    let settings = route_settings(api)?;
    if w > 0 && api.selected(&names.preview)?.as_deref() != Some(release) {
        return Err(rejected(format!(
            "Service {} does not select release {release}; deploy it first",
            names.preview
        )));
    }
    let route = read(api)?;
    let rules = reweighted(&route["spec"]["rules"], &names.active, &names.preview, w)
        .map_err(|e| invalid_config(format!("HTTPRoute {}: {e}", settings.name)))?;
    if rules == route["spec"]["rules"] {
        return Ok(());
    }
    let body = json!({
        "metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
        "spec": {"rules": rules},
    });
    let r = api
        .authed(http::patch(&api.url(&route_path(api, &settings.name))))
        .header("content-type", "application/merge-patch+json")
        .json(&body)?
        .send()?;
    ok(r, "setting the HTTPRoute's weights")?;
    log::info(format!(
        "HTTPRoute {}: {w} % to {} ({release}), {} % to {}",
        settings.name,
        names.preview,
        100 - i64::from(w),
        names.active
    ));
    Ok(())
}

/// The release's share now, and whether the route's parents have accepted it.
pub(crate) fn status(api: &Api, release: &str) -> Result<TrafficStatus, PluginError> {
    let names = services(api)?;
    let settings = route_settings(api)?;
    let route = read(api)?;
    let mut weight = share(&route, &names.active, &names.preview);
    if weight > 0 && api.selected(&names.preview)?.as_deref() != Some(release) {
        weight = 0;
    }
    let generation = route["metadata"]["generation"].as_i64().unwrap_or(0);
    let mut waiting = Vec::new();
    let parents = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for p in route["spec"]["parentRefs"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let entry = parents.iter().find(|s| {
            s["parentRef"]["name"] == name && s["controllerName"] == settings.controller.as_str()
        });
        let Some(entry) = entry else {
            waiting.push(format!("parent {name} has not reported on the route"));
            continue;
        };
        for kind in ["Accepted", "ResolvedRefs"] {
            let c = entry["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == kind);
            match c {
                None => waiting.push(format!("parent {name}: no {kind} condition")),
                Some(c) if c["observedGeneration"].as_i64() != Some(generation) => waiting.push(
                    format!("parent {name}: {kind} is for an older generation of the route"),
                ),
                Some(c) if c["status"] != "True" => waiting.push(format!(
                    "parent {name}: {kind} is {} ({}: {})",
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )),
                Some(_) => {}
            }
        }
    }
    if weight > 0 {
        let (ready, all) = api.endpoints_ready(&names.preview)?;
        if ready == 0 {
            waiting.push(format!(
                "Service {} has no ready endpoints ({all} in all)",
                names.preview
            ));
        }
    }
    Ok(TrafficStatus {
        weight,
        taken_effect: waiting.is_empty(),
        detail: waiting.join("; "),
    })
}

/// Whether a canary by replica ratio was given a weight.
fn has_weight(api: &Api, release: &str) -> Result<bool, PluginError> {
    Ok(super::replicas::status(api, release).is_ok_and(|t| t.weight > 0))
}

impl Traffic for super::Kubernetes {
    fn strategies(ctx: &Context) -> Result<Vec<Strategy>, PluginError> {
        let api = Api::new(ctx)?;
        // Canary by the route's weights, or by replica ratio without one.
        Ok(if api.s.services.is_some() {
            vec![Strategy::BlueGreen, Strategy::Canary]
        } else {
            Vec::new()
        })
    }

    fn set_weight(ctx: &Context, release_id: &str, weight: u8) -> Result<(), PluginError> {
        if weight > 100 {
            return Err(rejected(format!("weight {weight} is over 100")));
        }
        let api = Api::new(ctx)?;
        if api.s.route.is_some() {
            set(&api, release_id, weight)
        } else {
            super::replicas::set(&api, release_id, weight)
        }
    }

    fn weight(ctx: &Context, release_id: &str) -> Result<TrafficStatus, PluginError> {
        let api = Api::new(ctx)?;
        if api.s.route.is_some() {
            status(&api, release_id)
        } else {
            super::replicas::status(&api, release_id)
        }
    }

    fn abort(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        if api.s.route.is_some() {
            return set(&api, release_id, 0);
        }
        let names = services(&api)?;
        if api.selected(&names.active)?.is_some() && !has_weight(&api, release_id)? {
            // Blue-green, or a canary that never took traffic: the active Service still
            // pins the stable release.
            return Ok(());
        }
        super::replicas::set(&api, release_id, 0)
    }

    fn retire(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        super::releases::retire(&Api::new(ctx)?, release_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(a: i64, p: i64) -> Value {
        json!({"spec": {"rules": [{"backendRefs": [
            {"name": "web", "port": 80, "weight": a},
            {"name": "web-preview", "port": 80, "weight": p}
        ]}]}})
    }

    #[test]
    fn every_rule_is_reweighted_and_a_missing_backend_is_named() {
        let r = route(100, 0);
        let rules = reweighted(&r["spec"]["rules"], "web", "web-preview", 30).unwrap();
        assert_eq!(rules[0]["backendRefs"][0]["weight"], 70);
        assert_eq!(rules[0]["backendRefs"][1]["weight"], 30);
        let one = json!([{"backendRefs": [{"name": "web", "port": 80}]}]);
        assert!(
            reweighted(&one, "web", "web-preview", 10)
                .unwrap_err()
                .contains("no backendRef to web-preview")
        );
    }

    #[test]
    fn the_share_is_the_preview_weight_over_the_sum() {
        assert_eq!(share(&route(90, 10), "web", "web-preview"), 10);
        assert_eq!(share(&route(3, 1), "web", "web-preview"), 25);
        assert_eq!(share(&route(0, 0), "web", "web-preview"), 0);
        assert_eq!(share(&route(0, 5), "web", "web-preview"), 100);
    }
}
