//! Killing the agent (SIGKILL) in the middle of every command that restores a PostgreSQL
//! database: `backup restore`, `rollback --full` (restored beside the live database, then
//! swapped) and `recover --rollback`. After each kill the database must be exactly the state
//! before the command or exactly the backup (a whole `pg_dump`: schema, every row,
//! sequences), never a mix; the agent's children must die with it; `status` must say the job
//! was interrupted; and `recover` must complete it. The swap is also killed inside its switch
//! step, on both sides of the renames.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_agent_tests::postgres::{Cluster, cluster};
use serde_json::Value;

use crate::project::{Project, stderr};

/// Where to kill, as fractions of an uncut restore's streaming time: as psql starts (the prelude
/// has emptied the database), mid-data, and around the commit.
const KILL_AT: [f64; 3] = [0.0, 0.5, 1.0];

/// Rows in the table that makes a restore take a while: about 0.7 s of streaming into psql on
/// two cores, and 2 s for a whole `rollback --full` (snapshot, restore, checks).
const EVENTS: u32 = 400_000;

/// The v2 migration: a new column, rows deleted and added, a new table and sequence.
const V2: &str = "ALTER TABLE notes ADD COLUMN archived BOOLEAN NOT NULL DEFAULT false;\n\
DELETE FROM events WHERE id % 3 = 0;\n\
INSERT INTO events (kind, payload) SELECT 'v2', '{}' FROM generate_series(1, 1000);\n\
CREATE TABLE audit_v2 (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL);\n\
INSERT INTO audit_v2 (what) VALUES ('migrated');\n";

struct Scene {
    p: Project,
    pg: &'static Cluster,
    db: String,
    url: String,
    /// The release of v1 and the backup holding its database (taken before v2 migrated).
    v1: String,
    b1: String,
    /// The database as backed up in `b1`.
    s1: String,
}

impl Scene {
    fn new() -> Scene {
        let pg = cluster();
        let (db, url) = pg.database("killrestore");
        let p = Project::new("", "");
        p.database_from_env();
        // v1 must stay on disk through every redeploy of v2: the rollbacks return to it.
        p.edit_config("keep = 3", "keep = 100");
        let mut scene = Scene {
            p,
            pg,
            db,
            url,
            v1: String::new(),
            b1: String::new(),
            s1: String::new(),
        };
        let v1 = scene.deploy(None);
        scene.v1 = v1["deployment"]["release_id"].as_str().unwrap().to_string();
        scene.pg.psql(
            &scene.db,
            &format!(
                "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, payload JSONB NOT NULL);\
                 INSERT INTO events (kind, payload) SELECT 'k' || (g % 17), jsonb_build_object('n', g, 'h', md5(g::text)) FROM generate_series(1, {EVENTS}) g;\
                 CREATE INDEX events_kind ON events (kind);\
                 SELECT lo_from_bytea(4242, 'a large object');"
            ),
        );
        std::fs::write(scene.p.path("migrations/20261103090000_v2.sql"), V2).unwrap();
        std::fs::write(scene.p.path("site/index.html"), "<h1>v2</h1>").unwrap();
        scene.s1 = scene.pg.dump(&scene.db);
        let v2 = scene.deploy(None);
        scene.b1 = v2["deployment"]["backup_id"].as_str().unwrap().to_string();
        scene
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.p.command(args);
        cmd.env("DA_TEST_APP_URL", &self.url);
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        tokio::task::block_in_place(|| self.command(args).output().unwrap())
    }

    /// Deploys the project as it is (v2 once the scene is set), optionally with a failpoint.
    fn deploy(&self, failpoint: Option<&str>) -> Value {
        let mut cmd = self.command(&["deploy", "--env", "local", "--output", "json"]);
        if let Some(point) = failpoint {
            cmd.env("DEPLOY_AGENT_FAILPOINT", point);
        }
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        if failpoint.is_some() {
            assert_eq!(out.status.code(), None, "killed by its failpoint");
            return Value::Null;
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("deploy: {}", stderr(&out)));
        assert_eq!(v["deployment"]["status"], "succeeded", "{v:#}");
        v
    }

    fn status(&self) -> Value {
        let out = self.run(&["status", "--env", "local", "--output", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)))
    }
}

/// Where two dumps first differ, in a few lines (a dump is megabytes: never print it whole).
fn difference(expected: &str, actual: &str) -> String {
    let cut = |l: &str| l.chars().take(160).collect::<String>();
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    match e.iter().zip(&a).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at line {}: expected `{}`, found `{}` ({} vs {} lines)",
            i + 1,
            cut(e[i]),
            cut(a[i]),
            e.len(),
            a.len()
        ),
        None => format!("one ends early: {} vs {} lines", e.len(), a.len()),
    }
}

/// Asserts two dumps are identical, saying where they differ if not.
fn same(actual: &str, expected: &str, what: &str) {
    assert!(
        actual == expected,
        "{what}: {}",
        difference(expected, actual)
    );
}

/// The pids of `parent`'s children named `name`.
fn children(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok());
        if comm == name && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Starts `args`, waits until its `psql` child is streaming, waits `after` more, kills the
/// agent with SIGKILL. Returns how long the restore had streamed, or `None` if the command
/// ended first. With `after` `None`, lets it finish and returns how long it streamed.
fn kill_during_restore(scene: &Scene, args: &[&str], after: Option<Duration>) -> Option<Duration> {
    let errors = scene.p.path("killed-command.stderr");
    let mut child: Child = scene
        .command(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut streaming: Option<Instant> = None;
    let mut tools = Vec::new();
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return match after {
                None => {
                    assert!(
                        exit.success(),
                        "{args:?} failed: {}",
                        std::fs::read_to_string(&errors).unwrap_or_default()
                    );
                    streaming.map(|s| s.elapsed())
                }
                Some(_) => None,
            };
        }
        if streaming.is_none() {
            // In place: pg_restore renders into psql; beside: pg_restore alone, in parallel.
            let psql = children(pid, "psql");
            let render = children(pid, "pg_restore");
            if !psql.is_empty() || !render.is_empty() {
                streaming = Some(Instant::now());
                tools.extend(psql);
                tools.extend(render);
            }
        }
        if let (Some(since), Some(after)) = (streaming, after)
            && since.elapsed() >= after
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never started restoring"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let streamed = streaming.map(|s| s.elapsed());
    child.kill().unwrap();
    child.wait().unwrap();
    // Its psql and pg_restore die with it (PR_SET_PDEATHSIG), they are not left feeding or
    // committing anything.
    let gone = Instant::now() + Duration::from_secs(5);
    while tools.iter().any(|t| alive(*t)) {
        assert!(
            Instant::now() < gone,
            "a child of the killed agent lived on: {tools:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    streamed
}

/// One command killed at several points into its restore; after each, the database is whole
/// (before or after), `status` says interrupted, and `recover` completes the job.
fn kill_points(
    scene: &Scene,
    what: &str,
    args: &[&str],
    prepare: &dyn Fn(&Scene),
    interrupted: &dyn Fn(&Value) -> bool,
) -> (usize, usize) {
    // Where in the restore to kill: right as psql starts, then at fractions of a restore's
    // duration (measured once, uncut), so every point falls while data streams in.
    prepare(scene);
    let whole = kill_during_restore(scene, args, None).expect("it restores through pg_restore");
    eprintln!("{what}: an uncut restore streams for {whole:?}");
    same(
        &scene.pg.dump(&scene.db),
        &scene.s1,
        &format!("{what} restores exactly"),
    );
    let (mut before, mut after) = (0, 0);
    for fraction in KILL_AT {
        prepare(scene);
        let state_before = scene.pg.dump(&scene.db);
        assert!(
            state_before != scene.s1,
            "the scene starts from the other state"
        );
        let at = whole.mul_f64(fraction);
        let streamed = kill_during_restore(scene, args, Some(at));
        assert!(scene.pg.wait_idle(&scene.db), "the killed session ended");
        let now = scene.pg.dump(&scene.db);
        if now == state_before {
            before += 1;
        } else if now == scene.s1 {
            after += 1;
        } else {
            panic!(
                "{what} killed {streamed:?} into its restore left a mix: neither the state before nor the backup.\nagainst the state before: {}\nagainst the backup: {}",
                difference(&state_before, &now),
                difference(&scene.s1, &now)
            );
        }
        // A job cut short shows as interrupted. (A kill that came as it was ending may find
        // it recorded as done: then the database is the backup.)
        let status = scene.status();
        if now == state_before {
            assert!(
                interrupted(&status),
                "{what} killed {streamed:?} into its restore: status shows it interrupted: {status:#}"
            );
        }
        // `recover` (no flag) completes the job, whatever point it stopped at.
        let out = scene.run(&["recover", "--env", "local", "--output", "json"]);
        assert!(out.status.success(), "{what}: recover: {}", stderr(&out));
        same(
            &scene.pg.dump(&scene.db),
            &scene.s1,
            &format!("{what}: after recover the database is the backup"),
        );
        let status = scene.status();
        assert!(!interrupted(&status), "{what}: settled: {status:#}");
    }
    (before, after)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_restore_never_commits_half_a_database() {
    let scene = Scene::new();
    let deploy_v2 = |s: &Scene| {
        s.deploy(None);
    };

    // `backup restore`: journaled as a restore; recover finishes it.
    let restore = [
        "backup", "restore", "--env", "local", &scene.b1, "--yes", "--reason", "test",
    ];
    let rollback_interrupted = |v: &Value| v["last_rollback"]["status"] == "interrupted";
    let (b, a) = kill_points(
        &scene,
        "backup restore",
        &restore,
        &deploy_v2,
        &rollback_interrupted,
    );
    eprintln!("backup restore: 3 kills, {b} left the database as before, {a} as the backup");

    // `rollback --full`: the app back to v1 and the database to b1; recover finishes it.
    let v1 = scene.v1.clone();
    let rollback = [
        "rollback", "--env", "local", "--full", "--to", &v1, "--backup", &scene.b1, "--reason",
        "test", "--yes",
    ];
    let (b, a) = kill_points(
        &scene,
        "rollback --full",
        &rollback,
        &deploy_v2,
        &rollback_interrupted,
    );
    eprintln!("rollback --full: 3 kills, {b} before, {a} after");
    assert_eq!(
        scene.p.current().unwrap(),
        format!("releases/{v1}"),
        "the app is v1 again"
    );

    // `recover --rollback` of a deploy killed after promoting v2: the run is journaled as
    // being rolled back, so a plain `recover` afterwards rolls it back too (never resumes it).
    let crashed_deploy = |s: &Scene| {
        s.deploy(Some("after:promote"));
    };
    let run_interrupted =
        |v: &Value| v["last_interrupted"] == true && v["last"]["stage"] == "rollback";
    let recover = ["recover", "--env", "local", "--rollback"];
    let (b, a) = kill_points(
        &scene,
        "recover --rollback",
        &recover,
        &crashed_deploy,
        &run_interrupted,
    );
    eprintln!("recover --rollback: 3 kills, {b} before, {a} after");
    let status = scene.status();
    assert_eq!(status["last"]["status"], "rolled_back", "{status:#}");
    assert_eq!(scene.p.current().unwrap(), format!("releases/{v1}"));
}

/// `backup restore` killed once its journal and safety backup are written, on SQLite: the
/// CLI and the API say it is interrupted, a deploy refuses to start over it, `recover
/// --rollback` undoes it (the safety backup back), and `recover` finishes another one.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_restore_is_shown_refused_over_undone_and_finished() {
    use deploy_agent_tests::daemon::{Daemon, token_entry};
    use deploy_agent_tests::sqlite_count;
    let (reader, entry) = token_entry("reader", "read", None);
    let p = Project::new("", &entry);
    let (code, _) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0);
    let url = p.db_url();
    let created = p.json(&["backup", "create", "--env", "local"]);
    let backup = created["id"].as_str().unwrap().to_string();
    let notes = || async { sqlite_count(&url, "notes").await };
    // Written after the backup: what a restore replaces and an undo brings back.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes (id, title) VALUES (2, 'since the backup')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(notes().await, 2);

    let restore = |failpoint: Option<&str>| {
        let mut cmd = p.command(&[
            "backup", "restore", "--env", "local", &backup, "--yes", "--reason", "test",
        ]);
        if let Some(point) = failpoint {
            cmd.env("DEPLOY_AGENT_FAILPOINT", point);
        }
        tokio::task::block_in_place(|| cmd.output().unwrap())
    };
    let out = restore(Some("before:restore"));
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    assert_eq!(notes().await, 2, "not restored yet");

    let status = p.json(&["status", "--env", "local"]);
    let record = &status["last_rollback"];
    assert_eq!(record["status"], "interrupted", "{status:#}");
    assert_eq!(record["mode"], "restore");
    assert_eq!(record["backup_id"], backup.as_str());
    let safety = record["safety_backup"].as_str().unwrap().to_string();
    let text = String::from_utf8_lossy(&p.run(&["status", "--env", "local"]).stdout).into_owned();
    assert!(
        text.contains("stopped in restore") && text.contains("deploy-agent recover --env local"),
        "{text}"
    );

    let d = Daemon::start(&p.path(""), &[]).await;
    let envs = d
        .request("GET", "/v1/environments", Some(&reader), None)
        .await
        .unwrap()
        .json();
    let local = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "local")
        .unwrap();
    assert_eq!(local["interrupted"][0]["id"], record["id"], "{envs:#}");
    assert_eq!(local["interrupted"][0]["status"], "interrupted");
    drop(d);

    let out = p.run(&["deploy", "--env", "local"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has an interrupted restore")
            && stderr(&out).contains("deploy-agent recover --env local"),
        "{}",
        stderr(&out)
    );

    // Undo: the database back to its safety backup (it was never restored, so unchanged).
    let out = p.run(&[
        "recover",
        "--env",
        "local",
        "--rollback",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recovered"][0]["action"], "undone", "{v:#}");
    assert!(
        v["recovered"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("safety backup {safety}")),
        "{v:#}"
    );
    assert_eq!(notes().await, 2);
    assert_eq!(
        p.json(&["status", "--env", "local"])["last_rollback"]["status"],
        "undone"
    );

    // Interrupted again, then finished: the database is the backup.
    let out = restore(Some("before:restore"));
    assert_eq!(out.status.code(), None);
    let out = p.run(&["recover", "--env", "local", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recovered"][0]["action"], "finished", "{v:#}");
    assert_eq!(notes().await, 1, "restored");
    assert_eq!(
        p.json(&["status", "--env", "local"])["last_rollback"]["status"],
        "succeeded"
    );
    let (code, _) = tokio::task::block_in_place(|| p.deploy());
    assert_eq!(code, 0, "deploys run again");
    let audit = String::from_utf8_lossy(&p.run(&["audit", "list"]).stdout).into_owned();
    assert!(
        audit.contains("rollback.undone") && audit.contains("rollback.finished"),
        "{audit}"
    );
}

/// `rollback --full` killed inside its switch step: once the live database was closed to new
/// connections and before the renames, and once the renames committed but before the app
/// followed. Either way each database is whole (the restored one staged or live, the one from
/// before live or aside), `status` says where it stopped, and `recover` finishes the swap:
/// the backup live under the database's name, the database from before kept aside and open,
/// the app on v1.
#[tokio::test(flavor = "multi_thread")]
async fn a_swap_killed_at_its_switch_is_finished_by_recover() {
    let scene = Scene::new();
    let allows = |name: &str| {
        scene.pg.psql(
            "postgres",
            &format!("SELECT datallowconn FROM pg_database WHERE datname = '{name}'"),
        )
    };
    for point in ["during:switch", "after:switch"] {
        scene.deploy(None);
        let v2 = scene.p.current().unwrap();
        assert_ne!(v2, format!("releases/{}", scene.v1));
        let before = scene.pg.dump(&scene.db);
        let mut cmd = scene.command(&[
            "rollback", "--env", "local", "--full", "--to", &scene.v1, "--backup", &scene.b1,
            "--reason", "test", "--yes",
        ]);
        cmd.env("DEPLOY_AGENT_FAILPOINT", point);
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        assert_eq!(out.status.code(), None, "{point}: killed: {}", stderr(&out));
        let status = scene.status();
        let record = &status["last_rollback"];
        assert_eq!(record["status"], "interrupted", "{point}: {status:#}");
        let swap = &record["database_swap"];
        let (staged, aside) = (
            swap["staged"].as_str().unwrap().to_string(),
            swap["aside"].as_str().unwrap().to_string(),
        );
        if point == "during:switch" {
            // The renames did not happen: the live database is the one from before (closed to
            // new connections until the switch finishes), the backup whole beside it.
            assert_eq!(swap["phase"], "switching", "{status:#}");
            assert_eq!(allows(&scene.db), "f");
            same(
                &scene.pg.dump(&staged),
                &scene.s1,
                "the staged database is the backup",
            );
            assert_eq!(allows(&aside), "", "nothing is aside yet");
        } else {
            // Renamed: the backup is live, the database from before aside, the app not yet v1.
            assert_eq!(swap["phase"], "switched", "{status:#}");
            same(
                &scene.pg.dump(&scene.db),
                &scene.s1,
                "the live database is the backup",
            );
            same(
                &scene.pg.dump(&aside),
                &before,
                "the database from before is aside, whole",
            );
            assert_eq!(
                scene.p.current().unwrap(),
                v2,
                "the app follows only at recover"
            );
        }
        let text =
            String::from_utf8_lossy(&scene.run(&["status", "--env", "local"]).stdout).into_owned();
        let stopped = if point == "during:switch" {
            "switch"
        } else {
            "app"
        };
        assert!(
            text.contains(&format!("stopped in {stopped}")),
            "{point}: {text}"
        );

        let out = scene.run(&["recover", "--env", "local", "--output", "json"]);
        assert!(out.status.success(), "{point}: recover: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["recovered"][0]["action"], "finished", "{v:#}");
        same(
            &scene.pg.dump(&scene.db),
            &scene.s1,
            "after recover the database is the backup",
        );
        same(
            &scene.pg.dump(&aside),
            &before,
            "after recover the one from before is kept",
        );
        assert_eq!(
            allows(&aside),
            "t",
            "the database kept aside takes connections"
        );
        assert_eq!(allows(&staged), "", "nothing is left staged");
        assert_eq!(scene.p.current().unwrap(), format!("releases/{}", scene.v1));
        let status = scene.status();
        assert_eq!(status["last_rollback"]["status"], "succeeded", "{status:#}");
        assert_eq!(
            status["last_rollback"]["database_swap"]["phase"],
            "switched"
        );
    }
}
