//! PROXY protocol v1/v2, for listeners behind a TCP load balancer: the address
//! it carries becomes the peer. On such a listener a connection without a valid
//! header is closed; elsewhere a PROXY line is just a malformed HTTP request.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// v2 headers are at most 16 + 65535 bytes; we refuse anything over this.
const MAX_HEADER: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes.
    Incomplete,
    /// Header length and the client address (None: LOCAL/UNKNOWN, use the socket peer).
    Done(usize, Option<SocketAddr>),
}

pub fn parse(buf: &[u8]) -> Result<Parsed, String> {
    use ppp::PartialResult;
    if buf.len() > MAX_HEADER {
        return Err("PROXY header too long".into());
    }
    let result = ppp::HeaderResult::parse(buf);
    if result.is_incomplete() {
        // ppp treats any prefix of a v1 line as incomplete; cap how long we wait for the newline.
        if buf.len() > 107 && !buf.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
            return Err("PROXY v1 line longer than 107 bytes".into());
        }
        return Ok(Parsed::Incomplete);
    }
    match result {
        ppp::HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Done(h.header.len(), addr))
        }
        ppp::HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
                (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                _ => None,
            };
            Ok(Parsed::Done(h.len(), addr))
        }
        ppp::HeaderResult::V1(Err(e)) => Err(format!("invalid PROXY v1 header: {e}")),
        ppp::HeaderResult::V2(Err(e)) => Err(format!("invalid PROXY v2 header: {e}")),
    }
}

/// Reads the header byte-exactly (peeking, so no HTTP bytes are consumed) within `timeout`.
pub async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, String> {
    let work = async {
        let mut buf = vec![0u8; 536];
        loop {
            let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a PROXY header".to_string());
            }
            match parse(&buf[..n])? {
                Parsed::Done(len, addr) => {
                    let mut discard = vec![0u8; len];
                    stream.read_exact(&mut discard).await.map_err(|e| e.to_string())?;
                    return Ok(addr);
                }
                Parsed::Incomplete if n == buf.len() => {
                    if buf.len() >= MAX_HEADER {
                        return Err("PROXY header too long".to_string());
                    }
                    buf.resize((buf.len() * 2).min(MAX_HEADER), 0);
                }
                Parsed::Incomplete => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no PROXY header within the header timeout".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 50.18.194.14 127.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let want = "50.18.194.14:56324".parse().unwrap();
        assert_eq!(parse(h), Ok(Parsed::Done(45, Some(want))));
        assert_eq!(parse(b"PROXY TCP4 50.18.194.14 127.0.0.1 56324"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Parsed::Done(15, None)));
        assert!(parse(b"PROXY TCP4 500.18.194.14 127.0.0.1 1 2\r\n").is_err());
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }

    #[test]
    fn v2() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            ("[2001:db8::1]:1000".parse::<SocketAddr>().unwrap(), "[::1]:443".parse::<SocketAddr>().unwrap()),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&bytes), Ok(Parsed::Done(header.len(), Some("[2001:db8::1]:1000".parse().unwrap()))));
        assert_eq!(parse(&header[..10]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn garbage_never_panics() {
        for input in
            [&b""[..], b"\r\n\r\n\0\r\nQUIT\n\xff\xff", b"PROXY", &[0u8; 200], b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"]
        {
            let _ = parse(input);
        }
        assert!(parse(&[b'P'; 5000]).is_err());
    }
}
