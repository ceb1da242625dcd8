//! The client-address resolver: X-Forwarded-For, Forwarded (RFC 7239) and a
//! single-address header (X-Real-IP), each from a trusted peer and from an
//! untrusted one. The input is split on '\n' into header lines (a trailing
//! '\r' is dropped); each line is one value of the configured header.
//!
//! Invariants: never panics; the resolved address is the peer or an address
//! written in the input; a trusted address only wins when every hop is trusted;
//! an untrusted peer always resolves to itself.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use cartguard::policy::client_ip::{resolve, ClientIpConfig, IpHeader, Resolution};
use cartguard::policy::groups::IpSet;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const UNTRUSTED_PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

fn configs() -> &'static [ClientIpConfig; 3] {
    static CONFIGS: OnceLock<[ClientIpConfig; 3]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        // 127.0.0.1/32 (the peer) and two more ranges, so that the seed corpus
        // (10.x and 2001:db8:ffff:: hops) exercises the "skip trusted hops" walk.
        let trusted =
            || IpSet::new(["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48"].iter().map(|c| c.parse().unwrap()));
        [
            ClientIpConfig { trusted_proxies: trusted(), header: IpHeader::XForwardedFor },
            ClientIpConfig { trusted_proxies: trusted(), header: IpHeader::Forwarded },
            ClientIpConfig {
                trusted_proxies: trusted(),
                header: IpHeader::Single(HeaderName::from_static("x-real-ip")),
            },
        ]
    })
}

/// Every address that can be read out of a token of the input: the resolver may
/// only answer with one of these (or the peer).
fn addresses_in(lines: &[&[u8]]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in lines {
        let text = String::from_utf8_lossy(line);
        for token in text.split([',', ';', '=', '"', '[', ']', ' ', '\t']) {
            if let Ok(ip) = token.parse::<IpAddr>() {
                out.push(ip.to_canonical());
            } else if let Ok(sa) = token.parse::<SocketAddr>() {
                out.push(sa.ip().to_canonical());
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect()
    };
    let written = addresses_in(&lines);
    for cfg in configs() {
        let name = HeaderName::from_bytes(cfg.header.name().as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        // Noise that must never be read.
        headers.append("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let mut values = 0usize;
        let mut items = 0usize;
        for line in &lines {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                items += line.split(|&b| b == b',').count();
                values += 1;
                headers.append(name.clone(), v);
            }
        }

        // An untrusted peer is itself, whatever it sends.
        let r = resolve(cfg, UNTRUSTED_PEER, &headers);
        assert_eq!(r.ip, UNTRUSTED_PEER);
        assert_eq!(r.how, Resolution::Peer);
        assert!(!r.peer_trusted && r.chain.is_empty());

        let r = resolve(cfg, PEER, &headers);
        assert!(r.peer_trusted);
        assert_eq!(r.peer, PEER);
        match r.how {
            Resolution::Peer => panic!("trusted peer resolved as untrusted"),
            Resolution::TrustedPeerNoHeader => {
                assert_eq!(values, 0);
                assert_eq!(r.ip, PEER);
            }
            Resolution::Malformed(_) => {
                assert_eq!(r.ip, PEER);
                assert!(r.chain.is_empty());
            }
            Resolution::Header => {
                assert!(values > 0);
                assert!(written.contains(&r.ip), "{} is not in the input {:?}", r.ip, String::from_utf8_lossy(data));
                assert_eq!(r.chain.first(), Some(&r.ip));
                for hop in &r.chain {
                    assert!(written.contains(hop), "hop {hop} is not in the input");
                }
                // Everything right of the client is a trusted proxy.
                for hop in &r.chain[1..] {
                    assert!(cfg.trusted_proxies.contains(*hop), "untrusted hop {hop} skipped");
                }
                // A trusted address is the client only when all hops are trusted,
                // and then it is the leftmost one (the chain is the whole list).
                if cfg.trusted_proxies.contains(r.ip) {
                    assert_eq!(r.chain.len(), items, "trusted {} chosen while an untrusted hop exists", r.ip);
                }
                if matches!(cfg.header, IpHeader::Single(_)) {
                    assert_eq!((values, r.chain.len()), (1, 1));
                } else {
                    assert!(r.chain.len() <= items);
                }
            }
        }
    }
});
