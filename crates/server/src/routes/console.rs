//! The admin console at `/console/`: static pages embedded in the binary, and
//! `GET /api/admin/whoami`, which tells a console what the token it signed in with may do.
//!
//! The pages are plain HTML, one stylesheet and ES modules (`crates/server/console/`), read
//! into the binary at build time, so `cargo run` serves them with no build step. They hold no
//! data: they call the JSON API with the operator token the person signed in with (kept in the
//! tab's `sessionStorage`), so the API alone decides what a token may see and do. Every asset
//! is served with a Content-Security-Policy that allows only the console's own scripts and
//! styles (no inline script, no other origin) and forbids framing.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use ferry_proto::WhoAmI;
use ferry_store::DEFAULT_TENANT;

use crate::auth::ReadAccess;
use crate::{ApiError, AppState};

/// The console's policy: its own scripts, styles and images only, API calls to its own
/// origin, no plugins, no framing, forms only to itself.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its path under `/console/` and its type.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// An embedded file of `crates/server/console/`, served at its own path under `/console/`.
macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_str!(concat!("../../console/", $path)),
        }
    };
}

/// Every file of the console. A new file is added here and nowhere else.
const ASSETS: &[Asset] = &[
    Asset {
        path: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../console/index.html"),
    },
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/main.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/sync.js", JS),
    asset!("js/runs.js", JS),
    asset!("js/devices.js", JS),
    asset!("js/conflicts.js", JS),
    asset!("js/billing.js", JS),
];

/// `GET /console`: the console lives under `/console/`, where its relative links work.
pub(crate) async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/` and `GET /console/{path}`: an embedded file.
pub(crate) async fn asset(
    uri: Uri,
    path: Result<axum::extract::Path<String>, PathRejection>,
) -> Response {
    let path = path
        .map(|axum::extract::Path(path)| path)
        .unwrap_or_default();
    let Some(asset) = ASSETS.iter().find(|asset| asset.path == path) else {
        return ApiError::not_found(format!("There is no console page at {}.", uri.path()))
            .into_response();
    };
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change only with the binary; asking again each time costs little.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// `GET /api/admin/whoami` (any operator role): the token's tenant and role, whether it
/// reaches the deployment's sync jobs and billing, and which jobs this server runs.
pub(crate) async fn whoami(State(state): State<AppState>, reader: ReadAccess) -> Json<WhoAmI> {
    let deployment = reader.tenant == DEFAULT_TENANT;
    let jobs = if deployment && state.jobs.is_some() {
        state.config.sync_jobs.clone()
    } else {
        Vec::new()
    };
    Json(WhoAmI {
        tenant: reader.tenant,
        role: reader.role.as_str().to_owned(),
        deployment,
        jobs,
        billing: deployment && state.billing.is_some(),
    })
}
