//! The conformance kit (`deploy-agent plugin test`): runs a plugin under the real sandbox
//! against a stand-in of its platform and checks the contract its WIT interface promises.
//!
//! The stand-in plays the platform from a script, or forwards to a server of yours (see
//! [`script`]); the kit grants the plugin only the stand-in's address, gives its secrets
//! random values, and injects faults (429 with `Retry-After`, 503, 401, 403, 400, a reset
//! connection, a server that never answers) to check that errors use the right variants and
//! that deadlines hold. Each kind has its own scenario: [`target`], [`traffic`],
//! [`notifier`], [`validator`], [`store`].

mod faults;
mod notifier;
pub mod script;
pub mod standin;
mod store;
mod target;
mod traffic;
mod validator;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::runtime::{
    CallContext, CallError, DirGrant, HostPattern, Kind, Plugin, PluginSpec, Policy, Runtime,
    Secret, SecretValue, Secrets, Sigv4Scope,
};
use script::Script;
use standin::StandIn;

/// Where the kit grants the plugin its test artifacts.
const ARTIFACTS_GUEST: &str = "/artifacts";

/// What to test.
#[derive(Debug, Clone)]
pub struct Options {
    /// The component.
    pub wasm: PathBuf,
    /// The kind whose contract to check.
    pub kind: Kind,
    /// The stand-in file.
    pub standin: PathBuf,
    /// Forward to this server instead of the file's `upstream` or routes.
    pub upstream: Option<String>,
    /// The per-call deadline the plugin runs under.
    pub timeout: Duration,
    /// The compiled-component cache.
    pub cache_dir: PathBuf,
}

/// Why the kit could not run at all (as opposed to a check failing).
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The stand-in file is unusable.
    #[error(transparent)]
    Script(#[from] script::ScriptError),
    /// The plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] crate::runtime::LoadError),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The plugin does not export the kind asked for.
    #[error(
        "{path} does not export `{kind}` (it exports: {exports})\n  hint: pass the kind it implements with --kind"
    )]
    WrongKind {
        /// The component.
        path: PathBuf,
        /// The kind asked for.
        kind: &'static str,
        /// What it exports.
        exports: String,
    },
    /// A secret's value could not be read.
    #[error("{0}\n  hint: export the variable, or list the secret by name for a random value")]
    Secret(String),
    /// Local I/O (the stand-in's port, the artifact directory).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The plugin keeps this part of the contract.
    Pass,
    /// It does not; `detail` says how.
    Fail,
    /// Not applicable to this plugin (it says so, e.g. "does not list releases").
    Skip,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The contract clause, e.g. `status reaches a terminal state`.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What was seen.
    pub detail: String,
}

/// Everything the kit found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The component.
    pub wasm: String,
    /// Its sha256, to pin in agent.toml.
    pub sha256: String,
    /// The kind checked.
    pub kind: Kind,
    /// How the stand-in played the platform: `script` or `upstream`.
    pub standin: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// Requests the plugin sent to the stand-in.
    pub requests: usize,
    /// The slowest successful call: (operation, milliseconds).
    pub slowest_call: Option<(String, f64)>,
}

impl Report {
    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .count()
    }
}

/// Runs the kind's scenario and returns what it found.
pub async fn run(options: &Options) -> Result<Report, KitError> {
    let script = Script::load(&options.standin)?;
    let secrets = script.plugin.secrets.values().map_err(KitError::Secret)?;
    let standin = StandIn::start(&script, options.upstream.clone(), secrets.clone())
        .await
        .map_err(|source| KitError::Io {
            what: "cannot start the stand-in server".into(),
            source,
        })?;
    let artifacts = tempfile::tempdir().map_err(|source| KitError::Io {
        what: "cannot create the artifact directory".into(),
        source,
    })?;
    let runtime = Runtime::new(options.cache_dir.clone())?;
    let spec = spec(options, &script, &standin, &secrets, artifacts.path());
    let plugin = tokio::task::block_in_place(|| runtime.load(spec.clone()))?;
    if !plugin.kinds().contains(&options.kind) {
        return Err(KitError::WrongKind {
            path: options.wasm.clone(),
            kind: options.kind.interface(),
            exports: plugin
                .kinds()
                .iter()
                .map(|k| k.interface())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // The hang check runs under a short deadline so it does not take the whole timeout.
    let mut hasty = spec;
    hasty.policy.timeout = faults::HANG_DEADLINE;
    let hasty = tokio::task::block_in_place(|| runtime.load(hasty))?;
    let mut kit = Kit {
        kind: options.kind,
        plugin,
        hasty,
        standin,
        artifacts: artifacts.path().to_path_buf(),
        ctx: CallContext {
            environment: "conformance".into(),
            deployment_id: format!("conformance-{}", crate::random::hex(4)),
        },
        checks: Vec::new(),
        refusals: Vec::new(),
        slowest: None,
    };
    match options.kind {
        Kind::DeployTarget => target::run(&mut kit).await,
        Kind::Notifier => notifier::run(&mut kit).await,
        Kind::Validator => validator::run(&mut kit).await,
        Kind::BackupStore => store::run(&mut kit).await,
        Kind::Traffic => traffic::run(&mut kit).await,
    }
    let upstream = options.upstream.is_some() || script.upstream.is_some();
    kit.sandbox_checks(upstream);
    Ok(Report {
        wasm: options.wasm.display().to_string(),
        sha256: kit.plugin.digest().to_string(),
        kind: options.kind,
        standin: if upstream { "upstream" } else { "script" }.into(),
        requests: kit.standin.count(),
        slowest_call: kit
            .slowest
            .map(|(op, d)| (op.to_string(), d.as_secs_f64() * 1e3)),
        checks: kit.checks,
    })
}

/// The plugin's spec: the stand-in's address and the artifact directory, nothing else.
fn spec(
    options: &Options,
    script: &Script,
    standin: &StandIn,
    secrets: &BTreeMap<String, String>,
    artifacts: &Path,
) -> PluginSpec {
    let name = options
        .wasm
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().replace('_', "-"));
    let here = HostPattern::parse(&standin.addr().to_string()).ok();
    let mut policy = Policy {
        allowed_hosts: here.iter().cloned().collect(),
        allowed_ranges: vec![ipnet::IpNet::from(standin.addr().ip())],
        dirs: vec![DirGrant {
            host: artifacts.to_path_buf(),
            guest: ARTIFACTS_GUEST.into(),
            writable: false,
        }],
        timeout: options.timeout,
        ..Policy::default()
    };
    if let Some(mib) = script.plugin.memory_mib {
        policy.memory_bytes = mib << 20;
    }
    let mut granted = Secrets::default();
    for (name, value) in secrets {
        let mut secret = Secret::new(
            SecretValue::new(value.clone()),
            here.iter().cloned().collect(),
        );
        secret.sigv4 = script.plugin.sigv4.get(name).map(|s| Sigv4Scope {
            services: s.services.clone(),
            regions: s.regions.clone(),
        });
        granted.insert(name.clone(), secret);
    }
    let config = with_standin(
        serde_json::to_value(&script.plugin.config).unwrap_or_default(),
        standin.url(),
    );
    PluginSpec {
        name,
        path: options.wasm.clone(),
        sha256: None,
        policy,
        secrets: granted,
        config,
    }
}

/// Replaces `{standin}` in every string of the config.
fn with_standin(value: serde_json::Value, url: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(s.replace("{standin}", url)),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| with_standin(v, url)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, with_standin(v, url)))
                .collect(),
        ),
        other => other,
    }
}

/// The state of one run: the plugin, its stand-in, and what was found so far.
pub(crate) struct Kit {
    /// The kind whose scenario runs.
    kind: Kind,
    plugin: Plugin,
    /// The same plugin under a short deadline, for the hang check.
    hasty: Plugin,
    standin: StandIn,
    artifacts: PathBuf,
    ctx: CallContext,
    checks: Vec<Check>,
    /// Every sandbox refusal seen, as (operation, what).
    refusals: Vec<(String, String)>,
    slowest: Option<(&'static str, Duration)>,
}

impl Kit {
    fn record(&mut self, name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            outcome,
            detail: detail.into(),
        });
    }

    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.record(name, Outcome::Pass, detail);
    }

    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.record(name, Outcome::Fail, detail);
    }

    fn skip(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.record(name, Outcome::Skip, detail);
    }

    /// Passes or fails `name` on `result`, with `ok` describing a pass.
    fn expect<T>(&mut self, name: &str, result: &Result<T, String>, ok: impl FnOnce(&T) -> String) {
        match result {
            Ok(v) => {
                let detail = ok(v);
                self.pass(name, detail);
            }
            Err(e) => self.fail(name, e.clone()),
        }
    }

    /// Times one call and notes sandbox refusals; the error is worded for a report.
    async fn call<T, F>(&mut self, op: &'static str, call: F) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, CallError>>,
    {
        let began = Instant::now();
        let out = call.await;
        let took = began.elapsed();
        if out.is_ok() && self.slowest.is_none_or(|(_, d)| took > d) {
            self.slowest = Some((op, took));
        }
        if let Err(CallError::Policy { violation, .. }) = &out {
            self.refusals.push((op.to_string(), violation.to_string()));
        }
        out
    }

    /// Starts a new deployment run: later calls carry a fresh deployment id, as the calls
    /// of the pipeline's next run would.
    fn new_run(&mut self) {
        self.ctx.deployment_id = format!("conformance-{}", crate::random::hex(4));
    }

    /// A fresh artifact directory for `version` (an `index.html` naming it), as the plugin
    /// sees it.
    fn artifact(&self, version: &str) -> crate::runtime::Artifact {
        let dir = self.artifacts.join(version);
        let html = format!("<!doctype html><title>{version}</title><p>release {version}\n");
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("index.html"), html));
        let digest = written
            .ok()
            .and_then(|()| crate::pipeline::artifact::digest(&dir).ok())
            .map(|d| format!("sha256:{d}"));
        crate::runtime::Artifact {
            version: version.to_string(),
            path: Some(format!("{ARTIFACTS_GUEST}/{version}")),
            digest,
            labels: vec![
                ("git.ref".into(), "refs/heads/main".into()),
                ("ci.run".into(), "conformance".into()),
            ]
            .into_iter()
            .chain((self.kind == Kind::Traffic).then(|| {
                (
                    crate::pipeline::artifact::CANARY_STEPS_LABEL.to_string(),
                    traffic::STEPS.to_string(),
                )
            }))
            .collect(),
        }
    }

    /// The checks every kind shares, over the whole run: no request was refused by the
    /// sandbox, and (with a script) every request matched a route.
    fn sandbox_checks(&mut self, upstream: bool) {
        const HOSTS: &str = "no request outside the granted hosts";
        if self.refusals.is_empty() {
            let n = self.standin.count();
            self.pass(
                HOSTS,
                format!("{n} requests, all to the stand-in; the sandbox refused none"),
            );
        } else {
            let list: Vec<String> = self
                .refusals
                .iter()
                .map(|(op, v)| format!("{op}: {v}"))
                .collect();
            self.fail(HOSTS, list.join("; "));
        }
        const SCRIPTED: &str = "every request matched a scripted route";
        if upstream {
            self.skip(SCRIPTED, "the stand-in forwards to an upstream server");
            return;
        }
        let stray: Vec<String> = self
            .standin
            .seen()
            .into_iter()
            .filter(|s| !s.answered)
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        if stray.is_empty() {
            self.pass(SCRIPTED, "no request fell through to the stand-in's 404");
        } else {
            self.fail(
                SCRIPTED,
                format!(
                    "unscripted (answered 404): {}; script them, or fix the plugin's URLs",
                    stray.join(", ")
                ),
            );
        }
    }
}

/// A call's error, worded for a report line.
fn said(e: &CallError) -> String {
    match e {
        CallError::Plugin { error, .. } => variant(error),
        other => other.to_string(),
    }
}

/// A plugin error as `variant("message")`.
fn variant(e: &crate::runtime::PluginError) -> String {
    use crate::runtime::PluginError as E;
    match e {
        E::Retryable(r) => match r.retry_after_ms {
            Some(ms) => format!("retryable({:?}, retry after {ms} ms)", r.message),
            None => format!("retryable({:?}, no wait)", r.message),
        },
        E::Rejected(m) => format!("rejected({m:?})"),
        E::Unauthorized(m) => format!("unauthorized({m:?})"),
        E::InvalidConfig(m) => format!("invalid-config({m:?})"),
        E::Other(m) => format!("other({m:?})"),
    }
}
