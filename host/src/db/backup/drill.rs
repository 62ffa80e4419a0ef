//! Restore drills and the recovery objectives they prove.
//!
//! A drill is `restore --test` timed: the backup restored into a scratch database, the
//! post-checks run, the fingerprint compared, the scratch dropped. Its result is kept in the
//! backup's manifest (`drill`), so "the newest backup proven by a restore" and "how long a
//! restore takes" are read from the backups themselves: the recovery point is the age of the
//! newest backup whose last drill passed; the recovery time is how long that drill took.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Key, Manifest, RestoreTest, restore_test, write_manifest};
use crate::db::DbError;

/// The last restore drill of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drill {
    /// When it ended, ms since the epoch.
    pub at_ms: i64,
    /// How long the restore and its checks took: the measured recovery time.
    pub seconds: f64,
    /// Whether the restored copy matched the manifest's fingerprint and passed its checks.
    pub passed: bool,
    /// What failed, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Runs a drill of `manifest`'s backup against the server or file at `url` and records its
/// result in the manifest (a failed restore is recorded too, as a failed drill).
pub async fn drill(
    manifest: &Manifest,
    dir: &Path,
    key: Option<&Key>,
    url: &str,
) -> Result<(Option<RestoreTest>, Drill), DbError> {
    let began = Instant::now();
    let tested = restore_test(manifest, dir, key, url).await;
    let seconds = began.elapsed().as_secs_f64();
    let (test, passed, detail) = match tested {
        Ok(t) => {
            let failed: Vec<String> = t
                .checks
                .iter()
                .filter(|c| c.status == "error")
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            let mut why = failed;
            if !t.fingerprint_matches {
                why.insert(0, "the restored schema differs from the manifest's".into());
            }
            (Some(t), why.is_empty(), why.join("; "))
        }
        Err(e) => (None, false, format!("the restore failed: {e}")),
    };
    let result = Drill {
        at_ms: crate::store::now_ms(),
        seconds,
        passed,
        detail,
    };
    let mut recorded = manifest.clone();
    recorded.drill = Some(result.clone());
    write_manifest(dir, &recorded)?;
    Ok((test, result))
}

/// Where an environment's backups stand against its objectives.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Standing {
    /// The newest backup, and its age in seconds.
    pub newest: Option<(String, u64)>,
    /// The newest backup whose last drill passed, and its age in seconds.
    pub verified: Option<(String, u64)>,
    /// The newest drill of any backup: its backup, seconds taken, and whether it passed.
    pub last_drill: Option<(String, f64, bool)>,
    /// The recovery point objective in seconds, and whether it is met.
    pub rpo: Option<(u64, bool)>,
    /// The recovery time objective in seconds, and whether it is met.
    pub rto: Option<(u64, bool)>,
}

fn started_ms(m: &Manifest) -> i64 {
    m.started_ms
        .or_else(|| crate::time::parse_rfc3339_ms(&m.started_at))
        .unwrap_or_default()
}

/// `manifests` (any order) against the objectives, at `now_ms`. An objective with nothing
/// to measure (no verified backup, no drill) is not met.
pub fn standing(
    manifests: &[Manifest],
    rpo: Option<Duration>,
    rto: Option<Duration>,
    now_ms: i64,
) -> Standing {
    let age = |m: &Manifest| ((now_ms - started_ms(m)).max(0) / 1000) as u64;
    let newest = manifests.iter().max_by_key(|m| started_ms(m));
    let verified = manifests
        .iter()
        .filter(|m| m.drill.as_ref().is_some_and(|d| d.passed))
        .max_by_key(|m| started_ms(m));
    let last_drill = manifests
        .iter()
        .filter_map(|m| m.drill.as_ref().map(|d| (m, d)))
        .max_by_key(|(_, d)| d.at_ms);
    Standing {
        newest: newest.map(|m| (m.id.clone(), age(m))),
        verified: verified.map(|m| (m.id.clone(), age(m))),
        last_drill: last_drill.map(|(m, d)| (m.id.clone(), d.seconds, d.passed)),
        rpo: rpo.map(|r| {
            let met = verified.is_some_and(|m| age(m) <= r.as_secs());
            (r.as_secs(), met)
        }),
        rto: rto.map(|r| {
            let met = last_drill.is_some_and(|(_, d)| d.passed && d.seconds <= r.as_secs_f64());
            (r.as_secs(), met)
        }),
    }
}
