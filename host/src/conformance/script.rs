//! The stand-in file: what the conformance kit grants the plugin, and how its stand-in server
//! plays the platform (scripted routes, or a server of yours it forwards to).
//!
//! ```toml
//! [plugin]
//! config = { api = "{standin}", project = "web" }   # {standin}: the stand-in's base URL
//! secrets = ["token"]                                # random values, bound to the stand-in
//!
//! [[route]]
//! method = "POST"
//! path = "/v1/releases"
//! then = "staged"                                    # scenario state after answering
//! status = 201
//! body = '{"id": "r{{n}}", "version": "{{json.version}}"}'
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::line_col;

/// A stand-in file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read the stand-in file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid stand-in script; the message names the line.
    #[error("{path}:{line}:{column}: {message}\n  hint: {hint}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: &'static str,
    },
}

/// A parsed stand-in file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// What the plugin is given.
    #[serde(default)]
    pub plugin: PluginSetup,
    /// Forward every request to this server instead of answering from routes.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The routes, first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

/// The plugin's config and grants under test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSetup {
    /// Its `[plugins.NAME.config]` table; `{standin}` in any string becomes the stand-in's URL.
    #[serde(default)]
    pub config: toml::Table,
    /// The secrets it is granted, bound to the stand-in's host: a list of names (each gets a
    /// random value), or a table of name = value for an upstream that checks credentials
    /// (`"${env:VAR}"` reads an environment variable).
    #[serde(default)]
    pub secrets: SecretsSpec,
    /// Secrets that are AWS secret access keys, with what each may sign for (as `sigv4` on a
    /// secret in agent.toml): `sigv4 = { secret-key = { services = ["s3"], regions = [...] } }`.
    #[serde(default)]
    pub sigv4: BTreeMap<String, Sigv4Setup>,
    /// Memory cap, MiB (default: the agent's default).
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

/// What a SigV4 secret may sign for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sigv4Setup {
    /// AWS services.
    pub services: Vec<String>,
    /// AWS regions.
    pub regions: Vec<String>,
}

/// The secrets a plugin under test gets.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretsSpec {
    /// Names, each with a random value.
    Names(Vec<String>),
    /// Names with their values.
    Values(BTreeMap<String, String>),
}

impl Default for SecretsSpec {
    fn default() -> Self {
        SecretsSpec::Names(Vec::new())
    }
}

impl SecretsSpec {
    /// The secret names.
    pub fn names(&self) -> Vec<String> {
        match self {
            SecretsSpec::Names(n) => n.clone(),
            SecretsSpec::Values(v) => v.keys().cloned().collect(),
        }
    }

    /// Each name with its value: the given one (environment variables expanded) or a random one.
    pub fn values(&self) -> Result<BTreeMap<String, String>, String> {
        match self {
            SecretsSpec::Names(names) => Ok(names
                .iter()
                .map(|n| (n.clone(), format!("kit-{}", crate::random::hex(16))))
                .collect()),
            SecretsSpec::Values(values) => values
                .iter()
                .map(|(n, v)| {
                    let value = match v.strip_prefix("${env:").and_then(|r| r.strip_suffix('}')) {
                        Some(var) => std::env::var(var).map_err(|_| {
                            format!("secret `{n}` reads ${{env:{var}}}, which is not set")
                        })?,
                        None => v.clone(),
                    };
                    Ok((n.clone(), value))
                })
                .collect(),
        }
    }
}

/// One scripted route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// HTTP method (`*` for any).
    #[serde(default = "any")]
    pub method: String,
    /// Path, with `{name}` for a captured segment and a trailing `{*rest}` for the rest.
    pub path: String,
    /// Only in this scenario state (the first state is `start`).
    #[serde(default)]
    pub when: Option<String>,
    /// The scenario state after answering.
    #[serde(default)]
    pub then: Option<String>,
    /// Headers the request must carry (templated, e.g. `"Bearer {{secret.token}}"`); a
    /// mismatch answers 401.
    #[serde(default)]
    pub require_headers: BTreeMap<String, String>,
    /// Status code of the answer (when `replies` is not given).
    #[serde(default = "ok")]
    pub status: u16,
    /// Headers of the answer (templated).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body of the answer (templated; see [`Reply::body`]).
    #[serde(default)]
    pub body: String,
    /// Answers in order, one per hit; the last repeats.
    #[serde(default)]
    pub replies: Vec<Reply>,
    /// Instead of a scripted answer, act as an object store on the `{*key}` capture.
    #[serde(default)]
    pub object: Option<ObjectAction>,
}

/// What an object-store route does. Objects live in the stand-in's memory, with the
/// request's `x-meta-*` headers as their metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectAction {
    /// Store the body under the key (201).
    Put,
    /// Return the body and its `x-meta-*` headers (404 when missing).
    Get,
    /// Remove it (204; 404 when missing).
    Delete,
    /// `{"objects": [{"key", "size"}]}` for the keys starting with `?prefix=`.
    List,
}

/// One answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// Status code.
    #[serde(default = "ok")]
    pub status: u16,
    /// Headers (templated).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body (templated): `{{n}}`, `{{state}}`, `{{standin}}`, `{{path.NAME}}`,
    /// `{{query.NAME}}`, `{{json.FIELD}}` (dotted), `{{secret.NAME}}`.
    #[serde(default)]
    pub body: String,
}

fn any() -> String {
    "*".into()
}
fn ok() -> u16 {
    200
}

impl Route {
    /// The reply for the `n`th hit (1-based).
    pub fn reply_for(&self, n: usize) -> Reply {
        match self.replies.len() {
            0 => Reply {
                status: self.status,
                headers: self.headers.clone(),
                body: self.body.clone(),
            },
            len => self.replies[(n.max(1) - 1).min(len - 1)].clone(),
        }
    }

    /// The captured segments if `path` matches this route's pattern.
    pub fn captures(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let mut caps = BTreeMap::new();
        let mut want = self.path.trim_matches('/').split('/');
        let mut got = path.trim_matches('/').split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some(caps),
                (Some(w), Some(g)) if w.starts_with("{*") && w.ends_with('}') => {
                    let rest: Vec<&str> = std::iter::once(g).chain(got.by_ref()).collect();
                    caps.insert(w[2..w.len() - 1].to_string(), rest.join("/"));
                    return Some(caps);
                }
                (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {
                    caps.insert(w[1..w.len() - 1].to_string(), percent_decode(g));
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    }
}

/// Decodes `%XX` escapes (a captured path segment).
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Script {
    /// Reads and checks a stand-in file.
    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Script::parse(path, &text)
    }

    /// Parses a stand-in script (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Script, ScriptError> {
        let invalid = |offset: Option<usize>, message: String, hint| {
            let (line, column) = offset.map_or((1, 1), |o| line_col(text, o));
            ScriptError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
                hint,
            }
        };
        let script: Script = toml::from_str(text).map_err(|e| {
            invalid(
                e.span().map(|s| s.start),
                e.message().to_string(),
                "a stand-in file has [plugin] (config, secrets, memory_mib), an optional `upstream` URL, and [[route]] tables (method, path, when, then, require_headers, status, headers, body, replies)",
            )
        })?;
        if script.upstream.is_some() && !script.routes.is_empty() {
            return Err(invalid(
                text.find("upstream"),
                "`upstream` and [[route]] tables are exclusive".into(),
                "forward everything to your server (`upstream`) or script every route, not both",
            ));
        }
        if let Some(up) = &script.upstream
            && !up.starts_with("http://")
        {
            return Err(invalid(
                text.find("upstream"),
                format!("upstream `{up}` is not an http:// URL"),
                "the stand-in forwards plain HTTP, e.g. upstream = \"http://127.0.0.1:9000\"",
            ));
        }
        for r in &script.routes {
            if !r.path.starts_with('/') {
                return Err(invalid(
                    text.find(&format!("\"{}\"", r.path)),
                    format!("route path `{}` does not start with `/`", r.path),
                    "paths are absolute, e.g. path = \"/v1/releases/{id}\"",
                ));
            }
        }
        for s in &script.plugin.secrets.names() {
            if !crate::runtime::secrets::valid_name(s) {
                return Err(invalid(
                    text.find(&format!("\"{s}\"")),
                    format!("`{s}` is not a secret name"),
                    "secret names are letters, digits, `-` and `_`",
                ));
            }
        }
        Ok(script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_capture_segments_and_rests() {
        let script = Script::parse(
            Path::new("s.toml"),
            "[[route]]\npath = \"/v1/apps/{app}/files/{*file}\"\nbody = \"x\"\n",
        )
        .unwrap();
        let r = &script.routes[0];
        let caps = r.captures("/v1/apps/web%20site/files/a/b.txt").unwrap();
        assert_eq!(caps["app"], "web site");
        assert_eq!(caps["file"], "a/b.txt");
        assert!(r.captures("/v1/apps/web").is_none());
        assert!(r.captures("/v1/apps//files/x").is_none());
        assert_eq!(r.method, "*");
        assert_eq!(r.reply_for(3).status, 200);
    }

    #[test]
    fn replies_run_in_order_and_the_last_repeats() {
        let script = Script::parse(
            Path::new("s.toml"),
            "[[route]]\npath = \"/s\"\nreplies = [{ body = \"a\" }, { status = 202, body = \"b\" }]\n",
        )
        .unwrap();
        let r = &script.routes[0];
        assert_eq!(r.reply_for(1).body, "a");
        assert_eq!(r.reply_for(2).status, 202);
        assert_eq!(r.reply_for(9).body, "b");
    }

    #[test]
    fn mistakes_name_the_line_and_give_a_hint() {
        let e = Script::parse(
            Path::new("standin.toml"),
            "[plugin]\nsecrets = [\"token\"]\n\n[[route]]\npath = \"/x\"\nstatsu = 200\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("standin.toml:6:1: unknown field `statsu`"),
            "{e}"
        );
        assert!(e.contains("hint: "), "{e}");

        let e = Script::parse(
            Path::new("s.toml"),
            "upstream = \"http://127.0.0.1:1\"\n[[route]]\npath = \"/x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("s.toml:1:1: `upstream` and [[route]] tables are exclusive"),
            "{e}"
        );

        let e = Script::parse(Path::new("s.toml"), "[[route]]\npath = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s.toml:2:8: route path `x` does not start with `/`"),
            "{e}"
        );
    }
}
