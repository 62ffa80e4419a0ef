//! The Kubernetes deploy target and validator.
//!
//! A release is a rollout of one `apps/v1` Deployment:
//!
//! - `deploy` sets the configured containers' images (and optional env vars and pod
//!   annotations) with a strategic-merge PATCH, as `kubectl set image` does, and stamps the
//!   pod template with the release id and version. Each release is therefore one ReplicaSet.
//! - `status` applies `kubectl rollout status`'s rules to the Deployment.
//! - `rollback` is `kubectl rollout undo`: it finds the Deployment's ReplicaSets (label
//!   selector plus controller owner reference), picks the previous revision (or the named
//!   release) by `deployment.kubernetes.io/revision`, and JSON-patches the template back.
//! - `promote` has nothing to switch (a rollout is live when it completes); it checks that the
//!   release is still the Deployment's template, and the host waits for the rollout.
//!
//! With `services` (and `route`) set, releases are Deployments side by side instead, for
//! blue-green and canary: see [`releases`] and [`traffic`].
//!
//! The bearer token is a secret by reference (`token`). The cluster's CA goes in the plugin's
//! policy (`tls_ca`), because TLS is the host's job: the plugin never holds a key or a socket.
//! Types are `k8s-openapi`'s (Kubernetes 1.36).

use std::collections::BTreeMap;

use deploy_agent_sdk::http::{self, RequestBuilder, Response};
use deploy_agent_sdk::prelude::*;
use k8s_openapi::List;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Status};
use serde::Deserialize;
use serde_json::{Value, json};

mod releases;
mod replicas;
mod setup;
mod traffic;

/// The plugin.
pub struct Kubernetes;

/// The pod-template annotation naming the release (the deploy-agent run).
const RELEASE: &str = "deploy-agent.dev/release";
/// The pod-template annotation naming the version.
const VERSION: &str = "deploy-agent.dev/version";
/// The ReplicaSet annotation holding its revision.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// Annotations `rollout undo` keeps from the Deployment rather than the ReplicaSet.
const UNDO_KEEP: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The API server, e.g. `https://10.0.0.1:6443`.
    api: String,
    namespace: String,
    deployment: String,
    /// Container name → image, `{version}` replaced by the release's version.
    containers: BTreeMap<String, String>,
    /// Env vars set on those containers (`{version}` replaced).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Extra pod-template annotations (`{version}` replaced).
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// Where the release is served, for checks (`{url}`), if anywhere.
    #[serde(default)]
    url: Option<String>,
    /// The name of the granted secret that holds the bearer token.
    #[serde(default = "default_token")]
    token_secret: String,
    /// Blue-green and canary: a Deployment per release beside `deployment` (its template),
    /// and these Services switched between releases by the release label.
    #[serde(default)]
    services: Option<ServiceNames>,
    /// Canary by a Gateway API HTTPRoute's backend weights (needs `services`).
    #[serde(default)]
    route: Option<RouteSettings>,
    /// Where the preview Service is reached, for checks on the staged release (`{url}`).
    #[serde(default)]
    preview_url: Option<String>,
}

/// The Services a blue-green or canary release switches.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceNames {
    /// The one users reach: it selects the live release.
    active: String,
    /// The one checks reach: it selects the staged release.
    preview: String,
}

/// The HTTPRoute a canary reweights.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSettings {
    /// Its name, in the namespace.
    name: String,
    /// The `controllerName` of the gateway implementation whose status counts.
    controller: String,
}

fn default_token() -> String {
    "token".into()
}

struct Api {
    s: Settings,
    token: SecretRef,
}

impl Api {
    fn new(ctx: &Context) -> Result<Api, PluginError> {
        let s: Settings = ctx.config()?;
        if s.containers.is_empty() {
            return Err(invalid_config(
                "`containers` is empty: name at least one container and its image",
            ));
        }
        let token = ctx.secret(&s.token_secret)?;
        Ok(Api { s, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.s.api.trim_end_matches('/'))
    }

    fn deployment_path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/deployments/{}",
            http::encode(&self.s.namespace),
            http::encode(&self.s.deployment)
        )
    }

    fn authed(&self, req: RequestBuilder) -> RequestBuilder {
        req.header("authorization", self.token.bearer())
            .header("accept", "application/json")
    }

    fn get(&self, path: &str) -> Result<Response, PluginError> {
        self.authed(http::get(&self.url(path))).send()
    }

    fn deployment(&self) -> Result<Deployment, PluginError> {
        let r = self.get(&self.deployment_path())?;
        ok(r, "reading the Deployment")?.json()
    }

    fn patch(&self, content_type: &str, body: &Value) -> Result<Deployment, PluginError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| rejected(format!("cannot encode the patch: {e}")))?;
        let r = self
            .authed(http::patch(&self.url(&self.deployment_path())))
            .header("content-type", content_type)
            .body(body)
            .send()?;
        ok(r, "patching the Deployment")?.json()
    }

    /// The ReplicaSets this Deployment controls, as `rollout undo` finds them.
    fn replica_sets(&self, d: &Deployment) -> Result<Vec<ReplicaSet>, PluginError> {
        let selector = d
            .spec
            .as_ref()
            .map(|s| selector_string(&s.selector))
            .unwrap_or_default();
        let path = format!(
            "/apis/apps/v1/namespaces/{}/replicasets?labelSelector={}",
            http::encode(&self.s.namespace),
            http::encode(&selector)
        );
        let list: List<ReplicaSet> = ok(self.get(&path)?, "listing ReplicaSets")?.json()?;
        let uid = d.metadata.uid.clone().unwrap_or_default();
        Ok(list
            .items
            .into_iter()
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
            .collect())
    }
}

/// A label selector in the query-string form the API accepts.
fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

/// A `Status` failure body as one line; 409 (a conflicting write) is worth retrying.
fn api_error(r: &Response, doing: &str) -> PluginError {
    let message = match serde_json::from_slice::<Status>(&r.body) {
        Ok(s) => format!(
            "{} ({})",
            s.message.unwrap_or_default(),
            s.reason.unwrap_or_default()
        ),
        Err(_) => r.text().chars().take(300).collect(),
    };
    let text = format!("Kubernetes: {doing}: {message}");
    if r.status == 409 {
        return retryable(
            format!("HTTP 409: {text}"),
            r.retry_after_ms().or(Some(1000)),
        );
    }
    r.status_error(&text)
}

/// The response, or the platform's error in words.
fn ok(r: Response, doing: &str) -> Result<Response, PluginError> {
    r.error_for_status_with(|r| api_error(r, doing))
}

fn template_annotation<'a>(t: &'a PodTemplateSpec, key: &str) -> Option<&'a str> {
    t.metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A ReplicaSet's release id: the one we stamped, or `revision-N` for a rollout made elsewhere.
fn release_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| template_annotation(t, RELEASE))
        .map(str::to_string)
        .unwrap_or_else(|| format!("revision-{}", revision(rs)))
}

/// A template with the controller's `pod-template-hash` label removed, for comparison and undo.
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    t
}

/// `kubectl rollout status` for a Deployment: `Ok(None)` when complete, `Ok(Some(why))`
/// while waiting, `Err(why)` when the rollout failed.
fn rollout(d: &Deployment) -> Result<Option<String>, String> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if generation > status.observed_generation.unwrap_or(0) {
        return Ok(Some(format!(
            "waiting for deployment {name:?} spec update to be observed"
        )));
    }
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    if let Some(c) = progressing
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Err(format!(
            "deployment {name:?} exceeded its progress deadline: {}",
            c.message.clone().unwrap_or_default()
        ));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Ok(Some(format!(
            "{updated} out of {desired} new replicas have been updated"
        )));
    }
    if replicas > updated {
        return Ok(Some(format!(
            "{} old replicas are pending termination",
            replicas - updated
        )));
    }
    if available < updated {
        return Ok(Some(format!(
            "{available} of {updated} updated replicas are available"
        )));
    }
    Ok(None)
}

fn current_release(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| template_annotation(&s.template, RELEASE))
        .map(str::to_string)
}

fn container_names(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .map(|s| {
            s.template
                .spec
                .iter()
                .flat_map(|p| p.containers.iter())
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn missing_containers(api: &Api, d: &Deployment) -> Vec<String> {
    let have = container_names(d);
    api.s
        .containers
        .keys()
        .filter(|c| !have.contains(c))
        .cloned()
        .collect()
}

/// A release's images, env vars and annotations applied to a pod template, by container
/// name (what `deploy`'s strategic-merge patch does to the live Deployment), for a release
/// that gets its own Deployment.
fn apply_release(api: &Api, t: &mut PodTemplateSpec, release: &Artifact, id: &str) {
    let fill = |s: &str| s.replace("{version}", &release.version);
    for c in t.spec.iter_mut().flat_map(|p| p.containers.iter_mut()) {
        let Some(image) = api.s.containers.get(&c.name) else {
            continue;
        };
        c.image = Some(fill(image));
        let env = c.env.get_or_insert_with(Vec::new);
        for (k, v) in &api.s.env {
            env.retain(|e| &e.name != k);
            env.push(EnvVar {
                name: k.clone(),
                value: Some(fill(v)),
                ..Default::default()
            });
        }
        if env.is_empty() {
            c.env = None;
        }
    }
    let annotations = t
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default);
    for (k, v) in &api.s.annotations {
        annotations.insert(k.clone(), fill(v));
    }
    annotations.insert(RELEASE.into(), id.into());
    annotations.insert(VERSION.into(), release.version.clone());
}

impl DeployTarget for Kubernetes {
    fn deploy(ctx: &Context, release: Artifact) -> Result<Staged, PluginError> {
        let api = Api::new(ctx)?;
        let current = api.deployment()?;
        let missing = missing_containers(&api, &current);
        if !missing.is_empty() {
            return Err(invalid_config(format!(
                "the Deployment has no container {}; it has {}",
                missing.join(", "),
                container_names(&current).join(", ")
            )));
        }
        let id = if ctx.deployment_id.is_empty() {
            release.version.clone()
        } else {
            ctx.deployment_id.clone()
        };
        if api.s.services.is_some() {
            return releases::deploy(&api, &release, &id);
        }
        let fill = |s: &str| s.replace("{version}", &release.version);
        let env: Vec<EnvVar> = api
            .s
            .env
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(fill(v)),
                ..Default::default()
            })
            .collect();
        let containers: Vec<Container> = api
            .s
            .containers
            .iter()
            .map(|(name, image)| Container {
                name: name.clone(),
                image: Some(fill(image)),
                env: (!env.is_empty()).then(|| env.clone()),
                ..Default::default()
            })
            .collect();
        let mut annotations: BTreeMap<String, String> = api
            .s
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), fill(v)))
            .collect();
        annotations.insert(RELEASE.into(), id.clone());
        annotations.insert(VERSION.into(), release.version.clone());
        let patch = json!({
            "metadata": {"annotations": {
                "kubernetes.io/change-cause": format!("deploy-agent: version {} (release {id})", release.version),
            }},
            "spec": {"template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": containers},
            }},
        });
        let d = api.patch("application/strategic-merge-patch+json", &patch)?;
        log::info(format!(
            "patched {}/{} to generation {}",
            api.s.namespace,
            api.s.deployment,
            d.metadata.generation.unwrap_or(0)
        ));
        Ok(Staged {
            release_id: id,
            url: api.s.url.clone(),
        })
    }

    fn status(ctx: &Context, release_id: &str) -> Result<ReleaseStatus, PluginError> {
        let api = Api::new(ctx)?;
        if api.s.services.is_some() {
            return releases::status(&api, release_id);
        }
        let d = api.deployment()?;
        let url = api.s.url.clone();
        if current_release(&d).as_deref() != Some(release_id) {
            // Not the template any more: an earlier release, kept as a ReplicaSet.
            let known = api
                .replica_sets(&d)?
                .iter()
                .any(|rs| release_of(rs) == release_id);
            if !known {
                return Err(rejected(format!(
                    "release {release_id} is neither the Deployment's template nor one of its ReplicaSets"
                )));
            }
            return Ok(ReleaseStatus {
                state: ReleaseState::Ready,
                url,
            });
        }
        let state = match rollout(&d) {
            Ok(None) => ReleaseState::Live,
            Ok(Some(waiting)) => ReleaseState::InProgress(waiting),
            Err(failed) => ReleaseState::Failed(failed),
        };
        Ok(ReleaseStatus { state, url })
    }

    fn promote(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        if api.s.services.is_some() {
            return releases::promote(&api, release_id);
        }
        let d = api.deployment()?;
        match current_release(&d) {
            Some(id) if id == release_id => Ok(()),
            other => Err(rejected(format!(
                "release {release_id} is not the Deployment's template (it runs {}); deploy it again or roll back to it",
                other.unwrap_or_else(|| "a template deploy-agent did not make".into())
            ))),
        }
    }

    fn rollback(ctx: &Context, to: Option<&str>) -> Result<String, PluginError> {
        let api = Api::new(ctx)?;
        if api.s.services.is_some() {
            return releases::rollback(&api, to);
        }
        let d = api.deployment()?;
        let spec = d
            .spec
            .as_ref()
            .ok_or_else(|| rejected("the Deployment has no spec"))?;
        if spec.paused == Some(true) {
            return Err(rejected(format!(
                "you cannot roll back a paused deployment; resume it first with `kubectl rollout resume deployment/{}`",
                api.s.deployment
            )));
        }
        let mut sets = api.replica_sets(&d)?;
        sets.sort_by_key(|rs| std::cmp::Reverse(revision(rs)));
        let chosen = match to {
            Some(id) => sets.iter().find(|rs| release_of(rs) == id).ok_or_else(|| {
                rejected(format!(
                    "unable to find release {id} among the Deployment's ReplicaSets (it has {})",
                    sets.iter().map(release_of).collect::<Vec<_>>().join(", ")
                ))
            })?,
            // kubectl's toRevision=0: the second-highest revision.
            None => sets
                .iter()
                .filter(|rs| revision(rs) > 0)
                .nth(1)
                .ok_or_else(|| rejected("no rollout history found: no previous revision"))?,
        };
        let id = release_of(chosen);
        let template = chosen
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(without_hash)
            .ok_or_else(|| rejected(format!("ReplicaSet for {id} has no template")))?;
        if without_hash(&spec.template) == template {
            log::info(format!("skipped rollback: {id} is already the template"));
            return Ok(id);
        }
        let mut annotations = BTreeMap::new();
        let ours = d.metadata.annotations.clone().unwrap_or_default();
        for key in UNDO_KEEP {
            if let Some(v) = ours.get(key) {
                annotations.insert(key.to_string(), v.clone());
            }
        }
        for (k, v) in chosen.metadata.annotations.iter().flatten() {
            if !UNDO_KEEP.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        let patch = json!([
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations},
        ]);
        api.patch("application/json-patch+json", &patch)?;
        Ok(id)
    }

    fn list_releases(ctx: &Context) -> Result<Vec<Release>, PluginError> {
        let api = Api::new(ctx)?;
        if api.s.services.is_some() {
            return releases::list(&api);
        }
        let d = api.deployment()?;
        let live = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .and_then(|v| v.parse::<i64>().ok());
        let sets = api.replica_sets(&d)?;
        let mut releases: Vec<Release> = sets
            .iter()
            .map(|rs| Release {
                id: release_of(rs),
                version: rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .and_then(|t| template_annotation(t, VERSION))
                    .map(str::to_string),
                url: None,
                created_at_ms: rs
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_millisecond().max(0) as u64)
                    .unwrap_or(0),
                live: Some(revision(rs)) == live,
            })
            .collect();
        // Newest first by creation, as the interface says: a rolled-back-to ReplicaSet gets
        // the highest revision but stays as old as it was.
        releases.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        Ok(releases)
    }
}

/// Whether the token may `verb` the Deployment's `resource`, by SelfSubjectAccessReview.
fn may(
    api: &Api,
    verb: &str,
    resource: &str,
    name: Option<&str>,
) -> Result<(bool, String), PluginError> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(api.s.namespace.clone()),
                verb: Some(verb.into()),
                group: Some("apps".into()),
                resource: Some(resource.into()),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = api
        .authed(http::post(
            &api.url("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
        ))
        .json(&review)?
        .send()?;
    let review: SelfSubjectAccessReview = ok(r, "asking what the token may do")?.json()?;
    let status = review.status.unwrap_or_default();
    Ok((status.allowed, status.reason.unwrap_or_default()))
}

impl Validator for Kubernetes {
    fn validate(ctx: &Context, _release: Artifact) -> Result<Vec<Finding>, PluginError> {
        let api = Api::new(ctx)?;
        let mut findings = Vec::new();
        let r = match api.get(&api.deployment_path()) {
            Ok(r) => r,
            Err(e) => {
                findings.push(finding(
                    Severity::Error,
                    "api-unreachable",
                    format!("the API server {} did not answer: {e:?}", api.s.api),
                    Some("check `api`, the plugin's allowed_hosts, and its `tls_ca` (the cluster's CA)"),
                ));
                return Ok(findings);
            }
        };
        match r.status {
            401 => {
                findings.push(finding(
                    Severity::Error,
                    "token-invalid",
                    format!("{:?}", api_error(&r, "reading the Deployment")),
                    Some("the bearer token is wrong or expired"),
                ));
                return Ok(findings);
            }
            404 => {
                let ns = api.get(&format!(
                    "/api/v1/namespaces/{}",
                    http::encode(&api.s.namespace)
                ))?;
                let (code, what) = if ns.status == 404 {
                    (
                        "namespace-missing",
                        format!("namespace {} does not exist", api.s.namespace),
                    )
                } else {
                    (
                        "deployment-missing",
                        format!(
                            "Deployment {}/{} does not exist",
                            api.s.namespace, api.s.deployment
                        ),
                    )
                };
                findings.push(finding(
                    Severity::Error,
                    code,
                    what,
                    Some("check `namespace` and `deployment`"),
                ));
                return Ok(findings);
            }
            _ => {}
        }
        if r.status == 403 {
            findings.push(finding(
                Severity::Error,
                "forbidden",
                format!("{:?}", api_error(&r, "reading the Deployment")),
                Some("grant the token `get` on deployments in this namespace"),
            ));
            findings.extend(setup::findings(&api, None)?);
        } else {
            let d: Deployment = ok(r, "reading the Deployment")?.json()?;
            findings.extend(setup::findings(&api, Some(&d))?);
            let missing = missing_containers(&api, &d);
            if !missing.is_empty() {
                findings.push(finding(
                    Severity::Error,
                    "container-missing",
                    format!(
                        "the Deployment has no container {} (it has {})",
                        missing.join(", "),
                        container_names(&d).join(", ")
                    ),
                    Some("fix the names under `containers`"),
                ));
            }
        }
        let (allowed, reason) = may(&api, "patch", "deployments", Some(&api.s.deployment))?;
        if !allowed {
            findings.push(finding(
                Severity::Error,
                "patch-forbidden",
                format!(
                    "the token may not patch deployment {}/{}{}",
                    api.s.namespace,
                    api.s.deployment,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
                Some("grant the token's role `patch` on deployments (apps)"),
            ));
        }
        let (allowed, _) = may(&api, "list", "replicasets", None)?;
        if !allowed {
            findings.push(finding(
                Severity::Warning,
                "rollback-unavailable",
                "the token may not list replicasets, so rollback cannot find earlier releases",
                Some("grant the token's role `list` on replicasets (apps)"),
            ));
        }
        Ok(findings)
    }
}

export!(Kubernetes: deploy_target, validator, traffic);
