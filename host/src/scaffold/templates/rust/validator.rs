//! {{name}}: a deploy-agent validator that checks the platform knows the project, and that
//! the release carries a verified digest.

use deploy_agent_sdk::prelude::*;
use serde::Deserialize;

/// `[plugins.{{name}}.config]` in agent.toml.
#[derive(Deserialize)]
struct Settings {
    /// The platform's API, e.g. `https://api.example.com`.
    api: String,
    /// The project releases go to.
    project: String,
}

struct Plugin;

impl Validator for Plugin {
    fn validate(ctx: &Context, release: Artifact) -> Result<Vec<Finding>, PluginError> {
        let s: Settings = ctx.config()?;
        let token = ctx.secret("token")?;
        let url = format!(
            "{}/v1/projects/{}",
            s.api.trim_end_matches('/'),
            http::encode(&s.project)
        );
        let r = http::get(&url)
            .header("authorization", token.bearer())
            .send()?;
        let mut findings = Vec::new();
        if r.status == 404 {
            findings.push(finding(
                Severity::Error,
                "project-missing",
                format!("the platform has no project `{}`", s.project),
                Some("create it, or fix `project` in agent.toml"),
            ));
        } else {
            r.error_for_status()?;
        }
        findings.extend(digest_finding(&release));
        Ok(findings)
    }
}

/// A warning when the release has no verified digest.
fn digest_finding(release: &Artifact) -> Option<Finding> {
    release.digest.is_none().then(|| {
        finding(
            Severity::Warning,
            "digest-missing",
            format!("release {} has no verified digest", release.version),
            Some("deploy a directory artifact, so the host can compute its digest"),
        )
    })
}

export!(Plugin: validator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_without_a_digest_gets_a_warning() {
        let mut release = Artifact {
            version: "v1".into(),
            path: None,
            digest: None,
            labels: Vec::new(),
        };
        let f = digest_finding(&release).expect("a finding");
        assert_eq!(f.code, "digest-missing");
        assert_eq!(f.severity, Severity::Warning);
        release.digest = Some("sha256:00".into());
        assert!(digest_finding(&release).is_none());
    }
}
