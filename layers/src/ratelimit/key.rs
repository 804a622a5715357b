//! What a per-IP limit is keyed by: the client IP, masked to a network prefix.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;

use crate::client_ip::canonical;

/// How many leading bits of a client address identify "one client".
///
/// An IPv6 customer usually gets a whole /64 (or more) and can pick any address in it, so
/// keying by the full /128 would let one client spray addresses to dodge its limit. The
/// default is therefore /64 for IPv6 and /32 (the address itself) for IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPrefix {
    v4: u8,
    v6: u8,
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl KeyPrefix {
    /// IPv4 clients keyed by `/v4`, IPv6 clients by `/v6` (clamped to 32 and 128).
    pub fn new(v4: u8, v6: u8) -> Self {
        Self {
            v4: v4.min(32),
            v6: v6.min(128),
        }
    }

    /// The IPv4 prefix length.
    pub fn v4(&self) -> u8 {
        self.v4
    }

    /// The IPv6 prefix length.
    pub fn v6(&self) -> u8 {
        self.v6
    }

    /// The key `ip` counts against.
    pub fn key(&self, ip: IpAddr) -> IpKey {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(self.v4);
                // IPv4 keys live in the IPv4-mapped range ::ffff:0:0/96, which canonical()
                // guarantees no IPv6 client address occupies.
                let mapped = Ipv4Addr::from(bits).to_ipv6_mapped();
                IpKey::from_u128(u128::from(mapped), self.v4 + 96)
            }
            IpAddr::V6(v6) => IpKey::from_u128(u128::from(v6) & mask128(self.v6), self.v6),
        }
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// A client network: the masked address a limit is counted against.
///
/// 17 bytes of payload in two `u64` (so map entries stay 8-byte aligned) and a prefix
/// length; printable as a CIDR (`192.0.2.7/32`, `2001:db8:1:2::/64`) for logs and Redis keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    hi: u64,
    lo: u64,
    len: u8,
}

impl IpKey {
    fn from_u128(bits: u128, len: u8) -> Self {
        Self {
            hi: (bits >> 64) as u64,
            lo: bits as u64,
            len,
        }
    }

    /// The network this key stands for.
    pub fn network(&self) -> IpNet {
        let bits = (u128::from(self.hi) << 64) | u128::from(self.lo);
        let v6 = Ipv6Addr::from(bits);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => IpNet::new(IpAddr::V4(v4), self.len - 96)
                .unwrap_or_else(|_| IpNet::from(IpAddr::V4(v4))),
            _ => {
                IpNet::new(IpAddr::V6(v6), self.len).unwrap_or_else(|_| IpNet::from(IpAddr::V6(v6)))
            }
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.network().fmt(f)
    }
}

/// A list of networks (an allow-list or a deny-list).
#[derive(Debug, Clone, Default)]
pub(crate) struct NetList(Arc<[IpNet]>);

impl NetList {
    pub(crate) fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self(nets.into_iter().collect())
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_key() {
        let p = KeyPrefix::default();
        assert_eq!(
            p.key(ip("2001:db8:1:2::1")),
            p.key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(p.key(ip("2001:db8:1:2::1")), p.key(ip("2001:db8:1:3::1")));
        assert_eq!(
            p.key(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn ipv4_keys_by_address_and_mapped_form_is_the_same_client() {
        let p = KeyPrefix::default();
        assert_ne!(p.key(ip("192.0.2.1")), p.key(ip("192.0.2.2")));
        assert_eq!(p.key(ip("192.0.2.1")), p.key(ip("::ffff:192.0.2.1")));
        assert_eq!(p.key(ip("192.0.2.1")).to_string(), "192.0.2.1/32");
        let p24 = KeyPrefix::new(24, 48);
        assert_eq!(p24.key(ip("192.0.2.1")), p24.key(ip("192.0.2.200")));
        assert_eq!(p24.key(ip("192.0.2.1")).to_string(), "192.0.2.0/24");
        assert_eq!(
            p24.key(ip("2001:db8:1:2::1")),
            p24.key(ip("2001:db8:1:9::1"))
        );
    }

    #[test]
    fn ipv4_and_ipv6_never_collide_and_prefixes_clamp() {
        let p = KeyPrefix::new(0, 0);
        assert_ne!(p.key(ip("0.0.0.0")), p.key(ip("::")));
        assert_eq!(KeyPrefix::new(99, 200), KeyPrefix::new(32, 128));
        let full = KeyPrefix::new(32, 128);
        assert_eq!(full.key(ip("::1")).to_string(), "::1/128");
    }

    #[test]
    fn net_list_matches_mapped_addresses() {
        let l = NetList::new(["10.0.0.0/8".parse().unwrap()]);
        assert!(l.contains(ip("10.1.2.3")));
        assert!(l.contains(ip("::ffff:10.1.2.3")));
        assert!(!l.contains(ip("11.0.0.1")));
    }
}
