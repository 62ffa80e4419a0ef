//! `[server]`: the daemon's listener, its API tokens and its Git-host webhooks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::{Environment, SecretSource, Validator};

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// HTTPS, when configured.
    pub tls: Option<TlsFiles>,
    /// How long a SIGTERM waits for running steps to reach a safe point.
    pub grace_period: Duration,
    /// API tokens, stored hashed.
    pub tokens: Vec<TokenConfig>,
    /// GitHub push webhooks.
    pub github: Option<GithubConfig>,
    /// The name this agent registers under in the fleet (default: the host's name).
    pub host_name: Option<String>,
    /// The agent's lease: it heartbeats every third of it, and an agent silent for longer is
    /// dead and its runs are taken over.
    pub heartbeat: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            tls: None,
            grace_period: Duration::from_secs(30),
            tokens: Vec::new(),
            github: None,
            host_name: None,
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// What a token may do. Each role includes `read`; `admin` includes everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs, releases, events, audit, metrics.
    Read,
    /// Read, trigger deployments, roll back, cancel queued runs.
    Deploy,
    /// Read, approve and reject.
    Approve,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether a token with this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || needed == Role::Read || self == needed
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Approve => "approve",
            Role::Admin => "admin",
        }
    }
}

/// One API token.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Its name: the actor in the audit log (`token:NAME`).
    pub name: String,
    /// SHA-256 of the token, 32 bytes.
    pub sha256: [u8; 32],
    /// What it may do.
    pub role: Role,
    /// The environments it may act on; `None`: all.
    pub environments: Option<Vec<String>>,
}

impl TokenConfig {
    /// Whether it may act on `environment`.
    pub fn covers(&self, environment: &str) -> bool {
        self.environments
            .as_ref()
            .is_none_or(|envs| envs.iter().any(|e| e == environment))
    }
}

/// GitHub webhooks.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// The webhook secret (a reference; resolved when the daemon starts).
    pub secret: SecretSource,
    /// Deliveries older than this (by the push's time) are refused, and a delivery id is
    /// accepted once within it.
    pub replay_window: Duration,
    /// Which pushes deploy where.
    pub routes: Vec<GithubRoute>,
}

/// A push to `repository`'s `branch` deploys to `environment`.
#[derive(Debug, Clone)]
pub struct GithubRoute {
    /// `owner/name`.
    pub repository: String,
    /// The branch (without `refs/heads/`).
    pub branch: String,
    /// The environment.
    pub environment: String,
    /// The artifact directory; `{sha}` and `{branch}` are replaced. Default: the
    /// environment's `[artifact] path`.
    pub artifact: Option<String>,
}

const ROLE_HINT: &str = "one of: read, deploy, approve, admin";

impl Validator<'_> {
    pub(super) fn server(
        &mut self,
        raw: &Spanned<raw::RawServer>,
        environments: &BTreeMap<String, Environment>,
    ) -> ServerConfig {
        let r = raw.get_ref();
        let mut out = ServerConfig::default();
        if let Some(l) = &r.listen {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => out.listen = a,
                Err(_) => self.error(
                    l,
                    format!("`{}` is not an address and port", l.get_ref()),
                    "write it as IP:PORT, e.g. \"127.0.0.1:8470\" (loopback) or \"0.0.0.0:8470\" (every interface, put TLS in front)",
                ),
            }
        }
        if let Some(tls) = &r.tls {
            let t = tls.get_ref();
            let cert = self.base.join(t.cert.get_ref());
            let key = self.base.join(t.key.get_ref());
            for (at, p) in [(&t.cert, &cert), (&t.key, &key)] {
                if !p.is_file() {
                    self.error(
                        at,
                        format!("{} does not exist", p.display()),
                        "give PEM files, relative to agent.toml",
                    );
                }
            }
            out.tls = Some(TlsFiles { cert, key });
        }
        if let Some(g) = &r.grace_period_ms {
            out.grace_period = Duration::from_millis(*g.get_ref());
        }
        if let Some(n) = &r.host_name {
            let name = n.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                self.error(
                    n,
                    format!("`{name}` is not a host name"),
                    "letters, digits, `-`, `_` and `.`, e.g. \"web-1\"; it names this agent in `deploy-agent agents` and the audit log",
                );
            }
            out.host_name = Some(name.clone());
        }
        if let Some(h) = &r.heartbeat_ms {
            if *h.get_ref() < 300 {
                self.error(
                    h,
                    "a heartbeat lease under 300 ms cannot be kept",
                    "agents heartbeat every third of it; 15000 (the default) suits most fleets",
                );
            }
            out.heartbeat = Duration::from_millis((*h.get_ref()).max(300));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &r.tokens {
            let t = t.get_ref();
            if !names.insert(t.name.get_ref().clone()) {
                self.error(
                    &t.name,
                    format!("token `{}` is declared twice", t.name.get_ref()),
                    "token names are the audit log's actors: make them unique",
                );
            }
            let hex = t
                .sha256
                .get_ref()
                .trim_start_matches("sha256:")
                .to_ascii_lowercase();
            let mut sha256 = [0u8; 32];
            if hex::decode_to_slice(&hex, &mut sha256).is_err() {
                self.error(
                    &t.sha256,
                    "a token's sha256 must be 64 hexadecimal characters",
                    "`deploy-agent token new --name NAME --role ROLE` makes a token and prints its hash; the token itself never goes in agent.toml",
                );
            }
            let role = match t.role.get_ref().as_str() {
                "read" => Role::Read,
                "deploy" => Role::Deploy,
                "approve" => Role::Approve,
                "admin" => Role::Admin,
                other => {
                    self.error(&t.role, format!("unknown role `{other}`"), ROLE_HINT);
                    Role::Read
                }
            };
            let envs = t.environments.as_ref().map(|list| {
                for e in list {
                    self.known_environment(e, environments);
                }
                list.iter().map(|e| e.get_ref().clone()).collect()
            });
            out.tokens.push(TokenConfig {
                name: t.name.get_ref().clone(),
                sha256,
                role,
                environments: envs,
            });
        }
        if let Some(g) = &r.github {
            let g = g.get_ref();
            let secret = SecretSource::parse(g.secret.get_ref()).unwrap_or_else(|| {
                self.error(
                    &g.secret,
                    "the webhook secret must be a reference, not a value",
                    "write `secret = \"${env:GITHUB_WEBHOOK_SECRET}\"` or `secret = \"${file:/run/credentials/deploy-agent/github}\"`",
                );
                SecretSource::Env("GITHUB_WEBHOOK_SECRET".into())
            });
            let mut routes = Vec::new();
            for route in &g.routes {
                let rt = route.get_ref();
                self.known_environment(&rt.environment, environments);
                if !rt.repository.get_ref().contains('/') {
                    self.error(
                        &rt.repository,
                        "a repository is `owner/name`",
                        "as GitHub shows it, e.g. \"acme/shop\"",
                    );
                }
                routes.push(GithubRoute {
                    repository: rt.repository.get_ref().clone(),
                    branch: rt
                        .branch
                        .get_ref()
                        .trim_start_matches("refs/heads/")
                        .to_string(),
                    environment: rt.environment.get_ref().clone(),
                    artifact: rt.artifact.as_ref().map(|a| a.get_ref().clone()),
                });
            }
            out.github = Some(GithubConfig {
                secret,
                replay_window: Duration::from_millis(
                    g.replay_window_ms
                        .as_ref()
                        .map_or(300_000, |w| *w.get_ref()),
                ),
                routes,
            });
        }
        out
    }

    fn known_environment(
        &mut self,
        name: &Spanned<String>,
        environments: &BTreeMap<String, Environment>,
    ) {
        if !environments.contains_key(name.get_ref()) {
            let known: Vec<&str> = environments.keys().map(String::as_str).collect();
            self.error(
                name,
                format!("no environment `{}`", name.get_ref()),
                &format!("known: {}", known.join(", ")),
            );
        }
    }
}
