//! A Vercel stand-in that follows the REST API's published semantics
//! (`tests/specs/vercel-openapi.json.zst`, a copy of the shared `vercel-openapi.json`; `PLATFORM-FACTS.md` §1):
//!
//! - `POST /v13/deployments` answers `400 missing_files` listing the digests it has not
//!   seen; `POST /v2/files` stores a file only when `x-vercel-digest` is its SHA-1;
//! - a deployment's `readyState` moves QUEUED → INITIALIZING → BUILDING → READY (or ERROR,
//!   for an artifact holding `BUILD_FAIL`), one step per read;
//! - a production deployment goes live at once when the project auto-assigns its domains,
//!   otherwise it is STAGED until promoted (201, or 202 queued: live two reads later);
//! - rollback (`POST /v9/projects/{id}/rollback/{deploymentId}`, the CLI's endpoint, absent
//!   from the public document and added to it here) points production back;
//! - a wrong token is 403 `forbidden`; scripted 429s carry `Retry-After` and `error.limit`;
//! - every deployment is served at `/_sites/<id>/…`, and production at `/_sites/production/…`;
//! - Rolling Releases (config, start on promote, approve, complete, abort by rollback, and
//!   production split by the active stage) are in `vercel_rolling.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use sha1::Digest as _;

use crate::openapi::Spec;
use crate::standin::{Reply, Request, Standin};
use crate::vercel_rolling::{self as rolling, Rolling};

/// The Vercel document, loaded once, plus the CLI's rollback endpoint.
pub fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec = Spec::load("vercel-openapi.json", false);
        // Not in the public document; vercel/vercel packages/cli/src/commands/rollback/
        // request-rollback.ts posts `{}` here (PLATFORM-FACTS.md §1, "Rollback").
        spec.add_operation(
            "/v9/projects/{projectId}/rollback/{deploymentId}",
            "post",
            json!({
                "parameters": [
                    {"name": "projectId", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "deploymentId", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "teamId", "in": "query", "schema": {"type": "string"}},
                    {"name": "slug", "in": "query", "schema": {"type": "string"}},
                ],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": false}}}},
                "security": [{"bearerToken": []}],
            }),
        );
        // The document gives updateRollingReleaseConfig no body; this is what the CLI sends
        // (configure-rolling-release.ts; PLATFORM-FACTS-2.md §1, "The config body").
        let stage = json!({"type": "object", "required": ["targetPercentage"], "additionalProperties": false,
            "properties": {"targetPercentage": {"type": "number"}, "duration": {"type": "number"}}});
        spec.set_request_body(
            "/v1/projects/{idOrName}/rolling-release/config",
            "patch",
            json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["enabled"], "additionalProperties": false,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "advancementType": {"type": "string", "enum": ["automatic", "manual-approval"]},
                    "stages": {"type": "array", "items": stage},
                }}}}}),
        );
        Arc::new(spec)
    })
    .clone()
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub target: Option<String>,
    pub files: Vec<(String, String)>,
    pub meta: Value,
    pub created: u64,
    pub steps: u32,
    pub fails: bool,
}

impl Deployment {
    pub fn ready_state(&self) -> &'static str {
        match self.steps {
            0 => "QUEUED",
            1 => "INITIALIZING",
            2 => "BUILDING",
            _ if self.fails => "ERROR",
            _ => "READY",
        }
    }
}

/// What the stand-in holds and what a test scripts.
#[derive(Debug)]
pub struct State {
    pub token: String,
    pub team: Option<String>,
    pub project_id: String,
    pub project_name: String,
    pub auto_assign: bool,
    pub production: Option<String>,
    pub files: HashMap<String, Vec<u8>>,
    pub deployments: Vec<Deployment>,
    /// The next N API calls are answered 429.
    pub rate_limit: u32,
    /// Every API call hangs.
    pub hang: bool,
    /// Promotions answer 202 and complete after two project reads.
    pub queue_promotions: bool,
    pending_promotion: Option<(String, u32)>,
    pub port: u16,
    pub clock: u64,
    /// Rolling Releases: the config and the latest release.
    pub rr: Rolling,
}

pub struct Vercel {
    pub server: Standin,
    pub state: Arc<Mutex<State>>,
}

pub fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::Json(status, json!({"error": {"code": code, "message": message}}))
}

impl Vercel {
    pub async fn start(token: &str, team: Option<&str>) -> Vercel {
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            team: team.map(str::to_string),
            project_id: "prj_standin1".into(),
            project_name: "web".into(),
            auto_assign: false,
            production: None,
            files: HashMap::new(),
            deployments: Vec::new(),
            rate_limit: 0,
            hang: false,
            queue_promotions: false,
            pending_promotion: None,
            port: 0,
            clock: 1_760_000_000_000,
            rr: Rolling::default(),
        }));
        let s = state.clone();
        let server = Standin::start(
            spec(),
            Some("/_sites/"),
            None,
            Arc::new(move |r: &Request| handle(&mut s.lock().unwrap(), r)),
        )
        .await;
        state.lock().unwrap().port = server.port;
        Vercel { server, state }
    }

    pub fn api(&self) -> String {
        self.server.base()
    }

    /// The `[plugins.vercel]` tables for agent.toml: the first-party plugin on this stand-in,
    /// the token from `VERCEL_TOKEN`, the artifact directory `site` granted as `/artifact`.
    pub fn plugin_table(&self, max_requests: u32) -> String {
        let port = self.server.port;
        let team = self
            .state
            .lock()
            .unwrap()
            .team
            .as_ref()
            .map(|t| format!("team_id = \"{t}\"\n"))
            .unwrap_or_default();
        format!(
            r#"
[plugins.vercel]
path = "{vercel}"
[plugins.vercel.policy]
allowed_hosts = ["127.0.0.1:{port}"]
allow_ip_ranges = ["127.0.0.0/8"]
dirs = [{{ path = "site", guest = "/artifact" }}]
max_requests = {max_requests}
[plugins.vercel.secrets.token]
from = "${{env:VERCEL_TOKEN}}"
hosts = ["127.0.0.1:{port}"]
[plugins.vercel.config]
api = "http://127.0.0.1:{port}"
project = "web"
{team}url_scheme = "http"
"#,
            vercel = crate::fixtures::VERCEL,
        )
    }
}

fn handle(st: &mut State, r: &Request) -> Reply {
    if let Some(rest) = r.path.strip_prefix("/_sites/") {
        return site(st, rest);
    }
    if st.hang {
        return Reply::Hang;
    }
    if st.rate_limit > 0 {
        st.rate_limit -= 1;
        let reset = st.clock / 1000 + 1;
        return Reply::Raw(
            429,
            vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), "1".into()),
            ],
            serde_json::to_vec(
                &json!({"error": {"code": "rate_limited", "message": "Rate limit exceeded",
                "limit": {"remaining": 0, "reset": reset, "resetMs": reset * 1000, "total": 100}}}),
            )
            .unwrap_or_default(),
        );
    }
    if r.header("authorization") != Some(&format!("Bearer {}", st.token)) {
        return error(403, "forbidden", "Not authorized");
    }
    if let Some(team) = r.param("teamId")
        && st.team.as_deref() != Some(team)
    {
        return error(
            403,
            "forbidden",
            "You don't have permission to access this team",
        );
    }
    st.clock += 1000;
    let seg = r.segments();
    match (r.method.as_str(), seg.as_slice()) {
        ("GET", ["v2", "user"]) => Reply::Json(
            200,
            json!({"user": {"id": "usr_1", "username": "ops", "email": "ops@example.com"}}),
        ),
        ("GET", ["v2", "teams", id]) if st.team.as_deref() == Some(*id) => {
            Reply::Json(200, json!({"id": id, "slug": "team", "name": "Team"}))
        }
        ("GET", ["v2", "teams", _]) => error(403, "forbidden", "Not a member of this team"),
        (
            "GET" | "PATCH" | "DELETE" | "POST",
            ["v1", "projects", pid, "rolling-release", rest @ ..],
        ) => rolling::handle(st, r, pid, rest),
        ("POST", ["v2", "files"]) => {
            let digest = r.header("x-vercel-digest").unwrap_or_default().to_string();
            let actual = hex::encode(sha1(&r.body));
            if digest != actual {
                return error(400, "invalid_digest", "The digest does not match the file");
            }
            st.files.insert(digest, r.body.clone());
            Reply::Json(200, json!({}))
        }
        ("POST", ["v13", "deployments"]) => create(st, r),
        ("GET", ["v13", "deployments", id]) => {
            match st.deployments.iter_mut().find(|d| d.id == *id) {
                None => error(404, "not_found", "Deployment not found"),
                Some(d) => {
                    d.steps += 1;
                    let d = d.clone();
                    Reply::Json(200, deployment_json(st, &d))
                }
            }
        }
        ("GET", ["v9", "projects", id]) if *id == st.project_id || *id == st.project_name => {
            if let Some((to, reads)) = st.pending_promotion.take() {
                if reads == 0 {
                    st.production = Some(to);
                } else {
                    st.pending_promotion = Some((to, reads - 1));
                }
            }
            let production = st
                .production
                .as_ref()
                .map(|id| json!({"id": id}))
                .unwrap_or(Value::Null);
            Reply::Json(
                200,
                json!({"id": st.project_id, "name": st.project_name,
                    "autoAssignCustomDomains": st.auto_assign,
                    "rollingRelease": rolling::project_field(st),
                    "targets": {"production": production}}),
            )
        }
        ("GET", ["v9", "projects", _]) => error(404, "not_found", "Project not found"),
        ("POST", ["v10", "projects", pid, "promote", did]) => {
            if *pid != st.project_id {
                return error(404, "not_found", "Project not found");
            }
            match st.deployments.iter().find(|d| d.id == *did) {
                None => error(404, "not_found", "Deployment not found"),
                Some(d) if d.ready_state() != "READY" => error(
                    400,
                    "deployment_not_ready",
                    "The deployment is not ready to be promoted",
                ),
                Some(_) if st.rr.config.is_some() && st.production.is_some() => {
                    rolling::on_promote(st, did).unwrap_or(Reply::Raw(201, vec![], vec![]))
                }
                Some(_) if st.queue_promotions => {
                    st.pending_promotion = Some((did.to_string(), 2));
                    Reply::Raw(202, vec![], vec![])
                }
                Some(_) => {
                    st.production = Some(did.to_string());
                    Reply::Raw(201, vec![], vec![])
                }
            }
        }
        ("POST", ["v9", "projects", pid, "rollback", did]) => {
            if *pid != st.project_id {
                return error(404, "not_found", "Project not found");
            }
            match st.deployments.iter().find(|d| d.id == *did) {
                Some(d) if d.ready_state() == "READY" => {
                    rolling::on_rollback(st);
                    st.production = Some(did.to_string());
                    Reply::Raw(201, vec![], vec![])
                }
                Some(_) => error(
                    400,
                    "deployment_not_ready",
                    "Cannot roll back to this deployment",
                ),
                None => error(404, "not_found", "Deployment not found"),
            }
        }
        ("GET", ["v6", "deployments"]) => {
            let list: Vec<Value> = st
                .deployments
                .iter()
                .rev()
                .filter(|d| r.param("target").is_none_or(|t| d.target.as_deref() == Some(t)))
                .filter(|d| r.param("state").is_none_or(|s| d.ready_state() == s))
                .map(|d| {
                    json!({"uid": d.id, "name": st.project_name, "url": site_host(st, &d.id),
                        "created": d.created, "state": d.ready_state(), "readyState": d.ready_state(),
                        "target": d.target, "meta": d.meta, "projectId": st.project_id})
                })
                .collect();
            Reply::Json(
                200,
                json!({"deployments": list, "pagination": {"count": list.len(), "next": null, "prev": null}}),
            )
        }
        _ => error(404, "not_found", "The requested path was not found"),
    }
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    sha1::Sha1::digest(bytes).to_vec()
}

pub fn site_host(st: &State, id: &str) -> String {
    format!("127.0.0.1:{}/_sites/{id}", st.port)
}

fn deployment_json(st: &State, d: &Deployment) -> Value {
    let ready = d.ready_state();
    let sub = if ready != "READY" {
        Value::Null
    } else if st.production.as_deref() == Some(d.id.as_str()) {
        json!("PROMOTED")
    } else if rolling::is_rolling(st, &d.id) {
        json!("ROLLING")
    } else {
        json!("STAGED")
    };
    let mut v = json!({"id": d.id, "url": site_host(st, &d.id), "name": st.project_name,
        "readyState": ready, "readySubstate": sub, "projectId": st.project_id,
        "target": d.target, "meta": d.meta, "createdAt": d.created, "alias": [], "aliasAssigned": ready == "READY"});
    if ready == "ERROR" {
        v["errorCode"] = json!("BUILD_FAILED");
        v["errorMessage"] = json!("Command \"npm run build\" exited with 1");
    }
    v
}

fn create(st: &mut State, r: &Request) -> Reply {
    let body = r.json();
    let files: Vec<(String, String)> = body["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some((
                f["file"].as_str()?.to_string(),
                f["sha"].as_str()?.to_string(),
            ))
        })
        .collect();
    let missing: Vec<&String> = files
        .iter()
        .map(|(_, sha)| sha)
        .filter(|sha| !st.files.contains_key(*sha))
        .collect();
    if !missing.is_empty() {
        return Reply::Json(
            400,
            json!({"error": {"code": "missing_files", "message": "Missing files", "missing": missing}}),
        );
    }
    let fails = files
        .iter()
        .any(|(_, sha)| st.files[sha].windows(10).any(|w| w == b"BUILD_FAIL"));
    let target = body["target"].as_str().map(str::to_string);
    let id = format!("dpl_{:08x}", st.deployments.len() + 1);
    let d = Deployment {
        id: id.clone(),
        target: target.clone(),
        files,
        meta: body["meta"].clone(),
        created: st.clock,
        steps: 0,
        fails,
    };
    st.deployments.push(d.clone());
    // With auto-assigned domains a production deployment goes live as soon as it is ready.
    if target.as_deref() == Some("production") && st.auto_assign {
        st.production = Some(id);
    }
    Reply::Json(200, deployment_json(st, &d))
}

fn site(st: &mut State, rest: &str) -> Reply {
    let (id, file) = rest.split_once('/').unwrap_or((rest, ""));
    let id = if id == "production" {
        match st.rr.serve(st.production.as_deref()) {
            Some(p) => p,
            None => return Reply::Raw(404, vec![], b"no production deployment".to_vec()),
        }
    } else {
        id.to_string()
    };
    let file = if file.is_empty() { "index.html" } else { file };
    let Some(d) = st
        .deployments
        .iter()
        .find(|d| d.id == id && d.ready_state() == "READY")
    else {
        return Reply::Raw(404, vec![], b"DEPLOYMENT_NOT_FOUND".to_vec());
    };
    match d.files.iter().find(|(name, _)| name == file) {
        Some((_, sha)) => Reply::Raw(
            200,
            vec![("content-type".into(), "text/html".into())],
            st.files[sha].clone(),
        ),
        None => Reply::Raw(404, vec![], b"NOT_FOUND".to_vec()),
    }
}
