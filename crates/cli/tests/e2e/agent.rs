//! The device-local control API, served by an agent on a real socket.

use std::time::Duration;

use ferry_agent::{Agent, AgentOptions};
use ferry_client::{Client, ClientOptions};
use ferry_testkit::TestServer;
use ferry_testkit::pos::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// An agent and its control API on a real socket (the panel's tests use it too).
pub(crate) struct LocalApi {
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
    shutdown: CancellationToken,
}

impl LocalApi {
    pub(crate) async fn start(client: Client) -> (LocalApi, Agent) {
        let shutdown = CancellationToken::new();
        // A long interval: every cycle in these tests is forced, apart from the first one.
        let options = AgentOptions {
            interval: Duration::from_secs(3600),
            ..AgentOptions::default()
        };
        let (agent, _task) = Agent::start(client, options, None, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = ferry_agent::router(agent.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        (
            LocalApi {
                url,
                http: reqwest::Client::new(),
                shutdown,
            },
            agent,
        )
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub(crate) async fn post(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sync_pull_log_and_events_over_the_local_api() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let b = server.pair_device("B").await;
    insert_product(&a.app(), "p1", None, "Cola", 250);
    a.sync_ok().await;

    insert_customer(&b.app(), "c1", "Ada");
    let client = Client::open(&b.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;

    let (status, report) = api.post("/local/sync").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["trigger"], "manual");
    assert_eq!(pos_price(&b), Some(250));

    let (status, body) = api.get("/local/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "synced", "{body}");
    assert_eq!(body["pending"], 0);
    assert!(body["last_synced_at"].is_string(), "{body}");
    assert!(body["next_auto_sync_at"].is_string(), "{body}");

    // App writes between cycles show up as pending at once.
    insert_customer(&b.app(), "c2", "Grace");
    let (_, body) = api.get("/local/status").await;
    assert_eq!(body["pending"], 1, "{body}");

    let (status, report) = api.post("/local/pull").await;
    assert_eq!(status, 200);
    assert_eq!(report["trigger"], "force_pull", "{report}");
    assert_eq!(report["pushed"], 0, "a forced pull does not push");

    let (status, log) = api.get("/local/log").await;
    assert_eq!(status, 200);
    let cycles = log["cycles"].as_array().unwrap();
    assert!(cycles.len() >= 2, "{log}");
    assert!(cycles.len() <= 20);
    assert_eq!(cycles[0]["trigger"], "force_pull", "newest first: {log}");
    for field in [
        "started_at",
        "trigger",
        "duration_ms",
        "pushed",
        "pulled",
        "rejected",
        "conflicts",
        "ok",
        "error",
    ] {
        assert!(cycles[0].get(field).is_some(), "{field} in {log}");
    }

    // Events: the current status comes first.
    let mut response = api
        .http
        .get(format!("{}/local/events", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunk = response.chunk().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(
        text.contains("event: status") && text.contains("\"pending\""),
        "{text}"
    );

    // Only loopback host names are served.
    let refused = api
        .http
        .get(format!("{}/local/status", api.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
}

fn pos_price(device: &ferry_testkit::TestDevice) -> Option<i64> {
    price(&device.app(), "p1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_says_offline_with_the_error_when_the_server_is_gone() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    server.stop().await;
    let (api, _agent) = LocalApi::start(client).await;
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], false, "{report}");
    let (_, body) = api.get("/local/status").await;
    assert_eq!(body["state"], "offline", "{body}");
    assert!(body["last_error"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_request_during_a_cycle_is_served_by_a_cycle_that_starts_after_it() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, agent) = LocalApi::start(client).await;
    // Many concurrent requests: each gets the report of a cycle that started after it was made,
    // so the write made before the requests is confirmed when they return.
    insert_product(&a.app(), "p1", None, "Cola", 1);
    let asked_at = ferry_core::time::now();
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let agent = agent.clone();
        waiters.push(tokio::spawn(async move { agent.sync_now().await.unwrap() }));
    }
    for waiter in waiters {
        let report = waiter.await.unwrap();
        assert!(report.ok, "{report:?}");
        assert!(
            report.started_at >= asked_at,
            "{} started before {asked_at}",
            report.started_at
        );
    }
    assert_eq!(a.dirty("products"), 0);
    let (_, log) = api.get("/local/log").await;
    assert!(
        log["cycles"].as_array().unwrap().len() <= 3,
        "requests coalesce: {log}"
    );
}

/// `ferry agent status` on the device's file, as a user runs it beside the agent: the JSON
/// status and the human status line.
async fn cli_status(device: &ferry_testkit::TestDevice) -> (Value, String) {
    let db = device.db_path.to_str().unwrap();
    let run = |json: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.args(["agent", "status", "--db", db]);
        if json {
            command.arg("--json");
        }
        async move {
            let output = command.output().await.expect("ferry runs");
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let body: Value = serde_json::from_str(&run(true).await).unwrap();
    let text = run(false).await;
    let line = text.lines().nth(1).unwrap_or_default().to_string();
    (body["status"].clone(), line)
}

/// Reads an events stream up to its next `status` event and returns the event's data; fails
/// after 20 s (keep-alive comments do not count).
async fn next_status(response: &mut reqwest::Response, buffer: &mut String) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data = event.lines().find_map(|l| l.strip_prefix("data:"));
            if let (true, Some(data)) = (event.contains("event: status"), data) {
                return serde_json::from_str(data.trim()).unwrap();
            }
            continue; // A keep-alive comment.
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("a status event within 20 s")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Regression (issue 13.8): a cycle that left a row rejected is `error`, not `synced`, in the
/// agent and in `ferry agent status`, until the row is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_an_error_until_it_is_fixed() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    insert_product(&a.app(), "p1", None, "Cola", 250);
    // Its sale was never written (the app does not enforce foreign keys): the server refuses
    // the item for a missing parent.
    let app = a.app();
    app.pragma_update(None, "foreign_keys", false).unwrap();
    insert_sale_item(&app, "si1", "no-such-sale", "p1", 1, 250);
    drop(app);
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;

    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(a.dirty("products"), 0, "the product went through: {report}");
    let (_, status) = api.get("/local/status").await;
    assert_eq!(status["state"], "error", "{status}");
    let error = status["last_error"].as_str().unwrap();
    for part in [
        "rejected 1 row",
        "fk_violation",
        "sale_items.sale_id 'no-such-sale' not found in sales",
    ] {
        assert!(error.contains(part), "{part} in {error}");
    }
    assert_eq!(status["pending"], 1, "{status}");

    let (cli, line) = cli_status(&a).await;
    assert_eq!(cli["state"], "error", "{cli}");
    assert_eq!(cli["last_error"], status["last_error"]);
    assert!(
        line.starts_with("Error · ") && line.contains("fk_violation") && line.contains("last sync"),
        "{line}"
    );

    // The app removes the orphan; the next cycle pushes the delete and leaves nothing behind.
    a.app()
        .execute("DELETE FROM sale_items WHERE id = 'si1'", [])
        .unwrap();
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], true, "{report}");
    let (_, status) = api.get("/local/status").await;
    assert_eq!(status["state"], "synced", "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    let (cli, line) = cli_status(&a).await;
    assert_eq!(cli["state"], "synced", "{cli}");
    assert!(line.starts_with("Synced "), "{line}");
}

/// Regression (issue 13.8): a revoked device is `error` (its token is refused), not `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_an_error() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], true, "{report}");

    let (status, body) = server
        .request(
            reqwest::Method::DELETE,
            &format!("/api/admin/devices/{}", a.device_id),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    insert_customer(&a.app(), "c1", "Ada");
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], false, "{report}");

    let (_, status) = api.get("/local/status").await;
    assert_eq!(status["state"], "error", "{status}");
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("revoked"), "{error}");
    assert_eq!(status["pending"], 1, "{status}");
    let (cli, line) = cli_status(&a).await;
    assert_eq!(cli["state"], "error", "{cli}");
    assert!(line.starts_with("Error · "), "{line}");
}

/// A server that goes away after a good cycle: `offline`, and the last sync time stays that
/// of the good cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_offline_and_the_last_sync_time_stays() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], true, "{report}");
    let (_, synced) = api.get("/local/status").await;
    assert_eq!(synced["state"], "synced", "{synced}");

    server.stop().await;
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], false, "{report}");
    let (_, status) = api.get("/local/status").await;
    assert_eq!(status["state"], "offline", "{status}");
    assert_eq!(status["last_synced_at"], synced["last_synced_at"]);
    assert!(status["last_error"].is_string(), "{status}");
    let (cli, line) = cli_status(&a).await;
    assert_eq!(cli["state"], "offline", "{cli}");
    assert_eq!(cli["last_synced_at"], synced["last_synced_at"]);
    assert!(line.starts_with("Offline · "), "{line}");
}

/// Regression (issue 13.8): the events stream tells when the app's writes change the pending
/// count, with no cycle in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_tells_when_the_app_writes_a_row() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let client = Client::open(&a.db_path, ClientOptions::default()).unwrap();
    let (api, _agent) = LocalApi::start(client).await;
    let (_, report) = api.post("/local/sync").await;
    assert_eq!(report["ok"], true, "{report}");
    let (_, log) = api.get("/local/log").await;
    let cycles = log["cycles"].as_array().unwrap().len();

    let mut response = api
        .http
        .get(format!("{}/local/events", api.url))
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let first = next_status(&mut response, &mut buffer).await;
    assert_eq!(
        (&first["state"], &first["pending"]),
        (&Value::from("synced"), &Value::from(0)),
        "{first}"
    );

    insert_customer(&a.app(), "c1", "Ada");
    let next = next_status(&mut response, &mut buffer).await;
    assert_eq!(next["pending"], 1, "{next}");
    assert_eq!(next["state"], "synced", "{next}");
    let (_, log) = api.get("/local/log").await;
    assert_eq!(
        log["cycles"].as_array().unwrap().len(),
        cycles,
        "no cycle ran: {log}"
    );
}

/// How long the change stream's test waits for one step: generous, as a loaded machine runs
/// many test binaries beside it, and no step waits for a timer.
const PATIENT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_device_s_write_arrives_without_waiting_for_the_interval() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let b = server.pair_device("B").await;
    let client = Client::open(&b.db_path, ClientOptions::default()).unwrap();
    // An hour between automatic cycles: only the change stream can bring the row sooner.
    let (_api, agent) = LocalApi::start(client).await;
    let mut changes = agent.changes();
    let first_cycle_done = async {
        while agent.log(1).await.unwrap().is_empty()
            || agent.status().await.unwrap().state == ferry_proto::local::SyncState::Syncing
        {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(PATIENT, first_cycle_done)
        .await
        .expect("the agent's first cycle finished");
    let mut streaming = agent.change_stream();
    tokio::time::timeout(PATIENT, streaming.wait_for(|open| *open))
        .await
        .expect("the change stream opened")
        .unwrap();

    insert_product(&a.app(), "p9", None, "Tea", 180);
    a.sync_ok().await;
    let arrived = async {
        while price(&b.app(), "p9") != Some(180) {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(PATIENT, arrived)
        .await
        .expect("the tablet's row reached the agent within 20 s, not an hour");
    let newest = &agent.log(1).await.unwrap()[0];
    assert_eq!(
        newest.trigger,
        ferry_client::CycleTrigger::Schedule,
        "an early scheduled cycle"
    );
    assert_eq!(newest.pulled, 1, "{newest:?}");
}
