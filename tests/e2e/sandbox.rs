//! Hostile plugins, one fixture each, and the well-behaved ones.
//!
//! Every hostile test checks four things: the specific error; that it came within the
//! plugin's deadline; that the agent still serves a well-behaved plugin afterwards; and that
//! the secret granted to the hostile plugin appears in no log line and no error.

use std::time::{Duration, Instant};

use deploy_agent::runtime::{
    Artifact, CallContext, CallError, HostPattern, PluginError, PluginSpec, PolicyViolation,
    Secret, SecretValue, Severity,
};
use deploy_agent_tests::http::{Behaviour, TestServer};
use deploy_agent_tests::{event, fixtures, load, logs, runtime, spec};
use serde_json::json;

/// A secret value unique to one test, so a leak is attributable.
fn secret_value(test: &str) -> String {
    format!("sv-{test}-{:x}", std::process::id())
}

/// Grants `token` (value unique to `test`) bound to `host`.
fn with_secret(mut spec: PluginSpec, test: &str, host: &str) -> PluginSpec {
    spec.secrets.insert(
        "token".into(),
        Secret::new(
            SecretValue::new(secret_value(test)),
            vec![HostPattern::parse(host).unwrap()],
        ),
    );
    spec
}

/// Allows `host` (a loopback test server) and grants the loopback range it lives in.
fn allow_loopback_host(spec: &mut PluginSpec, host: &str) {
    spec.policy
        .allowed_hosts
        .push(HostPattern::parse(host).unwrap());
    spec.policy
        .allowed_ranges
        .push("127.0.0.0/8".parse().unwrap());
    spec.policy.allowed_ranges.push("::1/128".parse().unwrap());
}

fn ctx() -> CallContext {
    CallContext::new("staging")
}

/// After a hostile call: the agent still serves a well-behaved plugin, and the secret never
/// appeared in a log line or the error.
async fn assert_aftermath(test: &str, error: &CallError) {
    let echo = load(spec("echo", fixtures::ECHO));
    let findings = echo
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .expect("a well-behaved plugin still works after a hostile one");
    assert!(findings.is_empty());
    echo.notify(&ctx(), &event())
        .await
        .expect("notify still works");
    let secret = secret_value(test);
    assert!(
        !error.to_string().contains(&secret),
        "secret in error: {error}"
    );
    assert!(
        !format!("{error:?}").contains(&secret),
        "secret in error debug"
    );
    assert!(
        !logs::captured().contains(&secret),
        "secret value found in the captured logs"
    );
}

fn within(started: Instant, deadline: Duration) {
    let elapsed = started.elapsed();
    // The bound proves the call was stopped by its deadline rather than hanging; it is not a
    // performance figure.
    assert!(
        elapsed < deadline + Duration::from_secs(5),
        "the error took {elapsed:?}, past the deadline of {deadline:?}"
    );
}

#[tokio::test]
async fn well_behaved_plugin_exports_two_kinds_and_logs_with_tags() {
    let mut s = spec("echo-tagged", fixtures::ECHO);
    s.config = json!({ "echo": true });
    let plugin = load(s);
    let kinds: Vec<&str> = plugin.kinds().iter().map(|k| k.interface()).collect();
    assert_eq!(kinds, ["validator", "notifier"]);
    let findings = plugin
        .validate(&ctx(), &Artifact::version("v42"))
        .await
        .unwrap();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].message, "staging v42");
    assert!(matches!(findings[0].severity, Severity::Info));

    let mut e = event();
    e.summary = "tagged-log-line-7731".into();
    plugin.notify(&ctx(), &e).await.unwrap();
    let line = logs::captured()
        .lines()
        .find(|l| l.contains("tagged-log-line-7731"))
        .map(str::to_string)
        .expect("the plugin's log line reached tracing");
    assert!(line.contains("plugin=\"echo-tagged\""), "{line}");
    assert!(line.contains("env=\"staging\""), "{line}");
    assert!(line.contains("call="), "{line}");

    let err = plugin
        .deploy(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::NotExported {
                interface: "deploy-target",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn plugin_signs_with_a_secret_it_never_sees() {
    let mut s = with_secret(spec("signer", fixtures::ECHO), "sign", "hooks.example.com");
    s.config = json!({ "sign": "token" });
    let findings = load(s.clone())
        .validate(&ctx(), &Artifact::version("20261121"))
        .await
        .unwrap();
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret_value("sign").as_bytes())
        .expect("any key length");
    mac.update(b"20261121");
    assert_eq!(findings[0].code, "signature");
    assert_eq!(
        findings[0].message,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );

    // A secret that was not granted: the plugin is told to fix its configuration.
    s.config = json!({ "sign": "not-granted" });
    let err = load(s)
        .validate(&ctx(), &Artifact::version("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin { error: PluginError::InvalidConfig(m), .. } if m.contains("secret `not-granted` is not granted")),
        "{err}"
    );
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() {
    let mut s = with_secret(
        spec("spin-loop", fixtures::SPIN_LOOP),
        "loop",
        "api.example.com",
    );
    s.policy
        .allowed_hosts
        .push(HostPattern::parse("api.example.com").unwrap());
    s.policy.timeout = Duration::from_millis(300);
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin.notify(&ctx(), &event()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Timeout {
                limit_ms: 300,
                op: "notify",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    within(started, Duration::from_millis(300));
    assert!(
        err.to_string().contains("timed out in notify after 300 ms"),
        "{err}"
    );
    assert_aftermath("loop", &err).await;
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_cap() {
    let mut s = with_secret(
        spec("memory-bomb", fixtures::MEMORY_BOMB),
        "bomb",
        "api.example.com",
    );
    s.policy
        .allowed_hosts
        .push(HostPattern::parse("api.example.com").unwrap());
    s.policy.memory_bytes = 32 << 20;
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin.notify(&ctx(), &event()).await.unwrap_err();
    match &err {
        CallError::MemoryLimit {
            limit_mib,
            wanted_mib,
            ..
        } => {
            assert_eq!(*limit_mib, 32);
            assert!(*wanted_mib > 32, "{err}");
        }
        other => panic!("expected a memory limit error, got: {other}"),
    }
    within(started, plugin.policy().timeout);
    assert_aftermath("bomb", &err).await;
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let s = with_secret(
        spec("deep-recursion", fixtures::DEEP_RECURSION),
        "recursion",
        "api.example.com",
    );
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin.notify(&ctx(), &event()).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Trap { reason, .. } if reason.contains("stack overflow")),
        "{err}"
    );
    within(started, plugin.policy().timeout);
    assert_aftermath("recursion", &err).await;
}

#[tokio::test]
async fn panic_is_a_trap_with_the_panic_message() {
    let s = with_secret(spec("panics", fixtures::PANIC), "panic", "api.example.com");
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin.notify(&ctx(), &event()).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Trap { reason, .. }
            if reason.contains("panicked") && reason.contains("fixture panicked on purpose while handling deploying v1 to staging")),
        "{err}"
    );
    within(started, plugin.policy().timeout);
    assert_aftermath("panic", &err).await;
}

#[tokio::test]
async fn oversized_return_value_is_refused() {
    let mut s = with_secret(
        spec("huge-return", fixtures::HUGE_RETURN),
        "huge",
        "api.example.com",
    );
    s.config = json!({ "mib": 4 });
    s.policy.max_return_bytes = 1 << 20;
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::ReturnTooLarge { size, limit: 1_048_576, .. } if size >= 4 << 20),
        "{err}"
    );
    within(started, plugin.policy().timeout);
    assert_aftermath("huge", &err).await;
}

#[tokio::test]
async fn request_to_a_host_not_allowed_is_refused_before_any_connection() {
    let server = TestServer::start(Behaviour::Respond(200, "hello".into())).await;
    let mut s = with_secret(
        spec("fetch-forbidden", fixtures::FETCH),
        "forbidden",
        "api.example.com",
    );
    s.policy
        .allowed_hosts
        .push(HostPattern::parse("api.example.com").unwrap());
    s.policy.allowed_ranges.push("127.0.0.0/8".parse().unwrap());
    s.config = json!({ "url": server.url("127.0.0.1", "/x") });
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Policy { violation: PolicyViolation::HostNotAllowed { host, port }, .. }
            if host == "127.0.0.1" && *port == server.port),
        "{err}"
    );
    assert!(server.seen().is_empty(), "the server must not be reached");
    within(started, plugin.policy().timeout);
    assert_aftermath("forbidden", &err).await;
}

#[tokio::test]
async fn allowed_name_resolving_to_loopback_is_refused_unless_granted() {
    let server = TestServer::start(Behaviour::Respond(200, "hello from loopback".into())).await;
    let allowed = format!("localhost:{}", server.port);
    let mut s = with_secret(spec("fetch-rebind", fixtures::FETCH), "rebind", &allowed);
    s.policy
        .allowed_hosts
        .push(HostPattern::parse(&allowed).unwrap());
    s.config = json!({ "url": server.url("localhost", "/") });
    let plugin = load(s.clone());
    let started = Instant::now();
    let err = plugin
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Policy { violation: PolicyViolation::AddressRefused { host, range: "loopback", .. }, .. }
            if host == "localhost"),
        "{err}"
    );
    assert!(
        err.to_string().contains("allow_ip_ranges"),
        "the error says how to grant it: {err}"
    );
    assert!(server.seen().is_empty(), "the server must not be reached");
    within(started, plugin.policy().timeout);
    assert_aftermath("rebind", &err).await;

    // The same plugin with loopback granted explicitly reaches the server.
    s.policy.allowed_ranges.push("127.0.0.0/8".parse().unwrap());
    s.policy.allowed_ranges.push("::1/128".parse().unwrap());
    let granted = load(s);
    let findings = granted
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap();
    assert_eq!(findings[0].code, "status-200");
    assert_eq!(findings[0].message, "hello from loopback");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn file_outside_the_granted_directory_is_unreachable() {
    let granted = tempfile::tempdir().unwrap();
    std::fs::write(granted.path().join("inside.txt"), "inside-content").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("outside.txt"), "outside-content-5521").unwrap();

    let base = with_secret(
        spec("read-file", fixtures::READ_FILE),
        "file",
        "api.example.com",
    );
    let read = |path: String| {
        let mut s = base.clone();
        s.policy.dirs.push(deploy_agent::runtime::DirGrant {
            host: granted.path().to_path_buf(),
            guest: "/granted".into(),
            writable: false,
        });
        s.config = json!({ "path": path });
        load(s)
    };

    let ok = read("/granted/inside.txt".into())
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap();
    assert_eq!(
        (ok[0].code.as_str(), ok[0].message.as_str()),
        ("read-ok", "inside-content")
    );

    let outside_path = outside.path().join("outside.txt");
    for attempt in [
        outside_path.display().to_string(),
        format!("/granted/../{}", outside_path.display()),
        "/granted/../../../../etc/hostname".to_string(),
        "/etc/hostname".to_string(),
    ] {
        let findings = read(attempt.clone())
            .validate(&ctx(), &Artifact::version("v1"))
            .await
            .unwrap();
        assert_eq!(
            findings[0].code, "read-failed",
            "{attempt} was readable: {}",
            findings[0].message
        );
        assert!(!findings[0].message.contains("outside-content-5521"));
    }
    let err = CallError::Trap {
        plugin: "read-file".into(),
        op: "validate",
        reason: "none".into(),
    };
    assert_aftermath("file", &err).await;
}

#[tokio::test]
async fn environment_variables_are_invisible() {
    // The test process has PATH and HOME; the plugin must see neither, nor anything else.
    assert!(std::env::var("PATH").is_ok());
    let mut s = with_secret(
        spec("read-env", fixtures::READ_ENV),
        "env",
        "api.example.com",
    );
    s.config = json!({ "name": "PATH" });
    let plugin = load(s);
    let findings = plugin
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap();
    let visible: Vec<&str> = findings
        .iter()
        .filter(|f| f.code == "env-visible")
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        visible.is_empty(),
        "the plugin saw environment variables: {visible:?}"
    );
    let lookup = findings.iter().find(|f| f.code == "env-lookup").unwrap();
    assert_eq!(lookup.message, "Err(NotPresent)");
    let err = CallError::Trap {
        plugin: "read-env".into(),
        op: "validate",
        reason: "none".into(),
    };
    assert_aftermath("env", &err).await;
}

#[tokio::test]
async fn secret_goes_only_to_its_bound_host() {
    let bound = TestServer::start(Behaviour::Respond(200, "bound ok".into())).await;
    let other = TestServer::start(Behaviour::Respond(200, "other".into())).await;
    let bound_host = format!("localhost:{}", bound.port);
    let other_host = format!("localhost:{}", other.port);
    let mut s = with_secret(spec("fetch-secret", fixtures::FETCH), "leak", &bound_host);
    allow_loopback_host(&mut s, &bound_host);
    allow_loopback_host(&mut s, &other_host);

    // To the bound host: the value arrives in the header, substituted by the host.
    let mut to_bound = s.clone();
    to_bound.config = json!({ "url": bound.url("localhost", "/api"), "secret": "token" });
    let findings = load(to_bound)
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap();
    assert_eq!(findings[0].code, "status-200");
    let seen = bound.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {}", secret_value("leak")).as_str())
    );

    // To another allowed host: refused, and the other server sees nothing.
    let mut to_other = s.clone();
    to_other.config = json!({ "url": other.url("localhost", "/steal"), "secret": "token" });
    let plugin = load(to_other);
    let started = Instant::now();
    let err = plugin
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Policy { violation: PolicyViolation::SecretNotBound { secret, .. }, .. } if secret == "token"),
        "{err}"
    );
    assert!(
        other.seen().is_empty(),
        "the unbound host must not be reached"
    );
    within(started, plugin.policy().timeout);
    assert_aftermath("leak", &err).await;
}

#[tokio::test]
async fn request_flood_is_capped_per_call() {
    let server = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let host = format!("127.0.0.1:{}", server.port);
    let mut s = with_secret(spec("flood", fixtures::FLOOD), "flood", &host);
    allow_loopback_host(&mut s, &host);
    s.policy.max_requests = 20;
    s.config = json!({ "url": server.url("127.0.0.1", "/") });
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin.notify(&ctx(), &event()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Policy {
                violation: PolicyViolation::TooManyRequests { limit: 20 },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        server.seen().len(),
        20,
        "exactly the allowed number of requests got through"
    );
    within(started, plugin.policy().timeout);
    assert_aftermath("flood", &err).await;
}

#[tokio::test]
async fn dripping_response_is_cut_off_by_the_deadline() {
    let server = TestServer::start(Behaviour::Drip).await;
    let host = format!("127.0.0.1:{}", server.port);
    let mut s = with_secret(spec("fetch-drip", fixtures::FETCH), "drip", &host);
    allow_loopback_host(&mut s, &host);
    s.policy.timeout = Duration::from_millis(1500);
    s.config = json!({ "url": server.url("127.0.0.1", "/slow") });
    let plugin = load(s);
    let started = Instant::now();
    let err = plugin
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { limit_ms: 1500, .. }),
        "{err}"
    );
    assert_eq!(server.seen().len(), 1);
    within(started, Duration::from_millis(1500));
    assert_aftermath("drip", &err).await;
}

#[tokio::test]
async fn changed_component_refuses_to_load_naming_both_digests() {
    let mut s = spec("pinned", fixtures::ECHO);
    s.sha256 = Some("0".repeat(64));
    let err = runtime().load(s).unwrap_err();
    let text = err.to_string();
    let actual = deploy_agent::runtime::inspect::inspect(runtime(), fixtures::ECHO.as_ref())
        .unwrap()
        .sha256;
    assert!(text.contains(&"0".repeat(64)), "{text}");
    assert!(text.contains(&actual), "{text}");
    assert!(text.contains("refusing to load plugin `pinned`"), "{text}");

    let mut ok = spec("pinned", fixtures::ECHO);
    ok.sha256 = Some(actual);
    runtime().load(ok).expect("the right pin loads");
}

#[tokio::test]
async fn second_load_comes_from_the_disk_cache() {
    use deploy_agent::runtime::{LoadSource, Runtime};
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(dir.path().join("cache")).unwrap();
    let first = rt.load(spec("echo", fixtures::ECHO)).unwrap();
    assert_eq!(first.source(), LoadSource::Compiled);
    let second = rt.load(spec("echo", fixtures::ECHO)).unwrap();
    assert_eq!(second.source(), LoadSource::Cache);
    assert!(
        second
            .validate(&ctx(), &Artifact::version("v1"))
            .await
            .unwrap()
            .is_empty()
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1, "one cache entry, no temporary files left");
}

#[tokio::test]
async fn sdk_doc_example_webhook_notifier_posts_json() {
    let server = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let host = format!("127.0.0.1:{}", server.port);
    let mut s = spec("webhook", fixtures::WEBHOOK);
    allow_loopback_host(&mut s, &host);
    s.config = json!({ "url": server.url("127.0.0.1", "/hook") });
    let plugin = load(s);
    plugin.notify(&ctx(), &event()).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({ "text": "deploying v1 to staging", "environment": "staging" })
    );
}

#[tokio::test]
async fn server_errors_map_to_the_variant_that_says_what_to_do() {
    for (status, check) in [
        (503u16, "retryable"),
        (401, "unauthorized"),
        (404, "rejected"),
    ] {
        let server = TestServer::start(Behaviour::Respond(status, "nope".into())).await;
        let host = format!("127.0.0.1:{}", server.port);
        let mut s = spec("webhook", fixtures::WEBHOOK);
        allow_loopback_host(&mut s, &host);
        s.config = json!({ "url": server.url("127.0.0.1", "/hook") });
        let err = load(s).notify(&ctx(), &event()).await.unwrap_err();
        let CallError::Plugin { error, .. } = &err else {
            panic!("expected a plugin error for {status}, got {err}");
        };
        let kind = match error {
            PluginError::Retryable(_) => "retryable",
            PluginError::Unauthorized(_) => "unauthorized",
            PluginError::Rejected(_) => "rejected",
            _ => "other",
        };
        assert_eq!(kind, check, "HTTP {status}: {err}");
        assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
    }
    let retry = CallError::Plugin {
        plugin: "p".into(),
        op: "notify",
        error: PluginError::Retryable(deploy_agent::runtime::Retryable {
            message: "slow down".into(),
            retry_after_ms: Some(2000),
        }),
    };
    assert_eq!(retry.retry_after(), Some(Some(2000)));
}

#[tokio::test]
async fn special_purpose_addresses_in_every_form_are_refused_before_connecting() {
    // Literal addresses from IANA's special-purpose registries and the IPv6 forms that carry
    // a special IPv4 address: each is refused by name, with nothing sent, and the plugin
    // still works afterwards.
    for (host, range) in [
        ("198.18.0.1", "benchmarking"),
        ("192.0.2.10", "documentation"),
        ("192.0.0.170", "IETF protocol assignments"),
        ("240.0.0.1", "reserved"),
        ("[64:ff9b::7f00:1]", "loopback"),
        ("[2002:a9fe:a9fe::1]", "link-local"),
        ("[::7f00:1]", "IPv4-compatible (deprecated)"),
        ("[fec0::1]", "site-local (deprecated)"),
    ] {
        let allowed = format!("{host}:8080");
        let mut s = spec("fetch-special", fixtures::FETCH);
        s.policy
            .allowed_hosts
            .push(HostPattern::parse(&allowed).unwrap());
        s.config = json!({ "url": format!("http://{allowed}/") });
        let plugin = load(s);
        let err = plugin
            .validate(&ctx(), &Artifact::version("v1"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Policy { violation: PolicyViolation::AddressRefused { range: r, .. }, .. } if *r == range),
            "{host}: {err}"
        );
    }
}

#[tokio::test]
async fn placeholders_in_bodies_and_non_ascii_headers_to_unbound_hosts_are_refused() {
    // The docs' promise, by every route: a placeholder in a request to a host its secret is
    // not bound to refuses the request. The body is scanned as it streams (and never gets a
    // substituted value, even for the bound host).
    let bound = TestServer::start(Behaviour::Respond(200, "bound ok".into())).await;
    let other = TestServer::start(Behaviour::Respond(200, "other".into())).await;
    let bound_host = format!("localhost:{}", bound.port);
    let other_host = format!("localhost:{}", other.port);
    let mut s = with_secret(
        spec("fetch-smuggle", fixtures::FETCH),
        "smuggle",
        &bound_host,
    );
    allow_loopback_host(&mut s, &bound_host);
    allow_loopback_host(&mut s, &other_host);
    for route in ["body", "non-ascii"] {
        let mut to_other = s.clone();
        to_other.config =
            json!({ "url": other.url("localhost", "/steal"), "secret": "token", "smuggle": route });
        let err = load(to_other)
            .validate(&ctx(), &Artifact::version("v1"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Policy { violation: PolicyViolation::SecretNotBound { secret, .. }, .. } if secret == "token"),
            "{route}: {err}"
        );
        let reached = other.seen();
        assert!(
            reached
                .iter()
                .all(|r| !String::from_utf8_lossy(&r.body).contains("__secret__")),
            "{route}: the placeholder left: {reached:?}"
        );
        assert!(
            reached.iter().all(|r| r.header("x-note").is_none()),
            "{route}: the header left"
        );
    }
    // To the bound host: the non-ASCII header gets the value; the body keeps the placeholder.
    for (route, value_in_header) in [("non-ascii", true), ("body", false)] {
        let mut to_bound = s.clone();
        to_bound.config =
            json!({ "url": bound.url("localhost", "/ok"), "secret": "token", "smuggle": route });
        let findings = load(to_bound)
            .validate(&ctx(), &Artifact::version("v1"))
            .await
            .unwrap();
        assert_eq!(findings[0].code, "status-200", "{route}");
        let last = bound.seen().pop().unwrap();
        let header = last.header("x-note").map(str::to_string);
        if value_in_header {
            assert!(
                header.is_some_and(|h| h.ends_with(&secret_value("smuggle"))),
                "{route}: {last:?}"
            );
        } else {
            let body = String::from_utf8_lossy(&last.body).into_owned();
            assert!(body.contains("__secret__token__"), "{route}: {body}");
            assert!(!body.contains(&secret_value("smuggle")), "{route}: {body}");
        }
    }
}
