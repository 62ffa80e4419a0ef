//! Blue-green and canary: one Deployment per release, Services switched by selector.
//!
//! With `services` set, a release is its own Deployment, `<deployment>-<release>`, made from
//! the `deployment` named in the settings (its template, with the release's images), whose
//! pods carry the label `deploy-agent.dev/release=<release>`. Two Services choose between
//! releases by that label, as Argo Rollouts' do by `rollouts-pod-template-hash`:
//!
//! - `deploy` creates the release's Deployment and points the **preview** Service at it;
//! - `status` is the release's rollout; it is `live` once the **active** Service selects it
//!   and its endpoints are ready;
//! - `promote` switches the active Service's selector (a JSON merge patch of the one key), and
//!   with a `route` also gives the active Service all the route's traffic back;
//! - `rollback` scales an earlier release's Deployment back up and, once it is available,
//!   switches the active Service to it;
//! - `retire` scales a release that no Service selects to zero (the Deployment stays, so a
//!   rollback can bring it back).
//!
//! Setting up once: the `deployment`'s pod template and both Services' selectors carry
//! `deploy-agent.dev/release: initial` (the validator says so, with the commands), so that no
//! Service ever selects a release before it is switched to.

use deploy_agent_sdk::http;
use deploy_agent_sdk::prelude::*;
use k8s_openapi::List;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::{Api, apply_release, ok, rollout};

/// The pod label (and Service selector key) naming the release.
pub(crate) const RELEASE_LABEL: &str = "deploy-agent.dev/release";
/// Marks the Deployments this plugin made, one per release.
const MANAGED: &str = "app.kubernetes.io/managed-by";

/// A release id as a DNS label part: lowercase, `[a-z0-9-]`, at most 40 characters.
pub(crate) fn slug(release: &str) -> String {
    let s: String = release
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    s.trim_matches('-').to_string()
}

/// The Services and how to reach the preview.
pub(crate) fn services(api: &Api) -> Result<&super::ServiceNames, PluginError> {
    api.s.services.as_ref().ok_or_else(|| {
        invalid_config("blue-green and canary need `services = { active = \"web\", preview = \"web-preview\" }`")
    })
}

impl Api {
    pub(crate) fn ns_path(&self, group_version: &str, kind: &str) -> String {
        let root = if group_version == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group_version}")
        };
        format!(
            "{root}/namespaces/{}/{kind}",
            http::encode(&self.s.namespace)
        )
    }

    pub(crate) fn release_name(&self, release: &str) -> String {
        format!("{}-{}", self.s.deployment, slug(release))
    }

    fn release_deployment(&self, release: &str) -> Result<Option<Deployment>, PluginError> {
        let path = format!(
            "{}/{}",
            self.ns_path("apps/v1", "deployments"),
            http::encode(&self.release_name(release))
        );
        let r = self.get(&path)?;
        if r.status == 404 {
            return Ok(None);
        }
        ok(r, "reading the release's Deployment")?.json().map(Some)
    }

    /// The API path of the Service `name` in the namespace.
    pub(crate) fn service_path(&self, name: &str) -> String {
        format!("{}/{}", self.ns_path("v1", "services"), http::encode(name))
    }

    pub(crate) fn service(&self, name: &str) -> Result<Value, PluginError> {
        let path = self.service_path(name);
        ok(self.get(&path)?, &format!("reading Service {name}"))?.json()
    }

    /// The release a Service selects, by its selector's release key.
    pub(crate) fn selected(&self, service: &str) -> Result<Option<String>, PluginError> {
        let s = self.service(service)?;
        Ok(s["spec"]["selector"][RELEASE_LABEL]
            .as_str()
            .map(str::to_string))
    }

    /// Points a Service at `release`: a JSON merge patch of the selector's one key (other
    /// keys stay, as the merge-patch rules for maps say).
    fn select(&self, service: &str, release: &str) -> Result<(), PluginError> {
        let path = self.service_path(service);
        // A canary by replica ratio may have left the selector open, remembering the stable
        // release in an annotation: pinning closes both.
        let body = json!({
            "metadata": {"annotations": {"deploy-agent.dev/stable": null}},
            "spec": {"selector": {RELEASE_LABEL: release}},
        });
        let r = self
            .authed(http::patch(&self.url(&path)))
            .header("content-type", "application/merge-patch+json")
            .json(&body)?
            .send()?;
        ok(r, &format!("switching Service {service} to {release}"))?;
        log::info(format!("Service {service} now selects release {release}"));
        Ok(())
    }

    /// Whether every endpoint behind a Service is ready (at least one), by its EndpointSlices.
    pub(crate) fn endpoints_ready(&self, service: &str) -> Result<(usize, usize), PluginError> {
        let path = format!(
            "{}?labelSelector={}",
            self.ns_path("discovery.k8s.io/v1", "endpointslices"),
            http::encode(&format!("kubernetes.io/service-name={service}"))
        );
        let list: Value = ok(self.get(&path)?, "listing EndpointSlices")?.json()?;
        let (mut ready, mut all) = (0, 0);
        for slice in list["items"].as_array().into_iter().flatten() {
            for e in slice["endpoints"].as_array().into_iter().flatten() {
                all += 1;
                // A nil `ready` condition means ready.
                if e["conditions"]["ready"] != false {
                    ready += 1;
                }
            }
        }
        Ok((ready, all))
    }

    fn scale(&self, name: &str, replicas: i32) -> Result<(), PluginError> {
        let path = format!(
            "{}/{}",
            self.ns_path("apps/v1", "deployments"),
            http::encode(name)
        );
        let r = self
            .authed(http::patch(&self.url(&path)))
            .header("content-type", "application/merge-patch+json")
            .json(&json!({"spec": {"replicas": replicas}}))?
            .send()?;
        ok(r, &format!("scaling Deployment {name} to {replicas}"))?;
        Ok(())
    }
}

/// How many replicas a release runs: the template Deployment's, or, once that was retired to
/// zero, the live release's.
pub(crate) fn desired_replicas(api: &Api, base: &Deployment) -> Result<i32, PluginError> {
    let template = base.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if template > 0 {
        return Ok(template);
    }
    let live = match api.selected(&services(api)?.active)? {
        Some(id) => api.release_deployment(&id)?,
        None => None,
    };
    Ok(live
        .and_then(|d| d.spec.and_then(|s| s.replicas))
        .filter(|n| *n > 0)
        .unwrap_or(1))
}

/// `deploy`: the release's own Deployment, and the preview Service pointed at it.
pub(crate) fn deploy(api: &Api, release: &Artifact, id: &str) -> Result<Staged, PluginError> {
    let names = services(api)?;
    let base = api.deployment()?;
    let mut d = Deployment::default();
    d.metadata.name = Some(api.release_name(id));
    d.metadata.namespace = Some(api.s.namespace.clone());
    let mut labels = base.metadata.labels.clone().unwrap_or_default();
    labels.insert(MANAGED.into(), "deploy-agent".into());
    labels.insert(RELEASE_LABEL.into(), id.into());
    d.metadata.labels = Some(labels);
    let mut spec = base
        .spec
        .clone()
        .ok_or_else(|| rejected("the Deployment has no spec"))?;
    spec.selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(RELEASE_LABEL.into(), id.into());
    apply_release(api, &mut spec.template, release, id);
    spec.template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(RELEASE_LABEL.into(), id.into());
    spec.paused = None;
    let replicas = desired_replicas(api, &base)?;
    spec.replicas = Some(replicas);
    d.spec = Some(spec);
    // The release's full size, which a canary by replica ratio divides (the template's count
    // changes while it runs).
    d.metadata.annotations = Some(
        [(super::replicas::SIZE.to_string(), replicas.to_string())]
            .into_iter()
            .collect(),
    );
    let r = api
        .authed(http::post(&api.url(&api.ns_path("apps/v1", "deployments"))))
        .json(&d)?
        .send()?;
    // Created now, or by an earlier attempt at this release: the same object either way.
    if r.status != 409 {
        ok(r, "creating the release's Deployment")?;
    }
    api.select(&names.preview, id)?;
    Ok(Staged {
        release_id: id.into(),
        url: api.s.preview_url.clone().or_else(|| api.s.url.clone()),
    })
}

/// `status`: the release's rollout, then whether the active Service serves it.
pub(crate) fn status(api: &Api, id: &str) -> Result<ReleaseStatus, PluginError> {
    let names = services(api)?;
    let active = api.selected(&names.active)?;
    let Some(d) = api.release_deployment(id)? else {
        if active.as_deref() == Some(id) {
            // The release the setup pinned (`initial`), served by the template Deployment.
            return Ok(ReleaseStatus {
                state: ReleaseState::Live,
                url: api.s.url.clone(),
            });
        }
        return Err(rejected(format!(
            "release {id} has no Deployment {} (was it deployed here?)",
            api.release_name(id)
        )));
    };
    let state = match rollout(&d) {
        Err(failed) => ReleaseState::Failed(failed),
        Ok(Some(waiting)) => ReleaseState::InProgress(waiting),
        Ok(None) if active.as_deref() != Some(id) => ReleaseState::Ready,
        Ok(None) => match api.endpoints_ready(&names.active)? {
            (ready, all) if ready > 0 && ready == all => ReleaseState::Live,
            (ready, all) => ReleaseState::InProgress(format!(
                "Service {} selects it; {ready} of {all} endpoints ready",
                names.active
            )),
        },
    };
    let url = if matches!(state, ReleaseState::Live) {
        api.s.url.clone()
    } else {
        api.s.preview_url.clone().or_else(|| api.s.url.clone())
    };
    Ok(ReleaseStatus { state, url })
}

/// `promote`: the active Service switched to the release; the route's traffic all to it.
pub(crate) fn promote(api: &Api, id: &str) -> Result<(), PluginError> {
    let names = services(api)?;
    let d = api
        .release_deployment(id)?
        .ok_or_else(|| rejected(format!("release {id} has no Deployment to switch to")))?;
    if let Ok(Some(waiting)) | Err(waiting) = rollout(&d).map_err(|e| e.to_string()) {
        return Err(retryable(
            format!("release {id} is not available yet: {waiting}"),
            Some(1000),
        ));
    }
    api.select(&names.active, id)?;
    if api.s.route.is_some() {
        // Both Services select the release now: the route may send everything to active.
        super::traffic::set(api, id, 0)?;
    }
    Ok(())
}

/// `rollback`: an earlier release's Deployment back up, then the active Service to it.
pub(crate) fn rollback(api: &Api, to: Option<&str>) -> Result<String, PluginError> {
    let names = services(api)?;
    let live = api.selected(&names.active)?;
    let releases = list(api)?;
    let chosen = match to {
        Some(id) => releases
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| rejected(format!("no Deployment for release {id}")))?,
        None => previous_release(&releases)
            .ok_or_else(|| rejected("no earlier release to roll back to"))?,
    };
    let id = chosen.id.clone();
    if live.as_deref() == Some(id.as_str()) {
        return Ok(id);
    }
    let d = api
        .release_deployment(&id)?
        .ok_or_else(|| rejected(format!("no Deployment for release {id}")))?;
    let want = desired_replicas(api, &api.deployment()?)?;
    if d.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
        api.scale(&api.release_name(&id), want)?;
        return Err(retryable(
            format!("release {id} was retired; scaling it back to {want} replica(s)"),
            Some(1000),
        ));
    }
    match rollout(&d) {
        Ok(None) => {}
        Ok(Some(waiting)) => {
            return Err(retryable(format!("release {id}: {waiting}"), Some(1000)));
        }
        Err(failed) => return Err(rejected(format!("release {id} cannot serve: {failed}"))),
    }
    api.select(&names.active, &id)?;
    if api.s.route.is_some() {
        super::traffic::set(api, &id, 0)?;
    }
    Ok(id)
}

/// The releases: the Deployments this plugin made, newest first.
pub(crate) fn list(api: &Api) -> Result<Vec<Release>, PluginError> {
    let names = services(api)?;
    let live = api.selected(&names.active)?;
    let path = format!(
        "{}?labelSelector={}",
        api.ns_path("apps/v1", "deployments"),
        http::encode(&format!("{MANAGED}=deploy-agent"))
    );
    let list: List<Deployment> = ok(api.get(&path)?, "listing Deployments")?.json()?;
    let mut out: Vec<Release> = list
        .items
        .iter()
        .filter_map(|d| {
            let labels = d.metadata.labels.as_ref()?;
            let id = labels.get(RELEASE_LABEL)?.clone();
            let version = d
                .spec
                .as_ref()
                .and_then(|s| super::template_annotation(&s.template, super::VERSION))
                .map(str::to_string);
            Some(Release {
                live: live.as_deref() == Some(id.as_str()),
                id,
                version,
                url: None,
                created_at_ms: d
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_millisecond().max(0) as u64)
                    .unwrap_or(0),
            })
        })
        .collect();
    // The release the setup pinned, served by the template Deployment itself.
    if let Some(id) = &live
        && !out.iter().any(|r| &r.id == id)
    {
        let base = api.deployment()?;
        out.push(Release {
            id: id.clone(),
            version: None,
            url: api.s.url.clone(),
            created_at_ms: base
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond().max(0) as u64)
                .unwrap_or(0),
            live: true,
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
    Ok(out)
}

/// `retire`: a release no Service selects, scaled to zero.
pub(crate) fn retire(api: &Api, id: &str) -> Result<(), PluginError> {
    let names = services(api)?;
    if api.selected(&names.active)?.as_deref() == Some(id) {
        return Err(rejected(format!(
            "release {id} is live (Service {} selects it); it cannot be retired",
            names.active
        )));
    }
    match api.release_deployment(id)? {
        Some(_) => api.scale(&api.release_name(id), 0)?,
        // The release the setup pinned runs in the template Deployment itself.
        None => api.scale(&api.s.deployment, 0)?,
    }
    log::info(format!("release {id} retired (scaled to 0)"));
    Ok(())
}
