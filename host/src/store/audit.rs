//! The append-only audit log: who did what, when, where and why, hash-chained.
//!
//! Entry `n` stores `hash_n = sha256(hash_{n-1} ‖ canonical JSON of entry n)`, with 64 zeros
//! before the first. Editing an entry breaks its own hash; deleting one breaks the next
//! entry's link and leaves a gap in the sequence. Truncating the newest entries leaves a
//! consistent shorter chain, which only an outside copy of the head can reveal: `audit
//! verify` prints the head so it can be recorded elsewhere (and `--expect-head` checks it).

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::lease::hostname;
use super::{Row, Store, StoreError, decode, now_ms};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What to record.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    /// Who (an operator's name, `agent` for what the agent does on its own).
    pub actor: String,
    /// What: `deploy.started`, `deploy.succeeded`, `migrate.applied`...
    pub action: String,
    /// Where.
    pub environment: Option<String>,
    /// What it acted on: a deployment, release or backup id.
    pub subject: Option<String>,
    /// Why, as the operator said.
    pub why: Option<String>,
    /// More, as text (never a secret).
    pub detail: Option<String>,
}

/// An entry as stored.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Where (environment).
    pub environment: Option<String>,
    /// On what.
    pub subject: Option<String>,
    /// The deploy host.
    pub host: String,
    /// Why.
    pub why: Option<String>,
    /// More.
    pub detail: Option<String>,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// What `audit verify` found.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: usize,
    /// The newest entry's hash (record it elsewhere to detect truncation).
    pub head: String,
    /// Problems, oldest first; empty when the chain is intact.
    pub problems: Vec<String>,
}

impl AuditReport {
    /// Adds a problem when the head is not the one recorded earlier (entries removed from
    /// the end, or the log replaced).
    pub fn expect_head(&mut self, expected: Option<&str>) {
        if let Some(head) = expected
            && head != self.head
        {
            self.problems.push(format!(
                "the head is {}, not the expected {head}: entries were removed from the end, or the log was replaced",
                self.head
            ));
        }
    }
}

impl AuditRecord {
    fn compute_hash(&self) -> String {
        #[derive(Serialize)]
        struct Canonical<'a> {
            seq: i64,
            at: i64,
            actor: &'a str,
            action: &'a str,
            environment: Option<&'a str>,
            subject: Option<&'a str>,
            host: &'a str,
            why: Option<&'a str>,
            detail: Option<&'a str>,
        }
        let body = serde_json::to_string(&Canonical {
            seq: self.seq,
            at: self.at,
            actor: &self.actor,
            action: &self.action,
            environment: self.environment.as_deref(),
            subject: self.subject.as_deref(),
            host: &self.host,
            why: self.why.as_deref(),
            detail: self.detail.as_deref(),
        })
        .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(body.as_bytes());
        hex::encode(h.finalize())
    }
}

impl Store {
    /// Appends an entry. Concurrent writers (the runs of one daemon, several agents on one
    /// PostgreSQL store) cannot fork the chain: the head is read and the entry written in one
    /// transaction that holds the table's write lock (`BEGIN IMMEDIATE` on SQLite, `LOCK
    /// TABLE ... IN EXCLUSIVE MODE` on PostgreSQL, which still lets readers in), so appenders
    /// queue instead of racing; `seq` being the primary key refuses a fork regardless.
    pub async fn audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        let lock = match self.pool.backend() {
            crate::db::Backend::Postgres => Some("LOCK TABLE audit IN EXCLUSIVE MODE"),
            crate::db::Backend::Sqlite => None,
        };
        let mut conn = self.conn().await?;
        super::transaction(&mut conn, async |conn| {
            if let Some(lock) = lock {
                conn.exec(lock).await?;
            }
            let head = conn
                .fetch("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])
                .await?;
            let (seq, prev_hash) = match head.into_iter().next() {
                Some(row) => {
                    let mut r = Row { row, at: 0 };
                    (r.i().map_err(decode)? + 1, r.s().map_err(decode)?)
                }
                None => (1, GENESIS.to_string()),
            };
            let mut record = AuditRecord {
                seq,
                at: now_ms(),
                actor: entry.actor.clone(),
                action: entry.action.clone(),
                environment: entry.environment.clone(),
                subject: entry.subject.clone(),
                host: hostname(),
                why: entry.why.clone(),
                detail: entry.detail.clone(),
                prev_hash,
                hash: String::new(),
            };
            record.hash = record.compute_hash();
            conn.execute(
                "INSERT INTO audit (seq, at, actor, action, environment, subject, host, why, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    record.seq.into(),
                    record.at.into(),
                    (&record.actor).into(),
                    (&record.action).into(),
                    record.environment.as_deref().into(),
                    record.subject.as_deref().into(),
                    (&record.host).into(),
                    record.why.as_deref().into(),
                    record.detail.as_deref().into(),
                    (&record.prev_hash).into(),
                    (&record.hash).into(),
                ],
            )
            .await?;
            Ok(record)
        })
        .await
        .map_err(|e| StoreError::Query(format!("cannot append to the audit log: {e}")))
    }

    /// Entries, oldest first; filtered by environment when given; the newest `limit`.
    pub async fn audit_entries(
        &self,
        environment: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM audit WHERE ($1 IS NULL OR environment = $1) ORDER BY seq DESC LIMIT $2"),
                &[environment.into(), limit.into()],
            )
            .await?;
        let mut out = rows
            .into_iter()
            .map(record)
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain.
    pub async fn audit_verify(&self) -> Result<AuditReport, StoreError> {
        let rows = self
            .rows(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"), &[])
            .await?;
        let mut problems = Vec::new();
        let mut prev = GENESIS.to_string();
        let mut expected_seq = 1;
        let entries = rows.len();
        for (n, r) in rows.into_iter().map(record).enumerate() {
            // An entry that cannot even be read (a NULL written over a column) is a break too.
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("entry {} cannot be read: {e}", n + 1));
                    continue;
                }
            };
            if r.seq != expected_seq {
                problems.push(format!(
                    "entry {} is missing (the chain jumps from {} to {})",
                    expected_seq,
                    expected_seq - 1,
                    r.seq
                ));
            }
            if r.prev_hash != prev {
                problems.push(format!(
                    "entry {} does not follow the entry before it (deleted or altered)",
                    r.seq
                ));
            }
            if r.compute_hash() != r.hash {
                problems.push(format!(
                    "entry {} was altered: its content does not match its hash",
                    r.seq
                ));
            }
            prev = r.hash;
            expected_seq = r.seq + 1;
        }
        Ok(AuditReport {
            entries,
            head: prev,
            problems,
        })
    }
}

const COLUMNS: &str =
    "seq, at, actor, action, environment, subject, host, why, detail, prev_hash, hash";

fn record(mut r: Row) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.i()?,
        at: r.i()?,
        actor: r.s()?,
        action: r.s()?,
        environment: r.o()?,
        subject: r.o()?,
        host: r.s()?,
        why: r.o()?,
        detail: r.o()?,
        prev_hash: r.s()?,
        hash: r.s()?,
    })
}
