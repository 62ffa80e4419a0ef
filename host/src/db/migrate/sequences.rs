//! Keeping a dry run from consuming sequences.
//!
//! `nextval` is not transactional: a dry run that inserts into a `serial` or identity column
//! (or calls `nextval`) would advance the real sequence even though it rolls back. Inside the
//! dry run's transaction, before any migration runs, every sequence is restarted at exactly
//! the value it would hand out next. In PostgreSQL (10 and later) `ALTER SEQUENCE ... RESTART`
//! is transactional: it gives the sequence new storage for this transaction, so the dry run
//! draws from a copy that the rollback throws away and the real sequence is never touched.
//! The `ALTER` also makes other sessions' `nextval` on that sequence wait until the dry run
//! ends (as its other locks do), so nothing else can move it meanwhile either. After the
//! rollback every sequence is read again and compared, and the report says what (if
//! anything) moved.

use serde::Serialize;

use crate::db::DbError;
use crate::db::conn::Conn;

/// One sequence's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    name: String,
    last_value: i64,
    is_called: bool,
}

/// What a dry run did to sequences, for its report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SequenceReport {
    /// Sequences the dry run drew from copies of.
    pub isolated: usize,
    /// Whether every sequence is as it was before the dry run.
    pub unchanged: bool,
    /// Those that are not: `name: before -> after`.
    pub moved: Vec<String>,
    /// Why some could not be isolated, if so.
    pub note: Option<String>,
}

/// A sequence with the bounds a restart must respect.
struct Sequence {
    state: State,
    increment: i64,
    min: i64,
    max: i64,
}

/// Reads every user sequence's state and bounds.
async fn read(conn: &mut Conn) -> Result<Vec<Sequence>, DbError> {
    let q = |e| DbError::query("reading sequences", e);
    let list = conn
        .rows(
            "SELECT c.oid::regclass::text, s.seqincrement::text, s.seqmin::text, s.seqmax::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_sequence s ON s.seqrelid = c.oid \
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1",
        )
        .await
        .map_err(q)?;
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let text = |row: &[Option<String>], i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let number = |row: &[Option<String>], i| text(row, i).parse::<i64>().unwrap_or(0);
    // A sequence's state is only in the sequence itself: one query over all of them, each
    // row carrying its name (UNION ALL promises no order, so rows are matched by name).
    let union = list
        .iter()
        .map(|row| {
            let name = text(row, 0);
            format!(
                "SELECT {}, last_value::text, is_called::text FROM {name}",
                crate::db::conn::lit(&name)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let states: std::collections::HashMap<String, State> = conn
        .rows(&union)
        .await
        .map_err(q)?
        .iter()
        .map(|row| {
            let state = State {
                name: text(row, 0),
                last_value: number(row, 1),
                is_called: text(row, 2) == "true",
            };
            (state.name.clone(), state)
        })
        .collect();
    Ok(list
        .iter()
        .filter_map(|meta| {
            Some(Sequence {
                state: states.get(&text(meta, 0))?.clone(),
                increment: number(meta, 1),
                min: number(meta, 2),
                max: number(meta, 3),
            })
        })
        .collect())
}

/// Inside the dry run's open transaction: restarts every sequence on a transaction-local
/// copy at the value it would hand out next. Returns the states before and the report so
/// far. A sequence that cannot be restarted in time (another session is mid-transaction
/// with it) is left alone, and the report says so.
pub(super) async fn isolate(conn: &mut Conn) -> Result<(Vec<State>, SequenceReport), DbError> {
    let all = read(conn).await?;
    let mut report = SequenceReport::default();
    let mut skipped = Vec::new();
    for Sequence {
        state,
        increment,
        min,
        max,
    } in &all
    {
        let next = if state.is_called {
            state.last_value.checked_add(*increment)
        } else {
            Some(state.last_value)
        };
        let Some(next) = next.filter(|n| (*min..=*max).contains(n)) else {
            skipped.push(format!("{} (exhausted)", state.name));
            continue;
        };
        let restarted = conn
            .exec(&format!(
                "SAVEPOINT deploy_agent_seq; ALTER SEQUENCE {} RESTART WITH {next}; RELEASE SAVEPOINT deploy_agent_seq",
                state.name
            ))
            .await;
        match restarted {
            Ok(_) => report.isolated += 1,
            Err(e) => {
                conn.exec(
                    "ROLLBACK TO SAVEPOINT deploy_agent_seq; RELEASE SAVEPOINT deploy_agent_seq",
                )
                .await
                .map_err(|e| DbError::query("isolating sequences", e))?;
                skipped.push(format!("{} ({})", state.name, super::db_message(&e)));
            }
        }
    }
    if !skipped.is_empty() {
        report.note = Some(format!(
            "not isolated, so the dry run may advance them: {}",
            skipped.join(", ")
        ));
    }
    Ok((all.into_iter().map(|s| s.state).collect(), report))
}

/// After the rollback: compares every sequence with its state before the dry run.
pub(super) async fn check(
    conn: &mut Conn,
    before: &[State],
    mut report: SequenceReport,
) -> Result<SequenceReport, DbError> {
    let now: Vec<State> = read(conn).await?.into_iter().map(|s| s.state).collect();
    for b in before {
        match now.iter().find(|n| n.name == b.name) {
            Some(n) if n == b => {}
            Some(n) => report
                .moved
                .push(format!("{}: {} -> {}", b.name, show(b), show(n))),
            None => report.moved.push(format!("{}: gone", b.name)),
        }
    }
    report.unchanged = report.moved.is_empty();
    Ok(report)
}

fn show(s: &State) -> String {
    if s.is_called {
        format!("last {}", s.last_value)
    } else {
        format!("next {}", s.last_value)
    }
}
