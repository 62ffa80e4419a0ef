//! Loading the plugins an environment uses, kept by the agent when it keeps them (the daemon).

use super::*;
use crate::runtime::{LoadError, RuntimeError};

/// Why an environment's plugins could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginsError {
    /// agent.toml does not say how to load it (no such plugin, a secret that cannot be read).
    #[error("{0}")]
    Config(String),
    /// The sandbox's engine could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The component did not load (missing, pinned to another digest, not a component...).
    #[error(transparent)]
    Load(Box<LoadError>),
    /// The environment has no deploy target.
    #[error(
        "environment `{0}` has no deploy target: add [environments.{0}.target] with `plugin = \"NAME\"`"
    )]
    NoTarget(String),
    /// A plugin configured in a role it does not export.
    #[error(
        "plugin `{plugin}` is the {role} of environment `{environment}`, but it does not export `{interface}`"
    )]
    Role {
        /// The plugin.
        plugin: String,
        /// `deploy target`, `validator`, `notifier`, `off-site backup store`.
        role: &'static str,
        /// The environment.
        environment: String,
        /// The WIT interface it would need.
        interface: &'static str,
    },
    /// Which environment's plugins failed (loading them all, as the daemon does at start).
    #[error("environment `{environment}`: {source}")]
    In {
        /// The environment.
        environment: String,
        /// Why.
        source: Box<PluginsError>,
    },
}

impl From<LoadError> for PluginsError {
    fn from(e: LoadError) -> Self {
        PluginsError::Load(Box::new(e))
    }
}

/// Loads a plugin under its policy, with an environment's overrides merged into its config.
pub fn load_plugin(
    config: &Config,
    runtime: &Runtime,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Plugin, PluginsError> {
    let mut spec = config.plugin_spec(name).map_err(PluginsError::Config)?;
    if let (Some(o), serde_json::Value::Object(base)) = (overrides, &mut spec.config) {
        base.extend(o.clone());
    }
    Ok(runtime.load(spec)?)
}

/// [`load_plugin`], through the agent's kept plugins when it keeps them.
fn agent_plugin(
    agent: &Agent,
    runtime: &Runtime,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Plugin, PluginsError> {
    let key = format!(
        "{name}\0{}",
        serde_json::to_string(&overrides).unwrap_or_default()
    );
    if let Some(p) = agent.kept(&key) {
        return Ok(p);
    }
    let plugin = load_plugin(&agent.config, runtime, name, overrides)?;
    agent.keep(key, &plugin);
    Ok(plugin)
}

/// The environment's plugins, loaded.
pub(crate) struct Plugins {
    pub target: Plugin,
    pub validators: Vec<Plugin>,
    pub notifiers: Vec<Plugin>,
    /// Notifiers that could not be loaded, with why (a warning, never fatal).
    pub unloaded_notifiers: Vec<String>,
    /// The off-site backup store, when the environment has one.
    pub offsite: Option<Plugin>,
}

/// The environment's deploy target alone (what `status` asks about drift).
pub(crate) fn load_target(agent: &Agent, env: &Environment) -> Result<Plugin, PluginsError> {
    let target_cfg = env
        .target
        .as_ref()
        .ok_or_else(|| PluginsError::NoTarget(env.name.clone()))?;
    let runtime = agent.runtime()?;
    agent_plugin(agent, runtime, &target_cfg.plugin, Some(&target_cfg.config))
}

pub(crate) fn load_plugins(agent: &Agent, env: &Environment) -> Result<Plugins, PluginsError> {
    let runtime = agent.runtime()?;
    let target = load_target(agent, env)?;
    let exports = |p: &Plugin, kind: Kind, role: &'static str| {
        if p.kinds().contains(&kind) {
            Ok(())
        } else {
            Err(PluginsError::Role {
                plugin: p.name().to_string(),
                role,
                environment: env.name.clone(),
                interface: kind.interface(),
            })
        }
    };
    exports(&target, Kind::DeployTarget, "deploy target")?;
    let validators = env
        .validate
        .plugins
        .iter()
        .map(|n| {
            let p = agent_plugin(agent, runtime, n, None)?;
            exports(&p, Kind::Validator, "validator").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    // Notifiers are never fatal, not even when one cannot load (its secret is missing, say):
    // the run goes on without it and says so where undelivered notifications are reported.
    let mut notifiers = Vec::new();
    let mut unloaded_notifiers = Vec::new();
    for n in &env.notifiers {
        match agent_plugin(agent, runtime, n, None)
            .and_then(|p| exports(&p, Kind::Notifier, "notifier").map(|()| p))
        {
            Ok(p) => notifiers.push(p),
            Err(e) => {
                tracing::warn!(notifier = %n, environment = %env.name, "notifier not loaded: {e}");
                unloaded_notifiers.push(format!("{n}: not loaded, so not told: {e}"));
            }
        }
    }
    let offsite = match &env.backup.offsite {
        None => None,
        Some(n) => {
            let p = agent_plugin(agent, runtime, n, None)?;
            exports(&p, Kind::BackupStore, "off-site backup store")?;
            Some(p)
        }
    };
    Ok(Plugins {
        target,
        validators,
        notifiers,
        unloaded_notifiers,
        offsite,
    })
}

/// Loads every environment's plugins (those with a deploy target), as the daemon does at
/// start; returns how many distinct plugins that was. An agent that keeps plugins
/// ([`Agent::keeping_plugins`]) keeps them for the runs. Blocking (compiles on a cache miss).
pub fn preload(agent: &Agent) -> Result<usize, PluginsError> {
    let mut names = std::collections::BTreeSet::new();
    for env in agent
        .config
        .environments
        .values()
        .filter(|e| e.target.is_some())
    {
        let p = load_plugins(agent, env).map_err(|e| PluginsError::In {
            environment: env.name.clone(),
            source: Box::new(e),
        })?;
        names.insert(p.target.name().to_string());
        names.extend(p.validators.iter().map(|v| v.name().to_string()));
        names.extend(p.notifiers.iter().map(|v| v.name().to_string()));
        names.extend(p.offsite.iter().map(|v| v.name().to_string()));
    }
    Ok(names.len())
}

/// A backup-store plugin by name (an environment's `offsite`, or the state backup's).
pub(crate) fn load_backup_store(agent: &Agent, name: &str) -> Result<Plugin, PluginsError> {
    let p = agent_plugin(agent, agent.runtime()?, name, None)?;
    if p.kinds().contains(&Kind::BackupStore) {
        Ok(p)
    } else {
        Err(PluginsError::Role {
            plugin: p.name().to_string(),
            role: "off-site backup store",
            environment: String::new(),
            interface: Kind::BackupStore.interface(),
        })
    }
}

/// An environment's notifiers that load (those that do not are logged and left out).
pub(crate) fn load_notifiers(agent: &Agent, env: &Environment) -> Vec<Plugin> {
    let Ok(runtime) = agent.runtime() else {
        return Vec::new();
    };
    env.notifiers
        .iter()
        .filter_map(|n| match agent_plugin(agent, runtime, n, None) {
            Ok(p) if p.kinds().contains(&Kind::Notifier) => Some(p),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(notifier = %n, environment = %env.name, "notifier not loaded: {e}");
                None
            }
        })
        .collect()
}
