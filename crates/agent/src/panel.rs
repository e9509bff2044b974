//! The Cloud Sync panel (`GET /`) and the header pill (`GET /pill`, `GET /pill.js`): pages
//! embedded in the binary, thin clients of the `/local/*` API (the calls a script would make),
//! in plain HTML, one stylesheet and ES modules under `panel/`.
//!
//! Every page has a strict Content Security Policy: scripts, styles and connections from the
//! agent's own origin only, no inline script or style, and the scripts write text only through
//! `textContent`. The panel, which has buttons, may not be framed (`frame-ancestors 'none'`),
//! so another page cannot trick a click on "Force pull from cloud". The pill page has no
//! action and may be framed by any page: that is how an app puts it in its header. It posts
//! nothing to the page that frames it, so the frame shows the status without handing it to
//! that page (the status is not served with CORS headers to any other origin either).
//! `/pill.js` is a classic script an app's page includes; it only adds that frame.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_proto::ErrorCode;

use crate::Agent;
use crate::http::error;

const PANEL_HTML: &str = include_str!("../panel/index.html");
const PILL_HTML: &str = include_str!("../panel/pill.html");
const EMBED_JS: &str = include_str!("../panel/embed.js");

const JS: &str = "text/javascript; charset=utf-8";

/// The files under `/assets/`: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "panel.css",
        "text/css; charset=utf-8",
        include_str!("../panel/panel.css"),
    ),
    ("panel.js", JS, include_str!("../panel/panel.js")),
    ("pill.js", JS, include_str!("../panel/pill.js")),
    ("status.js", JS, include_str!("../panel/status.js")),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../panel/favicon.svg"),
    ),
];

/// The policy of both pages; the panel adds `frame-ancestors 'none'`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'";

pub(crate) fn routes() -> Router<Agent> {
    Router::new()
        .route("/", get(|| async { page(PANEL_HTML, Framing::Never) }))
        .route("/pill", get(|| async { page(PILL_HTML, Framing::AnyPage) }))
        .route("/pill.js", get(|| async { embed_script() }))
        .route("/assets/{name}", get(asset))
}

/// Who may show a page in a frame.
#[derive(Clone, Copy)]
enum Framing {
    Never,
    AnyPage,
}

fn page(html: &'static str, framing: Framing) -> Response {
    let (csp, frame_options) = match framing {
        Framing::Never => (format!("{CSP}; frame-ancestors 'none'"), Some("DENY")),
        Framing::AnyPage => (CSP.to_owned(), None),
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if let Some(value) = frame_options {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static(value));
    }
    response
}

/// `/pill.js`, which runs in the app's own page (another origin), so other origins may load it.
fn embed_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, JS),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "cross-origin",
            ),
        ],
        EMBED_JS,
    )
        .into_response()
}

/// The pages' own files; only the agent's pages load them.
async fn asset(Path(name): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, ..)| *n == name) else {
        return error(ErrorCode::NotFound, "no such file");
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "same-origin",
            ),
        ],
        *body,
    )
        .into_response()
}
