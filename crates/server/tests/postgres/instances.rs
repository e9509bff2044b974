//! Several server instances on one database behave as one server.

use ferry_testkit::TestStore;
use serde_json::json;

use crate::api::support::*;

/// A second server on the first one's database, as a second `ferry serve` process would be:
/// its own pool, nothing shared in memory.
async fn second_instance(first: &Server) -> Server {
    let storage = TestStore {
        location: first.storage.location.clone(),
        dir: tempfile::tempdir().unwrap(),
        database: None,
    };
    let mut second = Server::start_in(storage, None, |_| {}).await;
    second.admin = first.admin.clone();
    second
}

#[tokio::test]
async fn devices_alternating_between_two_instances_converge() {
    let one = Server::start().await;
    let two = second_instance(&one).await;
    assert_ne!(one.url, two.url);

    // A code made through one instance pairs on the other; tokens work on both.
    let code = two.code(DEFAULT_TENANT).await;
    let (status, body) = one
        .call(
            reqwest::Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": code, "name": "Till"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let till = Device {
        id: body["device_id"].as_str().unwrap().to_owned(),
        token: body["token"].as_str().unwrap().to_owned(),
        tenant: DEFAULT_TENANT.to_owned(),
    };
    let tablet = two.pair("Tablet").await;
    // The code was used on one instance; the other refuses it too.
    let again = two
        .call(
            reqwest::Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": code, "name": "Again"})),
        )
        .await;
    assert_error(&again, 422, "invalid_pairing_code");

    // Each round, each device talks to the other instance than last time.
    let mut cursors: [Option<String>; 2] = [None, None];
    let mut seen: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for round in 0..6_i64 {
        for (n, device) in [&till, &tablet].into_iter().enumerate() {
            let server = if (round + n as i64) % 2 == 0 {
                &one
            } else {
                &two
            };
            let id = format!("{}-{round}", device.id);
            let shared = product("shared", &id, &v(round * 10 + n as i64, &device.id));
            let own = product(&id, &id, &v(round * 10, &device.id));
            let outcomes = server.push_ok(device, json!([own, shared])).await;
            assert_eq!(outcomes[0], "applied");
            let (changes, cursor) = server.pull_all(device, cursors[n].as_deref()).await;
            cursors[n] = Some(cursor);
            seen[n].extend(
                changes
                    .iter()
                    .map(|c| c["pk"]["id"].as_str().unwrap().to_owned()),
            );
        }
    }
    // A last pull each, from the instance each did not use last.
    for (n, device) in [&till, &tablet].into_iter().enumerate() {
        let server = if n == 0 { &one } else { &two };
        let (changes, _) = server.pull_all(device, cursors[n].as_deref()).await;
        seen[n].extend(
            changes
                .iter()
                .map(|c| c["pk"]["id"].as_str().unwrap().to_owned()),
        );
    }
    // Every row each device did not write reached it, whichever instance it asked.
    for (n, device) in [&till, &tablet].into_iter().enumerate() {
        let other = if n == 0 { &tablet } else { &till };
        for round in 0..6 {
            let id = format!("{}-{round}", other.id);
            assert!(seen[n].contains(&id), "{} never pulled {id}", device.id);
        }
    }
    assert_eq!(
        one.snapshot(DEFAULT_TENANT).await,
        two.snapshot(DEFAULT_TENANT).await
    );

    // Check-ins recorded through either instance are listed by both.
    let listed_by_one = one.device(&tablet.id).await;
    let listed_by_two = two.device(&tablet.id).await;
    assert!(listed_by_one.last_push_at.is_some());
    assert_eq!(listed_by_one, listed_by_two);
}

#[tokio::test]
async fn a_console_on_one_instance_sees_what_happens_through_the_other_and_a_worker() {
    use crate::api::events::{EventStream, finish_probe_run, start_probe_run};

    let one = Server::start().await;
    let two = second_instance(&one).await;
    let mut events = EventStream::open_admin(&two, &two.admin).await;

    // A trigger stored through the first instance.
    let (status, body) = one.trigger().await;
    assert_eq!(status, 202, "{body}");
    events
        .wait_for("state", |s| s["pending_triggers"] == 1)
        .await;

    // A run of a worker process: a store of its own on the same database.
    let url = match &one.storage.location {
        ferry_server::init::StoreLocation::Postgres { url, .. } => url.clone(),
        other => panic!("not on PostgreSQL: {other:?}"),
    };
    let worker = ferry_store::PgStore::connect(&url, &Default::default())
        .await
        .unwrap();
    let run_id = start_probe_run(&worker).await;
    events
        .wait_for("run", |r| r["id"] == run_id && r["status"] == "running")
        .await;
    finish_probe_run(&worker, run_id).await;
    events
        .wait_for("run", |r| r["id"] == run_id && r["status"] == "succeeded")
        .await;

    // A device pushing through the first instance.
    let till = one.pair("Till").await;
    one.push_ok(&till, json!([product("p1", "Cola", &v(1, &till.id))]))
        .await;
    events
        .wait_for("device", |d| {
            d["device_id"] == till.id.as_str() && !d["last_push_at"].is_null()
        })
        .await;

    // The second instance's listening connection dies; it opens another and goes on.
    let database = one.storage.database.as_ref().unwrap().connect().await;
    let listening = "SELECT pid FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'ferry-events'";
    let before: Vec<i32> = database
        .query(listening, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        before.len(),
        1,
        "one listening connection per process with consoles"
    );
    database
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&before[0]])
        .await
        .unwrap();
    wait_for("the events' connection to open again", || async {
        let now: Vec<i32> = database
            .query(listening, &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        now.len() == 1 && now[0] != before[0]
    })
    .await;
    let (status, _) = one.trigger().await;
    assert_eq!(status, 202);
    events
        .wait_for("state", |s| s["pending_triggers"] == 1)
        .await;
}

#[tokio::test]
async fn a_device_streaming_from_one_instance_hears_of_pushes_through_the_other() {
    use crate::api::events::EventStream;

    let one = Server::start().await;
    let two = second_instance(&one).await;
    let till = one.pair("Till").await;
    let tablet = one.pair("Tablet").await;
    let (_, opened) = two.pull_all(&till, None).await;
    let mut stream = EventStream::open(&two, "/api/sync/stream", &till.token).await;

    one.push_ok(&tablet, json!([product("p1", "Cola", &v(1, &tablet.id))]))
        .await;
    let heard = stream.wait_for("changed", |_| true).await;
    let (changes, cursor) = two.pull_all(&till, Some(&opened)).await;
    assert_eq!(heard["cursor"], cursor.as_str());
    assert_eq!(changes.len(), 1);
}
