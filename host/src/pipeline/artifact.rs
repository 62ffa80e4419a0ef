//! The artifact: a directory on the deploy host, its digest, and where a plugin sees it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::runtime::Policy;

/// A tree digest: sha256 over every file's relative path, mode bit (executable or not) and
/// content, in sorted order. The same tree gives the same digest on any host.
pub fn digest(dir: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut tree = Sha256::new();
    for rel in &files {
        let path = dir.join(rel);
        let mut file = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut file, &mut h)?;
        let exec = {
            use std::os::unix::fs::PermissionsExt;
            file.metadata()?.permissions().mode() & 0o111 != 0
        };
        tree.update(rel.to_string_lossy().as_bytes());
        tree.update([0, u8::from(exec)]);
        tree.update(h.finalize());
    }
    Ok(hex::encode(tree.finalize()))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_names_and_content() -> std::io::Result<()> {
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
}
