//! The traffic contract, for a deploy target that also shifts traffic: with a stable release
//! live and a new one staged, weights are taken in order and reported once in effect, a
//! repeated weight is a no-op, the stable release stays live, bad weights and unknown
//! releases are rejected, platform failures map to the right variants, `abort` sends all
//! traffic back to the stable release (twice is a no-op), a new canary after an abort runs
//! to 100 % and promotes, and `retire` frees the old release but refuses the live one.
//!
//! Every artifact carries the host's canary-steps label (`10,50,100`), as a canary run's
//! do, for platforms that take a rollout's stages up front.

use std::time::Duration;

use super::{Kit, faults, said, target};
use crate::runtime::{CallError, Kind, PluginError, ReleaseState, Strategy};

/// How many times the kit reads `weight` before calling a change stuck.
const MAX_READS: usize = 60;
/// Between reads.
const READ_EVERY: Duration = Duration::from_millis(50);

/// The canary's steps the kit's artifacts announce.
pub(super) const STEPS: &str = "10,50,100";

pub(super) async fn run(kit: &mut Kit) {
    const BESIDE: &str = "traffic: exported beside deploy-target";
    if !kit.plugin.kinds().contains(&Kind::DeployTarget) {
        kit.fail(
            BESIDE,
            "the component exports traffic but not deploy-target; the host shifts traffic between releases the target staged",
        );
        return;
    }
    kit.pass(BESIDE, "both exported");
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    const STRATEGIES: &str = "strategies: says what the settings allow";
    match kit.call("strategies", plugin.strategies(&ctx)).await {
        Ok(s) if s.contains(&Strategy::Canary) => kit.pass(STRATEGIES, format!("{s:?}")),
        Ok(s) => {
            kit.pass(STRATEGIES, format!("{s:?}"));
            kit.skip(
                "traffic scenario",
                "the plugin offers no canary with these settings; give the stand-in file a config that does",
            );
            return;
        }
        Err(e) => {
            kit.fail(STRATEGIES, said(&e));
            return;
        }
    }
    let Some(stable) = target::release(kit, "v1").await else {
        return;
    };
    let Some(canary) = target::stage(kit, "v2").await else {
        return;
    };
    for w in [10, 50] {
        if !shift(
            kit,
            &canary,
            w,
            &format!("set-weight {w}: taken, then in effect"),
        )
        .await
        {
            return;
        }
    }
    shift(
        kit,
        &canary,
        50,
        "set-weight 50 again: a no-op that keeps 50 %",
    )
    .await;
    const STABLE: &str = "status: the stable release stays live during the canary";
    match kit.call("status", plugin.status(&ctx, &stable)).await {
        Ok(s) if matches!(s.state, ReleaseState::Live) => kit.pass(STABLE, "v1 is live"),
        Ok(s) => kit.fail(STABLE, format!("v1 is {:?}", s.state)),
        Err(e) => kit.fail(STABLE, said(&e)),
    }
    let over = kit
        .call("set-weight", plugin.set_weight(&ctx, &canary, 101))
        .await;
    rejected(kit, "set-weight 101: rejected, not retried", over);
    let unknown = kit
        .call(
            "set-weight",
            plugin.set_weight(&ctx, "conformance-no-such-release", 10),
        )
        .await;
    rejected(
        kit,
        "set-weight on an unknown release: rejected, not retried",
        unknown,
    );
    let id = canary.clone();
    faults::run(kit, "weight", &move |plugin, ctx| {
        let id = id.clone();
        Box::pin(async move { plugin.weight(ctx, &id).await.map(|_| ()) })
    })
    .await;

    const ABORT: &str = "abort: all traffic back to the stable release";
    match kit.call("abort", plugin.abort_traffic(&ctx, &canary)).await {
        Ok(()) => match settle(kit, &canary, 0).await {
            Ok(n) => kit.pass(ABORT, format!("0 % in effect after {n} reads")),
            Err(e) => kit.fail(ABORT, e),
        },
        Err(e) => kit.fail(ABORT, said(&e)),
    }
    const TWICE: &str = "abort again: a no-op";
    match kit.call("abort", plugin.abort_traffic(&ctx, &canary)).await {
        Ok(()) => match kit.call("weight", plugin.weight(&ctx, &canary)).await {
            Ok(t) if t.weight == 0 => kit.pass(TWICE, "still 0 %"),
            Ok(t) => kit.fail(TWICE, format!("now {} %", t.weight)),
            Err(e) => kit.fail(TWICE, said(&e)),
        },
        Err(e) => kit.fail(TWICE, said(&e)),
    }

    // A new canary of the same release, all the way, then the switch.
    for w in [10, 100] {
        let name = format!("after the abort, set-weight {w}: taken, then in effect");
        if !shift(kit, &canary, w, &name).await {
            return;
        }
    }
    if target::promote(kit, "v2", &canary).await.is_none() {
        return;
    }
    const RETIRE: &str = "retire: frees the release that served before";
    let out = kit.call("retire", plugin.retire(&ctx, &stable)).await;
    match out {
        Ok(()) => kit.pass(RETIRE, format!("`{stable}` retired")),
        Err(e) => kit.fail(RETIRE, said(&e)),
    }
    let live = kit.call("retire", plugin.retire(&ctx, &canary)).await;
    rejected(kit, "retire the live release: rejected", live);
}

/// Sets `w` on `id` and reads until it is in effect; records `name`. Whether it passed.
async fn shift(kit: &mut Kit, id: &str, w: u8, name: &str) -> bool {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    if let Err(e) = kit.call("set-weight", plugin.set_weight(&ctx, id, w)).await {
        kit.fail(name, said(&e));
        return false;
    }
    match settle(kit, id, w).await {
        Ok(n) => {
            kit.pass(name, format!("{w} % in effect after {n} reads"));
            true
        }
        Err(e) => {
            kit.fail(name, e);
            false
        }
    }
}

/// Reads `weight` until `w` is in effect. A reading past `w` (a weight the host never asked
/// for) fails at once.
async fn settle(kit: &mut Kit, id: &str, w: u8) -> Result<usize, String> {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let mut trail = Vec::new();
    for n in 1..=MAX_READS {
        let t = kit
            .call("weight", plugin.weight(&ctx, id))
            .await
            .map_err(|e| format!("weight read {n} failed: {}", said(&e)))?;
        if t.weight > 100 {
            return Err(format!("weight read {n} says {} %", t.weight));
        }
        if t.weight == w && t.taken_effect {
            return Ok(n);
        }
        let reading = format!(
            "{} %{}",
            t.weight,
            if t.taken_effect { "" } else { " (pending)" }
        );
        if trail.last() != Some(&reading) {
            trail.push(reading);
        }
        tokio::time::sleep(READ_EVERY).await;
    }
    Err(format!(
        "{w} % not in effect after {MAX_READS} reads: {}",
        trail.join(" -> ")
    ))
}

fn rejected(kit: &mut Kit, name: &str, out: Result<(), CallError>) {
    match out {
        Err(CallError::Plugin {
            error: PluginError::Rejected(m) | PluginError::InvalidConfig(m),
            ..
        }) => kit.pass(name, format!("rejected({m:?})")),
        Err(e) => kit.fail(name, format!("expected rejected; got {}", said(&e))),
        Ok(()) => kit.fail(name, "expected rejected; it succeeded"),
    }
}
