//! Package 0.1.1 added the `traffic` interface. Components built against 0.1.0 (the
//! first-party targets at the commit before, kept in `tests/legacy/`) keep loading, report
//! the same kinds, and run a whole deployment unchanged.

use deploy_agent_tests::{bin, fixtures};
use serde_json::Value;

use crate::project::Project;

fn inspect(wasm: &str) -> Value {
    let out = std::process::Command::new(bin())
        .args(["plugin", "inspect", wasm, "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn targets_built_against_0_1_0_keep_their_kinds() {
    let vercel = inspect(fixtures::LEGACY_VERCEL);
    assert_eq!(vercel["package_versions"], serde_json::json!(["0.1.0"]));
    assert_eq!(
        vercel["kinds"],
        serde_json::json!(["validator", "deploy-target"])
    );
    let local = inspect(fixtures::LEGACY_LOCAL);
    assert_eq!(local["package_versions"], serde_json::json!(["0.1.0"]));
    assert_eq!(local["kinds"], serde_json::json!(["deploy-target"]));
    // Today's build of the Kubernetes target exports the new interface too.
    let kubernetes = inspect(fixtures::KUBERNETES);
    assert_eq!(kubernetes["package_versions"], serde_json::json!(["0.1.1"]));
    assert_eq!(
        kubernetes["kinds"],
        serde_json::json!(["validator", "deploy-target", "traffic"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_target_built_against_0_1_0_deploys_and_rolls_back() {
    let p = Project::new("", "");
    p.edit_config(fixtures::LOCAL, fixtures::LEGACY_LOCAL);
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    let first = v["deployment"]["release_id"].as_str().unwrap().to_string();
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        std::fs::read_to_string(p.path("sites/local/current/index.html")).unwrap(),
        "<h1>v2</h1>"
    );
    let out = p.run(&[
        "rollback",
        "--env",
        "local",
        "--app-only",
        "--reason",
        "compat",
        "--yes",
    ]);
    assert!(out.status.success(), "{}", crate::project::stderr(&out));
    assert_eq!(p.current().unwrap(), format!("releases/{first}"));
}
