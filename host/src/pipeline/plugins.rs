//! Loading the plugins an environment uses, with the process-wide cache the daemon keeps.

use super::*;

/// Loads a plugin under its policy, with an environment's overrides merged into its config.
pub fn load_plugin(
    config: &Config,
    runtime: &Runtime,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Plugin, String> {
    let key = format!(
        "{}\0{name}\0{}",
        config.path.display(),
        serde_json::to_string(&overrides).unwrap_or_default()
    );
    let cache = PLUGIN_CACHE.get();
    if let Some(p) = cache.and_then(|c| {
        c.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
    }) {
        return Ok(p);
    }
    let mut spec = config.plugin_spec(name)?;
    if let (Some(o), serde_json::Value::Object(base)) = (overrides, &mut spec.config) {
        base.extend(o.clone());
    }
    let plugin = runtime.load(spec).map_err(|e| e.to_string())?;
    if let Some(c) = cache {
        c.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, plugin.clone());
    }
    Ok(plugin)
}

type PluginCache = std::sync::Mutex<std::collections::HashMap<String, Plugin>>;
static PLUGIN_CACHE: std::sync::OnceLock<PluginCache> = std::sync::OnceLock::new();

/// Keeps loaded plugins for the life of the process, so each run does not read, verify and
/// link them again: the daemon's choice, whose configuration is fixed while it runs (a changed
/// plugin file or secret takes a restart). The one-shot commands load afresh.
pub fn keep_loaded_plugins() {
    let _ = PLUGIN_CACHE.set(PluginCache::default());
}

/// The environment's plugins, loaded.
pub(crate) struct Plugins {
    pub target: Plugin,
    pub validators: Vec<Plugin>,
    pub notifiers: Vec<Plugin>,
    /// The off-site backup store, when the environment has one.
    pub offsite: Option<Plugin>,
}

pub(crate) fn load_plugins(config: &Config, env: &Environment) -> Result<Plugins, String> {
    let target_cfg = env.target.as_ref().ok_or_else(|| {
        format!(
            "environment `{}` has no deploy target: add [environments.{}.target] with `plugin = \"NAME\"`",
            env.name, env.name
        )
    })?;
    let runtime = Runtime::shared(config.cache_dir()).map_err(|e| e.to_string())?;
    let target = load_plugin(
        config,
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
            let p = load_plugin(config, &runtime, n, None)?;
            exports(&p, Kind::Validator, "validator").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let notifiers = env
        .notifiers
        .iter()
        .map(|n| {
            let p = load_plugin(config, &runtime, n, None)?;
            exports(&p, Kind::Notifier, "notifier").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let offsite = match &env.backup.offsite {
        None => None,
        Some(n) => {
            let p = load_plugin(config, &runtime, n, None)?;
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
/// start; returns how many distinct plugins that was. With [`keep_loaded_plugins`] they stay
/// loaded for the runs. Blocking (compiles on a cache miss).
pub fn preload(config: &Config) -> Result<usize, String> {
    let mut names = std::collections::BTreeSet::new();
    for env in config.environments.values().filter(|e| e.target.is_some()) {
        let p =
            load_plugins(config, env).map_err(|e| format!("environment `{}`: {e}", env.name))?;
        names.insert(p.target.name().to_string());
        names.extend(p.validators.iter().map(|v| v.name().to_string()));
        names.extend(p.notifiers.iter().map(|v| v.name().to_string()));
        names.extend(p.offsite.iter().map(|v| v.name().to_string()));
    }
    Ok(names.len())
}
