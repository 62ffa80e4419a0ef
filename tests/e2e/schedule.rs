//! Scheduled jobs, driven by an injectable clock (no sleeping for real hours): daily backups,
//! prune by retention, a restore drill that passes and one that fails on a corrupted backup
//! (retried with backoff, then notified), recovery notified, a job waiting for a deploy's
//! lock, one claim per occurrence across two agents on one store, and the daemon ticking on
//! its own clock with the jobs visible through the API and `schedule list`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deploy_agent::config::Config;
use deploy_agent::pipeline::Agent;
use deploy_agent::pipeline::scheduler::{Clock, Scheduler};
use deploy_agent::store::{JobRun, JobStatus, Owner};
use deploy_agent_tests::daemon::{Daemon, token_entry};
use deploy_agent_tests::http::{Behaviour, TestServer};
use serde_json::Value;

use crate::project::{Project, stderr};

/// A clock the test moves.
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn at(rfc3339: &str) -> i64 {
    deploy_agent::time::parse_rfc3339(rfc3339).unwrap() * 1000
}

/// Waits until each of `runs` is no longer waiting or running; returns them as journaled.
async fn settle(agent: &Agent, runs: &[JobRun]) -> Vec<JobRun> {
    for _ in 0..600 {
        let all = agent.store.job_runs(None, 500).await.unwrap();
        // Moved on from how the tick returned it, and not mid-attempt.
        let now: Vec<JobRun> = runs
            .iter()
            .filter_map(|r| {
                all.iter()
                    .find(|a| {
                        a.id == r.id
                            && (a.status != r.status || a.updated_at > r.updated_at)
                            && !matches!(a.status, JobStatus::Running | JobStatus::Waiting)
                    })
                    .cloned()
            })
            .collect();
        if now.len() == runs.len() {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("scheduled jobs did not settle: {runs:?}");
}

/// A day's 02:00 backup, 03:00 prune and 04:00 drill, each ticked in turn.
async fn day(s: &Scheduler, clock: &TestClock, agent: &Agent, day: &str) -> Vec<JobRun> {
    let mut out = Vec::new();
    for hour in ["02", "03", "04"] {
        out.extend(tick_at(s, clock, agent, at(&format!("2026-12-{day}T{hour}:00:30Z"))).await);
    }
    out
}

/// Moves the clock to `when`, ticks, and waits for what it started.
async fn tick_at(s: &Scheduler, clock: &TestClock, agent: &Agent, when: i64) -> Vec<JobRun> {
    clock.0.store(when, Ordering::SeqCst);
    let started = s.tick().await.unwrap();
    settle(agent, &started).await
}

/// The backup a `backup` run made, from its detail.
fn backup_id(run: &JobRun) -> String {
    let detail = run.detail.as_deref().unwrap();
    detail
        .strip_prefix("backup ")
        .and_then(|d| d.split(' ').next())
        .unwrap_or_else(|| panic!("{run:?}"))
        .to_string()
}

fn backups(p: &Project) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(p.path("state/backups/sched"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".backup").map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

fn sched_project(hook: &TestServer) -> Project {
    let tables = format!(
        r#"
[plugins.hook]
path = {webhook:?}
[plugins.hook.policy]
allowed_hosts = ["127.0.0.1"]
allow_ip_ranges = ["127.0.0.0/8"]
[plugins.hook.config]
url = {url:?}

[environments.sched]
extends = "local"
notifiers = ["hook"]
[environments.sched.target]
config = {{ root = "/srv/sched" }}
[environments.sched.database]
url = "sqlite:{{db}}"
[environments.sched.backup]
keep_last = 2
keep_daily = 0
keep_weekly = 0
[environments.sched.schedule]
backup = "daily 02:00"
prune = "daily 03:00"
restore_drill = "daily 04:00"
"#,
        webhook = deploy_agent_tests::fixtures::WEBHOOK,
        url = hook.url("127.0.0.1", "/hook"),
    );
    let p = Project::new("", &tables);
    // The scheduler runs in this process, whose working directory is not the project's: the
    // database's path is absolute.
    let db = p.path("sched.db");
    p.edit_config("sqlite:{db}", &format!("sqlite:{}", db.display()));
    p
}

/// The notifications once there are `n` (the run is journaled before it is notified).
async fn notified(hook: &TestServer, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if hook.seen().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hook_texts(hook)
}

fn hook_texts(hook: &TestServer) -> Vec<String> {
    hook.seen()
        .iter()
        .map(|s| {
            let v: Value = serde_json::from_slice(&s.body).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_prunes_and_drills_run_retry_and_notify() {
    let hook = TestServer::start(Behaviour::Respond(200, "ok".into())).await;
    let p = sched_project(&hook);
    {
        let url = format!("sqlite:{}?mode=rwc", p.path("sched.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO orders (total) VALUES (10), (20), (30)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let mut config = Config::load(&p.path("agent.toml")).unwrap();
    config.time_zone = deploy_agent::config::time_zone(Some("UTC")).unwrap();
    let agent = Arc::new(Agent::open(config).await.unwrap());
    let clock = Arc::new(TestClock(AtomicI64::new(at("2026-12-01T01:00:00Z"))));
    let s = Scheduler::new(agent.clone(), "agent-a".into(), clock.clone());

    // Armed at 01:00: nothing of the past runs.
    assert!(s.tick().await.unwrap().is_empty());

    // Day 1: the 02:00 backup, the 03:00 prune (nothing to delete), the 04:00 drill.
    let b = tick_at(&s, &clock, &agent, at("2026-12-01T02:00:30Z")).await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(
        (b[0].job.as_str(), b[0].status, b[0].due_at),
        ("backup", JobStatus::Succeeded, at("2026-12-01T02:00:00Z")),
        "{b:?}"
    );
    let first = backups(&p);
    assert_eq!(first.len(), 1);
    let pr = tick_at(&s, &clock, &agent, at("2026-12-01T03:00:30Z")).await;
    assert_eq!(pr[0].job, "prune");
    assert!(
        pr[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("0 backup(s) deleted"),
        "{pr:?}"
    );
    let d = tick_at(&s, &clock, &agent, at("2026-12-01T04:00:30Z")).await;
    assert_eq!(
        (d[0].job.as_str(), d[0].status),
        ("restore_drill", JobStatus::Succeeded),
        "{d:?}"
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(p.path(&format!("state/backups/sched/{}.json", first[0]))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["drill"]["passed"], true, "{manifest:#}");

    // Day 2: a backup, a prune and a drill; day 3: a backup, and a prune that keeps the newest
    // two.
    day(&s, &clock, &agent, "02").await;
    let mut d3 = tick_at(&s, &clock, &agent, at("2026-12-03T02:00:30Z")).await;
    d3.extend(tick_at(&s, &clock, &agent, at("2026-12-03T03:00:30Z")).await);
    let jobs: Vec<&str> = d3.iter().map(|r| r.job.as_str()).collect();
    assert_eq!(jobs, ["backup", "prune"], "{d3:?}");
    let now = backups(&p);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&first[0]), "the oldest was pruned: {now:?}");
    assert!(
        d3[1].detail.as_deref().unwrap().contains(&first[0]),
        "{d3:?}"
    );

    // The newest backup is corrupted: the drill fails, is retried after 1 and 5 minutes,
    // then fails for good and is notified once.
    // (Backups taken within one real second share their ids' time: the newest is the one the
    // day-3 backup made, not the last by name.)
    let newest = backup_id(&d3[0]);
    assert!(now.contains(&newest), "{now:?}");
    let data = p.path(&format!("state/backups/sched/{newest}.backup"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let d1 = tick_at(&s, &clock, &agent, at("2026-12-03T04:00:30Z")).await;
    assert_eq!(
        (d1[0].status, d1[0].attempts),
        (JobStatus::Retrying, 1),
        "{d1:?}"
    );
    assert_eq!(d1[0].next_attempt_at, Some(at("2026-12-03T04:01:30Z")));
    assert!(
        hook_texts(&hook).is_empty(),
        "no notification between attempts"
    );
    // Not yet due: nothing runs.
    clock.0.store(at("2026-12-03T04:01:00Z"), Ordering::SeqCst);
    assert!(s.tick().await.unwrap().is_empty());
    let d2 = tick_at(&s, &clock, &agent, at("2026-12-03T04:01:31Z")).await;
    assert_eq!(
        (d2[0].status, d2[0].attempts),
        (JobStatus::Retrying, 2),
        "{d2:?}"
    );
    let d3 = tick_at(&s, &clock, &agent, at("2026-12-03T04:06:32Z")).await;
    assert_eq!(
        (d3[0].status, d3[0].attempts),
        (JobStatus::Failed, 3),
        "{d3:?}"
    );
    assert!(d3[0].detail.as_deref().unwrap().contains(&newest), "{d3:?}");
    let texts = notified(&hook, 1).await;
    assert_eq!(
        texts,
        ["scheduled restore_drill of sched FAILED"],
        "{texts:?}"
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(p.path(&format!("state/backups/sched/{newest}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["drill"]["passed"], false,
        "the failed drill is recorded"
    );

    // Day 4: a good backup, and its drill passes: recovery is notified.
    let d4 = day(&s, &clock, &agent, "04").await;
    assert!(
        d4.iter().all(|r| r.status == JobStatus::Succeeded),
        "{d4:?}"
    );
    assert_eq!(d4.len(), 3);
    assert_eq!(
        notified(&hook, 2).await,
        [
            "scheduled restore_drill of sched FAILED",
            "scheduled restore_drill of sched recovered"
        ]
    );

    // Day 5: a deploy holds the environment: the backup waits, then runs once it is free.
    let deployer = Owner("someone-else:1:1".into());
    let (lease, _) = agent
        .store
        .acquire("sched", &deployer, "run-deploying", Duration::from_secs(60))
        .await
        .unwrap();
    clock.0.store(at("2026-12-05T02:00:30Z"), Ordering::SeqCst);
    let waiting = s.tick().await.unwrap();
    assert_eq!(waiting.len(), 1);
    let mut all = Vec::new();
    for _ in 0..200 {
        all = agent.store.job_runs(Some("sched"), 1).await.unwrap();
        if all[0].detail.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(all[0].status, JobStatus::Waiting, "{all:?}");
    assert!(
        all[0].detail.as_deref().unwrap().contains("run-deploying"),
        "{all:?}"
    );
    lease.release().await.unwrap();
    let resumed = s.tick().await.unwrap();
    assert_eq!(resumed.len(), 1);
    let done = settle(&agent, &resumed).await;
    assert_eq!(
        (done[0].status, done[0].id.as_str()),
        (JobStatus::Succeeded, all[0].id.as_str())
    );
    for hour in ["03", "04"] {
        tick_at(&s, &clock, &agent, at(&format!("2026-12-05T{hour}:00:30Z"))).await;
    }

    // Two agents on one store: each occurrence is claimed once.
    let other = Scheduler::new(agent.clone(), "agent-b".into(), clock.clone());
    clock.0.store(at("2026-12-06T02:00:30Z"), Ordering::SeqCst);
    let (a, b) = tokio::join!(s.tick(), other.tick());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 1, "a: {a:?} b: {b:?}");
    settle(&agent, &[a, b].concat()).await;
    let day6: Vec<JobRun> = agent
        .store
        .job_runs(Some("sched"), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.due_at == at("2026-12-06T02:00:00Z"))
        .collect();
    assert_eq!(day6.len(), 1, "{day6:?}");

    // The agents were down for three days: each job runs once, for its latest occurrence.
    clock.0.store(at("2026-12-09T04:30:00Z"), Ordering::SeqCst);
    let caught_up = s.tick().await.unwrap();
    let mut due: Vec<(String, i64)> = caught_up
        .iter()
        .map(|r| (r.job.clone(), r.due_at))
        .collect();
    due.sort();
    assert_eq!(
        due,
        [
            ("backup".to_string(), at("2026-12-09T02:00:00Z")),
            ("prune".to_string(), at("2026-12-09T03:00:00Z")),
            ("restore_drill".to_string(), at("2026-12-09T04:00:00Z")),
        ]
    );
    // They share the environment's lock: one at a time, the others wait and follow.
    let mut finals = Vec::new();
    for _ in 0..600 {
        s.tick().await.unwrap();
        let all = agent.store.job_runs(Some("sched"), 500).await.unwrap();
        finals = caught_up
            .iter()
            .filter_map(|c| {
                all.iter()
                    .find(|a| a.id == c.id && a.status == JobStatus::Succeeded)
            })
            .cloned()
            .collect();
        if finals.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(finals.len(), 3, "{finals:?}");

    // A run its agent's previous process left mid-way is marked interrupted at the next start.
    let orphan = JobRun {
        id: "job-orphan".into(),
        environment: "sched".into(),
        job: "backup".into(),
        due_at: at("2026-12-08T02:00:00Z"),
        agent: "agent-a".into(),
        owner: "gone:1:1".into(),
        status: JobStatus::Running,
        attempts: 1,
        claimed_at: at("2026-12-08T02:00:01Z"),
        updated_at: at("2026-12-08T02:00:01Z"),
        finished_at: None,
        next_attempt_at: None,
        detail: None,
    };
    assert!(agent.store.claim_job(&orphan).await.unwrap());
    s.adopt().await.unwrap();
    let all = agent.store.job_runs(Some("sched"), 500).await.unwrap();
    let o = all.iter().find(|r| r.id == "job-orphan").unwrap();
    assert_eq!(o.status, JobStatus::Interrupted, "{o:?}");
    assert!(
        o.detail.as_deref().unwrap().contains("stopped mid-run"),
        "{o:?}"
    );

    // Every attempt is in the audit log, and the chain is intact.
    let audit = agent.store.audit_entries(Some("sched"), 100).await.unwrap();
    let drills = audit
        .iter()
        .filter(|e| e.action == "schedule.restore_drill")
        .count() as i64;
    let attempts: i64 = agent
        .store
        .job_runs(Some("sched"), 500)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.job == "restore_drill")
        .map(|r| r.attempts)
        .sum();
    assert_eq!(drills, attempts, "each attempt audited");
    assert_eq!(
        attempts, 8,
        "days 1, 2, 4, 5 and the catch-up passed; day 3 took three"
    );
    assert!(
        agent
            .store
            .audit_verify()
            .await
            .unwrap()
            .problems
            .is_empty()
    );
}

/// The daemon ticks on its own: a backup due at 02:00 runs when its clock passes it, and the
/// API and `schedule list` show the job, its next runs and how the last went.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_what_is_due_and_shows_it() {
    let (reader, entry) = token_entry("reader", "read", None);
    let p = Project::new(
        "",
        &format!(
            "\n[environments.local.schedule]\nbackup = \"daily 02:00\"\nprune = \"weekly sunday 03:00\"\n\n[server]\n{entry}"
        ),
    );
    let (code, v) = p.deploy();
    assert_eq!(code, 0, "{v:#}");
    let clock = p.path("clock");
    std::fs::write(&clock, "2026-12-01T01:00:00Z").unwrap();
    let d = Daemon::start(
        &p.path(""),
        &[
            ("DEPLOY_AGENT_CLOCK_FILE", clock.to_str().unwrap()),
            ("TZ", "UTC"),
        ],
    )
    .await;
    let listed = p.json(&["schedule", "list", "--env", "local"]);
    let jobs: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["backup", "prune"], "{listed:#}");
    assert_eq!(listed[0]["cron"], "0 2 * * *");
    assert_eq!(listed[0]["next"].as_array().unwrap().len(), 3);
    let plan = p.json(&["plan", "--env", "local"]);
    assert_eq!(plan["schedule"][1]["cron"], "0 3 * * 0", "{plan:#}");

    std::fs::write(&clock, "2026-12-01T02:00:30Z").unwrap();
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = d
            .request(
                "GET",
                "/v1/environments/local/schedule",
                Some(&reader),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json();
        if last[0]["last"]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last[0]["last"]["status"],
        "succeeded",
        "{last:#}\n{}",
        d.log()
    );
    assert_eq!(last[0]["last"]["due_at"], at("2026-12-01T02:00:00Z"));
    assert!(
        last[1]["last"].is_null(),
        "the weekly prune is not due: {last:#}"
    );
    let detail = last[0]["last"]["detail"].as_str().unwrap();
    let id = detail
        .strip_prefix("backup ")
        .and_then(|d| d.split(' ').next())
        .unwrap();
    assert!(
        p.path(&format!("state/backups/local/{id}.backup")).exists(),
        "{detail}"
    );
    // The console's environment page, and `status`, show the same.
    let session = d.sign_in(&reader).await;
    let page = d
        .raw(
            "GET",
            "/environments/local",
            None,
            &[("cookie".to_string(), session)],
            None,
        )
        .await
        .unwrap();
    let html = page.text();
    assert!(
        html.contains("<h2 id=\"schedule\">Scheduled jobs</h2>"),
        "{html}"
    );
    assert!(html.contains(id), "the last run's backup: {html}");
    let status = p.json(&["status", "--env", "local"]);
    assert_eq!(
        status["schedule"][0]["last"]["status"], "succeeded",
        "{status:#}"
    );
    let out = p.run(&["audit", "list", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("schedule.backup"));
}
