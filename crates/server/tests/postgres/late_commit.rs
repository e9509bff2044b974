//! Pull under concurrency: a push that commits late is never skipped.

use serde_json::json;

use ferry_testkit::waiting_on_locks;

use super::{ROW_KEY, holding, wait_for};
use crate::api::support::*;

/// Guards against the naive `WHERE seq > cursor` over a non-transactional sequence: push A
/// takes its sequence numbers, push B takes later ones and commits first, a pull passes B's
/// numbers, and A's rows, committed afterwards below the cursor, would never be pulled.
#[tokio::test]
async fn a_push_that_commits_after_a_later_one_is_not_skipped_by_pulls() {
    let server = Server::start().await;
    let database = server.storage.database.as_ref().unwrap();
    let (a, b, reader) = (
        server.pair("A").await,
        server.pair("B").await,
        server.pair("reader").await,
    );
    // Claiming the key of A's row stops A's push while it writes: it has taken its
    // sequence numbers and holds them until it commits.
    let mut blocker = database.connect().await;
    let hold = holding(&mut blocker, ROW_KEY, &[&"products", &r#"["from-a"]"#]).await;
    let push =
        |device: &Device, id: &str| server.spawn_push(device, json!([product(id, id, &v(1, "n"))]));
    let push_a = push(&a, "from-a");
    database.lock_waiters(1).await;
    let push_b = push(&b, "from-b");
    // B now waits behind A (it needs the tenant's sequence A holds); a naive store would let
    // it commit ahead of A instead.
    let watcher = database.connect().await;
    wait_for("B to wait or to finish", || async {
        push_b.is_finished() || waiting_on_locks(&watcher).await >= 2
    })
    .await;
    let (early, cursor) = server.pull_all(&reader, None).await;
    hold.rollback().await.unwrap();
    for pushed in [push_a, push_b] {
        let (status, body) = pushed.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["outcome"], "applied");
    }
    let (late, _) = server.pull_all(&reader, Some(&cursor)).await;
    let mut ids: Vec<String> = early
        .iter()
        .chain(&late)
        .map(|c| c["pk"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["from-a", "from-b"], "early {early:?}, late {late:?}");
}
