//! Severity and notifier filters: the agent judges each event's severity, and each notifier
//! hears only the kinds and the least severity its `[plugins.NAME.notify]` lets through.
//! Three webhook notifiers on one environment: one hears everything, a pager hears failures
//! and rollbacks of severity error and above, and one hears only critical events (an
//! automatic rollback outside a strict environment is an error, so it hears nothing).

use deploy_agent_tests::http::{Behaviour, TestServer};

use crate::project::{Project, stderr, webhook_table as hook, webhook_texts as texts};

const NOT_BROKEN: &str = "\n[[environments.local.checks]]\nname = \"not broken\"\nstage = \"watch\"\ncommand = \"! grep -q broken sites/local/current/index.html\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn notifiers_hear_only_the_kinds_and_severities_they_filter_for() {
    let ok = || Behaviour::Respond(200, "ok".into());
    let (all, pager, critical) = (
        TestServer::start(ok()).await,
        TestServer::start(ok()).await,
        TestServer::start(ok()).await,
    );
    let tables = format!(
        "{NOT_BROKEN}{}{}{}",
        hook("all", &all, ""),
        hook(
            "pager",
            &pager,
            "[plugins.pager.notify]\nevents = [\"failed\", \"rolled-back\"]\nmin_severity = \"error\"\n"
        ),
        hook(
            "critical",
            &critical,
            "[plugins.critical.notify]\nmin_severity = \"critical\"\n"
        ),
    );
    let p = Project::new("notifiers = [\"all\", \"pager\", \"critical\"]", &tables);

    // `plan` says what each filtered notifier hears.
    let plan = String::from_utf8_lossy(&p.run(&["plan", "--env", "local"]).stdout).into_owned();
    assert!(
        plan.contains("pager hears failed, rolled-back of severity error and above")
            && plan.contains("critical hears events of severity critical and above"),
        "{plan}"
    );

    // A good run: progress only, info; the pager and the critical one hear nothing.
    let (code, v1) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0, "{v1:#}");
    let heard = texts(&all);
    assert!(heard.len() >= 3, "every transition: {heard:?}");
    assert!(texts(&pager).is_empty(), "{:?}", texts(&pager));

    // A run rolled back automatically: the pager hears the rollback and the failure, each
    // once, and nothing of the stages; the critical one still hears nothing.
    std::fs::write(p.path("site/index.html"), "<h1>broken</h1>").unwrap();
    let (code, v2) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 1, "{v2:#}");
    assert_eq!(v2["deployment"]["status"], "rolled_back");
    let paged = texts(&pager);
    let everything = texts(&all);
    assert!(
        paged
            .iter()
            .any(|t| t.contains("rolled back automatically")),
        "{paged:?}"
    );
    assert!(
        paged.len() >= 2 && paged.len() < everything.len() - heard.len(),
        "only the failure and the rollback: {paged:?} of {everything:?}"
    );
    for t in &paged {
        assert!(everything.contains(t), "the same event, filtered: {t}");
        assert!(
            !t.contains("started") && !t.contains(" done"),
            "no stage events: {paged:?}"
        );
    }
    assert!(texts(&critical).is_empty(), "{:?}", texts(&critical));

    // Unknown kinds and severities are refused where they are written, with the choices.
    let toml = std::fs::read_to_string(p.path("agent.toml")).unwrap();
    std::fs::write(
        p.path("agent.toml"),
        toml.replace("\"failed\", \"rolled-back\"", "\"failed\", \"exploded\"")
            .replace("min_severity = \"critical\"", "min_severity = \"fatal\""),
    )
    .unwrap();
    let out = p.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`exploded` is not an event kind")
            && err.contains("the kinds are started, stage-started")
            && err.contains("`fatal` is not a severity")
            && err.contains("use info, warning, error or critical"),
        "{err}"
    );
    assert!(err.contains("agent.toml:"), "with file and line: {err}");
}
