//! The plugin runtime: loads WebAssembly component plugins and calls them in a sandbox.
//!
//! One [`Runtime`] per process holds the engine (pooling allocator, epoch interruption), the
//! linker with the host's imports, and the on-disk cache of compiled components. A [`Plugin`]
//! is a component pinned by sha256, pre-instantiated, with its policy and secrets; every call
//! gets a fresh instance, so nothing leaks between calls or environments.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use deploy_agent::runtime::{Runtime, PluginSpec, CallContext};
//! let runtime = Runtime::new(".deploy-agent/cache".into())?;
//! let plugin = runtime.load(PluginSpec::new("echo", "echo.wasm".into()))?;
//! let findings = plugin
//!     .validate(&CallContext::new("staging"), &deploy_agent::runtime::Artifact::version("v1"))
//!     .await?;
//! # Ok(()) }
//! ```

mod bindings;
mod budget;
mod cache;
mod egress;
mod engine;
mod error;
mod forms;
mod http;
pub mod inspect;
pub mod links;
mod plugin;
pub mod policy;
mod ranges;
mod reflect;
mod returned;
pub mod secrets;
mod signing;
mod state;

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use bindings::{
    Artifact, Event, EventKind, Finding, ObjectInfo, ObjectPage, PluginError, Release,
    ReleaseState, ReleaseStatus, Retryable, Severity, Staged, Strategy, TrafficStatus,
};
pub use cache::LoadSource;
pub use engine::EPOCH_TICK;
pub use error::{CallError, LoadError, describe};
pub use plugin::{CallContext, Kind, Plugin, PluginSpec};
pub use policy::{DirGrant, HostPattern, Policy, PolicyViolation};
pub use secrets::{Secret, SecretValue, Secrets, Sigv4Scope};

pub(crate) use http::tls_config;
pub(crate) use plugin::sha256_hex;
use state::PluginState;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine or linker could not be set up.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
}

/// The process's WebAssembly engine, linker and component cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    linker: Linker<PluginState>,
    cache: cache::ComponentCache,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts the engine, with compiled components cached under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Result<Self, RuntimeError> {
        Runtime::build(cache_dir, false)
    }

    fn build(cache_dir: PathBuf, keep_loaded: bool) -> Result<Self, RuntimeError> {
        let err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let engine = Arc::new(engine::new_engine().map_err(err)?);
        engine::start_ticker(Arc::downgrade(&engine));

        let mut linker = Linker::<PluginState>::new(&engine);
        // Every Rust wasip2 component imports wasi:cli, wasi:io, wasi:filesystem...; they are
        // linked, and the store's WasiCtx grants nothing but the policy's directories.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(err)?;
        bindings::deploy_agent::plugin::log::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(err)?;
        bindings::deploy_agent::plugin::secrets::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(err)?;
        bindings::deploy_agent::plugin::digest::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(err)?;
        bindings::deploy_agent::plugin::types::add_to_linker::<_, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(err)?;

        let tls = http::tls_config(&[]).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let cache = cache::ComponentCache::new(cache_dir, &engine, keep_loaded);
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                tls,
            }),
        })
    }

    /// Compiles `wasm` into the on-disk cache (or finds it there), without instantiating it,
    /// so a caller can say how a slow first compile goes.
    pub fn precompile(&self, wasm: &[u8]) -> Result<LoadSource, RuntimeError> {
        let digest = plugin::sha256_hex(wasm);
        self.inner
            .cache
            .load(&self.inner.engine, &digest, wasm)
            .map(|(_, source)| source)
            .map_err(|e| RuntimeError::Engine(format!("compiling the component: {e:#}")))
    }

    /// A runtime meant to serve many runs (the agent's: it holds one for its life): one
    /// engine, one epoch ticker and one pooling allocator however many runs it makes, and
    /// each component's code loaded once however many plugins (or environments) use it.
    pub fn pooled(cache_dir: PathBuf) -> Result<Self, RuntimeError> {
        Runtime::build(cache_dir, true)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Loads a plugin: reads it, checks its pin, compiles it (or loads it from the cache),
    /// links it and resolves its grants.
    /// This compiles on a cache miss (tens to hundreds of milliseconds of CPU); call it from
    /// a blocking context in async code.
    pub fn load(&self, spec: PluginSpec) -> Result<Plugin, LoadError> {
        plugin::load(self, spec)
    }
}
