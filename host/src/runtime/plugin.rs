//! A loaded plugin and the machinery of one call: a fresh instance, the deadline, the caps,
//! and the classification of what went wrong.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tracing::Instrument;
use wasmtime::component::{Instance, InstancePre, ResourceTableError};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi_http::FieldMapError;

use super::Runtime;
use super::bindings::{
    self, Artifact, Event, Finding, ObjectInfo, ObjectPage, PluginError, Release, ReleaseStatus,
    Staged, Strategy, TrafficStatus, backup_store, deploy_target, notifier, traffic, validator,
};
use super::cache::LoadSource;
use super::error::{CallError, LoadError};
use super::http::Guard;
use super::policy::{Policy, PolicyViolation};
use super::returned::{MAX_TEXT, ReturnSize, cut, emit_log};
use super::secrets::Secrets;
use super::state::{CallTag, PluginState};

/// What the host needs to load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The plugin's name in agent.toml.
    pub name: String,
    /// The `.wasm` component.
    pub path: PathBuf,
    /// The pinned sha256 (hex); `None` loads without a pin (only `plugin inspect` does this).
    pub sha256: Option<String>,
    /// What it may do.
    pub policy: Policy,
    /// The secrets it may reference.
    pub secrets: Secrets,
    /// Its settings, passed to every call as JSON.
    pub config: serde_json::Value,
}

impl PluginSpec {
    /// A spec with nothing granted and an empty config.
    pub fn new(name: &str, path: PathBuf) -> Self {
        PluginSpec {
            name: name.to_string(),
            path,
            sha256: None,
            policy: Policy::default(),
            secrets: Secrets::default(),
            config: serde_json::Value::Object(Default::default()),
        }
    }
}

/// The plugin kinds, one per exported interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Exports `validator`.
    Validator,
    /// Exports `deploy-target`.
    DeployTarget,
    /// Exports `notifier`.
    Notifier,
    /// Exports `backup-store`.
    BackupStore,
    /// Exports `traffic` (0.1.1).
    Traffic,
}

impl Kind {
    /// The interface's name in the WIT package.
    pub fn interface(self) -> &'static str {
        match self {
            Kind::Validator => "validator",
            Kind::DeployTarget => "deploy-target",
            Kind::Notifier => "notifier",
            Kind::BackupStore => "backup-store",
            Kind::Traffic => "traffic",
        }
    }
}

/// Who is calling and why: passed to the plugin with its config.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The environment.
    pub environment: String,
    /// The deployment run, empty outside one.
    pub deployment_id: String,
}

impl CallContext {
    /// A context outside any deployment run.
    pub fn new(environment: &str) -> Self {
        CallContext {
            environment: environment.to_string(),
            deployment_id: String::new(),
        }
    }
}

impl Artifact {
    /// An artifact known only by its version.
    pub fn version(version: &str) -> Self {
        Artifact {
            version: version.to_string(),
            path: None,
            digest: None,
            labels: Vec::new(),
        }
    }
}

/// A loaded plugin. Cheap to clone; every call runs in a fresh instance.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    path: PathBuf,
    digest: String,
    size: usize,
    source: LoadSource,
    runtime: Runtime,
    pre: InstancePre<PluginState>,
    policy: Arc<Policy>,
    secrets: Arc<Secrets>,
    /// TLS roots for this plugin's requests (the runtime's, or with its granted CAs added).
    tls: Arc<rustls::ClientConfig>,
    config_json: String,
    validator: Option<validator::GuestIndices>,
    deploy_target: Option<deploy_target::GuestIndices>,
    notifier: Option<notifier::GuestIndices>,
    backup_store: Option<backup_store::GuestIndices>,
    traffic: Option<traffic::GuestIndices>,
    calls: AtomicU64,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .field("digest", &self.inner.digest)
            .field("kinds", &self.kinds())
            .finish_non_exhaustive()
    }
}

/// The sha256 of a file's bytes, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(super) fn load(runtime: &Runtime, spec: PluginSpec) -> Result<Plugin, LoadError> {
    let name = spec.name.clone();
    let wasm = std::fs::read(&spec.path).map_err(|source| LoadError::Read {
        plugin: name.clone(),
        path: spec.path.clone(),
        source,
    })?;
    let digest = sha256_hex(&wasm);
    if let Some(expected) = &spec.sha256 {
        let expected = expected
            .trim()
            .trim_start_matches("sha256:")
            .to_ascii_lowercase();
        if expected != digest {
            return Err(LoadError::DigestMismatch {
                plugin: name,
                path: spec.path,
                expected,
                actual: digest,
            });
        }
    }
    let (component, source) = runtime
        .inner
        .cache
        .load(runtime.engine(), &digest, &wasm)
        .map_err(|e| LoadError::Compile {
            plugin: name.clone(),
            path: spec.path.clone(),
            reason: format!("{e:#}"),
        })?;
    let pre = runtime
        .inner
        .linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::Link {
            plugin: name.clone(),
            reason: format!("{e:#}"),
        })?;
    let validator = validator::GuestIndices::new(&pre).ok();
    let deploy_target = deploy_target::GuestIndices::new(&pre).ok();
    let notifier = notifier::GuestIndices::new(&pre).ok();
    let backup_store = backup_store::GuestIndices::new(&pre).ok();
    let traffic = traffic::GuestIndices::new(&pre).ok();
    if validator.is_none()
        && deploy_target.is_none()
        && notifier.is_none()
        && backup_store.is_none()
        && traffic.is_none()
    {
        return Err(LoadError::Link {
            plugin: name,
            reason: "it exports none of the deploy-agent:plugin@0.1 interfaces (validator, deploy-target, notifier, backup-store, traffic); was it built against this WIT package?".into(),
        });
    }
    for dir in &spec.policy.dirs {
        if !dir.host.is_dir() {
            return Err(LoadError::Grant {
                plugin: name,
                reason: format!(
                    "granted directory {} does not exist or is not a directory",
                    dir.host.display()
                ),
            });
        }
    }
    let tls = if spec.policy.extra_roots.is_empty() {
        runtime.inner.tls.clone()
    } else {
        super::http::tls_config(&spec.policy.extra_roots).map_err(|e| LoadError::Grant {
            plugin: name.clone(),
            reason: format!("a granted CA certificate cannot be used: {e}"),
        })?
    };
    let mut config = spec.config;
    if !config.is_object() {
        config = serde_json::Value::Object(Default::default());
    }
    tracing::debug!(plugin = %name, digest, ?source, "plugin loaded");
    Ok(Plugin {
        inner: Arc::new(Inner {
            name: name.into(),
            path: spec.path,
            digest,
            size: wasm.len(),
            source,
            runtime: runtime.clone(),
            pre,
            policy: Arc::new(spec.policy),
            secrets: Arc::new(spec.secrets),
            tls,
            config_json: config.to_string(),
            validator,
            deploy_target,
            notifier,
            backup_store,
            traffic,
            calls: AtomicU64::new(0),
        }),
    })
}

type CallFuture<'a, T> =
    Pin<Box<dyn Future<Output = wasmtime::Result<Result<T, PluginError>>> + Send + 'a>>;

impl Plugin {
    /// The plugin's name in agent.toml.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The component's sha256 (hex).
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The component's file.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }

    /// The component's size in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Whether it was compiled now or loaded from the cache.
    pub fn source(&self) -> LoadSource {
        self.inner.source
    }

    /// Its policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The kinds it exports.
    pub fn kinds(&self) -> Vec<Kind> {
        let i = &self.inner;
        let mut kinds = Vec::new();
        if i.validator.is_some() {
            kinds.push(Kind::Validator);
        }
        if i.deploy_target.is_some() {
            kinds.push(Kind::DeployTarget);
        }
        if i.notifier.is_some() {
            kinds.push(Kind::Notifier);
        }
        if i.backup_store.is_some() {
            kinds.push(Kind::BackupStore);
        }
        if i.traffic.is_some() {
            kinds.push(Kind::Traffic);
        }
        kinds
    }

    /// Instantiates the plugin once and drops it: proves it links and starts under its policy.
    pub async fn check(&self) -> Result<(), CallError> {
        self.call(&CallContext::new("check"), "instantiate", |_, _, _| {
            Box::pin(async { Ok(Ok(())) })
        })
        .await
    }

    fn not_exported(&self, kind: Kind) -> CallError {
        CallError::NotExported {
            plugin: self.name().to_string(),
            interface: kind.interface(),
        }
    }

    /// `validator.validate`.
    pub async fn validate(
        &self,
        ctx: &CallContext,
        release: &Artifact,
    ) -> Result<Vec<Finding>, CallError> {
        let idx = self
            .inner
            .validator
            .as_ref()
            .ok_or_else(|| self.not_exported(Kind::Validator))?;
        let (idx, release) = (idx.clone(), release.clone());
        self.call(ctx, "validate", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_validate(&mut *store, &wctx, &release).await
            })
        })
        .await
    }

    /// `notifier.notify`.
    pub async fn notify(&self, ctx: &CallContext, event: &Event) -> Result<(), CallError> {
        let idx = self
            .inner
            .notifier
            .as_ref()
            .ok_or_else(|| self.not_exported(Kind::Notifier))?;
        let (idx, event) = (idx.clone(), event.clone());
        self.call(ctx, "notify", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_notify(&mut *store, &wctx, &event).await
            })
        })
        .await
    }

    fn target(&self) -> Result<&deploy_target::GuestIndices, CallError> {
        self.inner
            .deploy_target
            .as_ref()
            .ok_or_else(|| self.not_exported(Kind::DeployTarget))
    }

    /// `deploy-target.deploy`.
    pub async fn deploy(&self, ctx: &CallContext, release: &Artifact) -> Result<Staged, CallError> {
        let (idx, release) = (self.target()?.clone(), release.clone());
        self.call(ctx, "deploy", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_deploy(&mut *store, &wctx, &release).await
            })
        })
        .await
    }

    /// `deploy-target.status`.
    pub async fn status(
        &self,
        ctx: &CallContext,
        release_id: &str,
    ) -> Result<ReleaseStatus, CallError> {
        let (idx, release_id) = (self.target()?.clone(), release_id.to_string());
        self.call(ctx, "status", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_status(&mut *store, &wctx, &release_id).await
            })
        })
        .await
    }

    /// `deploy-target.promote`.
    pub async fn promote(&self, ctx: &CallContext, release_id: &str) -> Result<(), CallError> {
        let (idx, release_id) = (self.target()?.clone(), release_id.to_string());
        self.call(ctx, "promote", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_promote(&mut *store, &wctx, &release_id).await
            })
        })
        .await
    }

    /// `deploy-target.rollback`.
    pub async fn rollback(&self, ctx: &CallContext, to: Option<&str>) -> Result<String, CallError> {
        let (idx, to) = (self.target()?.clone(), to.map(str::to_string));
        self.call(ctx, "rollback", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_rollback(&mut *store, &wctx, to.as_deref()).await
            })
        })
        .await
    }

    /// `deploy-target.list-releases`.
    pub async fn list_releases(&self, ctx: &CallContext) -> Result<Vec<Release>, CallError> {
        let idx = self.target()?.clone();
        self.call(ctx, "list-releases", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_list_releases(&mut *store, &wctx).await
            })
        })
        .await
    }

    fn traffic(&self) -> Result<&traffic::GuestIndices, CallError> {
        self.inner
            .traffic
            .as_ref()
            .ok_or_else(|| self.not_exported(Kind::Traffic))
    }

    /// `traffic.strategies`: what the target can do with its settings. A target that does not
    /// export `traffic` stages then promotes, which is blue-green; callers decide that.
    pub async fn strategies(&self, ctx: &CallContext) -> Result<Vec<Strategy>, CallError> {
        let idx = self.traffic()?.clone();
        self.call(ctx, "strategies", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_strategies(&mut *store, &wctx).await
            })
        })
        .await
    }

    /// `traffic.set-weight`.
    pub async fn set_weight(
        &self,
        ctx: &CallContext,
        release_id: &str,
        weight: u8,
    ) -> Result<(), CallError> {
        let (idx, release_id) = (self.traffic()?.clone(), release_id.to_string());
        self.call(ctx, "set-weight", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest
                    .call_set_weight(&mut *store, &wctx, &release_id, weight)
                    .await
            })
        })
        .await
    }

    /// `traffic.weight`.
    pub async fn weight(
        &self,
        ctx: &CallContext,
        release_id: &str,
    ) -> Result<TrafficStatus, CallError> {
        let (idx, release_id) = (self.traffic()?.clone(), release_id.to_string());
        self.call(ctx, "weight", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_weight(&mut *store, &wctx, &release_id).await
            })
        })
        .await
    }

    /// `traffic.abort`.
    pub async fn abort_traffic(
        &self,
        ctx: &CallContext,
        release_id: &str,
    ) -> Result<(), CallError> {
        let (idx, release_id) = (self.traffic()?.clone(), release_id.to_string());
        self.call(ctx, "abort", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_abort(&mut *store, &wctx, &release_id).await
            })
        })
        .await
    }

    /// `traffic.retire`.
    pub async fn retire(&self, ctx: &CallContext, release_id: &str) -> Result<(), CallError> {
        let (idx, release_id) = (self.traffic()?.clone(), release_id.to_string());
        self.call(ctx, "retire", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_retire(&mut *store, &wctx, &release_id).await
            })
        })
        .await
    }

    fn store(&self) -> Result<&backup_store::GuestIndices, CallError> {
        self.inner
            .backup_store
            .as_ref()
            .ok_or_else(|| self.not_exported(Kind::BackupStore))
    }

    /// `backup-store.put`: the plugin reads `body` through a `wasi:io` input stream, so the
    /// object is streamed, never held whole on either side.
    pub async fn put_object<R>(
        &self,
        ctx: &CallContext,
        key: &str,
        metadata: &[(String, String)],
        size_hint: Option<u64>,
        body: R,
    ) -> Result<ObjectInfo, CallError>
    where
        R: tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
    {
        let (idx, key, metadata) = (self.store()?.clone(), key.to_string(), metadata.to_vec());
        self.call(ctx, "put", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                let stream: wasmtime_wasi::p2::DynInputStream =
                    Box::new(wasmtime_wasi::p2::pipe::AsyncReadStream::new(body));
                let own = store.data_mut().table_mut().push(stream)?;
                let borrowed = wasmtime::component::Resource::new_borrow(own.rep());
                let out = guest
                    .call_put(&mut *store, &wctx, &key, &metadata, size_hint, borrowed)
                    .await;
                store.data_mut().table_mut().delete(own)?;
                out
            })
        })
        .await
    }

    /// `backup-store.get`: the plugin writes the object into `sink` through a `wasi:io`
    /// output stream.
    pub async fn get_object<W>(
        &self,
        ctx: &CallContext,
        key: &str,
        sink: W,
    ) -> Result<ObjectInfo, CallError>
    where
        W: tokio::io::AsyncWrite + Send + Sync + Unpin + 'static,
    {
        let (idx, key) = (self.store()?.clone(), key.to_string());
        self.call(ctx, "get", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                let stream: wasmtime_wasi::p2::DynOutputStream = Box::new(
                    wasmtime_wasi::p2::pipe::AsyncWriteStream::new(1 << 20, sink),
                );
                let own = store.data_mut().table_mut().push(stream)?;
                let borrowed = wasmtime::component::Resource::new_borrow(own.rep());
                let out = guest.call_get(&mut *store, &wctx, &key, borrowed).await;
                let mut stream = store.data_mut().table_mut().delete(own)?;
                // Everything the plugin wrote reaches the sink before the call returns.
                if matches!(out, Ok(Ok(_))) {
                    wasmtime_wasi::p2::OutputStream::flush(&mut *stream)?;
                    wasmtime_wasi::p2::Pollable::ready(&mut *stream).await;
                }
                out
            })
        })
        .await
    }

    /// `backup-store.list-objects`: one page.
    pub async fn list_objects(
        &self,
        ctx: &CallContext,
        prefix: &str,
        page: Option<&str>,
    ) -> Result<ObjectPage, CallError> {
        let (idx, prefix, page) = (
            self.store()?.clone(),
            prefix.to_string(),
            page.map(str::to_string),
        );
        self.call(ctx, "list-objects", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest
                    .call_list_objects(&mut *store, &wctx, &prefix, page.as_deref())
                    .await
            })
        })
        .await
    }

    /// `backup-store.delete`.
    pub async fn delete_object(&self, ctx: &CallContext, key: &str) -> Result<(), CallError> {
        let (idx, key) = (self.store()?.clone(), key.to_string());
        self.call(ctx, "delete", move |store, instance, wctx| {
            Box::pin(async move {
                let guest = idx.load(&mut *store, &instance)?;
                guest.call_delete(&mut *store, &wctx, &key).await
            })
        })
        .await
    }

    /// One call: a fresh instance under the plugin's policy, the deadline, and the caps.
    async fn call<T, F>(&self, ctx: &CallContext, op: &'static str, f: F) -> Result<T, CallError>
    where
        T: ReturnSize + Send,
        F: for<'a> FnOnce(
            &'a mut Store<PluginState>,
            Instance,
            bindings::CallContext,
        ) -> CallFuture<'a, T>,
    {
        let inner = &self.inner;
        let began = Instant::now();
        let call_id = inner.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let policy = &inner.policy;
        let guard = Arc::new(Guard::new(
            inner.name.clone(),
            inner.policy.clone(),
            inner.secrets.clone(),
            inner.tls.clone(),
        ));
        let tag = CallTag {
            plugin: inner.name.clone(),
        };
        let output = MemoryOutputPipe::new(64 * 1024);
        let state = PluginState::new(
            tag,
            policy,
            inner.secrets.clone(),
            guard.clone(),
            output.clone(),
        )
        .map_err(|reason| CallError::Instantiate {
            plugin: self.name().to_string(),
            reason,
        })?;
        let mut store = Store::new(inner.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // Every epoch tick: yield to the executor (so the async deadline can fire), stop at the
        // wall-clock deadline, and stop a plugin that broke its policy instead of letting it
        // keep probing (a refused request is reported as the call's error anyway).
        let deadline = Instant::now() + policy.timeout;
        let watched = guard.clone();
        store.epoch_deadline_callback(move |mut cx| {
            if let Some(violation) = cx.data_mut().over_budget() {
                watched.refuse(violation);
            }
            if Instant::now() >= deadline || watched.violated() {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);

        let wctx = bindings::CallContext {
            environment: ctx.environment.clone(),
            deployment_id: ctx.deployment_id.clone(),
            config: inner.config_json.clone(),
            secrets: inner.secrets.names(),
        };
        let span = tracing::debug_span!("plugin_call", plugin = %inner.name, env = %ctx.environment, call = call_id, op);
        let pre = &inner.pre;
        let outcome = tokio::time::timeout(
            policy.timeout,
            async {
                let instance = pre.instantiate_async(&mut store).await?;
                f(&mut store, instance, wctx).await
            }
            .instrument(span),
        )
        .await;

        // One call's whole output (its log lines, stdio, and the texts it returns) is
        // redacted as one text before any of it is written, so a value split across two
        // lines or encoded is caught; then every text shown or stored is cut to a sane size.
        let mut logs = store.data_mut().take_logs();
        let mut stdio = String::from_utf8_lossy(&output.contents())
            .trim_end()
            .to_string();
        let plugin = || self.name().to_string();
        // Everything returned counts against the cap, errors included.
        let too_large = |size: usize| {
            (size > policy.max_return_bytes).then(|| CallError::ReturnTooLarge {
                plugin: plugin(),
                op,
                size,
                limit: policy.max_return_bytes,
            })
        };
        // The host's record of a refusal outranks whatever the plugin made of it.
        let mut result = match (outcome, guard.first_violation()) {
            (_, Some(violation)) => Err(CallError::Policy {
                plugin: plugin(),
                op,
                violation,
            }),
            (Err(_elapsed), None) => Err(CallError::Timeout {
                plugin: plugin(),
                op,
                limit_ms: policy.timeout.as_millis() as u64,
            }),
            (Ok(Err(e)), None) => Err(self.classify(op, e, &store, &stdio)),
            (Ok(Ok(Err(error))), None) => {
                let size = error.return_size();
                Err(too_large(size).unwrap_or(CallError::Plugin {
                    plugin: plugin(),
                    op,
                    error,
                }))
            }
            (Ok(Ok(Ok(value))), None) => match too_large(value.return_size()) {
                Some(e) => Err(e),
                None => Ok(value),
            },
        };
        {
            let mut texts: Vec<&mut String> = logs.iter_mut().map(|(_, line)| line).collect();
            texts.push(&mut stdio);
            match &mut result {
                Ok(value) => texts.extend(value.texts_mut()),
                Err(e) => texts.extend(e.texts_mut()),
            }
            inner.secrets.redact_joined(&mut texts);
            for text in texts {
                cut(text, MAX_TEXT);
            }
        }
        for (level, line) in &logs {
            emit_log(*level, &inner.name, &ctx.environment, call_id, line);
        }
        for line in stdio.lines().take(50) {
            tracing::warn!(target: "plugin", plugin = %inner.name, env = %ctx.environment, call = call_id, "stdio: {line}");
        }
        let labels = [("plugin", &*inner.name), ("op", op)];
        crate::metrics::observe(
            crate::metrics::Family::PluginCallSeconds,
            &labels,
            began.elapsed().as_secs_f64(),
        );
        if let Err(e) = &result {
            tracing::debug!(plugin = %inner.name, call = call_id, op, error = %e, "plugin call failed");
            crate::metrics::inc(
                crate::metrics::Family::PluginCallFailures,
                &[labels[0], labels[1], ("error", e.class())],
            );
        }
        result
    }

    fn classify(
        &self,
        op: &'static str,
        error: wasmtime::Error,
        store: &Store<PluginState>,
        output: &str,
    ) -> CallError {
        let plugin = self.name().to_string();
        // A host-side limit (the resource table full, a header-field set at its size),
        // under whatever context the host function added: the call's host budget.
        for cause in error.chain() {
            let violation = match (
                cause.downcast_ref::<ResourceTableError>(),
                cause.downcast_ref::<FieldMapError>(),
            ) {
                (Some(ResourceTableError::Full), _) => store.data().table_full(),
                (_, Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)) => {
                    PolicyViolation::HostBudget {
                        what: "header fields",
                        limit: super::budget::FIELD_LIMIT as u64,
                    }
                }
                _ => continue,
            };
            return CallError::Policy {
                plugin,
                op,
                violation,
            };
        }
        if let Some(wanted) = store.data().limiter.refused_growth {
            return CallError::MemoryLimit {
                plugin,
                op,
                limit_mib: self.inner.policy.memory_bytes >> 20,
                wanted_mib: wanted.div_ceil(1 << 20),
            };
        }
        let reason = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                return CallError::Timeout {
                    plugin,
                    op,
                    limit_ms: self.inner.policy.timeout.as_millis() as u64,
                };
            }
            Some(Trap::StackOverflow) => "stack overflow (unbounded recursion?)".to_string(),
            Some(Trap::MemoryOutOfBounds) => "out-of-bounds memory access (a memory-safety bug, or a stack that overran its linear memory)".to_string(),
            Some(Trap::UnreachableCodeReached) => match panic_message(output) {
                Some(message) => format!("panicked: {message}"),
                None => "aborted (wasm `unreachable`: a panic or abort)".to_string(),
            },
            Some(trap) => trap.to_string(),
            None => format!("{error:#}").lines().next().unwrap_or("").to_string(),
        };
        CallError::Trap {
            plugin,
            op,
            reason: self.inner.secrets.redact(&reason),
        }
    }
}

/// The panic message a Rust guest printed to stderr, if any.
fn panic_message(output: &str) -> Option<String> {
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") {
            let detail = lines.next().unwrap_or("").trim();
            return Some(if detail.is_empty() {
                line.trim().to_string()
            } else {
                detail.to_string()
            });
        }
    }
    None
}
