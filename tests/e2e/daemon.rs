//! The daemon over HTTP: `deploy-agent serve` as a child process, driven through its API,
//! its webhooks and its event streams; every call and answer checked against the OpenAPI
//! document it serves.

use std::time::Duration;

use deploy_agent_tests::daemon::{Daemon, Response, github_signature, token_entry};
use deploy_agent_tests::openapi::Spec;
use serde_json::{Value, json};

use crate::project::Project;

const WAIT: Duration = Duration::from_secs(60);

struct Tokens {
    deployer: String,
    approver: String,
    reader: String,
    outsider: String,
    admin: String,
}

/// A project with an approval gate before promotion on `local`, a second environment `other`,
/// and five tokens.
fn project(extra: &str) -> (Project, Tokens) {
    project_with("", "", extra)
}

fn project_with(env_keys: &str, tables_before: &str, extra: &str) -> (Project, Tokens) {
    let (deployer, d) = token_entry("deployer", "deploy", Some(&["local"]));
    let (approver, a) = token_entry("approver", "approve", None);
    let (reader, r) = token_entry("reader", "read", None);
    let (outsider, o) = token_entry("outsider", "deploy", Some(&["other"]));
    let (admin, ad) = token_entry("admin", "admin", None);
    let tables = format!(
        r#"
{tables_before}
[environments.local.approval]
before = "promote"

[environments.other]
extends = "local"
[environments.other.target]
config = {{ root = "/srv/other" }}
[environments.other.database]
url = "sqlite:other.db"
migrations = "migrations"

[server]
grace_period_ms = 20000
{extra}

{d}
{a}
{r}
{o}
{ad}"#
    );
    let p = Project::new(env_keys, &tables);
    (
        p,
        Tokens {
            deployer,
            approver,
            reader,
            outsider,
            admin,
        },
    )
}

async fn spec(d: &Daemon) -> Spec {
    let r = d
        .request("GET", "/v1/openapi.json", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    Spec::from_value(doc)
}

fn kinds(events: &[deploy_agent_tests::daemon::Sse]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_watch_approve_and_roll_back_over_http() {
    // A notifier (the SDK's webhook example) posting to a local server: the event streams
    // must carry exactly what the notifiers get.
    let hook = deploy_agent_tests::http::TestServer::start(
        deploy_agent_tests::http::Behaviour::Respond(200, "ok".into()),
    )
    .await;
    let plugin = format!(
        "[plugins.hook]\npath = {:?}\n[plugins.hook.policy]\nallowed_hosts = [\"127.0.0.1\"]\nallow_ip_ranges = [\"127.0.0.0/8\"]\n[plugins.hook.config]\nurl = {:?}\n",
        deploy_agent_tests::fixtures::WEBHOOK,
        hook.url("127.0.0.1", "/hook")
    );
    let (p, t) = project_with("notifiers = [\"hook\"]", &plugin, "");
    let d = Daemon::start(&p.path(""), &[]).await;
    let spec = spec(&d).await;

    // The document describes every route the daemon serves.
    let paths: Vec<String> = spec_paths(&d).await;
    for route in [
        "/v1/deployments",
        "/v1/runs/{id}",
        "/v1/runs/{id}/approve",
        "/v1/runs/{id}/reject",
        "/v1/runs/{id}/events",
        "/v1/environments",
        "/v1/environments/{env}/runs",
        "/v1/environments/{env}/releases",
        "/v1/environments/{env}/rollback",
        "/v1/environments/{env}/events",
        "/v1/audit",
        "/v1/webhooks/github",
        "/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains(&route.to_string()), "{route} not documented");
    }

    // Refusals: no token, a wrong token, the wrong role, the wrong environment. Each says
    // as little as possible, the same way.
    let trigger = json!({"environment": "local", "reason": "first release"});
    let unauthorized = json!({"error": "unauthorized"});
    let forbidden = json!({"error": "forbidden"});
    for (token, status, body) in [
        (None, 401, &unauthorized),
        (Some("dat_not_a_token"), 401, &unauthorized),
        (Some(t.reader.as_str()), 403, &forbidden),
        (Some(t.outsider.as_str()), 403, &forbidden),
    ] {
        let r = d
            .call(&spec, "POST", "/v1/deployments", token, Some(&trigger))
            .await;
        assert_eq!((r.status, r.json()), (status, body.clone()), "{token:?}");
        if status == 401 {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    let unknown_env = d
        .call(
            &spec,
            "POST",
            "/v1/deployments",
            Some(&t.admin),
            Some(&json!({"environment": "nowhere"})),
        )
        .await;
    assert_eq!(unknown_env.status, 404);
    let bad = d
        .call(
            &spec,
            "POST",
            "/v1/deployments",
            Some(&t.deployer),
            Some(&json!({"environment": "local", "colour": "blue"})),
        )
        .await;
    assert_eq!(bad.status, 400, "unknown fields are refused");

    // Trigger; follow the run's event stream; it stops at the approval gate.
    let queued = d
        .call(
            &spec,
            "POST",
            "/v1/deployments",
            Some(&t.deployer),
            Some(&trigger),
        )
        .await;
    assert_eq!(queued.status, 202, "{}", queued.text());
    let run = queued.json()["id"].as_str().unwrap().to_string();
    let mut stream = d
        .events(&format!("/v1/runs/{run}/events"), &t.reader, None)
        .await;
    assert_eq!(stream.status, 200);
    let before = stream.until("approval-requested", WAIT).await;
    let k = kinds(&before);
    assert_eq!(k[0], "started", "{k:?}");
    for stage in ["validate", "backup", "migrate", "deploy", "verify"] {
        assert!(
            before
                .iter()
                .any(|e| e.event.as_deref() == Some("stage-succeeded") && e.data["stage"] == stage),
            "no {stage} in {k:?}"
        );
    }
    assert!(
        before
            .iter()
            .all(|e| e.data["deployment_id"] == run.as_str())
    );

    // While it waits: its view, and who may decide.
    let view = run_view(&d, &spec, &t.reader, &run).await;
    assert_eq!(view.status, 200);
    let v = view.json();
    assert_eq!(v["status"], "running");
    assert_eq!(v["waiting"][0]["gate"], "promote");
    let hidden = run_view(&d, &spec, &t.outsider, &run).await;
    assert_eq!(
        hidden.status, 404,
        "a run outside the token's environments is not shown"
    );
    let not_yours = decide(&d, &spec, &t.deployer, &run, "approve", "looks good").await;
    assert_eq!(not_yours.status, 403, "a deployer cannot approve");
    let approved = decide(&d, &spec, &t.approver, &run, "approve", "looks good").await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    assert_eq!(approved.json()["decided_by"], "token:approver");

    // The stream goes on to the end, and then ends by itself.
    let after = stream.until("succeeded", WAIT).await;
    assert!(kinds(&after).contains(&"stage-succeeded".to_string()));
    assert!(
        stream.ends(Duration::from_secs(10)).await,
        "the run's stream ends with the run"
    );
    let ids: Vec<u64> = before.iter().chain(&after).filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    // The queue records the end just after the last event.
    let mut done = Value::Null;
    for _ in 0..100 {
        done = run_view(&d, &spec, &t.reader, &run).await.json();
        if done["queue"]["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["queue"]["state"], "done");
    assert_eq!(done["queue"]["outcome"], "succeeded");
    assert_eq!(done["deployment"]["actor"], "token:deployer");
    let v1 = done["deployment"]["release_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(p.current().unwrap(), format!("releases/{v1}"));

    // A second release, watched on the environment's stream this time.
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let mut env_stream = d
        .events("/v1/environments/local/events", &t.reader, None)
        .await;
    let second = d
        .call(
            &spec,
            "POST",
            "/v1/deployments",
            Some(&t.deployer),
            Some(&json!({"environment": "local", "reason": "v2"})),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let got = env_stream.until("approval-requested", WAIT).await;
    assert!(
        got.iter()
            .all(|e| e.data["deployment_id"] == second.as_str())
    );
    decide(&d, &spec, &t.approver, &second, "approve", "looks good").await;
    env_stream.until("succeeded", WAIT).await;
    assert_ne!(p.current().unwrap(), format!("releases/{v1}"));

    // Emergency rollback over the API, seen on the environment's stream.
    let rb = d
        .call(
            &spec,
            "POST",
            "/v1/environments/local/rollback",
            Some(&t.deployer),
            Some(&json!({"reason": "v2 is broken"})),
        )
        .await;
    assert_eq!(rb.status, 200, "{}", rb.text());
    assert_eq!(rb.json()["record"]["status"], "succeeded");
    assert_eq!(rb.json()["record"]["actor"], "token:deployer");
    assert_eq!(p.current().unwrap(), format!("releases/{v1}"));
    let rolled = env_stream.until("rolled-back", WAIT).await;
    assert!(
        rolled.last().unwrap().data["summary"]
            .as_str()
            .unwrap()
            .contains("v2 is broken")
            || rolled.last().unwrap().data["detail"]
                .as_str()
                .unwrap_or("")
                .contains("v2 is broken")
    );

    // Listings.
    let runs = d
        .call(
            &spec,
            "GET",
            "/v1/environments/local/runs?limit=10",
            Some(&t.reader),
            None,
        )
        .await
        .json();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    let releases = d
        .call(
            &spec,
            "GET",
            "/v1/environments/local/releases",
            Some(&t.reader),
            None,
        )
        .await
        .json();
    assert_eq!(
        releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == "live")
            .unwrap()["id"],
        v1.as_str()
    );
    let envs = d
        .call(&spec, "GET", "/v1/environments", Some(&t.outsider), None)
        .await
        .json();
    assert_eq!(
        envs.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].clone())
            .collect::<Vec<_>>(),
        [json!("other")],
        "a token sees only its environments"
    );

    // Every mutating call is in the audit log under its token's name.
    let audit = d
        .call(
            &spec,
            "GET",
            "/v1/audit?environment=local&limit=200",
            Some(&t.reader),
            None,
        )
        .await
        .json();
    let has = |actor: &str, action: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action)
    };
    assert!(has("token:deployer", "deploy.queued"));
    assert!(has("token:deployer", "deploy.started"));
    assert!(has("token:approver", "approval.approved"));
    assert!(has("token:deployer", "rollback.app"));
    let limited = d
        .call(&spec, "GET", "/v1/audit", Some(&t.outsider), None)
        .await;
    assert_eq!(limited.status, 403, "a limited token names its environment");

    // Metrics.
    let m = d
        .request("GET", "/metrics", Some(&t.reader), None)
        .await
        .unwrap();
    assert_eq!(m.status, 200);
    let text = m.text();
    for line in [
        "deploy_agent_deployments_total{environment=\"local\",outcome=\"succeeded\"} 2",
        "deploy_agent_rollbacks_total{environment=\"local\",initiator=\"operator\",outcome=\"succeeded\"} 1",
        "deploy_agent_time_to_recovery_seconds_count{environment=\"local\"} 1",
        "deploy_agent_plugin_call_duration_seconds_count{plugin=\"local\",op=\"deploy\"} 2",
        "deploy_agent_queue_depth{environment=\"local\"} 0",
        "deploy_agent_stage_duration_seconds_count{environment=\"local\",stage=\"approve\"} 2",
        // The first deploy backed up before migrating; no drill has run.
        "deploy_agent_backup_age_seconds{environment=\"local\"} ",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    assert!(
        !text.contains("deploy_agent_restore_drill_seconds{"),
        "{text}"
    );
    assert_eq!(
        d.request("GET", "/metrics", None, None)
            .await
            .unwrap()
            .status,
        401
    );
    // Nothing of a token's value anywhere in the daemon's log.
    for tok in [&t.deployer, &t.approver, &t.reader, &t.outsider, &t.admin] {
        assert!(!d.log().contains(tok.as_str()));
    }
}

/// Queues a run as `token` (before the test fetched the document: unchecked); its id.
async fn queue_run(d: &Daemon, token: &str, body: Value) -> String {
    let r = d
        .request("POST", "/v1/deployments", Some(token), Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// `GET /v1/runs/{run}` as `token`, checked against the document.
async fn run_view(d: &Daemon, spec: &Spec, token: &str, run: &str) -> Response {
    d.call(spec, "GET", &format!("/v1/runs/{run}"), Some(token), None)
        .await
}

/// `POST /v1/runs/{run}/approve` (or `reject`) as `token`, checked against the document.
async fn decide(
    d: &Daemon,
    spec: &Spec,
    token: &str,
    run: &str,
    decision: &str,
    reason: &str,
) -> Response {
    let body = json!({ "reason": reason });
    d.call(
        spec,
        "POST",
        &format!("/v1/runs/{run}/{decision}"),
        Some(token),
        Some(&body),
    )
    .await
}

async fn spec_paths(d: &Daemon) -> Vec<String> {
    let doc = d
        .request("GET", "/v1/openapi.json", None, None)
        .await
        .unwrap()
        .json();
    doc["paths"].as_object().unwrap().keys().cloned().collect()
}

fn push(branch: &str, sha: &str, pushed_at: i64) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "deleted": false,
        "repository": {"full_name": "acme/shop", "pushed_at": pushed_at},
        "pusher": {"name": "alice"},
        "sender": {"login": "alice"},
        "head_commit": {"id": sha, "message": "ship it"}
    })
    .to_string()
    .into_bytes()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_deploy_and_forged_ones_are_refused() {
    const SECRET: &str = "webhook-secret-for-tests-only";
    let (p, t) = project(
        r#"
[server.github]
secret = "${env:TEST_GITHUB_SECRET}"
replay_window_ms = 300000
[[server.github.routes]]
repository = "acme/shop"
branch = "main"
environment = "other"
"#,
    );
    let d = Daemon::start(&p.path(""), &[("TEST_GITHUB_SECRET", SECRET)]).await;
    let spec = spec(&d).await;
    let sha = "4f2c1d0e9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
    let send = |body: Vec<u8>, sig: Option<String>, event: &str, delivery: &str| {
        let mut h = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-github-event".to_string(), event.to_string()),
            ("x-github-delivery".to_string(), delivery.to_string()),
        ];
        if let Some(s) = sig {
            h.push(("x-hub-signature-256".to_string(), s));
        }
        let d = &d;
        async move {
            d.raw("POST", "/v1/webhooks/github", None, &h, Some(&body))
                .await
                .unwrap()
        }
    };
    let body = push("main", sha, now_s());

    // Forged: no signature, another secret's, a tampered body, a stale push.
    let r = send(body.clone(), None, "push", "d-1").await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "unauthorized"}))
    );
    let r = send(
        body.clone(),
        Some(github_signature("guess", &body)),
        "push",
        "d-2",
    )
    .await;
    assert_eq!(r.status, 401);
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'4').unwrap();
    tampered[at] = b'5';
    let r = send(
        tampered,
        Some(github_signature(SECRET, &body)),
        "push",
        "d-3",
    )
    .await;
    assert_eq!(r.status, 401);
    let stale = push("main", sha, now_s() - 3600);
    let r = send(
        stale.clone(),
        Some(github_signature(SECRET, &stale)),
        "push",
        "d-4",
    )
    .await;
    assert_eq!(r.status, 401, "a push older than the replay window");

    // Genuine: queued and deployed (no approval gate on `other`? it inherits local's: approve).
    let r = send(
        body.clone(),
        Some(github_signature(SECRET, &body)),
        "push",
        "d-5",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let problems = spec.check_response("POST", "/v1/webhooks/github", r.status, &r.body);
    assert!(problems.is_empty(), "{problems:?}");
    let runs = r.json()["runs"].clone();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    let run = runs[0].as_str().unwrap().to_string();

    // The same delivery again: a replay.
    let r = send(
        body.clone(),
        Some(github_signature(SECRET, &body)),
        "push",
        "d-5",
    )
    .await;
    assert_eq!(r.status, 401, "a replayed delivery id");
    // Another branch, and a ping: signed, nothing deployed.
    let dev = push("dev", sha, now_s());
    let r = send(
        dev.clone(),
        Some(github_signature(SECRET, &dev)),
        "push",
        "d-6",
    )
    .await;
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (200, json!("ignored"))
    );
    let ping = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let r = send(
        ping.clone(),
        Some(github_signature(SECRET, &ping)),
        "ping",
        "d-7",
    )
    .await;
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!("pong")));

    // The run: version from the commit, actor from the sender, approved and live.
    let mut s = d
        .events(&format!("/v1/runs/{run}/events"), &t.reader, None)
        .await;
    s.until("approval-requested", WAIT).await;
    decide(&d, &spec, &t.approver, &run, "approve", "ok").await;
    s.until("succeeded", WAIT).await;
    let v = run_view(&d, &spec, &t.reader, &run).await.json();
    assert_eq!(v["deployment"]["version"], &sha[..12]);
    assert_eq!(v["deployment"]["actor"], "github:alice");
    // Only the genuine delivery queued anything.
    let all = d
        .call(
            &spec,
            "GET",
            "/v1/environments/other/runs",
            Some(&t.reader),
            None,
        )
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 1);
    let m = d
        .request("GET", "/metrics", Some(&t.reader), None)
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("deploy_agent_webhooks_total{source=\"github\",outcome=\"refused\"} 5"),
        "{m}"
    );
    assert!(!d.log().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_resumes_its_run_on_restart() {
    let (p, t) = project("");
    // Killed (SIGKILL, by the failpoint) right after the release is staged.
    let mut d = Daemon::start(&p.path(""), &[("DEPLOY_AGENT_FAILPOINT", "after:deploy")]).await;
    let run = queue_run(&d, &t.deployer, json!({"environment": "local"})).await;
    let queued = queue_run(
        &d,
        &t.deployer,
        json!({"environment": "local", "version": "second"}),
    )
    .await;
    assert_eq!(d.wait(), None, "killed by a signal");

    // Restarted: the run resumes under its id, then the queued one runs.
    let d = Daemon::start(&p.path(""), &[]).await;
    let spec = spec(&d).await;
    let mut s = d
        .events(&format!("/v1/runs/{run}/events"), &t.reader, None)
        .await;
    s.until("approval-requested", WAIT).await;
    decide(&d, &spec, &t.approver, &run, "approve", "ok").await;
    s.until("succeeded", WAIT).await;
    let v = run_view(&d, &spec, &t.reader, &run).await.json();
    assert_eq!(v["status"], "succeeded");
    assert!(v["deployment"]["resumed_from"].is_string(), "{v:#}");
    let deploys = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stage"] == "deploy")
        .count();
    assert_eq!(
        deploys, 2,
        "the deploy step was journaled, interrupted, and done again: {v:#}"
    );
    let mut s2 = d
        .events(&format!("/v1/runs/{queued}/events"), &t.reader, None)
        .await;
    s2.until("approval-requested", WAIT).await;
    decide(&d, &spec, &t.approver, &queued, "reject", "not today").await;
    s2.until("failed", WAIT).await;
    let runs = d
        .call(
            &spec,
            "GET",
            "/v1/environments/local/runs",
            Some(&t.reader),
            None,
        )
        .await
        .json();
    let order: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [run.as_str(), queued.as_str()],
        "each once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_suspends_a_waiting_run_and_the_next_start_resumes_it() {
    let (p, t) = project("");
    let notify_dir = tempfile::tempdir().unwrap();
    let sock_path = notify_dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sock_env = sock_path.to_str().unwrap().to_string();
    let mut d = Daemon::start(
        &p.path(""),
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "400000")],
    )
    .await;
    let mut got = String::new();
    let mut buf = [0u8; 512];
    // READY=1 when serving, then WATCHDOG=1 pings (every 200 ms: half of WATCHDOG_USEC).
    while !got.contains("WATCHDOG=1") {
        let n = sock.recv(&mut buf).expect("a notification");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(got.starts_with("READY=1"), "{got}");

    let run = queue_run(&d, &t.deployer, json!({"environment": "local"})).await;
    let second = queue_run(
        &d,
        &t.deployer,
        json!({"environment": "local", "version": "next"}),
    )
    .await;
    let mut s = d
        .events(&format!("/v1/runs/{run}/events"), &t.reader, None)
        .await;
    s.until("approval-requested", WAIT).await;

    // SIGTERM: a clean exit, STOPPING=1, the stream closed.
    assert_eq!(d.signal("TERM"), Some(0), "{}", d.log());
    let mut stopping = false;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert!(s.ends(Duration::from_secs(5)).await);
    let status = p.json(&["status", "--env", "local"]);
    assert_eq!(status["last"]["id"], run.as_str());
    assert_eq!(
        status["last"]["status"], "running",
        "journaled, to be resumed"
    );
    assert!(status["lock"].is_null(), "the lock was released");
    let audit = p.json(&["audit", "list", "--env", "local"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "deploy.suspended" && e["subject"] == run.as_str())
    );

    // The next start resumes it at its gate; the queued run follows.
    let d = Daemon::start(&p.path(""), &[]).await;
    let spec = spec(&d).await;
    let mut s = d
        .events(&format!("/v1/runs/{run}/events"), &t.reader, None)
        .await;
    s.until("approval-requested", WAIT).await;
    decide(&d, &spec, &t.approver, &run, "approve", "ok").await;
    s.until("succeeded", WAIT).await;
    let mut s2 = d
        .events(&format!("/v1/runs/{second}/events"), &t.reader, None)
        .await;
    s2.until("approval-requested", WAIT).await;
    let v = run_view(&d, &spec, &t.reader, &run).await.json();
    assert_eq!(v["status"], "succeeded");
    let cancel = d
        .call(
            &spec,
            "DELETE",
            &format!("/v1/runs/{second}"),
            Some(&t.deployer),
            None,
        )
        .await;
    assert_eq!(cancel.status, 409, "a running run is not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_configured_certificate() {
    let ca = deploy_agent_tests::standin::TestCa::new();
    let (p, t) = project("tls = { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }");
    std::fs::create_dir_all(p.path("tls")).unwrap();
    std::fs::write(p.path("tls/cert.pem"), &ca.server_pem).unwrap();
    std::fs::write(p.path("tls/key.pem"), &ca.server_key_pem).unwrap();
    let d = Daemon::start_with(&p.path(""), &[], Some(&ca.ca_pem)).await;
    let r = d
        .request("GET", "/v1/environments", Some(&t.reader), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        d.request("GET", "/v1/environments", None, None)
            .await
            .unwrap()
            .status,
        401
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
    assert!(!back.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn server_settings_are_checked_with_file_line_and_hint() {
    let text = format!(
        r#"[plugins.local]
path = {local:?}

[environments.local.target]
plugin = "local"

[server]
listen = "localhost"

[[server.tokens]]
name = "ci"
sha256 = "not-a-hash"
role = "superuser"
environments = ["prod"]

[server.github]
secret = "plain-text-secret"
"#,
        local = deploy_agent_tests::fixtures::LOCAL
    );
    let errors = deploy_agent::config::Config::parse(std::path::Path::new("/x/agent.toml"), &text)
        .unwrap_err()
        .0;
    let at = |needle: &str| {
        errors
            .iter()
            .find(|e| e.message.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {errors:#?}"))
    };
    assert_eq!(at("not an address").line, 8);
    assert_eq!(at("64 hexadecimal").line, 12);
    assert!(
        at("64 hexadecimal")
            .to_string()
            .contains("deploy-agent token new")
    );
    assert_eq!(at("unknown role").line, 13);
    assert_eq!(at("no environment `prod`").line, 14);
    assert_eq!(at("must be a reference").line, 17);
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(
        deploy_agent_tests::repo_root().join("deploy/systemd/deploy-agent.service"),
    )
    .unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "NotifyAccess=main",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(line), "{line}");
    }
    // As installed, with the binary where this build put it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/deploy-agent",
            deploy_agent_tests::bin().to_str().unwrap(),
        ),
    )
    .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) runs");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // systemd's own exposure score: 0 (locked down) to 10 (unprotected); fail above 2.
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "{text}");
    assert!(
        text.contains("Overall exposure level for deploy-agent.service: 1."),
        "{text}"
    );
}

/// The load test's checks (the figures are `make bench-daemon`'s): 500 triggers across 50
/// environments from 8 concurrent clients; every run once, in order, all succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_triggers_across_fifty_environments_none_lost_none_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let token = deploy_agent_tests::daemon::load_project(dir.path(), 50);
    let d = Daemon::start(
        dir.path(),
        &[("DEPLOY_AGENT_LOG", "warn,deploy_agent::server=info")],
    )
    .await;
    let r = deploy_agent_tests::daemon::load(&d, &token, 50, 10, 8, Duration::from_secs(900)).await;
    assert_eq!(r.triggers, 500);
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (p, t) = project("");
    let d = Daemon::start(&p.path(""), &[]).await;
    // Half a request head, then silence: the daemon closes the connection (10 s header
    // timeout) instead of holding it forever.
    let mut tcp = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    tcp.write_all(b"GET /v1/environments HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was held open");
    // And it still serves everyone else.
    let r = d
        .request("GET", "/v1/environments", Some(&t.reader), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
