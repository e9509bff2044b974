//! Resource limits, so one client cannot take the server down: push sizes and change counts,
//! pull pages in bytes, slow or stalled connections, and requests in flight.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::support::*;

const MIB: usize = 1024 * 1024;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn push_bytes(
    server: &Server,
    device: &Device,
    body: Vec<u8>,
    gzipped: bool,
) -> (u16, Value) {
    let mut request = server
        .request(Method::POST, "/api/sync/push", Some(&device.token))
        .header("content-type", "application/json");
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    send(request.body(body)).await
}

/// The JSON text of a push of `changes` by `device`.
fn push_text(server: &Server, device: &Device, changes: &str) -> String {
    format!(
        r#"{{"device_id":"{}","schema_hash":"{}","changes":[{changes}],"pending":0}}"#,
        device.id, server.schema_hash
    )
}

/// Tombstones of `n` products: the smallest changes there are.
fn tombstones(n: usize) -> String {
    let version = v(1, "a");
    (0..n)
        .map(|i| {
            format!(r#"{{"table":"products","pk":{{"id":"t{i}"}},"version":"{version}","deleted":true}}"#)
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn a_gzip_bomb_is_413_once_decoding_reaches_the_limit() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    // Gzip members, one after another, decode to one stream: a push whose changes list is a
    // gigabyte of spaces, in about a megabyte.
    let (head, tail) = push_text(&server, &device, "@")
        .split_once('@')
        .map(|(h, t)| (h.to_owned(), t.to_owned()))
        .unwrap();
    let mut bomb = gzip(head.as_bytes());
    let spaces = gzip(&vec![b' '; 16 * MIB]);
    for _ in 0..64 {
        bomb.extend_from_slice(&spaces);
    }
    bomb.extend_from_slice(&gzip(tail.as_bytes()));
    assert!(bomb.len() < 2 * MIB, "{}", bomb.len());

    let got = push_bytes(&server, &device, bomb, true).await;
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(got.1["error"]["details"]["measured"], "decoded");
    assert_eq!(got.1["error"]["details"]["limit_bytes"], 16 * MIB);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn a_push_of_more_changes_than_the_limit_is_413_and_writes_nothing() {
    // The report's push: ten thousand and one tiny changes, 110 KB gzipped.
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let body = gzip(push_text(&server, &device, &tombstones(10_001)).as_bytes());
    let got = push_bytes(&server, &device, body, true).await;
    let message = assert_error(&got, 413, "payload_too_large");
    assert!(message.contains("10000 changes"), "{message}");
    assert_eq!(got.1["error"]["details"]["limit_changes"], 10_000);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);

    // At the limit is a push like any other.
    let server = Server::start_with(None, |c| c.max_push_changes = 3).await;
    let device = server.pair("Till").await;
    let at_limit = push_text(&server, &device, &tombstones(3));
    let (status, body) = push_bytes(&server, &device, at_limit.into_bytes(), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 3);
    let over = push_text(&server, &device, &tombstones(4));
    let got = push_bytes(&server, &device, over.into_bytes(), false).await;
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(got.1["error"]["details"]["limit_changes"], 3);
}

#[tokio::test]
async fn a_body_over_the_limit_as_sent_is_413_even_when_it_decodes_small() {
    let server = Server::start_with(None, |c| c.compressed_body_limit_bytes = 4096).await;
    let device = server.pair("Till").await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    // A gzip stream that goes on and on and decodes to almost nothing: empty members.
    let mut body = Vec::new();
    let empty = gzip(b"");
    while body.len() < 64 * 1024 {
        body.extend_from_slice(&empty);
    }
    body.extend_from_slice(&gzip(
        push_text(&server, &device, &tombstones(1)).as_bytes(),
    ));
    let got = push_bytes(&server, &device, body, true).await;
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(got.1["error"]["details"]["measured"], "as_sent");
    assert_eq!(got.1["error"]["details"]["limit_bytes"], 4096);

    // A body declared longer than the limit is refused as it is.
    let long = push_text(&server, &device, &tombstones(100));
    assert!(long.len() > 4096);
    let got = push_bytes(&server, &device, long.into_bytes(), false).await;
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(got.1["error"]["details"]["measured"], "as_sent");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);

    // Under the limit, gzip or not, a push goes through.
    let small = push_text(&server, &device, &tombstones(2));
    let (status, body) = push_bytes(&server, &device, gzip(small.as_bytes()), true).await;
    assert_eq!(status, 200, "{body}");
}

/// Every page of a pull from `since` until `has_more` is false: the changes of each page
/// and the final cursor.
async fn pages(server: &Server, device: &Device, since: Option<&str>) -> (Vec<Vec<Value>>, String) {
    let mut since = since.map(str::to_owned);
    let mut pages = Vec::new();
    loop {
        let (status, body) = server.pull(device, since.as_deref(), None).await;
        assert_eq!(status, 200, "{body}");
        pages.push(body["changes"].as_array().unwrap().clone());
        since = Some(body["cursor"].as_str().unwrap().to_owned());
        if !body["has_more"].as_bool().unwrap() {
            return (pages, since.unwrap());
        }
        assert!(pages.len() < 100, "the pull does not end");
    }
}

/// Asserts that each page holds at most `limit` bytes of changes, or a single change.
#[track_caller]
fn assert_pages_within(pages: &[Vec<Value>], limit: usize) {
    for page in pages {
        let bytes: usize = page.iter().map(|c| c.to_string().len()).sum();
        assert!(
            bytes <= limit || page.len() == 1,
            "a page of {} changes holds {bytes} bytes",
            page.len()
        );
    }
}

/// The ids of the pages' changes, sorted.
fn page_ids(pages: &[Vec<Value>]) -> Vec<String> {
    let mut ids: Vec<String> = pages
        .iter()
        .flatten()
        .map(|c| c["pk"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_pull_of_large_rows_comes_in_pages_under_the_byte_limit_and_loses_none() {
    const LIMIT: usize = 64 * 1024;
    let server = Server::start_with(None, |c| c.max_pull_bytes = LIMIT).await;
    let writer = server.pair("Writer").await;
    let reader = server.pair("Reader").await;
    // Ten rows of 25 KB, and one larger than a page on its own.
    let mut changes: Vec<Value> = (0..10)
        .map(|i| product(&format!("big{i}"), &"a".repeat(25_000), &v(1, "w")))
        .collect();
    changes.insert(4, product("huge", &"h".repeat(100_000), &v(1, "w")));
    let outcomes = server.push_ok(&writer, Value::Array(changes)).await;
    assert!(outcomes.iter().all(|o| o == "applied"), "{outcomes:?}");

    // A snapshot: every row once, each page within the limit.
    let (snapshot, cursor) = pages(&server, &reader, None).await;
    assert_pages_within(&snapshot, LIMIT);
    let mut expected: Vec<String> = (0..10).map(|i| format!("big{i}")).collect();
    expected.push("huge".to_owned());
    expected.sort();
    assert_eq!(page_ids(&snapshot), expected);
    assert!(snapshot.len() >= 6, "{} pages", snapshot.len());
    assert!(
        snapshot
            .iter()
            .any(|page| page.len() == 1 && page[0]["pk"]["id"] == "huge"),
        "the large row makes a page by itself"
    );

    // An incremental pull pages the same way, and ends where it should.
    let more: Vec<Value> = (0..4)
        .map(|i| product(&format!("more{i}"), &"m".repeat(25_000), &v(2, "w")))
        .collect();
    server.push_ok(&writer, Value::Array(more)).await;
    let (incremental, cursor) = pages(&server, &reader, Some(&cursor)).await;
    assert_pages_within(&incremental, LIMIT);
    assert_eq!(page_ids(&incremental), ["more0", "more1", "more2", "more3"]);
    assert!(incremental.len() >= 2, "{} pages", incremental.len());
    let (status, body) = server.pull(&reader, Some(&cursor), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["changes"], json!([]));
    assert_eq!(body["has_more"], false);
}

/// Reads from `stream` until the server closes it; `None` when it is still open at the
/// deadline. The bytes read, and when the end came.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buffer = [0_u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok().map(|at| (got, at))
}

fn address(server: &Server) -> &str {
    server.url.trim_start_matches("http://")
}

#[tokio::test]
async fn a_client_that_sends_half_a_head_and_stalls_is_cut_off_while_others_are_served() {
    let timeout = Duration::from_millis(300);
    let server = Server::start_with(None, |c| c.header_timeout = timeout).await;
    let mut stalled = TcpStream::connect(address(&server)).await.unwrap();
    let sent = Instant::now();
    stalled
        .write_all(b"GET /api/sync/health HTTP/1.1\r\nhost: ferry\r\n")
        .await
        .unwrap();

    // Meanwhile another client is served.
    let (status, body) = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_eq!(status, 200, "{body}");

    let (answer, closed) = read_until_closed(&mut stalled, Duration::from_secs(10))
        .await
        .expect("the stalled connection is closed");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(closed - sent >= timeout, "closed after {:?}", closed - sent);
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_must_still_arrive_within_the_header_timeout() {
    let timeout = Duration::from_millis(500);
    let server = Server::start_with(None, |c| c.header_timeout = timeout).await;
    let mut slow = TcpStream::connect(address(&server)).await.unwrap();
    let head = b"GET /api/sync/health HTTP/1.1\r\nhost: ferry\r\nx-padding: ".to_vec();
    let started = Instant::now();
    // Bytes keep coming, every 50 ms, far longer than the timeout; the server stops
    // listening once the timeout is over.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0;
    let cut_off = loop {
        pace.tick().await;
        let byte = head.get(sent).copied().unwrap_or(b'x');
        if slow.write_all(&[byte]).await.is_err() {
            break Instant::now();
        }
        sent += 1;
        let mut buffer = [0_u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buffer)).await
        {
            break Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still open");
    };
    assert!(
        cut_off - started >= timeout,
        "after {:?}",
        cut_off - started
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let timeout = Duration::from_millis(300);
    let server = Server::start_with(None, |c| c.idle_timeout = timeout).await;

    // A connection that never sends anything.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(address(&server)).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10))
        .await
        .expect("the silent connection is closed");
    assert!(
        closed - opened >= timeout,
        "closed after {:?}",
        closed - opened
    );

    // A kept-alive connection after its answer.
    let mut kept = TcpStream::connect(address(&server)).await.unwrap();
    kept.write_all(b"GET /api/sync/health HTTP/1.1\r\nhost: ferry\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut kept, Duration::from_secs(10))
        .await
        .expect("the kept-alive connection is closed once idle");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The status and JSON body of the one response in `answer`.
fn response(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[tokio::test]
async fn a_body_that_stalls_is_408_with_the_contract_body_and_the_connection_closes() {
    let timeout = Duration::from_millis(300);
    let server = Server::start_with(None, |c| c.body_timeout = timeout).await;
    let device = server.pair("Till").await;
    let before = server.snapshot(DEFAULT_TENANT).await;
    let mut stalled = TcpStream::connect(address(&server)).await.unwrap();
    let head = format!(
        "POST /api/sync/push HTTP/1.1\r\nhost: ferry\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"device_id\": ",
        device.token
    );
    let sent = Instant::now();
    stalled.write_all(head.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stalled, Duration::from_secs(10))
        .await
        .expect("the connection is closed");
    assert!(closed - sent >= timeout, "closed after {:?}", closed - sent);
    let got = response(&answer);
    let message = assert_error(&got, 408, "invalid_request");
    assert!(message.contains("did not arrive"), "{message}");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, before);
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_are_503_with_retry_after() {
    let server = Server::start_with(None, |c| c.max_in_flight = 1).await;
    let device = server.pair("Till").await;
    server.hooks.hold_push.store(true, Ordering::SeqCst);
    let started = server.hooks.push_started.notified();
    let push = server.spawn_push(&device, json!([product("p1", "Held", &v(1, "a"))]));
    started.await;

    // The one request the server takes at once is in the store: the next is turned away.
    let response = server
        .request(Method::GET, "/api/sync/pull", Some(&device.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let got = (
        response.status().as_u16(),
        response.json::<Value>().await.unwrap(),
    );
    let message = assert_error(&got, 503, "unavailable");
    assert!(message.contains("as many requests"), "{message}");
    assert_eq!(got.1["error"]["details"]["max_in_flight"], 1);

    server.hooks.hold_push.store(false, Ordering::SeqCst);
    server.hooks.release_push.notify_one();
    let (status, body) = push.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Room again.
    let (status, body) = server.pull(&device, None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changes"][0]["pk"]["id"], "p1");
}

#[tokio::test]
async fn pushes_beyond_the_bytes_in_flight_wait_then_get_503_and_a_lone_large_one_runs() {
    let server = Server::start_with(None, |c| {
        c.max_push_bytes_in_flight = 8 * 1024;
        c.push_budget_wait = Duration::from_millis(200);
    })
    .await;
    let till = server.pair("Till").await;
    let tablet = server.pair("Tablet").await;
    let big =
        |id: &str, device: &Device| json!([product(id, &"x".repeat(6 * 1024), &v(1, &device.id))]);

    // Six KiB of push held in the store; another six do not fit beside it.
    server.hooks.hold_push.store(true, Ordering::SeqCst);
    let started = server.hooks.push_started.notified();
    let held = server.spawn_push(&till, big("p1", &till));
    started.await;
    server.hooks.hold_push.store(false, Ordering::SeqCst);
    let before = server.snapshot(DEFAULT_TENANT).await;
    let got = server.push(&tablet, big("p2", &tablet)).await;
    let message = assert_error(&got, 503, "unavailable");
    assert!(message.contains("large pushes"), "{message}");
    assert_eq!(
        server.snapshot(DEFAULT_TENANT).await,
        before,
        "it wrote nothing"
    );

    server.hooks.release_push.notify_one();
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Room again; and a push larger than the whole budget still runs when alone.
    assert_eq!(
        server.push_ok(&tablet, big("p2", &tablet)).await,
        ["applied"]
    );
    let huge = json!([product("p3", &"y".repeat(20 * 1024), &v(2, &tablet.id))]);
    assert_eq!(server.push_ok(&tablet, huge).await, ["applied"]);
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    let server = Server::start_with(None, |c| c.max_connections_per_address = 2).await;
    let mut first = TcpStream::connect(address(&server)).await.unwrap();
    let _second = TcpStream::connect(address(&server)).await.unwrap();
    // The third from the same address is closed at once, with nothing said.
    let mut third = TcpStream::connect(address(&server)).await.unwrap();
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("the third connection is closed");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The ones it holds are served.
    first
        .write_all(b"GET /api/sync/health HTTP/1.1\r\nhost: ferry\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut first, Duration::from_secs(10))
        .await
        .expect("the answer comes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
