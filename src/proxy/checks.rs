//! HTTP-level checks that come before any policy (framing, method, sizes), and
//! the small URI and Host helpers forwarding needs. Pure functions of the request.

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::headers;
use crate::verdict::{DecisionLabel, Refusal};

/// HTTP-level checks that come before any policy: framing, method, sizes.
pub fn check_request<B>(req: &Request<B>, limits: &crate::config::Limits) -> Result<(), Refusal> {
    let bad = |reason: &'static str| Err(Refusal::bad_request(reason));
    let h = req.headers();
    if headers::header_bytes(h) > limits.max_header_bytes {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            DecisionLabel::BadRequest,
            format!("headers larger than {} bytes", limits.max_header_bytes),
        ));
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            DecisionLabel::BadRequest,
            "CONNECT is not supported",
        ));
    }
    if req.version() != Version::HTTP_2 {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            return bad("absolute-form request target (proxy request) refused");
        }
        let hosts = h.get_all(header::HOST).iter().count();
        if req.version() == Version::HTTP_11 && hosts == 0 {
            return bad("missing Host header");
        }
        if hosts > 1 {
            return bad("more than one Host header");
        }
    }
    if h.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return bad("more than one Authorization header");
    }
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return bad("both Content-Length and Transfer-Encoding");
    }
    let te: Vec<&[u8]> = h.get_all(header::TRANSFER_ENCODING).iter().map(|v| v.as_bytes()).collect();
    if !te.is_empty() && (te.len() > 1 || !te[0].eq_ignore_ascii_case(b"chunked")) {
        return bad("unsupported Transfer-Encoding");
    }
    if h.contains_key(header::UPGRADE) || h.contains_key("http2-settings") {
        return bad("protocol upgrades (websocket, h2c) are not forwarded");
    }
    if let Some(len) = h.get(header::CONTENT_LENGTH) {
        let len: u64 = std::str::from_utf8(len.as_bytes()).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
            Refusal::new(StatusCode::BAD_REQUEST, DecisionLabel::BadRequest, "invalid Content-Length")
        })?;
        if len > limits.max_body_bytes {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                DecisionLabel::BadRequest,
                format!("Content-Length {len} over the limit of {} bytes", limits.max_body_bytes),
            ));
        }
    }
    Ok(())
}

/// The Host header, or the :authority of an HTTP/2 request.
pub fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(h.clone());
    }
    req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

pub fn https_location(host: Option<&HeaderValue>, uri: &Uri) -> Option<HeaderValue> {
    let host = host?.to_str().ok()?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    HeaderValue::from_str(&format!("https://{}{}", authority.host(), target)).ok()
}

/// The request target sent to the cart: origin-form (`/path?query`), as HTTP/1.1 wants
/// it from a client that is not talking to a proxy.
pub fn origin_form(path: &str, query: Option<&str>) -> Uri {
    let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"))
}

pub fn upstream_host(url: &Uri) -> String {
    url.authority().map(|a| a.as_str().to_string()).unwrap_or_default()
}
