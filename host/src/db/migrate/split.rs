//! Splits SQL into statements, for migrations that run outside a transaction
//! (`CREATE INDEX CONCURRENTLY` must be its own statement). Understands quoted strings,
//! quoted identifiers, dollar quoting and both comment styles.

/// One statement and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text, without the trailing `;`.
    pub sql: String,
    /// Its first line in the file.
    pub line: usize,
}

/// Splits `sql` at top-level semicolons. Statements holding only comments and space are dropped.
pub fn split(sql: &str) -> Vec<Statement> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ ... $tag$ (tag may be empty); `$1` parameters are not quotes.
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(end)
                        if bytes[end] == b'$'
                            && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &sql[i..=end];
                        match sql[end + 1..].find(tag) {
                            Some(close) => i = end + 1 + close + tag.len(),
                            None => i = bytes.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                push(sql, start, i, &mut out);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(sql, start, bytes.len(), &mut out);
    out
}

fn push(sql: &str, start: usize, end: usize, out: &mut Vec<Statement>) {
    let text = &sql[start..end.min(sql.len())];
    if !has_code(text) {
        return;
    }
    let lead = text.len() - code_start(text).len();
    let line = sql[..start + lead].matches('\n').count() + 1;
    out.push(Statement {
        sql: text.trim().to_string(),
        line,
    });
}

/// `text` from its first character of code (past leading space and comments).
fn code_start(text: &str) -> &str {
    let mut rest = text.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r
                .split_once("*/")
                .map_or("", |(_, after)| after)
                .trim_start();
        } else {
            return rest;
        }
    }
}

/// Whether text has anything but comments and white space.
fn has_code(text: &str) -> bool {
    !code_start(text).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\n\n/* c; */ CREATE INDEX CONCURRENTLY b ON t ((';'));\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nINSERT INTO \"we;ird\" VALUES ('it''s; fine', $$x;y$$);\n-- trailing comment;\n";
        let s = split(sql);
        assert_eq!(s.len(), 4, "{s:#?}");
        assert_eq!(
            s[0],
            Statement {
                sql: "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x)".into(),
                line: 2
            }
        );
        assert_eq!(s[1].line, 4);
        assert!(s[1].sql.ends_with("((';'))"));
        assert_eq!(s[2].line, 5);
        assert!(s[2].sql.contains("SELECT 1; $body$"));
        assert_eq!(s[3].line, 6);
        assert!(s[3].sql.contains("'it''s; fine', $$x;y$$"));
    }

    #[test]
    fn parameters_are_not_dollar_quotes() {
        let s = split("PREPARE p AS SELECT $1; SELECT 2");
        assert_eq!(s.len(), 2);
    }
}
