//! The state store's schema is versioned and upgraded on open. The fixtures are state stores
//! written by the release before versioning (`tests/fixtures/state/README.md` says how they
//! were made): opening one upgrades it, and every run, step, release, backup, approval,
//! rollback and audit entry reads back unchanged, with the audit chain's head as it was. A
//! store whose schema is newer than the binary is refused, by the library and by the CLI.

use std::path::Path;

use deploy_agent::store::{ReleaseStatus, RunStatus, Store, StoreError};
use deploy_agent_tests::postgres::cluster;
use deploy_agent_tests::repo_root;
// The table and column names are the fixture's own (constants and PRAGMA output).
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::project::{Project, stderr};

/// The tables the release before versioning wrote.
const TABLES: [&str; 10] = [
    "deployments",
    "steps",
    "releases",
    "backups",
    "locks",
    "approvals",
    "rollbacks",
    "audit",
    "queue",
    "webhook_deliveries",
];

/// What the fixtures hold (see their README): runs per environment, and the audit chain.
const AUDIT_ENTRIES: usize = 15;
const SQLITE_HEAD: &str = "0233b80c667c1c72b9c830712fc8815dee3940d68aff8e29b8d3731b6f4b926e";
const POSTGRES_HEAD: &str = "d141ff3cfde17bd87f832bc788932e0a4d36a49abe55796193968f51b718c8ea";

fn fixture(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures/state").join(name)
}

/// Each table's columns, as the fixture has them: later schema versions add columns (NULL in
/// the fixture's rows), and the rows are compared on the fixture's own columns.
type Columns = std::collections::BTreeMap<&'static str, Vec<String>>;

/// Every row of every table, as text, in key order: SQLite; on `only`'s columns when given.
async fn sqlite_rows(path: &Path, only: Option<&Columns>) -> (Vec<String>, Columns) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut seen = Columns::new();
    for table in TABLES {
        let mut columns: Vec<String> =
            sqlx::query(AssertSqlSafe(format!("PRAGMA table_info({table})")))
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("name"))
                .collect();
        assert!(!columns.is_empty(), "table {table} is missing");
        if let Some(only) = only {
            columns.retain(|c| only[table].contains(c));
        }
        seen.insert(table, columns.clone());
        let row = columns
            .iter()
            .map(|c| format!("quote({c})"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        for r in sqlx::query(AssertSqlSafe(format!(
            "SELECT {row} FROM {table} ORDER BY rowid"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        {
            out.push(format!("{table}: {}", r.get::<String, _>(0)));
        }
    }
    conn.close().await.unwrap();
    (out, seen)
}

/// Every row of every table, as text, in order: PostgreSQL; on `only`'s columns when given.
fn postgres_rows(db: &str, only: Option<&Columns>) -> (Vec<String>, Columns) {
    let mut out = Vec::new();
    let mut seen = Columns::new();
    for table in TABLES {
        let mut columns: Vec<String> = cluster()
            .psql(
                db,
                &format!("SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"),
            )
            .lines()
            .map(str::to_string)
            .collect();
        if let Some(only) = only {
            columns.retain(|c| only[table].contains(c));
        }
        let sql = format!(
            "SELECT ROW({})::text FROM public.{table} t ORDER BY 1",
            columns.join(", ")
        );
        out.extend(
            cluster()
                .psql(db, &sql)
                .lines()
                .map(|l| format!("{table}: {l}")),
        );
        seen.insert(table, columns);
    }
    (out, seen)
}

/// What the store itself reads back from an upgraded fixture.
async fn check_contents(store: &Store, head: &str) {
    assert_eq!(
        store.schema_version().await.unwrap(),
        Some(Store::known_schema_version()),
        "the fixture was upgraded to the binary's schema"
    );
    let local = store.deployments("local", 100).await.unwrap();
    assert_eq!(local.len(), 2, "both runs to `local`: {local:?}");
    assert!(local.iter().all(|d| d.status == RunStatus::Succeeded));
    let gated = store.deployments("gated", 100).await.unwrap();
    assert_eq!(gated.len(), 1);
    for d in local.iter().chain(&gated) {
        assert!(
            !store.steps(&d.id).await.unwrap().is_empty(),
            "run {} kept its journal",
            d.id
        );
    }
    let approval = store
        .approval(&gated[0].id, "promote")
        .await
        .unwrap()
        .expect("the gated run's approval");
    assert_eq!(approval.reason.as_deref(), Some("fixture approval"));
    let releases = store.releases("local").await.unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(
        releases
            .iter()
            .filter(|r| r.state == ReleaseStatus::Live)
            .count(),
        1,
        "{releases:?}"
    );
    let rollbacks = store.rollbacks("local").await.unwrap();
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0].reason.as_deref(), Some("fixture rollback"));
    // Added by schema version 8: NULL in an upgraded store, read back as no swap.
    assert_eq!(rollbacks[0].database_swap, None);
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries, AUDIT_ENTRIES);
    assert_eq!(report.head, head, "the chain's head is unchanged");
}

#[tokio::test]
async fn a_sqlite_state_store_from_before_versioning_is_upgraded_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::copy(fixture("2026-11-29-sqlite.db"), &path).unwrap();
    let (before, columns) = sqlite_rows(&path, None).await;
    assert!(before.len() > 40, "the fixture holds its rows: {before:?}");

    let store = Store::open_dir(dir.path()).await.unwrap();
    check_contents(&store, SQLITE_HEAD).await;
    drop(store);
    assert_eq!(
        sqlite_rows(&path, Some(&columns)).await.0,
        before,
        "every row as it was"
    );

    // Opening again applies nothing and changes nothing.
    let store = Store::open_dir(dir.path()).await.unwrap();
    check_contents(&store, SQLITE_HEAD).await;
}

#[tokio::test]
async fn a_postgres_state_store_from_before_versioning_is_upgraded_intact() {
    let pg = cluster();
    let (db, url) = pg.database("state_fixture");
    let sql = std::fs::read_to_string(fixture("2026-11-29-postgres.sql")).unwrap();
    pg.psql(&db, &sql);
    let (before, columns) = postgres_rows(&db, None);
    assert!(before.len() > 40, "the fixture holds its rows: {before:?}");

    let store = Store::open(&url).await.unwrap();
    check_contents(&store, POSTGRES_HEAD).await;
    assert_eq!(
        postgres_rows(&db, Some(&columns)).0,
        before,
        "every row as it was"
    );
    let indexes = pg.psql(
        &db,
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE indexname IN ('rollbacks_env', 'approvals_pending', 'webhook_deliveries_age')",
    );
    assert_eq!(
        indexes,
        "approvals_pending,rollbacks_env,webhook_deliveries_age"
    );

    // The app's history (sqlx's table) is not the store's: a state store sharing the app's
    // database leaves `migrate status` to the app's own migrations.
    let app_history = pg.psql(&db, "SELECT to_regclass('_sqlx_migrations') IS NULL");
    assert_eq!(app_history, "t");
}

#[tokio::test]
async fn a_state_store_newer_than_the_binary_is_refused() {
    let p = Project::new("", "");
    std::fs::create_dir_all(p.path("state")).unwrap();
    let path = p.path("state/state.db");
    std::fs::copy(fixture("2026-11-29-sqlite.db"), &path).unwrap();
    drop(Store::open_dir(&p.path("state")).await.unwrap());
    let newer = Store::known_schema_version() + 1;
    {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _deploy_agent_state_versions (version, description, success, checksum, execution_time) VALUES ($1, 'from the future', TRUE, x'00', 0)",
        )
        .bind(newer)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let (before, columns) = sqlite_rows(&path, None).await;

    match Store::open_dir(&p.path("state")).await {
        Err(StoreError::NewerSchema { found, known, .. }) => {
            assert_eq!((found, known), (newer, Store::known_schema_version()));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let out = p.run(&["history", "--env", "local"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "history used a newer store: {err}");
    assert!(
        err.contains(&format!(
            "schema version {newer}, newer than this deploy-agent knows"
        )),
        "{err}"
    );
    let out = p.run(&["deploy", "--env", "local", "--version", "v-next"]);
    assert!(!out.status.success(), "a deploy used a newer store");
    assert_eq!(
        sqlite_rows(&path, Some(&columns)).await.0,
        before,
        "nothing was written"
    );
}

#[test]
fn the_cli_reads_and_extends_an_upgraded_store() {
    let p = Project::new("", "");
    std::fs::create_dir_all(p.path("state")).unwrap();
    std::fs::copy(fixture("2026-11-29-sqlite.db"), p.path("state/state.db")).unwrap();
    let history = p.json(&["history", "--env", "local"]);
    let runs = history.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 2, "{history}");
    let (code, report) = p.deploy();
    assert_eq!(code, 0, "{report}");
    let verify = p.json(&["audit", "verify"]);
    assert_eq!(
        verify["problems"].as_array().map(Vec::len),
        Some(0),
        "{verify}"
    );
    assert!(
        verify["entries"].as_u64().unwrap() > AUDIT_ENTRIES as u64,
        "the deploy extended the fixture's chain: {verify}"
    );
}
