//! Off-site copies of backups, through the environment's backup-store plugin (S3).
//!
//! Each backup goes up as `<environment>/<id>.backup`, streamed from its file, with its
//! manifest's sha256 in the object's metadata (the plugin checks it again on the way down),
//! then its manifest as `<environment>/<id>.json`. Pruning deletes the copies of the
//! backups it deletes here.

use std::collections::BTreeSet;
use std::path::Path;

use crate::db::backup::Manifest;
use crate::runtime::{CallContext, Plugin};

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
) -> Result<String, String> {
    let path = dir.join(format!("{}.backup", manifest.id));
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let data_key = key(&manifest.environment, &manifest.id, "backup");
    let metadata = vec![
        ("sha256".to_string(), manifest.sha256.clone()),
        ("backup-id".to_string(), manifest.id.clone()),
    ];
    let info = store
        .put_object(ctx, &data_key, &metadata, Some(manifest.stored_bytes), file)
        .await
        .map_err(|e| format!("off-site copy of {} failed: {e}", manifest.id))?;
    if info.size != manifest.stored_bytes {
        return Err(format!(
            "off-site copy of {} has {} bytes, the backup {}",
            manifest.id, info.size, manifest.stored_bytes
        ));
    }
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
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
        .map_err(|e| format!("off-site copy of {}'s manifest failed: {e}", manifest.id))?;
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
) -> Result<(), String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let data_tmp = dir.join(format!(".{id}.backup.fetching"));
    let json_tmp = dir.join(format!(".{id}.json.fetching"));
    let file = tokio::fs::File::create(&data_tmp)
        .await
        .map_err(|e| format!("cannot write {}: {e}", data_tmp.display()))?;
    let got = store
        .get_object(ctx, &key(environment, id, "backup"), file)
        .await
        .map_err(|e| format!("fetching backup {id} from off-site: {e}"))?;
    let json = tokio::fs::File::create(&json_tmp)
        .await
        .map_err(|e| format!("cannot write {}: {e}", json_tmp.display()))?;
    store
        .get_object(ctx, &key(environment, id, "json"), json)
        .await
        .map_err(|e| format!("fetching backup {id}'s manifest from off-site: {e}"))?;
    let manifest: Manifest = serde_json::from_slice(
        &tokio::fs::read(&json_tmp)
            .await
            .map_err(|e| format!("cannot read {}: {e}", json_tmp.display()))?,
    )
    .map_err(|e| format!("backup {id}'s off-site manifest is not a manifest: {e}"))?;
    let bytes = tokio::fs::read(&data_tmp)
        .await
        .map_err(|e| format!("cannot read {}: {e}", data_tmp.display()))?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if manifest.id != id || digest != manifest.sha256 || got.size != manifest.stored_bytes {
        let _ = tokio::fs::remove_file(&data_tmp).await;
        let _ = tokio::fs::remove_file(&json_tmp).await;
        return Err(format!(
            "the off-site copy of {id} does not match its manifest (sha256 {digest}, manifest {})",
            manifest.sha256
        ));
    }
    let rename = |from: &Path, to: std::path::PathBuf| {
        std::fs::rename(from, &to).map_err(|e| format!("cannot move into {}: {e}", to.display()))
    };
    rename(&data_tmp, dir.join(format!("{id}.backup")))?;
    rename(&json_tmp, dir.join(format!("{id}.json")))?;
    tracing::info!(backup = id, "backup fetched from off-site");
    Ok(())
}

/// Deletes the off-site copies of backups not in `keep`; returns the keys deleted.
pub(crate) async fn prune(
    store: &Plugin,
    ctx: &CallContext,
    environment: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let prefix = format!("{environment}/");
    let mut keys = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let listing = store
            .list_objects(ctx, &prefix, page.as_deref())
            .await
            .map_err(|e| format!("listing off-site backups: {e}"))?;
        keys.extend(listing.objects.into_iter().map(|o| o.key));
        match listing.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    let mut deleted = Vec::new();
    for k in keys {
        let name = k.strip_prefix(&prefix).unwrap_or(&k);
        let id = name
            .strip_suffix(".backup")
            .or_else(|| name.strip_suffix(".json"))
            .unwrap_or(name);
        if !keep.contains(id) {
            store
                .delete_object(ctx, &k)
                .await
                .map_err(|e| format!("deleting off-site {k}: {e}"))?;
            deleted.push(k);
        }
    }
    Ok(deleted)
}
