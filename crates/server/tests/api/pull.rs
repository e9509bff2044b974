use reqwest::Method;
use serde_json::{Value, json};

use super::support::*;

fn ids(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .map(|c| c["pk"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_follow_the_cursor_in_commit_order() {
    let server = Server::start().await;
    let writer = server.pair("Writer").await;
    let reader = server.pair("Reader").await;
    for id in ["p1", "p2", "p3", "p4", "p5"] {
        server
            .push_ok(&writer, json!([product(id, id, &v(1, "w"))]))
            .await;
    }

    let mut since: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let (status, body) = server.pull(&reader, since.as_deref(), Some(2)).await;
        assert_eq!(status, 200, "{body}");
        pages.push((
            ids(body["changes"].as_array().unwrap()),
            body["has_more"].as_bool().unwrap(),
        ));
        since = Some(body["cursor"].as_str().unwrap().to_owned());
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(
        pages,
        [
            (vec!["p1".to_owned(), "p2".to_owned()], true),
            (vec!["p3".to_owned(), "p4".to_owned()], true),
            (vec!["p5".to_owned()], false),
        ]
    );
    let cursor = since.unwrap();

    // Nothing new: an empty page, and the cursor stays put.
    let (_, body) = server.pull(&reader, Some(&cursor), None).await;
    assert_eq!(body["changes"], json!([]));
    assert_eq!(body["cursor"], cursor.as_str());
    assert_eq!(body["has_more"], false);

    // A row written after the pull comes down from that cursor, at its latest version only.
    server
        .push_ok(&writer, json!([product("p6", "six", &v(2, "w"))]))
        .await;
    server
        .push_ok(&writer, json!([product("p2", "two again", &v(3, "w"))]))
        .await;
    server
        .push_ok(&writer, json!([product("p6", "six again", &v(4, "w"))]))
        .await;
    let (changes, _) = server.pull_all(&reader, Some(&cursor)).await;
    assert_eq!(ids(&changes), ["p2", "p6"]);
    assert_eq!(changes[1]["data"]["name"], "six again");
    assert_eq!(changes[1]["version"], v(4, "w"));
}

#[tokio::test]
async fn a_fresh_device_gets_the_full_snapshot_with_tombstones() {
    let server = Server::start().await;
    let writer = server.pair("Writer").await;
    server
        .push_ok(
            &writer,
            json!([
                product("keep", "Keep", &v(1, "w")),
                product("drop", "Drop", &v(1, "w"))
            ]),
        )
        .await;
    server
        .push_ok(&writer, json!([tombstone("products", "drop", &v(2, "w"))]))
        .await;
    let fresh = server.pair("Fresh").await;
    let (changes, _) = server.pull_all(&fresh, None).await;
    assert_eq!(ids(&changes), ["keep", "drop"]);
    assert_eq!(changes[1]["deleted"], true);
    assert!(changes[1].get("data").is_none(), "{}", changes[1]);
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(
        changes[0]["data"],
        json!({"id": "keep", "name": "Keep", "price_cents": 250})
    );
    // Exactly the wire type.
    let _: Vec<ferry_proto::RowChange> = serde_json::from_value(Value::from(changes)).unwrap();
}

#[tokio::test]
async fn an_incremental_pull_leaves_own_rows_out_but_its_cursor_moves_past_them() {
    let server = Server::start().await;
    let a = server.pair("A").await;
    let b = server.pair("B").await;
    server
        .push_ok(&a, json!([product("a1", "from a", &v(1, "a"))]))
        .await;
    // From the beginning, a device's own rows come too.
    let (changes, cursor_a) = server.pull_all(&a, None).await;
    assert_eq!(ids(&changes), ["a1"]);
    let (changes_b, cursor_b) = server.pull_all(&b, None).await;
    assert_eq!(ids(&changes_b), ["a1"]);
    assert_eq!(cursor_a, cursor_b, "both cursors are past a1");

    server
        .push_ok(&b, json!([product("b1", "from b", &v(2, "b"))]))
        .await;
    server
        .push_ok(&a, json!([product("a2", "from a", &v(3, "a"))]))
        .await;
    let (changes, cursor_a2) = server.pull_all(&a, Some(&cursor_a)).await;
    assert_eq!(ids(&changes), ["b1"]);
    // The cursor passed a2 too: pulling again yields nothing.
    let (changes, _) = server.pull_all(&a, Some(&cursor_a2)).await;
    assert!(changes.is_empty());
    // B overwriting A's row sends it back to A.
    server
        .push_ok(&b, json!([product("a1", "edited by b", &v(4, "b"))]))
        .await;
    let (changes, _) = server.pull_all(&a, Some(&cursor_a2)).await;
    assert_eq!(ids(&changes), ["a1"]);
    assert_eq!(changes[0]["data"]["name"], "edited by b");
}

/// Pulls page by page with `limit`; returns each page's ids, `has_more` and cursor.
async fn pages(
    server: &Server,
    device: &Device,
    since: Option<&str>,
    limit: u32,
) -> Vec<(Vec<String>, bool, String)> {
    let mut since = since.map(str::to_owned);
    let mut pages = Vec::new();
    loop {
        let (status, body) = server.pull(device, since.as_deref(), Some(limit)).await;
        assert_eq!(status, 200, "{body}");
        let cursor = body["cursor"].as_str().unwrap().to_owned();
        let has_more = body["has_more"].as_bool().unwrap();
        pages.push((
            ids(body["changes"].as_array().unwrap()),
            has_more,
            cursor.clone(),
        ));
        since = Some(cursor);
        if !has_more {
            return pages;
        }
    }
}

/// Guards issue 13 ("Force pull from cloud" must give the cloud's view): a pull from the
/// beginning is the whole snapshot, the device's own rows included on every page.
#[tokio::test]
async fn a_pull_from_the_beginning_includes_own_rows_on_every_page() {
    let server = Server::start().await;
    let a = server.pair("A").await;
    let b = server.pair("B").await;
    let pushed = server
        .push_ok(
            &a,
            json!([
                product("a1", "from a", &v(1, "a")),
                product("a2", "from a", &v(1, "a"))
            ]),
        )
        .await;
    let (_, own_cursor) = server.pull_all(&a, None).await;
    assert!(pushed.iter().all(|o| o == "applied"), "{pushed:?}");
    server
        .push_ok(&b, json!([product("b1", "from b", &v(2, "b"))]))
        .await;
    for id in ["a3", "a4", "a5"] {
        server
            .push_ok(&a, json!([product(id, "from a", &v(3, "a"))]))
            .await;
    }
    server
        .push_ok(&b, json!([product("b2", "from b", &v(4, "b"))]))
        .await;

    // The whole snapshot over pages of two: every later page, fetched with the cursor the
    // one before handed out, still holds a's own rows.
    let full = pages(&server, &a, None, 2).await;
    let got: Vec<(Vec<String>, bool)> = full
        .iter()
        .map(|(ids, more, _)| (ids.clone(), *more))
        .collect();
    let owned = |ids: &[&str]| ids.iter().map(|&id| id.to_owned()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            (owned(&["a1", "a2"]), true),
            (owned(&["b1", "a3"]), true),
            (owned(&["a4", "a5"]), true),
            (owned(&["b2"]), false),
        ]
    );

    // The incremental pull from the cursor a held after its own push leaves its rows out.
    let incremental = pages(&server, &a, Some(&own_cursor), 2).await;
    let got: Vec<Vec<String>> = incremental.iter().map(|(ids, ..)| ids.clone()).collect();
    assert_eq!(got, [owned(&["b1", "b2"])]);

    // The snapshot's last cursor is a plain incremental one: a's next cycle leaves its own
    // rows out again, and it is the cursor the incremental pull ended at.
    let last = &full.last().unwrap().2;
    assert_eq!(last, &incremental.last().unwrap().2);
    server
        .push_ok(&a, json!([product("a6", "from a", &v(5, "a"))]))
        .await;
    server
        .push_ok(&b, json!([product("b3", "from b", &v(6, "b"))]))
        .await;
    let (changes, _) = server.pull_all(&a, Some(last)).await;
    assert_eq!(ids(&changes), ["b3"]);

    // A snapshot interrupted after its first page and resumed from the saved cursor still
    // holds own rows.
    let (_, body) = server.pull(&a, None, Some(3)).await;
    assert_eq!(ids(body["changes"].as_array().unwrap()), ["a1", "a2", "b1"]);
    let resumed = body["cursor"].as_str().unwrap();
    let (changes, _) = server.pull_all(&a, Some(resumed)).await;
    assert_eq!(ids(&changes), ["a3", "a4", "a5", "b2", "a6", "b3"]);
}

#[tokio::test]
async fn limits_default_cap_and_reject_nonsense() {
    let server = Server::start_with(None, |c| {
        c.default_pull_limit = 3;
        c.max_pull_limit = 4;
    })
    .await;
    let writer = server.pair("Writer").await;
    let reader = server.pair("Reader").await;
    let changes: Vec<Value> = (0..10)
        .map(|i| product(&format!("p{i}"), "x", &v(i, "w")))
        .collect();
    server.push_ok(&writer, Value::from(changes)).await;
    let (_, body) = server.pull(&reader, None, None).await;
    assert_eq!(body["changes"].as_array().unwrap().len(), 3);
    let (_, body) = server.pull(&reader, None, Some(1000)).await;
    assert_eq!(body["changes"].as_array().unwrap().len(), 4);
    assert_eq!(body["has_more"], true);
    for limit in ["0", "-1", "ten", "99999999999"] {
        let got = server
            .call(
                Method::GET,
                &format!("/api/sync/pull?limit={limit}"),
                Some(&reader.token),
                None,
            )
            .await;
        assert_error(&got, 400, "invalid_request");
    }
}

#[tokio::test]
async fn pulls_concurrent_with_pushes_never_skip_a_row() {
    let server = std::sync::Arc::new(Server::start().await);
    let writers = [server.pair("W1").await, server.pair("W2").await];
    let reader = server.pair("Reader").await;
    let mut tasks = Vec::new();
    for (w, writer) in writers.iter().enumerate() {
        let (server, writer) = (server.clone(), writer.clone());
        tasks.push(tokio::spawn(async move {
            for batch in 0..15 {
                let changes: Vec<Value> = (0..5)
                    .map(|i| product(&format!("w{w}-{batch}-{i}"), "x", &v(batch, "w")))
                    .collect();
                server.push_ok(&writer, Value::from(changes)).await;
            }
        }));
    }
    // Pull continuously while the writers run, then once more after they finish.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut writers_done = false;
    loop {
        let (status, body) = server.pull(&reader, cursor.as_deref(), Some(7)).await;
        assert_eq!(status, 200);
        for id in ids(body["changes"].as_array().unwrap()) {
            assert!(seen.insert(id.clone()), "{id} came twice");
        }
        cursor = Some(body["cursor"].as_str().unwrap().to_owned());
        if body["has_more"] == false {
            if writers_done {
                break;
            }
            writers_done = tasks.iter().all(|t| t.is_finished());
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seen.len(), 2 * 15 * 5);
}

#[tokio::test]
async fn a_bad_cursor_is_400_invalid_cursor() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    // "djE6OTk5" is a well-formed cursor (seq 999) that this server never reached.
    for since in ["nonsense", "djI6Nw", "12", "djE6LTE", "djE6OTk5"] {
        let got = server
            .call(
                Method::GET,
                &format!("/api/sync/pull?since={since}"),
                Some(&device.token),
                None,
            )
            .await;
        assert_error(&got, 400, "invalid_cursor");
    }
    // An empty `since` is the beginning, as is none.
    let (status, _) = server
        .call(
            Method::GET,
            "/api/sync/pull?since=",
            Some(&device.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
}
