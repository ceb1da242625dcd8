//! Who is the client: the socket peer, or what a trusted proxy says it is.
//!
//! A forwarding header is read only when the peer is a trusted proxy, and is
//! walked from the right, skipping trusted hops. Anything malformed makes the
//! client the peer itself: a bad header can never make a client look allowlisted.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName};

use super::groups::IpSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpHeader {
    XForwardedFor,
    Forwarded,
    /// X-Real-IP, CF-Connecting-IP, ...: one address, one header line.
    Single(HeaderName),
}

impl IpHeader {
    pub fn name(&self) -> &str {
        match self {
            IpHeader::XForwardedFor => "x-forwarded-for",
            IpHeader::Forwarded => "forwarded",
            IpHeader::Single(h) => h.as_str(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    pub trusted_proxies: IpSet,
    pub header: IpHeader,
}

/// The resolved client, with what `explain` and the debug log need to show how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub peer: IpAddr,
    pub peer_trusted: bool,
    pub how: Resolution,
    /// Hops the guard believes, from the client to the hop before the peer.
    pub chain: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Peer is not a trusted proxy: its forwarding headers were ignored.
    Peer,
    /// Peer is trusted but sent no forwarding header.
    TrustedPeerNoHeader,
    /// Taken from the forwarding header.
    Header,
    /// The header was present but unusable; the client is the peer.
    Malformed(&'static str),
}

pub fn resolve(cfg: &ClientIpConfig, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
    let peer = peer.to_canonical();
    let base = |peer_trusted, how| ClientAddr { ip: peer, peer, peer_trusted, how, chain: Vec::new() };
    if !cfg.trusted_proxies.contains(peer) {
        return base(false, Resolution::Peer);
    }
    let hops = match read_hops(&cfg.header, headers) {
        Ok(None) => return base(true, Resolution::TrustedPeerNoHeader),
        Ok(Some(hops)) => hops,
        Err(why) => return base(true, Resolution::Malformed(why)),
    };
    // Right to left: the first hop that is not a trusted proxy is the client.
    let client_index = hops.iter().rposition(|ip| !cfg.trusted_proxies.contains(*ip)).unwrap_or(0);
    ClientAddr {
        ip: hops[client_index],
        peer,
        peer_trusted: true,
        how: Resolution::Header,
        chain: hops[client_index..].to_vec(),
    }
}

/// All hops the header lists, left to right; `Ok(None)` when the header is absent.
fn read_hops(header: &IpHeader, headers: &HeaderMap) -> Result<Option<Vec<IpAddr>>, &'static str> {
    let name = match header {
        IpHeader::XForwardedFor => "x-forwarded-for",
        IpHeader::Forwarded => "forwarded",
        IpHeader::Single(h) => h.as_str(),
    };
    let mut lines = Vec::new();
    for value in headers.get_all(name) {
        lines.push(value.to_str().map_err(|_| "header is not visible ASCII")?);
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let hops = match header {
        IpHeader::XForwardedFor => parse_list(&lines, parse_addr)?,
        IpHeader::Forwarded => parse_list(&lines, parse_forwarded_element)?,
        IpHeader::Single(_) => {
            if lines.len() != 1 {
                return Err("single-address header sent more than once");
            }
            vec![parse_addr(lines[0]).ok_or("not an IP address")?]
        }
    };
    Ok(Some(hops))
}

fn parse_list(lines: &[&str], parse: fn(&str) -> Option<IpAddr>) -> Result<Vec<IpAddr>, &'static str> {
    let mut hops = Vec::new();
    for line in lines {
        for item in line.split(',') {
            hops.push(parse(item).ok_or("an entry is not an IP address")?);
        }
    }
    if hops.is_empty() {
        return Err("empty");
    }
    Ok(hops)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
pub fn parse_addr(text: &str) -> Option<IpAddr> {
    let t = text.trim_matches([' ', '\t']);
    if t.is_empty() {
        return None;
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = t.strip_prefix('[') {
        if let Some(inner) = rest.strip_suffix(']') {
            return inner.parse::<std::net::Ipv6Addr>().ok().map(|a| IpAddr::V6(a).to_canonical());
        }
    }
    t.parse::<SocketAddr>().ok().map(|s| s.ip().to_canonical())
}

/// One RFC 7239 element (`for=...;proto=https;by=...`): the address in its `for=`.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in element.split(';') {
        let (name, value) = pair.trim_matches([' ', '\t']).split_once('=')?;
        if name.eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None;
            }
            let (value, quoted) = match value.strip_prefix('"') {
                Some(rest) => (rest.strip_suffix('"')?, true),
                None => (value, false),
            };
            // Unquoted IPv6 is invalid in RFC 7239 (the colon); bracketed forms must be quoted.
            if value.contains(':') && !quoted {
                return None;
            }
            found = Some(parse_addr(value)?);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cfg(trusted: &[&str], header: IpHeader) -> ClientIpConfig {
        ClientIpConfig { trusted_proxies: IpSet::new(trusted.iter().map(|c| c.parse().unwrap())), header }
    }
    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn xff(trusted: &[&str], peer: &str, values: &[&str]) -> ClientAddr {
        resolve(&cfg(trusted, IpHeader::XForwardedFor), ip(peer), &headers("x-forwarded-for", values))
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let c = xff(&["10.0.0.0/8"], "192.0.2.1", &["50.18.194.14"]);
        assert_eq!(c.ip, ip("192.0.2.1"));
        assert_eq!(c.how, Resolution::Peer);
        assert!(!c.peer_trusted);
    }

    #[test]
    fn mapped_peer_is_canonical() {
        let c = xff(&[], "::ffff:192.0.2.1", &[]);
        assert_eq!(c.ip, ip("192.0.2.1"));
    }

    #[test]
    fn walks_from_the_right_skipping_trusted_hops() {
        let c = xff(&["10.0.0.0/8"], "10.0.0.1", &["6.6.6.6, 50.18.194.14", "10.0.0.7"]);
        assert_eq!(c.ip, ip("50.18.194.14"));
        assert_eq!(c.chain, vec![ip("50.18.194.14"), ip("10.0.0.7")]);
        // A spoofed left entry does not win over the real client on the right.
        let c = xff(&["10.0.0.0/8"], "10.0.0.1", &["50.18.194.14, 192.0.2.9"]);
        assert_eq!(c.ip, ip("192.0.2.9"));
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let c = xff(&["10.0.0.0/8"], "10.0.0.1", &["10.1.1.1, 10.2.2.2"]);
        assert_eq!(c.ip, ip("10.1.1.1"));
    }

    #[test]
    fn malformed_values_fall_back_to_the_peer() {
        for bad in [
            &[""][..],
            &["   "],
            &["50.18.194.14,"],
            &["50.18.194.14, garbage"],
            &["unknown"],
            &["50.18.194.14 54.241.171.180"],
            &["1.2.3.4.5"],
        ] {
            let c = xff(&["127.0.0.1/32"], "127.0.0.1", bad);
            assert_eq!(c.ip, ip("127.0.0.1"), "{bad:?}");
            assert!(matches!(c.how, Resolution::Malformed(_)), "{bad:?}");
        }
    }

    #[test]
    fn ports_and_brackets_are_accepted() {
        assert_eq!(parse_addr("50.18.194.14:4433"), Some(ip("50.18.194.14")));
        assert_eq!(parse_addr("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("::ffff:50.18.194.14"), Some(ip("50.18.194.14")));
        assert_eq!(parse_addr("[2001:db8::1"), None);
        assert_eq!(parse_addr("50.18.194.14:99999"), None);
    }

    #[test]
    fn forwarded_header() {
        let c = cfg(&["127.0.0.1/32"], IpHeader::Forwarded);
        let h =
            headers("forwarded", &["for=192.0.2.60;proto=http;by=203.0.113.43", "For=\"[2001:db8:cafe::17]:4711\""]);
        let r = resolve(&c, ip("127.0.0.1"), &h);
        assert_eq!(r.ip, ip("2001:db8:cafe::17"));
        let h = headers("forwarded", &["for=50.18.194.14, for=\"198.51.100.17:8080\""]);
        assert_eq!(resolve(&c, ip("127.0.0.1"), &h).ip, ip("198.51.100.17"));
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=2001:db8::1",
            "for=\"[2001:db8::1\"",
            "for=1.2.3.4;for=5.6.7.8",
            "for=2001:db8::1;by=\"x\"",
        ] {
            let r = resolve(&c, ip("127.0.0.1"), &headers("forwarded", &[bad]));
            assert_eq!(r.ip, ip("127.0.0.1"), "{bad}");
        }
    }

    #[test]
    fn single_address_header() {
        let c = cfg(&["127.0.0.1/32"], IpHeader::Single(HeaderName::from_static("x-real-ip")));
        let r = resolve(&c, ip("127.0.0.1"), &headers("x-real-ip", &["54.241.171.180"]));
        assert_eq!(r.ip, ip("54.241.171.180"));
        let r = resolve(&c, ip("127.0.0.1"), &headers("x-real-ip", &["54.241.171.180", "1.2.3.4"]));
        assert_eq!(r.ip, ip("127.0.0.1"));
        let r = resolve(&c, ip("127.0.0.1"), &headers("x-real-ip", &["54.241.171.180, 1.2.3.4"]));
        assert_eq!(r.ip, ip("127.0.0.1"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::net::Ipv4Addr;

        /// A hop as a proxy writes it: the address, with a port sometimes.
        fn written(ip: Ipv4Addr, port: Option<u16>, forwarded: bool) -> String {
            match (port, forwarded) {
                (None, false) => ip.to_string(),
                (Some(p), false) => format!("{ip}:{p}"),
                (None, true) => format!("for={ip}"),
                (Some(p), true) => format!("for=\"{ip}:{p}\";proto=https"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// X-Forwarded-For and Forwarded, one line or several: the client is the
            /// rightmost hop that is not a trusted proxy (the leftmost if all are).
            #[test]
            fn client_is_the_rightmost_untrusted_hop(
                hops in prop::collection::vec(
                    (
                        any::<u32>().prop_map(Ipv4Addr::from),
                        any::<bool>(),
                        prop::option::of(any::<u16>()),
                        any::<bool>(),
                    ),
                    1..10,
                ),
                forwarded in any::<bool>(),
            ) {
                // Trusted: the peer plus a random subset of the hops.
                let trusted: Vec<String> = std::iter::once("127.0.0.1/32".to_string())
                    .chain(hops.iter().filter(|h| h.1).map(|h| format!("{}/32", h.0)))
                    .collect();
                let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
                let header = if forwarded { IpHeader::Forwarded } else { IpHeader::XForwardedFor };
                let c = cfg(&trusted, header);
                // Split the list into header lines where the generator says so.
                let mut lines = vec![Vec::new()];
                for (i, (ip, _, port, new_line)) in hops.iter().enumerate() {
                    if *new_line && i > 0 {
                        lines.push(Vec::new());
                    }
                    lines.last_mut().unwrap().push(written(*ip, *port, forwarded));
                }
                let lines: Vec<String> = lines.iter().map(|l| l.join(", ")).collect();
                let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
                let r = resolve(&c, ip("127.0.0.1"), &headers(name, &lines));

                let ips: Vec<IpAddr> = hops.iter().map(|h| IpAddr::V4(h.0)).collect();
                let want = ips.iter().rposition(|a| !c.trusted_proxies.contains(*a)).unwrap_or(0);
                prop_assert_eq!(&r.how, &Resolution::Header);
                prop_assert_eq!(r.ip, ips[want], "{:?}", lines);
                prop_assert_eq!(&r.chain, &ips[want..].to_vec());
                prop_assert!(r.peer_trusted);
            }

            /// A peer that is not a trusted proxy is the client, whatever it sends.
            #[test]
            fn untrusted_peer_is_always_itself(
                peer in any::<IpAddr>(),
                values in prop::collection::vec(
                    prop_oneof![
                        Just("50.18.194.14".to_string()),
                        Just("for=54.241.171.180".to_string()),
                        Just("127.0.0.1, 50.18.194.14".to_string()),
                        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
                        "[ -~]{0,40}",
                    ],
                    0..4,
                ),
                which in 0..3usize,
            ) {
                let trusted = ["127.0.0.0/8", "10.0.0.0/8", "::1/128", "2001:db8::/32"];
                let header = [
                    IpHeader::XForwardedFor,
                    IpHeader::Forwarded,
                    IpHeader::Single(HeaderName::from_static("x-real-ip")),
                ][which].clone();
                let c = cfg(&trusted, header);
                prop_assume!(!c.trusted_proxies.contains(peer));
                let mut h = HeaderMap::new();
                for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
                    for v in &values {
                        h.append(HeaderName::from_static(name), HeaderValue::from_str(v).unwrap());
                    }
                }
                let r = resolve(&c, peer, &h);
                prop_assert_eq!(r.ip, peer.to_canonical());
                prop_assert_eq!(r.how, Resolution::Peer);
                prop_assert!(!r.peer_trusted);
                prop_assert!(r.chain.is_empty());
            }
        }
    }
}
