//! The Vercel deploy target and validator.
//!
//! A release is a Vercel deployment of a directory artifact, made the way the Vercel CLI
//! makes one:
//!
//! 1. every file's SHA-1 is computed, and `POST /v13/deployments` names the files by digest;
//! 2. the API answers `400 missing_files` with the digests it has not seen; those files are
//!    uploaded (`POST /v2/files`, `x-vercel-digest`) and the deployment is posted again;
//! 3. the host polls `GET /v13/deployments/{id}` (`readyState`) on its own schedule;
//! 4. `promote` calls `POST /v10/projects/{projectId}/promote/{id}` (201, or 202 when queued);
//!    the release is live once the project's production target points at it;
//! 5. `rollback` calls `POST /v9/projects/{projectId}/rollback/{id}` (the CLI's endpoint;
//!    it is not in the public OpenAPI document).
//!
//! A canary goes through Vercel Rolling Releases (`rolling.rs`); blue-green is the staged
//! deployment verified on its own URL, then promoted.
//!
//! For a staged production release (built, verified, then promoted) the project must have
//! *auto-assign custom production domains* turned off; the validator warns when it is on.
//!
//! The token is a secret by reference (`token`): the plugin never sees it. The API base URL,
//! the team and the project come from the plugin's config.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use deploy_agent_sdk::http::{self, RequestBuilder, Response};
use deploy_agent_sdk::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

mod rolling;

/// The plugin.
pub struct Vercel;

/// Most files one deployment may name (Vercel's own limit is far above a static site's).
const MAX_FILES: usize = 15_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The project's id or name.
    project: String,
    /// The team that owns the project (`teamId`), if any.
    #[serde(default)]
    team_id: Option<String>,
    /// `production` (the default), `preview`, `staging` or a custom environment's id.
    #[serde(default = "default_target")]
    target: String,
    /// The API's base URL.
    #[serde(default = "default_api")]
    api: String,
    /// The scheme put in front of a deployment's host name to make its URL.
    #[serde(default = "default_scheme")]
    url_scheme: String,
    /// The name of the granted secret that holds the API token.
    #[serde(default = "default_token")]
    token_secret: String,
}

fn default_target() -> String {
    "production".into()
}
fn default_api() -> String {
    "https://api.vercel.com".into()
}
fn default_scheme() -> String {
    "https".into()
}
fn default_token() -> String {
    "token".into()
}

/// One API session: settings plus the token reference.
struct Api {
    s: Settings,
    token: SecretRef,
}

impl Api {
    fn new(ctx: &Context) -> Result<Api, PluginError> {
        let s: Settings = ctx.config()?;
        if s.project.trim().is_empty() {
            return Err(invalid_config("`project` is empty"));
        }
        let token = ctx.secret(&s.token_secret)?;
        Ok(Api { s, token })
    }

    /// `path` under the API base, with `teamId` added when configured.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        self.url_in(path, query, true)
    }

    /// `path` under the API base; `scoped` adds `teamId` (the user and team endpoints take none).
    fn url_in(&self, path: &str, query: &[(&str, &str)], scoped: bool) -> String {
        let mut url = format!("{}{path}", self.s.api.trim_end_matches('/'));
        let mut sep = '?';
        let team = self
            .s
            .team_id
            .as_deref()
            .filter(|_| scoped)
            .map(|t| ("teamId", t));
        for (k, v) in query.iter().copied().chain(team) {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&http::encode(v));
            sep = '&';
        }
        url
    }

    fn authed(&self, req: RequestBuilder) -> RequestBuilder {
        req.header("authorization", self.token.bearer())
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Response, PluginError> {
        self.authed(http::get(&self.url(path, query))).send()
    }

    fn post_json(&self, path: &str, body: &Value) -> Result<Response, PluginError> {
        self.authed(http::post(&self.url(path, &[])))
            .json(body)?
            .send()
    }

    fn deployment_url(&self, host: &str) -> String {
        if host.contains("://") {
            host.to_string()
        } else {
            format!("{}://{host}", self.s.url_scheme)
        }
    }

    /// The project, by the configured id or name.
    fn project(&self) -> Result<Value, PluginError> {
        let path = format!("/v9/projects/{}", http::encode(&self.s.project));
        let r = self.get(&path, &[])?;
        ok(r, "reading the project")?.json()
    }
}

/// `{"error":{"code","message"}}` (or the CLI-accepted `err`) as one line, and the wait a 429
/// asks for (`Retry-After`, else `error.limit.reset`).
fn api_error(r: &Response, doing: &str) -> PluginError {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let err = body.get("error").or_else(|| body.get("err"));
    let code = err
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| r.text().chars().take(300).collect());
    let text = if code.is_empty() {
        format!("Vercel: {doing}: {message}")
    } else {
        format!("Vercel: {doing}: {message} ({code})")
    };
    if r.status == 429 {
        let wait = r.retry_after_ms().or_else(|| {
            let reset = err?.get("limit")?.get("reset")?.as_u64()?;
            Some(
                reset
                    .saturating_mul(1000)
                    .saturating_sub(now_ms())
                    .max(1000),
            )
        });
        return retryable(format!("HTTP 429: {text}"), wait);
    }
    r.status_error(&text)
}

/// The response, or the platform's error in words.
fn ok(r: Response, doing: &str) -> Result<Response, PluginError> {
    r.error_for_status_with(|r| api_error(r, doing))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One file of the artifact: its path in the deployment, where it is, its digest and size.
struct File {
    name: String,
    path: PathBuf,
    sha: String,
    size: u64,
}

/// The artifact's files with their digests; more than `MAX_FILES` is refused.
fn artifact_files(root: &Path) -> Result<Vec<File>, PluginError> {
    let listed = deploy_agent_sdk::fs::files(root)?;
    if listed.len() > MAX_FILES {
        return Err(rejected(format!(
            "the artifact has more than {MAX_FILES} files"
        )));
    }
    listed
        .into_iter()
        .map(|(name, path)| {
            let (sha, size) = sha1_of(&path)?;
            Ok(File {
                name,
                path,
                sha,
                size,
            })
        })
        .collect()
}

fn sha1_of(path: &Path) -> Result<(String, u64), PluginError> {
    let mut file =
        fs::File::open(path).map_err(|e| rejected(format!("opening {}: {e}", path.display())))?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| rejected(format!("reading {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The digests a `missing_files` answer lists.
fn missing(r: &Response) -> Option<Vec<String>> {
    if r.status != 400 {
        return None;
    }
    let body: Value = serde_json::from_slice(&r.body).ok()?;
    let err = body.get("error")?;
    if err.get("code")?.as_str()? != "missing_files" {
        return None;
    }
    Some(
        err.get("missing")?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

fn upload(api: &Api, file: &File) -> Result<(), PluginError> {
    let bytes = fs::read(&file.path)
        .map_err(|e| rejected(format!("reading {}: {e}", file.path.display())))?;
    let r = api
        .authed(http::post(&api.url("/v2/files", &[])))
        .header("content-type", "application/octet-stream")
        .header("x-vercel-digest", file.sha.clone())
        .header("x-now-digest", file.sha.clone())
        .header("x-now-size", file.size.to_string())
        .body(bytes)
        .send()?;
    ok(r, &format!("uploading {}", file.name)).map(|_| ())
}

fn state_of(d: &Value) -> (&str, Option<&str>) {
    (
        d.get("readyState").and_then(Value::as_str).unwrap_or(""),
        d.get("readySubstate").and_then(Value::as_str),
    )
}

/// The id of the deployment the project's production target points at.
fn live_id(project: &Value) -> Option<String> {
    project
        .pointer("/targets/production/id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn project_id(project: &Value) -> Result<String, PluginError> {
    project
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| rejected("Vercel: the project has no `id`"))
}

impl DeployTarget for Vercel {
    fn deploy(ctx: &Context, release: Artifact) -> Result<Staged, PluginError> {
        let api = Api::new(ctx)?;
        let dir = release.path.clone().ok_or_else(|| {
            invalid_config("the Vercel target deploys a directory artifact; set `artifact.path`")
        })?;
        let files = artifact_files(Path::new(&dir))?;
        if files.is_empty() {
            return Err(rejected(format!("the artifact {dir} has no files")));
        }
        log::info(format!(
            "{} files, {} bytes",
            files.len(),
            files.iter().map(|f| f.size).sum::<u64>()
        ));
        if let Some(weights) = rolling::steps_of(&release)? {
            let project = api.project()?;
            rolling::configure(&api, &project_id(&project)?, &weights)?;
        }
        let mut meta = serde_json::Map::new();
        meta.insert("deployAgentVersion".into(), json!(release.version));
        if !ctx.deployment_id.is_empty() {
            meta.insert("deployAgentRun".into(), json!(ctx.deployment_id));
        }
        let mut body = json!({
            "name": api.s.project,
            "project": api.s.project,
            "files": files.iter().map(|f| json!({"file": f.name, "sha": f.sha, "size": f.size})).collect::<Vec<_>>(),
            "meta": meta,
        });
        if api.s.target != "preview" {
            body["target"] = json!(api.s.target);
        }
        let mut r = api.post_json("/v13/deployments", &body)?;
        if let Some(wanted) = missing(&r) {
            log::info(format!(
                "uploading {} files Vercel has not seen",
                wanted.len()
            ));
            for sha in &wanted {
                let file = files.iter().find(|f| &f.sha == sha).ok_or_else(|| {
                    rejected(format!("Vercel asked for a file we did not name ({sha})"))
                })?;
                upload(&api, file)?;
            }
            r = api.post_json("/v13/deployments", &body)?;
            if let Some(still) = missing(&r) {
                return Err(retryable(
                    format!(
                        "Vercel still reports {} files missing after upload",
                        still.len()
                    ),
                    None,
                ));
            }
        }
        let d: Value = ok(r, "creating the deployment")?.json()?;
        let id = d
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| rejected("Vercel: the new deployment has no `id`"))?;
        let url = d
            .get("url")
            .and_then(Value::as_str)
            .map(|u| api.deployment_url(u));
        Ok(Staged {
            release_id: id.to_string(),
            url,
        })
    }

    fn status(ctx: &Context, release_id: &str) -> Result<ReleaseStatus, PluginError> {
        let api = Api::new(ctx)?;
        let path = format!("/v13/deployments/{}", http::encode(release_id));
        let d: Value = ok(api.get(&path, &[])?, "reading the deployment")?.json()?;
        let url = d
            .get("url")
            .and_then(Value::as_str)
            .map(|u| api.deployment_url(u));
        let (ready, sub) = state_of(&d);
        let state = match ready {
            "QUEUED" => ReleaseState::Pending,
            "INITIALIZING" | "BUILDING" => ReleaseState::InProgress(ready.to_lowercase()),
            "READY" => {
                let project = api.project()?;
                if live_id(&project).as_deref() == Some(release_id) {
                    ReleaseState::Live
                } else if sub == Some("ROLLING") {
                    ReleaseState::InProgress("rolling release".into())
                } else {
                    ReleaseState::Ready
                }
            }
            "CANCELED" => ReleaseState::Canceled,
            s if s == "ERROR" || s.ends_with("_ERROR") => {
                let code = d.get("errorCode").and_then(Value::as_str).unwrap_or(s);
                let message = d
                    .get("errorMessage")
                    .and_then(Value::as_str)
                    .unwrap_or("the build failed");
                ReleaseState::Failed(format!("{message} ({code})"))
            }
            other => ReleaseState::InProgress(format!("readyState {other}")),
        };
        Ok(ReleaseStatus { state, url })
    }

    fn promote(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        let project = api.project()?;
        if live_id(&project).as_deref() == Some(release_id) {
            return Ok(());
        }
        let path = format!(
            "/v10/projects/{}/promote/{}",
            http::encode(&project_id(&project)?),
            http::encode(release_id)
        );
        // The promote operation takes no body (the OpenAPI document declares none).
        let r = api.authed(http::post(&api.url(&path, &[]))).send()?;
        if r.status == 202 {
            log::info("promotion queued behind a rolling release; the host waits for it");
        }
        ok(r, &format!("promoting {release_id}"))?;
        // With Rolling Releases on, a promotion starts a rolling release; `promote` means all
        // traffic now (a canary goes through `traffic`), so it is completed at once.
        rolling::complete_if_started(&api, &project_id(&project)?, release_id)
    }

    fn rollback(ctx: &Context, to: Option<&str>) -> Result<String, PluginError> {
        let api = Api::new(ctx)?;
        let project = api.project()?;
        let pid = project_id(&project)?;
        let live = live_id(&project);
        let target = match to {
            Some(id) => id.to_string(),
            None => {
                let releases = list(&api, &pid, live.as_deref())?;
                previous_release(&releases)
                    .map(|r| r.id.clone())
                    .ok_or_else(|| {
                        rejected("Vercel: no production deployment earlier than the live one")
                    })?
            }
        };
        if live.as_deref() == Some(target.as_str()) {
            return Ok(target);
        }
        let path = format!(
            "/v9/projects/{}/rollback/{}",
            http::encode(&pid),
            http::encode(&target)
        );
        let r = api.post_json(&path, &json!({}))?;
        ok(r, &format!("rolling back to {target}"))?;
        Ok(target)
    }

    fn list_releases(ctx: &Context) -> Result<Vec<Release>, PluginError> {
        let api = Api::new(ctx)?;
        let project = api.project()?;
        list(&api, &project_id(&project)?, live_id(&project).as_deref())
    }
}

/// The project's ready production deployments, newest first.
fn list(api: &Api, project_id: &str, live: Option<&str>) -> Result<Vec<Release>, PluginError> {
    let r = api.get(
        "/v6/deployments",
        &[
            ("projectId", project_id),
            ("target", "production"),
            ("state", "READY"),
            ("limit", "50"),
        ],
    )?;
    let body: Value = ok(r, "listing deployments")?.json()?;
    let mut out: Vec<Release> = body
        .get("deployments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let id = d.get("uid")?.as_str()?.to_string();
            Some(Release {
                live: Some(id.as_str()) == live,
                version: d
                    .pointer("/meta/deployAgentVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                url: d
                    .get("url")
                    .and_then(Value::as_str)
                    .map(|u| api.deployment_url(u)),
                created_at_ms: d.get("created").and_then(Value::as_f64).unwrap_or(0.0) as u64,
                id,
            })
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
    Ok(out)
}

impl Validator for Vercel {
    fn validate(ctx: &Context, _release: Artifact) -> Result<Vec<Finding>, PluginError> {
        let api = Api::new(ctx)?;
        let mut findings = Vec::new();
        let user = api
            .authed(http::get(&api.url_in("/v2/user", &[], false)))
            .send()?;
        if matches!(user.status, 401 | 403) {
            findings.push(finding(
                Severity::Error,
                "token-invalid",
                format!("{}", api_error(&user, "checking the token")),
                Some("create a token at vercel.com/account/tokens and grant it as the `token` secret"),
            ));
            return Ok(findings);
        }
        ok(user, "checking the token")?;
        if let Some(team) = &api.s.team_id {
            let path = format!("/v2/teams/{}", http::encode(team));
            let r = api
                .authed(http::get(&api.url_in(&path, &[], false)))
                .send()?;
            if matches!(r.status, 403 | 404) {
                findings.push(finding(
                    Severity::Error,
                    "team-access",
                    format!("{}", api_error(&r, &format!("reading team {team}"))),
                    Some("check `team_id`, and that the token's scope includes the team"),
                ));
                return Ok(findings);
            }
            ok(r, "reading the team")?;
        }
        let path = format!("/v9/projects/{}", http::encode(&api.s.project));
        let r = api.get(&path, &[])?;
        match r.status {
            404 => findings.push(finding(
                Severity::Error,
                "project-missing",
                format!("project `{}` does not exist", api.s.project),
                Some("check `project` (its id or name) and `team_id`"),
            )),
            403 => findings.push(finding(
                Severity::Error,
                "team-access",
                format!("{}", api_error(&r, "reading the project")),
                Some("the token cannot see this project; check its scope and `team_id`"),
            )),
            _ => {
                let project: Value = ok(r, "reading the project")?.json()?;
                let auto = project
                    .get("autoAssignCustomDomains")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                if api.s.target == "production" && auto {
                    findings.push(finding(
                        Severity::Warning,
                        "promotion-immediate",
                        "the project assigns its production domains to every production deployment, so a release goes live before it is verified",
                        Some("turn off auto-assign custom production domains in the project's settings, so releases are staged and promoted"),
                    ));
                }
            }
        }
        Ok(findings)
    }
}

export!(Vercel: deploy_target, validator, traffic);
