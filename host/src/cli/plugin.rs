//! `deploy-agent plugin`: inspect, check, new, build and test (the conformance kit).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use super::{EXIT_FAILED, Output, human_size};
use crate::config::Config;
use crate::runtime::{Kind, LoadSource, Runtime, inspect::inspect as inspect_file};

pub(super) fn inspect(file: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let dir = tempfile_dir()?;
    let runtime = Runtime::new(dir)?;
    let info = inspect_file(&runtime, file)?;
    if output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("{}", info.path.display());
    say!(
        "  size      {} ({} bytes)",
        human_size(info.size as u64),
        info.size
    );
    say!("  sha256    {}", info.sha256);
    if info.kinds.is_empty() {
        say!("  kinds     none: exports no deploy-agent:plugin interface");
    } else {
        say!("  kinds     {}", info.kinds.join(", "));
    }
    say!(
        "  package   {}",
        if info.package_versions.is_empty() {
            "-".to_string()
        } else {
            info.package_versions
                .iter()
                .map(|v| format!("{}@{v}", crate::runtime::inspect::PACKAGE))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    say!("  exports");
    for e in &info.exports {
        say!("    {e}");
    }
    say!("  imports");
    for i in &info.imports {
        say!("    {i}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A scratch cache for `inspect`, which must not need a configuration.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    Ok(std::env::temp_dir().join(format!("deploy-agent-inspect-{}", std::process::id())))
}

#[derive(Debug, Serialize)]
struct PluginReport {
    name: String,
    ok: bool,
    error: Option<String>,
    path: String,
    sha256: Option<String>,
    pinned: bool,
    kinds: Vec<String>,
    allowed_hosts: Vec<String>,
    dirs: Vec<String>,
    secrets: Vec<String>,
    memory_mib: u64,
    timeout_ms: u64,
    load_ms: Option<f64>,
    from_cache: Option<bool>,
}

pub(super) async fn check(config_path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    for w in &config.warnings {
        tell!("warning: {w}\n");
    }
    let runtime = Runtime::new(config.cache_dir())?;
    let mut reports = Vec::new();
    for (name, p) in &config.plugins {
        let mut report = PluginReport {
            name: name.clone(),
            ok: false,
            error: None,
            path: p.path.display().to_string(),
            sha256: None,
            pinned: p.sha256.is_some(),
            kinds: Vec::new(),
            allowed_hosts: p
                .policy
                .allowed_hosts
                .iter()
                .map(ToString::to_string)
                .collect(),
            dirs: p
                .policy
                .dirs
                .iter()
                .map(|d| {
                    format!(
                        "{} -> {} ({})",
                        d.host.display(),
                        d.guest,
                        if d.writable { "rw" } else { "ro" }
                    )
                })
                .collect(),
            secrets: p
                .secrets
                .iter()
                .map(|(n, s)| {
                    let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
                    format!("{n} from {} -> {}", s.reference, hosts.join(", "))
                })
                .collect(),
            memory_mib: p.policy.memory_bytes >> 20,
            timeout_ms: p.policy.timeout.as_millis() as u64,
            load_ms: None,
            from_cache: None,
        };
        let started = Instant::now();
        let loaded = config
            .plugin_spec(name)
            .map_err(anyhow::Error::msg)
            .and_then(|spec| runtime.load(spec).map_err(anyhow::Error::from));
        match loaded {
            Err(e) => report.error = Some(format!("{e:#}")),
            Ok(plugin) => {
                report.sha256 = Some(plugin.digest().to_string());
                report.kinds = plugin
                    .kinds()
                    .iter()
                    .map(|k| k.interface().to_string())
                    .collect();
                report.from_cache = Some(plugin.source() == LoadSource::Cache);
                match plugin.check().await {
                    Ok(()) => {
                        report.ok = true;
                        report.load_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                    }
                    Err(e) => report.error = Some(e.to_string()),
                }
            }
        }
        reports.push(report);
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    if output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            say!(
                "plugin `{}`: {}",
                r.name,
                if r.ok { "ok" } else { "FAILED" }
            );
            if let Some(e) = &r.error {
                for (i, line) in e.lines().enumerate() {
                    say!("  {} {line}", if i == 0 { "error  " } else { "       " });
                }
            }
            say!("  file     {}", r.path);
            match (&r.sha256, r.pinned) {
                (Some(d), true) => say!("  sha256   {d} (pinned, matches)"),
                (Some(d), false) => say!("  sha256   {d} (NOT pinned: add it to agent.toml)"),
                (None, _) => {}
            }
            if !r.kinds.is_empty() {
                say!("  kinds    {}", r.kinds.join(", "));
            }
            say!(
                "  policy   memory {} MiB, timeout {} ms, hosts: {}",
                r.memory_mib,
                r.timeout_ms,
                if r.allowed_hosts.is_empty() {
                    "none".to_string()
                } else {
                    r.allowed_hosts.join(", ")
                }
            );
            for d in &r.dirs {
                say!("  dir      {d}");
            }
            for s in &r.secrets {
                say!("  secret   {s}");
            }
            if let (Some(ms), Some(cache)) = (r.load_ms, r.from_cache) {
                say!(
                    "  loaded   {ms:.1} ms ({})",
                    if cache { "from cache" } else { "compiled" }
                );
            }
        }
        say!(
            "\n{} plugin{} checked, {failed} failed",
            reports.len(),
            if reports.len() == 1 { "" } else { "s" }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// The kinds on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    /// Puts releases on a platform (deploy, status, promote, rollback, list-releases).
    DeployTarget,
    /// Checks a release before anything changes.
    Validator,
    /// Tells people what a deployment does.
    Notifier,
    /// Keeps backups off the deploy host.
    BackupStore,
    /// Shifts a share of traffic to a staged release (a deploy target that also exports
    /// `traffic`: blue-green and canary).
    Traffic,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::DeployTarget => Kind::DeployTarget,
            KindArg::Validator => Kind::Validator,
            KindArg::Notifier => Kind::Notifier,
            KindArg::BackupStore => Kind::BackupStore,
            KindArg::Traffic => Kind::Traffic,
        }
    }
}

/// `deploy-agent plugin test`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The stand-in file gives the plugin its config and secrets and plays the \
platform: scripted [[route]]s, or `upstream` (or --upstream) to forward to a server you run. \
`deploy-agent plugin new` writes one next to each new plugin; docs/write-a-plugin.md explains it."
)]
pub struct TestArgs {
    /// The component (.wasm).
    pub file: PathBuf,
    /// The contract to check (default: every kind the component exports, in turn, each
    /// against a fresh stand-in; `--output json` then prints a list of reports).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// The stand-in file (TOML).
    #[arg(long, value_name = "STANDIN")]
    pub against: PathBuf,
    /// Forward every request to this server (http://HOST:PORT) instead of the file's routes.
    #[arg(long)]
    pub upstream: Option<String>,
    /// The plugin's per-call deadline, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Where compiled components are cached.
    #[arg(long, default_value = ".deploy-agent/cache")]
    pub cache: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub(super) async fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let kinds: Vec<Kind> = match args.kind {
        Some(k) => vec![k.into()],
        None => {
            let bytes = std::fs::read(&args.file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
            let kinds = crate::runtime::inspect::exported_kinds(&bytes);
            if kinds.is_empty() {
                anyhow::bail!(
                    "{} exports none of the plugin interfaces (is it a component built against deploy-agent:plugin?)\n  hint: `deploy-agent plugin inspect {}` lists what it exports",
                    args.file.display(),
                    args.file.display()
                );
            }
            kinds
        }
    };
    if args.output == Output::Human {
        compile_with_progress(&args.file, &args.cache)?;
    }
    let mut reports = Vec::new();
    for kind in &kinds {
        let options = crate::conformance::Options {
            wasm: args.file.clone(),
            kind: *kind,
            standin: args.against.clone(),
            upstream: args.upstream.clone(),
            timeout: std::time::Duration::from_millis(args.timeout_ms),
            cache_dir: args.cache.clone(),
        };
        if args.output == Output::Human {
            tell!(
                "checking {} as a {} against {} ...",
                args.file.display(),
                kind.interface(),
                args.against.display()
            );
        }
        let began = std::time::Instant::now();
        let report = crate::conformance::run(&options).await?;
        if args.output == Output::Human {
            print_report(&report, began.elapsed());
        }
        reports.push(report);
    }
    if args.output == Output::Json {
        if args.kind.is_some() {
            say!("{}", serde_json::to_string_pretty(&reports[0])?);
        } else {
            say!("{}", serde_json::to_string_pretty(&reports)?);
        }
    }
    Ok(if reports.iter().all(|r| r.failed() == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Compiles the component into the cache before the scenario, saying so while it takes
/// (a first compile of a large component takes tens of seconds on a small machine).
fn compile_with_progress(file: &Path, cache: &Path) -> anyhow::Result<()> {
    let runtime = Runtime::new(cache.to_path_buf())?;
    let began = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (done, name) = (done.clone(), file.display().to_string());
        std::thread::spawn(move || {
            let mut said = false;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let secs = began.elapsed().as_secs();
                if secs >= 2 && (!said || secs.is_multiple_of(5)) {
                    tell!("compiling {name} ... {secs} s (once; later runs use the cache)");
                    said = true;
                    std::thread::sleep(std::time::Duration::from_millis(800));
                }
            }
        })
    };
    let wasm =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let out = tokio::task::block_in_place(|| runtime.precompile(&wasm));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.join();
    if out? == LoadSource::Compiled {
        tell!(
            "compiled {} in {:.1} s (cached in {} for later runs)",
            file.display(),
            began.elapsed().as_secs_f64(),
            cache.display()
        );
    }
    Ok(())
}

fn print_report(report: &crate::conformance::Report, took: std::time::Duration) {
    for c in &report.checks {
        let mark = match c.outcome {
            crate::conformance::Outcome::Pass => "pass",
            crate::conformance::Outcome::Fail => "FAIL",
            crate::conformance::Outcome::Skip => "skip",
        };
        say!("{mark}  {}", c.name);
        say!("      {}", c.detail);
    }
    let count = |o| report.checks.iter().filter(|c| c.outcome == o).count();
    say!(
        "\n{}: {} passed, {} failed, {} skipped in {:.1} s; {} requests to the stand-in ({}){}",
        report.kind.interface(),
        count(crate::conformance::Outcome::Pass),
        count(crate::conformance::Outcome::Fail),
        count(crate::conformance::Outcome::Skip),
        took.as_secs_f64(),
        report.requests,
        report.standin,
        report
            .slowest_call
            .as_ref()
            .map(|(op, ms)| format!("; slowest call: {op} {ms:.1} ms"))
            .unwrap_or_default()
    );
    say!("sha256 {}\n", report.sha256);
}

/// Guest languages for `plugin new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LangArg {
    /// A Rust crate on the SDK (every kind).
    #[default]
    Rust,
    /// A Python project built with componentize-py (notifiers).
    Python,
}

/// `deploy-agent plugin new`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Then: cd NAME && deploy-agent plugin build && deploy-agent plugin test ... \
(the project's README has the exact commands). The walkthrough: docs/write-a-plugin.md."
)]
pub struct NewArgs {
    /// The plugin's name (lowercase, digits, `-`): its directory and its agent.toml table.
    pub name: String,
    /// What it does.
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// The language it is written in.
    #[arg(long, value_enum, default_value_t)]
    pub lang: LangArg,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The SDK crate a Rust plugin depends on (default: plugins/sdk of the checkout this
    /// binary was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

pub(super) fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let project = crate::scaffold::NewProject {
        name: args.name.clone(),
        kind: args.kind.into(),
        lang: match args.lang {
            LangArg::Rust => crate::scaffold::Lang::Rust,
            LangArg::Python => crate::scaffold::Lang::Python,
        },
        dir: dir.clone(),
        sdk: args
            .sdk
            .clone()
            .unwrap_or_else(crate::scaffold::default_sdk),
    };
    let files = crate::scaffold::create(&project)?;
    say!(
        "created {} plugin `{}` in {} ({} files)",
        project.kind.interface(),
        args.name,
        dir.display(),
        files.len()
    );
    let shown: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&dir).ok())
        .map(|f| f.display().to_string())
        .filter(|f| !f.starts_with("wit/"))
        .collect();
    say!("  {}", shown.join(", "));
    if files.iter().any(|f| f.starts_with(dir.join("wit"))) {
        say!("  wit/ (the deploy-agent:plugin@0.1.1 package it builds against)");
    }
    say!("\nnext:");
    say!("  cd {}", dir.display());
    say!("  deploy-agent plugin build");
    say!(
        "  deploy-agent plugin test {} --kind {} --against standin.toml",
        match args.lang {
            LangArg::Rust => format!(
                "target/wasm32-wasip2/release/{}.wasm",
                args.name.replace('-', "_")
            ),
            LangArg::Python => format!("build/{}.wasm", args.name.replace('-', "_")),
        },
        project.kind.interface()
    );
    Ok(ExitCode::SUCCESS)
}

/// `deploy-agent plugin build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The project (default: the current directory).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Cargo's target directory for Rust plugins (default: DIR/target).
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub(super) fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let built = crate::scaffold::build(&args.dir, args.target_dir.as_deref())?;
    let wasm = built.wasm.canonicalize().unwrap_or(built.wasm.clone());
    if args.output == Output::Json {
        say!(
            "{}",
            serde_json::json!({
                "name": built.name,
                "kind": built.kind,
                "wasm": wasm,
                "size": built.size,
                "sha256": built.sha256,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!("built {} ({})", wasm.display(), human_size(built.size));
    say!("sha256 {}", built.sha256);
    say!("\npin it in agent.toml:\n");
    say!("[plugins.{}]", built.name);
    say!("path = \"{}\"", wasm.display());
    say!("sha256 = \"{}\"", built.sha256);
    if !built.kind.is_empty() {
        say!(
            "\ncheck it against its stand-in:\n  deploy-agent plugin test {} --kind {} --against {}",
            wasm.display(),
            built.kind,
            args.dir.join("standin.toml").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
