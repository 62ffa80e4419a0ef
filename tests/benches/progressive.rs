//! A canary's abort: the time from the analysis's failing measurement to all traffic back on
//! the stable release, next to the poll interval, through the CLI against the Kubernetes
//! stand-in (`tests/support/cluster.rs`: real requests routed by the HTTPRoute's weights, an
//! error rate computed from them, the gateway controller one read behind each write).
//!
//! Each round deploys a good release, then one that fails real requests (`faulty`) with
//! `steps = [{ weight = 50, pause_ms = 5000 }, { weight = 100 }]`; the analysis (every
//! 100 ms, at most 20 % errors) fails at 50 %. Printed per poll interval, medians of ROUNDS:
//! failing measurement → the route written back to 0 % (what users see), and → the run ended
//! (the agent saw it take effect, journaled and notified).
//!
//! `cargo bench -p deploy-agent-tests --bench progressive` (ROUNDS=N, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use deploy_agent_tests::bin;
use deploy_agent_tests::cluster::Cluster;

const TOKEN: &str = "k8s-bench-token-0123456789abcdef";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn round(poll_ms: u64) -> (f64, f64) {
    let c = Cluster::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster-ca.pem"), &c.ca_pem).unwrap();
    let deploy = format!(
        "poll_interval_ms = {poll_ms}\nstrategy = \"canary\"\nsteps = [{{ weight = 50, pause_ms = 5000 }}, {{ weight = 100 }}]\nscale_down_delay_ms = 0"
    );
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "[agent]\nstate_dir = \"state\"\n{}",
            c.agent_toml(&deploy, true)
        ),
    )
    .unwrap();
    let _users = c.users();
    let run = |version: &str| {
        let out = std::process::Command::new(bin())
            .current_dir(dir.path())
            .args([
                "deploy",
                "--env",
                "prod",
                "--version",
                version,
                "--output",
                "json",
            ])
            .env("K8S_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            Instant::now(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = tokio::task::block_in_place(|| run("v1"));
    assert_eq!(code, Some(0), "{err}");
    let from = c.state.lock().unwrap().weight_log.len();
    let (code, ended, err) = tokio::task::block_in_place(|| run("v2-faulty"));
    assert_eq!(code, Some(1), "{err}");
    let st = c.state.lock().unwrap();
    let fifty = st.weight_log[from..]
        .iter()
        .find(|(_, w)| *w == 50)
        .map(|(t, _)| *t)
        .expect("the canary reached 50 %");
    let failed = st
        .queries
        .iter()
        .find(|(t, rate)| *t > fifty && *rate > 0.2)
        .map(|(t, _)| *t)
        .expect("a failing measurement");
    let stable = st.weight_log[from..]
        .iter()
        .find(|(t, w)| *t > failed && *w == 0)
        .map(|(t, _)| *t)
        .expect("the route went back to 0 %");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(stable - failed), ms(ended - failed))
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Build the binary (and the plugins) before timing anything.
    let _ = bin();
    println!(
        "canary abort after a failed analysis at 50 % (medians of {rounds} rounds; analysis every 100 ms)"
    );
    println!(
        "{:>16} {:>28} {:>24}",
        "poll interval", "failure → route at 0 %", "failure → run ended"
    );
    for poll in [20u64, 100, 500] {
        let mut to_stable = Vec::new();
        let mut to_end = Vec::new();
        for _ in 0..rounds {
            let (s, e) = rt.block_on(round(poll));
            to_stable.push(s);
            to_end.push(e);
        }
        println!(
            "{:>13} ms {:>25.1} ms {:>21.1} ms",
            poll,
            median(to_stable),
            median(to_end)
        );
    }
}
