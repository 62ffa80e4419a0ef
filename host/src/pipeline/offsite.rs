//! Off-site copies of backups, through the environment's backup-store plugin (S3).
//!
//! Each backup goes up as `<environment>/<id>.backup`, streamed from its file, with its
//! manifest's sha256 in the object's metadata (the plugin checks it again on the way down),
//! then its manifest as `<environment>/<id>.json`. Pruning deletes the copies of the
//! backups it deletes here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::db::backup::Manifest;
use crate::runtime::{CallContext, CallError, Plugin};

/// Why an off-site copy, fetch or prune failed.
#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    /// A local file.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// `read`, `write`, `create`, `move into`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backup-store plugin's call; its class kept.
    #[error("{what}: {source}")]
    Call {
        /// What was being done.
        what: String,
        /// How the call failed.
        source: Box<CallError>,
    },
    /// What the store holds does not match the backup.
    #[error("{0}")]
    Mismatch(String),
}

fn on_file(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OffsiteError {
    let path = path.to_path_buf();
    move |source| OffsiteError::File {
        action,
        path,
        source,
    }
}

fn call(what: String) -> impl FnOnce(CallError) -> OffsiteError {
    move |source| OffsiteError::Call {
        what,
        source: Box::new(source),
    }
}

/// Where a backup's copy lives in the store.
pub(crate) fn key(environment: &str, id: &str, ext: &str) -> String {
    format!("{environment}/{id}.{ext}")
}

/// Copies one backup (data, then manifest) to the store; returns the data's key.
pub(crate) async fn upload(
    store: &Plugin,
    ctx: &CallContext,
    dir: &Path,
    manifest: &Manifest,
) -> Result<String, OffsiteError> {
    let path = dir.join(format!("{}.backup", manifest.id));
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(on_file("read", &path))?;
    let data_key = key(&manifest.environment, &manifest.id, "backup");
    let metadata = vec![
        ("sha256".to_string(), manifest.sha256.clone()),
        ("backup-id".to_string(), manifest.id.clone()),
    ];
    let info = store
        .put_object(ctx, &data_key, &metadata, Some(manifest.stored_bytes), file)
        .await
        .map_err(call(format!("off-site copy of {} failed", manifest.id)))?;
    if info.size != manifest.stored_bytes {
        return Err(OffsiteError::Mismatch(format!(
            "off-site copy of {} has {} bytes, the backup {}",
            manifest.id, info.size, manifest.stored_bytes
        )));
    }
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| OffsiteError::Mismatch(format!("backup {}'s manifest: {e}", manifest.id)))?;
    let json_key = key(&manifest.environment, &manifest.id, "json");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&json));
    store
        .put_object(
            ctx,
            &json_key,
            &[("sha256".to_string(), digest)],
            None,
            std::io::Cursor::new(json),
        )
        .await
        .map_err(call(format!(
            "off-site copy of {}'s manifest failed",
            manifest.id
        )))?;
    tracing::info!(
        backup = manifest.id,
        key = data_key,
        "backup copied off-site"
    );
    Ok(data_key)
}

/// Brings a backup back from the store into `dir` (when the local copy is gone): the data
/// (the plugin checks it against the sha256 in its metadata), then the manifest. Both land
/// under temporary names and are renamed into place only once the data's digest matches
/// the manifest, manifest last, so an interrupted fetch never looks like a backup.
pub(crate) async fn fetch(
    store: &Plugin,
    ctx: &CallContext,
    environment: &str,
    id: &str,
    dir: &Path,
) -> Result<(), OffsiteError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(on_file("create", dir))?;
    let data_tmp = dir.join(format!(".{id}.backup.fetching"));
    let json_tmp = dir.join(format!(".{id}.json.fetching"));
    let file = tokio::fs::File::create(&data_tmp)
        .await
        .map_err(on_file("write", &data_tmp))?;
    let got = store
        .get_object(ctx, &key(environment, id, "backup"), file)
        .await
        .map_err(call(format!("fetching backup {id} from off-site")))?;
    let json = tokio::fs::File::create(&json_tmp)
        .await
        .map_err(on_file("write", &json_tmp))?;
    store
        .get_object(ctx, &key(environment, id, "json"), json)
        .await
        .map_err(call(format!(
            "fetching backup {id}'s manifest from off-site"
        )))?;
    let manifest: Manifest = serde_json::from_slice(
        &tokio::fs::read(&json_tmp)
            .await
            .map_err(on_file("read", &json_tmp))?,
    )
    .map_err(|e| {
        OffsiteError::Mismatch(format!(
            "backup {id}'s off-site manifest is not a manifest: {e}"
        ))
    })?;
    let bytes = tokio::fs::read(&data_tmp)
        .await
        .map_err(on_file("read", &data_tmp))?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if manifest.id != id || digest != manifest.sha256 || got.size != manifest.stored_bytes {
        let _ = tokio::fs::remove_file(&data_tmp).await;
        let _ = tokio::fs::remove_file(&json_tmp).await;
        return Err(OffsiteError::Mismatch(format!(
            "the off-site copy of {id} does not match its manifest (sha256 {digest}, manifest {})",
            manifest.sha256
        )));
    }
    let rename = |from: &Path, to: std::path::PathBuf| {
        std::fs::rename(from, &to).map_err(on_file("move into", &to))
    };
    rename(&data_tmp, dir.join(format!("{id}.backup")))?;
    rename(&json_tmp, dir.join(format!("{id}.json")))?;
    tracing::info!(backup = id, "backup fetched from off-site");
    Ok(())
}

/// Every key under `prefix`, page by page.
pub(crate) async fn list_keys(
    store: &Plugin,
    ctx: &CallContext,
    prefix: &str,
) -> Result<Vec<String>, OffsiteError> {
    let mut keys = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let listing = store
            .list_objects(ctx, prefix, page.as_deref())
            .await
            .map_err(call("listing off-site backups".into()))?;
        keys.extend(listing.objects.into_iter().map(|o| o.key));
        match listing.next {
            Some(next) => page = Some(next),
            None => return Ok(keys),
        }
    }
}

/// Deletes the off-site copies of backups not in `keep` (with `dry_run`, only lists them);
/// returns their keys.
pub(crate) async fn prune(
    store: &Plugin,
    ctx: &CallContext,
    environment: &str,
    keep: &BTreeSet<String>,
    dry_run: bool,
) -> Result<Vec<String>, OffsiteError> {
    let prefix = format!("{environment}/");
    let keys = list_keys(store, ctx, &prefix).await?;
    let mut deleted = Vec::new();
    for k in keys {
        let name = k.strip_prefix(&prefix).unwrap_or(&k);
        let id = name
            .strip_suffix(".backup")
            .or_else(|| name.strip_suffix(".json"))
            .or_else(|| name.strip_suffix(".meta"))
            .unwrap_or(name);
        if keep.contains(id) {
            continue;
        }
        if !dry_run {
            store
                .delete_object(ctx, &k)
                .await
                .map_err(call(format!("deleting off-site {k}")))?;
        }
        deleted.push(k);
    }
    Ok(deleted)
}
