//! Migrations against a real PostgreSQL (a throwaway cluster started by the harness) and SQLite.
//!
//! Failure tests prove the database is exactly as before (schema fingerprint and row counts)
//! and that the migration lock is released.

use std::path::Path;
use std::time::Duration;

use deploy_agent::db::DbError;
use deploy_agent::db::migrate::{self, Settings, State};
use deploy_agent_tests::postgres::{Cluster, cluster};

fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

fn noop(_: usize, _: usize, _: &migrate::Migration) {}

/// A database of its own, a migrations directory, and settings pointing at both.
fn setup(prefix: &str) -> (&'static Cluster, String, tempfile::TempDir, Settings) {
    let pg = cluster();
    let (db, url) = pg.database(prefix);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(&url, dir.path().to_path_buf());
    settings.lock_wait = Duration::from_secs(5);
    (pg, db, dir, settings)
}

/// The schema fingerprint and row counts of every user table: "exactly as before".
async fn state(settings: &Settings, pg: &Cluster, db: &str) -> (String, String) {
    let fp = deploy_agent::db::schema::fingerprint(&settings.url)
        .await
        .unwrap();
    let counts = pg.psql(
        db,
        "SELECT coalesce(string_agg(relname || '=' || n_live_tup, ',' ORDER BY relname), '') FROM pg_stat_user_tables WHERE relname NOT LIKE '\\_%'",
    );
    let exact = pg.psql(
        db,
        "SELECT coalesce(string_agg(table_name, ',' ORDER BY table_name), '') FROM information_schema.tables WHERE table_schema = 'public'",
    );
    (fp, format!("{counts}|{exact}"))
}

fn advisory_locks(pg: &Cluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
}

#[tokio::test]
async fn sqlx_and_the_agent_agree_on_the_history() {
    let (pg, db, dir, settings) = setup("compat");
    write(
        dir.path(),
        "1_create_users.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);",
    );
    write(
        dir.path(),
        "2_seed.sql",
        "INSERT INTO users VALUES (1, 'ann'), (2, 'bob');",
    );

    // sqlx applies the first; the agent adopts the database and applies the rest.
    let first = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("1_create_users.sql"),
        first.path().join("1_create_users.sql"),
    )
    .unwrap();
    let pool = sqlx::PgPool::connect(&settings.url).await.unwrap();
    sqlx::migrate::Migrator::new(first.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();

    let status = migrate::status(&settings).await.unwrap();
    assert_eq!(status.current, Some(1));
    assert_eq!(status.versions[1].state, State::Pending);
    let report = migrate::run(&settings, None, &noop).await.unwrap();
    assert_eq!(report.applied.iter().map(|a| a.0).collect::<Vec<_>>(), [2]);

    // sqlx, given the full directory, validates our checksums and finds nothing to do.
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    migrator
        .run(&pool)
        .await
        .expect("sqlx accepts the agent's history");
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM users"), "2");
    let rows = pg.psql(&db, "SELECT string_agg(version || ':' || description || ':' || success || ':' || (execution_time > 0), ',' ORDER BY version) FROM _sqlx_migrations");
    assert_eq!(rows, "1:create users:true:true,2:seed:true:true");
    pool.close().await;
}

#[tokio::test]
async fn changed_file_is_refused_until_accepted_with_a_reason() {
    let (pg, db, dir, settings) = setup("checksum");
    write(dir.path(), "1_a.sql", "CREATE TABLE a (id int);");
    migrate::run(&settings, None, &noop).await.unwrap();
    write(dir.path(), "1_a.sql", "CREATE TABLE a (id bigint);");
    write(dir.path(), "2_b.sql", "CREATE TABLE b (id int);");
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, DbError::ChecksumMismatch { version: 1, .. }),
        "{text}"
    );
    assert!(
        text.contains("1_a.sql")
            && text.contains("applied checksum")
            && text.contains("migrate accept 1"),
        "{text}"
    );
    assert_eq!(
        pg.psql(&db, "SELECT to_regclass('b') IS NULL"),
        "t",
        "nothing ran"
    );
    assert_eq!(advisory_locks(pg, &db), "0");

    migrate::accept(
        &settings,
        1,
        "widened the id on purpose; column already bigint in prod",
    )
    .await
    .unwrap();
    let log = pg.psql(
        &db,
        "SELECT action || ' ' || detail FROM _deploy_agent_migration_log WHERE action = 'accept'",
    );
    assert!(
        log.starts_with("accept accepted checksum") && log.contains("widened the id on purpose"),
        "{log}"
    );
    migrate::run(&settings, None, &noop).await.unwrap();
    assert_eq!(pg.psql(&db, "SELECT to_regclass('b') IS NOT NULL"), "t");
}

#[tokio::test]
async fn failing_statement_mid_file_leaves_the_database_exactly_as_before() {
    let (pg, db, dir, settings) = setup("midfail");
    write(
        dir.path(),
        "1_users.sql",
        "CREATE TABLE users (id int PRIMARY KEY);\nINSERT INTO users VALUES (1), (2);",
    );
    migrate::run(&settings, None, &noop).await.unwrap();
    let before = state(&settings, pg, &db).await;

    write(
        dir.path(),
        "2_break.sql",
        "CREATE TABLE audit (id int);\nINSERT INTO users VALUES (3);\n\nINSERT INTO users VALUES (1);\nCREATE TABLE never (id int);",
    );
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    match &err {
        DbError::Migration {
            version: 2,
            line,
            message,
            ..
        } => {
            assert_eq!(*line, 4, "{err}");
            assert!(
                message.contains("duplicate key") && message.contains("23505"),
                "{err}"
            );
        }
        other => panic!("expected a migration error, got {other}"),
    }
    assert!(err.to_string().contains("2_break.sql:4"), "{err}");
    assert_eq!(
        state(&settings, pg, &db).await,
        before,
        "the database changed"
    );
    assert_eq!(advisory_locks(pg, &db), "0", "the lock leaked");
    let status = migrate::status(&settings).await.unwrap();
    assert_eq!((status.current, status.pending()), (Some(1), 1));
}

#[tokio::test]
async fn syntax_error_points_at_its_line() {
    let (pg, db, dir, settings) = setup("syntax");
    write(dir.path(), "1_ok.sql", "CREATE TABLE t (id int);");
    write(
        dir.path(),
        "2_bad.sql",
        "-- a comment\nALTER TABLE t ADD COLUMN x int;\nALTER TABLE t ADD COLUMN y int,,;\n",
    );
    let empty = deploy_agent::db::schema::fingerprint(&settings.url)
        .await
        .unwrap();
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Migration {
                version: 2,
                line: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("syntax error"), "{err}");
    // Migration 1 committed; migration 2 left nothing behind.
    assert_eq!(pg.psql(&db, "SELECT string_agg(column_name, ',') FROM information_schema.columns WHERE table_name = 't'"), "id");
    assert_ne!(
        deploy_agent::db::schema::fingerprint(&settings.url)
            .await
            .unwrap(),
        empty
    );
    assert_eq!(advisory_locks(pg, &db), "0");
}

#[tokio::test]
async fn killed_connection_mid_migration_leaves_no_trace_and_no_lock() {
    let (pg, db, dir, settings) = setup("killed");
    write(dir.path(), "1_t.sql", "CREATE TABLE t (id int);");
    migrate::run(&settings, None, &noop).await.unwrap();
    let before = state(&settings, pg, &db).await;
    write(
        dir.path(),
        "2_slow.sql",
        "CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n",
    );
    let killer = {
        let db = db.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let killed = cluster().psql(
                    &db,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'deploy-agent' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
                );
                if killed != "0" {
                    return true;
                }
            }
            false
        })
    };
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(
        killer.await.unwrap(),
        "the migrating session was found and killed"
    );
    assert!(err.to_string().contains("migration 2"), "{err}");
    assert_eq!(state(&settings, pg, &db).await, before);
    assert_eq!(advisory_locks(pg, &db), "0");
    // And the next run works.
    write(dir.path(), "2_slow.sql", "CREATE TABLE slow (id int);\n");
    migrate::run(&settings, None, &noop).await.unwrap();
}

#[tokio::test]
async fn lock_holder_is_named_and_the_wait_ends() {
    let (pg, db, dir, mut settings) = setup("lockwait");
    write(dir.path(), "1_t.sql", "CREATE TABLE t (id int);");
    settings.lock_wait = Duration::from_millis(800);
    // Another session holds sqlx's migration lock for this database.
    let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}?application_name=other-migrator",
        settings.url
    ))
    .await
    .unwrap();
    let key = migrate::lock_key(&db);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_advisory_lock({key})"
    )))
    .execute(&mut holder)
    .await
    .unwrap();
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DbError::LockTimeout { .. }), "{text}");
    assert!(
        text.contains("application `other-migrator`"),
        "the holder is named: {text}"
    );
    assert_eq!(pg.psql(&db, "SELECT to_regclass('t') IS NULL"), "t");
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    migrate::run(&settings, None, &noop).await.unwrap();
}

#[tokio::test]
async fn ddl_behind_a_long_lock_is_retried_then_succeeds() {
    deploy_agent_tests::logs::install();
    let (pg, db, dir, mut settings) = setup("locktimeout");
    write(dir.path(), "1_t.sql", "CREATE TABLE t (id int);");
    migrate::run(&settings, None, &noop).await.unwrap();
    settings.lock_timeout = Duration::from_millis(100);
    settings.lock_retries = 10;
    write(dir.path(), "2_alter.sql", "ALTER TABLE t ADD COLUMN x int;");
    // A transaction holds the table for about a second.
    let mut blocker = <sqlx::PgConnection as sqlx::Connection>::connect(&settings.url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE;")
        .execute(&mut blocker)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    });
    migrate::run(&settings, None, &noop)
        .await
        .expect("retried until the lock was free");
    release.await.unwrap();
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 't'"
        ),
        "2"
    );
    assert!(
        deploy_agent_tests::logs::captured().contains("could not get its lock within lock_timeout")
    );

    // With too few retries: a clear error, nothing applied.
    write(dir.path(), "3_alter.sql", "ALTER TABLE t ADD COLUMN y int;");
    settings.lock_retries = 1;
    let mut blocker = <sqlx::PgConnection as sqlx::Connection>::connect(&settings.url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE;")
        .execute(&mut blocker)
        .await
        .unwrap();
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(
        err.to_string().contains("55P03") && err.to_string().contains("lock_timeout"),
        "{err}"
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 't'"
        ),
        "2"
    );
    drop(blocker);
}

#[tokio::test]
async fn concurrent_indexes_run_outside_a_transaction_and_failures_are_recorded() {
    let (pg, db, dir, settings) = setup("concurrently");
    write(
        dir.path(),
        "1_t.sql",
        "CREATE TABLE t (id int, email text);\nINSERT INTO t VALUES (1, 'a'), (2, 'a');",
    );
    // Two concurrent indexes in one file: sqlx sends it as one query and fails; we split it.
    write(
        dir.path(),
        "2_idx.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id);\nCREATE INDEX CONCURRENTLY t_email ON t (email);\n",
    );
    migrate::run(&settings, None, &noop).await.unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM pg_indexes WHERE tablename = 't'"),
        "2"
    );

    // A unique concurrent index on duplicate data fails and leaves an INVALID index.
    write(
        dir.path(),
        "3_unique.sql",
        "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY t_email_unique ON t (email);\n",
    );
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            DbError::Migration {
                version: 3,
                line: 2,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("INVALID index") && text.contains("t_email_unique"),
        "{text}"
    );
    let status = migrate::status(&settings).await.unwrap();
    assert_eq!(status.versions[2].state, State::Failed);
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(matches!(err, DbError::Dirty { version: 3 }), "{err}");
    assert_eq!(advisory_locks(pg, &db), "0");
}

#[tokio::test]
async fn reverts_with_down_sql_stored_in_the_history() {
    let (pg, db, dir, settings) = setup("revert");
    write(dir.path(), "1_t.sql", "CREATE TABLE t (id int);");
    write(dir.path(), "2_x.up.sql", "ALTER TABLE t ADD COLUMN x int;");
    write(dir.path(), "2_x.down.sql", "ALTER TABLE t DROP COLUMN x;");
    write(dir.path(), "3_y.up.sql", "ALTER TABLE t ADD COLUMN y int;");
    write(dir.path(), "3_y.down.sql", "ALTER TABLE t DROP COLUMN y;");
    migrate::run(&settings, None, &noop).await.unwrap();
    let cols = || {
        pg.psql(&db, "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 't'")
    };
    assert_eq!(cols(), "id,x,y");

    // A later binary whose directory no longer has 3's files still reverts it.
    std::fs::remove_file(dir.path().join("3_y.up.sql")).unwrap();
    std::fs::remove_file(dir.path().join("3_y.down.sql")).unwrap();
    assert_eq!(migrate::revert(&settings, None).await.unwrap(), [3]);
    assert_eq!(cols(), "id,x");

    // --target down, then up again.
    let report = migrate::run(&settings, Some(1), &noop).await.unwrap();
    assert_eq!(report.reverted, [2]);
    assert_eq!(cols(), "id");
    let report = migrate::run(&settings, Some(2), &noop).await.unwrap();
    assert_eq!(report.applied.iter().map(|a| a.0).collect::<Vec<_>>(), [2]);
    assert_eq!(cols(), "id,x");
    // Down to 0 would need 1's down SQL, which it has not: refused before anything changes.
    let err = migrate::revert(&settings, Some(0)).await.unwrap_err();
    assert!(
        matches!(err, DbError::Irreversible { version: 1, .. }),
        "{err}"
    );
    assert_eq!(cols(), "id,x");
    let log = pg.psql(&db, "SELECT string_agg(action || ' ' || version, ',' ORDER BY id) FROM _deploy_agent_migration_log WHERE action <> 'run'");
    assert_eq!(log, "revert 3,revert 2");
}

#[tokio::test]
async fn dry_run_executes_reports_and_rolls_back() {
    let (pg, db, dir, settings) = setup("dryrun");
    write(
        dir.path(),
        "1_t.sql",
        "CREATE TABLE t (id int);\nINSERT INTO t SELECT generate_series(1, 10);",
    );
    migrate::run(&settings, None, &noop).await.unwrap();
    let before = state(&settings, pg, &db).await;
    write(
        dir.path(),
        "2_change.sql",
        "ALTER TABLE t ADD COLUMN note text;\nUPDATE t SET note = 'x' WHERE id <= 4;\nCREATE TABLE u (id bigint PRIMARY KEY);",
    );
    write(
        dir.path(),
        "3_idx.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY t_note ON t (note);",
    );
    write(dir.path(), "4_after.sql", "DROP TABLE u;");
    let dry = migrate::dry_run(&settings, None).await.unwrap();
    assert!(dry.rolled_back);
    let s = &dry.steps;
    assert!(s[0].executed && s[0].error.is_none());
    assert_eq!(s[0].rows_affected, 4);
    let changes: Vec<String> = s[0]
        .changes
        .iter()
        .map(|c| format!("{} {} {}", c.change, c.kind, c.name))
        .collect();
    for expected in [
        "created column public.t.note",
        "created table public.u",
        "created index public.u_pkey",
        "created constraint public.u.u_pkey",
    ] {
        assert!(
            changes.contains(&expected.to_string()),
            "{expected} missing from {changes:?}"
        );
    }
    assert!(
        !s[1].executed
            && s[1].statements
                == ["-- no-transaction\nCREATE INDEX CONCURRENTLY t_note ON t (note)"],
        "{:?}",
        s[1]
    );
    assert!(
        !s[2].executed
            && s[2]
                .skipped
                .as_deref()
                .unwrap()
                .contains("after migration 3")
    );
    assert!(
        dry.lint.iter().any(|f| f.rule == "ban-drop-table"),
        "{:?}",
        dry.lint
    );
    assert_eq!(
        state(&settings, pg, &db).await,
        before,
        "a dry run changed the database"
    );
    assert_eq!(migrate::status(&settings).await.unwrap().pending(), 3);
}

#[tokio::test]
async fn strict_environments_block_on_lint_unless_waived_and_waivers_are_recorded() {
    let (pg, db, dir, mut settings) = setup("lint");
    settings.strict = true;
    write(
        dir.path(),
        "1_t.sql",
        "CREATE TABLE t (id bigint, old text);",
    );
    migrate::run(&settings, None, &noop).await.unwrap();
    write(dir.path(), "2_drop.sql", "ALTER TABLE t DROP COLUMN old;");
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(matches!(err, DbError::LintBlocked { count: 1 }), "{err}");
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 't'"
        ),
        "2"
    );
    write(
        dir.path(),
        "2_drop.sql",
        "-- deploy-agent: allow ban-drop-column nothing reads `old` since v41\nALTER TABLE t DROP COLUMN old;",
    );
    let report = migrate::run(&settings, None, &noop).await.unwrap();
    assert_eq!(
        report.lint[0].waived.as_deref(),
        Some("nothing reads `old` since v41")
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT waivers FROM _deploy_agent_migrations WHERE version = 2"
        ),
        "ban-drop-column: nothing reads `old` since v41"
    );
}

#[tokio::test]
async fn post_checks_report_unvalidated_constraints_and_record_the_fingerprint() {
    let (pg, db, dir, settings) = setup("postcheck");
    write(
        dir.path(),
        "1_t.sql",
        "CREATE TABLE t (id int);\nALTER TABLE t ADD CONSTRAINT positive CHECK (id > 0) NOT VALID;",
    );
    let report = migrate::run(&settings, None, &noop).await.unwrap();
    let check = report
        .postchecks
        .iter()
        .find(|c| c.name == "unvalidated constraints")
        .unwrap();
    assert_eq!(check.status, "warning");
    assert!(check.detail.contains("t.positive"), "{}", check.detail);
    assert_eq!(
        report.fingerprint,
        deploy_agent::db::schema::fingerprint(&settings.url)
            .await
            .unwrap()
    );
    assert!(
        report
            .prechecks
            .iter()
            .any(|c| c.name == "server version" && c.detail.starts_with("PostgreSQL 15"))
    );
    let recorded = pg.psql(
        &db,
        "SELECT detail FROM _deploy_agent_migration_log WHERE action = 'run'",
    );
    assert_eq!(
        recorded,
        format!(
            "applied 1, reverted 0; schema fingerprint {}",
            report.fingerprint
        )
    );
}

#[tokio::test]
async fn sqlite_failure_mid_file_rolls_back_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    let url = format!("sqlite:{}", dir.path().join("app.db").display());
    let settings = Settings::new(&url, migrations.clone());
    write(
        &migrations,
        "1_t.sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY);\nINSERT INTO t VALUES (1);",
    );
    migrate::run(&settings, None, &noop).await.unwrap();
    let before = deploy_agent::db::schema::fingerprint(&url).await.unwrap();
    write(
        &migrations,
        "2_bad.sql",
        "CREATE TABLE u (id int);\nINSERT INTO t VALUES (2);\nINSERT INTO t VALUES (1);",
    );
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Migration {
                version: 2,
                line: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        deploy_agent::db::schema::fingerprint(&url).await.unwrap(),
        before
    );
    let status = migrate::status(&settings).await.unwrap();
    assert_eq!((status.current, status.pending()), (Some(1), 1));
    // Row count unchanged too.
    assert_eq!(deploy_agent_tests::sqlite_count(&url, "t").await, 1);
}

#[tokio::test]
async fn failure_inside_a_pipelined_batch_commits_those_before_and_names_the_line() {
    let (pg, db, dir, settings) = setup("batchfail");
    write(
        dir.path(),
        "1_t.sql",
        "CREATE TABLE t (id int PRIMARY KEY);",
    );
    write(dir.path(), "2_a.sql", "INSERT INTO t VALUES (1);");
    write(dir.path(), "3_b.sql", "INSERT INTO t VALUES (2);");
    write(
        dir.path(),
        "4_bad.sql",
        "INSERT INTO t VALUES (3);\n-- oops\nINSERT INTO t VALUES (1);",
    );
    write(dir.path(), "5_c.sql", "INSERT INTO t VALUES (5);");
    let err = migrate::run(&settings, None, &noop).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Migration {
                version: 4,
                line: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        pg.psql(&db, "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    let status = migrate::status(&settings).await.unwrap();
    assert_eq!((status.current, status.pending()), (Some(3), 2));
    assert_eq!(advisory_locks(pg, &db), "0");
    // Per-migration execution times are each migration's own, not the batch's running total.
    let times = pg.psql(
        &db,
        "SELECT bool_and(execution_time > 0 AND execution_time < 1000000000) FROM _sqlx_migrations",
    );
    assert_eq!(times, "t");
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_deploy_honours_waivers_like_migrate_lint_and_run() {
    // One lint verdict for `migrate lint`, `migrate run` and `deploy`: a finding waived with
    // a reason passes all three in a strict environment; without the waiver (or without its
    // reason) deploy blocks and names the rule and the waiver line to write.
    let pg = deploy_agent_tests::postgres::cluster();
    let (_db, url) = pg.database("strict_waiver");
    let p = crate::project::Project::new("strict = false", "");
    p.database_from_env();
    let run = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            p.command(args)
                .env("DA_TEST_APP_URL", &url)
                .output()
                .unwrap()
        })
    };
    // The example app's own migrations have findings: deploy them first, then go strict.
    let out = run(&["deploy", "--env", "local"]);
    assert!(out.status.success(), "{}", crate::project::stderr(&out));
    p.edit_config("strict = false", "strict = true");

    let file = p.path("migrations/20261103090000_drop_body.sql");
    let drop = "ALTER TABLE notes DROP COLUMN body;\n";
    std::fs::write(&file, drop).unwrap();
    std::fs::write(p.path("site/index.html"), "<h1>v2</h1>").unwrap();
    let out = run(&["deploy", "--env", "local"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("[ban-drop-column]"), "{said}");
    assert!(
        said.contains("-- deploy-agent: allow ban-drop-column <reason>"),
        "the waiver line to write: {said}"
    );

    // A waiver without its reason is refused, by deploy and by migrate run alike.
    std::fs::write(
        &file,
        format!("-- deploy-agent: allow ban-drop-column\n{drop}"),
    )
    .unwrap();
    let out = run(&["deploy", "--env", "local"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("waiver-needs-reason"), "{said}");
    let out = run(&["migrate", "run", "--env", "local"]);
    assert!(!out.status.success(), "migrate run refuses it too");

    // With a reason: lint, run and deploy all accept it.
    std::fs::write(
        &file,
        format!("-- deploy-agent: allow ban-drop-column nothing reads it since v1\n{drop}"),
    )
    .unwrap();
    // `migrate lint` reviews every file (the example's own int columns still show), and
    // calls this one waived, with its reason.
    let out = run(&["migrate", "lint", "--env", "local"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("20261103090000_drop_body.sql:2:19: waived:")
            && said.contains("waived: nothing reads it since v1"),
        "{said}"
    );
    let out = run(&["deploy", "--env", "local"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        crate::project::stderr(&out)
    );
    assert_eq!(
        pg.psql(&_db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'body'"),
        "0"
    );
}

#[test]
fn sqlite_migrations_with_triggers_apply() {
    let p = crate::project::Project::new("", "");
    std::fs::write(
        p.path("migrations/20261103090000_audit.sql"),
        "CREATE TABLE note_log (note_id INTEGER NOT NULL, kind TEXT NOT NULL);\n\
         -- Log every new note; a CASE ... END and a semicolon in a string stay inside the body.\n\
         CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN\n\
           INSERT INTO note_log VALUES (new.id, CASE WHEN new.title = '' THEN 'empty;' ELSE 'titled' END);\n\
           /* two statements in the body */ UPDATE notes SET body = body WHERE id = new.id;\n\
         END;\n\
         INSERT INTO notes (id, title) VALUES (2, 'second');\n",
    )
    .unwrap();
    let out = p.run(&["migrate", "run", "--env", "local"]);
    assert!(out.status.success(), "{}", crate::project::stderr(&out));
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(deploy_agent_tests::sqlite_count(&p.db_url(), "note_log")),
        1,
        "the trigger exists and fired"
    );
    let out = p.run(&["migrate", "dry-run", "--env", "local"]);
    assert!(out.status.success(), "{}", crate::project::stderr(&out));
}

#[tokio::test]
async fn dry_runs_do_not_consume_sequences() {
    // `serial` inserts, identity columns and explicit nextval() in pending migrations: the
    // dry run executes them, and afterwards every sequence is where it was.
    let pg = deploy_agent_tests::postgres::cluster();
    let (db, url) = pg.database("dry_seq");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("1_base.sql"),
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);\n\
         CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku text);\n\
         CREATE SEQUENCE invoice_no START 1000;\n\
         CREATE SEQUENCE fresh;\n\
         INSERT INTO orders (note) VALUES ('a'), ('b');\n\
         INSERT INTO items (sku) VALUES ('x');\n\
         SELECT nextval('invoice_no');\n",
    )
    .unwrap();
    let settings = Settings::new(&url, dir.path().to_path_buf());
    migrate::run(&settings, None, &noop).await.unwrap();
    std::fs::write(
        dir.path().join("2_more.sql"),
        "INSERT INTO orders (note) SELECT 'n' || g FROM generate_series(1, 50) g;\n\
         INSERT INTO items (sku) SELECT 's' || g FROM generate_series(1, 20) g;\n\
         SELECT nextval('invoice_no'), nextval('invoice_no'), nextval('fresh');\n\
         CREATE TABLE made_here (id serial PRIMARY KEY);\n\
         INSERT INTO made_here DEFAULT VALUES;\n",
    )
    .unwrap();
    let sequences = "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, 'unused'), ',' ORDER BY sequencename) FROM pg_sequences";
    let before = pg.psql(&db, sequences);
    assert_eq!(
        before,
        "_deploy_agent_migration_log_id_seq=1,fresh=unused,invoice_no=1000,items_id_seq=1,orders_id_seq=2"
    );
    let dry = migrate::dry_run(&settings, None).await.unwrap();
    assert!(dry.steps.iter().all(|s| s.executed), "{dry:#?}");
    // 50 + 20 inserted, the nextval row, one more insert.
    assert_eq!(dry.steps[0].rows_affected, 72);
    assert!(dry.rolled_back);
    assert_eq!(pg.psql(&db, sequences), before, "no sequence moved");
    assert!(dry.sequences.unchanged, "{:?}", dry.sequences);
    assert_eq!(dry.sequences.isolated, 5);
    assert!(dry.sequences.moved.is_empty() && dry.sequences.note.is_none());
    // The real run then hands out exactly the next values.
    migrate::run(&settings, None, &noop).await.unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT min(id) FROM orders WHERE note LIKE 'n%'"),
        "3"
    );
    assert_eq!(pg.psql(&db, "SELECT nextval('invoice_no')"), "1003");
}
