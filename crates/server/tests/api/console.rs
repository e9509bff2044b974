//! The console's pages: embedded, served under `/console/` with headers that keep other
//! origins' scripts and frames out. (What they do in a browser: `tests/console`.)

use reqwest::Method;
use reqwest::redirect::Policy;

use super::support::*;

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy() {
    let server = Server::start().await;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let moved = http
        .get(format!("{}/console", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 308);
    assert_eq!(moved.headers()["location"], "/console/");

    for (path, content_type) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/js/main.js", "text/javascript; charset=utf-8"),
    ] {
        let page = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let headers = page.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert!(!page.text().await.unwrap().is_empty(), "{path}");
    }

    // The page itself has no inline script for the policy to forbid.
    let html = http
        .get(format!("{}/console/", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"<script type="module" src="js/main.js">"#));
    assert_eq!(html.matches("<script").count(), 1, "{html}");

    let missing = server
        .call(Method::GET, "/console/nothing.js", None, None)
        .await;
    assert_error(&missing, 404, "not_found");
}
