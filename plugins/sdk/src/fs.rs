//! What `std::fs` cannot yet do on `wasm32-wasip2` (its WASI extensions are unstable).
//!
//! Everything else about files is plain `std::fs`, confined to the directories the plugin's
//! policy grants (`dirs = [...]` in agent.toml).

use std::path::{Path, PathBuf};

use crate::bindings::wasi::filesystem::{preopens, types::ErrorCode};
use crate::{PluginError, rejected};

/// Creates a symbolic link at `link` (an absolute guest path inside a granted, writable
/// directory) pointing to `target`, which should be relative to the link's directory:
/// an absolute target or one that climbs out of the granted directory does not resolve.
pub fn symlink(target: &str, link: &str) -> Result<(), PluginError> {
    let mut best: Option<(preopens::Descriptor, String)> = None;
    for (dir, guest) in preopens::get_directories() {
        let root = guest.trim_end_matches('/');
        let inside = link
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'));
        if inside && best.as_ref().is_none_or(|(_, b)| b.len() < root.len()) {
            best = Some((dir, root.to_string()));
        }
    }
    let Some((dir, root)) = best else {
        return Err(rejected(format!(
            "{link} is not inside a directory this plugin was granted"
        )));
    };
    let relative = link[root.len()..].trim_start_matches('/');
    dir.symlink_at(target, relative).map_err(|e| {
        rejected(format!(
            "cannot create symlink {link} -> {target}: {}",
            describe(e)
        ))
    })
}

fn describe(e: ErrorCode) -> &'static str {
    match e {
        ErrorCode::Exist => "it already exists",
        ErrorCode::Access | ErrorCode::NotPermitted | ErrorCode::ReadOnly => {
            "not permitted (is the directory granted with rw = true?)"
        }
        ErrorCode::NoEntry => "a parent directory does not exist",
        _ => "the filesystem refused",
    }
}

/// Every regular file under `root`, depth first in name order, as (its path relative to
/// `root` with `/` separators, its path). Symbolic links are followed; other entries skipped.
/// What a target needs to upload a directory artifact.
pub fn files(root: &Path) -> Result<Vec<(String, PathBuf)>, PluginError> {
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), PluginError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| rejected(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::metadata(&path)
            .map_err(|e| rejected(format!("reading {}: {e}", path.display())))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let name = path
                .strip_prefix(root)
                .map_err(|_| rejected(format!("{} is outside {}", path.display(), root.display())))?
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((name, path));
        }
    }
    Ok(())
}
