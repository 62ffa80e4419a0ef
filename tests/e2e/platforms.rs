//! The Vercel and Kubernetes plugins, under the real sandbox, against stand-ins that follow
//! the platforms' published APIs. Every request the plugins send is checked against the
//! official OpenAPI documents; one that does not fit fails the test.

use std::path::Path;
use std::time::{Duration, Instant};

use deploy_agent::runtime::{
    Artifact, CallContext, CallError, Event, EventKind, HostPattern, Plugin, PluginError,
    PluginSpec, ReleaseState, Secret, SecretValue, Severity, Sigv4Scope,
};
use deploy_agent_tests::kubernetes::{self, Kubernetes};
use deploy_agent_tests::s3::{self, S3Server};
use deploy_agent_tests::slack::{self, Slack};
use deploy_agent_tests::standin::{Standin, fetch};
use deploy_agent_tests::vercel::Vercel;
use deploy_agent_tests::{fixtures, load, spec};
use serde_json::{Value, json};

use crate::project::{Project, stderr};

const TOKEN: &str = "vc-token-7f3a9c1e5b";
const K8S_TOKEN: &str = "k8s-token-51d0c2a8e4";
const TEAM: &str = "team_standin";

/// A plugin spec allowed to reach `server` only, with `token` bound to it.
fn platform_spec(
    name: &str,
    path: &str,
    server: &Standin,
    token: &str,
    config: Value,
) -> PluginSpec {
    platform_spec_with(name, path, server, ("token", token), config)
}

/// The same, with the secret named `secret.0`.
fn platform_spec_with(
    name: &str,
    path: &str,
    server: &Standin,
    secret: (&str, &str),
    config: Value,
) -> PluginSpec {
    let host = format!("127.0.0.1:{}", server.port);
    let mut s = spec(name, path);
    s.policy
        .allowed_hosts
        .push(HostPattern::parse(&host).unwrap());
    s.policy.allowed_ranges.push("127.0.0.0/8".parse().unwrap());
    s.policy.timeout = Duration::from_secs(5);
    s.policy.max_requests = 200;
    s.secrets.insert(
        secret.0.into(),
        Secret::new(
            SecretValue::new(secret.1.to_string()),
            vec![HostPattern::parse(&host).unwrap()],
        ),
    );
    s.config = config;
    s
}

fn ctx(run: &str) -> CallContext {
    let mut c = CallContext::new("staging");
    c.deployment_id = run.into();
    c
}

fn site(dir: &Path, version: &str) -> Artifact {
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), format!("<h1>{version}</h1>")).unwrap();
    std::fs::write(dir.join("about.html"), "<p>about</p>").unwrap();
    std::fs::write(dir.join("assets/app.css"), "body{color:#333}").unwrap();
    let mut a = Artifact::version(version);
    a.path = Some("/artifact".into());
    a
}

fn vercel_plugin(v: &Vercel, artifact: &Path, token: &str, extra: Value) -> Plugin {
    let mut config =
        json!({"api": v.api(), "project": "web", "team_id": TEAM, "url_scheme": "http"});
    for (k, val) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = val;
    }
    let mut s = platform_spec("vercel", fixtures::VERCEL, &v.server, token, config);
    s.policy.dirs.push(deploy_agent::runtime::DirGrant {
        host: artifact.to_path_buf(),
        guest: "/artifact".into(),
        writable: false,
    });
    load(s)
}

/// A state in words, for assertions.
fn word(s: &ReleaseState) -> String {
    match s {
        ReleaseState::Pending => "pending".into(),
        ReleaseState::InProgress(t) => format!("in-progress: {t}"),
        ReleaseState::Ready => "ready".into(),
        ReleaseState::Live => "live".into(),
        ReleaseState::Failed(w) => format!("failed: {w}"),
        ReleaseState::Canceled => "canceled".into(),
    }
}

async fn state(plugin: &Plugin, run: &str, id: &str) -> String {
    word(&plugin.status(&ctx(run), id).await.expect("status").state)
}

/// Polls `status` the way the host does until the state is no longer pending or in progress;
/// returns every state seen, in words.
async fn poll(plugin: &Plugin, run: &str, id: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let s = plugin.status(&ctx(run), id).await.expect("status");
        let done = !matches!(s.state, ReleaseState::Pending | ReleaseState::InProgress(_));
        seen.push(word(&s.state));
        if done {
            return seen;
        }
    }
    panic!("{id} never settled: {seen:?}");
}

fn api_calls(server: &Standin, method: &str, path: &str) -> usize {
    server
        .seen()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn vercel_uploads_what_is_missing_stages_promotes_and_rolls_back() {
    let v = Vercel::start(TOKEN, Some(TEAM)).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = vercel_plugin(&v, dir.path(), TOKEN, json!({}));

    // v1: every file is new, so the first post is answered `missing_files`.
    let a1 = site(dir.path(), "v1");
    let s1 = plugin.deploy(&ctx("run-1"), &a1).await.expect("deploy v1");
    assert_eq!(api_calls(&v.server, "POST", "/v13/deployments"), 2);
    assert_eq!(api_calls(&v.server, "POST", "/v2/files"), 3);
    let states = poll(&plugin, "run-1", &s1.release_id).await;
    assert_eq!(
        states.first(),
        Some(&"in-progress: initializing".to_string())
    );
    assert!(
        states.contains(&"in-progress: building".to_string()),
        "{states:?}"
    );
    assert_eq!(
        states.last(),
        Some(&"ready".to_string()),
        "staged, not live"
    );
    // The staged URL serves the release before promotion; production has nothing yet.
    let url = s1.url.clone().expect("staged url");
    assert_eq!(
        fetch(&format!("{url}/index.html")).await,
        (200, "<h1>v1</h1>".into())
    );
    assert_eq!(
        fetch(&format!("{}/_sites/production/", v.api())).await.0,
        404
    );
    plugin
        .promote(&ctx("run-1"), &s1.release_id)
        .await
        .expect("promote");
    assert_eq!(poll(&plugin, "run-1", &s1.release_id).await, ["live"]);

    // v2: only index.html changed, so only it is uploaded.
    let a2 = site(dir.path(), "v2");
    let s2 = plugin.deploy(&ctx("run-2"), &a2).await.expect("deploy v2");
    assert_eq!(api_calls(&v.server, "POST", "/v2/files"), 4);
    assert_eq!(
        poll(&plugin, "run-2", &s2.release_id).await.last(),
        Some(&"ready".to_string())
    );
    plugin.promote(&ctx("run-2"), &s2.release_id).await.unwrap();
    let prod = format!("{}/_sites/production/index.html", v.api());
    assert_eq!(fetch(&prod).await.1, "<h1>v2</h1>");

    let releases = plugin.list_releases(&ctx("")).await.unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(
        (releases[0].id.as_str(), releases[0].live),
        (s2.release_id.as_str(), true)
    );
    assert_eq!(releases[0].version.as_deref(), Some("v2"));
    assert_eq!(
        (releases[1].id.as_str(), releases[1].live),
        (s1.release_id.as_str(), false)
    );

    // Rollback with no target goes to the production deployment before the live one.
    let back = plugin.rollback(&ctx(""), None).await.expect("rollback");
    assert_eq!(back, s1.release_id);
    assert_eq!(fetch(&prod).await.1, "<h1>v1</h1>");
    assert_eq!(poll(&plugin, "", &s1.release_id).await, ["live"]);

    // Every call carried the token (put in by the host) and the team, and fitted the spec.
    let n = v.server.assert_fits_spec();
    for r in v
        .server
        .seen()
        .iter()
        .filter(|r| !r.path.starts_with("/_sites/"))
    {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{r:?}"
        );
        if r.path != "/v2/user" && !r.path.starts_with("/v2/teams/") {
            assert_eq!(r.param("teamId"), Some(TEAM), "{} {}", r.method, r.path);
        }
    }
    assert!(n > 15, "{n} requests");
    // Uploads carried the SHA-1 of their bytes (the stand-in refuses others).
    let body = v.server.seen();
    let upload = body.iter().find(|r| r.path == "/v2/files").unwrap();
    assert_eq!(
        upload.header("content-type"),
        Some("application/octet-stream")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vercel_build_failure_queued_promotion_rate_limits_auth_and_hangs() {
    let v = Vercel::start(TOKEN, Some(TEAM)).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = vercel_plugin(&v, dir.path(), TOKEN, json!({}));

    // A failing build surfaces Vercel's error message.
    let a = site(dir.path(), "v1");
    std::fs::write(dir.path().join("index.html"), "BUILD_FAIL").unwrap();
    let s = plugin.deploy(&ctx("run-f"), &a).await.unwrap();
    match poll(&plugin, "run-f", &s.release_id).await.last() {
        Some(why) if why.starts_with("failed: ") => {
            assert!(
                why.contains("npm run build") && why.contains("BUILD_FAILED"),
                "{why}"
            )
        }
        other => panic!("expected a failed build, got {other:?}"),
    }

    // A queued promotion (202) is not live at once; status reports it once it is.
    let a = site(dir.path(), "v2");
    let s = plugin.deploy(&ctx("run-q"), &a).await.unwrap();
    poll(&plugin, "run-q", &s.release_id).await;
    v.state.lock().unwrap().queue_promotions = true;
    plugin
        .promote(&ctx("run-q"), &s.release_id)
        .await
        .expect("202 is accepted");
    let now = state(&plugin, "run-q", &s.release_id).await;
    assert_eq!(now, "ready", "queued, not live yet");
    assert_eq!(
        poll(&plugin, "run-q", &s.release_id).await.last(),
        Some(&"ready".to_string())
    );
    let mut live = false;
    for _ in 0..5 {
        if state(&plugin, "run-q", &s.release_id).await == "live" {
            live = true;
            break;
        }
    }
    assert!(live, "the queued promotion completed");

    // 429: a retryable error carrying the wait from Retry-After.
    v.state.lock().unwrap().rate_limit = 1;
    let err = plugin
        .status(&ctx("run-q"), &s.release_id)
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Some(1000)), "{err}");
    assert!(
        err.to_string()
            .contains("Rate limit exceeded (rate_limited)"),
        "{err}"
    );

    // A wrong token: unauthorized, in Vercel's words; the validator names it.
    let bad = vercel_plugin(&v, dir.path(), "wrong-token", json!({}));
    match bad.status(&ctx(""), &s.release_id).await.unwrap_err() {
        CallError::Plugin {
            error: PluginError::Unauthorized(m),
            ..
        } => {
            assert!(m.contains("Not authorized (forbidden)"), "{m}")
        }
        other => panic!("expected unauthorized, got {other}"),
    }
    let findings = bad
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(findings.len(), 1);
    assert_eq!(
        (findings[0].code.as_str(), findings[0].severity),
        ("token-invalid", Severity::Error)
    );

    // The validator: a good setup is clean, a missing project and auto-assigned domains are named.
    let clean = plugin
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert!(clean.is_empty(), "{clean:?}");
    let missing = vercel_plugin(&v, dir.path(), TOKEN, json!({"project": "nope"}));
    let f = missing
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(f[0].code, "project-missing");
    let other_team = vercel_plugin(&v, dir.path(), TOKEN, json!({"team_id": "team_other"}));
    let f = other_team
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(f[0].code, "team-access");
    v.state.lock().unwrap().auto_assign = true;
    let f = plugin
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(
        (f[0].code.as_str(), f[0].severity),
        ("promotion-immediate", Severity::Warning)
    );

    // A server that hangs: the plugin's deadline ends the call.
    v.state.lock().unwrap().hang = true;
    let started = Instant::now();
    let err = plugin.status(&ctx(""), &s.release_id).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    v.server.assert_fits_spec();
}

fn k8s_plugin(k: &Kubernetes, token: &str, trust: bool, extra: Value) -> Plugin {
    let mut config = json!({
        "api": k.api(), "namespace": kubernetes::NAMESPACE, "deployment": kubernetes::NAME,
        "containers": {"web": "registry.example.com/web:{version}"},
        "env": {"APP_VERSION": "{version}"},
        "url": "http://web.shop.svc",
    });
    for (key, val) in extra.as_object().cloned().unwrap_or_default() {
        config[key] = val;
    }
    let mut s = platform_spec("kubernetes", fixtures::KUBERNETES, &k.server, token, config);
    if trust {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        s.policy.extra_roots = CertificateDer::pem_slice_iter(k.ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    }
    load(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_rolls_out_with_kubectl_rules_and_undoes_like_kubectl() {
    let k = Kubernetes::start(K8S_TOKEN).await;
    let plugin = k8s_plugin(&k, K8S_TOKEN, true, json!({}));

    let s1 = plugin
        .deploy(&ctx("run-1"), &Artifact::version("v1"))
        .await
        .expect("deploy v1");
    assert_eq!(s1.release_id, "run-1");
    assert_eq!(s1.url.as_deref(), Some("http://web.shop.svc"));
    let states = poll(&plugin, "run-1", "run-1").await;
    // kubectl's order: the new generation is observed, replicas update, old ones go, then
    // the updated ones become available.
    let texts: Vec<String> = states
        .iter()
        .filter_map(|s| s.strip_prefix("in-progress: ").map(str::to_string))
        .collect();
    assert!(texts[0].contains("spec update to be observed"), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("new replicas have been updated")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("old replicas are pending termination")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("updated replicas are available")),
        "{texts:?}"
    );
    assert_eq!(states.last(), Some(&"live".to_string()));
    // The strategic merge changed the named container and kept the other one.
    assert_eq!(
        k.images(),
        [
            "registry.example.com/web:v1",
            "registry.example.com/shipper:3"
        ]
    );
    plugin
        .promote(&ctx("run-1"), "run-1")
        .await
        .expect("promote is a check");

    plugin
        .deploy(&ctx("run-2"), &Artifact::version("v2"))
        .await
        .unwrap();
    assert_eq!(
        poll(&plugin, "run-2", "run-2").await.last(),
        Some(&"live".to_string())
    );
    assert_eq!(k.revision(), "3");
    let releases = plugin.list_releases(&ctx("")).await.unwrap();
    let ids: Vec<(&str, bool)> = releases.iter().map(|r| (r.id.as_str(), r.live)).collect();
    // Owned ReplicaSets only (the stray one with the same labels is not ours), newest first.
    assert_eq!(
        ids,
        [("run-2", true), ("run-1", false), ("revision-1", false)]
    );
    assert_eq!(releases[0].version.as_deref(), Some("v2"));

    // `rollout undo`: the second-highest revision, by JSON patch; the controller re-uses
    // that ReplicaSet under the next revision.
    let back = plugin.rollback(&ctx(""), None).await.expect("undo");
    assert_eq!(back, "run-1");
    assert_eq!(
        poll(&plugin, "", "run-1").await.last(),
        Some(&"live".to_string())
    );
    assert_eq!(k.images()[0], "registry.example.com/web:v1");
    assert_eq!(k.revision(), "4");
    let patch = k
        .server
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.header("content-type"),
        Some("application/json-patch+json")
    );
    let ops = patch.json();
    assert_eq!(ops[0]["path"], "/spec/template");
    assert!(
        ops[0]["value"]["metadata"]["labels"]
            .get("pod-template-hash")
            .is_none()
    );
    // Rolling back to the release that is already the template is skipped, as kubectl does.
    let patches = api_patches(&k.server);
    assert_eq!(
        plugin.rollback(&ctx(""), Some("run-1")).await.unwrap(),
        "run-1"
    );
    assert_eq!(
        api_patches(&k.server),
        patches,
        "no patch for a skipped rollback"
    );
    // A named revision made outside the agent.
    assert_eq!(
        plugin.rollback(&ctx(""), Some("revision-1")).await.unwrap(),
        "revision-1"
    );
    assert_eq!(k.images()[0], "registry.example.com/web:v0");
    let err = plugin.rollback(&ctx(""), Some("run-9")).await.unwrap_err();
    assert!(
        err.to_string().contains("unable to find release run-9"),
        "{err}"
    );

    k.server.assert_fits_spec();
    for r in k.server.seen() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {K8S_TOKEN}").as_str())
        );
    }
}

fn api_patches(server: &Standin) -> usize {
    server.seen().iter().filter(|r| r.method == "PATCH").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_failures_tls_auth_conflicts_and_hangs() {
    let k = Kubernetes::start(K8S_TOKEN).await;
    let plugin = k8s_plugin(&k, K8S_TOKEN, true, json!({}));

    // A rollout that never becomes available fails on ProgressDeadlineExceeded.
    plugin
        .deploy(&ctx("run-b"), &Artifact::version("broken"))
        .await
        .unwrap();
    match poll(&plugin, "run-b", "run-b").await.last() {
        Some(why) if why.starts_with("failed: ") => {
            assert!(why.contains("exceeded its progress deadline"), "{why}")
        }
        other => panic!("expected a failed rollout, got {other:?}"),
    }

    // Without the cluster's CA the host refuses the server's certificate.
    let untrusting = k8s_plugin(&k, K8S_TOKEN, false, json!({}));
    let err = untrusting.status(&ctx(""), "run-b").await.unwrap_err();
    assert!(err.to_string().contains("Tls"), "{err}");
    assert!(
        deploy_agent_tests::logs::captured()
            .lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains("UnknownIssuer")),
        "the operator's log names the cause"
    );
    assert!(
        !matches!(
            err,
            CallError::Plugin {
                error: PluginError::Unauthorized(_),
                ..
            }
        ),
        "{err}"
    );

    // A conflicting write is retryable with a wait.
    k.state.lock().unwrap().conflicts = 1;
    let err = plugin
        .deploy(&ctx("run-c"), &Artifact::version("v3"))
        .await
        .unwrap_err();
    assert!(err.retry_after().is_some_and(|w| w.is_some()), "{err}");
    assert!(
        err.to_string().contains("the object has been modified"),
        "{err}"
    );

    // A wrong token is unauthorized; the validator says why, and a read-only token may not patch.
    let wrong = k8s_plugin(&k, "nope", true, json!({}));
    match wrong
        .deploy(&ctx("run-x"), &Artifact::version("v3"))
        .await
        .unwrap_err()
    {
        CallError::Plugin {
            error: PluginError::Unauthorized(m),
            ..
        } => assert!(m.contains("Unauthorized"), "{m}"),
        other => panic!("expected unauthorized, got {other}"),
    }
    let f = wrong
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(f[0].code, "token-invalid");
    let viewer = k8s_plugin(&k, &format!("{K8S_TOKEN}-read-only"), true, json!({}));
    let f = viewer
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    let codes: Vec<&str> = f.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["patch-forbidden", "rollback-unavailable"]);
    let clean = plugin
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert!(clean.is_empty(), "{clean:?}");
    let typo = k8s_plugin(
        &k,
        K8S_TOKEN,
        true,
        json!({"containers": {"wbe": "x:{version}"}}),
    );
    let f = typo
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(f[0].code, "container-missing");
    let err = typo
        .deploy(&ctx("run-t"), &Artifact::version("v3"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has no container wbe; it has web, log-shipper"),
        "{err}"
    );
    let elsewhere = k8s_plugin(&k, K8S_TOKEN, true, json!({"namespace": "gone"}));
    let f = elsewhere
        .validate(&ctx(""), &Artifact::version("v3"))
        .await
        .unwrap();
    assert_eq!(f[0].code, "namespace-missing");

    // A hung API server: the deadline fires.
    k.state.lock().unwrap().hang = true;
    let err = plugin.status(&ctx(""), "run-b").await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    k.server.assert_fits_spec();
}

/// The pipeline end to end: staging on Vercel, production on Kubernetes, each through
/// validation, deploy, verification, promotion, and an operator's rollback.
#[tokio::test(flavor = "multi_thread")]
async fn pipeline_deploys_to_vercel_and_kubernetes_and_rolls_back() {
    let v = Vercel::start(TOKEN, Some(TEAM)).await;
    v.state.lock().unwrap().queue_promotions = true;
    let k = Kubernetes::start(K8S_TOKEN).await;
    let project = Project::new("", "");
    std::fs::write(project.path("cluster-ca.pem"), &k.ca_pem).unwrap();
    let toml = format!(
        r#"{vercel_table}
[plugins.kubernetes]
path = "{k8s}"
[plugins.kubernetes.policy]
allowed_hosts = ["127.0.0.1:{kport}"]
allow_ip_ranges = ["127.0.0.0/8"]
tls_ca = ["cluster-ca.pem"]
[plugins.kubernetes.secrets.token]
from = "${{env:K8S_TOKEN}}"
hosts = ["127.0.0.1:{kport}"]
[plugins.kubernetes.config]
api = "https://127.0.0.1:{kport}"
namespace = "shop"
deployment = "web"
containers = {{ web = "registry.example.com/web:{{version}}" }}

[environments.staging]
[environments.staging.target]
plugin = "vercel"
[environments.staging.artifact]
path = "site"
[environments.staging.validate]
plugins = ["vercel"]
[environments.staging.deploy]
poll_interval_ms = 10
[[environments.staging.checks]]
name = "the release's own URL serves it"
http = "{{url}}/index.html"
body_contains = "<h1>"
[[environments.staging.checks]]
name = "production serves a page after promotion"
stage = "watch"
http = "http://127.0.0.1:{vport}/_sites/production/index.html"
body_contains = "<h1>"

[environments.production]
[environments.production.target]
plugin = "kubernetes"
[environments.production.validate]
plugins = ["kubernetes"]
[environments.production.deploy]
poll_interval_ms = 10
"#,
        vercel_table = v.plugin_table(200),
        k8s = fixtures::KUBERNETES,
        vport = v.server.port,
        kport = k.server.port,
    );
    let base = std::fs::read_to_string(project.path("agent.toml")).unwrap();
    let write = |version: &str| {
        std::fs::write(
            project.path("site/index.html"),
            format!("<h1>{version}</h1>"),
        )
        .unwrap();
        std::fs::write(project.path("agent.toml"), format!("{base}{toml}")).unwrap();
    };
    let run = |args: Vec<String>| {
        let mut cmd = project.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.env("VERCEL_TOKEN", TOKEN).env("K8S_TOKEN", K8S_TOKEN);
        cmd
    };
    let deploy = |env: &str, version: &str| {
        let mut cmd = run(vec![
            "deploy".into(),
            "--env".into(),
            env.into(),
            "--version".into(),
            version.into(),
            "--output".into(),
            "json".into(),
        ]);
        let out = cmd.output().unwrap();
        for secret in [TOKEN, K8S_TOKEN] {
            assert!(
                !stderr(&out).contains(secret)
                    && !String::from_utf8_lossy(&out.stdout).contains(secret)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&out)));
        (out.status.code(), v, stderr(&out))
    };

    for version in ["v1", "v2"] {
        write(version);
        let (code, out, err) = tokio::task::block_in_place(|| deploy("staging", version));
        assert_eq!(code, Some(0), "{out:#}\n{err}");
        assert_eq!(out["deployment"]["status"], "succeeded", "{out:#}");
    }
    let prod = format!("{}/_sites/production/index.html", v.api());
    assert_eq!(fetch(&prod).await.1, "<h1>v2</h1>");
    // Verification ran against the preview URL the plugin returned.
    let previews = v
        .server
        .seen()
        .iter()
        .filter(|r| r.path.starts_with("/_sites/dpl_"))
        .count();
    assert!(previews >= 2, "{previews} preview checks");

    // A failed build fails the run and leaves production alone.
    write("v3");
    std::fs::write(project.path("site/about.html"), "BUILD_FAIL").unwrap();
    let (code, out, _) = tokio::task::block_in_place(|| deploy("staging", "v3"));
    assert_eq!(code, Some(1), "{out:#}");
    assert!(out.to_string().contains("BUILD_FAILED"), "{out:#}");
    assert_eq!(fetch(&prod).await.1, "<h1>v2</h1>");
    std::fs::remove_file(project.path("site/about.html")).unwrap();

    // The operator's rollback: app only, to the release before the live one.
    let out = tokio::task::block_in_place(|| {
        run(vec![
            "rollback".into(),
            "--env".into(),
            "staging".into(),
            "--yes".into(),
            "--reason".into(),
            "bad copy".into(),
        ])
        .output()
        .unwrap()
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fetch(&prod).await.1, "<h1>v1</h1>");

    // Production on Kubernetes: two rollouts (the second meets a write conflict, which the
    // pipeline retries), then a rollback.
    for version in ["v1", "v2"] {
        if version == "v2" {
            k.state.lock().unwrap().conflicts = 1;
        }
        let (code, out, err) = tokio::task::block_in_place(|| deploy("production", version));
        assert_eq!(code, Some(0), "{out:#}\n{err}");
        assert_eq!(k.images()[0], format!("registry.example.com/web:{version}"));
    }
    assert_eq!(k.state.lock().unwrap().conflicts, 0, "the conflict was met");
    let out = tokio::task::block_in_place(|| {
        run(vec![
            "rollback".into(),
            "--env".into(),
            "production".into(),
            "--yes".into(),
            "--reason".into(),
            "v2 is slow".into(),
        ])
        .output()
        .unwrap()
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(k.images()[0], "registry.example.com/web:v1");
    // A rollout that fails its deadline fails the run.
    let (code, out, _) = tokio::task::block_in_place(|| deploy("production", "broken"));
    assert_eq!(code, Some(1), "{out:#}");
    assert!(out.to_string().contains("progress deadline"), "{out:#}");

    v.server.assert_fits_spec();
    k.server.assert_fits_spec();
    // The tokens reached the platforms and nothing else: not the state store, not the logs.
    let state = std::fs::read(project.path("state/state.db")).expect("the state store");
    for secret in [TOKEN, K8S_TOKEN] {
        assert!(!String::from_utf8_lossy(&state).contains(secret));
    }
}

const SLACK_TOKEN: &str = "xoxb-slack-test-9d8e7f";

fn slack_event(kind: EventKind, run: &str, detail: Option<String>) -> Event {
    Event {
        kind,
        environment: "production".into(),
        deployment_id: run.into(),
        version: "v2".into(),
        actor: "ops@deploy-host".into(),
        stage: Some("watch".into()),
        summary: format!("v2 on production: {kind:?}"),
        detail,
        duration_ms: Some(1234),
        links: vec![("release".into(), "https://shop.example.com".into())],
        at_ms: 0,
    }
}

fn slack_plugin(
    s: &Slack,
    secret: &str,
    value: &str,
    config: Value,
    threads: Option<&Path>,
) -> Plugin {
    let mut spec = platform_spec_with("slack", fixtures::SLACK, &s.server, (secret, value), config);
    if let Some(dir) = threads {
        spec.policy.dirs.push(deploy_agent::runtime::DirGrant {
            host: dir.to_path_buf(),
            guest: "/threads".into(),
            writable: true,
        });
    }
    load(spec)
}

fn plugin_error(e: CallError) -> PluginError {
    match e {
        CallError::Plugin { error, .. } => error,
        other => panic!("expected a plugin error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_webhook_posts_block_kit_and_explains_errors() {
    let s = Slack::start(SLACK_TOKEN).await;
    let config = json!({"mode": "webhook", "webhook_base": format!("{}/services", s.base()),
        "logs_url": "https://agent.example.com/runs/{run}"});
    let hook = slack_plugin(&s, "webhook", slack::HOOK, config.clone(), None);
    hook.notify(&ctx(""), &slack_event(EventKind::Started, "run-1", None))
        .await
        .expect("started");
    // A failure whose reason is far beyond Block Kit's limits still posts, cut with a note.
    let reason = format!(
        "check `api` failed: {}",
        "HTTP 503 from upstream; ".repeat(8000)
    );
    hook.notify(
        &ctx(""),
        &slack_event(EventKind::RolledBack, "run-1", Some(reason)),
    )
    .await
    .expect("rolled back");
    let messages = s.messages();
    assert_eq!(messages.len(), 2);
    let rolled = messages[1].body.to_string();
    for want in [
        "Why, and the rollback taken",
        "check `api` failed",
        "production",
        "ops@deploy-host",
        "1.2 s",
        "<https://shop.example.com|release>",
        "<https://agent.example.com/runs/run-1|logs>",
        "more block(s) left out",
    ] {
        assert!(rolled.contains(want), "{want} missing");
    }
    assert!(
        messages[1].body["text"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: ")
    );

    let archived = slack_plugin(&s, "webhook", slack::ARCHIVED_HOOK, config.clone(), None);
    let e = plugin_error(
        archived
            .notify(&ctx(""), &slack_event(EventKind::Started, "r", None))
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, PluginError::Rejected(m) if m.contains("channel_is_archived")),
        "{e:?}"
    );
    let revoked = slack_plugin(&s, "webhook", "T0TEAM/B0GONE/x", config.clone(), None);
    let e = plugin_error(
        revoked
            .notify(&ctx(""), &slack_event(EventKind::Started, "r", None))
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, PluginError::Unauthorized(m) if m.contains("no_service")),
        "{e:?}"
    );
    s.state.lock().unwrap().rate_limit = 1;
    let e = hook
        .notify(&ctx(""), &slack_event(EventKind::Started, "r", None))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Some(1000)), "{e}");
    // The webhook's secret path went out only in requests to Slack, put there by the host.
    for r in s.server.seen() {
        assert!(r.path.starts_with("/services/T0TEAM/"), "{}", r.path);
    }
    s.assert_valid();
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_api_threads_each_deployment_and_explains_errors() {
    let s = Slack::start(SLACK_TOKEN).await;
    let threads = tempfile::tempdir().unwrap();
    let config = json!({"mode": "api", "api": format!("{}/api", s.base()), "channel": slack::CHANNEL,
        "thread_dir": "/threads"});
    let bot = slack_plugin(
        &s,
        "token",
        SLACK_TOKEN,
        config.clone(),
        Some(threads.path()),
    );
    for (run, kind) in [
        ("run-1", EventKind::Started),
        ("run-2", EventKind::Started),
        ("run-1", EventKind::StageSucceeded),
        ("run-1", EventKind::Succeeded),
        ("run-2", EventKind::Failed),
    ] {
        bot.notify(&ctx(run), &slack_event(kind, run, None))
            .await
            .expect("posts");
    }
    let m = s.messages();
    assert_eq!(m.len(), 5);
    let (first, second) = (m[0].ts.clone(), m[1].ts.clone());
    assert_eq!(
        (m[0].thread_ts.as_deref(), m[1].thread_ts.as_deref()),
        (None, None),
        "one thread per run"
    );
    assert_eq!(m[2].thread_ts.as_deref(), Some(first.as_str()));
    assert!(!m[2].broadcast, "progress stays in the thread");
    assert_eq!(m[3].thread_ts.as_deref(), Some(first.as_str()));
    assert!(m[3].broadcast, "the outcome is also shown in the channel");
    assert_eq!(m[4].thread_ts.as_deref(), Some(second.as_str()));

    for (channel, code) in [
        (slack::ARCHIVED, "is_archived"),
        (slack::OUTSIDE, "not_in_channel"),
        ("C0NOPE", "channel_not_found"),
    ] {
        let mut c = config.clone();
        c["channel"] = json!(channel);
        let p = slack_plugin(&s, "token", SLACK_TOKEN, c, None);
        let e = plugin_error(
            p.notify(&ctx("r"), &slack_event(EventKind::Started, "r", None))
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(&e, PluginError::Rejected(m) if m.contains(code)),
            "{e:?}"
        );
    }
    let wrong = slack_plugin(&s, "token", "xoxb-wrong", config.clone(), None);
    let e = plugin_error(
        wrong
            .notify(&ctx("r"), &slack_event(EventKind::Started, "r", None))
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, PluginError::Unauthorized(m) if m.contains("invalid_auth")),
        "{e:?}"
    );
    s.state.lock().unwrap().rate_limit = 1;
    let e = bot
        .notify(&ctx("r"), &slack_event(EventKind::Started, "r", None))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Some(1000)), "{e}");
    for r in s.server.seen() {
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
    s.assert_valid();
}

/// `[plugins.slack]` posting through the Slack stand-in on `port` (Web API mode, a thread
/// per run kept under `threads/`), its token from `SLACK_TOKEN`.
fn slack_plugin_table(port: u16) -> String {
    format!(
        r#"
[plugins.slack]
path = "{slack}"
[plugins.slack.policy]
allowed_hosts = ["127.0.0.1:{port}"]
allow_ip_ranges = ["127.0.0.0/8"]
dirs = [{{ path = "threads", guest = "/threads", rw = true }}]
[plugins.slack.secrets.token]
from = "${{env:SLACK_TOKEN}}"
hosts = ["127.0.0.1:{port}"]
[plugins.slack.config]
mode = "api"
api = "http://127.0.0.1:{port}/api"
channel = "{channel}"
thread_dir = "/threads"
"#,
        slack = fixtures::SLACK,
        channel = slack::CHANNEL,
    )
}

/// A deploy whose notifications go to Slack: every event of the run in one thread, the
/// outcome broadcast, the release's URL linked.
#[tokio::test(flavor = "multi_thread")]
async fn pipeline_notifies_slack_in_one_thread() {
    let s = Slack::start(SLACK_TOKEN).await;
    let tables = slack_plugin_table(s.server.port);
    let project = Project::new("notifiers = [\"slack\"]", &tables);
    let out = tokio::task::block_in_place(|| {
        project
            .command(&["deploy", "--env", "local", "--output", "json"])
            .env("SLACK_TOKEN", SLACK_TOKEN)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let m = s.messages();
    assert!(m.len() >= 10, "every transition: {}", m.len());
    let root = &m[0];
    assert!(root.thread_ts.is_none());
    assert!(
        m[1..]
            .iter()
            .all(|x| x.thread_ts.as_deref() == Some(root.ts.as_str())),
        "one thread"
    );
    let last = m.last().unwrap();
    assert!(last.broadcast);
    assert!(
        last.body["text"]
            .as_str()
            .unwrap()
            .starts_with("succeeded: "),
        "{}",
        last.body["text"]
    );
    assert!(!stderr(&out).contains(SLACK_TOKEN));
    s.assert_valid();
}

fn s3_plugin(server: &S3Server, artifact: &Path, secret: &str, extra: Value) -> Plugin {
    let mut config = json!({"endpoint": server.endpoint(), "region": "us-east-1", "bucket": s3::BUCKET,
        "path_style": true, "access_key_id": s3::ACCESS_KEY, "prefix": "www/",
        "url": "https://www.example.com"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    let host = format!("127.0.0.1:{}", server.port);
    let mut s = spec("s3", fixtures::S3);
    s.policy
        .allowed_hosts
        .push(HostPattern::parse(&host).unwrap());
    s.policy.allowed_ranges.push("127.0.0.0/8".parse().unwrap());
    s.policy.max_requests = 200;
    // Uploads of 100 MB: a generous deadline, so a loaded machine is not a failure.
    s.policy.timeout = Duration::from_secs(600);
    s.policy.dirs.push(deploy_agent::runtime::DirGrant {
        host: artifact.to_path_buf(),
        guest: "/artifact".into(),
        writable: false,
    });
    let mut key = Secret::new(
        SecretValue::new(secret.to_string()),
        vec![HostPattern::parse(&host).unwrap()],
    );
    key.sigv4 = Some(Sigv4Scope {
        services: vec!["s3".into()],
        regions: vec![config["region"].as_str().unwrap_or("us-east-1").to_string()],
    });
    s.secrets.insert("secret-key".into(), key);
    s.config = config;
    load(s)
}

/// The S3 static-site target against a real S3 server that checks signatures; boto3 reads
/// back what it wrote.
#[tokio::test(flavor = "multi_thread")]
async fn s3_site_uploads_promotes_and_rolls_back_on_a_real_s3_server() {
    let server = tokio::task::block_in_place(S3Server::start);
    let dir = tempfile::tempdir().unwrap();
    let plugin = s3_plugin(&server, dir.path(), s3::SECRET_KEY, json!({}));

    let a1 = site(dir.path(), "v1");
    let s1 = plugin.deploy(&ctx("run-1"), &a1).await.expect("deploy v1");
    assert_eq!(s1.url.as_deref(), Some("https://www.example.com"));
    assert_eq!(state(&plugin, "run-1", "run-1").await, "ready");
    let (body, ct, cache) =
        tokio::task::block_in_place(|| server.object("www/releases/run-1/index.html"));
    assert_eq!(
        (body.as_str(), ct.as_str(), cache.as_str()),
        ("<h1>v1</h1>", "text/html; charset=utf-8", "no-cache")
    );
    let (_, ct, cache) =
        tokio::task::block_in_place(|| server.object("www/releases/run-1/assets/app.css"));
    assert_eq!(
        (ct.as_str(), cache.as_str()),
        ("text/css; charset=utf-8", "public, max-age=300")
    );
    plugin
        .promote(&ctx("run-1"), "run-1")
        .await
        .expect("promote");
    assert_eq!(state(&plugin, "run-1", "run-1").await, "live");
    assert_eq!(
        tokio::task::block_in_place(|| server.object("www/live/index.html")).0,
        "<h1>v1</h1>"
    );

    // v2 drops about.html: after promotion the live prefix no longer has it.
    let a2 = site(dir.path(), "v2");
    std::fs::remove_file(dir.path().join("about.html")).unwrap();
    plugin.deploy(&ctx("run-2"), &a2).await.expect("deploy v2");
    plugin
        .promote(&ctx("run-2"), "run-2")
        .await
        .expect("promote v2");
    let live = tokio::task::block_in_place(|| server.keys("www/live/"));
    assert_eq!(live, ["www/live/assets/app.css", "www/live/index.html"]);
    assert_eq!(
        tokio::task::block_in_place(|| server.object("www/live/index.html")).0,
        "<h1>v2</h1>"
    );
    let releases = plugin.list_releases(&ctx("")).await.unwrap();
    let ids: Vec<(&str, bool)> = releases.iter().map(|r| (r.id.as_str(), r.live)).collect();
    assert_eq!(ids, [("run-2", true), ("run-1", false)]);

    // Rollback: v1 serves again, about.html included.
    assert_eq!(plugin.rollback(&ctx(""), None).await.unwrap(), "run-1");
    assert_eq!(
        tokio::task::block_in_place(|| server.object("www/live/about.html")).0,
        "<p>about</p>"
    );
    assert_eq!(
        tokio::task::block_in_place(|| server.object("www/live/index.html")).0,
        "<h1>v1</h1>"
    );
    assert_eq!(state(&plugin, "", "run-1").await, "live");

    // Wrong credentials: the server refuses the signature; a missing bucket is named.
    let wrong = s3_plugin(&server, dir.path(), "not-the-secret", json!({}));
    let e = plugin_error(wrong.status(&ctx(""), "run-1").await.unwrap_err());
    assert!(
        matches!(&e, PluginError::Unauthorized(m) if m.contains("SignatureDoesNotMatch")),
        "{e:?}"
    );
    let nobucket = s3_plugin(
        &server,
        dir.path(),
        s3::SECRET_KEY,
        json!({"bucket": "missing"}),
    );
    let e = plugin_error(nobucket.deploy(&ctx("run-3"), &a2).await.unwrap_err());
    assert!(
        matches!(&e, PluginError::Rejected(m) if m.contains("NoSuchBucket")),
        "{e:?}"
    );
}

/// A reader that yields `left` bytes of data, then fails, as a dying disk would.
struct Failing {
    left: usize,
}

impl tokio::io::AsyncRead for Failing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk read error")));
        }
        let n = self.left.min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![7u8; n]);
        self.left -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// `size` bytes that do not repeat (xorshift), written to `path`; returns their sha256.
fn noise(path: &Path, size: usize) -> String {
    use sha2::Digest as _;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = vec![0u8; size];
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(path, &bytes).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// Upload parts s3s-fs still holds (it keeps them as `.upload*` files in its root).
fn leftover_parts(server: &S3Server) -> Vec<String> {
    std::fs::read_dir(server.root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload"))
        .collect()
}

/// The backup store on a real S3 server: a 100 MB object goes up in parts, streamed, and
/// boto3 reads it back byte for byte with its metadata; an upload that fails midway is
/// aborted with no parts left; get streams and verifies; listing pages; delete.
#[tokio::test(flavor = "multi_thread")]
async fn s3_backup_store_streams_multipart_and_leaves_nothing_on_failure() {
    let server = tokio::task::block_in_place(S3Server::start);
    let dir = tempfile::tempdir().unwrap();
    let store = |secret: &str, extra: Value| {
        let mut config = json!({"part_size_mb": 5, "list_page_size": 2});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            config[k] = v;
        }
        s3_plugin(&server, dir.path(), secret, config)
    };
    let plugin = store(s3::SECRET_KEY, json!({}));
    let ctx = ctx("");

    let size = 100 << 20;
    let path = dir.path().join("backup.bin");
    let digest = noise(&path, size);
    let file = tokio::fs::File::open(&path).await.unwrap();
    let meta = vec![("sha256".to_string(), digest.clone())];
    let info = plugin
        .put_object(&ctx, "backups/prod/b1.dump", &meta, Some(size as u64), file)
        .await
        .expect("100 MB upload");
    assert_eq!(info.size, size as u64);
    let seen = tokio::task::block_in_place(|| {
        server.boto3("import hashlib\no = s3.get_object(Bucket='site', Key='backups/prod/b1.dump')\nh = hashlib.sha256()\nfor c in iter(lambda: o['Body'].read(1 << 20), b''):\n    h.update(c)\nprint(json.dumps([h.hexdigest(), o['ContentLength'], o['Metadata']]))")
    });
    assert_eq!(
        seen,
        json!([digest, size, {"sha256": digest}]),
        "boto3 reads what the plugin wrote"
    );
    // A multipart object's ETag ends in `-<parts>`: 100 MiB in 5 MiB parts is 20.
    let etag = tokio::task::block_in_place(|| {
        server.boto3(
            "print(json.dumps(s3.head_object(Bucket='site', Key='backups/prod/b1.dump')['ETag']))",
        )
    });
    assert!(
        etag.as_str()
            .is_some_and(|e| e.trim_matches('"').ends_with("-20")),
        "{etag}"
    );
    assert!(leftover_parts(&server).is_empty());

    // get: streamed into a file, checked against the metadata's sha256.
    let out = dir.path().join("restored.bin");
    let sink = tokio::fs::File::create(&out).await.unwrap();
    let got = plugin
        .get_object(&ctx, "backups/prod/b1.dump", sink)
        .await
        .expect("get");
    assert_eq!(got.size, size as u64);
    assert_eq!(got.metadata, meta);
    assert_eq!(noise_digest(&out), digest);

    // An upload whose source fails after 12 MB: aborted, no parts left, no object.
    let e = plugin
        .put_object(
            &ctx,
            "backups/prod/b2.dump",
            &[],
            None,
            Failing { left: 12 << 20 },
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("reading the backup to upload failed"),
        "{e}"
    );
    assert!(
        leftover_parts(&server).is_empty(),
        "{:?}",
        leftover_parts(&server)
    );
    assert_eq!(
        tokio::task::block_in_place(|| server.keys("backups/")),
        ["backups/prod/b1.dump"]
    );

    // A copy whose bytes do not match its recorded sha256 is refused on the way down.
    let corrupt = vec![("sha256".to_string(), "0".repeat(64))];
    plugin
        .put_object(
            &ctx,
            "backups/prod/b3.dump",
            &corrupt,
            None,
            &b"not what it claims"[..],
        )
        .await
        .unwrap();
    let e = plugin
        .get_object(&ctx, "backups/prod/b3.dump", tokio::io::sink())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is corrupt"), "{e}");

    // Listing in pages of two.
    plugin
        .put_object(&ctx, "backups/prod/b4.dump", &[], None, &b"x"[..])
        .await
        .unwrap();
    let first = plugin
        .list_objects(&ctx, "backups/prod/", None)
        .await
        .unwrap();
    assert_eq!(first.objects.len(), 2);
    let second = plugin
        .list_objects(&ctx, "backups/prod/", first.next.as_deref())
        .await
        .unwrap();
    assert!(second.next.is_none());
    let mut keys: Vec<String> = first
        .objects
        .iter()
        .chain(&second.objects)
        .map(|o| o.key.clone())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "backups/prod/b1.dump",
            "backups/prod/b3.dump",
            "backups/prod/b4.dump"
        ]
    );
    assert!(
        first
            .objects
            .iter()
            .all(|o| o.modified_at_ms.is_some_and(|t| t > 1_700_000_000_000))
    );

    // Delete, twice (a missing object is not an error).
    plugin
        .delete_object(&ctx, "backups/prod/b3.dump")
        .await
        .unwrap();
    plugin
        .delete_object(&ctx, "backups/prod/b3.dump")
        .await
        .unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| server.keys("backups/")),
        ["backups/prod/b1.dump", "backups/prod/b4.dump"]
    );

    // Wrong credentials and a missing bucket.
    let wrong = store("wrong-secret", json!({}));
    let e = plugin_error(
        wrong
            .list_objects(&ctx, "backups/", None)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, PluginError::Unauthorized(m) if m.contains("SignatureDoesNotMatch")),
        "{e:?}"
    );
    let nobucket = store(s3::SECRET_KEY, json!({"bucket": "missing"}));
    let e = plugin_error(
        nobucket
            .list_objects(&ctx, "backups/", None)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, PluginError::Rejected(m) if m.contains("NoSuchBucket")),
        "{e:?}"
    );
}

fn noise_digest(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A deploy whose backup goes off-site to a real S3 server and whose notifications go to
/// Slack, both through the pipeline; then the same retention prunes the off-site copies.
#[tokio::test(flavor = "multi_thread")]
async fn pipeline_backs_up_off_site_to_s3_and_notifies_slack() {
    let server = tokio::task::block_in_place(S3Server::start);
    let slack_server = Slack::start(SLACK_TOKEN).await;
    let tables = format!(
        r#"
{s3_table}

{slack}
[environments.local.backup]
offsite = "s3-backups"
keep_last = 1
keep_daily = 0
keep_weekly = 0
"#,
        s3_table = s3::backup_plugin_table(server.port),
        slack = slack_plugin_table(slack_server.server.port),
    );
    let project = Project::new("notifiers = [\"slack\"]", &tables);
    let run = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            project
                .command(args)
                .env("S3_SECRET", s3::SECRET_KEY)
                .env("SLACK_TOKEN", SLACK_TOKEN)
                .output()
                .unwrap()
        })
    };
    let out = run(&["deploy", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup_id = v["deployment"]["backup_id"]
        .as_str()
        .expect("a backup was taken")
        .to_string();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(project.path(&format!("state/backups/local/{backup_id}.json"))).unwrap(),
    )
    .unwrap();
    let sha = manifest["sha256"].as_str().unwrap().to_string();
    // boto3 reads the off-site copy: the same bytes (its sha256 is the manifest's), the
    // checksum in its metadata, and the manifest beside it.
    let seen = tokio::task::block_in_place(|| {
        server.boto3(&format!("import hashlib\no = s3.get_object(Bucket='site', Key='local/{backup_id}.backup')\nm = s3.get_object(Bucket='site', Key='local/{backup_id}.json')\nprint(json.dumps([hashlib.sha256(o['Body'].read()).hexdigest(), o['Metadata'], json.loads(m['Body'].read())['id']]))"))
    });
    assert_eq!(
        seen,
        json!([sha, {"sha256": sha, "backup-id": backup_id}, backup_id])
    );
    let backup_step = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "backup")
        .unwrap()
        .clone();
    assert!(
        backup_step["detail"]
            .as_str()
            .unwrap()
            .contains("off-site as local/"),
        "{backup_step}"
    );
    // Slack heard the run, the backup stage among it, in one thread.
    let messages = slack_server.messages();
    assert!(
        messages
            .iter()
            .any(|m| m.body.to_string().contains("backup"))
    );
    assert!(
        messages[1..]
            .iter()
            .all(|m| m.thread_ts.as_deref() == Some(messages[0].ts.as_str()))
    );

    // Manual backups are copied too. Pruning (keep_last = 1; the release's backup is
    // protected) deletes the older manual one here and off-site.
    let mut manual = Vec::new();
    for _ in 0..2 {
        let out = run(&["backup", "create", "--env", "local", "--output", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let m: Value = serde_json::from_slice(&out.stdout).unwrap();
        manual.push(m["id"].as_str().unwrap().to_string());
    }
    let keys = tokio::task::block_in_place(|| server.keys("local/"));
    assert_eq!(keys.len(), 6, "{keys:?}");
    let out = run(&["backup", "prune", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pruned: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two backups taken within a second tie on age; retention keeps one of them.
    let deleted: Vec<String> = serde_json::from_value(pruned["deleted"].clone()).unwrap();
    assert_eq!(deleted.len(), 1, "{pruned}");
    assert!(manual.contains(&deleted[0]), "{pruned}");
    let kept = manual.iter().find(|m| **m != deleted[0]).unwrap();
    let mut want = vec![
        format!("local/{backup_id}.backup"),
        format!("local/{backup_id}.json"),
        format!("local/{kept}.backup"),
        format!("local/{kept}.json"),
    ];
    want.sort();
    assert_eq!(tokio::task::block_in_place(|| server.keys("local/")), want);

    // The deploy host loses its copy: restore fetches the off-site one, checks it, uses it.
    for ext in ["backup", "json"] {
        std::fs::remove_file(project.path(&format!("state/backups/local/{backup_id}.{ext}")))
            .unwrap();
    }
    let out = run(&[
        "backup",
        "restore",
        "--env",
        "local",
        &backup_id,
        "--yes",
        "--no-safety-backup",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fetching the off-site copy"));
    let out = run(&["backup", "verify", "--env", "local", &backup_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored: Value = serde_json::from_slice(
        &std::fs::read(project.path(&format!("state/backups/local/{backup_id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(restored["sha256"], json!(sha));
    slack_server.assert_valid();
}
