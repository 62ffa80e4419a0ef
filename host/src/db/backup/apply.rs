//! Restoring a PostgreSQL backup in place, all or nothing, committed only on the agent's word.
//!
//! `pg_restore --single-transaction --file=-` renders the archive as SQL; `psql` applies it
//! inside a transaction the agent opened. Three things keep a half-restored database from
//! ever being committed:
//!
//! - psql is never told to commit by the end of its input: it runs without
//!   `--single-transaction` (which commits at end of file, so a killed agent used to commit
//!   whatever had arrived), and the archive's own closing `COMMIT` is held back and dropped.
//!   The agent writes `COMMIT` itself, only after the whole backup decoded, authenticated and
//!   rendered. Any earlier end of input ends psql's session, and the server rolls back.
//! - A deferred constraint trigger on a temporary table, armed at the start, fails any commit
//!   that does not carry the agent's confirmation (`SET LOCAL deploy_agent.restore`): a
//!   commit from anywhere else (a psql that commits at end of file, an unexpected `COMMIT`
//!   in the stream) rolls the restore back instead. It is temporary and dropped with the
//!   commit, so it leaves nothing in the restored database.
//! - `psql` and `pg_restore` die with the agent (see [`super::tool`]).
//!
//! The prelude empties the database first, inside the same transaction: event triggers,
//! publications, large objects, extensions, every user schema, foreign-data wrappers,
//! user-defined casts and languages, and database-wide default privileges (reset to the
//! built-in defaults), so that afterwards the database holds exactly what the archive holds.

use std::io::{self, Read, Write};
use std::process::{ChildStdin, Stdio};

use super::tool::Tool;
use crate::db::DbError;

/// What psql runs before the archive: open the transaction, arm the commit guard, empty the
/// database.
const PRELUDE: &str = r#"SET client_min_messages = error;
BEGIN;
CREATE FUNCTION pg_temp.deploy_agent_restore_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
BEGIN
  IF pg_catalog.current_setting('deploy_agent.restore', true) IS DISTINCT FROM 'commit' THEN
    RAISE EXCEPTION 'deploy-agent: this restore was not confirmed by the agent (its input ended early); nothing is committed';
  END IF;
  RETURN NULL;
END
$guard$;
CREATE TEMPORARY TABLE deploy_agent_restore_guard (armed boolean) ON COMMIT DROP;
CREATE CONSTRAINT TRIGGER deploy_agent_restore_guard AFTER INSERT ON pg_temp.deploy_agent_restore_guard
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.deploy_agent_restore_guard();
INSERT INTO pg_temp.deploy_agent_restore_guard VALUES (true);
DO $clear$
DECLARE
  r record;
  objs text;
BEGIN
  -- Objects an extension owns go with their extension.
  FOR r IN SELECT e.evtname FROM pg_catalog.pg_event_trigger e
      WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass AND d.objid = e.oid AND d.deptype = 'e') LOOP
    EXECUTE pg_catalog.format('DROP EVENT TRIGGER IF EXISTS %I CASCADE', r.evtname);
  END LOOP;
  FOR r IN SELECT p.pubname FROM pg_catalog.pg_publication p LOOP
    EXECUTE pg_catalog.format('DROP PUBLICATION IF EXISTS %I', r.pubname);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(l.oid) FROM pg_catalog.pg_largeobject_metadata l;
  FOR r IN SELECT x.extname FROM pg_catalog.pg_extension x WHERE x.extname <> 'plpgsql' LOOP
    EXECUTE pg_catalog.format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname);
  END LOOP;
  FOR r IN SELECT n.nspname FROM pg_catalog.pg_namespace n
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%' LOOP
    EXECUTE pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname);
  END LOOP;
  FOR r IN SELECT w.fdwname FROM pg_catalog.pg_foreign_data_wrapper w LOOP
    EXECUTE pg_catalog.format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', r.fdwname);
  END LOOP;
  FOR r IN SELECT c.castsource::pg_catalog.regtype::text AS s, c.casttarget::pg_catalog.regtype::text AS t
      FROM pg_catalog.pg_cast c WHERE c.oid >= 16384 LOOP
    EXECUTE pg_catalog.format('DROP CAST IF EXISTS (%s AS %s) CASCADE', r.s, r.t);
  END LOOP;
  FOR r IN SELECT l.lanname FROM pg_catalog.pg_language l WHERE l.oid >= 16384 AND l.lanname <> 'plpgsql' LOOP
    EXECUTE pg_catalog.format('DROP LANGUAGE IF EXISTS %I CASCADE', r.lanname);
  END LOOP;
  -- Database-wide default privileges back to the built-in defaults (the archive re-applies
  -- its own); those of a schema went with it.
  FOR r IN SELECT d.defaclrole::pg_catalog.regrole::text AS owner, d.defaclobjtype AS kind,
        pg_catalog.string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END, ', ') AS grantees
      FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) a
      WHERE d.defaclnamespace = 0 GROUP BY 1, 2 LOOP
    objs := CASE r.kind WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END;
    EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %s REVOKE ALL ON %s FROM %s', r.owner, objs, r.grantees);
    EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT ALL ON %s TO %s', r.owner, objs, r.owner);
    IF r.kind = 'f' THEN
      EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT EXECUTE ON FUNCTIONS TO PUBLIC', r.owner);
    ELSIF r.kind = 'T' THEN
      EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT USAGE ON TYPES TO PUBLIC', r.owner);
    END IF;
  END LOOP;
  -- `public` as a new database has it (pg_dump records only how it differs from that).
  BEGIN
    CREATE SCHEMA public AUTHORIZATION pg_database_owner;
  EXCEPTION WHEN insufficient_privilege THEN
    CREATE SCHEMA public;
  END;
  COMMENT ON SCHEMA public IS 'standard public schema';
  GRANT USAGE ON SCHEMA public TO PUBLIC;
END
$clear$;
"#;

/// What the agent sends once everything decoded and rendered: the only commit psql sees.
/// Nothing follows it, so psql's success means exactly that the restore committed. The
/// guard's table goes with the commit (`ON COMMIT DROP`); its function, a temporary object
/// no dump or schema snapshot reads, goes with the session.
const CONFIRM: &str = "SET LOCAL deploy_agent.restore = 'commit';\nCOMMIT;\n";

/// How much of pg_restore's output is held back, so its closing `COMMIT` can be dropped.
const HOLD_BACK: usize = 64 << 10;

/// The outcome a caller reports: the restore did not happen, and why.
fn unchanged(id: &str, context: &str, message: impl ToString) -> DbError {
    DbError::Query {
        context: format!(
            "{context} ({id}; the restore was rolled back: the database is unchanged)"
        ),
        message: message.to_string(),
    }
}

/// Restores the plain archive bytes `plain` (a `pg_dump --format=custom` stream) into the
/// database at `url`, replacing everything in it, in one transaction that commits only when
/// the whole archive was read and rendered without error.
pub(super) fn restore(plain: &mut dyn Read, id: &str, url: &str) -> Result<(), DbError> {
    let mut render = Tool::spawn(
        "pg_restore",
        &["--no-owner", "--single-transaction", "--file=-"],
        None,
        Stdio::piped(),
        Stdio::piped(),
    )?;
    let mut apply = Tool::spawn(
        "psql",
        &[
            "-X",
            "-q",
            "--no-password",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ],
        Some(url),
        Stdio::piped(),
        Stdio::null(),
    )?;
    let (Some(mut render_in), Some(render_out), Some(apply_in)) = (
        render.child.stdin.take(),
        render.child.stdout.take(),
        apply.child.stdin.take(),
    ) else {
        let _ = render.kill();
        let _ = apply.kill();
        return Err(DbError::query("restore", "no pipes to pg_restore and psql"));
    };
    // psql's stdin comes back with the held-back tail, never closed by the copy thread: a
    // closed stdin ends psql's session before the agent has confirmed.
    let pump = std::thread::spawn(move || forward(render_out, apply_in));
    let fed = io::copy(plain, &mut render_in);
    drop(render_in);
    let rendered = render.finish()?;
    let pumped = pump
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("copy thread panicked")));
    let ready = match (&fed, &rendered, pumped) {
        (Ok(_), Ok(()), Ok((stdin, tail))) => without_final_commit(&tail).map(|tail| (stdin, tail)),
        _ => None,
    };
    let Some((mut stdin, tail)) = ready else {
        // Not confirmed: psql's session ends and the server rolls everything back.
        let applied = apply.kill()?;
        return Err(first_cause(id, fed, rendered, applied));
    };
    let confirmed = stdin
        .write_all(&tail)
        .and_then(|()| stdin.write_all(CONFIRM.as_bytes()))
        .and_then(|()| stdin.flush());
    drop(stdin);
    let applied = apply.finish()?;
    match (applied, confirmed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(server), _) => Err(unchanged(id, "restore failed", server)),
        (Ok(()), Err(e)) => Err(unchanged(id, "restore failed", e)),
    }
}

/// The error to report when the restore was not confirmed: the server's own words when psql
/// failed by itself (what the others then see is only a broken pipe), else the first failure.
fn first_cause(
    id: &str,
    fed: io::Result<u64>,
    rendered: Result<(), String>,
    applied: Result<(), String>,
) -> DbError {
    if let Err(server) = &applied
        && (server.contains("ERROR") || server.contains("FATAL"))
    {
        return unchanged(id, "restore failed", server);
    }
    if let Err(e) = fed
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return unchanged(id, "reading the backup", e);
    }
    if let Err(errors) = rendered {
        return unchanged(id, "pg_restore could not read the archive", errors);
    }
    match applied {
        Err(server) if !server.is_empty() => unchanged(id, "restore failed", server),
        _ => unchanged(
            id,
            "restore failed",
            "the archive's SQL did not end with its COMMIT, or psql stopped reading",
        ),
    }
}

/// Writes the prelude to `to`, then copies `from` to it, all but the last [`HOLD_BACK`]
/// bytes, which it returns with `to`.
fn forward(mut from: impl Read, mut to: ChildStdin) -> io::Result<(ChildStdin, Vec<u8>)> {
    to.write_all(PRELUDE.as_bytes())?;
    let mut held: Vec<u8> = Vec::with_capacity(2 * HOLD_BACK);
    let mut buf = vec![0u8; HOLD_BACK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        held.extend_from_slice(&buf[..n]);
        if held.len() > HOLD_BACK {
            let send = held.len() - HOLD_BACK;
            to.write_all(&held[..send])?;
            held.drain(..send);
        }
    }
    Ok((to, held))
}

/// The tail of pg_restore's `--single-transaction` output without its closing `COMMIT;`, or
/// `None` if it does not end with one (followed only by comments and `\unrestrict`).
fn without_final_commit(tail: &[u8]) -> Option<Vec<u8>> {
    const COMMIT: &[u8] = b"\nCOMMIT;\n";
    let at = tail.windows(COMMIT.len()).rposition(|w| w == COMMIT)?;
    let rest = &tail[at + COMMIT.len()..];
    let only_trailer = rest.split(|b| *b == b'\n').all(|line| {
        let line = line.trim_ascii();
        line.is_empty() || line.starts_with(b"--") || line.starts_with(b"\\unrestrict ")
    });
    if !only_trailer {
        return None;
    }
    let mut out = tail[..=at].to_vec();
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_archives_closing_commit_is_dropped() {
        let tail = b"COPY t (v) FROM stdin;\nCOMMIT;\n\\.\n\nCOMMIT;\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n";
        let out = without_final_commit(tail).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("COMMIT;").count(), 1, "{text}");
        assert!(text.contains("stdin;\nCOMMIT;\n\\."), "data kept: {text}");
        assert!(text.ends_with("\\unrestrict abc\n\n"), "{text}");
        // Anything but the trailer after the last COMMIT: not the archive's end.
        assert!(without_final_commit(b"x\nCOMMIT;\nCREATE TABLE t ();\n").is_none());
        assert!(without_final_commit(b"x\nCREATE TABLE t ();\n").is_none());
    }
}
