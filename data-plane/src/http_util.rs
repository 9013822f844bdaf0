//! HTTP pieces both proxy directions share: the body type, hop-by-hop header hygiene, the
//! identity header, W3C trace context, and the sidecar's own error responses.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy handles: the incoming one, a buffered one (for retries), or its own.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The verified SPIFFE ID of the caller, set by the inbound sidecar for the application.
/// Whatever arrives under this name from outside is removed first.
pub const PEER_IDENTITY: HeaderName = HeaderName::from_static("x-mesh-peer-identity");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// A header older sidecars sent on the mesh hop to choose the version the receiving sidecar
/// spoke to its application. That is the Service port's `appProtocol` now, never a header:
/// removed wherever it is seen (from the application, and before the application).
pub const LEGACY_APP_PROTOCOL: HeaderName = HeaderName::from_static("x-mesh-app-protocol");
/// Names the sidecar that produced an error response, so a client can tell it from the app's.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("x-mesh-proxy-error");

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A response made by the sidecar itself (404, 403, 429, 503, 504, ...).
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("mesh-proxy: {message}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(message) {
        r.headers_mut().insert(PROXY_ERROR, v);
    }
    r
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1), including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // `te: trailers` is end to end in practice: gRPC requires it, and HTTP/2 allows it.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The first transfer coding other than `chunked` that a message declares (`gzip` of
/// `Transfer-Encoding: gzip, chunked`). The sidecar re-frames bodies (HTTP/2 has no transfer
/// codings), so it cannot carry one: such a request is refused with 501 rather than its coding
/// silently dropped.
pub fn foreign_transfer_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .find(|c| !c.is_empty() && c != "chunked")
}

/// The request's host, lower case, with the port if it had one: the URI's authority when it
/// has one (HTTP/2 `:authority`; an absolute-form HTTP/1.1 request line, which RFC 9112
/// §3.2.2 says wins over `Host`), else `Host`. The forwarded request carries this one host;
/// a conflicting `Host` is replaced.
pub fn host_of<B>(req: &http::Request<B>) -> Option<String> {
    req.uri()
        .authority()
        // Userinfo (`user@host`) is no part of the host.
        .and_then(|a| a.as_str().rsplit('@').next())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .map(|h| h.to_ascii_lowercase())
}

/// The HTTP/2 header-list size every mesh-proxy listener accepts (SETTINGS_MAX_HEADER_LIST_SIZE,
/// as Envoy's default 60 KiB), and the limit assumed for a mesh peer until its own SETTINGS
/// arrive.
pub const MAX_HEADER_LIST_SIZE: u32 = 60 * 1024;

/// The size of a request's header list as HTTP/2 counts it (RFC 9113 §6.5.2: name + value +
/// 32 per field, pseudo-headers included).
pub fn header_list_size<B>(req: &http::Request<B>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    let uri = req.uri();
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(1, |p| p.as_str().len());
    let scheme = uri.scheme_str().map_or(4, str::len);
    fields
        + (":method".len() + req.method().as_str().len() + 32)
        + (":scheme".len() + scheme + 32)
        + (":authority".len() + authority + 32)
        + (":path".len() + path + 32)
}

/// The same for a response's headers (`:status` included).
pub fn response_header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum::<usize>()
        + ":status".len()
        + 3
        + 32
}

/// Methods that may be sent twice with the same effect (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Adds a W3C `traceparent` (version 00, sampled) when the request carries no valid one.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    let valid = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_valid_traceparent);
    if valid {
        return;
    }
    let trace_id = loop {
        let id = fastrand::u128(..);
        if id != 0 {
            break id;
        }
    };
    let span_id = loop {
        let id = fastrand::u64(..);
        if id != 0 {
            break id;
        }
    };
    let value = format!("00-{trace_id:032x}-{span_id:016x}-01");
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(TRACEPARENT, v);
    }
}

/// `00-<32 hex, not all zero>-<16 hex, not all zero>-<2 hex>` (W3C Trace Context §3.2).
pub fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, span, flags]
        if hex(version, 2) && *version != "ff" && hex(trace, 32) && nonzero(trace)
            && hex(span, 16) && nonzero(span) && hex(flags, 2))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traceparent_is_added_when_missing_and_kept_when_valid() {
        let mut h = HeaderMap::new();
        ensure_traceparent(&mut h);
        let v = h.get(&TRACEPARENT).unwrap().to_str().unwrap().to_string();
        assert!(is_valid_traceparent(&v), "{v}");
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, given.parse().unwrap());
        ensure_traceparent(&mut h);
        assert_eq!(h.get(&TRACEPARENT).unwrap(), given);
        h.insert(TRACEPARENT, "garbage".parse().unwrap());
        ensure_traceparent(&mut h);
        assert_ne!(h.get(&TRACEPARENT).unwrap(), "garbage");
    }

    #[test]
    fn the_authority_of_the_request_target_wins_over_host() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap()
        };
        assert_eq!(host_of(&req("/x", Some("B:80"))).unwrap(), "b:80");
        assert_eq!(host_of(&req("http://svc/x", Some("other"))).unwrap(), "svc");
        assert_eq!(
            host_of(&req("http://u:p@svc:8080/x", None)).unwrap(),
            "svc:8080"
        );
        assert!(host_of(&req("/x", None)).is_none());
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
