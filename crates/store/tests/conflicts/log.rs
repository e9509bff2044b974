//! What a push logs: each losing write once.

use ferry_proto::Outcome;
use serde_json::json;

use super::support::{Fixture, product, v};

/// Regression: a write that lost, pushed again by its device (the answer was lost) after
/// another device had written a newer winner, was logged a second time, against that winner.
#[tokio::test]
async fn a_losing_write_pushed_again_after_the_row_moved_on_is_logged_once() {
    let f = Fixture::new().await;
    let (a, b, c) = (
        f.device("t").await,
        f.device("t").await,
        f.device("t").await,
    );
    let (a_id, b_id, c_id) = (&a.device_id, &b.device_id, &c.device_id);

    // p1: A's write arrives after B's newer one and is superseded.
    f.push(&b, vec![product("p1", "B", &v(3, "b"))]).await;
    let a_write = product("p1", "A", &v(2, "a"));
    assert_eq!(
        f.push(&a, vec![a_write.clone()]).await,
        [Outcome::Superseded]
    );
    // p2: A's write is applied, then overwritten by B's.
    let a_applied = product("p2", "A", &v(2, "a"));
    assert_eq!(
        f.push(&a, vec![a_applied.clone()]).await,
        [Outcome::Applied]
    );
    f.push(&b, vec![product("p2", "B", &v(3, "b"))]).await;
    // A pushes both again, as after a lost answer: the same losses, nothing new.
    let again = vec![a_write.clone(), a_applied.clone()];
    assert_eq!(f.push(&a, again.clone()).await, [Outcome::Superseded; 2]);
    let before = f.log("t").await;
    assert_eq!(before.len(), 2, "{before:?}");

    // C moves both rows on; then A's answer is lost once more and it pushes both again.
    f.push(
        &c,
        vec![
            product("p1", "C", &v(4, "c")),
            product("p2", "C", &v(4, "c")),
        ],
    )
    .await;
    assert_eq!(f.push(&a, again).await, [Outcome::Superseded; 2]);

    let some = |id: &String| Some(id.clone());
    let p = |id: &str| json!({"id": id});
    let record = |pk, loser: (String, &String), winner: (String, &String)| {
        let table = "products".to_owned();
        (table, pk, loser.0, some(loser.1), winner.0, some(winner.1))
    };
    assert_eq!(
        f.log("t").await,
        [
            // A's writes, each once, against the winner they first lost to.
            record(p("p1"), (v(2, "a"), a_id), (v(3, "b"), b_id)),
            record(p("p2"), (v(2, "a"), a_id), (v(3, "b"), b_id)),
            // B's writes, which lost to C's.
            record(p("p1"), (v(3, "b"), b_id), (v(4, "c"), c_id)),
            record(p("p2"), (v(3, "b"), b_id), (v(4, "c"), c_id)),
        ]
    );
}

/// The same version lost by two devices is two losing writes (a version names its clock's
/// node, so only a device that reuses another's node makes this), and the same key in two
/// tenants is two rows.
#[tokio::test]
async fn losing_writes_are_told_apart_by_device_and_tenant() {
    let f = Fixture::new().await;
    let (a, b, c) = (
        f.device("t").await,
        f.device("t").await,
        f.device("t").await,
    );
    let other = f.device("u").await;
    let other_winner = f.device("u").await;
    f.push(&c, vec![product("p1", "C", &v(9, "c"))]).await;
    f.push(&other_winner, vec![product("p1", "C", &v(9, "c"))])
        .await;
    let late = product("p1", "late", &v(1, "x"));
    for device in [&a, &b, &other] {
        assert_eq!(
            f.push(device, vec![late.clone()]).await,
            [Outcome::Superseded]
        );
    }
    let losers = |log: Vec<super::support::Logged>| -> Vec<Option<String>> {
        log.into_iter().map(|record| record.3).collect()
    };
    assert_eq!(
        losers(f.log("t").await),
        [Some(a.device_id.clone()), Some(b.device_id.clone())]
    );
    assert_eq!(losers(f.log("u").await), [Some(other.device_id.clone())]);
}
