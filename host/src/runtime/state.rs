//! The state of one plugin call's store: WASI with nothing ambient, `wasi:http` behind the
//! guard, the host's own imports (log, secrets) and the memory limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::deploy_agent::plugin::{digest, log, secrets, types};
use super::http::{Guard, Hooks};
use super::policy::Policy;
use super::secrets::Secrets;

/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES: u32 = 1_000;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4_096;

/// Who is calling: for log lines.
#[derive(Debug, Clone)]
pub(crate) struct CallTag {
    pub(crate) plugin: Arc<str>,
    pub(crate) environment: Arc<str>,
    pub(crate) call_id: u64,
}

/// Enforces the memory cap and remembers that it did, so the caller can say so.
pub(crate) struct Limiter {
    pub(crate) memory_cap: u64,
    pub(crate) refused_growth: Option<u64>,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_cap {
            self.refused_growth = Some(desired as u64);
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Everything a store holds for one call.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: Hooks,
    secrets: Arc<Secrets>,
    tag: CallTag,
    log_lines: AtomicU32,
    pub(crate) limiter: Limiter,
}

impl PluginState {
    pub(crate) fn new(
        tag: CallTag,
        policy: &Policy,
        secrets: Arc<Secrets>,
        guard: Arc<Guard>,
        output: MemoryOutputPipe,
    ) -> Result<Self, String> {
        // No env, no args, no inherited stdio, no sockets: only the granted directories.
        let mut builder = WasiCtxBuilder::new();
        // Its stdout and stderr are captured and logged after the call (a panic message lands there).
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.clone())
            .stderr(output);
        for dir in &policy.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| format!("cannot grant {}: {e}", dir.host.display()))?;
        }
        Ok(PluginState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: Hooks { guard },
            secrets,
            tag,
            log_lines: AtomicU32::new(0),
            limiter: Limiter {
                memory_cap: policy.memory_bytes,
                refused_growth: None,
            },
        })
    }
}

impl PluginState {
    /// The store's resource table (streams handed to a backup-store call live here).
    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) {
        let n = self.log_lines.fetch_add(1, Ordering::Relaxed);
        if n == MAX_LOG_LINES {
            tracing::warn!(plugin = %self.tag.plugin, "plugin wrote {MAX_LOG_LINES} log lines in one call; dropping the rest");
        }
        if n >= MAX_LOG_LINES {
            return;
        }
        let mut message = self.secrets.redact(&message);
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let (plugin, env, call) = (&*self.tag.plugin, &*self.tag.environment, self.tag.call_id);
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin, env, call, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, env, call, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, env, call, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, env, call, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, env, call, "{message}"),
        }
    }
}

impl digest::Host for PluginState {
    async fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(&data).to_vec()
    }
}

impl secrets::Host for PluginState {
    async fn placeholder(&mut self, name: String) -> Result<String, secrets::SecretError> {
        self.secrets
            .placeholder(&name)
            .ok_or(secrets::SecretError::NotGranted(name))
    }

    async fn hmac_sha256(
        &mut self,
        name: String,
        key_prefix: String,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, secrets::SecretError> {
        self.secrets
            .hmac_sha256(&name, &key_prefix, &data)
            .ok_or(secrets::SecretError::NotGranted(name))
    }

    async fn sigv4_signature(
        &mut self,
        name: String,
        date: String,
        region: String,
        service: String,
        string_to_sign: String,
    ) -> Result<String, secrets::SecretError> {
        self.secrets
            .sigv4_signature(&name, &date, &region, &service, &string_to_sign)
            .ok_or(secrets::SecretError::NotGranted(name))
    }
}
