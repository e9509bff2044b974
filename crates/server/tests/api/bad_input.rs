//! Every bad input gets the contract's status and code, and writes nothing.

use std::io::Write;

use reqwest::Method;
use serde_json::{Value, json};

use super::support::*;

/// A server with one device and one row already stored.
async fn seeded() -> (Server, Device) {
    let server = Server::start_with(None, |c| c.body_limit_bytes = 64 * 1024).await;
    let device = server.pair("Till").await;
    server
        .push_ok(&device, json!([product("p0", "Seed", &v(1, "a"))]))
        .await;
    (server, device)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn raw_push(server: &Server, token: &str, body: Vec<u8>, gzipped: bool) -> (u16, Value) {
    let mut request = server
        .request(Method::POST, "/api/sync/push", Some(token))
        .header("content-type", "application/json");
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    send(request.body(body)).await
}

#[tokio::test]
async fn malformed_push_bodies_are_400_and_write_nothing() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let good_change = product("p1", "Cola", &v(2, "a"));
    let hash = server.schema_hash.clone();
    let bodies: Vec<(&str, String)> = vec![
        ("malformed JSON", format!(r#"{{"device_id": "{}", "changes": ["#, device.id)),
        ("not an object", "[1, 2]".to_owned()),
        ("empty body", String::new()),
        (
            "changes of the wrong type",
            json!({"device_id": device.id, "schema_hash": hash, "changes": "all"}).to_string(),
        ),
        (
            "negative pending",
            json!({"device_id": device.id, "schema_hash": hash, "changes": [good_change], "pending": -1}).to_string(),
        ),
        (
            "missing schema_hash",
            json!({"device_id": device.id, "changes": [good_change]}).to_string(),
        ),
        (
            "unknown top-level field",
            json!({"device_id": device.id, "schema_hash": hash, "changes": [good_change], "force": true}).to_string(),
        ),
        (
            "unknown field in a change",
            json!({"device_id": device.id, "schema_hash": hash,
                   "changes": [good_change, {"table": "products", "pk": {"id": "x"}, "version": v(2, "a"), "colour": 1}]}).to_string(),
        ),
        (
            "version of the wrong type",
            json!({"device_id": device.id, "schema_hash": hash,
                   "changes": [good_change, {"table": "products", "pk": {"id": "x"}, "version": 7}]}).to_string(),
        ),
        (
            "pk that is not an object",
            json!({"device_id": device.id, "schema_hash": hash,
                   "changes": [{"table": "products", "pk": "x", "version": v(2, "a")}]}).to_string(),
        ),
    ];
    for (what, body) in bodies {
        let got = raw_push(&server, &device.token, body.into_bytes(), false).await;
        let message = assert_error(&got, 400, "invalid_request");
        assert!(!message.is_empty(), "{what}");
    }
    // A body in an encoding the server does not decode.
    let got = send(
        server
            .request(Method::POST, "/api/sync/push", Some(&device.token))
            .header("content-encoding", "br")
            .body(vec![0x1b_u8, 0x00, 0x01]),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    // Corrupt gzip.
    let got = raw_push(
        &server,
        &device.token,
        b"\x1f\x8b\x08\x00garbage".to_vec(),
        true,
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn a_large_malformed_body_is_400_and_says_where() {
    // Large bodies are parsed off the async workers; their errors read the same.
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let changes: Vec<Value> = (0..1_000)
        .map(|i| product(&format!("p{i}"), "Cola", &v(2, "a")))
        .collect();
    let mut body = json!({"device_id": device.id, "schema_hash": server.schema_hash,
                          "changes": changes})
    .to_string();
    assert!(body.len() > 64 * 1024, "the body must be a large one");
    body.pop(); // The closing brace.
    let column = body.len();
    let before = server.snapshot(DEFAULT_TENANT).await;
    let got = raw_push(&server, &device.token, body.into_bytes(), false).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(got.1["error"]["details"]["line"], 1, "{}", got.1);
    assert_eq!(got.1["error"]["details"]["column"], column, "{}", got.1);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn rejected_rows_write_nothing_while_their_request_succeeds() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let outcomes = server
        .push_ok(
            &device,
            json!([
                {"table": "ghosts", "pk": {"id": "g"}, "version": v(2, "a"), "data": {"id": "g"}},
                {"table": "products", "pk": {"id": "p9"}, "version": v(2, "a"), "data": {"id": "p9", "name": "x", "colour": "red"}},
                {"table": "products", "pk": {}, "version": v(2, "a"), "data": {"name": "x"}},
            ]),
        )
        .await;
    assert_eq!(
        outcomes,
        [
            "rejected:unknown_table",
            "rejected:schema_mismatch",
            "rejected:invalid_value"
        ]
    );
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn oversized_bodies_are_413_also_when_gzip_hides_their_size() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let many: Vec<Value> = (0..2000)
        .map(|i| {
            product(
                &format!("big{i}"),
                "A product name long enough to add up",
                &v(3, "a"),
            )
        })
        .collect();
    let body = json!({"device_id": device.id, "schema_hash": server.schema_hash, "changes": many})
        .to_string()
        .into_bytes();
    assert!(body.len() > 64 * 1024);
    let got = raw_push(&server, &device.token, body.clone(), false).await;
    assert_error(&got, 413, "payload_too_large");

    let compressed = gzip(&body);
    assert!(
        compressed.len() < 64 * 1024,
        "the compressed body fits: {}",
        compressed.len()
    );
    let got = raw_push(&server, &device.token, compressed, true).await;
    assert_error(&got, 413, "payload_too_large");

    // A JSON body padded with whitespace: tiny compressed, huge decompressed.
    let mut bomb = b"{\"device_id\": \"x\"".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 10 * 1024 * 1024));
    bomb.push(b'}');
    let got = raw_push(&server, &device.token, gzip(&bomb), true).await;
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);

    // A gzip body under the limit is accepted.
    let small = json!({"device_id": device.id, "schema_hash": server.schema_hash,
                       "changes": [product("gz", "Gzipped", &v(4, "a"))]});
    let (status, body) = raw_push(
        &server,
        &device.token,
        gzip(small.to_string().as_bytes()),
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
}

#[tokio::test]
async fn schema_mismatch_is_409_with_both_hashes_and_writes_nothing() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let body = json!({"device_id": device.id, "schema_hash": "0123abcd",
                      "changes": [product("p1", "Cola", &v(2, "a"))]});
    let got = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&device.token),
            Some(body),
        )
        .await;
    assert_error(&got, 409, "schema_mismatch");
    assert_eq!(
        got.1["error"]["details"]["server_schema_hash"],
        server.schema_hash.as_str()
    );
    assert_eq!(got.1["error"]["details"]["device_schema_hash"], "0123abcd");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
    assert!(
        server.device(&device.id).await.last_push_at.is_some(),
        "only the seed push"
    );
}

#[tokio::test]
async fn tokens_that_do_not_fit_are_401_or_403_and_write_nothing() {
    let (server, device) = seeded().await;
    let other = server.pair("Other").await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let change = json!([product("p1", "Cola", &v(2, "a"))]);
    let body =
        json!({"device_id": device.id, "schema_hash": server.schema_hash, "changes": change});

    for token in [None, Some("fy_not-a-real-token"), Some("")] {
        let got = server
            .call(Method::POST, "/api/sync/push", token, Some(body.clone()))
            .await;
        assert_error(&got, 401, "unauthorized");
    }
    let got = send(
        server
            .request(Method::POST, "/api/sync/push", None)
            .header("authorization", format!("Basic {}", device.token))
            .json(&body),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    // The token is checked while the body is read: its error still wins over the body's,
    // whether the body is malformed or over the limit (64 KiB on this server).
    for bad_body in [b"{\"changes\": [".to_vec(), vec![b' '; 256 * 1024]] {
        let got = raw_push(&server, "fy_not-a-real-token", bad_body, false).await;
        assert_error(&got, 401, "unauthorized");
    }

    // A device acting as another device.
    let got = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&other.token),
            Some(body.clone()),
        )
        .await;
    assert_error(&got, 403, "forbidden");

    // Revoked.
    let path = format!("/api/admin/devices/{}", other.id);
    assert_eq!(
        server
            .call(Method::DELETE, &path, Some(&server.admin), None)
            .await
            .0,
        204
    );
    let mine = json!({"device_id": other.id, "schema_hash": server.schema_hash, "changes": change});
    let got = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&other.token),
            Some(mine),
        )
        .await;
    assert_error(&got, 401, "unauthorized");

    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
    // The authenticated-but-refused device never got its push recorded.
    assert!(server.device(&other.id).await.last_push_at.is_none());
}

/// Sends `head` (request line and headers, no blank line) and `body` as raw bytes on a fresh
/// connection, as no well-behaved client library would; returns the status and the JSON body
/// (`Null` when empty).
async fn raw_http(server: &Server, head: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "{head}\r\nhost: {address}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
    };
    (status, body)
}

/// A push request's JSON body with one new product.
fn push_body(server: &Server, device: &Device, id: &str) -> Vec<u8> {
    json!({"device_id": device.id, "schema_hash": server.schema_hash,
           "changes": [product(id, "Cola", &v(5, "a"))]})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn an_oversized_uri_is_414_with_the_contract_body_and_writes_nothing() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let auth = format!("authorization: Bearer {}", device.token);
    let long = "a".repeat(60_000); // Over the server's 8 KiB, under hyper's own 64 KiB.
    for (head, body) in [
        (
            format!("GET /api/sync/pull?since={long} HTTP/1.1\r\n{auth}"),
            Vec::new(),
        ),
        (format!("GET /api/{long} HTTP/1.1"), Vec::new()),
        (
            format!("POST /api/sync/push?x={long} HTTP/1.1\r\n{auth}"),
            push_body(&server, &device, "long-uri"),
        ),
    ] {
        let got = raw_http(&server, &head, &body).await;
        let message = assert_error(&got, 414, "invalid_request");
        assert!(message.contains("8192"), "{message}");
        assert_eq!(got.1["error"]["details"]["limit_bytes"], 8192);
    }
    // Just under the limit is served.
    let query = format!("/api/sync/pull?limit=5&x={}", "a".repeat(8_000));
    let got = raw_http(&server, &format!("GET {query} HTTP/1.1\r\n{auth}"), &[]).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn oversized_headers_are_431_with_the_contract_body_and_write_nothing() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let auth = format!("authorization: Bearer {}", device.token);
    // 40 headers of 1 KiB: over the server's 32 KiB, under hyper's own limits.
    let many: Vec<String> = (0..40)
        .map(|i| format!("x-padding-{i}: {}", "b".repeat(1024)))
        .collect();
    let many = many.join("\r\n");
    for (head, body) in [
        (
            format!("GET /api/sync/health HTTP/1.1\r\n{many}"),
            Vec::new(),
        ),
        (
            format!("POST /api/sync/push HTTP/1.1\r\n{auth}\r\n{many}"),
            push_body(&server, &device, "long-headers"),
        ),
    ] {
        let got = raw_http(&server, &head, &body).await;
        let message = assert_error(&got, 431, "invalid_request");
        assert!(message.contains("32768"), "{message}");
        assert_eq!(got.1["error"]["details"]["limit_bytes"], 32768);
    }
    // 20 KiB of headers are served.
    let some: Vec<String> = (0..20)
        .map(|i| format!("x-padding-{i}: {}", "b".repeat(1024)))
        .collect();
    let head = format!("GET /api/sync/health HTTP/1.1\r\n{}", some.join("\r\n"));
    let got = raw_http(&server, &head, &[]).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn wrong_methods_on_known_paths_are_405_with_the_contract_body() {
    let (server, device) = seeded().await;
    for (method, path) in [
        ("PATCH", "/api/sync/push"),
        ("OPTIONS", "/api/sync/push"),
        ("OPTIONS", "/api/sync/health"),
        ("PUT", "/api/admin/devices"),
        ("PATCH", "/api/admin/devices/x"),
        ("TRACE", "/api/sync/pull"),
    ] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let got = send(server.request(method.clone(), path, Some(&device.token))).await;
        let message = assert_error(&got, 405, "method_not_allowed");
        assert!(message.contains(method.as_str()), "{message}");
    }
    // A HEAD answer has no body; it still says it would be the contract's JSON.
    let response = server
        .request(Method::HEAD, "/api/sync/push", Some(&device.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn content_encodings_other_than_gzip_are_400_before_the_body_is_read() {
    let (server, device) = seeded().await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    // Each body is valid JSON as is: read undecoded, it would be applied.
    for encoding in [
        "br",
        "deflate",
        "zstd",
        "x-made-up",
        "gzip, br",
        "identity, compress",
    ] {
        let got = send(
            server
                .request(Method::POST, "/api/sync/push", Some(&device.token))
                .header("content-type", "application/json")
                .header("content-encoding", encoding)
                .body(push_body(&server, &device, "encoded")),
        )
        .await;
        let message = assert_error(&got, 400, "invalid_request");
        assert!(message.contains(encoding), "{encoding}: {message}");
        assert_eq!(got.1["error"]["details"]["content_encoding"], encoding);
    }
    // gzip applied twice is refused rather than half decoded.
    let twice = gzip(&gzip(&push_body(&server, &device, "twice")));
    let got = send(
        server
            .request(Method::POST, "/api/sync/push", Some(&device.token))
            .header("content-encoding", "gzip, gzip")
            .body(twice),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    // A body that claims gzip in any spelling and is not gzip.
    for encoding in ["gzip", "GZIP"] {
        let got = send(
            server
                .request(Method::POST, "/api/sync/push", Some(&device.token))
                .header("content-encoding", encoding)
                .body(push_body(&server, &device, "not-gzip")),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn gzip_is_decoded_whatever_its_spelling() {
    let (server, device) = seeded().await;
    for (i, encoding) in ["GZIP", "Gzip", "x-gzip", "gzip, identity", " gzip "]
        .into_iter()
        .enumerate()
    {
        let id = format!("gz{i}");
        let got = send(
            server
                .request(Method::POST, "/api/sync/push", Some(&device.token))
                .header("content-encoding", encoding)
                .body(gzip(&push_body(&server, &device, &id))),
        )
        .await;
        assert_eq!(got.0, 200, "{encoding}: {}", got.1);
        assert_eq!(got.1["results"][0]["outcome"], "applied", "{encoding}");
    }
    // `identity` (in any case) is the body as is.
    let got = send(
        server
            .request(Method::POST, "/api/sync/push", Some(&device.token))
            .header("content-encoding", "IDENTITY")
            .body(push_body(&server, &device, "plain")),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(got.1["results"][0]["outcome"], "applied");
}
