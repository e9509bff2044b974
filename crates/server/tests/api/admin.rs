use reqwest::Method;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn device_requests_check_in_with_their_client_version() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let before = server.device(&device.id).await;
    assert_eq!(before.last_seen_at, None);
    assert_eq!(before.version, None);

    let (status, _) = send(
        server
            .request(Method::GET, "/api/sync/schema", Some(&device.token))
            .header(
                "user-agent",
                format!("{}1.2.3", ferry_proto::CLIENT_AGENT_PREFIX),
            ),
    )
    .await;
    assert_eq!(status, 200);
    let seen = server.device(&device.id).await;
    let seen_at = ferry_core::time::parse_ms(seen.last_seen_at.as_deref().unwrap()).unwrap();
    assert!((seen_at - now_ms()).abs() < 60_000);
    assert_eq!(seen.version.as_deref(), Some("1.2.3"));
    assert_eq!(seen.last_push_at, None);

    let body = json!({"device_id": device.id, "schema_hash": server.schema_hash,
                      "changes": [product("p1", "Cola", &v(1, "a"))], "pending": 7});
    let (status, _) = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&device.token),
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    let pushed = server.device(&device.id).await;
    assert!(pushed.last_push_at.is_some());
    assert_eq!(pushed.pending, 7);
    assert_eq!(
        pushed.version.as_deref(),
        Some("1.2.3"),
        "a request without the agent keeps it"
    );
    assert!(pushed.last_seen_at >= seen.last_seen_at);

    assert_eq!(pushed.last_pull_at, None);
    server.pull(&device, None, None).await;
    assert!(server.device(&device.id).await.last_pull_at.is_some());
}

#[tokio::test]
async fn a_revoked_device_gets_401_everywhere() {
    let server = Server::start().await;
    let device = server.pair("Lost tablet").await;
    let keeper = server.pair("Keeper").await;
    let (status, _) = server.pull(&device, None, None).await;
    assert_eq!(status, 200);

    let path = format!("/api/admin/devices/{}", device.id);
    let (status, body) = server
        .call(Method::DELETE, &path, Some(&server.admin), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_error(&server.pull(&device, None, None).await, 401, "unauthorized");
    assert_error(&server.push(&device, json!([])).await, 401, "unauthorized");
    assert!(server.device(&device.id).await.revoked_at.is_some());
    assert!(server.device(&keeper.id).await.revoked_at.is_none());
    assert_eq!(server.pull(&keeper, None, None).await.0, 200);

    let got = server
        .call(
            Method::DELETE,
            "/api/admin/devices/dev_unknown",
            Some(&server.admin),
            None,
        )
        .await;
    assert_error(&got, 404, "not_found");
}

#[tokio::test]
async fn roles_decide_who_may_read_and_who_may_manage() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let viewer = server
        .store
        .create_operator_token(DEFAULT_TENANT, ferry_store::Role::Viewer, None)
        .await
        .unwrap();
    let operator = server
        .store
        .create_operator_token(DEFAULT_TENANT, ferry_store::Role::Operator, None)
        .await
        .unwrap();
    for token in [&viewer, &operator, &server.admin] {
        let (status, body) = server
            .call(Method::GET, "/api/admin/devices", Some(token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["devices"][0]["device_id"], device.id.as_str());
        let (status, _) = server
            .call(Method::GET, "/api/sync/schema", Some(token), None)
            .await;
        assert_eq!(status, 200);
    }
    let path = format!("/api/admin/devices/{}", device.id);
    for token in [&viewer, &operator, &device.token] {
        let got = server.call(Method::DELETE, &path, Some(token), None).await;
        assert_error(&got, 403, "forbidden");
    }
    let got = server
        .call(Method::GET, "/api/admin/devices", Some(&device.token), None)
        .await;
    assert_error(&got, 403, "forbidden");
    // Operators cannot act as devices.
    let got = server
        .call(Method::GET, "/api/sync/pull", Some(&operator), None)
        .await;
    assert_error(&got, 403, "forbidden");
    assert!(server.device(&device.id).await.revoked_at.is_none());
}

#[tokio::test]
async fn expired_and_revoked_operator_tokens_are_401() {
    let server = Server::start().await;
    let expired = server
        .store
        .create_operator_token(
            DEFAULT_TENANT,
            ferry_store::Role::Admin,
            Some(now_ms() - 1000),
        )
        .await
        .unwrap();
    let got = server
        .call(Method::GET, "/api/admin/devices", Some(&expired), None)
        .await;
    assert_error(&got, 401, "unauthorized");
    let revoked = server
        .store
        .create_operator_token(
            DEFAULT_TENANT,
            ferry_store::Role::Admin,
            Some(now_ms() + 60_000),
        )
        .await
        .unwrap();
    assert_eq!(
        server
            .call(Method::GET, "/api/admin/devices", Some(&revoked), None)
            .await
            .0,
        200
    );
    assert!(server.store.revoke_token(&revoked).await.unwrap());
    let got = server
        .call(Method::GET, "/api/admin/devices", Some(&revoked), None)
        .await;
    assert_error(&got, 401, "unauthorized");
}

#[tokio::test]
async fn the_schema_endpoint_serves_ddl_with_the_same_hash() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let (status, body) = server
        .call(Method::GET, "/api/sync/schema", Some(&device.token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["schema_hash"], server.schema_hash.as_str());
    let parsed = ferry_schema::parse_ddl(body["ddl"].as_str().unwrap()).unwrap();
    assert_eq!(ferry_schema::hash(&parsed), server.schema_hash);
    let got = server
        .call(Method::GET, "/api/sync/schema", None, None)
        .await;
    assert_error(&got, 401, "unauthorized");
}
