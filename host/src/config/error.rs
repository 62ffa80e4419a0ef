//! Configuration errors that point at the file, line and column, show the line, and say how
//! to fix it.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in agent.toml.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending line of the file, for display.
    pub source_line: String,
    /// Environments that inherit the mistake through `extends`, each as its chain
    /// (`production → staging → base`): the same error, reported once at its source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inherited_by: Vec<String>,
    /// For a setting read on behalf of one environment: its chain through `extends`
    /// (`production → staging → base`), the one it was read for first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// The 1-based line and column (in characters) of a byte offset in `text`: how every error
/// that points into a file (agent.toml, a migration, a stand-in script) names its place.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

impl ConfigError {
    /// An error at a byte span of `source`.
    pub fn at(file: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let start = span.start.min(source.len());
        let (line, column) = line_col(source, start);
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let source_line = source[line_start..]
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
            hint: None,
            source_line,
            inherited_by: Vec::new(),
            environment: None,
        }
    }

    /// An error about the whole file (no useful position).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            message: message.into(),
            hint: None,
            source_line: String::new(),
            inherited_by: Vec::new(),
            environment: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if !self.source_line.is_empty() {
            let gutter = self.line.to_string().len();
            write!(
                f,
                "\n {:gutter$} |\n {} | {}\n {:gutter$} | {}^",
                "",
                self.line,
                self.source_line,
                "",
                " ".repeat(self.column.saturating_sub(1))
            )?;
        }
        if let Some(chain) = &self.environment {
            write!(f, "\n  environment: {chain}")?;
        }
        if !self.inherited_by.is_empty() {
            write!(f, "\n  inherited by: {}", self.inherited_by.join("; "))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in agent.toml, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "error: {e}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n\n{} errors in the configuration", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_line_and_column() {
        let src = "[a]\nx = 1\nyy = \"bad\"\n";
        let start = src.find("\"bad\"").unwrap();
        let e = ConfigError::at(Path::new("agent.toml"), src, start..start + 5, "no good")
            .hint("fix it");
        assert_eq!((e.line, e.column), (3, 6));
        let text = e.to_string();
        assert!(text.starts_with("agent.toml:3:6: no good"), "{text}");
        assert!(text.contains(" 3 | yy = \"bad\""), "{text}");
        assert!(text.contains("  |      ^"), "{text}");
        assert!(text.ends_with("hint: fix it"), "{text}");
    }
}
