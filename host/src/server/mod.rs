//! The daemon: `deploy-agent serve`.
//!
//! ```text
//! start:    bind (loopback by default; TLS when configured) → /healthz answers
//!           load every environment's plugins once → start one queue worker per environment
//!           (a run the last daemon left `running` is resumed first) → /readyz, READY=1
//! serve:    /v1 API (bearer tokens), GitHub webhooks, SSE event streams, /metrics
//! SIGTERM:  /readyz 503, STOPPING=1, stop accepting → running runs suspend at their next safe
//!           point (a stage boundary, an approval wait) → connections drained → exit within
//!           the grace period; a run still mid-stage then is journaled where it is and the
//!           next start resumes it, exactly as after a crash
//! ```

pub mod api;
pub mod auth;
pub mod console;
pub mod error;
pub mod fleet;
pub mod hosts;
pub mod queue;
pub mod routes;
pub mod session;
pub mod state;
pub mod stream;
pub mod submit;
pub mod systemd;
pub mod views;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::pipeline::{self, Agent};
use crate::store::StoreError;
use queue::Queue;
use state::AppState;

/// Why the daemon could not start (or stopped badly).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration cannot be served.
    #[error("{0}")]
    Setup(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An environment's plugins could not be loaded.
    #[error(transparent)]
    Plugins(#[from] pipeline::PluginsError),
    /// This daemon cannot join the fleet.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// The listener failed.
    #[error("{what}: {source}")]
    Io {
        /// Doing what.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the daemon until SIGTERM or SIGINT, as agent `host_name` (default: `[server]
/// host_name`, else the host's name).
pub async fn serve(
    config: Config,
    listen: Option<SocketAddr>,
    host_name: Option<&str>,
) -> Result<(), ServeError> {
    let name = fleet::name_this_host(host_name, config.server.host_name.as_deref());
    // The daemon's configuration is fixed while it runs: its agent keeps the plugins loaded.
    let agent = Arc::new(Agent::open(config).await?.keeping_plugins());
    let sole = fleet::sole(&agent).await?;
    let config = agent.config.clone();
    let addr = listen.unwrap_or(config.server.listen);
    let github_secret = match &config.server.github {
        Some(g) => Some(
            g.secret
                .resolve()
                .map_err(|e| ServeError::Setup(format!("[server.github] secret: {e}")))?,
        ),
        None => None,
    };
    if config.server.tokens.is_empty() {
        tracing::warn!(
            "no [[server.tokens]] in {}: every API call will be refused (make one with `deploy-agent token new`)",
            config.path.display()
        );
    }
    if !addr.ip().is_loopback() && config.server.tls.is_none() {
        tracing::warn!(
            "listening on {addr} without TLS: bearer tokens cross the network in clear; configure [server.tls] or put a TLS proxy in front"
        );
    }
    let tls = match &config.server.tls {
        Some(files) => Some(tls_acceptor(files)?),
        None => None,
    };
    let store = agent.store.clone();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("cannot listen on {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Io {
        what: "listener".into(),
        source,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{local}");
    agent.serving_at(format!("{scheme}://{local}"));
    let membership =
        fleet::join(&agent, name.clone(), &format!("{scheme}://{local}"), sole).await?;
    let shared = store.backend().await == crate::db::Backend::Postgres;

    let (stop_tx, stop_rx) = watch::channel(false);
    let queue = Arc::new(Queue::new(agent.clone(), stop_rx.clone(), name, shared));
    let state = Arc::new(AppState {
        agent: agent.clone(),
        queue: queue.clone(),
        ready: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        github_secret,
        shutdown: stop_rx.clone(),
        console: session::Sessions::default(),
    });
    let app = routes::router(state.clone());

    // Load every environment's plugins once, then start the queue. Compiling (on a cache miss)
    // takes tens of MB of compiler memory that the allocator keeps; a short-lived child
    // (`plugin check`) fills the cache instead, so the daemon only maps compiled code.
    warm_cache(&config.path).await;
    let started = Instant::now();
    let preloading = agent.clone();
    let loaded = tokio::task::spawn_blocking(move || pipeline::preload(&preloading))
        .await
        .map_err(|e| ServeError::Setup(format!("loading the plugins: {e}")))??;
    tracing::info!(
        plugins = loaded,
        "plugins loaded in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut workers = queue.start();
    workers.extend(hosts::start(
        agent.clone(),
        membership.name.clone(),
        stop_rx.clone(),
    ));
    // Scheduled jobs: every agent of a fleet ticks, the store's claim gives each occurrence
    // to one.
    let scheduler = pipeline::scheduler::Scheduler::new(
        agent.clone(),
        membership.name.clone(),
        pipeline::scheduler::daemon_clock(),
    );
    workers.push(tokio::spawn(
        scheduler.run(Duration::from_secs(1), stop_rx.clone()),
    ));
    state.ready.store(true, Ordering::Relaxed);
    systemd::notify(&format!("READY=1\nSTATUS=serving on {scheme}://{local}"));
    if let Some(every) = systemd::watchdog_interval() {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                // Alive means the runtime schedules and the state store answers.
                if store.ping().await.is_ok() {
                    systemd::notify("WATCHDOG=1");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    let graceful = GracefulShutdown::new();
    let mut signals = Signals::new()?;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            which = signals.next() => {
                tracing::info!("{which}: shutting down");
                break;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        // A client gets 10 s to send its request head: a slow-loris cannot hold connections.
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(tcp), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, "connection: {e}");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let conn_graceful = graceful.watcher();
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn_graceful.watch(conn).await {
                        tracing::debug!(%peer, "connection: {e}");
                    }
                });
            }
        }
    }

    // Shutdown.
    state.stopping.store(true, Ordering::Relaxed);
    systemd::notify("STOPPING=1\nSTATUS=stopping: runs suspend at their next safe point");
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = config.server.grace_period;
    let deadline = tokio::time::Instant::now() + grace;
    let all_workers = async {
        for w in workers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout_at(deadline, all_workers)
        .await
        .is_err()
    {
        tracing::warn!(
            "runs did not reach a safe point within the grace period ({} s): they stay journaled where they are and the next start resumes them",
            grace.as_secs()
        );
    }
    membership.leave().await;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("connections still open at the end of the grace period were closed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs `deploy-agent plugin check` in a child process: it compiles what the component cache
/// lacks. Its failure is not fatal here: loading the plugins next reports the same problem.
async fn warm_cache(config: &std::path::Path) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let status = tokio::process::Command::new(exe)
        .args(["plugin", "check", "--output", "json", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if !status.as_ref().is_ok_and(|s| s.success()) {
        tracing::debug!("warming the component cache in a child process failed: {status:?}");
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, ServeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let io = |source| ServeError::Io {
            what: "signal handler".into(),
            source,
        };
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(io)?,
            int: signal(SignalKind::interrupt()).map_err(io)?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn tls_acceptor(files: &crate::config::TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |what: String| ServeError::Setup(format!("[server.tls]: {what}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect())
        .map_err(|e| {
            fail(format!(
                "cannot read the certificates in {}: {e}",
                files.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(fail(format!("no certificate in {}", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        fail(format!(
            "cannot read the private key in {}: {e}",
            files.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail(format!("the certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
