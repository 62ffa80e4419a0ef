//! Plugin projects: `deploy-agent plugin new` writes one that builds as is, and
//! `deploy-agent plugin build` builds it into a size-optimised component and pins it.
//!
//! Rust projects are a crate on the guest SDK (`plugins/sdk`); Python projects carry the WIT
//! package and a small helper module, and are built with componentize-py.

mod templates;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::runtime::Kind;
pub use templates::WIT;

/// A guest language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust on the SDK, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

/// Why a project could not be made or built.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// A name that cannot be a plugin name.
    #[error(
        "`{0}` is not a plugin name\n  hint: lowercase letters, digits and `-`, starting with a letter (e.g. `fly-io`)"
    )]
    Name(String),
    /// The directory is already there.
    #[error(
        "{0} already exists and is not empty\n  hint: pick another name, or --dir for another place"
    )]
    Exists(PathBuf),
    /// No template for this language and kind.
    #[error(
        "there is no Python template for a {0} yet\n  hint: Python templates exist for notifiers; write a {0} in Rust (--lang rust), or start from the notifier and implement the {0} interface from wit/"
    )]
    NoTemplate(&'static str),
    /// The SDK is not where this binary was built.
    #[error(
        "the plugin SDK is not at {0}\n  hint: pass --sdk with the path of plugins/sdk in a deploy-agent checkout"
    )]
    Sdk(PathBuf),
    /// The directory holds no plugin project.
    #[error(
        "{0} holds no plugin project (no Cargo.toml with a cdylib, no pyproject.toml with [tool.deploy-agent])\n  hint: run it in a directory `deploy-agent plugin new` made, or pass it with --dir"
    )]
    NotAProject(PathBuf),
    /// The build tool is missing.
    #[error("cannot run `{tool}`: {source}\n  hint: {hint}")]
    Tool {
        /// The tool.
        tool: String,
        /// Why.
        source: std::io::Error,
        /// How to get it.
        hint: &'static str,
    },
    /// The build failed (its own output says why).
    #[error("`{0}` failed (its output is above)")]
    BuildFailed(String),
    /// Local I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScaffoldError + '_ {
    move |source| ScaffoldError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewProject {
    /// The plugin's name (its agent.toml table).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its language.
    pub lang: Lang,
    /// Where (created; must not exist or be empty).
    pub dir: PathBuf,
    /// The SDK crate (Rust).
    pub sdk: PathBuf,
}

/// Where this binary's source tree has the SDK.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// Writes the project and returns the files written.
pub fn create(p: &NewProject) -> Result<Vec<PathBuf>, ScaffoldError> {
    let valid = p.name.starts_with(|c: char| c.is_ascii_lowercase())
        && p.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !p.name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::Name(p.name.clone()));
    }
    if p.dir.exists()
        && std::fs::read_dir(&p.dir)
            .map_err(io(&p.dir))?
            .next()
            .is_some()
    {
        return Err(ScaffoldError::Exists(p.dir.clone()));
    }
    let kind = p.kind.interface();
    let files = match p.lang {
        Lang::Rust => {
            let sdk = p
                .sdk
                .canonicalize()
                .map_err(|_| ScaffoldError::Sdk(p.sdk.clone()))?;
            if !sdk.join("Cargo.toml").is_file() {
                return Err(ScaffoldError::Sdk(p.sdk.clone()));
            }
            templates::rust(p.kind, &sdk.display().to_string())
        }
        Lang::Python if p.kind == Kind::Notifier => templates::python(p.kind),
        Lang::Python => return Err(ScaffoldError::NoTemplate(kind)),
    };
    let file = p.name.replace('-', "_");
    let dir_shown = p.dir.display().to_string();
    let env = p.name.to_ascii_uppercase().replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", &p.name)
            .replace("{{crate}}", &p.name)
            .replace("{{file}}", &file)
            .replace("{{kind}}", kind)
            .replace("{{dir}}", &dir_shown)
            .replace("{{env}}", &env)
            .replace("{{contract}}", templates::contract(p.kind))
            .replace("{{config}}", templates::config(p.kind))
    };
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = p.dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // The stand-in script's `{{...}}` are the stand-in's own templates: written verbatim.
        let text = if rel.ends_with(".toml") && rel.starts_with("standin") {
            text
        } else {
            fill(&text)
        };
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The plugin's name.
    pub name: String,
    /// Its kind, as the project declares it.
    pub kind: String,
    /// The component.
    pub wasm: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256 (hex), to pin.
    pub sha256: String,
}

#[derive(Deserialize)]
struct CargoToml {
    package: Option<CargoPackage>,
}
#[derive(Deserialize)]
struct CargoPackage {
    name: String,
    #[serde(default)]
    metadata: Option<toml::Table>,
}
#[derive(Deserialize)]
struct PyProject {
    project: Option<PyProjectMeta>,
    tool: Option<PyTool>,
}
#[derive(Deserialize)]
struct PyProjectMeta {
    name: String,
}
#[derive(Deserialize)]
struct PyTool {
    #[serde(rename = "deploy-agent")]
    deploy_agent: Option<PyPlugin>,
}
#[derive(Deserialize)]
struct PyPlugin {
    kind: String,
    world: String,
    #[serde(default = "app")]
    module: String,
}
fn app() -> String {
    "app".into()
}

/// Builds the project in `dir`: Rust with cargo (release, wasm32-wasip2, the crate's
/// size-optimised profile; `target_dir` if given), Python with componentize-py.
pub fn build(dir: &Path, target_dir: Option<&Path>) -> Result<Built, ScaffoldError> {
    let cargo_toml = dir.join("Cargo.toml");
    let pyproject = dir.join("pyproject.toml");
    if cargo_toml.is_file() {
        let text = std::fs::read_to_string(&cargo_toml).map_err(io(&cargo_toml))?;
        let manifest: CargoToml =
            toml::from_str(&text).map_err(|_| ScaffoldError::NotAProject(dir.to_path_buf()))?;
        let package = manifest
            .package
            .ok_or_else(|| ScaffoldError::NotAProject(dir.to_path_buf()))?;
        let kind = package
            .metadata
            .as_ref()
            .and_then(|m| m.get("deploy-agent"))
            .and_then(|d| d.get("kind"))
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let target = target_dir.map_or_else(|| dir.join("target"), Path::to_path_buf);
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(dir)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        run(
            cmd,
            "cargo build --release --target wasm32-wasip2",
            "install Rust (rustup.rs), then `rustup target add wasm32-wasip2`",
        )?;
        let wasm = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", package.name.replace('-', "_")));
        return finish(package.name, kind, wasm);
    }
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject).map_err(io(&pyproject))?;
        let project: PyProject =
            toml::from_str(&text).map_err(|_| ScaffoldError::NotAProject(dir.to_path_buf()))?;
        let (Some(meta), Some(plugin)) =
            (project.project, project.tool.and_then(|t| t.deploy_agent))
        else {
            return Err(ScaffoldError::NotAProject(dir.to_path_buf()));
        };
        let out_dir = dir.join("build");
        std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
        let wasm = out_dir.join(format!("{}.wasm", meta.name.replace('-', "_")));
        let tool = std::env::var("COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into());
        let mut cmd = Command::new(&tool);
        cmd.current_dir(dir)
            .args([
                "-d",
                "wit",
                "-w",
                &plugin.world,
                "componentize",
                &plugin.module,
                "-o",
            ])
            .arg(&wasm);
        run(
            cmd,
            &format!("{tool} componentize"),
            "pip install componentize-py==0.25.1 (or set COMPONENTIZE_PY to its path)",
        )?;
        return finish(meta.name, plugin.kind, wasm);
    }
    Err(ScaffoldError::NotAProject(dir.to_path_buf()))
}

/// Runs a build tool; its output goes to stderr, so stdout carries only the result.
fn run(mut cmd: Command, what: &str, hint: &'static str) -> Result<(), ScaffoldError> {
    let status = cmd
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|source| ScaffoldError::Tool {
            tool: what.to_string(),
            source,
            hint,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ScaffoldError::BuildFailed(what.to_string()))
    }
}

fn finish(name: String, kind: String, wasm: PathBuf) -> Result<Built, ScaffoldError> {
    let bytes = std::fs::read(&wasm).map_err(io(&wasm))?;
    Ok(Built {
        name,
        kind,
        size: bytes.len() as u64,
        sha256: crate::runtime::sha256_hex(&bytes),
        wasm,
    })
}
