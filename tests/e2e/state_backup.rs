//! "We lost the deploy host": the agent's own state is backed up, encrypted, to a real S3
//! server; a fresh host with only agent.toml, the key and the bucket's credentials rebuilds
//! it with `state restore`, and its status and audit log match the old host's, the chain
//! verified to the head the backup recorded.

use deploy_agent_tests::s3::{self, S3Server};
use serde_json::Value;

use crate::project::{Project, stderr};

const KEY: &str = "6b1c6f1de1f0e3a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";
const OTHER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn tables(port: u16) -> String {
    format!(
        r#"
{s3_table}

[agent.state_backup]
key = "${{env:STATE_BACKUP_KEY}}"
offsite = "s3-backups"
keep_last = 2
"#,
        s3_table = s3::backup_plugin_table(port),
    )
}

fn run(p: &Project, key: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = tokio::task::block_in_place(|| {
        p.command(args)
            .env("S3_SECRET", s3::SECRET_KEY)
            .env("STATE_BACKUP_KEY", key)
            .output()
            .unwrap()
    });
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, stderr(&out))
}

/// The store's side of `status`: what a lost host must get back.
fn recorded(status: &Value) -> Value {
    serde_json::json!({
        "live": status["live"]["id"],
        "last": status["last"]["id"],
        "last_status": status["last"]["status"],
        "steps": status["steps"].as_array().map(|s| s.len()),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_host_is_rebuilt_from_its_off_site_state_backup() {
    let server = tokio::task::block_in_place(S3Server::start);
    let old = Project::new("", &tables(server.port));
    let (code, v) = tokio::task::block_in_place(|| old.deploy());
    assert_eq!(code, 0, "{v:#}");
    let (code, status, err) = run(&old, KEY, &["status", "--env", "local", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!status["live"]["id"].is_null(), "{status:#}");

    // Two backups (keep_last = 2 keeps both); the second's head is the one to get back.
    let (code, first, err) = run(&old, KEY, &["state", "backup", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, taken, err) = run(&old, KEY, &["state", "backup", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(first["id"], taken["id"]);
    let id = taken["id"].as_str().unwrap().to_string();
    let head = taken["audit_head"].as_str().unwrap().to_string();
    let entries = taken["audit_entries"].as_u64().unwrap() as usize;
    assert_eq!(
        taken["offsite"],
        format!("agent.state/{id}.backup"),
        "{taken:#}"
    );
    let (_, old_audit, _) = run(
        &old,
        KEY,
        &["audit", "list", "--limit", "500", "--output", "json"],
    );

    // Off-site: the dump, its manifest and the sealed sidecar; neither the dump nor the
    // sidecar shows agent.toml or the store's contents in clear.
    let keys = tokio::task::block_in_place(|| server.keys("agent.state/"));
    for ext in ["backup", "json", "meta"] {
        assert!(
            keys.contains(&format!("agent.state/{id}.{ext}")),
            "{keys:?}"
        );
    }
    for ext in ["backup", "meta"] {
        let raw = tokio::task::block_in_place(|| {
            server.boto3(&format!(
                "b = s3.get_object(Bucket='{}', Key='agent.state/{id}.{ext}')['Body'].read()\nprint(json.dumps([b's3-backups' in b, b'schedule.' in b or b'deploy' in b, len(b)]))",
                s3::BUCKET
            ))
        });
        assert_eq!(
            (&raw[0], &raw[1]),
            (&Value::Bool(false), &Value::Bool(false)),
            "{ext}: {raw}"
        );
    }

    // The new host: the same agent.toml (from the repository), no state at all.
    let new = Project::new("", &tables(server.port));
    assert!(!new.path("state/state.db").exists());
    // The wrong key gets nothing, and says why (on a host of its own).
    let stranger = Project::new("", &tables(server.port));
    let (code, _, err) = run(&stranger, OTHER_KEY, &["state", "restore", "latest"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("right key"), "{err}");

    let (code, restored, err) = run(
        &new,
        KEY,
        &["state", "restore", "latest", "--output", "json"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        restored["id"],
        id.as_str(),
        "the newest off-site backup: {restored:#}"
    );
    assert_eq!(restored["fetched"], true);
    assert_eq!(restored["recorded_head"], head.as_str());
    assert_eq!(
        restored["audit"]["problems"],
        serde_json::json!([]),
        "{restored:#}"
    );
    assert_eq!(
        restored["audit"]["entries"].as_u64().unwrap() as usize,
        entries
    );

    // Its status is the old host's; its audit log is the old one up to the recorded head,
    // then the restore itself, and the chain verifies.
    let (_, new_status, err) = run(&new, KEY, &["status", "--env", "local", "--output", "json"]);
    assert_eq!(recorded(&new_status), recorded(&status), "{err}");
    let (_, new_audit, _) = run(
        &new,
        KEY,
        &["audit", "list", "--limit", "500", "--output", "json"],
    );
    let (old_entries, new_entries) = (old_audit.as_array().unwrap(), new_audit.as_array().unwrap());
    assert_eq!(new_entries.len(), entries + 1);
    assert_eq!(&new_entries[..entries], &old_entries[..entries]);
    assert_eq!(new_entries[entries - 1]["hash"], head.as_str());
    assert_eq!(new_entries[entries]["action"], "state.restored");
    assert_eq!(new_entries[entries]["prev_hash"], head.as_str());
    let (code, verify, err) = run(&new, KEY, &["audit", "verify", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(verify["problems"], serde_json::json!([]));

    // Once the host has history, a restore over it must be asked for.
    let (code, _, err) = run(&new, KEY, &["state", "restore", "latest"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--replace"), "{err}");
}
