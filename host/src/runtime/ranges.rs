//! The special address ranges a plugin may not reach unless its policy grants them: IANA's
//! IPv4 and IPv6 Special-Purpose Address Registries (the entries not marked globally
//! reachable), multicast, and every IPv6 form that carries an IPv4 address (mapped,
//! compatible, translated, NAT64, 6to4), judged by the IPv4 address inside.
//!
//! Sources: <https://www.iana.org/assignments/iana-ipv4-special-registry> and
//! <https://www.iana.org/assignments/iana-ipv6-special-registry>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{Ipv4Net, Ipv6Net};

/// IPv4: (network, what it is).
pub(crate) const V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
];

/// IPv6: (network, what it is). The forms that carry an IPv4 address are in [`embedded_v4`].
pub(crate) const V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

static V4_NETS: LazyLock<Vec<(Ipv4Net, &'static str)>> = LazyLock::new(|| {
    V4.iter()
        .filter_map(|(net, name)| net.parse().ok().map(|n| (n, *name)))
        .collect()
});

static V6_NETS: LazyLock<Vec<(Ipv6Net, &'static str)>> = LazyLock::new(|| {
    V6.iter()
        .filter_map(|(net, name)| net.parse().ok().map(|n| (n, *name)))
        .collect()
});

/// The IPv4 address an IPv6 address carries and routes to: IPv4-mapped (`::ffff:a.b.c.d`),
/// NAT64's well-known prefix (`64:ff9b::a.b.c.d`), or 6to4 (`2002:AABB:CCDD::/48`).
pub(crate) fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let from = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(from(s[1], s[2]));
    }
    None
}

/// The name of the special range an address is in, if any.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_NETS
            .iter()
            .find(|(net, _)| net.contains(&v4))
            .map(|(_, name)| *name),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return special_range(IpAddr::V4(v4));
            }
            V6_NETS
                .iter()
                .find(|(net, _)| net.contains(&v6))
                .map(|(_, name)| *name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(ip: &str) -> Option<&'static str> {
        special_range(ip.parse().unwrap())
    }

    #[test]
    fn every_registry_entry_parses_and_is_refused_at_both_ends() {
        assert_eq!(V4_NETS.len(), V4.len(), "an IPv4 entry does not parse");
        assert_eq!(V6_NETS.len(), V6.len(), "an IPv6 entry does not parse");
        for (net, name) in V4_NETS.iter() {
            for ip in [net.network(), net.broadcast()] {
                assert!(special_range(IpAddr::V4(ip)).is_some(), "{ip} ({name})");
            }
        }
        for (net, name) in V6_NETS.iter() {
            for ip in [net.network(), net.broadcast()] {
                assert!(special_range(IpAddr::V6(ip)).is_some(), "{ip} ({name})");
            }
        }
    }

    #[test]
    fn the_ranges_that_used_to_get_through() {
        for (ip, range) in [
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.254", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("240.0.0.1", "reserved"),
            ("fec0::1", "site-local (deprecated)"),
            ("::7f00:1", "IPv4-compatible (deprecated)"),
            ("::a9fe:a9fe", "IPv4-compatible (deprecated)"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::10.0.0.1", "private"),
            ("64:ff9b:1::1", "local-use IPv4/IPv6 translation"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("2002:c0a8:101::", "private"),
            ("::ffff:0:7f00:1", "IPv4-translated"),
            ("2001:db8::1", "documentation"),
            ("100::1", "discard-only"),
        ] {
            assert_eq!(named(ip), Some(range), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass_in_every_form() {
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "192.0.3.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700::1",
            "2a00:1450:4001::200e",
            "::ffff:93.184.216.34",
            "64:ff9b::93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            assert_eq!(named(ip), None, "{ip}");
        }
    }
}
