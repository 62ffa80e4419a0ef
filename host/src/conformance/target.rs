//! The deploy target's contract: a release staged by `deploy` reaches a terminal state
//! through legal transitions, `promote` makes it live (and again is a no-op), a rollback
//! after a second release brings the first back, `list-releases` agrees, and failures say
//! what to do.

use std::time::Duration;

use super::{Kit, faults, said};
use crate::runtime::{Release, ReleaseState, ReleaseStatus};

/// How many times the kit polls `status` before calling a release stuck.
const MAX_POLLS: usize = 60;
/// Between polls (the stand-in answers at once; a real platform would take longer).
const POLL_EVERY: Duration = Duration::from_millis(50);

pub(super) async fn run(kit: &mut Kit) {
    let Some(first) = release(kit, "v1").await else {
        return;
    };
    let Some(second) = release(kit, "v2").await else {
        return;
    };
    if second == first {
        kit.fail(
            "deploy: each release gets its own id",
            format!("v1 and v2 were both staged as `{first}`"),
        );
        return;
    }
    kit.pass(
        "deploy: each release gets its own id",
        format!("v1 `{first}`, v2 `{second}`"),
    );
    // v2 is live; v1 must not be.
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let old = kit.call("status", plugin.status(&ctx, &first)).await;
    const ONE_LIVE: &str = "status: promoting v2 leaves v1 no longer live";
    match old {
        Ok(s) if !matches!(s.state, ReleaseState::Live) => {
            kit.pass(ONE_LIVE, format!("v1 is {}", state(&s.state)))
        }
        Ok(_) => kit.fail(ONE_LIVE, "v1 still reports live after v2 was promoted"),
        Err(e) => kit.fail(ONE_LIVE, said(&e)),
    }
    let listed = list(
        kit,
        "list-releases: v2 live, v1 listed, newest first",
        &second,
        &first,
    )
    .await;

    // Roll back: v1 live again (an operator's rollback, a run of its own).
    kit.new_run();
    let ctx = kit.ctx.clone();
    let out = kit.call("rollback", plugin.rollback(&ctx, None)).await;
    const BACK: &str = "rollback: after two releases, brings the first back";
    match out {
        Ok(id) if id == first => {
            match settle(kit, &first, |s| matches!(s, ReleaseState::Live)).await {
                Ok(n) => kit.pass(
                    BACK,
                    format!("rollback returned `{id}`; live after {n} status calls"),
                ),
                Err(e) => kit.fail(BACK, format!("rollback returned `{id}`, but {e}")),
            }
        }
        Ok(id) => kit.fail(
            BACK,
            format!("rollback returned `{id}`, expected v1's `{first}`"),
        ),
        Err(e) => kit.fail(BACK, said(&e)),
    }
    if listed {
        list(
            kit,
            "list-releases: after the rollback, v1 is the live one",
            &first,
            &second,
        )
        .await;
    }
    let again = kit
        .call("rollback", plugin.rollback(&ctx, Some(&first)))
        .await;
    const TO: &str = "rollback: to the release already live is a no-op that names it";
    match again {
        Ok(id) if id == first => kit.pass(TO, format!("returned `{id}`")),
        Ok(id) => kit.fail(TO, format!("returned `{id}`, expected `{first}`")),
        Err(e) => kit.fail(TO, said(&e)),
    }
    let unknown = kit
        .call("status", plugin.status(&ctx, "conformance-no-such-release"))
        .await;
    const UNKNOWN: &str = "status: an unknown release id is rejected, not retried";
    match unknown {
        Err(crate::runtime::CallError::Plugin {
            error: crate::runtime::PluginError::Rejected(m),
            ..
        }) => kit.pass(UNKNOWN, format!("rejected({m:?})")),
        Err(e) => kit.fail(UNKNOWN, format!("expected rejected; got {}", said(&e))),
        Ok(s) => kit.fail(
            UNKNOWN,
            format!("expected rejected; got a status: {}", state(&s.state)),
        ),
    }
    faults::run(kit, "status", &move |plugin, ctx| {
        let id = first.clone();
        Box::pin(async move { plugin.status(ctx, &id).await.map(|_| ()) })
    })
    .await;
}

/// Deploys `version`, waits for it to be ready, promotes it (twice) and waits for it to be
/// live. Returns its id, or `None` after recording why the scenario cannot go on.
pub(super) async fn release(kit: &mut Kit, version: &str) -> Option<String> {
    let id = stage(kit, version).await?;
    promote(kit, version, &id).await?;
    Some(id)
}

/// Deploys `version` in a run of its own and waits for it to be ready (not live). Returns
/// its id, or `None` after recording why the scenario cannot go on.
pub(super) async fn stage(kit: &mut Kit, version: &str) -> Option<String> {
    kit.new_run();
    let artifact = kit.artifact(version);
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let began = std::time::Instant::now();
    let staged = kit.call("deploy", plugin.deploy(&ctx, &artifact)).await;
    let took = began.elapsed();
    let name = format!("deploy {version}: stages a release and returns without waiting");
    let staged = match staged {
        Ok(s) if !s.release_id.trim().is_empty() => s,
        Ok(_) => {
            kit.fail(name, "returned an empty release id");
            return None;
        }
        Err(e) => {
            kit.fail(name, said(&e));
            return None;
        }
    };
    kit.pass(
        name,
        format!("`{}` in {} ms", staged.release_id, took.as_millis()),
    );
    let id = staged.release_id;
    let name = format!("status {version}: reaches a terminal state through legal transitions");
    match settle(kit, &id, |s| {
        matches!(s, ReleaseState::Ready | ReleaseState::Live)
    })
    .await
    {
        Ok(n) => kit.pass(name, format!("ready after {n} status calls")),
        Err(e) => {
            kit.fail(name, e);
            return None;
        }
    }
    Some(id)
}

/// Promotes `id` (`version`), waits for it to be live, and promotes it again (a no-op).
pub(super) async fn promote(kit: &mut Kit, version: &str, id: &str) -> Option<()> {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let name = format!("promote {version}: makes it live");
    let out = kit.call("promote", plugin.promote(&ctx, id)).await;
    if let Err(e) = out {
        kit.fail(name, said(&e));
        return None;
    }
    match settle(kit, id, |s| matches!(s, ReleaseState::Live)).await {
        Ok(n) => kit.pass(name, format!("live after {n} status calls")),
        Err(e) => {
            kit.fail(name, e);
            return None;
        }
    }
    let name = format!("promote {version} again: a no-op");
    let out = kit.call("promote", plugin.promote(&ctx, id)).await;
    match out {
        Err(e) => kit.fail(name, said(&e)),
        Ok(()) => match kit.call("status", plugin.status(&ctx, id)).await {
            Ok(s) if matches!(s.state, ReleaseState::Live) => kit.pass(name, "still live"),
            Ok(s) => kit.fail(name, format!("now {}", state(&s.state))),
            Err(e) => kit.fail(name, said(&e)),
        },
    }
    Some(())
}

/// Polls `status` until `done` holds, checking each transition. Returns the number of polls.
pub(super) async fn settle(
    kit: &mut Kit,
    id: &str,
    done: impl Fn(&ReleaseState) -> bool,
) -> Result<usize, String> {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let mut seen: Vec<ReleaseStatus> = Vec::new();
    for n in 1..=MAX_POLLS {
        let s = kit
            .call("status", plugin.status(&ctx, id))
            .await
            .map_err(|e| format!("status call {n} failed: {}", said(&e)))?;
        if let Some(prev) = seen.last()
            && !legal(&prev.state, &s.state)
        {
            return Err(format!(
                "illegal transition {} -> {}",
                state(&prev.state),
                state(&s.state)
            ));
        }
        if done(&s.state) {
            return Ok(n);
        }
        if let ReleaseState::Failed(why) = &s.state {
            return Err(format!("the release failed: {why}"));
        }
        if matches!(s.state, ReleaseState::Canceled) {
            return Err("the release was canceled".into());
        }
        seen.push(s);
        tokio::time::sleep(POLL_EVERY).await;
    }
    let trail: Vec<String> = seen.iter().map(|s| state(&s.state)).collect();
    Err(format!(
        "not settled after {MAX_POLLS} status calls: {}",
        trail.join(" -> ")
    ))
}

/// The order a release moves in: pending, in-progress, ready, live. Ready and live may go
/// back and forth (promotion, rollback); failed and canceled are final.
fn legal(from: &ReleaseState, to: &ReleaseState) -> bool {
    fn rank(s: &ReleaseState) -> u8 {
        match s {
            ReleaseState::Pending => 0,
            ReleaseState::InProgress(_) => 1,
            ReleaseState::Ready | ReleaseState::Live => 2,
            ReleaseState::Failed(_) | ReleaseState::Canceled => 3,
        }
    }
    match from {
        ReleaseState::Failed(_) | ReleaseState::Canceled => state(from) == state(to),
        _ => rank(to) >= rank(from),
    }
}

fn state(s: &ReleaseState) -> String {
    match s {
        ReleaseState::Pending => "pending".into(),
        ReleaseState::InProgress(m) => format!("in-progress({m:?})"),
        ReleaseState::Ready => "ready".into(),
        ReleaseState::Live => "live".into(),
        ReleaseState::Failed(m) => format!("failed({m:?})"),
        ReleaseState::Canceled => "canceled".into(),
    }
}

/// Checks `list-releases`: `live` is the one live, `other` is listed, newest first.
/// Returns whether the plugin lists releases at all.
async fn list(kit: &mut Kit, name: &str, live: &str, other: &str) -> bool {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let out = kit.call("list-releases", plugin.list_releases(&ctx)).await;
    let releases: Vec<Release> = match out {
        Ok(r) => r,
        Err(crate::runtime::CallError::Plugin {
            error: crate::runtime::PluginError::Rejected(m),
            ..
        }) => {
            kit.skip(name, format!("the plugin does not list releases: {m}"));
            return false;
        }
        Err(e) => {
            kit.fail(name, said(&e));
            return true;
        }
    };
    let lives: Vec<&str> = releases
        .iter()
        .filter(|r| r.live)
        .map(|r| r.id.as_str())
        .collect();
    let verdict = if lives != [live] {
        Err(format!("live: {lives:?}, expected only `{live}`"))
    } else if !releases.iter().any(|r| r.id == other) {
        Err(format!("`{other}` is missing"))
    } else if releases
        .windows(2)
        .any(|w| w[0].created_at_ms < w[1].created_at_ms)
    {
        Err("not newest first (created-at-ms increases)".into())
    } else {
        Ok(())
    };
    let result = verdict.map(|()| releases.len());
    kit.expect(name, &result, |n| format!("{n} releases, `{live}` live"));
    true
}
