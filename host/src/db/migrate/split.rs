//! Splits SQL into statements, for migrations that run outside a transaction
//! (`CREATE INDEX CONCURRENTLY` must be its own statement) and for SQLite, which runs one
//! statement at a time. Understands quoted strings, quoted identifiers, dollar quoting and
//! both comment styles, and the statements that hold semicolons of their own:
//!
//! - SQLite: a `CREATE [TEMP] TRIGGER ... BEGIN ...; ...; END;` body ends only at an `END`
//!   that begins a statement of the body, followed by `;`: exactly `sqlite3_complete`'s state
//!   machine (so `CASE ... END;` inside a trigger does not end it).
//! - PostgreSQL: a SQL-standard function body, `BEGIN ATOMIC ...; ...; END`, with any
//!   `CASE ... END` inside it.

use crate::db::Backend;

/// One statement and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text, without the trailing `;`.
    pub sql: String,
    /// Its first line in the file.
    pub line: usize,
}

/// A token as the statement-end tracker sees it.
#[derive(Clone, Copy)]
enum Token<'a> {
    Semi,
    Word(&'a str),
    Other,
}

/// Tracks whether a `;` ends the statement, per dialect.
struct Ends {
    backend: Backend,
    /// SQLite: `sqlite3_complete`'s state (1 START .. 7 END).
    lite: usize,
    /// PostgreSQL: depth inside `BEGIN ATOMIC` (counting `CASE ... END` within).
    atomic: usize,
    /// PostgreSQL: the previous word was `BEGIN`.
    after_begin: bool,
}

impl Ends {
    fn new(backend: Backend) -> Ends {
        Ends {
            backend,
            lite: 1,
            atomic: 0,
            after_begin: false,
        }
    }

    /// Feeds a token; true when it is a `;` that ends the statement.
    fn feed(&mut self, token: Token<'_>) -> bool {
        match self.backend {
            Backend::Sqlite => {
                // sqlite3_complete: tokens SEMI, OTHER, EXPLAIN, CREATE, TEMP, TRIGGER, END.
                const NEXT: [[usize; 7]; 8] = [
                    [1, 2, 3, 4, 2, 2, 2], // 0 INVALID
                    [1, 2, 3, 4, 2, 2, 2], // 1 START
                    [1, 2, 2, 2, 2, 2, 2], // 2 NORMAL
                    [1, 3, 2, 4, 2, 2, 2], // 3 EXPLAIN
                    [1, 2, 2, 2, 4, 5, 2], // 4 CREATE
                    [6, 5, 5, 5, 5, 5, 5], // 5 TRIGGER
                    [6, 5, 5, 5, 5, 5, 7], // 6 SEMI
                    [1, 5, 5, 5, 5, 5, 5], // 7 END
                ];
                let class = match token {
                    Token::Semi => 0,
                    Token::Other => 1,
                    Token::Word(w) => match w.to_ascii_uppercase().as_str() {
                        "EXPLAIN" => 2,
                        "CREATE" => 3,
                        "TEMP" | "TEMPORARY" => 4,
                        "TRIGGER" => 5,
                        "END" => 6,
                        _ => 1,
                    },
                };
                self.lite = NEXT[self.lite][class];
                matches!(token, Token::Semi) && self.lite == 1
            }
            Backend::Postgres => {
                let word = match token {
                    Token::Semi => {
                        self.after_begin = false;
                        return self.atomic == 0;
                    }
                    Token::Other => {
                        self.after_begin = false;
                        return false;
                    }
                    Token::Word(w) => w.to_ascii_uppercase(),
                };
                match word.as_str() {
                    "ATOMIC" if self.after_begin => self.atomic += 1,
                    "CASE" if self.atomic > 0 => self.atomic += 1,
                    "END" if self.atomic > 0 => self.atomic -= 1,
                    _ => {}
                }
                self.after_begin = word == "BEGIN";
                false
            }
        }
    }
}

/// Splits `sql` at the semicolons that end statements in `backend`'s dialect. Statements
/// holding only comments and space are dropped.
pub fn split(sql: &str, backend: Backend) -> Vec<Statement> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut ends = Ends::new(backend);
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                ends.feed(Token::Other);
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
                        ends.feed(Token::Other);
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
                if ends.feed(Token::Semi) {
                    push(sql, start, i, &mut out);
                    start = i + 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let word_end = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
                    .map_or(bytes.len(), |n| i + n);
                ends.feed(Token::Word(&sql[i..word_end]));
                i = word_end;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                ends.feed(Token::Other);
                i += 1;
            }
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
        let s = split(sql, Backend::Postgres);
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
        let s = split("PREPARE p AS SELECT $1; SELECT 2", Backend::Postgres);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn sqlite_triggers_end_at_their_end() {
        let sql = "CREATE TABLE t (a INTEGER, b TEXT);\n\
            -- a comment; with a semicolon\n\
            CREATE TEMP TRIGGER IF NOT EXISTS t_ai AFTER INSERT ON t BEGIN\n\
              UPDATE t SET b = CASE WHEN new.a > 0 THEN 'pos;' ELSE 'neg' END WHERE rowid = new.rowid;\n\
              /* END; inside a comment */ INSERT INTO log VALUES ('end;');\n\
            END;\n\
            CREATE TRIGGER \"end\" BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'no'); END;\n\
            SELECT CASE WHEN 1 THEN 2 END; EXPLAIN SELECT 1;";
        let s = split(sql, Backend::Sqlite);
        let firsts: Vec<&str> = s.iter().map(|s| &s.sql[..s.sql.len().min(18)]).collect();
        assert_eq!(s.len(), 5, "{firsts:#?}");
        assert_eq!(s[1].line, 3);
        assert!(
            s[1].sql
                .starts_with("-- a comment; with a semicolon\nCREATE TEMP TRIGGER")
        );
        assert!(
            s[1].sql.ends_with("INSERT INTO log VALUES ('end;');\nEND"),
            "{}",
            s[1].sql
        );
        assert!(s[2].sql.ends_with("RAISE(ABORT, 'no'); END"));
        assert_eq!(s[3].sql, "SELECT CASE WHEN 1 THEN 2 END");
        assert_eq!(s[4].sql, "EXPLAIN SELECT 1");
        // The same file, PostgreSQL's way, cuts inside the trigger body: dialects differ.
        assert!(split(sql, Backend::Postgres).len() > 5);
    }

    #[test]
    fn postgres_atomic_bodies_and_case_stay_whole() {
        let sql = "CREATE FUNCTION f(x int) RETURNS text LANGUAGE sql BEGIN ATOMIC\n\
              SELECT CASE WHEN x > 0 THEN 'pos' ELSE 'neg' END;\n\
              SELECT 'done; really';\n\
            END;\n\
            -- next; one\n\
            SELECT CASE WHEN true THEN 1 END; CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION g();";
        let s = split(sql, Backend::Postgres);
        assert_eq!(s.len(), 3, "{s:#?}");
        assert!(s[0].sql.ends_with("END"), "{}", s[0].sql);
        assert_eq!(s[1].line, 6);
        assert!(s[2].sql.starts_with("CREATE TRIGGER tr"));
    }
}
