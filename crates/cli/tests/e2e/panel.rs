//! The Cloud Sync panel and pill (`GET /`, `/pill`, `/pill.js`, `/assets/*`) and the devices
//! list they read (`GET /local/devices`), served by an agent on a real socket. The browser
//! tests are in `panel_browser`.

use ferry_client::{Client, ClientOptions};
use ferry_testkit::TestServer;
use ferry_testkit::pos::*;

use crate::agent::LocalApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_list_comes_from_the_server_with_this_device_marked() {
    let server = TestServer::start().await;
    let a = server.pair_device("Desktop A").await;
    let b = server.pair_device("Tablet B").await;
    b.sync_ok().await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;

    let (status, body) = api.get("/local/devices").await;
    assert_eq!(status, 200, "{body}");
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{body}");
    let mine = devices.iter().find(|d| d["this_device"] == true).unwrap();
    assert_eq!(mine["device_id"], a.device_id.as_str());
    assert_eq!(mine["name"], "Desktop A");
    let other = devices.iter().find(|d| d["this_device"] == false).unwrap();
    assert_eq!(other["name"], "Tablet B");
    assert!(other["last_seen_at"].is_string(), "{body}");
    // As the server gives it.
    let (_, served) = server
        .request(
            reqwest::Method::GET,
            "/api/sync/devices",
            Some(&device_token(&b)),
            None,
        )
        .await;
    assert_eq!(served["devices"].as_array().unwrap().len(), 2);

    server.stop().await;
    let (status, body) = api.get("/local/devices").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(body["error"]["details"].is_object(), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot be reached"), "{message}");
    assert!(
        message.contains("back online"),
        "says what happens next: {message}"
    );
}

/// The device token saved in a paired file (the agent never shows it; the test reads it to
/// compare with the server's own answer).
fn device_token(device: &ferry_testkit::TestDevice) -> String {
    device
        .app()
        .query_row(
            "SELECT value FROM _ferry_state WHERE key = 'token'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_and_the_pill_are_served_with_a_strict_policy() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;
    let get = |path: &str| api.http.get(format!("{}{path}", api.url)).send();

    let panel = get("/").await.unwrap();
    assert_eq!(panel.status(), 200);
    assert_eq!(panel.headers()["content-type"], "text/html; charset=utf-8");
    let csp = panel.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(panel.headers()["x-frame-options"], "DENY");
    let html = panel.text().await.unwrap();
    assert!(html.contains("Force sync now") && html.contains("Show advanced"));
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );

    // The pill may be framed by the app's page; it has no action.
    let pill = get("/pill").await.unwrap();
    assert_eq!(pill.status(), 200);
    assert!(pill.headers().get("x-frame-options").is_none());
    let csp = pill.headers()["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("frame-ancestors") && csp.contains("script-src 'self'"));

    let embed = get("/pill.js").await.unwrap();
    assert_eq!(embed.status(), 200);
    assert_eq!(
        embed.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        embed.headers()["cross-origin-resource-policy"],
        "cross-origin"
    );
    assert!(embed.text().await.unwrap().contains("/pill"));

    for (path, kind) in [
        ("/assets/panel.js", "text/javascript"),
        ("/assets/status.js", "text/javascript"),
        ("/assets/pill.js", "text/javascript"),
        ("/assets/panel.css", "text/css"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let asset = get(path).await.unwrap();
        assert_eq!(asset.status(), 200, "{path}");
        let content_type = asset.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            asset.headers()["cross-origin-resource-policy"],
            "same-origin"
        );
    }
    let (status, body) = api.get("/assets/nothing.js").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // A method a path does not take has the contract's body too.
    let (status, body) = api.get("/local/sync").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // Pages too are for loopback names only.
    let refused = api
        .http
        .get(format!("{}/", api.url))
        .header("host", "rebound.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_cannot_force_a_sync_or_a_pull() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    insert_product(&a.app(), "p1", None, "Cola", 250);
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, agent) = LocalApi::start(client).await;
    let before = agent.log(20).await.unwrap().len();

    let host = api.url.trim_start_matches("http://").to_owned();
    for path in ["/local/sync", "/local/pull"] {
        for (name, value) in [
            ("origin", "https://evil.example".to_owned()),
            ("origin", "http://127.0.0.1:1".to_owned()),
            ("origin", "null".to_owned()),
            ("sec-fetch-site", "cross-site".to_owned()),
        ] {
            let response = api
                .http
                .post(format!("{}{path}", api.url))
                .header(name, value.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{path} {name}: {value}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "forbidden", "{body}");
        }
    }
    // Nothing ran for them: only the agent's first automatic cycle, if it ended by now.
    let after = agent.log(20).await.unwrap();
    assert!(
        after.iter().all(|c| c.trigger.as_str() == "schedule") && after.len() <= before + 1,
        "{after:?}"
    );

    // The panel's own page, and programs that send no Origin, may.
    let response = api
        .http
        .post(format!("{}/local/sync", api.url))
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, report) = api.post("/local/sync").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
}
