//! Loading the plugins an environment uses, kept by the agent when it keeps them (the daemon).

use super::*;

/// Loads a plugin under its policy, with an environment's overrides merged into its config.
pub fn load_plugin(
    config: &Config,
    runtime: &Runtime,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Plugin, String> {
    let mut spec = config.plugin_spec(name)?;
    if let (Some(o), serde_json::Value::Object(base)) = (overrides, &mut spec.config) {
        base.extend(o.clone());
    }
    runtime.load(spec).map_err(|e| e.to_string())
}

/// [`load_plugin`], through the agent's kept plugins when it keeps them.
fn agent_plugin(
    agent: &Agent,
    runtime: &Runtime,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Plugin, String> {
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
    /// The off-site backup store, when the environment has one.
    pub offsite: Option<Plugin>,
}

pub(crate) fn load_plugins(agent: &Agent, env: &Environment) -> Result<Plugins, String> {
    let config = &agent.config;
    let target_cfg = env.target.as_ref().ok_or_else(|| {
        format!(
            "environment `{}` has no deploy target: add [environments.{}.target] with `plugin = \"NAME\"`",
            env.name, env.name
        )
    })?;
    let runtime = Runtime::shared(config.cache_dir()).map_err(|e| e.to_string())?;
    let target = agent_plugin(
        agent,
        &runtime,
        &target_cfg.plugin,
        Some(&target_cfg.config),
    )?;
    let exports = |p: &Plugin, kind: Kind, role: &str| {
        if p.kinds().contains(&kind) {
            Ok(())
        } else {
            Err(format!(
                "plugin `{}` is the {role} of environment `{}`, but it does not export `{}`",
                p.name(),
                env.name,
                kind.interface()
            ))
        }
    };
    exports(&target, Kind::DeployTarget, "deploy target")?;
    let validators = env
        .validate
        .plugins
        .iter()
        .map(|n| {
            let p = agent_plugin(agent, &runtime, n, None)?;
            exports(&p, Kind::Validator, "validator").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let notifiers = env
        .notifiers
        .iter()
        .map(|n| {
            let p = agent_plugin(agent, &runtime, n, None)?;
            exports(&p, Kind::Notifier, "notifier").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let offsite = match &env.backup.offsite {
        None => None,
        Some(n) => {
            let p = agent_plugin(agent, &runtime, n, None)?;
            exports(&p, Kind::BackupStore, "off-site backup store")?;
            Some(p)
        }
    };
    Ok(Plugins {
        target,
        validators,
        notifiers,
        offsite,
    })
}

/// Loads every environment's plugins (those with a deploy target), as the daemon does at
/// start; returns how many distinct plugins that was. An agent that keeps plugins
/// ([`Agent::keeping_plugins`]) keeps them for the runs. Blocking (compiles on a cache miss).
pub fn preload(agent: &Agent) -> Result<usize, String> {
    let mut names = std::collections::BTreeSet::new();
    for env in agent
        .config
        .environments
        .values()
        .filter(|e| e.target.is_some())
    {
        let p = load_plugins(agent, env).map_err(|e| format!("environment `{}`: {e}", env.name))?;
        names.insert(p.target.name().to_string());
        names.extend(p.validators.iter().map(|v| v.name().to_string()));
        names.extend(p.notifiers.iter().map(|v| v.name().to_string()));
        names.extend(p.offsite.iter().map(|v| v.name().to_string()));
    }
    Ok(names.len())
}
