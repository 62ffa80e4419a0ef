//! Backups of the agent's own state (`deploy-agent state backup` / `state restore`): the
//! state store dumped by the backup engine (SQLite `VACUUM INTO`, PostgreSQL `pg_dump`),
//! encrypted, with a sealed sidecar (`<id>.meta`) holding the audit chain's head at the dump
//! and agent.toml (references only); kept in `[agent.state_backup] dir` and off-site under
//! `agent.state/` (a name no environment can have).
//!
//! ```text
//! backup:   audit head → dump → audit head again (the same, or dump again: the recorded
//!           head is exactly the dump's) → sidecar sealed → off-site copy → keep_last
//! restore:  the backup here, else fetched from off-site → restored over the (fresh) state
//!           store → the chain verified against the recorded head → audited
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use super::Agent;
use super::offsite::{self, OffsiteError};
use crate::config::{Config, StateBackupConfig};
use crate::db::DbError;
use crate::db::backup::{self, Key, Manifest, Retention, crypt};
use crate::runtime::{CallContext, Plugin};
use crate::store::{AuditEntry, AuditReport, Store, StoreError};

/// Where state backups live off-site, and the "environment" their encryption is bound to.
pub const PREFIX: &str = "agent.state";

/// Why a state backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum StateBackupError {
    /// Not configured, no key, nothing to restore, a store that is not fresh.
    #[error("{0}")]
    Setup(String),
    /// The backup engine.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The state store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The off-site store.
    #[error(transparent)]
    Offsite(#[from] OffsiteError),
    /// A local file.
    #[error("{what}: {source}")]
    Io {
        /// Doing what.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StateBackupError {
    let what = what.into();
    move |source| StateBackupError::Io { what, source }
}

/// The sealed sidecar of a state backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// The backup.
    pub id: String,
    /// The agent that took it.
    pub host: String,
    /// Audit entries in the dump.
    pub audit_entries: usize,
    /// The newest entry's hash in the dump.
    pub audit_head: String,
    /// The state store's schema version.
    pub schema_version: Option<i64>,
    /// agent.toml's file name.
    pub config_file: String,
    /// agent.toml as it was, clear-text secret values redacted.
    pub config: String,
}

/// A state backup taken.
#[derive(Debug, Clone, Serialize)]
pub struct Taken {
    /// Its id.
    pub id: String,
    /// Audit entries it holds.
    pub audit_entries: usize,
    /// The chain's head it holds.
    pub audit_head: String,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// The off-site key of its copy, when one was made.
    pub offsite: Option<String>,
    /// Older state backups removed (keep_last).
    pub pruned: Vec<String>,
}

/// What a restore found.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The backup restored.
    pub id: String,
    /// Whether it came from off-site.
    pub fetched: bool,
    /// The restored chain, verified against the recorded head (problems empty: intact).
    pub audit: AuditReport,
    /// The head the backup recorded.
    pub recorded_head: String,
    /// Where the backed-up agent.toml was written when it differs from the one in use.
    pub config_written: Option<PathBuf>,
}

fn settings(cfg: &StateBackupConfig, key: Key) -> backup::BackupSettings {
    backup::BackupSettings {
        environment: PREFIX.into(),
        dir: cfg.dir.clone(),
        key: Some(key),
        zstd_level: crate::config::DEFAULT_ZSTD_LEVEL,
        zstd_workers: 0,
        retention: Retention {
            keep_last: cfg.keep_last,
            keep_daily: 0,
            keep_weekly: 0,
        },
    }
}

fn configured(config: &Config) -> Result<(&StateBackupConfig, Key), StateBackupError> {
    let cfg = config.state_backup.as_ref().ok_or_else(|| {
        StateBackupError::Setup(format!(
            "no [agent.state_backup] in {}: add one with a `key` (and an `offsite` store) to back up the agent's state",
            config.path.display()
        ))
    })?;
    let key = cfg.read_key().map_err(StateBackupError::Setup)?;
    Ok((cfg, key))
}

/// The state store's URL.
fn state_url(config: &Config) -> Result<String, StateBackupError> {
    match &config.state_url {
        Some(u) => u.resolve().map_err(StateBackupError::Setup),
        None => Ok(format!(
            "sqlite:{}",
            config.state_dir.join("state.db").display()
        )),
    }
}

fn identity(id: &str) -> crypt::Identity {
    crypt::Identity {
        id: format!("{id}.meta"),
        environment: PREFIX.into(),
    }
}

fn seal(meta: &Meta, key: &Key, path: &Path) -> Result<(), StateBackupError> {
    let json = serde_json::to_vec(meta).map_err(|e| StateBackupError::Setup(e.to_string()))?;
    let tmp = path.with_extension("meta.partial");
    let file = std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
    let mut w = crypt::EncryptWriter::new(file, key, &identity(&meta.id))
        .map_err(io("sealing the sidecar"))?;
    w.write_all(&json).map_err(io("sealing the sidecar"))?;
    let file = w.finish().map_err(io("sealing the sidecar"))?;
    file.sync_all().map_err(io("sealing the sidecar"))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

fn unseal(id: &str, key: &Key, path: &Path) -> Result<Meta, StateBackupError> {
    let file = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut r = crypt::DecryptReader::new(file, key, &identity(id)).map_err(io(format!(
        "opening {} (is it the right key?)",
        path.display()
    )))?;
    let mut json = Vec::new();
    r.read_to_end(&mut json).map_err(io(format!(
        "opening {} (is it the right key?)",
        path.display()
    )))?;
    serde_json::from_slice(&json).map_err(|e| {
        StateBackupError::Setup(format!("{}: not a state backup: {e}", path.display()))
    })
}

fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.meta"))
}

fn offsite_store(
    config: &Config,
    cfg: &StateBackupConfig,
    agent: Option<&Agent>,
) -> Result<Option<(Plugin, CallContext)>, StateBackupError> {
    let Some(name) = &cfg.offsite else {
        return Ok(None);
    };
    let plugin = match agent {
        Some(a) => super::plugins::load_backup_store(a, name)
            .map_err(|e| StateBackupError::Setup(e.to_string()))?,
        None => {
            let runtime = crate::runtime::Runtime::new(config.cache_dir())
                .map_err(|e| StateBackupError::Setup(e.to_string()))?;
            super::load_plugin(config, &runtime, name, None)
                .map_err(|e| StateBackupError::Setup(e.to_string()))?
        }
    };
    Ok(Some((plugin, CallContext::new(PREFIX))))
}

/// Takes a state backup (and its off-site copy), then applies `keep_last`.
pub async fn backup(agent: &Agent, who: &str) -> Result<Taken, StateBackupError> {
    let config = &agent.config;
    let (cfg, key) = configured(config)?;
    let url = state_url(config)?;
    let s = settings(cfg, key.clone());
    // The recorded head is the dump's: read before and after; an entry written meanwhile
    // means dumping again.
    let mut taken = None;
    for _ in 0..3 {
        let before = agent.store.audit_verify().await?;
        let m = backup::create(&url, &s, who, "state backup", Arc::new(AtomicU64::new(0))).await?;
        let after = agent.store.audit_verify().await?;
        if before.entries == after.entries && before.head == after.head {
            taken = Some((m, before));
            break;
        }
        for ext in ["backup", "json"] {
            let _ = std::fs::remove_file(cfg.dir.join(format!("{}.{ext}", m.id)));
        }
    }
    let (m, audit) = taken.ok_or_else(|| {
        StateBackupError::Setup(
            "the audit log kept changing during three dumps; try again when the agent is quieter"
                .into(),
        )
    })?;
    let meta = Meta {
        id: m.id.clone(),
        host: crate::store::hostname(),
        audit_entries: audit.entries,
        audit_head: audit.head.clone(),
        schema_version: agent.store.schema_version().await?,
        config_file: config
            .path
            .file_name()
            .map_or("agent.toml".into(), |n| n.to_string_lossy().into_owned()),
        config: crate::config::redact_for_backup(
            &std::fs::read_to_string(&config.path)
                .map_err(io(format!("reading {}", config.path.display())))?,
        ),
    };
    let sidecar = meta_path(&cfg.dir, &m.id);
    seal(&meta, &key, &sidecar)?;
    let mut copied = None;
    let store = offsite_store(config, cfg, Some(agent))?;
    if let Some((plugin, ctx)) = &store {
        copied = Some(offsite::upload(plugin, ctx, &cfg.dir, &m).await?);
        let file = tokio::fs::File::open(&sidecar)
            .await
            .map_err(io(format!("reading {}", sidecar.display())))?;
        let meta_key = offsite::key(PREFIX, &m.id, "meta");
        plugin
            .put_object(ctx, &meta_key, &[], None, file)
            .await
            .map_err(|e| StateBackupError::Setup(format!("off-site copy of {meta_key}: {e}")))?;
    }
    // keep_last, here and off-site.
    let pruned = backup::prune(&cfg.dir, s.retention, &Default::default(), false)?;
    for id in &pruned.deleted {
        let _ = std::fs::remove_file(meta_path(&cfg.dir, id));
    }
    if let Some((plugin, ctx)) = &store {
        let (kept, _) = backup::list(&cfg.dir)?;
        let keep = kept.into_iter().map(|m| m.id).collect();
        offsite::prune(plugin, ctx, PREFIX, &keep, false).await?;
    }
    agent
        .store
        .audit(AuditEntry {
            actor: who.into(),
            action: "state.backup".into(),
            environment: None,
            subject: Some(m.id.clone()),
            why: None,
            detail: Some(format!(
                "{} audit entries to head {}{}",
                audit.entries,
                audit.head,
                copied
                    .as_deref()
                    .map(|k| format!("; off-site {k}"))
                    .unwrap_or_default()
            )),
        })
        .await?;
    tracing::info!(id = %m.id, "state backed up");
    Ok(Taken {
        id: m.id,
        audit_entries: audit.entries,
        audit_head: audit.head,
        stored_bytes: m.stored_bytes,
        offsite: copied,
        pruned: pruned.deleted,
    })
}

/// The state backups here, newest first.
pub fn list(config: &Config) -> Result<Vec<Manifest>, StateBackupError> {
    let (cfg, _) = configured(config)?;
    Ok(backup::list(&cfg.dir)?.0)
}

/// A state backup's manifest as kept off-site.
async fn offsite_manifest(
    plugin: &Plugin,
    ctx: &CallContext,
    id: &str,
) -> Result<Manifest, StateBackupError> {
    let scratch = tempfile::tempdir().map_err(io("making a scratch directory"))?;
    let path = scratch.path().join("manifest.json");
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(io(format!("writing {}", path.display())))?;
    plugin
        .get_object(ctx, &offsite::key(PREFIX, id, "json"), file)
        .await
        .map_err(|e| StateBackupError::Setup(format!("fetching {id}'s manifest: {e}")))?;
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StateBackupError::Setup(format!("{id}'s off-site manifest: {e}")))
}

/// The newest state backup off-site: by the time in its id, then (several in one second) by
/// its manifest's milliseconds.
async fn newest_offsite(
    plugin: &Plugin,
    ctx: &CallContext,
) -> Result<Option<Manifest>, StateBackupError> {
    let prefix = format!("{PREFIX}/");
    let ids: Vec<String> = offsite::list_keys(plugin, ctx, &prefix)
        .await?
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&prefix)?
                .strip_suffix(".meta")
                .map(str::to_string)
        })
        .collect();
    let second = |id: &str| id.split('-').next().unwrap_or("").to_string();
    let Some(latest) = ids.iter().map(|i| second(i)).max() else {
        return Ok(None);
    };
    let mut newest: Option<Manifest> = None;
    for id in ids.iter().filter(|i| second(i) == latest) {
        let m = offsite_manifest(plugin, ctx, id).await?;
        if newest.as_ref().is_none_or(|n| m.started_ms > n.started_ms) {
            newest = Some(m);
        }
    }
    Ok(newest)
}

/// Rebuilds the state store from a state backup (`latest`: the newest here or off-site),
/// over a store with no runs unless `replace`. Verifies the restored audit chain against the
/// head the backup recorded, and audits the restore.
pub async fn restore(
    config: &Config,
    id: &str,
    replace: bool,
    who: &str,
) -> Result<Restored, StateBackupError> {
    let (cfg, key) = configured(config)?;
    let store = offsite_store(config, cfg, None)?;
    let local = backup::list(&cfg.dir)
        .map(|(all, _)| all)
        .unwrap_or_default();
    let wanted = match id {
        "latest" => {
            let there = match &store {
                Some((p, ctx)) => newest_offsite(p, ctx).await?,
                None => None,
            };
            let newest = local
                .first()
                .into_iter()
                .chain(there.as_ref())
                .max_by_key(|m| m.started_ms)
                .ok_or_else(|| {
                    StateBackupError::Setup(format!(
                        "no state backup in {}{}",
                        cfg.dir.display(),
                        if store.is_some() {
                            " nor off-site"
                        } else {
                            " (and no `offsite` store is configured)"
                        }
                    ))
                })?;
            newest.id.clone()
        }
        id => id.to_string(),
    };
    let mut fetched = false;
    if !local.iter().any(|m| m.id == wanted) || !meta_path(&cfg.dir, &wanted).exists() {
        let (plugin, ctx) = store.as_ref().ok_or_else(|| {
            StateBackupError::Setup(format!(
                "state backup {wanted} is not in {} and no `offsite` store is configured",
                cfg.dir.display()
            ))
        })?;
        offsite::fetch(plugin, ctx, PREFIX, &wanted, &cfg.dir).await?;
        let path = meta_path(&cfg.dir, &wanted);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(io(format!("writing {}", path.display())))?;
        plugin
            .get_object(ctx, &offsite::key(PREFIX, &wanted, "meta"), file)
            .await
            .map_err(|e| StateBackupError::Setup(format!("fetching {wanted}'s sidecar: {e}")))?;
        fetched = true;
    }
    let meta = unseal(&wanted, &key, &meta_path(&cfg.dir, &wanted))?;
    let manifest = backup::find(&cfg.dir, &wanted)?;
    let url = state_url(config)?;
    // Never over a store with history, unless asked: this is for a fresh host.
    {
        let existing = super::open_store(config).await?;
        let runs = existing.audit_verify().await?.entries;
        if runs > 0 && !replace {
            return Err(StateBackupError::Setup(format!(
                "the state store {} already holds {runs} audit entries; `state restore` rebuilds a lost host's state. Pass --replace to overwrite it",
                existing.location()
            )));
        }
    }
    backup::restore(&manifest, &cfg.dir, Some(&key), &url).await?;
    let restored = Store::open(&url).await?;
    let mut audit = restored.audit_verify().await?;
    audit.expect_head(Some(&meta.audit_head));
    if audit.entries != meta.audit_entries {
        audit.problems.push(format!(
            "{} entries restored, the backup recorded {}",
            audit.entries, meta.audit_entries
        ));
    }
    let current = std::fs::read_to_string(&config.path).unwrap_or_default();
    let config_written = if current != meta.config {
        let path = config.path.with_extension("toml.restored");
        std::fs::write(&path, &meta.config).map_err(io(format!("writing {}", path.display())))?;
        Some(path)
    } else {
        None
    };
    restored
        .audit(AuditEntry {
            actor: who.into(),
            action: "state.restored".into(),
            environment: None,
            subject: Some(wanted.clone()),
            why: Some(format!(
                "rebuilt from a state backup taken on {}",
                meta.host
            )),
            detail: Some(if audit.problems.is_empty() {
                format!(
                    "audit chain verified to the recorded head {} ({} entries)",
                    meta.audit_head, meta.audit_entries
                )
            } else {
                format!("audit chain problems: {}", audit.problems.join("; "))
            }),
        })
        .await?;
    Ok(Restored {
        id: wanted,
        fetched,
        audit,
        recorded_head: meta.audit_head,
        config_written,
    })
}
