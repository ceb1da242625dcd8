//! Header hygiene between the client and the cart.
//!
//! Hop-by-hop headers (and every header the client's Connection names) are
//! removed *before* the guard adds its own forwarding headers, so
//! `Connection: X-Forwarded-For` cannot delete them. Forwarding headers from the
//! client are always replaced by what the guard believes.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::policy::client_ip::ClientAddr;

// Names are parsed once here, not on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers a client could use to lie about itself to the cart (carts and
/// plugins read several of these to find the client address or HTTPS).
static FORWARDING: [HeaderName; 14] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("forwarded"),
    X_REAL_IP,
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    X_REQUEST_ID,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

pub struct Forwarding<'a> {
    pub client: &'a ClientAddr,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a str,
}

/// Sets X-Forwarded-For to the believed chain plus the peer (for a trusted
/// peer), or to the client alone; X-Real-IP to the client; proto, host and id.
pub fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding) {
    // Behind a TLS-terminating load balancer (a trusted proxy) the scheme it saw is the truth.
    let proto = match headers.get(&X_FORWARDED_PROTO).map(|v| v.as_bytes()) {
        Some(b"https") if f.client.peer_trusted => "https",
        Some(b"http") if f.client.peer_trusted => "http",
        _ => f.proto,
    };
    for name in &FORWARDING {
        headers.remove(name);
    }
    let real_ip = ip_string(f.client.ip);
    let mut xff = String::new();
    for ip in &f.client.chain {
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(&ip_string(*ip));
    }
    if xff.is_empty() {
        xff.push_str(&real_ip);
    }
    if f.client.peer_trusted && f.client.ip != f.client.peer {
        xff.push_str(", ");
        xff.push_str(&ip_string(f.client.peer));
    }
    insert(headers, X_FORWARDED_FOR, &xff);
    insert(headers, X_REAL_IP, &real_ip);
    insert(headers, X_FORWARDED_PROTO, proto);
    if let Some(host) = f.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    insert(headers, X_REQUEST_ID, f.request_id);
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// An address as text, like `Display`, with IPv4 (the common case) done by hand:
/// std's formatter costs more than the rest of building a header.
pub fn ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// Sum of header name and value lengths, as a size check independent of framing.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::client_ip::Resolution;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn connection_named_headers_go_first_then_ours_are_added() {
        let mut h = map(&[
            ("connection", "x-forwarded-for, x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        let client = ClientAddr {
            ip: "192.0.2.1".parse().unwrap(),
            peer: "192.0.2.1".parse().unwrap(),
            peer_trusted: false,
            how: Resolution::Peer,
            chain: vec![],
        };
        set_forwarding(&mut h, &Forwarding { client: &client, proto: "https", host: None, request_id: "abc" });
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        for gone in ["x-secret", "keep-alive", "te", "upgrade", "connection"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert!(h.get("accept").is_some());
    }

    #[test]
    fn trusted_chain_is_kept_and_peer_appended() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1, 50.18.194.14")]);
        let client = ClientAddr {
            ip: "50.18.194.14".parse().unwrap(),
            peer: "127.0.0.1".parse().unwrap(),
            peer_trusted: true,
            how: Resolution::Header,
            chain: vec!["50.18.194.14".parse().unwrap()],
        };
        set_forwarding(&mut h, &Forwarding { client: &client, proto: "http", host: None, request_id: "abc" });
        assert_eq!(h.get("x-forwarded-for").unwrap(), "50.18.194.14, 127.0.0.1");
        assert_eq!(h.get("x-real-ip").unwrap(), "50.18.194.14");
    }

    #[test]
    fn proto_from_a_trusted_proxy_is_kept_and_from_others_replaced() {
        let mut client = ClientAddr {
            ip: "192.0.2.1".parse().unwrap(),
            peer: "10.0.0.1".parse().unwrap(),
            peer_trusted: true,
            how: Resolution::Header,
            chain: vec![],
        };
        let mut h = map(&[("x-forwarded-proto", "https"), ("x-forwarded-ssl", "on"), ("client-ip", "50.18.194.14")]);
        set_forwarding(&mut h, &Forwarding { client: &client, proto: "http", host: None, request_id: "a" });
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert!(h.get("x-forwarded-ssl").is_none());
        assert!(h.get("client-ip").is_none());
        client.peer_trusted = false;
        let mut h = map(&[("x-forwarded-proto", "https")]);
        set_forwarding(&mut h, &Forwarding { client: &client, proto: "http", host: None, request_id: "a" });
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn ip_string_matches_display() {
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "50.18.194.14", "::1", "2001:db8::7", "::ffff:1.2.3.4"]
        {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }
}
