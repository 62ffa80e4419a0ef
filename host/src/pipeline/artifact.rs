//! The artifact: a directory on the deploy host, its digest, and where a plugin sees it.
//!
//! The digest walk reads only regular files, and links that stay inside the artifact (a link
//! to a directory inside it is followed). A FIFO, socket or device is refused before it is
//! opened (and every file is opened non-blocking and checked again once open), so a crafted
//! artifact can neither wedge the walk nor make it read outside the tree.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Request;
use crate::config::Environment;
use crate::runtime::{Artifact, Plugin, Policy};

/// Why the artifact a run would deploy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UnusableArtifact {
    /// The target plugin's policy does not let it see the artifact.
    #[error(
        "the target plugin `{plugin}` cannot see the artifact {}: grant it, e.g. dirs = [{{ path = \"{}\", guest = \"/artifact\" }}] under [plugins.{plugin}.policy]",
        path.display(),
        path.display()
    )]
    NotGranted {
        /// The target plugin.
        plugin: String,
        /// The artifact.
        path: PathBuf,
    },
    /// Reading it failed, or it holds something an artifact may not.
    #[error("cannot read the artifact: {0}")]
    Unreadable(ArtifactError),
    /// The walk could not finish (its blocking task died).
    #[error("reading the artifact: {0}")]
    Walk(#[from] tokio::task::JoinError),
    /// Neither a version nor an artifact to take one from.
    #[error("no version: pass --version, or give the environment an artifact")]
    NoVersion,
}

/// Why an artifact cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something that is not a file, a directory or a link.
    #[error("{path} is a {kind}: an artifact holds only files, directories and links inside it")]
    Special {
        /// The path.
        path: PathBuf,
        /// `FIFO`, `socket`, `device`.
        kind: &'static str,
    },
    /// A link that leads outside the artifact.
    #[error("{path} is a link to {target}, outside the artifact")]
    Escapes {
        /// The link.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
    },
    /// A link back to a directory that contains it.
    #[error("{path} is a link to a directory that contains it (a loop)")]
    Loop {
        /// The link.
        path: PathBuf,
    },
    /// An artifact from the API or a webhook outside the environment's roots.
    #[error("the artifact {path} is not under any of the environment's artifact roots ({roots})")]
    OutsideRoots {
        /// The path asked for (as given).
        path: PathBuf,
        /// The roots, for the message.
        roots: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` (from an API caller or a webhook route) resolved, if it lies under one of `roots`
/// once both are canonical (links resolved, `..` gone). Nothing under it is read.
pub fn within_roots(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, ArtifactError> {
    let outside = || ArtifactError::OutsideRoots {
        path: path.to_path_buf(),
        roots: if roots.is_empty() {
            "none: add `roots = [...]` under [environments.NAME.artifact]".into()
        } else {
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    if !path.is_absolute() || roots.is_empty() {
        return Err(outside());
    }
    let real = path.canonicalize().map_err(io(path))?;
    let inside = roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|root| real.starts_with(&root));
    if inside { Ok(real) } else { Err(outside()) }
}

/// A tree digest: sha256 over every file's relative path, mode bit (executable or not) and
/// content, in sorted order. The same tree gives the same digest on any host. A link inside
/// the tree counts as what it leads to, under the link's own name.
pub fn digest(dir: &Path) -> Result<String, ArtifactError> {
    let root = dir.canonicalize().map_err(io(dir))?;
    let mut files = Vec::new();
    let mut open_dirs = vec![root.clone()];
    walk(&root, &root, Path::new(""), &mut open_dirs, &mut files)?;
    files.sort();
    let mut tree = Sha256::new();
    for (rel, real) in &files {
        let mut file = open_regular(real)?;
        let mut h = Sha256::new();
        std::io::copy(&mut file, &mut h).map_err(io(real))?;
        let exec = file.metadata().map_err(io(real))?.permissions().mode() & 0o111 != 0;
        tree.update(rel.to_string_lossy().as_bytes());
        tree.update([0, u8::from(exec)]);
        tree.update(h.finalize());
    }
    Ok(hex::encode(tree.finalize()))
}

/// Collects `(relative name, real path)` of every file under `dir` (real path `real`).
/// `open_dirs` holds the real directories being walked, to refuse a link loop.
fn walk(
    root: &Path,
    real: &Path,
    rel: &Path,
    open_dirs: &mut Vec<PathBuf>,
    out: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), ArtifactError> {
    for entry in std::fs::read_dir(real).map_err(io(real))? {
        let entry = entry.map_err(io(real))?;
        let path = entry.path();
        let name = rel.join(entry.file_name());
        let kind = entry.file_type().map_err(io(&path))?;
        let (target, kind) = if kind.is_symlink() {
            let target = path.canonicalize().map_err(io(&path))?;
            if !target.starts_with(root) {
                return Err(ArtifactError::Escapes { path, target });
            }
            let kind = std::fs::metadata(&target).map_err(io(&target))?.file_type();
            (target, kind)
        } else {
            (path.clone(), kind)
        };
        if kind.is_dir() {
            if open_dirs.contains(&target) {
                return Err(ArtifactError::Loop { path });
            }
            open_dirs.push(target.clone());
            walk(root, &target, &name, open_dirs, out)?;
            open_dirs.pop();
        } else if kind.is_file() {
            out.push((name, target));
        } else {
            return Err(ArtifactError::Special {
                path,
                kind: special_kind(&kind),
            });
        }
    }
    Ok(())
}

fn special_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Opens `path` only if it is a regular file: non-blocking (a FIFO swapped in after the walk
/// cannot block the open) and without following a final link, then checked once open.
fn open_regular(path: &Path) -> Result<File, ArtifactError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ArtifactError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    ErrorKind::InvalidData,
                    "changed into a link during the walk",
                ),
            },
            _ => io(path)(e),
        })?;
    let kind = file.metadata().map_err(io(path))?.file_type();
    if !kind.is_file() {
        return Err(ArtifactError::Special {
            path: path.to_path_buf(),
            kind: special_kind(&kind),
        });
    }
    Ok(file)
}

/// Where a plugin sees a host path: inside one of the directories its policy grants.
pub fn guest_path(policy: &Policy, host: &Path) -> Option<String> {
    let host = host.canonicalize().ok()?;
    policy
        .dirs
        .iter()
        .filter_map(|grant| {
            let root = grant.host.canonicalize().ok()?;
            let rest = host.strip_prefix(&root).ok()?;
            let guest = Path::new(&grant.guest).join(rest);
            Some((root.as_os_str().len(), guest.to_string_lossy().into_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, guest)| guest)
}

/// The artifact as the target plugin sees it, and its host path.
pub(crate) async fn artifact_for(
    env: &Environment,
    request: &Request,
    target: &Plugin,
) -> Result<(Option<PathBuf>, Artifact), UnusableArtifact> {
    let path = request
        .artifact
        .clone()
        .or_else(|| env.artifact.path.clone());
    // The grant is checked before anything under the path is read; the file-system work runs
    // off the async workers (a slow or hostile tree cannot stall them).
    let policy = target.policy().clone();
    let name = target.name().to_string();
    let walked = tokio::task::spawn_blocking(move || -> Result<_, UnusableArtifact> {
        let Some(p) = path.filter(|p| p.is_dir()) else {
            return Ok((None, None, None));
        };
        let guest = guest_path(&policy, &p).ok_or_else(|| UnusableArtifact::NotGranted {
            plugin: name,
            path: p.clone(),
        })?;
        let digest = digest(&p).map_err(UnusableArtifact::Unreadable)?;
        Ok((Some(p), Some(guest), Some(format!("sha256:{digest}"))))
    })
    .await?;
    let (dir, guest, digest) = walked?;
    let path = dir.or_else(|| {
        request
            .artifact
            .clone()
            .or_else(|| env.artifact.path.clone())
    });
    let version = match (&request.version, &digest) {
        (Some(v), _) => v.clone(),
        (None, Some(d)) => d.trim_start_matches("sha256:")[..12].to_string(),
        (None, None) => {
            return Err(UnusableArtifact::NoVersion);
        }
    };
    Ok((
        path,
        Artifact {
            version,
            path: guest,
            digest,
            labels: steps_label(env).into_iter().collect(),
        },
    ))
}

/// The label that tells a target the canary's steps before the first weight is set
/// (`deploy-agent.dev/canary-steps = "10,50,100"`), for platforms that take a rollout's
/// stages up front (Vercel Rolling Releases).
pub const CANARY_STEPS_LABEL: &str = "deploy-agent.dev/canary-steps";

fn steps_label(env: &Environment) -> Option<(String, String)> {
    if env.deploy.strategy != crate::config::Strategy::Canary || env.deploy.steps.is_empty() {
        return None;
    }
    let weights: Vec<String> = env
        .deploy
        .steps
        .iter()
        .map(|s| s.weight.to_string())
        .collect();
    Some((CANARY_STEPS_LABEL.to_string(), weights.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_names_and_content() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("a"))?;
        std::fs::write(dir.path().join("a/x.txt"), "one")?;
        let first = digest(dir.path())?;
        assert_eq!(first, digest(dir.path())?);
        std::fs::write(dir.path().join("a/x.txt"), "two")?;
        let second = digest(dir.path())?;
        assert_ne!(first, second);
        std::fs::rename(dir.path().join("a/x.txt"), dir.path().join("a/y.txt"))?;
        assert_ne!(second, digest(dir.path())?);
        Ok(())
    }

    /// A FIFO is refused without being opened (opening one would block the walk), a link
    /// inside the tree is followed, one out of it or back up it is refused.
    #[test]
    fn special_files_and_escaping_links_are_refused_links_inside_followed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("a");
        std::fs::create_dir_all(root.join("assets"))?;
        std::fs::write(root.join("assets/x.css"), "x")?;
        let plain = digest(&root)?;
        std::os::unix::fs::symlink("assets", root.join("static"))?;
        let linked = digest(&root)?;
        assert_ne!(
            plain, linked,
            "the linked directory's files count under its name"
        );

        let fifo = root.join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()?
                .success()
        );
        let err = digest(&root).unwrap_err();
        assert!(
            matches!(err, ArtifactError::Special { kind: "FIFO", .. }),
            "{err}"
        );
        std::fs::remove_file(&fifo)?;

        std::os::unix::fs::symlink("/etc", root.join("etc"))?;
        assert!(matches!(digest(&root), Err(ArtifactError::Escapes { .. })));
        std::fs::remove_file(root.join("etc"))?;
        std::os::unix::fs::symlink("..", root.join("assets/up"))?;
        assert!(matches!(digest(&root), Err(ArtifactError::Loop { .. })));
        std::fs::remove_file(root.join("assets/up"))?;
        assert_eq!(digest(&root)?, linked);
        Ok(())
    }

    #[test]
    fn api_artifacts_must_lie_under_a_root_after_resolving_links()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let roots = vec![dir.path().join("releases")];
        std::fs::create_dir_all(dir.path().join("releases/v1"))?;
        std::fs::create_dir_all(dir.path().join("secret"))?;
        std::os::unix::fs::symlink("../secret", dir.path().join("releases/sneaky"))?;
        assert!(within_roots(&dir.path().join("releases/v1"), &roots).is_ok());
        for bad in ["releases/../secret", "releases/sneaky", "secret"] {
            let err = within_roots(&dir.path().join(bad), &roots).unwrap_err();
            assert!(
                matches!(err, ArtifactError::OutsideRoots { .. }),
                "{bad}: {err}"
            );
        }
        assert!(within_roots(Path::new("/root"), &[]).is_err());
        assert!(
            within_roots(Path::new("releases/v1"), &roots).is_err(),
            "relative"
        );
        Ok(())
    }
}
