//! Progressive delivery end to end through the CLI, against the Kubernetes stand-in that
//! routes real requests by the HTTPRoute's weights (`tests/support/cluster.rs`): a canary in
//! steps with the analysis watching the error rate of real traffic, a kill -9 between steps,
//! an analysis failure at 50 %, and blue-green with a preview check, the switch and the old
//! release retired after the delay.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use deploy_agent_tests::cluster::Cluster;
use serde_json::Value;

use crate::project::{Project, stderr};

const TOKEN: &str = "k8s-progressive-token-0123456789";

/// A project whose `prod` environment runs `deploy` on the cluster.
fn project(c: &Cluster, deploy: &str, route: bool) -> Project {
    let p = Project::new("", "");
    std::fs::write(p.path("cluster-ca.pem"), &c.ca_pem).unwrap();
    let base = std::fs::read_to_string(p.path("agent.toml")).unwrap();
    std::fs::write(
        p.path("agent.toml"),
        format!("{base}{}", c.agent_toml(deploy, route)),
    )
    .unwrap();
    p
}

fn deploy(
    p: &Project,
    version: &str,
    failpoint: Option<&str>,
) -> (Option<i32>, Option<i32>, Value, String) {
    let mut cmd = p.command(&[
        "deploy",
        "--env",
        "prod",
        "--version",
        version,
        "--output",
        "json",
    ]);
    cmd.env("K8S_TOKEN", TOKEN);
    if let Some(f) = failpoint {
        cmd.env("DEPLOY_AGENT_FAILPOINT", f);
    }
    let out = tokio::task::block_in_place(|| cmd.output().unwrap());
    let err = stderr(&out);
    assert!(!err.contains(TOKEN) && !String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), out.status.signal(), v, err)
}

fn stages(v: &Value) -> Vec<(String, String)> {
    v["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

const CANARY: &str = r#"poll_interval_ms = 20
strategy = "canary"
steps = [{ weight = 10, pause_ms = 500 }, { weight = 50, pause_ms = 500 }, { weight = 100 }]
scale_down_delay_ms = 200"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_shifts_real_traffic_in_steps_resumes_after_kill_9_and_aborts_on_analysis() {
    let c = Cluster::start(TOKEN).await;
    let p = project(&c, CANARY, true);
    let _users = c.users();

    // `plan` shows the steps.
    let mut plan = p.command(&["plan", "--env", "prod", "--version", "v1"]);
    plan.env("K8S_TOKEN", TOKEN);
    let out = tokio::task::block_in_place(|| plan.output().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10 % → 50 % → 100 %"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("step 2: 50 % of traffic, hold 0 s"), "{text}");

    // 1. A good release: 10 %, 50 %, 100 %, then it is the stable one and the old one retires.
    let (code, _, v, err) = deploy(&p, "v1", None);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let release = v["deployment"]["release_id"].as_str().unwrap().to_string();
    assert_eq!(
        stages(&v)
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        [
            "lock", "validate", "backup", "migrate", "deploy", "verify", "shift", "promote",
            "watch", "retire", "notify"
        ]
    );
    {
        let st = c.state.lock().unwrap();
        assert_eq!(st.weights, [10, 50, 100, 0], "weights written to the route");
        assert_eq!(st.selected("web").as_deref(), Some(release.as_str()));
        assert_eq!(
            st.replicas("web"),
            Some(0),
            "the template's release `initial` retired"
        );
    }
    for (weight, want) in [(10u8, 0.10), (50, 0.50)] {
        let (n, share) = c.split_at(weight, "web:v1");
        assert!(n >= 40, "only {n} requests were routed at {weight} %");
        assert!(
            (share - want).abs() <= 0.05,
            "{share} of {n} requests reached v1 at {weight} %"
        );
    }
    let (n, share) = c.split_at(0, "web:v1");
    assert!(n > 0 && share > 0.0, "after promotion users reach v1");
    let switched = c.logged(&format!("select web {release}")).unwrap();
    let retired = c.logged("scale web 0").unwrap();
    assert!(retired.duration_since(switched) >= Duration::from_millis(200));

    // 2. kill -9 once 10 % took effect: the route stays at 10 %, and the next run resumes the
    // same step with the same weight (no reset to 0, no jump to 50 before the pause).
    let (code, signal, _, err) = deploy(&p, "v2", Some("after:weight-10"));
    assert_eq!((code, signal), (None, Some(9)), "{err}");
    let before = {
        let st = c.state.lock().unwrap();
        assert_eq!(st.preview_weight(), 10);
        st.weights.len()
    };
    let (code, _, v, err) = deploy(&p, "v2", None);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let shift = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "shift")
        .unwrap();
    assert!(
        shift["detail"]
            .as_str()
            .unwrap()
            .starts_with("resumed at step 1 of 3 (10 %); "),
        "{shift:#}"
    );
    assert_eq!(c.state.lock().unwrap().weights[before..], [50, 100, 0]);
    let v2 = v["deployment"]["release_id"].as_str().unwrap().to_string();

    // 3. A release that fails real requests (but not its health check): fine at 10 %, the
    // analysis fails at 50 %, and all traffic goes back to v2.
    let (code, _, v, err) = deploy(&p, "v3-faulty", None);
    assert_eq!(code, Some(1), "{v:#}\n{err}");
    let error = v["deployment"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("canary step 2 (50 %)"), "{error}");
    assert!(error.contains("analysis `error rate` failed"), "{error}");
    assert!(
        error.contains("all traffic is back on the stable release"),
        "{error}"
    );
    {
        let st = c.state.lock().unwrap();
        assert_eq!(st.weights[st.weights.len() - 3..], [10, 50, 0]);
        assert_eq!(st.preview_weight(), 0);
        assert_eq!(st.selected("web").as_deref(), Some(v2.as_str()));
    }
    let before = c.state.lock().unwrap().routed.len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = c.state.lock().unwrap();
    let after: Vec<_> = st.routed[before..].iter().collect();
    assert!(!after.is_empty());
    assert!(
        after
            .iter()
            .all(|r| r.image.ends_with("web:v2") && r.status == 200),
        "after the abort every request reaches v2"
    );
    drop(st);
    let mut releases = p.command(&["releases", "--env", "prod", "--output", "json"]);
    releases.env("K8S_TOKEN", TOKEN);
    let out = tokio::task::block_in_place(|| releases.output().unwrap());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "v3-faulty")
        .unwrap();
    assert_eq!(failed["state"], "failed", "{list:#}");
    assert!(c.api.assert_fits_spec() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn blue_green_verifies_the_preview_switches_at_once_and_retires_after_the_delay() {
    let c = Cluster::start(TOKEN).await;
    let p = project(
        &c,
        "poll_interval_ms = 20\nstrategy = \"blue-green\"\nscale_down_delay_ms = 400",
        false,
    );
    let _users = c.users();
    let (code, _, v, err) = deploy(&p, "v1", None);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let v1 = v["deployment"]["release_id"].as_str().unwrap().to_string();
    assert!(
        stages(&v).contains(&("retire".into(), "done".into())),
        "{v:#}"
    );
    // The verify check reached the preview Service, which selected v1 before the switch.
    assert!(
        c.gateway
            .seen()
            .iter()
            .any(|r| r.path == "/preview/healthz"),
        "the check ran on the preview"
    );
    let switched = c.logged(&format!("select web {v1}")).unwrap();
    let previewed = c.logged(&format!("select web-preview {v1}")).unwrap();
    assert!(previewed < switched);
    let retired = c.logged("scale web 0").unwrap();
    assert!(retired.duration_since(switched) >= Duration::from_millis(400));
    // No request saw a mix: before the switch v0, after it v1.
    {
        let st = c.state.lock().unwrap();
        assert!(st.weights.is_empty(), "blue-green never touches weights");
        let images: Vec<&str> = st.routed.iter().map(|r| r.image.as_str()).collect();
        let first_v1 = images.iter().position(|i| i.ends_with("web:v1")).unwrap();
        assert!(images[..first_v1].iter().all(|i| i.ends_with("web:v0")));
        assert!(images[first_v1..].iter().all(|i| i.ends_with("web:v1")));
    }

    // A release whose preview fails its check is never switched to: v1 stays, untouched.
    let log_before = c.state.lock().unwrap().log.len();
    let (code, _, v, err) = deploy(&p, "v2-unhealthy", None);
    assert_eq!(code, Some(1), "{v:#}\n{err}");
    assert!(
        stages(&v).contains(&("verify".into(), "failed".into())),
        "{v:#}"
    );
    let st = c.state.lock().unwrap();
    assert_eq!(st.selected("web").as_deref(), Some(v1.as_str()));
    let changes: Vec<&str> = st.log[log_before..]
        .iter()
        .map(|(_, e)| e.as_str())
        .collect();
    assert!(
        changes.iter().all(|e| !e.starts_with("select web ")),
        "the active Service was not touched: {changes:?}"
    );
    assert!(
        st.replicas(&format!("web-{}", v1.to_ascii_lowercase()))
            .unwrap()
            > 0
    );
    drop(st);
    c.api.assert_fits_spec();
}

#[test]
fn a_canary_needs_a_target_that_shifts_traffic() {
    let p = Project::new("", "");
    p.edit_config(
        "poll_interval_ms = 10\n",
        "poll_interval_ms = 10\nstrategy = \"canary\"\nsteps = [{ weight = 10 }, { weight = 100 }]\n",
    );
    let out = p.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the `local` target cannot shift traffic in steps"),
        "{err}"
    );
    assert!(err.contains("strategy = \"blue-green\""), "{err}");
    // Blue-green is what the local target does: staged beside the live one, switched at once.
    let p = Project::new("", "");
    p.edit_config(
        "poll_interval_ms = 10\n",
        "poll_interval_ms = 10\nstrategy = \"blue-green\"\n",
    );
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The same canary through the daemon: the API's run shows each step's weight, the console's
/// run page shows the traffic the release has, and `/metrics` has the gauge.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_the_console_and_metrics_show_the_canary_weight() {
    use deploy_agent_tests::daemon::{Daemon, token_entry};
    let c = Cluster::start(TOKEN).await;
    let p = project(&c, CANARY, true);
    let (admin, entry) = token_entry("admin", "admin", None);
    let base = std::fs::read_to_string(p.path("agent.toml")).unwrap();
    std::fs::write(p.path("agent.toml"), format!("{base}\n[server]\n{entry}")).unwrap();
    let _users = c.users();
    let d = Daemon::start(&p.path(""), &[("K8S_TOKEN", TOKEN)]).await;
    let trigger = serde_json::json!({"environment": "prod", "version": "v1", "reason": "canary"});
    let queued = d
        .json("POST", "/v1/deployments", &admin, Some(&trigger))
        .await;
    let id = queued["id"].as_str().unwrap().to_string();
    let mut run = Value::Null;
    for _ in 0..600 {
        run = d.json("GET", &format!("/v1/runs/{id}"), &admin, None).await;
        if run["status"] == "succeeded" || run["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", d.log());
    let steps: Vec<(i64, &str)> = run["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["weight"].as_i64().unwrap(), s["phase"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [(10, "done"), (50, "done"), (100, "done")],
        "{run:#}"
    );
    let release = run["deployment"]["release_id"]
        .as_str()
        .unwrap()
        .to_string();

    let session = d.sign_in(&admin).await;
    let page = d
        .raw(
            "GET",
            &format!("/runs/{id}"),
            None,
            &[("cookie".to_string(), session)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("<h2>Traffic</h2>"), "{html}");
    assert!(
        html.contains("data-weight=\"100\">100 %</strong>"),
        "{html}"
    );
    assert!(
        html.contains("<tr data-step=\"2\"><td>2</td><td>50 %</td>"),
        "{html}"
    );

    let metrics = d
        .raw("GET", "/metrics", Some(&admin), &[], None)
        .await
        .unwrap()
        .text();
    let line =
        format!("deploy_agent_traffic_weight{{environment=\"prod\",release=\"{release}\"}} 100");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
}

/// Without an HTTPRoute, a canary by replica ratio: Argo Rollouts' counts for 10 replicas,
/// both releases behind the active Service while it runs, the Service pinned to the new one at
/// the end; the gateway's share of requests follows the pods.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_by_replica_ratio_scales_as_argo_rollouts_counts() {
    let c = Cluster::start(TOKEN).await;
    {
        let mut st = c.state.lock().unwrap();
        let web = st.deployments.get_mut("web").unwrap();
        web["spec"]["replicas"] = serde_json::json!(10);
        web["status"]["readyReplicas"] = serde_json::json!(10);
    }
    let p = project(
        &c,
        "poll_interval_ms = 20\nstrategy = \"canary\"\nsteps = [{ weight = 25, pause_ms = 600 }, { weight = 100 }]\nscale_down_delay_ms = 0",
        false,
    );
    let _users = c.users();
    let (code, _, v, err) = deploy(&p, "v1", None);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let id = v["deployment"]["release_id"].as_str().unwrap().to_string();
    let canary = format!("web-{}", id.to_ascii_lowercase());
    let st = c.state.lock().unwrap();
    let scales: Vec<&str> = st
        .log
        .iter()
        .map(|(_, e)| e.as_str())
        .filter(|e| e.starts_with("scale "))
        .collect();
    // 25 % of 10 with surge: (3, 8), as Argo Rollouts rounds; then (10, 0); then retired.
    assert_eq!(
        scales,
        [
            format!("scale {canary} 3").as_str(),
            "scale web 8",
            format!("scale {canary} 10").as_str(),
            "scale web 0",
            "scale web 0",
        ],
        "{:#?}",
        st.log
    );
    assert_eq!(st.selected("web").as_deref(), Some(id.as_str()));
    assert!(st.weights.is_empty(), "no route was touched");
    // While both served, requests went to the pods in proportion: 3 of 11.
    let at = |entry: &str| st.log.iter().find(|(_, e)| e == entry).unwrap().0;
    let (from, to) = (at("select web "), at(&format!("scale {canary} 10")));
    let during: Vec<_> = st
        .routed
        .iter()
        .filter(|r| r.at > from && r.at < to)
        .collect();
    let share = during
        .iter()
        .filter(|r| r.image.ends_with("web:v1"))
        .count() as f64
        / during.len().max(1) as f64;
    assert!(during.len() >= 40, "{} requests at 25 %", during.len());
    assert!(
        (share - 3.0 / 11.0).abs() <= 0.05,
        "{share} of {} requests reached v1",
        during.len()
    );
    drop(st);
    c.api.assert_fits_spec();
}

/// `plan` runs the validator, which names a set-up that would send traffic to every release
/// at once (a Service selecting without the release label) or a route rule the canary cannot
/// weigh (no backendRef to the preview Service).
#[tokio::test(flavor = "multi_thread")]
async fn validate_names_a_set_up_that_would_mix_releases() {
    let c = Cluster::start(TOKEN).await;
    let p = project(&c, CANARY, true);
    let toml = std::fs::read_to_string(p.path("agent.toml")).unwrap();
    std::fs::write(
        p.path("agent.toml"),
        format!("{toml}\n[environments.prod.validate]\nplugins = [\"kubernetes\"]\n"),
    )
    .unwrap();
    let plan = || {
        let mut cmd = p.command(&[
            "plan",
            "--env",
            "prod",
            "--version",
            "v1",
            "--output",
            "json",
        ]);
        cmd.env("K8S_TOKEN", TOKEN);
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        let codes: Vec<(String, String)> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["code"].as_str().unwrap().to_string(),
                    f["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (v, codes)
    };
    let (v, codes) = plan();
    assert_eq!(v["blocked"], false, "{v:#}");
    assert!(
        codes.is_empty(),
        "the stand-in's set-up is right: {codes:?}"
    );
    {
        let mut st = c.state.lock().unwrap();
        let selector = st
            .services
            .get_mut("web-preview")
            .unwrap()
            .pointer_mut("/spec/selector")
            .unwrap()
            .as_object_mut()
            .unwrap();
        selector.remove("deploy-agent.dev/release");
        st.route["spec"]["rules"][0]["backendRefs"]
            .as_array_mut()
            .unwrap()
            .retain(|b| b["name"] != "web-preview");
    }
    let (v, codes) = plan();
    assert_eq!(v["blocked"], true, "{v:#}");
    let has = |code: &str, text: &str| codes.iter().any(|(c, m)| c == code && m.contains(text));
    assert!(
        has("service-not-pinned", "Service web-preview"),
        "{codes:?}"
    );
    assert!(
        has("route-backends", "no backendRef to web-preview"),
        "{codes:?}"
    );
    assert!(!has("service-not-pinned", "Service web's"), "{codes:?}");
}
