//! The state of one plugin call's store: WASI with nothing ambient, `wasi:http` behind the
//! guard, the host's own imports (log, secrets) and the memory limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::deploy_agent::plugin::{digest, log, secrets, types};
use super::budget::{self, HostBudget};
use super::http::{Guard, Hooks};
use super::policy::{Policy, PolicyViolation};
use super::secrets::Secrets;
use super::signing;

/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES: u32 = 1_000;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4_096;

/// Who is calling: for the host's own warnings (the call's log lines are tagged when they
/// are written, after the call).
#[derive(Debug, Clone)]
pub(crate) struct CallTag {
    pub(crate) plugin: Arc<str>,
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
    budget: HostBudget,
    hooks: Hooks,
    secrets: Arc<Secrets>,
    tag: CallTag,
    log_lines: AtomicU32,
    logs: Vec<(log::Level, String)>,
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
        let budget = HostBudget::for_policy(policy);
        let mut table = ResourceTable::new();
        table.set_max_capacity(budget.resources());
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(budget::FIELD_LIMIT);
        Ok(PluginState {
            wasi: builder.build(),
            table,
            http,
            budget,
            hooks: Hooks { guard },
            secrets,
            tag,
            log_lines: AtomicU32::new(0),
            logs: Vec::new(),
            limiter: Limiter {
                memory_cap: policy.memory_bytes,
                refused_growth: None,
            },
        })
    }
}

impl PluginState {
    /// A refusal if the call's resources hold more host memory than its budget.
    pub(crate) fn over_budget(&mut self) -> Option<PolicyViolation> {
        let held = budget::held(&mut self.table);
        (held > self.budget.bytes).then_some(PolicyViolation::HostBudget {
            what: "request bodies, header fields and resources held by the host",
            limit: self.budget.bytes,
        })
    }

    /// Records a refusal (the call then fails with it as a policy error) and returns its
    /// text, for the error the plugin sees.
    fn refuse(&self, violation: PolicyViolation) -> String {
        let text = violation.to_string();
        self.hooks.guard.refuse(violation);
        text
    }

    /// The violation for a full resource table.
    pub(crate) fn table_full(&self) -> PolicyViolation {
        PolicyViolation::HostBudget {
            what: "resource handles",
            limit: self.budget.resources() as u64,
        }
    }

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

impl PluginState {
    /// The call's log lines, in order, not yet redacted or cut: they are written when the
    /// call ends, redacted over the call's whole output.
    pub(crate) fn take_logs(&mut self) -> Vec<(log::Level, String)> {
        std::mem::take(&mut self.logs)
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, mut message: String) {
        let n = self.log_lines.fetch_add(1, Ordering::Relaxed);
        if n == MAX_LOG_LINES {
            tracing::warn!(plugin = %self.tag.plugin, "plugin wrote {MAX_LOG_LINES} log lines in one call; dropping the rest");
        }
        if n >= MAX_LOG_LINES {
            return;
        }
        // Kept a little longer than shown, so that a value at the cut is still redacted
        // whole; cut for good after redaction.
        let keep = MAX_LOG_LINE + self.secrets.forms().longest();
        if message.len() > keep {
            let mut at = keep;
            while !message.is_char_boundary(at) {
                at -= 1;
            }
            message.truncate(at);
        }
        self.logs.push((level, message));
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
        _key_prefix: String,
        _data: Vec<u8>,
    ) -> Result<Vec<u8>, secrets::SecretError> {
        // Withdrawn, still linked: a plugin built against it loads, and calling it fails the
        // call with a policy error.
        Err(secrets::SecretError::Unavailable(
            self.refuse(signing::hmac_withdrawn(&name)),
        ))
    }

    async fn sigv4_signature(
        &mut self,
        name: String,
        date: String,
        region: String,
        service: String,
        string_to_sign: String,
    ) -> Result<String, secrets::SecretError> {
        let secret = self
            .secrets
            .get(&name)
            .ok_or_else(|| secrets::SecretError::NotGranted(name.clone()))?;
        signing::sigv4_signature(
            &name,
            secret,
            &date,
            &region,
            &service,
            &string_to_sign,
            SystemTime::now(),
        )
        .map_err(|violation| secrets::SecretError::Unavailable(self.refuse(violation)))
    }

    async fn webhook_signature(
        &mut self,
        name: String,
        scheme: secrets::WebhookScheme,
        timestamp: u64,
        payload: Vec<u8>,
    ) -> Result<String, secrets::SignError> {
        let secret = self
            .secrets
            .get(&name)
            .ok_or_else(|| secrets::SignError::NotGranted(name.clone()))?;
        let scheme = match scheme {
            secrets::WebhookScheme::HubSha256 => signing::WebhookScheme::HubSha256,
            secrets::WebhookScheme::SlackV0 => signing::WebhookScheme::SlackV0,
        };
        signing::webhook_signature(
            &name,
            secret,
            scheme,
            timestamp,
            &payload,
            SystemTime::now(),
        )
        .map_err(|violation| secrets::SignError::Refused(self.refuse(violation)))
    }
}
