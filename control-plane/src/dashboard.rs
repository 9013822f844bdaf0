//! The web dashboard: a small single-page app served by meshd on the admin address at
//! `/dashboard`, its files embedded in the binary (no build step, no CDN, nothing fetched from
//! elsewhere). It is a client of the admin API like meshctl, with no API of its own:
//!
//! - login: the operator pastes the admin token or the read-only viewer token
//!   (`<data-dir>/viewer-token`); the page checks it with `GET /api/v1/whoami`, keeps it in
//!   `sessionStorage` (gone with the tab; never in a URL or a cookie, so no cross-site request
//!   can carry it) and sends it as `Authorization: Bearer` on every call. The viewer sees no
//!   control that changes anything, and the API refuses (403, audited) whatever it would send.
//! - live data: `GET /api/v1/events` (server-sent events, read with `fetch()` because
//!   `EventSource` cannot send a header) for summaries and per-sidecar changes;
//!   `GET /api/v1/sidecars?offset=&limit=&q=&state=` for one page of the fleet;
//!   `GET /api/v1/stats` for the charts' history; `GET /api/v1/ca`, `/api/v1/documents`,
//!   `/api/v1/sidecars/{id}` and `/config` for the other views.
//!
//! The files hold no data, so they are served without a token, with a strict
//! Content-Security-Policy (scripts, styles and connections to this origin only; no inline
//! script; not framed).

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("dashboard/assets/index.html");
const APP_JS: &str = include_str!("dashboard/assets/app.js");
const APP_CSS: &str = include_str!("dashboard/assets/app.css");
const FAVICON_SVG: &str = include_str!("dashboard/assets/favicon.svg");

/// The dashboard's path on the admin address.
pub const PATH: &str = "/dashboard";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes (no state: the files are constants).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/dashboard/", get(|| async { Redirect::permanent(PATH) }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/dashboard/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
        .route("/", get(|| async { Redirect::temporary(PATH) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary only; `no-cache` revalidates after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
