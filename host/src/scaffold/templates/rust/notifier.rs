//! {{name}}: a deploy-agent notifier that posts each deployment event to a webhook as JSON.

use deploy_agent_sdk::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// `[plugins.{{name}}.config]` in agent.toml.
#[derive(Deserialize)]
struct Settings {
    /// Where events are posted.
    url: String,
}

struct Plugin;

impl Notifier for Plugin {
    fn notify(ctx: &Context, event: Event) -> Result<(), PluginError> {
        let s: Settings = ctx.config()?;
        // The plugin never sees the token: the host puts it in, only for the hosts it is bound to.
        let token = ctx.secret("token")?;
        http::post(&s.url)
            .header("authorization", token.bearer())
            .json(&message(&event))?
            .send()?
            // 401/403 -> unauthorized, 429/5xx -> retryable (with Retry-After), else rejected.
            .error_for_status()?;
        Ok(())
    }
}

/// The JSON posted for one event.
fn message(event: &Event) -> Value {
    json!({
        "text": event.summary,
        "environment": event.environment,
        "version": event.version,
        "deployment": event.deployment_id,
        "stage": event.stage,
        "detail": event.detail,
    })
}

export!(Plugin: notifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_environment_version_and_stage() {
        let event = Event {
            kind: EventKind::StageFailed,
            environment: "production".into(),
            deployment_id: "run-1".into(),
            version: "v42".into(),
            actor: "alice".into(),
            stage: Some("verify".into()),
            summary: "production: v42 failed verify".into(),
            detail: Some("/healthz answered 503".into()),
            duration_ms: Some(1200),
            links: Vec::new(),
            at_ms: 0,
        };
        let m = message(&event);
        assert_eq!(m["environment"], "production");
        assert_eq!(m["version"], "v42");
        assert_eq!(m["stage"], "verify");
        assert_eq!(m["text"], "production: v42 failed verify");
    }
}
