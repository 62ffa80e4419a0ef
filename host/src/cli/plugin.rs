//! `deploy-agent plugin inspect` and `deploy-agent plugin check`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use super::{EXIT_FAILED, Output, human_size};
use crate::config::Config;
use crate::runtime::{LoadSource, Runtime, inspect::inspect as inspect_file};

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
        eprintln!("warning: {w}\n");
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
                    format!("{n} from {} -> {}", s.source, hosts.join(", "))
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
