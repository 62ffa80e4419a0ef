//! {{name}}: a deploy-agent deploy target for a platform with a release API:
//!
//! - `POST /v1/apps/{app}/releases` stages a release (`{"version": ...}`), answering its `id`;
//! - `GET /v1/apps/{app}/releases/{id}` reports its `status`
//!   (`queued`, `building`, `ready`, `live`, `failed`, `canceled`);
//! - `POST /v1/apps/{app}/releases/{id}/promote` makes it live;
//! - `GET /v1/apps/{app}/releases` lists them.
//!
//! Change the URLs and fields to your platform's; the host does the rest (polling, timeouts,
//! retries, rollback decisions).

use deploy_agent_sdk::prelude::*;
use serde::Deserialize;
use serde_json::json;

/// `[plugins.{{name}}.config]` in agent.toml.
#[derive(Deserialize)]
struct Settings {
    /// The platform's API, e.g. `https://api.example.com`.
    api: String,
    /// The app releases go to.
    app: String,
}

/// A release as the platform describes it.
#[derive(Deserialize)]
struct PlatformRelease {
    id: String,
    #[serde(default)]
    version: Option<String>,
    status: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    created_at_ms: u64,
}

struct Api {
    base: String,
    token: SecretRef,
}

impl Api {
    fn new(ctx: &Context) -> Result<Api, PluginError> {
        let s: Settings = ctx.config()?;
        if s.app.trim().is_empty() {
            return Err(invalid_config("`app` is empty"));
        }
        Ok(Api {
            base: format!(
                "{}/v1/apps/{}/releases",
                s.api.trim_end_matches('/'),
                http::encode(&s.app)
            ),
            token: ctx.secret("token")?,
        })
    }

    fn get(&self, url: &str) -> Result<http::Response, PluginError> {
        http::get(url)
            .header("authorization", self.token.bearer())
            .send()?
            .error_for_status()
    }

    fn post(&self, url: &str, body: &serde_json::Value) -> Result<http::Response, PluginError> {
        http::post(url)
            .header("authorization", self.token.bearer())
            .json(body)?
            .send()?
            .error_for_status()
    }

    fn release(&self, id: &str) -> Result<PlatformRelease, PluginError> {
        self.get(&format!("{}/{}", self.base, http::encode(id)))?
            .json()
    }
}

struct Plugin;

impl DeployTarget for Plugin {
    fn deploy(ctx: &Context, release: Artifact) -> Result<Staged, PluginError> {
        let api = Api::new(ctx)?;
        // A platform that takes files would read them here, under `release.path`
        // (a directory agent.toml grants): `fs::read(...)`.
        let body = json!({ "version": release.version, "digest": release.digest });
        let r: PlatformRelease = api.post(&api.base, &body)?.json()?;
        Ok(Staged {
            release_id: r.id,
            url: r.url,
        })
    }

    fn status(ctx: &Context, release_id: &str) -> Result<ReleaseStatus, PluginError> {
        let r = Api::new(ctx)?.release(release_id)?;
        Ok(ReleaseStatus {
            state: state(&r.status, r.error.as_deref()),
            url: r.url,
        })
    }

    fn promote(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        let url = format!("{}/{}/promote", api.base, http::encode(release_id));
        api.post(&url, &json!({}))?;
        Ok(())
    }

    fn rollback(ctx: &Context, to: Option<&str>) -> Result<String, PluginError> {
        let target = match to {
            Some(id) => id.to_string(),
            None => {
                let releases = Self::list_releases(ctx)?;
                previous_release(&releases)
                    .map(|r| r.id.clone())
                    .ok_or_else(|| rejected("no earlier release to roll back to"))?
            }
        };
        Self::promote(ctx, &target)?;
        Ok(target)
    }

    fn list_releases(ctx: &Context) -> Result<Vec<Release>, PluginError> {
        #[derive(Deserialize)]
        struct Page {
            releases: Vec<PlatformRelease>,
        }
        let api = Api::new(ctx)?;
        let page: Page = api.get(&api.base)?.json()?;
        let mut releases: Vec<Release> = page
            .releases
            .into_iter()
            .map(|r| Release {
                live: r.status == "live",
                id: r.id,
                version: r.version,
                url: r.url,
                created_at_ms: r.created_at_ms,
            })
            .collect();
        releases.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        Ok(releases)
    }
}

/// The platform's status word as a release state.
fn state(status: &str, error: Option<&str>) -> ReleaseState {
    match status {
        "queued" => ReleaseState::Pending,
        "ready" => ReleaseState::Ready,
        "live" => ReleaseState::Live,
        "failed" => ReleaseState::Failed(error.unwrap_or("the platform says failed").into()),
        "canceled" => ReleaseState::Canceled,
        other => ReleaseState::InProgress(other.into()),
    }
}

export!(Plugin: deploy_target);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_words_map_to_release_states() {
        assert!(matches!(state("queued", None), ReleaseState::Pending));
        assert!(matches!(state("building", None), ReleaseState::InProgress(s) if s == "building"));
        assert!(matches!(state("live", None), ReleaseState::Live));
        assert!(matches!(state("failed", Some("OOM")), ReleaseState::Failed(s) if s == "OOM"));
    }
}
