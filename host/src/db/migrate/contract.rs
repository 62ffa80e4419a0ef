//! Expand or contract: whether migrations leave a schema the release before them can still
//! run on.
//!
//! An expand-only migration adds (a table, a nullable column, an index): the previous release
//! ignores what it does not know, so switching the app back is safe. A contract migration
//! takes away or changes what the previous release uses: drops, renames, type changes, and
//! NOT NULL on existing columns (or new columns the old code does not fill). After one,
//! switching only the app back runs old code against a schema it was not built for.
//!
//! The classification reads the lint's findings (squawk's rules), waived or not: a waiver
//! says a change is safe to *run*, not that old code survives it.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::lint;
use super::source::{self, Migration};
use crate::db::DbError;

/// The lint rules whose findings make a migration a contract one.
pub const CONTRACT_RULES: [&str; 15] = [
    "ban-drop-column",
    "ban-drop-table",
    "ban-drop-database",
    "ban-drop-schema",
    "ban-drop-view",
    "ban-drop-type",
    "ban-drop-function",
    "ban-drop-default",
    "ban-set-schema",
    "renaming-column",
    "renaming-table",
    "renaming-object",
    "changing-column-type",
    "adding-not-nullable-field",
    "adding-required-field",
];

/// One statement that contracts the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ContractChange {
    /// The migration's version.
    pub version: i64,
    /// Its file.
    pub file: String,
    /// The statement's line.
    pub line: usize,
    /// The lint rule that names the change.
    pub rule: String,
}

impl fmt::Display for ContractChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Path::new(&self.file)
            .file_name()
            .map_or(self.file.clone(), |n| n.to_string_lossy().into_owned());
        write!(f, "{name}:{} ({})", self.line, self.rule)
    }
}

/// The contract changes among `migrations`.
pub fn contract_changes(migrations: &[Migration]) -> Vec<ContractChange> {
    lint::lint(migrations)
        .into_iter()
        .filter(|f| CONTRACT_RULES.contains(&f.rule.as_str()))
        .map(|f| ContractChange {
            version: f.version,
            file: f.file,
            line: f.line,
            rule: f.rule,
        })
        .collect()
}

/// The contract changes of the migrations in `dir` after version `after` up to `upto`
/// (inclusive; every later one when `None`).
pub fn between(
    dir: &Path,
    after: Option<i64>,
    upto: Option<i64>,
) -> Result<Vec<ContractChange>, DbError> {
    let all = source::load(dir)?;
    let chosen: Vec<Migration> = all
        .into_iter()
        .filter(|m| after.is_none_or(|a| m.version > a) && upto.is_none_or(|u| m.version <= u))
        .collect();
    Ok(contract_changes(&chosen))
}

/// The changes as one line for people: `0003_drop_email.sql:2 (ban-drop-column), ...`.
pub fn describe(changes: &[ContractChange]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::migrate::source::checksum;

    fn m(version: i64, sql: &str) -> Migration {
        Migration {
            version,
            description: "t".into(),
            path: format!("{version}_t.sql").into(),
            sql: sql.into(),
            checksum: checksum(sql),
            no_tx: false,
            down: None,
            waivers: Vec::new(),
        }
    }

    #[test]
    fn additive_changes_expand_and_destructive_ones_contract() {
        let expand = [
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text);",
            "ALTER TABLE notes ADD COLUMN title text;",
            "CREATE INDEX CONCURRENTLY notes_title ON notes (title);",
        ];
        for sql in expand {
            assert_eq!(contract_changes(&[m(1, sql)]), vec![], "{sql}");
        }
        let contract = [
            ("ALTER TABLE notes DROP COLUMN body;", "ban-drop-column"),
            ("DROP TABLE notes;", "ban-drop-table"),
            (
                "ALTER TABLE notes RENAME COLUMN body TO text;",
                "renaming-column",
            ),
            ("ALTER TABLE notes RENAME TO memos;", "renaming-table"),
            (
                "ALTER TABLE notes ALTER COLUMN body TYPE varchar(10);",
                "changing-column-type",
            ),
            (
                "ALTER TABLE notes ALTER COLUMN body SET NOT NULL;",
                "adding-not-nullable-field",
            ),
        ];
        for (sql, rule) in contract {
            let found = contract_changes(&[m(7, sql)]);
            assert!(found.iter().any(|c| c.rule == rule), "{sql}: {found:?}");
            assert_eq!(found[0].version, 7);
        }
        let described = describe(&contract_changes(&[m(
            3,
            "\nALTER TABLE notes DROP COLUMN body;",
        )]));
        assert_eq!(described, "3_t.sql:2 (ban-drop-column)");
    }
}
