//! Shell completion: `completions SHELL` prints a script that asks this binary what to offer
//! as the user types, so the names are the real ones: environments from agent.toml (the one
//! `--config` names on the command line being completed), releases from the state store.
//! Completing reads; it never creates the state store or writes anything.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter;

/// The variable the script sets when it asks for candidates.
const VAR: &str = "COMPLETE";

/// Answers the shell and exits, when the script is asking; otherwise returns at once.
pub(super) fn answer_if_asked() {
    use clap::CommandFactory as _;
    clap_complete::CompleteEnv::with_factory(super::Cli::command)
        .var(VAR)
        .complete();
}

/// The script for `shell`: it calls this very binary back for candidates.
pub(super) fn script(shell: clap_complete::Shell) -> std::io::Result<String> {
    use clap_complete::env::{Bash, Elvish, Fish, Powershell, Zsh};
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &Bash,
        clap_complete::Shell::Zsh => &Zsh,
        clap_complete::Shell::Fish => &Fish,
        clap_complete::Shell::Elvish => &Elvish,
        _ => &Powershell,
    };
    let bin = std::env::current_exe()?;
    let mut out = Vec::new();
    completer.write_registration(
        VAR,
        "deploy-agent",
        "deploy-agent",
        &bin.to_string_lossy(),
        &mut out,
    )?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The value of `flag` on the command line being completed (`--flag V` or `--flag=V`).
fn typed(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").collect();
    args.windows(2).find_map(|w| {
        if w[0] == flag {
            Some(w[1].clone())
        } else {
            w[0].strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// The configuration the command line being completed names (default ./agent.toml).
fn config() -> Option<crate::config::Config> {
    let path = PathBuf::from(typed("--config").unwrap_or_else(|| "agent.toml".into()));
    crate::config::Config::load(&path).ok()
}

/// The environments of agent.toml, with what they extend as help.
pub(super) fn environments(current: &OsStr) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    let Some(config) = config() else {
        return Vec::new();
    };
    config
        .environments
        .values()
        .filter(|e| e.name.starts_with(&*prefix))
        .map(|e| {
            let help = match &e.extends {
                Some(parent) => format!("extends {parent}"),
                None => "environment".into(),
            };
            CompletionCandidate::new(&e.name).help(Some(help.into()))
        })
        .collect()
}

/// The releases in the state store (of the environment typed with `-e/--env`, else of
/// every environment), newest first, with their version and state as help.
pub(super) fn releases(current: &OsStr) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy().into_owned();
    let Some(config) = config() else {
        return Vec::new();
    };
    let envs: Vec<String> = match typed("--env").or_else(|| typed("-e")) {
        Some(env) => vec![env],
        None => config.environments.keys().cloned().collect(),
    };
    // Reading only: no state store yet means no releases, not a new store.
    if config.state_url.is_none() && !config.state_dir.join("state.db").exists() {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    runtime.block_on(async {
        let read = async {
            let store = crate::pipeline::open_store(&config).await.ok()?;
            let mut out = Vec::new();
            for env in &envs {
                for r in store.releases(env).await.unwrap_or_default() {
                    if r.id.starts_with(&prefix) {
                        let help = format!("{env}: {} ({})", r.version, r.state.as_str());
                        out.push(CompletionCandidate::new(r.id).help(Some(help.into())));
                    }
                }
            }
            Some(out)
        };
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    })
}
