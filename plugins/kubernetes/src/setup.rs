//! The validator's checks of the one-time set-up blue-green and canary need: both Services
//! exist and select by the release label (else a Service would select every release's pods
//! at once), the named Deployment's pods carry that label, and the HTTPRoute, when one is
//! configured, exists and sends every rule to both Services (the weights are set there).

use deploy_agent_sdk::prelude::*;
use serde_json::Value;

use super::releases::RELEASE_LABEL;
use k8s_openapi::api::apps::v1::Deployment;

use super::Api;

/// Findings about the set-up; none without `services`.
pub(crate) fn findings(api: &Api, base: Option<&Deployment>) -> Result<Vec<Finding>, PluginError> {
    let mut out = Vec::new();
    let Some(names) = api.s.services.as_ref() else {
        return Ok(out);
    };
    let pin = format!(
        "add `{RELEASE_LABEL}: initial` to the Service's selector and to Deployment {}'s pod labels (once; the agent switches it from then on)",
        api.s.deployment
    );
    for name in [&names.active, &names.preview] {
        let r = api.get(&api.service_path(name))?;
        if r.status == 404 {
            out.push(finding(
                Severity::Error,
                "service-missing",
                format!("Service {}/{name} does not exist", api.s.namespace),
                Some("create it, or fix `services`"),
            ));
            continue;
        }
        let service: Value = super::ok(r, &format!("reading Service {name}"))?.json()?;
        if service["spec"]["selector"][RELEASE_LABEL]
            .as_str()
            .is_none()
        {
            out.push(finding(
                Severity::Error,
                "service-not-pinned",
                format!(
                    "Service {name}'s selector has no `{RELEASE_LABEL}`, so it would send traffic to every release's pods at once"
                ),
                Some(&pin),
            ));
        }
    }
    if let Some(d) = base {
        let pinned = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .is_some_and(|l| l.contains_key(RELEASE_LABEL));
        if !pinned {
            out.push(finding(
                Severity::Warning,
                "deployment-not-pinned",
                format!(
                    "Deployment {}'s pods carry no `{RELEASE_LABEL}` label, so no Service selects them once the Services are pinned",
                    api.s.deployment
                ),
                Some(&pin),
            ));
        }
    }
    if let Some(route) = api.s.route.as_ref() {
        let r = api.get(&super::traffic::route_path(api, &route.name))?;
        if r.status == 404 {
            out.push(finding(
                Severity::Error,
                "route-missing",
                format!(
                    "HTTPRoute {}/{} does not exist",
                    api.s.namespace, route.name
                ),
                Some("create it with backendRefs to both Services, or fix `route.name`"),
            ));
            return Ok(out);
        }
        let route: Value = super::ok(r, "reading the HTTPRoute")?.json()?;
        for (i, rule) in route["spec"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let refs: Vec<&str> = rule["backendRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["name"].as_str())
                .collect();
            let lacking: Vec<&str> = [names.active.as_str(), names.preview.as_str()]
                .into_iter()
                .filter(|n| !refs.contains(n))
                .collect();
            if !lacking.is_empty() {
                out.push(finding(
                    Severity::Error,
                    "route-backends",
                    format!(
                        "rule {i} of HTTPRoute {} has no backendRef to {}; a canary sets the weights of both Services in every rule",
                        route["metadata"]["name"].as_str().unwrap_or_default(),
                        lacking.join(" or ")
                    ),
                    Some("list both Services in every rule's backendRefs: the active one with weight 100, the preview with weight 0"),
                ));
            }
        }
    }
    Ok(out)
}
