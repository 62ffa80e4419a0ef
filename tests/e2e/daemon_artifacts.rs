//! The daemon's artifact paths: an artifact named through the API must lie under a root the
//! environment grants; the digest walk refuses FIFOs and follows links that stay inside;
//! SIGTERM ends the daemon within its grace period whatever a run is reading.

use std::time::Duration;

use deploy_agent_tests::daemon::{Daemon, token_entry};
use serde_json::{Value, json};

use crate::project::Project;

const WAIT: Duration = Duration::from_secs(60);

/// A project whose `local` environment grants the artifact root `site`, with a deployer
/// and a reader token.
fn project(grace_ms: u64) -> (Project, String, String) {
    let (deployer, d) = token_entry("deployer", "deploy", Some(&["local"]));
    let (reader, r) = token_entry("reader", "read", None);
    let p = Project::new(
        "",
        &format!("[server]\ngrace_period_ms = {grace_ms}\n\n{d}\n{r}"),
    );
    p.edit_config(
        "[environments.local.artifact]\npath = \"site\"",
        "[environments.local.artifact]\npath = \"site\"\nroots = [\"site\"]",
    );
    (p, deployer, reader)
}

async fn trigger(d: &Daemon, token: &str, artifact: &str) -> (u16, Value) {
    let r = d
        .request(
            "POST",
            "/v1/deployments",
            Some(token),
            Some(&json!({"environment": "local", "artifact": artifact})),
        )
        .await
        .unwrap();
    (r.status, r.json())
}

/// Polls the run until it has ended.
async fn ended(d: &Daemon, token: &str, run: &str) -> Value {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let v = d
            .request("GET", &format!("/v1/runs/{run}"), Some(token), None)
            .await
            .unwrap()
            .json();
        if !matches!(v["status"].as_str(), Some("queued" | "running")) {
            return v;
        }
        assert!(tokio::time::Instant::now() < until, "run never ended: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_artifacts_stay_under_the_roots_and_special_files_are_refused() {
    let (p, deployer, reader) = project(5000);
    // Inside the root: a release whose `static` is a link to a directory inside it, and one
    // holding a FIFO. Outside: a link from inside the root to the project's migrations.
    std::fs::create_dir_all(p.path("site/v2/assets")).unwrap();
    std::fs::write(p.path("site/v2/index.html"), "<h1>v2</h1>").unwrap();
    std::fs::write(p.path("site/v2/assets/app.css"), "b{}").unwrap();
    std::os::unix::fs::symlink("assets", p.path("site/v2/static")).unwrap();
    std::fs::create_dir_all(p.path("site/piped")).unwrap();
    std::fs::write(p.path("site/piped/index.html"), "x").unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(p.path("site/piped/wedge"))
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink(p.path("migrations"), p.path("site/elsewhere")).unwrap();

    let d = Daemon::start(&p.path(""), &[]).await;
    for outside in [
        "/root".to_string(),
        p.path("site/../migrations").display().to_string(),
        p.path("site/elsewhere").display().to_string(),
        "site/v2".to_string(),
    ] {
        let (status, body) = trigger(&d, &deployer, &outside).await;
        assert_eq!(status, 422, "{outside}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("not under any of the environment's artifact roots"),
            "{body}"
        );
    }
    let audit = p.json(&["audit", "list", "--env", "local"]);
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "deploy.refused")
        .count();
    assert_eq!(refused, 4, "{audit}");

    // The FIFO: the run fails at once, saying why; the queue goes on.
    let (status, body) = trigger(&d, &deployer, &p.path("site/piped").display().to_string()).await;
    assert_eq!(status, 202, "{body}");
    let v = ended(&d, &reader, body["id"].as_str().unwrap()).await;
    assert!(v.to_string().contains("is a FIFO"), "{v}");
    // The release with a directory link inside it deploys, the link's files included.
    let (status, body) = trigger(&d, &deployer, &p.path("site/v2").display().to_string()).await;
    assert_eq!(status, 202, "{body}");
    let v = ended(&d, &reader, body["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let current = p.path("sites/local/current");
    assert!(current.join("static/app.css").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_daemon_while_a_run_reads_a_huge_artifact() {
    let (p, deployer, reader) = project(1500);
    // A 1 TiB sparse file: minutes of reading for the digest, no disk used.
    let huge = std::fs::File::create(p.path("site/huge.bin")).unwrap();
    huge.set_len(1 << 40).unwrap();
    drop(huge);
    let mut d = Daemon::start(&p.path(""), &[]).await;
    let (status, body) = trigger(&d, &deployer, &p.path("site").display().to_string()).await;
    assert_eq!(status, 202, "{body}");
    let run = body["id"].as_str().unwrap().to_string();
    // Running: the worker is inside the digest.
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let v = d
            .request("GET", &format!("/v1/runs/{run}"), Some(&reader), None)
            .await
            .unwrap()
            .json();
        if v["status"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The API still answers while the digest runs (no runtime worker is blocked).
    let r = d
        .request("GET", "/v1/environments", Some(&reader), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let code = d
        .signal_within("TERM", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert_eq!(code, Some(0), "{}", d.log());

    // As kill -9 would leave it: the next start runs it again (here, without the huge file).
    std::fs::remove_file(p.path("site/huge.bin")).unwrap();
    let d = Daemon::start(&p.path(""), &[]).await;
    let v = ended(&d, &reader, &run).await;
    assert_eq!(v["status"], "succeeded", "{v}");
}
