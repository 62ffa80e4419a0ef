//! Lint of pending migrations for destructive and locking changes, with squawk's rules
//! (PostgreSQL). A migration waives a rule with `-- deploy-agent: allow <rule> <reason>`;
//! waivers are reported and recorded in the history.

use serde::Serialize;
use squawk_linter::{Linter, Rule};

use super::source::Migration;
use crate::config::line_col;

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct LintFinding {
    /// The migration.
    pub version: i64,
    /// The file.
    pub file: String,
    /// 1-based line and column.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The squawk rule (`ban-drop-column`).
    pub rule: String,
    /// What it found.
    pub message: String,
    /// How to make the change safely.
    pub hint: Option<String>,
    /// Waived by the file, with this reason.
    pub waived: Option<String>,
}

impl LintFinding {
    /// The one lint verdict, the same for `migrate lint`, `migrate run` and `deploy`: a
    /// finding blocks (in a strict environment) unless the file waives it with a reason.
    pub fn blocks(&self) -> bool {
        self.waived.is_none()
    }

    /// The line that waives this finding, to write in the migration above the statement.
    pub fn waiver_line(&self) -> String {
        format!("-- deploy-agent: allow {} <reason>", self.rule)
    }
}

/// Lints migrations. `in_transaction` follows each file's `-- no-transaction` marker.
pub fn lint(migrations: &[Migration]) -> Vec<LintFinding> {
    let mut out = Vec::new();
    for m in migrations {
        // The agent sets lock_timeout on every migration itself (with retries), so the
        // timeout rules would only be noise; a blanket statement_timeout would also kill
        // legitimate long data migrations.
        let mut linter = Linter::with_rules(
            &[],
            &[
                Rule::RequireLockTimeout,
                Rule::RequireStatementTimeout,
                Rule::RequireTimeoutSettings,
            ],
        );
        // Migrations run in a transaction unless the file opts out.
        linter.settings.assume_in_transaction = !m.no_tx;
        let parsed = squawk_syntax::SourceFile::parse(&m.sql);
        for v in linter.lint(&parsed, &m.sql) {
            let (line, column) = line_col(&m.sql, usize::from(v.text_range.start()));
            let rule = v.code.to_string();
            // A waiver counts only with its reason (refused below without one).
            let waived = m
                .waivers
                .iter()
                .find(|w| w.rule == rule && !w.reason.is_empty())
                .map(|w| w.reason.clone());
            out.push(LintFinding {
                version: m.version,
                file: m.path.display().to_string(),
                line,
                column,
                rule,
                message: v.message,
                hint: v.help,
                waived,
            });
        }
        for w in &m.waivers {
            // A finding about the waiver line itself; nothing waives it.
            let about = |rule: &str, message: String, hint: String| LintFinding {
                version: m.version,
                file: m.path.display().to_string(),
                line: w.line,
                column: 1,
                rule: rule.into(),
                message,
                hint: Some(hint),
                waived: None,
            };
            if w.reason.is_empty() {
                out.push(about(
                    "waiver-needs-reason",
                    format!(
                        "the waiver of `{}` gives no reason, so it is refused",
                        w.rule
                    ),
                    format!(
                        "say why it is safe here: `-- deploy-agent: allow {} <reason>`",
                        w.rule
                    ),
                ));
            }
            if w.rule.parse::<Rule>().is_err() {
                out.push(about(
                    "unknown-waiver",
                    format!(
                        "`{}` is not a lint rule, so this waiver does nothing",
                        w.rule
                    ),
                    "see the rule names in `deploy-agent migrate lint` output".into(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::migrate::source::{Migration, Waiver, checksum};

    fn m(version: i64, sql: &str, waivers: Vec<Waiver>) -> Migration {
        Migration {
            version,
            description: "t".into(),
            path: format!("{version}_t.sql").into(),
            sql: sql.into(),
            checksum: checksum(sql),
            no_tx: sql.starts_with("-- no-transaction"),
            down: None,
            waivers,
        }
    }

    #[test]
    fn finds_destructive_and_locking_changes_with_positions() {
        let sql = "CREATE TABLE a (id bigint);\nALTER TABLE users DROP COLUMN email;\nCREATE INDEX i ON users (name);\n";
        let findings = lint(&[m(7, sql, vec![])]);
        let rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
        assert!(rules.contains(&"ban-drop-column"), "{rules:?}");
        assert!(
            rules.contains(&"require-concurrent-index-creation"),
            "{rules:?}"
        );
        let drop = findings
            .iter()
            .find(|f| f.rule == "ban-drop-column")
            .unwrap();
        assert_eq!((drop.version, drop.line), (7, 2));
        assert!(drop.waived.is_none());
    }

    #[test]
    fn waivers_are_honoured_and_unknown_ones_reported() {
        let sql = "-- deploy-agent: allow ban-drop-column unused since v12\nALTER TABLE users DROP COLUMN email;\n";
        let waivers = vec![
            Waiver {
                rule: "ban-drop-column".into(),
                reason: "unused since v12".into(),
                line: 1,
            },
            Waiver {
                rule: "no-such-rule".into(),
                reason: String::new(),
                line: 1,
            },
        ];
        let findings = lint(&[m(1, sql, waivers)]);
        let drop = findings
            .iter()
            .find(|f| f.rule == "ban-drop-column")
            .unwrap();
        assert_eq!(drop.waived.as_deref(), Some("unused since v12"));
        assert!(!drop.blocks());
        assert!(findings.iter().any(|f| f.rule == "unknown-waiver"));
    }

    #[test]
    fn a_waiver_without_a_reason_is_refused() {
        let sql = "-- deploy-agent: allow ban-drop-column\nALTER TABLE users DROP COLUMN email;\n";
        let waivers = vec![Waiver {
            rule: "ban-drop-column".into(),
            reason: String::new(),
            line: 1,
        }];
        let findings = lint(&[m(1, sql, waivers)]);
        let drop = findings
            .iter()
            .find(|f| f.rule == "ban-drop-column")
            .unwrap();
        assert!(drop.blocks(), "not waived without a reason");
        assert_eq!(
            drop.waiver_line(),
            "-- deploy-agent: allow ban-drop-column <reason>"
        );
        let refused = findings
            .iter()
            .find(|f| f.rule == "waiver-needs-reason")
            .unwrap();
        assert!(refused.blocks() && refused.line == 1, "{refused:?}");
    }
}
