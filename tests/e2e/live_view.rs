//! The live view of a deploy, on a terminal and in a log; `status` reporting drift between
//! the store and the target; a held lock that says who holds it and `deploy --wait`.

use deploy_agent_tests::pty;
use serde_json::Value;

use crate::project::{Project, stderr};

/// A project whose verify check fails twice before it passes and whose watch lasts 3 s: two
/// stages long enough to look frozen without progress.
fn slow_project() -> Project {
    let p = Project::new(
        "",
        r#"
[[environments.local.checks]]
name = "warmed up"
command = "n=$(cat tries 2>/dev/null || echo 0); echo $((n+1)) > tries; test $n -ge 2"
retries = 3
interval_ms = 600
"#,
    );
    p.edit_config(
        "lock_lease_ms = 60000",
        "lock_lease_ms = 60000\nwatch_ms = 3000",
    );
    p
}

/// The elapsed time a running line shows, in seconds (`… watch     1.4 s  ...`).
fn elapsed_s(frame: &str) -> f64 {
    let rest = frame.split_whitespace().collect::<Vec<_>>();
    match rest.as_slice() {
        [_, _, n, "s", ..] => n.parse().unwrap_or(-1.0),
        _ => -1.0,
    }
}

#[test]
fn on_a_terminal_each_long_stage_redraws_its_progress_with_a_moving_clock() {
    let p = slow_project();
    let mut cmd = p.command(&["deploy", "--env", "local"]);
    cmd.env("COLUMNS", "200");
    let (code, out) = pty::run(cmd);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("is live on local"), "{text}");
    for (stage, says) in [
        ("verify", "check `warmed up` attempt"),
        ("watch", "watch window:"),
    ] {
        let frames = pty::frames(&out, stage);
        let saying: Vec<&String> = frames.iter().filter(|f| f.contains(says)).collect();
        assert!(
            saying.len() >= 3,
            "{stage}: fewer than three frames saying `{says}`: {frames:#?}"
        );
        // The clock moves and what it says changes: it never looks frozen.
        let times: Vec<f64> = saying.iter().map(|f| elapsed_s(f)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(times[times.len() - 1] > times[0], "{times:?}");
        let distinct: std::collections::BTreeSet<&String> = saying.iter().copied().collect();
        assert!(distinct.len() >= 3, "{distinct:#?}");
    }
    // The retries are shown as they happen, and the window counts down.
    let verify = pty::frames(&out, "verify").join("\n");
    assert!(verify.contains("attempt 1/4 failed"), "{verify}");
    assert!(verify.contains("attempt 2/4 failed"), "{verify}");
    let watch = pty::frames(&out, "watch").join("\n");
    assert!(
        watch.contains("2 s left") && watch.contains("0 s left"),
        "{watch}"
    );
    // Each redraw clears the line it replaces; the stage's end is one line with its mark.
    assert!(text.contains("\r\x1b[2K"), "{text}");
    assert!(text.contains("✓ watch"), "{text}");
}

#[test]
fn in_a_log_long_stages_write_plain_progress_lines() {
    let p = slow_project();
    let out = p.run(&["deploy", "--env", "local"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
    let watch: Vec<&str> = text.lines().filter(|l| l.contains("… watch")).collect();
    assert!(watch.len() >= 2, "{text}");
    assert!(
        watch.iter().all(|l| l.contains("watch window:")),
        "{watch:?}"
    );
    // At most one a second: a 3 s window writes a handful, not a line per tick.
    assert!(watch.len() <= 4, "{watch:?}");
    assert!(
        text.lines()
            .any(|l| l.contains("… verify") && l.contains("attempt")),
        "{text}"
    );
}

#[test]
fn status_reports_drift_between_the_store_and_the_target() {
    let p = Project::new("", "");
    assert!(p.run(&["deploy", "--env", "local"]).status.success());
    let s = p.json(&["status", "--env", "local"]);
    let live = s["live"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        s["drift"],
        serde_json::json!({"state": "in_sync", "release": live})
    );

    // The release's files are deleted behind the agent's back.
    let dir = p.path(&format!("sites/local/releases/{live}"));
    let aside = p.path("aside");
    std::fs::rename(&dir, &aside).unwrap();
    let s = p.json(&["status", "--env", "local"]);
    assert_eq!(s["drift"]["state"], "gone", "{s}");
    assert_eq!(s["drift"]["release"], live.as_str());
    assert!(
        s["drift"]["detail"].as_str().unwrap().contains("gone"),
        "{s}"
    );
    // The store still says what it recorded; the human view says both.
    assert_eq!(s["live"]["id"], live.as_str());
    let human = String::from_utf8_lossy(&p.run(&["status", "--env", "local"]).stdout).into_owned();
    assert!(human.contains(&format!("live:  {live}")), "{human}");
    assert!(
        human.contains("DRIFT") && human.contains("gone from the target"),
        "{human}"
    );
    std::fs::rename(&aside, &dir).unwrap();

    // Another release serves: `current` switched by hand to an older release.
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    assert!(p.run(&["deploy", "--env", "local"]).status.success());
    let s = p.json(&["status", "--env", "local"]);
    let now = s["live"]["id"].as_str().unwrap().to_string();
    assert_ne!(now, live);
    let current = p.path("sites/local/current");
    std::fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(format!("releases/{live}"), &current).unwrap();
    let s = p.json(&["status", "--env", "local"]);
    assert_eq!(
        s["drift"],
        serde_json::json!({"state": "other_serving", "release": now, "serving": live}),
        "{s}"
    );
}

#[test]
fn a_held_lock_says_who_since_when_and_doing_what_and_deploy_wait_waits_for_it() {
    let p = Project::new("", "[environments.local.approval]\nbefore = \"promote\"\n");
    let (mut first, run, _gate) = p.deploy_to_a_gate();

    let out = p.run(&["deploy", "--env", "local"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("environment `local` is locked: held by "),
        "{err}"
    );
    assert!(err.contains(" since 20"), "{err}");
    assert!(err.contains(&format!("run {run} of ")), "{err}");
    assert!(err.contains("in approve"), "{err}");
    assert!(err.contains("`deploy --wait` waits for it"), "{err}");
    let s: Value = p.json(&["status", "--env", "local"]);
    assert_eq!(s["lock"]["live"], true, "{s}");
    assert_eq!(s["lock"]["run"]["id"], run.as_str());
    let since = s["lock"]["acquired_at"].as_str().unwrap_or_default();
    assert!(
        deploy_agent::time::parse_rfc3339_ms(since).is_some_and(|t| t > 1_700_000_000_000),
        "{s}"
    );

    // `--wait` waits for the holder, then deploys.
    let waiting = p
        .command(&["deploy", "--env", "local", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let approve = p.run(&["approve", &run, "--reason", "ship it"]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    assert!(first.wait().unwrap().success());
    // The waiting deploy took the lock once the first ended, and reached its own gate.
    let mut second = None;
    for _ in 0..300 {
        let s: Value = p.json(&["status", "--env", "local"]);
        if let Some(w) = s["waiting"].as_array().and_then(|w| w.first()) {
            second = w["deployment_id"].as_str().map(str::to_string);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second = second.expect("the waiting deploy reaches its gate");
    assert_ne!(second, run);
    assert!(
        p.run(&["approve", &second, "--reason", "next"])
            .status
            .success()
    );
    let done = waiting.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(text.contains("! waiting for the lock: held by"), "{text}");
    assert!(text.contains("is live on local"), "{text}");
}
