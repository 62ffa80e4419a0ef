//! Compiled components on disk, keyed by the wasm's sha256 and the engine's compatibility
//! hash, so an agent restart or a second process loads a plugin in a fraction of a millisecond.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component is (or would be) cached.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    /// Components already loaded by this runtime, by digest, when it keeps them (the
    /// process's shared runtime): a plugin configured several times (one per environment,
    /// with different overrides) shares one copy of its code.
    loaded: Option<std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Component>>>>,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now (and cached, if the cache is writable).
    Compiled,
    /// Loaded from the on-disk cache.
    Cache,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine, keep_loaded: bool) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
            loaded: keep_loaded.then(Default::default),
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Loads from the cache, or compiles and stores.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, LoadSource)> {
        let memo = |c: &Component| {
            if let Some(loaded) = &self.loaded {
                loaded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(digest.to_string(), c.clone());
            }
        };
        if let Some(c) = self.loaded.as_ref().and_then(|l| {
            l.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(digest)
                .cloned()
        }) {
            return Ok((c, LoadSource::Cache));
        }
        let path = self.path(digest);
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(c) => {
                    memo(&c);
                    return Ok((c, LoadSource::Cache));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache entry");
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the component cache");
        }
        memo(&component);
        Ok((component, LoadSource::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        create_private_dir(&self.dir)?;
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(&bytes)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, path)
    }
}

/// Loads a compiled component written by [`ComponentCache::store`].
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file was produced by `Component::serialize` of a
    // compatible engine and not modified since. The cache directory is created by the agent
    // with mode 0700, entries are written under a temporary name and renamed into place, and
    // the name carries the engine's compatibility hash (wasmtime checks it again on load).
    unsafe { Component::deserialize_file(engine, path) }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}
