//! deploy-agent: takes an application from "this commit" to "live in production" safely,
//! and back again when it goes wrong.
//!
//! The library behind the `deploy-agent` binary:
//! - [`config`]: `agent.toml`, typed and validated, errors with file, line and column;
//! - [`runtime`]: sandboxed WebAssembly component plugins (validators, deploy targets,
//!   notifiers, backup stores);
//! - [`db`]: the migration and backup core (PostgreSQL and SQLite);
//! - [`pipeline`]: one release through one environment, journaled;
//! - [`server`]: the daemon (`serve`): HTTP API, webhooks, event streams, metrics;
//! - [`cli`]: the command line.
#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod conformance;
pub mod db;
pub mod metrics;
pub mod pipeline;
mod random;
pub mod remote;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod time;
pub mod units;

#[cfg(test)]
mod layering {
    /// The library never reaches up into the command line: `cli/` is an edge that uses the
    /// library, not the other way round.
    #[test]
    fn nothing_outside_cli_imports_from_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![src.clone()];
        let mut offenders = Vec::new();
        // Spelled in pieces, so this file does not match itself.
        let needles = [["crate", "::cli"].concat(), ["super", "::cli"].concat()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("reads src") {
                let path = entry.expect("entry").path();
                if path == src.join("cli") || path == src.join("main.rs") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("reads a source file");
                    for (n, line) in text.lines().enumerate() {
                        if needles.iter().any(|n| line.contains(n.as_str())) {
                            offenders.push(format!(
                                "{}:{}: {}",
                                path.display(),
                                n + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "library code imports the CLI:\n{}",
            offenders.join("\n")
        );
    }

    /// The daemon's modules form no cycle: `server/mod.rs` uses its children, and a child
    /// uses siblings (never an item of `mod.rs`) without any path leading back to itself.
    #[test]
    fn the_server_modules_form_no_cycle() {
        use std::collections::{BTreeMap, BTreeSet};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("reads src/server") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .file_stem()
                    .expect("a name")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("reads a source file");
                // A file's own tests (`use super::*` there is the file itself) are not edges.
                let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                sources.insert(name, code);
            }
        }
        // A module directory (`console/`) is one node: its `mod.rs` names siblings as
        // `super::X`, its own children name them as `crate::server::X`.
        let mut dirs = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("reads src/server") {
            let path = entry.expect("entry").path();
            if path.join("mod.rs").is_file() {
                let name = path
                    .file_name()
                    .expect("a name")
                    .to_string_lossy()
                    .into_owned();
                let mut code = String::new();
                for f in std::fs::read_dir(&path).expect("reads a module directory") {
                    let f = f.expect("entry").path();
                    if f.extension().is_some_and(|e| e == "rs") {
                        let text = std::fs::read_to_string(&f).expect("reads a source file");
                        let text = text.split("#[cfg(test)]").next().unwrap_or("");
                        if f.file_name().is_some_and(|n| n == "mod.rs") {
                            code.push_str(text);
                        } else {
                            code.push_str(&text.replace("super::", "self::"));
                        }
                    }
                }
                dirs.insert(name, code.replace("crate::server::", "super::"));
            }
        }
        sources.extend(dirs);
        let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (name, code) in &sources {
            let out = edges.entry(name).or_default();
            if name == "mod" {
                for line in code.lines() {
                    let line = line.trim().trim_start_matches("pub ");
                    if let Some(child) = line.strip_prefix("mod ").and_then(|c| c.strip_suffix(';'))
                    {
                        out.insert(child.to_string());
                    }
                }
                continue;
            }
            for (i, _) in code.match_indices("super::") {
                let rest = &code[i + "super::".len()..];
                let first: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                    .collect();
                let targets: Vec<String> = if let Some(list) = first.strip_prefix('{') {
                    let end = rest.find('}').unwrap_or(rest.len());
                    let _ = list;
                    rest[1..end]
                        .split(',')
                        .map(|t| t.trim().split("::").next().unwrap_or("").to_string())
                        .collect()
                } else {
                    vec![first]
                };
                for t in targets.into_iter().filter(|t| !t.is_empty()) {
                    if sources.contains_key(&t) {
                        out.insert(t);
                    } else {
                        // An item defined in `server/mod.rs`.
                        out.insert("mod".to_string());
                    }
                }
            }
        }
        // Depth-first search for a path back to where it started.
        fn reaches(
            edges: &BTreeMap<&str, BTreeSet<String>>,
            from: &str,
            goal: &str,
            seen: &mut BTreeSet<String>,
            path: &mut Vec<String>,
        ) -> bool {
            for next in edges.get(from).into_iter().flatten() {
                path.push(next.clone());
                if next == goal
                    || (seen.insert(next.clone()) && reaches(edges, next, goal, seen, path))
                {
                    return true;
                }
                path.pop();
            }
            false
        }
        for start in edges.keys() {
            let mut path = vec![start.to_string()];
            if reaches(&edges, start, start, &mut BTreeSet::new(), &mut path) {
                panic!("server modules form a cycle: {}", path.join(" -> "));
            }
        }
    }
}
