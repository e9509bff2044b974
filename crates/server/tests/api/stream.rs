//! `GET /api/sync/stream`: a device hears that rows it has not pulled committed, from other
//! devices of its tenant only, with the cursor a pull reaches.

use reqwest::Method;
use serde_json::json;

use super::events::EventStream;
use super::support::*;

const STREAM: &str = "/api/sync/stream";

/// The cursor of the next `changed` event.
async fn next_cursor(stream: &mut EventStream) -> String {
    let data = stream.wait_for("changed", |_| true).await;
    data["cursor"].as_str().expect("a cursor").to_owned()
}

#[tokio::test]
async fn a_device_hears_of_other_devices_pushes_and_not_of_its_own() {
    let server = Server::start().await;
    let till = server.pair("Till").await;
    let tablet = server.pair("Tablet").await;
    server
        .push_ok(&tablet, json!([product("p0", "Tea", &v(1, &tablet.id))]))
        .await;
    let (_, synced) = server.pull_all(&till, None).await;

    // Once the stream is open, every commit of another device is heard of, and only those.
    let mut stream = EventStream::open(&server, STREAM, &till.token).await;

    server
        .push_ok(&tablet, json!([product("p1", "Cola", &v(2, &tablet.id))]))
        .await;
    let heard = next_cursor(&mut stream).await;
    let (changes, pulled_to) = server.pull_all(&till, Some(&synced)).await;
    assert_eq!(heard, pulled_to, "the event's cursor is where a pull ends");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["pk"]["id"], "p1");

    // The till's own push, another tenant's push and a push that wrote nothing (a stale
    // write) say nothing to the till: the next event is the tablet's next write.
    server
        .push_ok(&till, json!([product("p2", "Bread", &v(3, &till.id))]))
        .await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    let acme = server.pair_in("acme", "Acme till").await;
    server
        .push_ok(&acme, json!([product("a1", "Nails", &v(4, &acme.id))]))
        .await;
    let stale = server
        .push_ok(&tablet, json!([product("p1", "Cola", &v(0, &tablet.id))]))
        .await;
    assert_ne!(stale, ["applied"], "the stale write was not applied");
    server
        .push_ok(&tablet, json!([product("p3", "Milk", &v(5, &tablet.id))]))
        .await;
    let heard = next_cursor(&mut stream).await;
    let (changes, pulled_to) = server.pull_all(&till, Some(&pulled_to)).await;
    assert_eq!(heard, pulled_to);
    let keys: Vec<_> = changes.iter().map(|c| c["pk"]["id"].clone()).collect();
    assert_eq!(
        keys,
        [json!("p3")],
        "an incremental pull leaves out the till's own row"
    );
    let changed = stream.seen.iter().filter(|(name, _)| name == "changed");
    assert_eq!(changed.count(), 2, "events: {}", stream.text());
}

#[tokio::test]
async fn the_stream_is_for_devices_and_ends_on_revocation_and_shutdown() {
    let server = Server::start().await;
    let refused = server.call(Method::GET, STREAM, None, None).await;
    assert_error(&refused, 401, "unauthorized");
    let refused = server
        .call(Method::GET, STREAM, Some(&server.admin), None)
        .await;
    assert_error(&refused, 403, "forbidden");

    let till = server.pair("Till").await;
    let mut revoked = EventStream::open(&server, STREAM, &till.token).await;
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/admin/devices/{}", till.id),
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    revoked.until_closed().await;

    let tablet = server.pair("Tablet").await;
    let mut open = EventStream::open(&server, STREAM, &tablet.token).await;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), server.stop()).await;
    assert!(stopped.is_ok(), "the server waited for the change stream");
    open.until_closed().await;
}
