//! Symbolic links a plugin left in a directory it may write, pointing outside it.
//!
//! Inside the sandbox such a link leads nowhere (the plugin sees only its grants), but the
//! deploy host follows it: a web server serving the local target's `current` would read
//! whatever it points at. Before a release is promoted the host walks the target's writable
//! grants and refuses any link that leaves its grant. Nothing is followed during the walk.

use std::path::{Component, Path, PathBuf};

/// One link that leaves its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapingLink {
    /// The link, on the deploy host.
    pub link: PathBuf,
    /// What it points at, as written.
    pub target: PathBuf,
}

impl std::fmt::Display for EscapingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.link.display(), self.target.display())
    }
}

/// Every link under `root` whose target, resolved against the link's directory without
/// following anything, is not under `root`. An absolute target counts as a path on the
/// deploy host, where it would be followed.
pub fn escaping_links(root: &Path) -> std::io::Result<Vec<EscapingLink>> {
    let root = normalize(&std::path::absolute(root)?);
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Other environments' runs may prune their releases under the same grant while this
        // walks: what vanished meanwhile cannot be a link left behind.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for entry in entries {
            let (entry, kind) = match entry.and_then(|e| e.file_type().map(|k| (e, k))) {
                Ok(found) => found,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_symlink() {
                let target = match std::fs::read_link(&path) {
                    Ok(t) => t,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                };
                let resolved = normalize(&dir.join(&target));
                if !resolved.starts_with(&root) {
                    found.push(EscapingLink { link: path, target });
                }
            }
        }
    }
    found.sort_by(|a, b| a.link.cmp(&b.link));
    Ok(found)
}

/// `path` with `.` and `..` resolved lexically (`..` at the root stays at the root).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_are_found_and_links_that_stay_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("releases/r1/assets")).unwrap();
        std::fs::write(root.join("releases/r1/index.html"), "x").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, root.join(at)).unwrap();
        };
        link("releases/r1", "current");
        link("../index.html", "releases/r1/assets/home.html");
        link("/etc/passwd", "releases/r1/passwd");
        link("../../../../secret", "releases/r1/assets/up");
        link("../../../inside", "releases/r1/assets/root-level");
        link(
            "../../../../site/releases/r1",
            "releases/r1/assets/roundabout",
        );
        let found = escaping_links(&root).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|f| f.link.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["releases/r1/assets/up", "releases/r1/passwd"]);
        assert!(found[1].to_string().ends_with("passwd -> /etc/passwd"));
        assert!(
            escaping_links(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
