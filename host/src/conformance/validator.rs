//! The validator's contract: findings are well formed, validating twice finds the same, and
//! failures say what to do.

use super::{Kit, faults, said};
use crate::runtime::Finding;

pub(super) async fn run(kit: &mut Kit) {
    let release = kit.artifact("v1");
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let first = kit.call("validate", plugin.validate(&ctx, &release)).await;
    let first = match first {
        Ok(f) => f,
        Err(e) => {
            kit.fail("validate: runs and returns findings", said(&e));
            return;
        }
    };
    kit.pass(
        "validate: runs and returns findings",
        format!("{} findings", first.len()),
    );
    let bad: Vec<String> = first.iter().filter_map(malformed).collect();
    if bad.is_empty() {
        kit.pass(
            "validate: findings have a code (lowercase, dashes) and a message",
            format!("{} checked", first.len()),
        );
    } else {
        kit.fail(
            "validate: findings have a code (lowercase, dashes) and a message",
            bad.join("; "),
        );
    }
    let again = kit.call("validate", plugin.validate(&ctx, &release)).await;
    const SAME: &str = "validate: the same release validated twice gives the same findings";
    match again {
        Ok(f) if same(&f, &first) => kit.pass(SAME, "identical"),
        Ok(f) => kit.fail(
            SAME,
            format!("first {} findings, then {}", first.len(), f.len()),
        ),
        Err(e) => kit.fail(SAME, said(&e)),
    }
    faults::run(kit, "validate", &|plugin, ctx| {
        Box::pin(async move {
            let release = crate::runtime::Artifact::version("v1");
            plugin.validate(ctx, &release).await.map(|_| ())
        })
    })
    .await;
}

fn malformed(f: &Finding) -> Option<String> {
    let code_ok = !f.code.is_empty()
        && f.code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !code_ok {
        return Some(format!("code {:?} is not lowercase-with-dashes", f.code));
    }
    if f.message.trim().is_empty() {
        return Some(format!("`{}` has an empty message", f.code));
    }
    None
}

fn same(a: &[Finding], b: &[Finding]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.code == y.code && x.severity == y.severity && x.message == y.message)
}
