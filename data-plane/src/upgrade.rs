//! HTTP/1.1 upgrades (WebSocket, RFC 9110 §7.8) end to end: the request goes on an HTTP/1.1
//! connection of its own (to the other sidecar over mesh mTLS with ALPN `http/1.1`, or to the
//! application), `Upgrade` and `Connection: upgrade` kept; when the upstream answers
//! 101 Switching Protocols, the client gets that 101 and the two upgraded connections are
//! joined byte for byte. Any other answer is passed on as it is. What cannot be carried (an
//! upgrade to an HTTP/2 application, `CONNECT` tunnels) is refused with 501, never turned into
//! a plain request.

use crate::http_util::{Body, boxed, empty, error_response, strip_hop_by_hop};
use http::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Whether `req` asks to switch protocols (HTTP/1.1 `Upgrade` with `Connection: upgrade`).
/// `Upgrade: h2c` (what `curl --http2` offers on plain HTTP; RFC 9113 deprecates it) is not:
/// it is an optional offer, declined by answering the request in HTTP/1.1.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get(UPGRADE).is_some_and(|u| {
            !u.to_str()
                .unwrap_or_default()
                .split(',')
                .all(|p| p.trim().eq_ignore_ascii_case("h2c"))
        })
        && connection_has_upgrade(req.headers())
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The hop-by-hop headers removed, except the upgrade itself.
fn keep_upgrade(headers: &mut HeaderMap) {
    let upgrade = headers.get(UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(UPGRADE, u);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sends the upgrade request over `io` (a fresh connection to the upstream) and, on 101, joins
/// the client's upgraded connection (`client`) to the upstream's.
pub async fn forward<IO>(
    io: IO,
    parts: &Parts,
    authority: &str,
    client: OnUpgrade,
    guard: impl Send + 'static,
) -> Result<Response<Body>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {}", crate::error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upgrade connection: {e}");
        }
    });
    let mut req = Request::new(empty());
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = parts.headers.clone();
    keep_upgrade(req.headers_mut());
    if let Ok(host) = HeaderValue::from_str(authority) {
        req.headers_mut().insert(HOST, host);
    }
    *req.uri_mut() = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rp, body) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        return Ok(Response::from_parts(rp, boxed(body)));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!("upgraded connection ended: {e}");
                }
            }
            (c, u) => tracing::debug!(
                client = ?c.err(),
                upstream = ?u.err(),
                "an upgrade did not complete"
            ),
        }
    });
    let (mut rp, _) = resp.into_parts();
    keep_upgrade(&mut rp.headers);
    Ok(Response::from_parts(rp, empty()))
}

/// The answer to what cannot be tunnelled.
pub fn not_implemented(what: &str) -> Response<Body> {
    error_response(StatusCode::NOT_IMPLEMENTED, what)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_upgrade_needs_both_headers_on_http1() {
        let req = |conn: &str| {
            Request::builder()
                .header("upgrade", "websocket")
                .header("connection", conn)
                .body(())
                .unwrap()
        };
        assert!(is_upgrade(&req("keep-alive, Upgrade")));
        assert!(!is_upgrade(&req("keep-alive")));
        let h2c = Request::builder()
            .header("upgrade", "h2c")
            .header("connection", "Upgrade, HTTP2-Settings")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&h2c), "an h2c offer is declined, not tunnelled");
        let mut headers = req("Upgrade, x-private").headers().clone();
        headers.insert("x-private", "1".parse().unwrap());
        keep_upgrade(&mut headers);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!headers.contains_key("x-private"));
    }
}
