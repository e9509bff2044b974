//! The device-local control API, served by an agent on a real socket.

use std::time::Duration;

use ferry_agent::{Agent, AgentOptions};
use ferry_client::{Client, ClientOptions};
use ferry_testkit::TestServer;
use ferry_testkit::pos::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct LocalApi {
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl LocalApi {
    async fn start(client: Client) -> (LocalApi, Agent) {
        let shutdown = CancellationToken::new();
        // A long interval: every cycle in these tests is forced, apart from the first one.
        let options = AgentOptions {
            interval: Duration::from_secs(3600),
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

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn post(&self, path: &str) -> (u16, Value) {
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
