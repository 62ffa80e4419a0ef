//! A Kubernetes stand-in for progressive delivery: Deployments (one per release), Services,
//! EndpointSlices and a Gateway API HTTPRoute, plus a gateway that routes real HTTP requests
//! by the route's current weights. Every API request is checked against the core swagger
//! (`kubernetes-v1.36-swagger.json`) and the HTTPRoute CRD's schema
//! (`gateway-api-v1.6.1-httproutes.yaml`, served as the API server serves a CRD: no
//! strategic-merge patches). Semantics follow `PLATFORM-FACTS-2.md` §2:
//!
//! - a Deployment rolls one replica per API read (readiness takes time), an image containing
//!   `broken` never becomes ready;
//! - a Service selects the pods whose labels hold all of its selector; its EndpointSlice
//!   lists them, `ready` as their Deployment's readiness says;
//! - a write to the route's spec bumps `metadata.generation`; the gateway controller writes
//!   `status.parents` (`Accepted`, `ResolvedRefs` at that generation) one read later; a merge
//!   patch carrying a stale `metadata.resourceVersion` is a 409 Conflict;
//! - the gateway picks a backendRef by smooth weighted round-robin over the first rule's
//!   weights (weight / sum; a missing weight is 1), then a ready pod of that Service; a pod
//!   answers with its image; `unhealthy` images fail `/healthz`, `faulty` ones fail every
//!   request but `/healthz` (healthy to a probe, broken to users); a Service without ready
//!   endpoints is 503. `/preview/...` goes straight to
//!   the preview Service (what a verify check reaches);
//! - `/api/v1/query` on the gateway answers as Prometheus would with the share of 5xx among
//!   the last 100 routed requests, the error rate an analysis watches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::kubernetes::status;
use crate::openapi::Spec;
use crate::standin::{Reply, Request, Standin, TestCa};

pub const NAMESPACE: &str = "shop";
pub const CONTROLLER: &str = "example.net/gateway-controller";
const RELEASE: &str = "deploy-agent.dev/release";
const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/httproutes/{name}";

/// The core swagger with the HTTPRoute CRD added as the API server serves it.
pub fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut s = Spec::load("kubernetes-v1.36-swagger.json", true);
        s.add_crd(ROUTE, "gateway-api-v1.6.1-httproutes.yaml", "v1");
        Arc::new(s)
    })
    .clone()
}

/// One request the gateway routed.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The preview's share (percent) of the route when the request came.
    pub weight: u8,
    /// The Service it went to.
    pub service: String,
    /// The image of the pod that answered (empty when none could).
    pub image: String,
    pub status: u16,
    /// When.
    pub at: std::time::Instant,
}

#[derive(Debug)]
pub struct State {
    pub token: String,
    pub deployments: BTreeMap<String, Value>,
    pub services: BTreeMap<String, Value>,
    pub route: Value,
    /// The next N route writes are answered 409 (a concurrent writer).
    pub route_conflicts: u32,
    /// Every weight the route's preview backend was given, in order.
    pub weights: Vec<u8>,
    /// The same, with when each was written.
    pub weight_log: Vec<(std::time::Instant, u8)>,
    /// Every error rate `/api/v1/query` answered, with when.
    pub queries: Vec<(std::time::Instant, f64)>,
    /// What changed, in order, and when: `select SERVICE RELEASE`, `scale DEPLOYMENT N`,
    /// `create NAME`.
    pub log: Vec<(std::time::Instant, String)>,
    pub routed: Vec<Routed>,
    route_unobserved: bool,
    version: u64,
    clock: u64,
    wrr: BTreeMap<String, i64>,
    rr: u64,
}

pub struct Cluster {
    pub api: Standin,
    pub gateway: Standin,
    pub state: Arc<Mutex<State>>,
    pub ca_pem: String,
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn matches(labels: &Value, selector: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
}

impl State {
    fn tick(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn stamp(&mut self) -> String {
        self.clock += 1;
        let s = self.clock;
        format!("2026-12-07T10:{:02}:{:02}Z", (s / 60) % 60, s % 60)
    }

    /// One controller step for every Deployment: observe, then one replica closer.
    fn reconcile(&mut self) {
        for d in self.deployments.values_mut() {
            let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
            let broken = d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .contains("broken");
            let st = &mut d["status"];
            let mut ready = st["readyReplicas"].as_i64().unwrap_or(0);
            if ready < want && !broken {
                ready += 1;
            } else if ready > want {
                ready = want;
            }
            let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
            d["status"] = json!({"observedGeneration": generation, "replicas": want, "updatedReplicas": want,
                "readyReplicas": ready, "availableReplicas": ready,
                "conditions": [{"type": "Progressing", "status": "True",
                    "reason": if ready == want { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                    "message": "progressing"}]});
        }
        // The gateway controller reports on the route one read after it changed.
        if self.route_unobserved {
            self.route_unobserved = false;
        } else {
            let generation = self.route["metadata"]["generation"].clone();
            let resolved = self.route["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten())
                .all(|b| {
                    self.services
                        .contains_key(b["name"].as_str().unwrap_or_default())
                });
            let cond = |t: &str, ok: bool, reason: &str| {
                json!({"type": t, "status": if ok { "True" } else { "False" }, "reason": reason,
                    "message": "", "observedGeneration": generation,
                    "lastTransitionTime": "2026-12-07T10:00:00Z"})
            };
            self.route["status"] = json!({"parents": [{
                "parentRef": {"name": "gw"}, "controllerName": CONTROLLER,
                "conditions": [cond("Accepted", true, "Accepted"),
                    cond("ResolvedRefs", resolved, if resolved { "ResolvedRefs" } else { "BackendNotFound" })],
            }]});
        }
    }

    /// The pods behind a Service: (image, ready) for each.
    fn pods(&self, service: &str) -> Vec<(String, bool)> {
        let Some(svc) = self.services.get(service) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for d in self.deployments.values() {
            if !matches(
                &d["spec"]["template"]["metadata"]["labels"],
                &svc["spec"]["selector"],
            ) {
                continue;
            }
            let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ready = d["status"]["readyReplicas"].as_i64().unwrap_or(0);
            for i in 0..d["spec"]["replicas"].as_i64().unwrap_or(0) {
                out.push((image.clone(), i < ready));
            }
        }
        out
    }

    /// The preview backend's share of the first rule, in percent.
    pub fn preview_weight(&self) -> u8 {
        let refs = self.route["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let w = |name: &str| {
            refs.iter()
                .find(|b| b["name"] == name)
                .map_or(0, |b| b["weight"].as_i64().unwrap_or(1))
        };
        let (a, p) = (w("web"), w("web-preview"));
        if a + p == 0 {
            0
        } else {
            ((p * 100 + (a + p) / 2) / (a + p)) as u8
        }
    }

    /// The release a Service selects.
    pub fn selected(&self, service: &str) -> Option<String> {
        self.services.get(service)?["spec"]["selector"][RELEASE]
            .as_str()
            .map(str::to_string)
    }

    /// A Deployment's replica count.
    pub fn replicas(&self, name: &str) -> Option<i64> {
        self.deployments.get(name)?["spec"]["replicas"].as_i64()
    }

    fn serve(&mut self, service: &str, path: &str) -> (u16, String) {
        let ready: Vec<String> = self
            .pods(service)
            .into_iter()
            .filter(|(_, r)| *r)
            .map(|(i, _)| i)
            .collect();
        if ready.is_empty() {
            return (503, String::new());
        }
        self.rr += 1;
        let image = ready[(self.rr as usize) % ready.len()].clone();
        let failing = (image.contains("unhealthy") && path.ends_with("/healthz"))
            || (image.contains("faulty") && !path.ends_with("/healthz"));
        (if failing { 500 } else { 200 }, image)
    }

    /// Smooth weighted round-robin over the first rule's backendRefs (nginx's algorithm).
    fn pick(&mut self) -> Option<String> {
        let refs: Vec<(String, i64)> = self.route["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    b["name"].as_str().unwrap_or_default().to_string(),
                    b["weight"].as_i64().unwrap_or(1),
                )
            })
            .filter(|(_, w)| *w > 0)
            .collect();
        let total: i64 = refs.iter().map(|(_, w)| w).sum();
        let mut best: Option<(String, i64)> = None;
        for (name, w) in &refs {
            let c = self.wrr.entry(name.clone()).or_insert(0);
            *c += w;
            if best.as_ref().is_none_or(|(_, b)| *c > *b) {
                best = Some((name.clone(), *c));
            }
        }
        let (name, _) = best?;
        *self.wrr.get_mut(&name).expect("picked") -= total;
        Some(name)
    }
}

fn handle(st: &mut State, r: &Request) -> Reply {
    if r.header("authorization") != Some(&format!("Bearer {}", st.token)) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    st.reconcile();
    let seg = r.segments();
    match (r.method.as_str(), seg.as_slice()) {
        ("GET", ["apis", "apps", "v1", "namespaces", NAMESPACE, "deployments"]) => {
            let sel = r.param("labelSelector").unwrap_or_default();
            let items: Vec<Value> = st
                .deployments
                .values()
                .filter(|d| {
                    sel.split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .all(|(k, v)| d["metadata"]["labels"][k] == v)
                })
                .cloned()
                .collect();
            Reply::Json(
                200,
                json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": items}),
            )
        }
        (
            "GET",
            [
                "apis",
                "apps",
                "v1",
                "namespaces",
                NAMESPACE,
                "deployments",
                name,
            ],
        ) => match st.deployments.get(*name) {
            Some(d) => Reply::Json(200, d.clone()),
            None => status(
                404,
                "NotFound",
                &format!("deployments.apps \"{name}\" not found"),
            ),
        },
        ("POST", ["apis", "apps", "v1", "namespaces", NAMESPACE, "deployments"]) => {
            let mut d = r.json();
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if st.deployments.contains_key(&name) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("deployments.apps \"{name}\" already exists"),
                );
            }
            let rv = st.tick();
            let created = st.stamp();
            d["apiVersion"] = json!("apps/v1");
            d["kind"] = json!("Deployment");
            d["metadata"]["uid"] = json!(format!("uid-{rv}"));
            d["metadata"]["generation"] = json!(1);
            d["metadata"]["resourceVersion"] = json!(rv.to_string());
            d["metadata"]["creationTimestamp"] = json!(created);
            d["status"] = json!({"readyReplicas": 0});
            st.log
                .push((std::time::Instant::now(), format!("create {name}")));
            st.deployments.insert(name, d.clone());
            Reply::Json(201, d)
        }
        (
            "PATCH",
            [
                "apis",
                "apps",
                "v1",
                "namespaces",
                NAMESPACE,
                "deployments",
                name,
            ],
        ) => {
            if r.header("content-type") != Some("application/merge-patch+json") {
                return status(
                    415,
                    "UnsupportedMediaType",
                    "this stand-in takes merge patches for Deployments here",
                );
            }
            let rv = st.tick();
            let Some(d) = st.deployments.get_mut(*name) else {
                return status(
                    404,
                    "NotFound",
                    &format!("deployments.apps \"{name}\" not found"),
                );
            };
            let before = d["spec"].clone();
            merge_patch(d, &r.json());
            if d["spec"] != before {
                let g = d["metadata"]["generation"].as_i64().unwrap_or(1);
                d["metadata"]["generation"] = json!(g + 1);
            }
            d["metadata"]["resourceVersion"] = json!(rv.to_string());
            let out = d.clone();
            if let Some(n) = r.json()["spec"]["replicas"].as_i64() {
                st.log
                    .push((std::time::Instant::now(), format!("scale {name} {n}")));
            }
            Reply::Json(200, out)
        }
        // The token is the cluster's deployer: its Role allows everything in the namespace.
        (
            "POST",
            [
                "apis",
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
            ],
        ) => {
            let mut review = r.json();
            let allowed = review["spec"]["resourceAttributes"]["namespace"] == NAMESPACE;
            review["status"] = json!({"allowed": allowed});
            Reply::Json(201, review)
        }
        ("GET", ["api", "v1", "namespaces", NAMESPACE, "services", name]) => {
            match st.services.get(*name) {
                Some(s) => Reply::Json(200, s.clone()),
                None => status(404, "NotFound", &format!("services \"{name}\" not found")),
            }
        }
        ("PATCH", ["api", "v1", "namespaces", NAMESPACE, "services", name]) => {
            let rv = st.tick();
            let Some(s) = st.services.get_mut(*name) else {
                return status(404, "NotFound", &format!("services \"{name}\" not found"));
            };
            merge_patch(s, &r.json());
            s["metadata"]["resourceVersion"] = json!(rv.to_string());
            let out = s.clone();
            let release = out["spec"]["selector"][RELEASE]
                .as_str()
                .unwrap_or("")
                .to_string();
            st.log.push((
                std::time::Instant::now(),
                format!("select {name} {release}"),
            ));
            Reply::Json(200, out)
        }
        (
            "GET",
            [
                "apis",
                "discovery.k8s.io",
                "v1",
                "namespaces",
                NAMESPACE,
                "endpointslices",
            ],
        ) => {
            let service = r
                .param("labelSelector")
                .and_then(|s| s.strip_prefix("kubernetes.io/service-name="))
                .unwrap_or_default()
                .to_string();
            let endpoints: Vec<Value> = st
                .pods(&service)
                .iter()
                .enumerate()
                .map(|(i, (_, ready))| {
                    json!({"addresses": [format!("10.1.0.{}", i + 1)], "conditions": {"ready": ready}})
                })
                .collect();
            let items = if st.services.contains_key(&service) {
                vec![
                    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{service}-abc12"), "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
                ]
            } else {
                Vec::new()
            };
            Reply::Json(
                200,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {}, "items": items}),
            )
        }
        (
            "GET",
            [
                "apis",
                "gateway.networking.k8s.io",
                "v1",
                "namespaces",
                NAMESPACE,
                "httproutes",
                "web",
            ],
        ) => Reply::Json(200, st.route.clone()),
        (
            "PATCH",
            [
                "apis",
                "gateway.networking.k8s.io",
                "v1",
                "namespaces",
                NAMESPACE,
                "httproutes",
                "web",
            ],
        ) => {
            let ct = r.header("content-type").unwrap_or_default();
            if ct != "application/merge-patch+json" {
                return status(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                );
            }
            let patch = r.json();
            let current = st.route["metadata"]["resourceVersion"].clone();
            let stale = patch["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|v| current != v);
            if stale || st.route_conflicts > 0 {
                st.route_conflicts = st.route_conflicts.saturating_sub(1);
                return status(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled on httproutes.gateway.networking.k8s.io \"web\": the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let before = st.route["spec"].clone();
            let mut patch = patch;
            if let Some(m) = patch["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            // The status subresource: a main-resource patch cannot change it.
            if let Some(p) = patch.as_object_mut() {
                p.remove("status");
            }
            merge_patch(&mut st.route, &patch);
            let rv = st.tick();
            st.route["metadata"]["resourceVersion"] = json!(rv.to_string());
            if st.route["spec"] != before {
                let g = st.route["metadata"]["generation"].as_i64().unwrap_or(1);
                st.route["metadata"]["generation"] = json!(g + 1);
                st.route_unobserved = true;
                let w = st.preview_weight();
                st.weights.push(w);
                st.weight_log.push((std::time::Instant::now(), w));
            }
            Reply::Json(200, st.route.clone())
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn gateway(st: &mut State, r: &Request) -> Reply {
    st.reconcile();
    if r.path == "/api/v1/query" {
        let recent: Vec<&Routed> = st.routed.iter().rev().take(100).collect();
        let result = if recent.is_empty() {
            json!([])
        } else {
            let errors = recent.iter().filter(|x| x.status >= 500).count();
            let rate = errors as f64 / recent.len() as f64;
            st.queries.push((std::time::Instant::now(), rate));
            json!([{"metric": {}, "value": [1_765_000_000.0, format!("{rate}")]}])
        };
        return Reply::Json(
            200,
            json!({"status": "success", "data": {"resultType": "vector", "result": result}}),
        );
    }
    let (service, path) = match r.path.strip_prefix("/preview") {
        Some(rest) => ("web-preview".to_string(), rest.to_string()),
        None => match st.pick() {
            Some(s) => (s, r.path.clone()),
            None => return Reply::Raw(500, vec![], b"no backend has weight".to_vec()),
        },
    };
    let (code, image) = st.serve(&service, &path);
    if !r.path.starts_with("/preview") {
        let weight = st.preview_weight();
        st.routed.push(Routed {
            weight,
            service,
            image: image.clone(),
            status: code,
            at: std::time::Instant::now(),
        });
    }
    Reply::Raw(
        code,
        vec![("content-type".into(), "text/plain".into())],
        image.into_bytes(),
    )
}

impl Cluster {
    /// `shop/web` (the template Deployment, pinned to release `initial`, running `web:v0`
    /// with 2 replicas), the Services `web` and `web-preview` selecting it, and the HTTPRoute
    /// `web` sending everything to `web`.
    pub async fn start(token: &str) -> Cluster {
        Cluster::start_with(token, true).await
    }

    /// The same cluster with its API on plain HTTP (for the conformance kit's upstream).
    pub async fn start_plain(token: &str) -> Cluster {
        Cluster::start_with(token, false).await
    }

    async fn start_with(token: &str, tls: bool) -> Cluster {
        let ca = TestCa::new();
        let labels = json!({"app": "web", RELEASE: "initial"});
        let web = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NAMESPACE, "uid": "uid-web", "generation": 1,
                "resourceVersion": "1", "labels": {"app": "web"},
                "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "registry.example.com/web:v0"}]}}},
            "status": {"readyReplicas": 2}
        });
        let service = |name: &str| {
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": "1"},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}})
        };
        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": NAMESPACE, "generation": 1, "resourceVersion": "1"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": "web", "port": 80, "weight": 100},
                    {"name": "web-preview", "port": 80, "weight": 0}]}]},
        });
        let mut st = State {
            token: token.into(),
            deployments: BTreeMap::from([("web".to_string(), web)]),
            services: BTreeMap::from([
                ("web".to_string(), service("web")),
                ("web-preview".to_string(), service("web-preview")),
            ]),
            route,
            route_conflicts: 0,
            weights: Vec::new(),
            weight_log: Vec::new(),
            queries: Vec::new(),
            log: Vec::new(),
            routed: Vec::new(),
            route_unobserved: false,
            version: 10,
            clock: 0,
            wrr: BTreeMap::new(),
            rr: 0,
        };
        st.reconcile();
        let state = Arc::new(Mutex::new(st));
        let (a, g) = (state.clone(), state.clone());
        let api = Standin::start(
            spec(),
            None,
            tls.then(|| ca.server.clone()),
            Arc::new(move |r: &Request| handle(&mut a.lock().unwrap(), r)),
        )
        .await;
        let gateway = Standin::start(
            spec(),
            Some("/"),
            None,
            Arc::new(move |r: &Request| gateway(&mut g.lock().unwrap(), r)),
        )
        .await;
        Cluster {
            api,
            gateway,
            state,
            ca_pem: ca.ca_pem,
        }
    }

    /// The plugin and `prod` environment tables for agent.toml: the Kubernetes target on
    /// this cluster (its CA in `cluster-ca.pem` beside agent.toml, the token in `K8S_TOKEN`),
    /// with `deploy` as the environment's deploy keys, a health check on the staged release
    /// and an analysis of the gateway's error rate (at most 20 %). `route`: canary by the
    /// HTTPRoute.
    pub fn agent_toml(&self, deploy: &str, route: bool) -> String {
        let (kport, gport) = (self.api.port, self.gateway.port);
        let route = if route {
            format!("route = {{ name = \"web\", controller = \"{CONTROLLER}\" }}")
        } else {
            String::new()
        };
        format!(
            r#"
[plugins.kubernetes]
path = "{k8s}"
[plugins.kubernetes.policy]
allowed_hosts = ["127.0.0.1:{kport}"]
allow_ip_ranges = ["127.0.0.0/8"]
tls_ca = ["cluster-ca.pem"]
max_requests = 500
[plugins.kubernetes.secrets.token]
from = "${{env:K8S_TOKEN}}"
hosts = ["127.0.0.1:{kport}"]
[plugins.kubernetes.config]
api = "https://127.0.0.1:{kport}"
namespace = "shop"
deployment = "web"
containers = {{ web = "registry.example.com/web:{{version}}" }}
services = {{ active = "web", preview = "web-preview" }}
url = "http://127.0.0.1:{gport}"
preview_url = "http://127.0.0.1:{gport}/preview"
{route}

[environments.prod]
[environments.prod.target]
plugin = "kubernetes"
[environments.prod.deploy]
timeout_ms = 60000
{deploy}
[[environments.prod.checks]]
name = "the staged release is healthy"
http = "{{url}}/healthz"
[[environments.prod.analysis]]
name = "error rate"
prometheus = "http://127.0.0.1:{gport}"
query = "sum(rate(http_requests_total{{code=~\"5..\"}}[1m])) / sum(rate(http_requests_total[1m]))"
max = 0.2
interval_ms = 100
count = 4
"#,
            k8s = crate::fixtures::KUBERNETES,
        )
    }

    /// Users: requests through the gateway one after another (2 ms apart) until the guard
    /// is dropped.
    pub fn users(&self) -> Users {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, url) = (
            stop.clone(),
            format!("http://127.0.0.1:{}/", self.gateway.port),
        );
        tokio::spawn(async move {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                crate::standin::fetch(&url).await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        Users(stop)
    }

    /// When the log first has `entry`.
    pub fn logged(&self, entry: &str) -> Option<std::time::Instant> {
        let st = self.state.lock().unwrap();
        st.log.iter().find(|(_, e)| e == entry).map(|(t, _)| *t)
    }

    /// The split the gateway made while the preview had `weight` percent: (requests, share
    /// answered by `image`).
    pub fn split_at(&self, weight: u8, image: &str) -> (usize, f64) {
        let st = self.state.lock().unwrap();
        let at: Vec<&Routed> = st.routed.iter().filter(|r| r.weight == weight).collect();
        let hits = at.iter().filter(|r| r.image.ends_with(image)).count();
        (at.len(), hits as f64 / at.len().max(1) as f64)
    }
}

/// Simulated users; they stop when dropped.
pub struct Users(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Users {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
