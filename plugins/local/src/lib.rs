//! The local deploy target: releases on the deploy host itself, the Capistrano way.
//!
//! ```text
//! <root>/releases/<id>/        one directory per release, copied from the artifact
//! <root>/releases/<id>.json    written last: a release without it is incomplete
//! <root>/current -> releases/<id>
//! ```
//!
//! `deploy` copies the artifact into `releases/.<id>.partial` and renames it into place, so a
//! crash never leaves a half-copied release that looks whole; deploying the same id again
//! (a resumed run) reuses a complete release. `promote` switches `current` atomically: a new
//! symlink is created beside it and renamed over it, so readers see the old release or the
//! new one, never neither. The newest `keep` releases (and always the live one) are kept.
//!
//! It touches only the directory its policy grants (`root`), and reads the artifact from
//! the read-only directory the host maps it to.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use deploy_agent_sdk::prelude::*;
use serde::{Deserialize, Serialize};

/// The plugin.
pub struct Local;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The granted directory (as the plugin sees it) that holds `releases/` and `current`.
    root: String,
    /// How many releases to keep (the live one always is).
    #[serde(default = "default_keep")]
    keep: usize,
}

fn default_keep() -> usize {
    5
}

/// What `releases/<id>.json` records.
#[derive(Serialize, Deserialize)]
struct Meta {
    version: String,
    digest: Option<String>,
    created_at_ms: u64,
}

struct Layout {
    root: PathBuf,
    keep: usize,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> PluginError {
    rejected(format!("{what} {}: {e}", path.display()))
}

impl Layout {
    fn new(ctx: &Context) -> Result<Layout, PluginError> {
        let s: Settings = ctx.config()?;
        if !s.root.starts_with('/') {
            return Err(invalid_config(
                "`root` must be the granted directory as the plugin sees it (its `guest` path)",
            ));
        }
        if s.keep == 0 {
            return Err(invalid_config("`keep` must be at least 1"));
        }
        let layout = Layout {
            root: PathBuf::from(s.root),
            keep: s.keep,
        };
        let releases = layout.releases();
        fs::create_dir_all(&releases).map_err(|e| {
            invalid_config(format!(
                "cannot create {}: {e} (grant the directory with rw = true)",
                releases.display()
            ))
        })?;
        Ok(layout)
    }

    fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.releases().join(format!("{id}.json"))
    }

    fn meta(&self, id: &str) -> Option<Meta> {
        let text = fs::read_to_string(self.meta_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The live release's id, if `current` exists.
    fn live(&self) -> Option<String> {
        let target = fs::read_link(self.root.join("current")).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        Some(name)
    }

    /// Complete releases, newest first.
    fn complete(&self) -> Result<Vec<(String, Meta)>, PluginError> {
        let dir = self.releases();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".json") {
                continue;
            }
            if let Some(meta) = self.meta(&name) {
                out.push((name, meta));
            }
        }
        out.sort_by(|a, b| (b.1.created_at_ms, &b.0).cmp(&(a.1.created_at_ms, &a.0)));
        Ok(out)
    }

    /// Points `current` at `releases/<id>`, atomically.
    fn switch(&self, id: &str) -> Result<(), PluginError> {
        let next = self.root.join("current.next");
        let _ = fs::remove_file(&next);
        deploy_agent_sdk::fs::symlink(&format!("releases/{id}"), &path_str(&next)?)?;
        let current = self.root.join("current");
        fs::rename(&next, &current).map_err(|e| io("cannot switch", &current, e))
    }

    /// Removes all but the newest `keep` releases, never the live one, and leftovers of
    /// interrupted copies.
    fn prune(&self) -> Result<(), PluginError> {
        let live = self.live();
        for (i, (id, _)) in self.complete()?.into_iter().enumerate() {
            if i >= self.keep && live.as_deref() != Some(id.as_str()) {
                let dir = self.dir(&id);
                // Meta first: a release without it is incomplete, never half-deleted-but-listed.
                fs::remove_file(self.meta_path(&id)).map_err(|e| io("cannot remove", &dir, e))?;
                fs::remove_dir_all(&dir).map_err(|e| io("cannot remove", &dir, e))?;
                log::info(format!("removed old release {id}"));
            }
        }
        Ok(())
    }
}

fn path_str(p: &Path) -> Result<String, PluginError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| rejected(format!("path is not UTF-8: {}", p.display())))
}

/// A release id from the run id: the run id is unique and sortable, and a resumed run gets
/// the same id, so deploying again finds the release it already made.
fn release_id(ctx: &Context) -> Result<String, PluginError> {
    let id = &ctx.deployment_id;
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(id.clone())
    } else {
        Err(rejected(format!(
            "cannot name a release after the run id `{id}`: use letters, digits, `-`, `_`, `.`"
        )))
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<u64, PluginError> {
    fs::create_dir_all(to).map_err(|e| io("cannot create", to, e))?;
    let mut bytes = 0;
    for entry in fs::read_dir(from).map_err(|e| io("cannot read", from, e))? {
        let entry = entry.map_err(|e| io("cannot read", from, e))?;
        let mut kind = entry.file_type().map_err(|e| io("cannot read", from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        // A link is copied as what it leads to (as the agent's digest counts it); the
        // sandbox resolves it only within the granted artifact directory.
        if kind.is_symlink() {
            kind = fs::metadata(&src)
                .map_err(|e| io("cannot follow the link", &src, e))?
                .file_type();
        }
        if kind.is_dir() {
            bytes += copy_dir(&src, &dst)?;
        } else if kind.is_file() {
            bytes += fs::copy(&src, &dst).map_err(|e| io("cannot copy", &src, e))?;
        } else {
            return Err(rejected(format!(
                "the artifact contains {}, which is neither a file nor a directory",
                src.display()
            )));
        }
    }
    Ok(bytes)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DeployTarget for Local {
    fn deploy(ctx: &Context, release: Artifact) -> Result<Staged, PluginError> {
        let layout = Layout::new(ctx)?;
        let id = release_id(ctx)?;
        let staged = Staged {
            release_id: id.clone(),
            url: None,
        };
        if layout.meta(&id).is_some() {
            log::info(format!("release {id} is already staged"));
            return Ok(staged);
        }
        let Some(source) = release.path.as_deref() else {
            return Err(rejected(
                "the local target deploys a directory: give the artifact a path",
            ));
        };
        let source = Path::new(source);
        if !source.is_dir() {
            return Err(rejected(format!(
                "artifact {} is not a directory the plugin can read",
                source.display()
            )));
        }
        let dir = layout.dir(&id);
        // An incomplete release (copied, but its meta never written) is made again.
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| io("cannot remove", &dir, e))?;
        }
        let partial = layout.releases().join(format!(".{id}.partial"));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|e| io("cannot remove", &partial, e))?;
        }
        let bytes = copy_dir(source, &partial)?;
        fs::rename(&partial, &dir).map_err(|e| io("cannot rename", &partial, e))?;
        let meta = Meta {
            version: release.version.clone(),
            digest: release.digest.clone(),
            created_at_ms: now_ms(),
        };
        let text = serde_json::to_string(&meta).map_err(|e| rejected(e.to_string()))?;
        let tmp = layout.releases().join(format!(".{id}.json.partial"));
        fs::write(&tmp, text).map_err(|e| io("cannot write", &tmp, e))?;
        let meta_path = layout.meta_path(&id);
        fs::rename(&tmp, &meta_path).map_err(|e| io("cannot rename", &tmp, e))?;
        log::info(format!(
            "staged release {id} ({} {bytes} bytes)",
            release.version
        ));
        Ok(staged)
    }

    fn status(ctx: &Context, release_id: &str) -> Result<ReleaseStatus, PluginError> {
        let layout = Layout::new(ctx)?;
        // A release is there when its files are, not only its record: a deleted directory
        // is a release gone (what `status` reports as drift).
        let files = layout.releases().join(release_id).is_dir();
        let state = if layout.meta(release_id).is_some() && !files {
            ReleaseState::Failed(format!("the files of `{release_id}` are gone"))
        } else if layout.meta(release_id).is_some() {
            if layout.live().as_deref() == Some(release_id) {
                ReleaseState::Live
            } else {
                ReleaseState::Ready
            }
        } else {
            ReleaseState::Failed(format!("no complete release `{release_id}`"))
        };
        Ok(ReleaseStatus { state, url: None })
    }

    fn promote(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let layout = Layout::new(ctx)?;
        if layout.meta(release_id).is_none() {
            return Err(rejected(format!(
                "no complete release `{release_id}` to promote"
            )));
        }
        if layout.live().as_deref() != Some(release_id) {
            layout.switch(release_id)?;
            log::info(format!("current -> releases/{release_id}"));
        }
        layout.prune()
    }

    fn rollback(ctx: &Context, to: Option<&str>) -> Result<String, PluginError> {
        let layout = Layout::new(ctx)?;
        let releases = layout.complete()?;
        let live = layout.live();
        let target = match to {
            Some(id) => releases
                .iter()
                .find(|(r, _)| r == id)
                .map(|(r, _)| r.clone())
                .ok_or_else(|| rejected(format!("no complete release `{id}` to roll back to")))?,
            None => {
                let live = live
                    .as_deref()
                    .ok_or_else(|| rejected("nothing is live, so there is nothing to roll back"))?;
                let at = releases.iter().position(|(r, _)| r == live);
                let older = at.and_then(|i| releases.get(i + 1));
                older.map(|(r, _)| r.clone()).ok_or_else(|| {
                    rejected(format!(
                        "no release older than the live one ({live}) is kept"
                    ))
                })?
            }
        };
        layout.switch(&target)?;
        log::info(format!("rolled back: current -> releases/{target}"));
        Ok(target)
    }

    fn list_releases(ctx: &Context) -> Result<Vec<Release>, PluginError> {
        let layout = Layout::new(ctx)?;
        let live = layout.live();
        Ok(layout
            .complete()?
            .into_iter()
            .map(|(id, meta)| Release {
                live: live.as_deref() == Some(id.as_str()),
                id,
                version: Some(meta.version),
                url: None,
                created_at_ms: meta.created_at_ms,
            })
            .collect())
    }
}

export!(Local: deploy_target);
