//! The CLI in remote mode (`--server`) against a real daemon: the same output as on the host,
//! human and JSON; `deploy --follow` and `runs follow` streaming a run to its end; remote
//! approve and rollback audited with the token's name.

use std::process::Output;
use std::time::Duration;

use deploy_agent_tests::daemon::{Daemon, token_entry};
use serde_json::Value;

use crate::project::{Project, stderr};

struct Remote {
    p: Project,
    deployer: String,
    approver: String,
    reader: String,
}

/// A project with an approval gate on `gated` (extends `local`), three tokens, and a daemon
/// serving it.
fn remote_project() -> Remote {
    let (deployer, d) = token_entry("deployer", "deploy", None);
    let (approver, a) = token_entry("approver", "approve", None);
    let (reader, r) = token_entry("reader", "read", None);
    let p = Project::gated(&[&d, &a, &r], 1500);
    Remote {
        p,
        deployer,
        approver,
        reader,
    }
}

impl Remote {
    fn remote(&self, d: &Daemon, token: &str, args: &[&str]) -> Output {
        let mut cmd = self.p.command(args);
        cmd.env("DEPLOY_AGENT_SERVER", format!("http://{}", d.addr))
            .env("DEPLOY_AGENT_TOKEN", token);
        cmd.output().unwrap()
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_remote_cli_prints_what_the_host_cli_prints_human_and_json() {
    let r = remote_project();
    assert!(r.p.run(&["deploy", "--env", "local"]).status.success());
    std::fs::write(r.p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    assert!(r.p.run(&["deploy", "--env", "local"]).status.success());
    let d = Daemon::start(&r.p.path(""), &[]).await;
    let run = r.p.json(&["history", "--env", "local"])[0]["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        vec!["status", "--env", "local"],
        vec!["history", "--env", "local"],
        vec!["history", "--env", "local", "--id", &run],
        vec!["releases", "--env", "local"],
        vec!["audit", "list", "-e", "local"],
        vec!["audit", "verify"],
    ] {
        for json in [false, true] {
            let mut args = args.clone();
            if json {
                args.extend(["--output", "json"]);
            }
            let here = r.p.run(&args);
            let there = r.remote(&d, &r.reader, &args);
            assert!(here.status.success(), "{args:?}: {}", stderr(&here));
            assert!(
                there.status.success(),
                "{args:?} remote: {}",
                stderr(&there)
            );
            assert!(!text(&here).is_empty());
            assert_eq!(text(&here), text(&there), "{args:?}");
        }
    }
    // An unknown environment is a usage error there too, before anything is printed.
    let out = r.remote(&d, &r.reader, &["status", "--env", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("no environment `nope` on the daemon"));
    // No token: refused, with how to give one.
    let mut cmd = r.p.command(&["status", "--env", "local"]);
    cmd.env("DEPLOY_AGENT_SERVER", format!("http://{}", d.addr))
        .env_remove("DEPLOY_AGENT_TOKEN");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("DEPLOY_AGENT_TOKEN"),
        "{}",
        stderr(&out)
    );
    // A command that only runs on the host says so.
    let out = r.remote(&d, &r.reader, &["backup", "list", "--env", "local"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("deploy host only"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_follow_and_runs_follow_stream_a_run_to_its_end() {
    let r = remote_project();
    let d = Daemon::start(&r.p.path(""), &[]).await;
    let out = r.remote(
        &d,
        &r.deployer,
        &["deploy", "--env", "local", "--follow", "--reason", "remote"],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", stderr(&out));
    for stage in [
        "validate", "backup", "migrate", "deploy", "verify", "promote", "watch",
    ] {
        assert!(
            t.lines()
                .any(|l| l.trim_start().starts_with(&format!("✓ {stage}"))),
            "{stage}: {t}"
        );
    }
    // The watch window's progress came over the stream (plain lines: not a terminal).
    assert!(
        t.lines()
            .any(|l| l.contains("… watch") && l.contains("watch window:")),
        "{t}"
    );
    assert!(t.contains("is live on local"), "{t}");

    // A run triggered elsewhere, followed by id; JSON gives the run at its end.
    let queued = r.remote(
        &d,
        &r.deployer,
        &["deploy", "--env", "local", "--output", "json"],
    );
    let v: Value = serde_json::from_slice(&queued.stdout).unwrap();
    let id = v["id"].as_str().unwrap();
    let followed = r.remote(&d, &r.reader, &["runs", "follow", id, "--output", "json"]);
    assert!(followed.status.success(), "{}", stderr(&followed));
    let end: Value = serde_json::from_slice(&followed.stdout).unwrap();
    assert_eq!(end["id"], id);
    assert_eq!(end["status"], "succeeded");
    assert!(end["steps"].as_array().unwrap().len() >= 7);
    // Without a daemon, `runs follow` says what it needs.
    let out = r.p.run(&["runs", "follow", id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--server"));
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_approve_and_rollback_are_audited_with_the_tokens_name() {
    let r = remote_project();
    let d = Daemon::start(&r.p.path(""), &[]).await;
    // A first release, then a second that waits at its gate.
    for reason in ["first", "second"] {
        let out = r.remote(
            &d,
            &r.deployer,
            &[
                "deploy", "--env", "gated", "--output", "json", "--reason", reason,
            ],
        );
        let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut waiting = None;
        for _ in 0..300 {
            let s: Value = serde_json::from_slice(
                &r.remote(
                    &d,
                    &r.reader,
                    &["status", "--env", "gated", "--output", "json"],
                )
                .stdout,
            )
            .unwrap();
            if s["waiting"].as_array().is_some_and(|w| !w.is_empty()) {
                waiting = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(waiting.is_some(), "{reason}: never waited");
        // The approval request tells people the remote command, with this daemon's URL.
        let mut stream = d
            .events(&format!("/v1/runs/{id}/events"), &r.reader, None)
            .await;
        let asked = stream
            .until("approval-requested", Duration::from_secs(60))
            .await;
        let how = asked.last().unwrap().data["detail"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            how.contains(&format!(
                "`deploy-agent --server http://{} approve {id} --reason ...`",
                d.addr
            )),
            "{how}"
        );
        // A reader may not approve; the approver may, and is named in the answer.
        let refused = r.remote(&d, &r.reader, &["approve", &id, "--reason", "no"]);
        assert_eq!(refused.status.code(), Some(1));
        let ok = r.remote(&d, &r.approver, &["approve", &id, "--reason", "looks good"]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        assert_eq!(
            text(&ok).trim(),
            format!("run {id} (promote gate) approved by token:approver")
        );
        let end = r.remote(&d, &r.reader, &["runs", "follow", &id]);
        assert!(end.status.success(), "{}", text(&end));
    }
    let out = r.remote(
        &d,
        &r.deployer,
        &[
            "rollback",
            "--env",
            "gated",
            "--reason",
            "bad release",
            "--yes",
        ],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), stderr(&out));
    assert!(text(&out).contains("succeeded"), "{}", text(&out));
    // The rollback's live view came over the environment's event stream, as a local
    // rollback shows it: its stage, ended, with what is live.
    let live = text(&out);
    assert!(
        live.lines()
            .any(|l| l.trim_start().starts_with("✓ rollback") && l.contains("is live")),
        "{live}"
    );
    let audit = r.p.json(&["audit", "list", "-e", "gated"]);
    let by = |action: &str| -> Vec<String> {
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        by("approval.approved"),
        ["token:approver", "token:approver"]
    );
    assert_eq!(by("rollback.app"), ["token:deployer"], "{audit:#}");
}
