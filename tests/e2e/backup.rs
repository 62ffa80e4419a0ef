//! Backups against real PostgreSQL (pg_dump / pg_restore from the machine) and SQLite:
//! round trips, verification, tampering, wrong keys, a full disk, restore tests, retention.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use deploy_agent::config::KeyUse;
use deploy_agent::db::backup::{self, BackupSettings, Key, Retention};
use deploy_agent::db::migrate::{self, Settings};
use deploy_agent_tests::postgres::{Cluster, cluster};

fn settings(env: &str, dir: &Path, key: Option<Key>) -> BackupSettings {
    BackupSettings {
        environment: env.into(),
        dir: dir.to_path_buf(),
        key,
        zstd_level: 3,
        zstd_workers: 0,
        retention: Retention {
            keep_last: 10,
            keep_daily: 7,
            keep_weekly: 4,
        },
    }
}

fn key(byte: &str) -> Key {
    Key::parse(&byte.repeat(32)).unwrap()
}

fn noop(_: usize, _: usize, _: &migrate::Migration) {}

/// A database with a migrated schema and some rows.
async fn seeded(pg: &Cluster, prefix: &str) -> (String, String, tempfile::TempDir) {
    let (db, url) = pg.database(prefix);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1_orders.sql"), "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(10,2));\nCREATE INDEX orders_customer ON orders (customer);").unwrap();
    std::fs::write(dir.path().join("2_seed.sql"), "INSERT INTO orders SELECT g, 'customer ' || (g % 97), g * 1.5 FROM generate_series(1, 5000) g;").unwrap();
    migrate::run(&Settings::new(&url, dir.path().to_path_buf()), None, &noop)
        .await
        .unwrap();
    (db, url, dir)
}

fn summary(pg: &Cluster, db: &str) -> String {
    pg.psql(db, "SELECT count(*) || ':' || sum(total) || ':' || (SELECT max(version) FROM _sqlx_migrations) FROM orders")
}

#[tokio::test]
async fn postgres_backup_restores_exactly_and_records_its_manifest() {
    let pg = cluster();
    let (db, url, _m) = seeded(pg, "bk_roundtrip").await;
    let before = summary(pg, &db);
    let fingerprint = deploy_agent::db::schema::fingerprint(&url).await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let s = settings("staging", store.path(), Some(key("42")));
    let m = backup::create(
        &url,
        &s,
        "tester",
        "before migration 3",
        Arc::new(AtomicU64::new(0)),
    )
    .await
    .unwrap();
    assert_eq!(
        (m.schema_version, m.format.as_str(), m.backend.as_str()),
        (Some(2), "pg_dump-custom", "postgres")
    );
    assert_eq!(m.schema_fingerprint, fingerprint);
    assert_eq!(m.encryption.as_deref(), Some("xchacha20poly1305-stream"));
    assert_eq!(m.key_id, Some(key("42").id()));
    assert!(m.raw_bytes > m.stored_bytes && m.stored_bytes > 0, "{m:?}");
    assert_eq!(
        (m.who.as_str(), m.why.as_str()),
        ("tester", "before migration 3")
    );
    let on_disk: backup::Manifest = serde_json::from_str(
        &std::fs::read_to_string(store.path().join(format!("{}.json", m.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk, m);
    // The stored file is not plaintext: pg_dump's magic and the data do not appear.
    let stored = std::fs::read(store.path().join(format!("{}.backup", m.id))).unwrap();
    assert!(!stored.windows(5).any(|w| w == b"PGDMP"));

    let v = backup::verify(&m, store.path(), s.key.as_ref()).unwrap();
    assert_eq!(v.raw_bytes, m.raw_bytes);

    // Break the database, then restore.
    pg.psql(
        &db,
        "DELETE FROM orders WHERE id > 10; DROP INDEX orders_customer; CREATE TABLE junk (x int);",
    );
    backup::restore(&m, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap();
    assert_eq!(summary(pg, &db), before);
    assert_eq!(
        deploy_agent::db::schema::fingerprint(&url).await.unwrap(),
        fingerprint
    );

    // Restore test into a scratch database, dropped afterwards.
    let t = backup::restore_test(&m, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap();
    assert!(t.fingerprint_matches, "{t:?}");
    assert_eq!(
        pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                t.scratch
            )
        ),
        "0"
    );

    // Export: a stock pg_dump archive that pg_restore reads.
    let out = store.path().join("export.dump");
    backup::export(&m, store.path(), s.key.as_ref(), &out).unwrap();
    let listing = std::process::Command::new(pg.bin_dir().join("pg_restore"))
        .arg("--list")
        .arg(&out)
        .output()
        .unwrap();
    assert!(listing.status.success());
    assert!(String::from_utf8_lossy(&listing.stdout).contains("TABLE public orders"));
}

#[tokio::test]
async fn tampered_truncated_and_wrong_key_backups_are_refused() {
    let pg = cluster();
    let (db, url, _m) = seeded(pg, "bk_tamper").await;
    let store = tempfile::tempdir().unwrap();
    let s = settings("prod", store.path(), Some(key("07")));
    let m = backup::create(&url, &s, "t", "t", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let file = store.path().join(format!("{}.backup", m.id));
    let original = std::fs::read(&file).unwrap();

    let err = backup::verify(&m, store.path(), Some(&key("08")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong backup key"), "{err}");
    let err = backup::verify(&m, store.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no backup key is configured"), "{err}");

    let mut tampered = original.clone();
    let i = tampered.len() / 2;
    tampered[i] ^= 0x40;
    std::fs::write(&file, &tampered).unwrap();
    let err = backup::verify(&m, store.path(), s.key.as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    // Even with the manifest's checksum updated, the content fails authentication.
    let mut forged = m.clone();
    forged.sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&tampered))
    };
    let err = backup::verify(&forged, store.path(), s.key.as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed authentication"), "{err}");
    // A restore from it fails part-way through the stream, and must change nothing.
    let before = summary(pg, &db);
    let fingerprint = deploy_agent::db::schema::fingerprint(&url).await.unwrap();
    let err = backup::restore(&forged, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        summary(pg, &db),
        before,
        "a failed restore changed the data"
    );
    assert_eq!(
        deploy_agent::db::schema::fingerprint(&url).await.unwrap(),
        fingerprint
    );
    assert!(err.contains("database is unchanged"), "{err}");
    assert!(
        err.contains("failed authentication") || err.contains("pg_restore"),
        "{err}"
    );

    std::fs::write(&file, &original[..original.len() - 100]).unwrap();
    let mut truncated = m.clone();
    truncated.sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&original[..original.len() - 100]))
    };
    let err = backup::verify(&truncated, store.path(), s.key.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated") || err.contains("failed authentication"),
        "{err}"
    );
}

#[tokio::test]
async fn a_backup_is_what_its_manifest_says_it_is() {
    let pg = cluster();
    let (db, url, _m) = seeded(pg, "bk_identity").await;
    let store = tempfile::tempdir().unwrap();
    let s = settings("prod", store.path(), Some(key("07")));
    let a = backup::create(&url, &s, "t", "a", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    pg.psql(&db, "DELETE FROM orders WHERE id > 10");
    let b = backup::create(&url, &s, "t", "b", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let a_file = store.path().join(format!("{}.backup", a.id));
    let b_file = store.path().join(format!("{}.backup", b.id));
    let before = pg.dump(&db);

    // A swapped file: `restore` and `restore --test` refuse it on its checksum, before
    // anything is written.
    let a_bytes = std::fs::read(&a_file).unwrap();
    std::fs::copy(&b_file, &a_file).unwrap();
    let err = backup::restore(&a, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    let err = backup::restore_test(&a, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert_eq!(pg.dump(&db), before, "nothing was written");

    // The same file with a's manifest edited to match it (checksum, sizes): the stream is
    // bound to backup b, so it fails authentication and nothing is restored.
    let mut forged = a.clone();
    forged.sha256 = b.sha256.clone();
    forged.raw_bytes = b.raw_bytes;
    forged.stored_bytes = b.stored_bytes;
    let err = backup::verify(&forged, store.path(), s.key.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("failed authentication") && err.contains(&a.id),
        "{err}"
    );
    let err = backup::restore(&forged, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("database is unchanged"), "{err}");
    assert_eq!(pg.dump(&db), before, "a forged backup changed the database");

    // Put back, the real one restores.
    std::fs::write(&a_file, a_bytes).unwrap();
    backup::restore(&a, store.path(), s.key.as_ref(), &url)
        .await
        .unwrap();
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM orders"), "5000");
}

#[tokio::test]
async fn in_place_restore_is_exact_for_objects_outside_schemas() {
    // Large objects, publications, event triggers, extensions and their objects, comments,
    // default privileges: what pg_dump carries, a restore in place brings back exactly, and
    // what was created since is gone. Compared as whole pg_dump outputs.
    let pg = cluster();
    let (db, url) = pg.database("bk_exact");
    pg.psql(
        &db,
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bk_reader') THEN CREATE ROLE bk_reader; END IF; END $$;\
         CREATE EXTENSION citext; CREATE EXTENSION hstore;\
         CREATE SCHEMA app;\
         CREATE TABLE app.users (id serial PRIMARY KEY, email citext UNIQUE, attrs hstore);\
         INSERT INTO app.users (email, attrs) SELECT 'u' || g || '@example.com', 'plan=>free' FROM generate_series(1, 200) g;\
         COMMENT ON TABLE app.users IS 'people';\
         SELECT lo_from_bytea(4242, 'large object one');\
         COMMENT ON LARGE OBJECT 4242 IS 'an attachment';\
         CREATE PUBLICATION pub_users FOR TABLE app.users;\
         CREATE FUNCTION app.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$ BEGIN NULL; END $f$;\
         CREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION app.on_ddl();\
         ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;\
         ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO bk_reader;",
    );
    let store = tempfile::tempdir().unwrap();
    let s = settings("prod", store.path(), None);
    let m = backup::create(&url, &s, "t", "t", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let backed_up = pg.dump(&db);
    pg.psql(
        &db,
        "SELECT lo_from_bytea(4343, 'added later'); SELECT lo_unlink(4242);\
         DROP PUBLICATION pub_users; CREATE PUBLICATION pub_all FOR ALL TABLES;\
         DROP EVENT TRIGGER audit_ddl;\
         CREATE EVENT TRIGGER other ON ddl_command_start EXECUTE FUNCTION app.on_ddl();\
         ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM PUBLIC;\
         ALTER DEFAULT PRIVILEGES GRANT USAGE ON SEQUENCES TO bk_reader;\
         CREATE EXTENSION pg_trgm; CREATE TABLE public.extra (x int);\
         DELETE FROM app.users WHERE id > 50;",
    );
    assert_ne!(pg.dump(&db), backed_up);
    backup::restore(&m, store.path(), None, &url).await.unwrap();
    assert_eq!(pg.dump(&db), backed_up, "the restore is exact");
}

#[tokio::test]
async fn a_failing_restore_reports_the_servers_error_not_a_broken_pipe() {
    // A big archive whose restore fails early (a role it grants to is gone): the error is
    // PostgreSQL's own, and the database is unchanged.
    let pg = cluster();
    let (db, url) = pg.database("bk_pipe");
    pg.psql(
        &db,
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bk_gone') THEN CREATE ROLE bk_gone; END IF; END $$;\
         CREATE TABLE early (x int); GRANT SELECT ON early TO bk_gone;\
         CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 300000) g;",
    );
    let store = tempfile::tempdir().unwrap();
    let s = settings("prod", store.path(), None);
    let m = backup::create(&url, &s, "t", "t", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    pg.psql(
        &db,
        "REVOKE ALL ON early FROM bk_gone; DROP ROLE bk_gone; CREATE TABLE since (y int);",
    );
    let before = pg.dump(&db);
    let err = backup::restore(&m, store.path(), None, &url)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("role \"bk_gone\" does not exist") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert!(err.contains("database is unchanged"), "{err}");
    assert_eq!(pg.dump(&db), before);
}

#[tokio::test]
async fn failed_backup_leaves_nothing_that_looks_complete() {
    let pg = cluster();
    let (db, url, _m) = seeded(pg, "bk_fail").await;
    let store = tempfile::tempdir().unwrap();
    let s = settings("prod", store.path(), None);
    // pg_dump fails part-way: connected as a role that may not read `orders`.
    let role = format!("limited_{db}");
    pg.psql(&db, &format!("CREATE ROLE {role} LOGIN; GRANT SELECT ON _sqlx_migrations, _deploy_agent_migrations TO {role}"));
    let limited = url.replace("postgres@", &format!("{role}@"));
    let err = backup::create(&limited, &s, "t", "t", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pg_dump failed") && err.contains("permission denied"),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(store.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(backup::list(store.path()).unwrap().0.is_empty());
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn full_disk_during_a_backup_is_a_clear_error_with_no_partial_left() {
    let pg = cluster();
    let (db, url, _m) = seeded(pg, "bk_full").await;
    // Incompressible rows, so the backup cannot fit in the small filesystem below.
    pg.psql(&db, "CREATE TABLE blobs AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS v FROM generate_series(1, 20000) g");
    let tiny = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(tiny.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        // The tests run as root on this project's machines and in CI; elsewhere this cannot run.
        eprintln!("skipping: cannot mount a small tmpfs here (not root?)");
        return;
    }
    let s = settings("prod", tiny.path(), None);
    let result = backup::create(&url, &s, "t", "t", Arc::new(AtomicU64::new(0))).await;
    let leftovers: Vec<_> = std::fs::read_dir(tiny.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let _ = std::process::Command::new("umount")
        .arg(tiny.path())
        .status();
    let err = result.unwrap_err().to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[tokio::test]
async fn configured_key_that_cannot_be_used_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
    let config = format!(
        "[environments.prod.database]\nurl = \"sqlite:app.db\"\n[environments.prod.backup]\nkey = \"${{file:{}}}\"\n[environments.other.database]\nurl = \"sqlite:x.db\"\n[environments.other.backup]\nkey = \"${{file:{}/missing.key}}\"\n",
        dir.path().join("bad.key").display(),
        dir.path().display()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let config = deploy_agent::config::Config::load(&path).unwrap();
    let err = config.environments["prod"]
        .backup
        .settings("prod", KeyUse::Write)
        .unwrap_err();
    assert!(
        err.contains("refusing to write an unencrypted backup"),
        "{err}"
    );
    let err = config.environments["other"]
        .backup
        .settings("other", KeyUse::Write)
        .unwrap_err();
    assert!(
        err.contains("cannot read secret file") && err.contains("refusing"),
        "{err}"
    );
    // Verifying or restoring with the key file gone: an error about reading, not writing.
    let err = config.environments["other"]
        .backup
        .settings("other", KeyUse::Read)
        .unwrap_err();
    assert!(
        err.contains("missing.key")
            && err.contains("cannot be read without it")
            && !err.contains("unencrypted"),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_backup_round_trip_with_restore_test() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("m");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(migrations.join("1_t.sql"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\nINSERT INTO t (v) VALUES ('a'), ('b'), ('c');").unwrap();
    let url = format!("sqlite:{}", dir.path().join("app.db").display());
    migrate::run(&Settings::new(&url, migrations), None, &noop)
        .await
        .unwrap();
    let fingerprint = deploy_agent::db::schema::fingerprint(&url).await.unwrap();
    let store = dir.path().join("backups");
    let s = settings("local", &store, Some(key("aa")));
    let m = backup::create(&url, &s, "t", "t", Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    assert_eq!(
        (m.format.as_str(), m.schema_version),
        ("sqlite-database", Some(1))
    );
    backup::verify(&m, &store, s.key.as_ref()).unwrap();
    let t = backup::restore_test(&m, &store, s.key.as_ref(), &url)
        .await
        .unwrap();
    assert!(t.fingerprint_matches);

    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM t")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE junk (x)")
        .execute(&mut conn)
        .await
        .unwrap();
    <sqlx::SqliteConnection as sqlx::Connection>::close(conn)
        .await
        .unwrap();
    backup::restore(&m, &store, s.key.as_ref(), &url)
        .await
        .unwrap();
    assert_eq!(
        deploy_agent::db::schema::fingerprint(&url).await.unwrap(),
        fingerprint
    );
    assert_eq!(deploy_agent_tests::sqlite_count(&url, "t").await, 3);
}

#[tokio::test]
async fn prune_keeps_the_policy_and_pinned_backups() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("m");
    std::fs::create_dir(&migrations).unwrap();
    let url = format!("sqlite:{}", dir.path().join("app.db").display());
    migrate::run(&Settings::new(&url, migrations), None, &noop)
        .await
        .unwrap();
    let store = dir.path().join("backups");
    let mut s = settings("local", &store, None);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            backup::create(&url, &s, "t", "t", Arc::new(AtomicU64::new(0)))
                .await
                .unwrap()
                .id,
        );
    }
    s.retention = Retention {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
    };
    let (all, _) = backup::list(&store).unwrap();
    let newest = all[0].id.clone();
    let oldest = all[3].id.clone();
    let pinned: BTreeSet<String> = [oldest.clone()].into();
    // Leftovers of interrupted backups: one from before the newest backup (removed), one a
    // live process still writes (its lock is held: kept), one newer than the newest backup
    // (kept until a complete backup follows it).
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let leftover = |name: &str, at: std::time::SystemTime| {
        let f = std::fs::File::create(store.join(name)).unwrap();
        f.set_modified(at).unwrap();
        f
    };
    drop(leftover("20200101T000000Z-local-dead.partial", old));
    drop(leftover("20200101T000000Z-local-dead.snapshot", old));
    let writer = leftover("20200101T000000Z-local-live.partial", old);
    writer.lock().unwrap();
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    drop(leftover("29990101T000000Z-local-next.partial", future));
    let pruned = backup::prune(&store, s.retention, &pinned, false).unwrap();
    assert_eq!(pruned.deleted.len(), 2);
    let mut removed: Vec<String> = pruned
        .leftovers
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            "20200101T000000Z-local-dead.partial",
            "20200101T000000Z-local-dead.snapshot"
        ]
    );
    assert!(store.join("20200101T000000Z-local-live.partial").exists());
    assert!(store.join("29990101T000000Z-local-next.partial").exists());
    drop(writer);
    let left: BTreeSet<String> = backup::list(&store)
        .unwrap()
        .0
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, [newest, oldest].into());
}
