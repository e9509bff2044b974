use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn a_code_pairs_one_device_whose_token_then_works() {
    let server = Server::start().await;
    let code = server.code(DEFAULT_TENANT).await;
    let body = json!({"code": code, "name": "Tablet B", "platform": "android"});
    let (status, paired) = server
        .call(Method::POST, "/api/devices/pair", None, Some(body.clone()))
        .await;
    assert_eq!(status, 201, "{paired}");
    assert_eq!(paired["tenant"], DEFAULT_TENANT);
    let device_id = paired["device_id"].as_str().unwrap();
    assert!(device_id.starts_with("dev_"), "{device_id}");
    let token = paired["token"].as_str().unwrap();
    let (status, _) = server
        .call(Method::GET, "/api/sync/pull", Some(token), None)
        .await;
    assert_eq!(status, 200);
    let listed = server.device(device_id).await;
    assert_eq!(listed.name, "Tablet B");

    let again = server
        .call(Method::POST, "/api/devices/pair", None, Some(body))
        .await;
    assert_error(&again, 422, "invalid_pairing_code");
}

#[tokio::test]
async fn codes_may_be_typed_in_lower_case_without_the_dash() {
    let server = Server::start().await;
    let code = server
        .code(DEFAULT_TENANT)
        .await
        .to_lowercase()
        .replace('-', "");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": code, "name": "T"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn expired_and_unknown_codes_are_422() {
    let server = Server::start().await;
    let expired =
        ferry_server::init::create_pairing_code(&server.store, DEFAULT_TENANT, Duration::ZERO)
            .await
            .unwrap();
    let got = server
        .call(
            Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": expired.code, "name": "Late"})),
        )
        .await;
    assert_error(&got, 422, "invalid_pairing_code");
    let got = server
        .call(
            Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": "ABCD-EFGH", "name": "X"})),
        )
        .await;
    assert_error(&got, 422, "invalid_pairing_code");
    assert!(server.devices().await.is_empty(), "no device was created");
}

#[tokio::test]
async fn concurrent_redemptions_of_one_code_pair_exactly_once() {
    let server = std::sync::Arc::new(Server::start().await);
    let code = server.code(DEFAULT_TENANT).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let server = server.clone();
            let code = code.clone();
            tokio::spawn(async move {
                server
                    .call(
                        Method::POST,
                        "/api/devices/pair",
                        None,
                        Some(json!({"code": code, "name": format!("Racer {i}")})),
                    )
                    .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status != 201 {
            assert_error(&(status, body), 422, "invalid_pairing_code");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(server.devices().await.len(), 1);
}

#[tokio::test]
async fn admins_create_codes_over_http_and_others_may_not() {
    let server = Server::start().await;
    let (status, code) = server
        .call(
            Method::POST,
            "/api/admin/pairing-codes",
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, 201, "{code}");
    assert_eq!(code["tenant"], DEFAULT_TENANT);
    let expires = ferry_core::time::parse_ms(code["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires - now_ms();
    assert!(
        (14 * 60_000..=15 * 60_000).contains(&ttl),
        "expires in {ttl} ms"
    );
    let (status, _) = server
        .call(
            Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": code["code"], "name": "Via admin"})),
        )
        .await;
    assert_eq!(status, 201);

    let device = server.pair("Till").await;
    let viewer = server
        .store
        .create_operator_token(DEFAULT_TENANT, ferry_store::Role::Viewer, None)
        .await
        .unwrap();
    for token in [device.token.as_str(), viewer.as_str()] {
        let got = server
            .call(Method::POST, "/api/admin/pairing-codes", Some(token), None)
            .await;
        assert_error(&got, 403, "forbidden");
    }
    let got = server
        .call(Method::POST, "/api/admin/pairing-codes", None, None)
        .await;
    assert_error(&got, 401, "unauthorized");
}

#[tokio::test]
async fn pairing_requests_need_a_name_and_valid_json() {
    let server = Server::start().await;
    let code = server.code(DEFAULT_TENANT).await;
    for body in [
        json!({"code": code, "name": "  "}),
        json!({"code": code}),
        json!({"code": code, "name": "x", "extra": 1}),
        json!({"code": 12345678, "name": "x"}),
        // Regression guard: a NUL byte in a name answered 500 on PostgreSQL.
        json!({"code": code, "name": "Till\u{0}B"}),
        json!({"code": code, "name": "Till", "platform": "pos\u{0}"}),
        json!({"code": code, "name": "Till\nB"}),
    ] {
        let got = server
            .call(Method::POST, "/api/devices/pair", None, Some(body.clone()))
            .await;
        assert_error(&got, 400, "invalid_request");
    }
    // None of those used the code up.
    let (status, _) = server
        .call(
            Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": code, "name": "ok"})),
        )
        .await;
    assert_eq!(status, 201);
}

/// Regression guard: 2,000 wrong pairing codes were tried in 0.8 s with no pushback.
#[tokio::test]
async fn a_client_guessing_codes_or_tokens_is_held_back_with_retry_after() {
    let server = Server::start_with(None, |config| {
        config.failure_limit = ferry_server::FailureLimit {
            failures: 5,
            window: std::time::Duration::from_secs(60),
        };
    })
    .await;
    let code = server.code(DEFAULT_TENANT).await;
    let guess = |n: u32| json!({"code": format!("ZZZZ-{n:04}"), "name": "guesser"});
    for n in 0..5 {
        let got = server
            .call(Method::POST, "/api/devices/pair", None, Some(guess(n)))
            .await;
        assert_error(&got, 422, "invalid_pairing_code");
    }
    let held = reqwest::Client::new()
        .post(format!("{}/api/devices/pair", server.url))
        .json(&json!({"code": code, "name": "real"}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 429, "held back, even with the right code");
    let retry_after: u64 = held.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = held.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Unknown tokens count the same way, while a valid token always passes: the devices
    // behind one proxy address are not locked out by one revoked device.
    for _ in 0..5 {
        let got = server
            .call(Method::GET, "/api/admin/devices", Some("not-a-token"), None)
            .await;
        assert_eq!(got.0, 429, "the address is still over its limit: {got:?}");
    }
    let got = server
        .call(Method::GET, "/api/admin/devices", Some(&server.admin), None)
        .await;
    assert_eq!(got.0, 200, "{got:?}");
    // The code was not used up by the refused attempt.
    assert!(
        server
            .store
            .redeem_pairing_code(&code, "later", None)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn failed_authentications_alone_reach_the_limit() {
    let server = Server::start_with(None, |config| {
        config.failure_limit = ferry_server::FailureLimit {
            failures: 3,
            window: std::time::Duration::from_secs(60),
        };
    })
    .await;
    for _ in 0..3 {
        let got = server
            .call(Method::GET, "/api/admin/devices", Some("wrong"), None)
            .await;
        assert_error(&got, 401, "unauthorized");
    }
    let got = server
        .call(Method::GET, "/api/admin/devices", Some("wrong"), None)
        .await;
    assert_error(&got, 429, "rate_limited");
}
