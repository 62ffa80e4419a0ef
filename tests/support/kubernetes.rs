//! A Kubernetes API stand-in for one Deployment, over TLS with its own CA, following the
//! published semantics (`tests/specs/kubernetes-v1.36-swagger.json.zst`, a copy of the shared document;
//! `PLATFORM-FACTS.md` §2):
//!
//! - PATCH takes strategic-merge patches (containers and env merged by `name`) and JSON
//!   patches; a spec change bumps `metadata.generation`;
//! - a controller step runs on every read: it first observes the new generation (creating
//!   the ReplicaSet for a new template, or re-using the one whose template matches and giving
//!   it the next revision, as the deployment controller does), then rolls one replica per
//!   read: updated, old ones terminated, available;
//! - an image containing `broken` never becomes available, and after three reads the
//!   `Progressing` condition turns to `ProgressDeadlineExceeded`;
//! - a wrong token is 401, a token without rights is refused by SelfSubjectAccessReview,
//!   scripted 409 conflicts come back as `Status` objects;
//! - one ReplicaSet with the Deployment's labels but another owner sits in the namespace,
//!   as a stray copy would, so owner filtering is exercised.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::openapi::Spec;
use crate::standin::{Reply, Request, Standin, TestCa};

pub fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| Arc::new(Spec::load("kubernetes-v1.36-swagger.json", true)))
        .clone()
}

pub const NAMESPACE: &str = "shop";
pub const NAME: &str = "web";
const UID: &str = "0b8f8a2e-6a43-4d4f-9a57-3c1d8d0f0001";

#[derive(Debug)]
pub struct State {
    pub token: String,
    /// A token that authenticates but may not patch.
    pub read_only_token: String,
    pub deployment: Value,
    pub replica_sets: Vec<Value>,
    /// The next N PATCHes are answered 409 Conflict.
    pub conflicts: u32,
    pub hang: bool,
    /// A patch was just accepted: the next read still shows the old observedGeneration.
    unobserved: bool,
    stuck_reads: u32,
    clock: u64,
}

pub struct Kubernetes {
    pub server: Standin,
    pub state: Arc<Mutex<State>>,
    pub ca_pem: String,
}

/// A `Status` failure, as the API server answers one.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::Json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
    )
}

impl Kubernetes {
    /// A cluster with `shop/web` at revision 1 running `registry.example.com/web:v0`, two replicas.
    pub async fn start(token: &str) -> Kubernetes {
        Kubernetes::start_with(token, true).await
    }

    /// The same cluster over plain HTTP (behind the conformance kit's forwarding stand-in).
    pub async fn start_plain(token: &str) -> Kubernetes {
        Kubernetes::start_with(token, false).await
    }

    async fn start_with(token: &str, tls: bool) -> Kubernetes {
        let ca = TestCa::new();
        let template = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [
                {"name": "web", "image": "registry.example.com/web:v0", "ports": [{"containerPort": 8080}]},
                {"name": "log-shipper", "image": "registry.example.com/shipper:3"}
            ]}
        });
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": 1,
                "resourceVersion": "1", "labels": {"app": "web"},
                "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "progressDeadlineSeconds": 600, "revisionHistoryLimit": 10, "template": template},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                "readyReplicas": 2, "availableReplicas": 2,
                "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                    "message": "ReplicaSet has successfully progressed."}]}
        });
        let mut st = State {
            token: token.into(),
            read_only_token: format!("{token}-read-only"),
            deployment,
            replica_sets: Vec::new(),
            conflicts: 0,
            hang: false,
            unobserved: false,
            stuck_reads: 0,
            clock: 0,
        };
        let first = replica_set(&mut st, &template, 1, UID);
        st.replica_sets.push(first);
        let stray = replica_set(
            &mut st,
            &template,
            7,
            "ffffffff-0000-0000-0000-00000000dead",
        );
        st.replica_sets.push(stray);
        let state = Arc::new(Mutex::new(st));
        let s = state.clone();
        let server = Standin::start(
            spec(),
            None,
            tls.then(|| ca.server.clone()),
            Arc::new(move |r: &Request| handle(&mut s.lock().unwrap(), r)),
        )
        .await;
        Kubernetes {
            server,
            state,
            ca_pem: ca.ca_pem,
        }
    }

    pub fn api(&self) -> String {
        self.server.base()
    }

    /// The images the Deployment's template runs now.
    pub fn images(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["image"].as_str().map(str::to_string))
            .collect()
    }

    pub fn revision(&self) -> String {
        let st = self.state.lock().unwrap();
        st.deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove("pod-template-hash");
    }
    t
}

fn hash(template: &Value) -> String {
    let bytes = serde_json::to_vec(&without_hash(template)).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))[..10].to_string()
}

fn replica_set(st: &mut State, template: &Value, revision: u64, owner: &str) -> Value {
    st.clock += 1;
    let h = hash(template);
    let mut t = without_hash(template);
    t["metadata"]["labels"]["pod-template-hash"] = json!(h);
    let mut annotations = st.deployment["metadata"]["annotations"].clone();
    annotations["deployment.kubernetes.io/revision"] = json!(revision.to_string());
    json!({
        "metadata": {"name": format!("{NAME}-{h}"), "namespace": NAMESPACE,
            "uid": format!("rs-{h}-{owner}"),
            "labels": t["metadata"]["labels"].clone(),
            "annotations": annotations,
            "creationTimestamp": format!("2026-11-21T10:{:02}:{:02}Z", st.clock / 60 % 60, st.clock % 60),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME,
                "uid": owner, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": t["metadata"]["labels"].clone()}, "template": t},
        "status": {"replicas": 0}
    })
}

fn owned(rs: &Value) -> bool {
    rs["metadata"]["ownerReferences"][0]["uid"] == UID
}

fn max_revision(st: &State) -> u64 {
    st.replica_sets
        .iter()
        .filter(|rs| owned(rs))
        .filter_map(|rs| {
            rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                .as_str()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// One step of the deployment controller.
fn reconcile(st: &mut State) {
    let generation = st.deployment["metadata"]["generation"]
        .as_u64()
        .unwrap_or(1);
    let observed = st.deployment["status"]["observedGeneration"]
        .as_u64()
        .unwrap_or(0);
    let desired = st.deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    let template = st.deployment["spec"]["template"].clone();
    if observed < generation {
        if std::mem::take(&mut st.unobserved) {
            return;
        }
        let next = max_revision(st) + 1;
        let want = without_hash(&template);
        match st
            .replica_sets
            .iter_mut()
            .find(|rs| owned(rs) && without_hash(&rs["spec"]["template"]) == want)
        {
            Some(rs) => {
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                    json!(next.to_string());
            }
            None => {
                let rs = replica_set(st, &template, next, UID);
                st.replica_sets.push(rs);
            }
        }
        let s = &mut st.deployment["status"];
        s["observedGeneration"] = json!(generation);
        s["updatedReplicas"] = json!(0);
        s["replicas"] = json!(desired);
        s["availableReplicas"] = json!(desired);
        s["conditions"] = json!([{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
            "message": format!("ReplicaSet \"{NAME}-{}\" is progressing.", hash(&template))}]);
        st.deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
            json!(next.to_string());
        st.stuck_reads = 0;
        return;
    }
    let broken = template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["image"].as_str().is_some_and(|i| i.contains("broken")));
    let s = &mut st.deployment["status"];
    let updated = s["updatedReplicas"].as_u64().unwrap_or(0);
    let replicas = s["replicas"].as_u64().unwrap_or(0);
    let available = s["availableReplicas"].as_u64().unwrap_or(0);
    if broken {
        // The new pods never become ready; the surge pod stays, the deadline passes.
        s["updatedReplicas"] = json!(1);
        s["replicas"] = json!(desired + 1);
        s["availableReplicas"] = json!(desired.saturating_sub(0));
        s["unavailableReplicas"] = json!(1);
        st.stuck_reads += 1;
        if st.stuck_reads >= 3 {
            st.deployment["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet \"{NAME}-{}\" has timed out progressing.", hash(&template))}]);
        }
        return;
    }
    if updated < desired {
        s["updatedReplicas"] = json!(updated + 1);
        s["replicas"] = json!(desired + 1);
        s["availableReplicas"] = json!(updated);
    } else if replicas > updated {
        s["replicas"] = json!(updated);
    } else if available < updated {
        s["availableReplicas"] = json!(updated);
        s["unavailableReplicas"] = json!(0);
        s["conditions"] = json!([{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
            "message": format!("ReplicaSet \"{NAME}-{}\" has successfully progressed.", hash(&template))}]);
    }
}

/// Strategic merge: maps merge, `null` deletes, lists of named things merge by `name`.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) else {
        *target = patch.clone();
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let merge_by_name = matches!(
            k.as_str(),
            "containers" | "initContainers" | "env" | "volumes"
        );
        match (t.get_mut(k), v) {
            (Some(existing), Value::Object(_)) if existing.is_object() => {
                strategic_merge(existing, v)
            }
            (Some(Value::Array(items)), Value::Array(patches)) if merge_by_name => {
                for p in patches {
                    match items.iter_mut().find(|i| i["name"] == p["name"]) {
                        Some(item) => strategic_merge(item, p),
                        None => items.push(p.clone()),
                    }
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or("");
        let (parent, key) = path.rsplit_once('/').ok_or("bad path")?;
        let parent = target.pointer_mut(parent).ok_or(format!("no {parent}"))?;
        match op["op"].as_str() {
            Some("replace") | Some("add") => {
                parent[key.replace("~1", "/").replace("~0", "~")] = op["value"].clone();
            }
            Some("remove") => {
                parent.as_object_mut().map(|o| o.remove(key));
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn handle(st: &mut State, r: &Request) -> Reply {
    if st.hang {
        return Reply::Hang;
    }
    let auth = r.header("authorization").unwrap_or_default();
    let full = auth == format!("Bearer {}", st.token);
    let read_only = auth == format!("Bearer {}", st.read_only_token);
    if !full && !read_only {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let seg = r.segments();
    match (r.method.as_str(), seg.as_slice()) {
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
            if *ns != NAMESPACE || *name != NAME {
                return status(
                    404,
                    "NotFound",
                    &format!("deployments.apps \"{name}\" not found"),
                );
            }
            reconcile(st);
            Reply::Json(200, st.deployment.clone())
        }
        ("PATCH", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
            if *ns != NAMESPACE || *name != NAME {
                return status(
                    404,
                    "NotFound",
                    &format!("deployments.apps \"{name}\" not found"),
                );
            }
            if read_only {
                return status(
                    403,
                    "Forbidden",
                    &format!(
                        "deployments.apps \"{NAME}\" is forbidden: User \"system:serviceaccount:{NAMESPACE}:viewer\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"{NAMESPACE}\""
                    ),
                );
            }
            if st.conflicts > 0 {
                st.conflicts -= 1;
                return status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on deployments.apps \"{NAME}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            let before = st.deployment["spec"].clone();
            let ct = r.header("content-type").unwrap_or_default();
            let patch = r.json();
            if ct.starts_with("application/json-patch+json") {
                if let Err(e) = json_patch(&mut st.deployment, &patch) {
                    return status(422, "Invalid", &e);
                }
            } else if ct.starts_with("application/strategic-merge-patch+json") {
                strategic_merge(&mut st.deployment, &patch);
            } else {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct})"
                    ),
                );
            }
            if st.deployment["spec"] != before {
                let g = st.deployment["metadata"]["generation"]
                    .as_u64()
                    .unwrap_or(1);
                st.deployment["metadata"]["generation"] = json!(g + 1);
                st.unobserved = true;
            }
            Reply::Json(200, st.deployment.clone())
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "replicasets"]) => {
            let selector = r.param("labelSelector").unwrap_or_default();
            let wanted: Vec<(&str, &str)> = selector
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let items: Vec<Value> = st
                .replica_sets
                .iter()
                .filter(|_| *ns == NAMESPACE)
                .filter(|rs| {
                    wanted
                        .iter()
                        .all(|(k, v)| rs["metadata"]["labels"][*k] == *v)
                })
                .cloned()
                .collect();
            Reply::Json(
                200,
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {"resourceVersion": "100"}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns]) if *ns == NAMESPACE => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}}),
        ),
        ("GET", ["api", "v1", "namespaces", ns]) => {
            status(404, "NotFound", &format!("namespaces \"{ns}\" not found"))
        }
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
            let attrs = &review["spec"]["resourceAttributes"];
            let allowed = full && attrs["namespace"] == NAMESPACE;
            review["status"] = if allowed {
                json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"deployer\""})
            } else {
                json!({"allowed": false})
            };
            Reply::Json(201, review)
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}
