//! The work of the scheduled jobs, also what `backup create`, `backup prune` and
//! `backup restore --test` do: a backup with its off-site copy, retention here and off-site,
//! a timed restore drill of the newest backup, and a check that the newest off-site copy
//! comes back whole.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

use super::Agent;
use super::offsite::{self, OffsiteError};
use super::plugins::{PluginsError, load_backup_store};
use crate::config::{Environment, KeyUse};
use crate::db::DbError;
use crate::db::backup::{self, Drill, Manifest, Pruned};
use crate::runtime::{CallContext, Plugin};
use crate::store::StoreError;

/// Why a maintenance job failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The environment cannot do it (no database, a key that cannot be read).
    #[error("{0}")]
    Setup(String),
    /// The backup engine.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The off-site store.
    #[error(transparent)]
    Offsite(#[from] OffsiteError),
    /// Its plugin would not load.
    #[error(transparent)]
    Plugins(#[from] PluginsError),
    /// The state store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A restore drill ran and did not pass.
    #[error("restore drill of {id} failed: {detail}")]
    DrillFailed {
        /// The backup.
        id: String,
        /// Why.
        detail: String,
    },
}

/// What a prune removed, here and off-site.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Whether it only listed.
    pub dry_run: bool,
    /// Backups deleted here.
    pub deleted: Vec<String>,
    /// Leftovers of interrupted backups removed.
    pub leftovers_removed: Vec<std::path::PathBuf>,
    /// Off-site objects deleted.
    pub offsite_deleted: Vec<String>,
}

fn url(env: &Environment) -> Result<String, MaintenanceError> {
    let db = env.database.as_ref().ok_or_else(|| {
        MaintenanceError::Setup(format!("environment `{}` has no database", env.name))
    })?;
    db.url().map_err(MaintenanceError::Setup)
}

fn settings(
    env: &Environment,
    purpose: KeyUse,
) -> Result<backup::BackupSettings, MaintenanceError> {
    env.backup
        .settings(&env.name, purpose)
        .map_err(MaintenanceError::Setup)
}

/// The environment's off-site store, loaded, when it has one.
pub(crate) fn offsite_store(
    agent: &Agent,
    env: &Environment,
) -> Result<Option<(Plugin, CallContext)>, MaintenanceError> {
    match &env.backup.offsite {
        None => Ok(None),
        Some(name) => Ok(Some((
            load_backup_store(agent, name)?,
            CallContext::new(&env.name),
        ))),
    }
}

/// Takes a backup and copies it off-site (when configured); the copy's key with it.
pub async fn backup(
    agent: &Agent,
    env: &Environment,
    who: &str,
    why: &str,
) -> Result<(Manifest, Option<String>), MaintenanceError> {
    let m = backup::create(
        &url(env)?,
        &settings(env, KeyUse::Write)?,
        who,
        why,
        Arc::new(AtomicU64::new(0)),
    )
    .await?;
    let copied = match offsite_store(agent, env)? {
        Some((store, ctx)) => Some(offsite::upload(&store, &ctx, &env.backup.dir, &m).await?),
        None => None,
    };
    Ok((m, copied))
}

/// Applies the retention policy here and to the off-site copies; backups a recorded release
/// depends on are kept.
pub async fn prune(
    agent: &Agent,
    env: &Environment,
    dry_run: bool,
) -> Result<PruneReport, MaintenanceError> {
    let protected: BTreeSet<String> = agent
        .store
        .protected_backups(&env.name)
        .await?
        .into_iter()
        .collect();
    let Pruned { deleted, leftovers } =
        backup::prune(&env.backup.dir, env.backup.retention, &protected, dry_run)?;
    let mut offsite_deleted = Vec::new();
    if let Some((store, ctx)) = offsite_store(agent, env)? {
        let (kept, _) = backup::list(&env.backup.dir)?;
        let keep: BTreeSet<String> = kept
            .into_iter()
            .map(|m| m.id)
            .filter(|id| !deleted.contains(id))
            .collect();
        offsite_deleted = offsite::prune(&store, &ctx, &env.name, &keep, dry_run).await?;
    }
    Ok(PruneReport {
        dry_run,
        deleted,
        leftovers_removed: leftovers,
        offsite_deleted,
    })
}

/// The newest backup here.
fn newest(env: &Environment) -> Result<Manifest, MaintenanceError> {
    let (all, _) = backup::list(&env.backup.dir)?;
    all.into_iter().next().ok_or_else(|| {
        MaintenanceError::Setup(format!(
            "environment `{}` has no backup in {} to check",
            env.name,
            env.backup.dir.display()
        ))
    })
}

/// Restores the newest backup into a scratch database, checks it, and records the timed
/// result in its manifest. A drill that runs and fails is an error too (after recording).
pub async fn drill(env: &Environment) -> Result<(Manifest, Drill), MaintenanceError> {
    let m = newest(env)?;
    let s = settings(env, KeyUse::Read)?;
    let (_, d) = backup::drill(&m, &env.backup.dir, s.key.as_ref(), &url(env)?).await?;
    if !d.passed {
        return Err(MaintenanceError::DrillFailed {
            id: m.id,
            detail: d.detail,
        });
    }
    Ok((m, d))
}

/// Fetches the newest backup's off-site copy into a scratch directory and decodes it whole
/// (decrypted, decompressed, its checksum compared): the copy is proven readable.
pub async fn offsite_verify(
    agent: &Agent,
    env: &Environment,
) -> Result<backup::Verified, MaintenanceError> {
    let (store, ctx) = offsite_store(agent, env)?.ok_or_else(|| {
        MaintenanceError::Setup(format!(
            "environment `{}` keeps no off-site copies",
            env.name
        ))
    })?;
    let m = newest(env)?;
    let scratch = tempfile::tempdir()
        .map_err(|e| MaintenanceError::Setup(format!("cannot make a scratch directory: {e}")))?;
    offsite::fetch(&store, &ctx, &env.name, &m.id, scratch.path()).await?;
    let key = settings(env, KeyUse::Read)?.key;
    let fetched = backup::find(scratch.path(), &m.id)?;
    let dir = scratch.path().to_path_buf();
    let verified =
        tokio::task::spawn_blocking(move || backup::verify(&fetched, &dir, key.as_ref()))
            .await
            .map_err(|e| MaintenanceError::Setup(format!("verifying: {e}")))??;
    Ok(verified)
}
