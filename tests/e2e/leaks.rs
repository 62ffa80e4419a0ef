//! The sandbox's leak classes, each with its hostile fixture: a secret reflected by its own
//! bound host, values on their way out in any encoding, values split or encoded in logs and
//! errors, signing oracles, and memory the plugin makes the host allocate.
//!
//! Each test asserts the specific error, that no form of the secret's value appears in any
//! captured output, log or request a test server received, and that the agent still serves
//! a well-behaved plugin afterwards.

use base64::Engine as _;
use deploy_agent::runtime::{
    Artifact, CallContext, CallError, HostPattern, PluginError, PluginSpec, PolicyViolation,
    Secret, SecretValue, Sigv4Scope,
};
use deploy_agent_tests::http::{Behaviour, TestServer};
use deploy_agent_tests::{event, fixtures, load, logs, spec};
use serde_json::json;

/// A value unique to one test, long enough that every encoding of it is matched.
fn value(test: &str) -> String {
    format!("sv/{test}+{:x}=\"q\"", std::process::id())
}

/// The forms of `value` a leak could take (what the host must never let through).
fn forms(value: &str) -> Vec<String> {
    let b = value.as_bytes();
    let e = &base64::engine::general_purpose::STANDARD;
    vec![
        value.to_string(),
        hex::encode(b),
        hex::encode_upper(b),
        e.encode(b).trim_end_matches('=').to_string(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        b.iter().map(|c| format!("%{c:02X}")).collect(),
        serde_json::to_string(value)
            .unwrap()
            .trim_matches('"')
            .to_string(),
    ]
}

/// Panics if any form of `value` is in `text`.
fn assert_clean(what: &str, text: &str, value: &str) {
    for form in forms(value) {
        assert!(
            !text.contains(&form),
            "{what} carries the secret as `{form}`:\n{text}"
        );
    }
}

fn ctx() -> CallContext {
    CallContext::new("staging")
}

/// The reflect fixture with `token` (value unique to `test`) bound to `bound`, and every
/// host in `allowed` reachable.
fn reflect(test: &str, bound: &str, allowed: &[&str]) -> PluginSpec {
    let mut s = spec(test, fixtures::REFLECT);
    s.secrets.insert(
        "token".into(),
        Secret::new(
            SecretValue::new(value(test)),
            vec![HostPattern::parse(bound).unwrap()],
        ),
    );
    for host in allowed {
        s.policy
            .allowed_hosts
            .push(HostPattern::parse(host).unwrap());
    }
    s.policy.allowed_ranges.push("127.0.0.0/8".parse().unwrap());
    s
}

/// The agent still serves a well-behaved plugin, and nothing it logged or said leaks.
async fn assert_aftermath(test: &str, error: Option<&CallError>) {
    let echo = load(spec("echo", fixtures::ECHO));
    echo.notify(&ctx(), &event())
        .await
        .expect("a well-behaved plugin still works afterwards");
    let v = value(test);
    if let Some(e) = error {
        assert_clean("the error", &format!("{e} {e:?}"), &v);
    }
    assert_clean("the captured logs", &logs::captured(), &v);
}

#[tokio::test]
async fn a_reflected_secret_reads_back_as_its_placeholder() {
    let echo = TestServer::start(Behaviour::Echo).await;
    let other = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let bound = format!("127.0.0.1:{}", echo.port);
    let elsewhere = format!("127.0.0.1:{}", other.port);
    let mut s = reflect("reflect", &bound, &[&bound, &elsewhere]);
    s.config = json!({ "mode": "reflect", "url": echo.url("127.0.0.1", "/debug") });
    let findings = load(s.clone())
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap();
    // The bound host got the real value; the plugin read back only placeholders, in the
    // body (raw and in each encoding the server used) and in the reflecting header.
    let v = value("reflect");
    assert_eq!(
        echo.seen()[0].header("authorization"),
        Some(format!("Bearer {v}").as_str())
    );
    let body = &findings[0].message;
    assert_eq!(body.matches("__secret__token__").count(), 7, "{body}");
    assert!(
        findings[1]
            .message
            .contains("x-echo: Bearer __secret__token__"),
        "{}",
        findings[1].message
    );
    for f in &findings {
        assert_clean("what the plugin read", &f.message, &v);
    }

    // Posting what it read to another host sends only placeholders, which the host refuses
    // there: the other server sees nothing.
    s.config["exfil"] = json!(other.url("127.0.0.1", "/collect"));
    let err = load(s)
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Policy {
                violation: PolicyViolation::SecretNotBound { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(other.seen().is_empty());
    assert_aftermath("reflect", Some(&err)).await;
}

#[tokio::test]
async fn a_secret_value_on_its_way_out_is_refused_in_every_encoding_to_every_host() {
    let bound_server = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let other = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let bound = format!("127.0.0.1:{}", bound_server.port);
    let elsewhere = format!("127.0.0.1:{}", other.port);
    let base = reflect("exfil", &bound, &[&bound, &elsewhere]);
    for via in [
        "body-base64",
        "body-json",
        "header-hex",
        "raw-header",
        "url-percent",
    ] {
        for (server, host) in [(&other, "other"), (&bound_server, "bound")] {
            let mut s = base.clone();
            s.config = json!({
                "mode": "exfil",
                "leaked": value("exfil"),
                "exfil": server.url("127.0.0.1", "/in"),
                "via": via,
            });
            let err = load(s)
                .validate(&ctx(), &Artifact::version("v1"))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, CallError::Policy { violation: PolicyViolation::SecretValueInRequest { secret, .. }, .. } if secret == "token"),
                "{via} to the {host} host: {err}"
            );
        }
    }
    for server in [&other, &bound_server] {
        for seen in server.seen() {
            let all = format!(
                "{} {:?} {}",
                seen.target,
                seen.headers,
                String::from_utf8_lossy(&seen.body)
            );
            assert_clean("a request a server received", &all, &value("exfil"));
        }
    }
    assert_aftermath("exfil", None).await;
}

#[tokio::test]
async fn values_split_across_log_lines_or_encoded_in_errors_are_redacted() {
    let mut s = reflect("logleak", "api.example.com", &["api.example.com"]);
    s.config = json!({ "mode": "log-leak", "leaked": value("logleak") });
    let err = load(s)
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin { error: PluginError::Rejected(m), .. } if m.contains("[redacted:token]")),
        "{err}"
    );
    let logs = logs::captured();
    assert!(logs.contains("first half: [redacted:token]"), "{logs}");
    assert!(logs.contains("b64 [redacted:token]") && logs.contains("hex [redacted:token]"));
    assert_aftermath("logleak", Some(&err)).await;
}

/// Plugins built against the WIT package before signing was bound to purposes still load;
/// the withdrawn `hmac-sha256` answers with a policy error, and the plugin keeps working.
#[tokio::test]
async fn components_built_against_yesterdays_wit_still_load() {
    let mut s = spec("legacy-echo", fixtures::LEGACY_ECHO);
    s.secrets.insert(
        "token".into(),
        Secret::new(
            SecretValue::new(value("legacy")),
            vec![HostPattern::parse("x.example").unwrap()],
        ),
    );
    s.config = json!({ "hmac": "token" });
    let legacy = load(s.clone());
    let err = legacy
        .validate(&ctx(), &Artifact::version("20261121"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Policy { violation: PolicyViolation::SigningRefused { reason, .. }, .. } if reason.contains("withdrawn")),
        "{err}"
    );
    legacy
        .notify(&ctx(), &event())
        .await
        .expect("its other calls still work");
    let s3 = load(spec("legacy-s3", fixtures::LEGACY_S3));
    s3.check()
        .await
        .expect("the S3 plugin built then loads and instantiates");
    assert_aftermath("legacy", Some(&err)).await;
}

fn amz_now(offset_secs: i64) -> String {
    deploy_agent::time::compact(deploy_agent::time::now_secs() + offset_secs)
}

/// The expected SigV4 signature, derived here independently.
fn sigv4(secret: &str, date: &str, region: &str, service: &str, sts: &str) -> String {
    use hmac::Mac;
    let mac = |key: &[u8], data: &str| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        m.update(data.as_bytes());
        m.finalize().into_bytes().to_vec()
    };
    let k = mac(format!("AWS4{secret}").as_bytes(), date);
    let k = mac(&k, region);
    let k = mac(&k, service);
    let k = mac(&k, "aws4_request");
    hex::encode(mac(&k, sts))
}

#[tokio::test]
async fn sigv4_signs_only_for_its_services_regions_and_the_present() {
    let mut s = spec("sigv4", fixtures::REFLECT);
    let mut secret = Secret::new(
        SecretValue::new(value("sigv4")),
        vec![HostPattern::parse("s3.eu-west-1.amazonaws.com").unwrap()],
    );
    secret.sigv4 = Some(Sigv4Scope {
        services: vec!["s3".into()],
        regions: vec!["eu-west-1".into()],
    });
    s.secrets.insert("token".into(), secret);
    let sts = |stamp: &str, region: &str, service: &str| {
        format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{}/{region}/{service}/aws4_request\n{}",
            &stamp[..8],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )
    };
    let call = |stamp: String, region: &str, service: &str, string_to_sign: String| {
        let mut s = s.clone();
        s.config = json!({"mode": "sigv4", "date": &stamp[..8], "region": region,
            "service": service, "string_to_sign": string_to_sign});
        async move { load(s).validate(&ctx(), &Artifact::version("v1")).await }
    };
    let now = amz_now(0);
    let good = sts(&now, "eu-west-1", "s3");
    let findings = call(now.clone(), "eu-west-1", "s3", good.clone())
        .await
        .unwrap();
    assert_eq!(
        findings[0].message,
        sigv4(&value("sigv4"), &now[..8], "eu-west-1", "s3", &good)
    );

    let refused = |r: Result<Vec<_>, CallError>| match r {
        Err(CallError::Policy {
            violation: PolicyViolation::SigningRefused { reason, .. },
            ..
        }) => reason,
        other => panic!("not refused: {other:?}"),
    };
    let other_service = call(
        now.clone(),
        "eu-west-1",
        "iam",
        sts(&now, "eu-west-1", "iam"),
    )
    .await;
    assert!(refused(other_service).contains("service `iam`"));
    let other_region = call(now.clone(), "us-east-1", "s3", sts(&now, "us-east-1", "s3")).await;
    assert!(refused(other_region).contains("region `us-east-1`"));
    let stale = amz_now(-20 * 60);
    let old = call(
        stale.clone(),
        "eu-west-1",
        "s3",
        sts(&stale, "eu-west-1", "s3"),
    )
    .await;
    assert!(refused(old).contains("from the host's clock"));
    // The day's key (`kDate` and on) as a "string to sign": not a SigV4 string to sign.
    let k_date = call(now.clone(), "eu-west-1", "s3", now[..8].to_string()).await;
    assert!(refused(k_date).contains("four lines"));
    assert_aftermath("sigv4", None).await;
}

#[test]
fn config_check_names_a_sigv4_secret_without_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[plugins.s3]\npath = {:?}\n[plugins.s3.policy]\nallowed_hosts = [\"s3.eu-west-1.amazonaws.com\"]\n[plugins.s3.config]\naccess_key_id = \"AKIDEXAMPLE\"\n[plugins.s3.secrets.key]\nfrom = \"${{env:K}}\"\nhosts = [\"s3.eu-west-1.amazonaws.com\"]\n",
        fixtures::S3
    );
    std::fs::write(dir.path().join("agent.toml"), &toml).unwrap();
    let err = deploy_agent::config::Config::load(&dir.path().join("agent.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("imports `sigv4-signature`") && err.contains("agent.toml:2"),
        "{err}"
    );
    assert!(err.contains("sigv4 = { services"), "{err}");
    std::fs::write(
        dir.path().join("agent.toml"),
        format!("{toml}sigv4 = {{ services = [\"s3\"], regions = [\"eu-west-1\"] }}\n"),
    )
    .unwrap();
    deploy_agent::config::Config::load(&dir.path().join("agent.toml"))
        .expect("valid with its scope");
}

#[tokio::test]
async fn memory_the_plugin_makes_the_host_hold_is_counted_against_the_call() {
    for mode in ["bodies", "fields"] {
        let mut s = spec("host-hog", fixtures::HOST_HOG);
        s.config = json!({ "mode": mode });
        let err = load(s).notify(&ctx(), &event()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CallError::Policy {
                    violation: PolicyViolation::HostBudget { .. },
                    ..
                }
            ),
            "{mode}: {err}"
        );
    }
    // A 40 MiB error message counts against max_return_bytes like any returned value.
    let mut s = spec("huge-error", fixtures::HUGE_RETURN);
    s.config = json!({ "as_error": true, "mib": 40 });
    let err = load(s.clone())
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::ReturnTooLarge { .. }), "{err}");
    // One within the cap is cut for people and the state store, with a note.
    s.config = json!({ "as_error": true, "mib": 1 });
    s.policy.max_return_bytes = 2 << 20;
    let err = load(s)
        .validate(&ctx(), &Artifact::version("v1"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.len() < 8192 && text.contains("[cut: "),
        "{} bytes",
        text.len()
    );
    assert_aftermath("host-hog", None).await;
}

/// Through the whole pipeline: what a hostile validator logs and fails with reaches the
/// terminal, the run's record and the state files redacted.
#[test]
fn nothing_a_plugin_leaks_reaches_the_state_files_or_the_terminal() {
    let v = value("pipeline");
    let p = crate::project::Project::new(
        "",
        &format!(
            r#"
[plugins.reflect]
path = {path:?}
[plugins.reflect.policy]
allowed_hosts = ["api.example.com"]
[plugins.reflect.secrets.token]
from = "${{env:LEAK_TOKEN}}"
hosts = ["api.example.com"]
[plugins.reflect.config]
mode = "log-leak"
leaked = {v:?}

[environments.local.validate]
plugins = ["reflect"]
"#,
            path = fixtures::REFLECT
        ),
    );
    let out = p
        .command(&["deploy", "--env", "local", "--output", "json"])
        .env("LEAK_TOKEN", &v)
        .env("DEPLOY_AGENT_LOG", "debug")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("[redacted:token]"), "{stdout}");
    assert_clean("the deploy's output", &stdout, &v);
    assert_clean("the deploy's log", &stderr, &v);
    let history = p.json(&["history", "--env", "local"]);
    assert_clean("the history", &history.to_string(), &v);
    let mut files = vec![p.path("state")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert_clean(
                &path.display().to_string(),
                &String::from_utf8_lossy(&bytes),
                &v,
            );
        }
    }
}
