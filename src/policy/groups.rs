//! Named allowlists as sorted, merged address ranges.
//!
//! A lookup is one binary search per group, so 10,000 CIDRs cost about as much
//! as two. Addresses are compared in canonical form: IPv4-mapped IPv6 networks
//! are stored as IPv4, because client addresses are canonicalised the same way.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// The built-in group the integration connects from.
pub const INTEGRATION_MANAGEMENT: &str = "integration-management";
pub const INTEGRATION_MANAGEMENT_CIDRS: [&str; 2] = ["50.18.194.14/32", "54.241.171.180/32"];

#[derive(Debug, Clone, Default)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    cidrs: Vec<IpNet>,
}

impl IpSet {
    pub fn new(cidrs: impl IntoIterator<Item = IpNet>) -> IpSet {
        let cidrs: Vec<IpNet> = cidrs.into_iter().map(canonical_net).collect();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in &cidrs {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        IpSet { v4: merge(v4), v6: merge(v6), cidrs }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    pub fn cidrs(&self) -> &[IpNet] {
        &self.cidrs
    }

    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }
}

/// `::ffff:a.b.c.d/120` is stored as `a.b.c.d/24`, since that is how such clients are seen.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let IpAddr::V4(v4) = IpAddr::V6(n.network()).to_canonical() {
            if n.prefix_len() >= 96 {
                if let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(v4net);
                }
            }
        }
    }
    net.trunc()
}

fn merge<T: Ord + Copy + One>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if let Some(last) = out.last_mut() {
            if start <= last.1 || last.1.checked_inc() == Some(start) {
                if end > last.1 {
                    last.1 = end;
                }
                continue;
            }
        }
        out.push((start, end));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && ranges[i - 1].1 >= x
}

trait One: Sized {
    fn checked_inc(self) -> Option<Self>;
}
impl One for u32 {
    fn checked_inc(self) -> Option<Self> {
        self.checked_add(1)
    }
}
impl One for u128 {
    fn checked_inc(self) -> Option<Self> {
        self.checked_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> IpSet {
        IpSet::new(cidrs.iter().map(|c| c.parse().unwrap()))
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_and_near_miss_addresses() {
        let s = set(&INTEGRATION_MANAGEMENT_CIDRS);
        assert!(s.contains(ip("50.18.194.14")));
        assert!(s.contains(ip("54.241.171.180")));
        for miss in ["50.18.194.13", "50.18.194.15", "54.241.171.181", "54.241.171.179", "0.0.0.0"] {
            assert!(!s.contains(ip(miss)), "{miss}");
        }
    }

    #[test]
    fn mapped_ipv6_clients_match_ipv4_networks_and_back() {
        let s = set(&["203.0.113.0/24"]);
        assert!(s.contains(ip("::ffff:203.0.113.9")));
        let mapped = set(&["::ffff:198.51.100.0/120"]);
        assert!(mapped.contains(ip("198.51.100.7")));
        assert!(!mapped.contains(ip("198.51.101.7")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "2001:db8::/32"]);
        assert_eq!(s.v4, vec![(0x0a000000, 0x0a0001ff)]);
        assert!(s.contains(ip("10.0.1.255")));
        assert!(!s.contains(ip("10.0.2.0")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::1")));
    }

    #[test]
    fn ten_thousand_cidrs_agree_with_a_linear_scan() {
        let nets: Vec<IpNet> =
            (0..10_000u32).map(|i| IpNet::V4(Ipv4Net::new((0x0b000000 + i * 512).into(), 24).unwrap())).collect();
        let s = IpSet::new(nets.clone());
        for probe in (0x0b000000u32..0x0b000000 + 10_000 * 512).step_by(97) {
            let a = IpAddr::V4(probe.into());
            assert_eq!(s.contains(a), nets.iter().any(|n| n.contains(&a)), "{a}");
        }
    }
}
