//! What one plugin may do: the hosts it may reach, the addresses those may resolve to, the
//! directories it may see, and its memory, time and size budgets. Nothing is ambient.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// Default memory cap per plugin instance.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// The largest memory cap agent.toml may grant (the engine's pool is sized for it).
pub const MAX_MEMORY_MIB: u64 = 1024;
/// Default wall-clock deadline per call.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default cap on one HTTP response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// Default cap on what one call may return.
pub const DEFAULT_MAX_RETURN_BYTES: usize = 1 << 20;
/// Default cap on outgoing requests per call.
pub const DEFAULT_MAX_REQUESTS: u32 = 64;

/// A host a plugin may reach: `api.example.com`, `api.example.com:8443` or `*.example.com`.
/// Without a port it matches any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses a pattern, explaining what is wrong if it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        if text.contains("://") || text.contains('/') {
            return Err(format!(
                "`{text}` is a URL; allowed_hosts takes a host name, optionally with :port"
            ));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{text}` has an invalid port `{p}`"))?;
                (h.to_string(), Some(port))
            }
            _ => (text.clone(), None),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, host),
        };
        if host.is_empty()
            || host.contains('*')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(format!(
                "`{text}` is not a host name (letters, digits, `-` and `.`, optionally `*.` in front)"
            ));
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    /// Whether `host:port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.host.len()
                && host.ends_with(&self.host)
                && host[..host.len() - self.host.len()].ends_with('.')
        } else {
            host == self.host
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// A directory granted to a plugin.
#[derive(Debug, Clone)]
pub struct DirGrant {
    /// The directory on the deploy host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Whether the plugin may write to it.
    pub writable: bool,
}

/// Everything one plugin is allowed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Hosts it may send HTTP requests to.
    pub allowed_hosts: Vec<HostPattern>,
    /// Special address ranges (loopback, private, link-local...) it may reach anyway.
    pub allowed_ranges: Vec<IpNet>,
    /// Directories it may see.
    pub dirs: Vec<DirGrant>,
    /// Linear memory cap, bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline per call.
    pub timeout: Duration,
    /// Cap on one HTTP response body.
    pub max_response_bytes: u64,
    /// Cap on what one call may return.
    pub max_return_bytes: usize,
    /// Cap on outgoing HTTP requests per call.
    pub max_requests: u32,
    /// Certificate authorities trusted for this plugin's HTTPS requests, besides the public
    /// web roots (a Kubernetes cluster's CA, a private registry's). DER-encoded.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for Policy {
    /// Nothing granted: no hosts, no directories, default budgets.
    fn default() -> Self {
        Policy {
            allowed_hosts: Vec::new(),
            allowed_ranges: Vec::new(),
            dirs: Vec::new(),
            memory_bytes: DEFAULT_MEMORY_MIB << 20,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_return_bytes: DEFAULT_MAX_RETURN_BYTES,
            max_requests: DEFAULT_MAX_REQUESTS,
            extra_roots: Vec::new(),
        }
    }
}

impl Policy {
    /// Whether `host:port` is in `allowed_hosts`.
    pub fn host_allowed(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts.iter().any(|p| p.matches(host, port))
    }

    /// Whether an address a host name resolved to may be connected to. Public addresses may;
    /// special ranges (IANA's special-purpose registries, multicast, and IPv6 forms carrying
    /// such an IPv4 address) only when granted explicitly.
    pub fn address_allowed(&self, ip: IpAddr) -> Result<(), &'static str> {
        let ip = canonical(ip);
        match special_range(ip) {
            None => Ok(()),
            Some(range) => {
                if self.allowed_ranges.iter().any(|net| net.contains(&ip)) {
                    Ok(())
                } else {
                    Err(range)
                }
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

pub use super::ranges::special_range;

/// Something a plugin tried that its policy refuses. Never carries a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// A request to a host not in `allowed_hosts`.
    #[error("request to `{host}:{port}` refused: not in allowed_hosts")]
    HostNotAllowed {
        /// The host.
        host: String,
        /// The port.
        port: u16,
    },
    /// An allowed name resolved to an address in a range not granted.
    #[error(
        "request to `{host}` refused: it resolves to {address}, a {range} address; grant it with allow_ip_ranges if that is intended"
    )]
    AddressRefused {
        /// The host name.
        host: String,
        /// The address it resolved to.
        address: IpAddr,
        /// The range's name.
        range: &'static str,
    },
    /// A secret's placeholder in a request to a host the secret is not bound to.
    #[error("secret `{secret}` may not be sent to `{host}`: it is bound only to {bound}")]
    SecretNotBound {
        /// The secret's name.
        secret: String,
        /// The host it was being sent to.
        host: String,
        /// Where it may go.
        bound: String,
    },
    /// A placeholder for a secret the plugin was not granted.
    #[error("secret `{secret}` is not granted to this plugin")]
    SecretNotGranted {
        /// The secret's name.
        secret: String,
    },
    /// More requests in one call than allowed.
    #[error("more than {limit} HTTP requests in one call (max_requests)")]
    TooManyRequests {
        /// The cap.
        limit: u32,
    },
    /// A response body larger than allowed.
    #[error("response from `{host}` exceeded {limit} bytes (max_response_bytes)")]
    ResponseTooLarge {
        /// The host.
        host: String,
        /// The cap.
        limit: u64,
    },
    /// A request that is not plain http(s) to a host.
    #[error("request refused: {reason}")]
    BadRequest {
        /// Why.
        reason: String,
    },
    /// A request carrying a secret's value, raw or encoded: a plugin never holds a value, so
    /// one on its way out was extracted somehow.
    #[error(
        "request to `{host}` refused: it carries the value of secret `{secret}` (raw or encoded); a plugin may only send a secret's placeholder"
    )]
    SecretValueInRequest {
        /// The secret's name.
        secret: String,
        /// The host it was being sent to.
        host: String,
    },
    /// A signing request the secret's grant does not allow.
    #[error("signing with secret `{secret}` refused: {reason}")]
    SigningRefused {
        /// The secret's name.
        secret: String,
        /// Why.
        reason: String,
    },
    /// Host-side memory held for the call (request bodies, header fields, resources) over
    /// the call's budget.
    #[error("host-side memory for this call is spent: {what} (limit {limit})")]
    HostBudget {
        /// What ran out.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_exactly_what_they_say() {
        let p = HostPattern::parse("api.vercel.com").unwrap();
        assert!(p.matches("api.vercel.com", 443));
        assert!(p.matches("API.Vercel.com.", 80));
        assert!(!p.matches("vercel.com", 443));
        assert!(!p.matches("evil-api.vercel.com", 443));
        assert!(!p.matches("api.vercel.com.evil.com", 443));

        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com", 443));
        assert!(w.matches("a.b.example.com", 443));
        assert!(!w.matches("example.com", 443));
        assert!(!w.matches("badexample.com", 443));

        let port = HostPattern::parse("localhost:8080").unwrap();
        assert!(port.matches("localhost", 8080));
        assert!(!port.matches("localhost", 8081));
        assert_eq!(port.to_string(), "localhost:8080");

        assert!(HostPattern::parse("https://x.com").is_err());
        assert!(HostPattern::parse("x.com:http").is_err());
        assert!(HostPattern::parse("a*.com").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn special_ranges_are_refused_unless_granted() {
        let mut policy = Policy::default();
        for (ip, range) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(policy.address_allowed(ip), Err(range), "{ip}");
        }
        assert!(
            policy
                .address_allowed("93.184.216.34".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .address_allowed("2606:4700::1".parse().unwrap())
                .is_ok()
        );

        policy.allowed_ranges.push("127.0.0.0/8".parse().unwrap());
        assert!(policy.address_allowed("127.0.0.1".parse().unwrap()).is_ok());
        assert!(
            policy
                .address_allowed("::ffff:127.0.0.1".parse().unwrap())
                .is_ok()
        );
        assert_eq!(
            policy.address_allowed("10.0.0.1".parse().unwrap()),
            Err("private")
        );
    }
}
