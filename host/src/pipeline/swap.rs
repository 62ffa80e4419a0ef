//! A database rollback by swap: the backup is restored into a new database beside the live
//! one (which keeps serving), then the databases are switched in one short step and the app
//! right after, so old code meets the new schema (or new code the old) only for that step.
//! The database from before is kept under a dated name: it is the safety snapshot, and no
//! dump is taken.
//!
//! Each phase is recorded on the rollback before it starts ([`DatabaseSwap`]), so `recover`
//! finishes an interrupted swap ([`carry`] from where it stopped) or undoes it ([`undo`]),
//! reading the server to see which side of the renames a crash fell on.

use std::time::Instant;

use serde::Serialize;

use super::{StageError, failpoint, progress, switch_back};
use crate::config::{Environment, RollbackRestore};
use crate::db::backup::{self, BackupSettings};
use crate::db::swap::{self, Names, Standing};
use crate::runtime::{CallContext, Plugin};
use crate::store::{DatabaseSwap, ReleaseStatus, RollbackRecord, Store, SwapPhase};

/// How a rollback puts the database back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Restore beside the live database, then switch.
    Swap,
    /// A safety backup, then a restore over the live database in one transaction.
    InPlace,
}

/// The method a rollback uses, and why when it is not the configured one.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DbSwitch {
    /// How.
    pub method: Method,
    /// Why a swap is not used (configured, or not possible here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Decides how the database at `url` would be put back.
pub(crate) async fn method(env: &Environment, url: &str) -> DbSwitch {
    let configured = env
        .database
        .as_ref()
        .map_or(RollbackRestore::Swap, |d| d.rollback);
    if configured == RollbackRestore::InPlace {
        return DbSwitch {
            method: Method::InPlace,
            why: Some("configured: `rollback = \"in-place\"`".into()),
        };
    }
    match swap::probe(url).await {
        Ok(()) => DbSwitch {
            method: Method::Swap,
            why: None,
        },
        Err(why) => DbSwitch {
            method: Method::InPlace,
            why: Some(format!("a swap is not possible here: {why}")),
        },
    }
}

/// The names a swap of `url` by rollback `id` works with, as recorded.
pub(crate) fn start(url: &str, id: &str) -> Result<DatabaseSwap, StageError> {
    let n = swap::names(url, id)?;
    Ok(DatabaseSwap {
        live: n.live,
        staged: n.staged,
        aside: n.aside,
        phase: SwapPhase::Staging,
        window_us: None,
    })
}

fn names(s: &DatabaseSwap) -> Names {
    Names {
        live: s.live.clone(),
        staged: s.staged.clone(),
        aside: s.aside.clone(),
    }
}

/// The app half of the switch: the release to make live, and what becomes of the one it
/// leaves.
pub(crate) struct AppSwitch<'a> {
    /// The environment's target.
    pub target: &'a Plugin,
    /// The call's context.
    pub ctx: CallContext,
    /// The release to make live.
    pub to: String,
    /// The release it leaves, and its status afterwards.
    pub left: Option<(String, ReleaseStatus)>,
}

async fn save_phase(
    store: &Store,
    record: &mut RollbackRecord,
    phase: SwapPhase,
) -> Result<(), StageError> {
    if let Some(s) = record.database_swap.as_mut() {
        s.phase = phase;
    }
    store.save_rollback(record).await?;
    Ok(())
}

/// Carries the swap recorded on `record` from its phase to the end: restore beside, switch
/// the databases, then the app (`app`). Fails leaving the live database as it was before
/// (anything staged dropped), or, when the app switch fails, the databases switched back.
pub(crate) async fn carry(
    env: &Environment,
    store: &Store,
    record: &mut RollbackRecord,
    url: &str,
    bs: &BackupSettings,
    app: Option<AppSwitch<'_>>,
    step: &mut (dyn FnMut(&'static str, Instant, String) + Send),
) -> Result<(), StageError> {
    let Some(recorded) = record.database_swap.clone() else {
        return Err(StageError::Config("no database swap recorded".into()));
    };
    let n = names(&recorded);
    let mut phase = recorded.phase;
    if phase == SwapPhase::Switching {
        // A crash fell somewhere in the switch: the server says on which side.
        phase = match swap::standing(url, &n).await? {
            Standing::Switched => SwapPhase::Switched,
            Standing::Staged => SwapPhase::Staged,
            Standing::NotStaged => SwapPhase::Staging,
        };
    }
    if phase == SwapPhase::Staging {
        let id = record
            .backup_id
            .clone()
            .ok_or_else(|| StageError::Config("no backup to restore".into()))?;
        let at = Instant::now();
        let m = backup::find(&bs.dir, &id)?;
        progress::set(
            "rollback",
            format!(
                "restoring {id} into `{}` beside the live database",
                n.staged
            ),
        );
        failpoint::hit("before", "restore");
        let staged = backup::restore_beside(&m, &bs.dir, bs.key.as_ref(), url, &n).await?;
        phase = SwapPhase::Staged;
        save_phase(store, record, phase).await?;
        step(
            "restore",
            at,
            format!(
                "{id} restored into `{}` beside the live database (decoded in {:.1} s, pg_restore with {} job(s) {:.1} s, checked in {:.1} s); its schema fingerprint is the backup's",
                n.staged,
                staged.decode.as_secs_f64(),
                staged.jobs,
                staged.restore.as_secs_f64(),
                staged.check.as_secs_f64()
            ),
        );
    }
    let mut switched_at = None;
    if phase == SwapPhase::Staged {
        save_phase(store, record, SwapPhase::Switching).await?;
        progress::set("rollback", format!("switching `{}`", n.live));
        let at = Instant::now();
        if let Err(e) = swap::switch(url, &n, || failpoint::hit("during", "switch")).await {
            save_phase(store, record, SwapPhase::Staged).await?;
            return Err(e.into());
        }
        save_phase(store, record, SwapPhase::Switched).await?;
        failpoint::hit("after", "switch");
        switched_at = Some(at);
    }
    // Switched: the old database is aside, and takes connections again (the switch closed
    // it). Not a reason to stop: the rollback goes on, and `recover` tries again.
    if let Err(e) = swap::reopen_database(url, &n.aside).await {
        tracing::warn!(error = %e, database = %n.aside, "the database kept aside still refuses connections");
    }
    let mut detail = format!(
        "`{}` is the restored database; the one from before is kept as `{}` (the safety snapshot)",
        n.live, n.aside
    );
    let with_app = app.is_some();
    if let Some(app) = app {
        let live = switch_back(
            store,
            app.target,
            &app.ctx,
            env,
            &app.to,
            app.left.as_ref().map(|(id, s)| (id.as_str(), *s)),
        )
        .await;
        let live = match live {
            Ok(live) => live,
            Err(e) => {
                // The app did not follow: put the databases back as they were, so the live
                // release keeps the schema it runs on.
                swap::unswitch(url, &n).await?;
                swap::discard(url, &n).await?;
                save_phase(store, record, SwapPhase::Staging).await?;
                return Err(e);
            }
        };
        detail.push_str(&format!("; {live} is live"));
    }
    if let Some(at) = switched_at {
        let window = at.elapsed();
        if let Some(s) = record.database_swap.as_mut() {
            s.window_us = Some(window.as_micros() as u64);
        }
        store.save_rollback(record).await?;
        step(
            "switch",
            at,
            format!(
                "{detail} ({} within {:.1} ms)",
                if with_app {
                    "database and app switched"
                } else {
                    "database switched"
                },
                window.as_secs_f64() * 1e3
            ),
        );
    } else {
        step("switch", Instant::now(), detail);
    }
    Ok(())
}

/// Undoes the swap recorded on `record` as far as it got: the database from before live
/// again under its name, anything staged dropped.
pub(crate) async fn undo(url: &str, record: &RollbackRecord) -> Result<String, StageError> {
    let Some(recorded) = &record.database_swap else {
        return Ok("no database swap recorded".into());
    };
    let n = names(recorded);
    Ok(match swap::standing(url, &n).await? {
        Standing::Switched => {
            swap::unswitch(url, &n).await?;
            swap::discard(url, &n).await?;
            format!(
                "the database from before is `{}` again; the restored one was dropped",
                n.live
            )
        }
        Standing::Staged => {
            swap::discard(url, &n).await?;
            "the live database was not touched; the staged restore was dropped".into()
        }
        Standing::NotStaged => {
            swap::reopen_database(url, &n.live).await?;
            "the live database was not touched".into()
        }
    })
}

/// Drops what a failed (not interrupted) swap staged, so only the live database remains.
pub(crate) async fn clean_up(url: &str, record: &RollbackRecord) {
    if let Some(recorded) = &record.database_swap
        && recorded.phase != SwapPhase::Switched
        && let Err(e) = swap::discard(url, &names(recorded)).await
    {
        tracing::warn!(error = %e, "could not drop the staged database");
    }
}
