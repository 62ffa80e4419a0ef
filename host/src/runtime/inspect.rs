//! What a component file is: its digest, size, the plugin kinds it offers, the WIT package
//! version it was built against, and everything it imports.

use std::path::{Path, PathBuf};

use serde::Serialize;
use wasmtime::component::Component;

use super::plugin::sha256_hex;
use super::{LoadError, Runtime};

/// The WIT package plugins are built against.
pub const PACKAGE: &str = "deploy-agent:plugin";

/// A component's description.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: usize,
    /// sha256 of the file, hex (what agent.toml pins).
    pub sha256: String,
    /// The plugin kinds (our interfaces) it exports.
    pub kinds: Vec<String>,
    /// The versions of `deploy-agent:plugin` it was built against.
    pub package_versions: Vec<String>,
    /// Every export, by full name.
    pub exports: Vec<String>,
    /// Every import, by full name.
    pub imports: Vec<String>,
}

/// The plugin kinds a component exports, read from its top-level export section without
/// compiling it (cheap enough for `config check`). Unparsable bytes export nothing.
pub fn exported_kinds(bytes: &[u8]) -> Vec<super::Kind> {
    use super::Kind;
    const ALL: [Kind; 5] = [
        Kind::Validator,
        Kind::DeployTarget,
        Kind::Notifier,
        Kind::BackupStore,
        Kind::Traffic,
    ];
    let mut found = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Vec::new();
        };
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    let name = export.name.name;
                    for kind in ALL {
                        let prefix = format!("{PACKAGE}/{}@", kind.interface());
                        if name.starts_with(&prefix) && !found.contains(&kind) {
                            found.push(kind);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Inspects a component file. Compiles it (or uses the cache), runs nothing.
pub fn inspect(runtime: &Runtime, path: &Path) -> Result<Inspection, LoadError> {
    let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
        plugin: path.display().to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&wasm);
    let component = Component::new(runtime.engine(), &wasm).map_err(|e| LoadError::Compile {
        plugin: path.display().to_string(),
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let engine = runtime.engine();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let mut kinds = Vec::new();
    let mut versions = Vec::new();
    for name in &exports {
        if let Some(rest) = name.strip_prefix(&format!("{PACKAGE}/")) {
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            kinds.push(iface.to_string());
            if !version.is_empty() && !versions.contains(&version.to_string()) {
                versions.push(version.to_string());
            }
        }
    }
    Ok(Inspection {
        path: path.to_path_buf(),
        size: wasm.len(),
        sha256,
        kinds,
        package_versions: versions,
        exports,
        imports,
    })
}
