//! The web console in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/console.mjs`) against a daemon with the local target. The script signs
//! in, watches a run reach its approval gate live, approves it, rolls `local` back from the
//! console and sees the board change, and is refused without a session, with the wrong role,
//! without the CSRF token and with a token for another environment. This side then checks
//! what the console did through the CLI: the audit log names the signed-in token, and the
//! store says the rollback happened.

use std::process::Command;

use deploy_agent_tests::daemon::{Daemon, token_entry};
use deploy_agent_tests::repo_root;

use crate::project::{Project, stderr};

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_browser_watches_approves_rolls_back_and_refuses() {
    let browser = repo_root().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Playwright and Chromium: run `make browser-tools` (make test does)"
    );
    let tokens = [
        token_entry("ops", "admin", None),
        token_entry("deployer", "deploy", None),
        token_entry("reader", "read", None),
        token_entry("local-only", "admin", Some(&["local"])),
    ];
    let entries: Vec<&str> = tokens.iter().map(|(_, e)| e.as_str()).collect();
    let p = Project::gated(&entries, 1000);
    for (version, body) in [("v1", "<h1>v1</h1>"), ("v2", "<h1>v2</h1>")] {
        std::fs::write(p.path("site/index.html"), body).unwrap();
        let out = p.run(&["deploy", "--env", "local", "--version", version]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let d = Daemon::start(&p.path(""), &[]).await;
    let shots = repo_root().join("target/console-shots");
    let out = Command::new("node")
        .arg(browser.join("console.mjs"))
        .current_dir(&browser)
        .env("CONSOLE_URL", format!("http://{}", d.addr))
        .env("TOKEN_OPS", &tokens[0].0)
        .env("TOKEN_DEPLOYER", &tokens[1].0)
        .env("TOKEN_READER", &tokens[2].0)
        .env("TOKEN_LOCAL", &tokens[3].0)
        .env("SHOT_DIR", &shots)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n--- daemon ---\n{}",
        stderr(&out),
        d.log()
    );
    let figures = String::from_utf8_lossy(&out.stdout);
    eprintln!("console figures: {}", figures.trim());
    for shot in ["board.png", "run.png", "board-phone.png"] {
        assert!(shots.join(shot).is_file(), "{shot} saved");
    }

    // What the console did, as the CLI reads it on the host.
    let audit = p.json(&["audit", "list", "-e", "gated"]);
    let approved = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"].as_str().is_some_and(|x| x.contains("approv")))
        .unwrap_or_else(|| panic!("no approval audited: {audit}"));
    assert_eq!(approved["actor"], "token:ops", "{approved}");
    let audit = p.json(&["audit", "list", "-e", "local"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["actor"] == "token:ops"
                && a["action"].as_str().is_some_and(|x| x.contains("roll"))),
        "no rollback by token:ops audited: {audit}"
    );
    let status = p.json(&["status", "--env", "local"]);
    assert_eq!(status["live"]["version"], "v1", "{status}");
    let status = p.json(&["status", "--env", "gated"]);
    assert_eq!(status["live"]["version"], "g1", "{status}");
    // The cookie-less refusal reached the daemon's log without the token or the session.
    for (secret, _) in &tokens {
        assert!(
            !d.log().contains(secret.as_str()),
            "a token in the daemon's log"
        );
    }
}
