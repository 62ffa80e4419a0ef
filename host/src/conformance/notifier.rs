//! The notifier's contract: every event kind is delivered, and failures say what to do.

use super::{Kit, faults, said};
use crate::runtime::{Event, EventKind};

const KINDS: [(EventKind, Option<&str>); 8] = [
    (EventKind::Started, None),
    (EventKind::StageStarted, Some("deploy")),
    (EventKind::StageSucceeded, Some("deploy")),
    (EventKind::StageFailed, Some("verify")),
    (EventKind::ApprovalRequested, Some("approve")),
    (EventKind::Succeeded, None),
    (EventKind::Failed, None),
    (EventKind::RolledBack, None),
];

/// An event as the pipeline sends it.
pub(super) fn event(kind: EventKind, stage: Option<&str>, deployment: &str) -> Event {
    let failed = matches!(
        kind,
        EventKind::StageFailed | EventKind::Failed | EventKind::RolledBack
    );
    Event {
        kind,
        environment: "conformance".into(),
        deployment_id: deployment.into(),
        version: "v2".into(),
        actor: "conformance-kit".into(),
        stage: stage.map(str::to_string),
        summary: format!("conformance: v2 {kind:?}"),
        detail: failed.then(|| "health check https://example.test/healthz answered 503".into()),
        duration_ms: Some(1234),
        links: vec![("release".into(), "https://example.test/releases/v2".into())],
        at_ms: 1_763_000_000_000,
    }
}

pub(super) async fn run(kit: &mut Kit) {
    const NAME: &str = "notify: every event kind is delivered";
    let before = kit.standin.count();
    let mut failures = Vec::new();
    for (kind, stage) in KINDS {
        let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
        let ev = event(kind, stage, &ctx.deployment_id);
        if let Err(e) = kit.call("notify", plugin.notify(&ctx, &ev)).await {
            failures.push(format!("{kind:?}: {}", said(&e)));
        }
    }
    let sent = kit.standin.count() - before;
    if !failures.is_empty() {
        kit.fail(NAME, failures.join("; "));
    } else if sent == 0 {
        kit.fail(NAME, "all 8 calls succeeded, but none sent a request");
    } else {
        kit.pass(NAME, format!("8 event kinds, {sent} requests"));
    }
    faults::run(kit, "notify", &|plugin, ctx| {
        Box::pin(async move {
            let ev = event(EventKind::Failed, None, &ctx.deployment_id);
            plugin.notify(ctx, &ev).await
        })
    })
    .await;
}
