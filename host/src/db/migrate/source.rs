//! A directory of migrations in sqlx's layout: `<version>_<description>.sql`, or a pair
//! `<version>_<description>.up.sql` / `.down.sql`. Checksums are SHA-384 of the file's bytes,
//! as sqlx computes them, so `sqlx migrate info` agrees with us.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha384};

use crate::db::DbError;

/// One migration as found on disk.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Its version (the number before the first `_`).
    pub version: i64,
    /// Its description (the rest of the name, `_` as spaces), as sqlx records it.
    pub description: String,
    /// The up file.
    pub path: PathBuf,
    /// The up SQL.
    pub sql: String,
    /// SHA-384 of the up SQL.
    pub checksum: Vec<u8>,
    /// Runs outside a transaction (the file starts with `-- no-transaction`).
    pub no_tx: bool,
    /// The down file and its SQL, for reversible migrations.
    pub down: Option<(PathBuf, String)>,
    /// Lint rules the file waives, with reasons.
    pub waivers: Vec<Waiver>,
}

/// `-- deploy-agent: allow <rule> <reason>` in a migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiver {
    /// The squawk rule name (`ban-drop-column`).
    pub rule: String,
    /// Why it is fine here.
    pub reason: String,
    /// Where, 1-based.
    pub line: usize,
}

/// SHA-384 of SQL, as sqlx computes migration checksums.
pub fn checksum(sql: &str) -> Vec<u8> {
    Sha384::digest(sql.as_bytes()).to_vec()
}

fn waivers(sql: &str) -> Vec<Waiver> {
    sql.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let rest = line.trim().strip_prefix("--")?.trim();
            let rest = rest.strip_prefix("deploy-agent:")?.trim();
            let rest = rest.strip_prefix("allow")?.trim();
            let (rule, reason) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            Some(Waiver {
                rule: rule.to_string(),
                reason: reason.trim().to_string(),
                line: i + 1,
            })
        })
        .collect()
}

/// Reads every migration in `dir`, sorted by version.
pub fn load(dir: &Path) -> Result<Vec<Migration>, DbError> {
    let err = |path: &Path, message: String| DbError::Source {
        path: path.to_path_buf(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        err(
            dir,
            format!("cannot read the migrations directory: {e} (set `migrations` in the environment's [database])"),
        )
    })?;
    let mut ups: BTreeMap<i64, (String, PathBuf, bool)> = BTreeMap::new();
    let mut downs: BTreeMap<i64, PathBuf> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        let Some((version, rest)) = name.split_once('_') else {
            return Err(err(&path, "expected a name like `20260101120000_create_users.sql` (`<version>_<description>.sql`)".into()));
        };
        let version: i64 = version.parse().map_err(|_| {
            err(
                &path,
                format!(
                    "`{version}` is not a version number; expected `<version>_<description>.sql`"
                ),
            )
        })?;
        let (description, kind) = if let Some(d) = rest.strip_suffix(".up.sql") {
            (d, "up")
        } else if let Some(d) = rest.strip_suffix(".down.sql") {
            (d, "down")
        } else {
            (rest.trim_end_matches(".sql"), "simple")
        };
        let description = description.replace('_', " ");
        if kind == "down" {
            if let Some(other) = downs.insert(version, path.clone()) {
                return Err(err(
                    &path,
                    format!(
                        "version {version} has two down files (also {})",
                        other.display()
                    ),
                ));
            }
            continue;
        }
        if let Some((_, other, _)) = ups.get(&version) {
            return Err(err(
                &path,
                format!("version {version} is used twice (also {})", other.display()),
            ));
        }
        ups.insert(version, (description, path, kind == "up"));
    }
    let mut out = Vec::with_capacity(ups.len());
    for (version, (description, path, reversible)) in ups {
        let sql =
            std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
        let down = match downs.remove(&version) {
            Some(down_path) if reversible => {
                let down_sql = std::fs::read_to_string(&down_path)
                    .map_err(|e| err(&down_path, format!("cannot read: {e}")))?;
                Some((down_path, down_sql))
            }
            Some(down_path) => {
                return Err(err(
                    &down_path,
                    format!("a down file needs its up file named `{version}_….up.sql`, not `.sql`"),
                ));
            }
            None if reversible => {
                return Err(err(
                    &path,
                    format!("`.up.sql` without a matching `{version}_….down.sql`"),
                ));
            }
            None => None,
        };
        out.push(Migration {
            version,
            description,
            checksum: checksum(&sql),
            no_tx: sql.starts_with("-- no-transaction"),
            waivers: waivers(&sql),
            path,
            sql,
            down,
        });
    }
    if let Some((version, path)) = downs.into_iter().next() {
        return Err(err(
            &path,
            format!("down file without an up file for version {version}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sqlx_layout_with_checksums_and_waivers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("1_create_users.sql"),
            "CREATE TABLE users (id int);",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("2_add_index.up.sql"),
            "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON users (id);",
        )
        .unwrap();
        std::fs::write(dir.path().join("2_add_index.down.sql"), "DROP INDEX i;").unwrap();
        std::fs::write(dir.path().join("3_drop.sql"), "-- deploy-agent: allow ban-drop-column  column unused since v12\nALTER TABLE users DROP COLUMN x;").unwrap();
        std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let m = load(dir.path()).unwrap();
        assert_eq!(m.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(m[0].description, "create users");
        assert_eq!(
            hex::encode(&m[0].checksum),
            hex::encode(Sha384::digest(b"CREATE TABLE users (id int);"))
        );
        assert!(!m[0].no_tx && m[1].no_tx);
        assert_eq!(m[1].down.as_ref().unwrap().1, "DROP INDEX i;");
        assert_eq!(
            m[2].waivers,
            [Waiver {
                rule: "ban-drop-column".into(),
                reason: "column unused since v12".into(),
                line: 1
            }]
        );
    }

    #[test]
    fn bad_names_and_duplicates_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc_x.sql"), "").unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("is not a version number")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1_a.sql"), "").unwrap();
        std::fs::write(dir.path().join("1_b.sql"), "").unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1_a.up.sql"), "").unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("without a matching")
        );
    }
}
