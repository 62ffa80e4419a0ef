//! Recovery objectives: a restore drill (`backup restore ID --test`) is timed and recorded in
//! the backup's manifest; `backup status` and validate hold the environment to its `rpo`
//! (the newest drilled backup's age) and `rto` (the last drill's time); a corrupted backup's
//! drill fails and is recorded as failed; a strict environment will not deploy past its RPO.

use serde_json::Value;

use crate::project::{Project, stderr};

fn status(p: &Project) -> (Option<i32>, Value) {
    let out = p.run(&["backup", "status", "--env", "local", "--output", "json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    (out.status.code(), v)
}

fn findings(p: &Project) -> Vec<(String, String, String)> {
    let plan = p.json(&["plan", "--env", "local"]);
    plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["source"] == "builtin:objectives")
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn drill(p: &Project) -> (Option<i32>, Value) {
    let out = p.run(&[
        "backup", "restore", "latest", "--test", "--env", "local", "--output", "json",
    ]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    (out.status.code(), v)
}

fn create(p: &Project) -> String {
    let out = p.run(&["backup", "create", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn drills_are_recorded_and_the_objectives_gate_deploys() {
    let p = Project::new(
        "",
        "\n[environments.local.backup]\nrpo = \"1h\"\nrto = \"15m\"\n",
    );
    // A first deploy (it backs up before migrating): the objectives warn, they do not
    // block an environment that is not strict.
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");

    // Nothing drilled yet: neither objective is met, and validate says so (a warning).
    let (code, st) = status(&p);
    assert_eq!(code, Some(1), "{st:#}");
    assert_eq!(st["rpo"], serde_json::json!([3600, false]));
    assert_eq!(st["rto"], serde_json::json!([900, false]));
    assert!(st["verified"].is_null());
    let f = findings(&p);
    assert!(
        f.iter()
            .any(|(c, s, m)| c == "rpo-exceeded" && s == "warning" && m.contains("no backup")),
        "{f:?}"
    );
    assert!(f.iter().any(|(c, _, _)| c == "rto-exceeded"), "{f:?}");

    // A backup and its drill: recorded in the manifest; both objectives met.
    let first = create(&p);
    let (code, d) = drill(&p);
    assert_eq!(code, Some(0), "{d:#}");
    assert_eq!(d["id"], first.as_str());
    assert_eq!(d["drill"]["passed"], true, "{d:#}");
    assert!(d["drill"]["seconds"].as_f64().unwrap() > 0.0);
    let manifest_path = p.path(&format!("state/backups/local/{first}.json"));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["drill"]["passed"], true, "{manifest:#}");
    let (code, st) = status(&p);
    assert_eq!(code, Some(0), "{st:#}");
    assert_eq!(st["verified"][0], first.as_str());
    assert_eq!(st["rpo"][1], true);
    assert_eq!(st["rto"][1], true);
    assert!(findings(&p).is_empty());

    // A corrupted backup: its drill fails and is recorded; the newest verified backup is
    // still the first, but the last drill failed, so the RTO is not met.
    let second = create(&p);
    assert_ne!(first, second);
    let data = p.path(&format!("state/backups/local/{second}.backup"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let (code, d) = drill(&p);
    assert_eq!(code, Some(1), "{d:#}");
    assert_eq!(d["drill"]["passed"], false, "{d:#}");
    assert!(
        d["drill"]["detail"]
            .as_str()
            .unwrap()
            .contains("restore failed"),
        "{d:#}"
    );
    let (code, st) = status(&p);
    assert_eq!(code, Some(1), "{st:#}");
    assert_eq!(st["verified"][0], first.as_str());
    assert_eq!(st["last_drill"][0], second.as_str());
    assert_eq!(st["last_drill"][2], false);
    assert_eq!(st["rpo"][1], true);
    assert_eq!(st["rto"][1], false);
    let f = findings(&p);
    assert!(
        f.iter()
            .any(|(c, _, m)| c == "rto-exceeded" && m.contains("failed")),
        "{f:?}"
    );
    let human = p.run(&["backup", "status", "--env", "local"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("rto 15 min") && text.contains("NOT MET"),
        "{text}"
    );

    // The first backup two hours old: past the RPO; a strict environment will not deploy.
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let two_hours_ago = m["started_ms"].as_i64().unwrap() - 2 * 3600 * 1000;
    m["started_ms"] = two_hours_ago.into();
    std::fs::write(&manifest_path, serde_json::to_string(&m).unwrap()).unwrap();
    let (_, st) = status(&p);
    assert_eq!(st["rpo"][1], false, "{st:#}");
    let f = findings(&p);
    assert!(
        f.iter()
            .any(|(c, _, m)| c == "rpo-exceeded" && m.contains(&first) && m.contains("2 h")),
        "{f:?}"
    );
    p.edit_config(
        "[environments.local]\n",
        "[environments.local]\nstrict = true\n",
    );
    let (code, v) = p.deploy();
    assert_eq!(code, 1, "{v:#}");
    let validate = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "validate")
        .unwrap();
    assert_eq!(validate["status"], "failed", "{validate:#}");
    assert!(
        format!("{v}").contains("rpo-exceeded") || format!("{v}").contains("recovery point"),
        "{v:#}"
    );
}
