//! `GET /api/admin/events`: live consoles see runs, job states and devices as they change,
//! only what their token may see, and nothing that carries a token.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_store::jobs::{CadenceRecord, FinishedRun, NewRun, StartedRun};
use ferry_store::{JobStore, Role};
use reqwest::Method;
use serde_json::{Value, json};

use super::support::*;

/// How long a test waits for one event before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// An open Server-Sent Events stream (`GET /api/admin/events`, `GET /api/sync/stream`).
pub(crate) struct EventStream {
    response: reqwest::Response,
    buffer: String,
    /// Every event read so far, in order, as `(event, data)`.
    pub(crate) seen: Vec<(String, Value)>,
    /// Comment lines read so far.
    pub(crate) comments: usize,
    /// Events before this one were looked at by an earlier [`EventStream::wait_for`].
    next: usize,
}

impl EventStream {
    /// Opens the admin stream with `token`; see [`EventStream::open`].
    pub(crate) async fn open_admin(server: &Server, token: &str) -> EventStream {
        EventStream::open(server, "/api/admin/events", token).await
    }

    /// Opens the stream at `path` with `token`, asserting a `200` event stream, and waits for
    /// its opening comment: from then on every change reaches it.
    pub(crate) async fn open(server: &Server, path: &str, token: &str) -> EventStream {
        let response = server
            .request(Method::GET, path, Some(token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut stream = EventStream {
            response,
            buffer: String::new(),
            seen: Vec::new(),
            comments: 0,
            next: 0,
        };
        while stream.comments == 0 {
            stream.read().await;
        }
        stream
    }

    /// Reads one more chunk; `false` when the stream ended.
    async fn read(&mut self) -> bool {
        let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no event within {PATIENCE:?}; seen {:?}", self.seen))
            .expect("the stream reads");
        let Some(chunk) = chunk else {
            return false;
        };
        self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        // An event ends with a blank line.
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let (mut name, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if !data.is_empty() {
                let data = serde_json::from_str(&data).expect("event data is JSON");
                self.seen.push((name, data));
            }
        }
        true
    }

    /// Where the next [`EventStream::wait_for`] starts looking; see [`EventStream::rewind`].
    pub(crate) fn mark(&self) -> usize {
        self.next
    }

    /// Looks again from `mark`: events of different kinds (a run and the job's state) are
    /// sent by different writes and may arrive in either order.
    pub(crate) fn rewind(&mut self, mark: usize) {
        self.next = mark;
    }

    /// Waits for an event named `name` whose data satisfies `test`, after the one the last
    /// call found; returns its data. Fails after [`PATIENCE`], keep-alive comments or not.
    pub(crate) async fn wait_for(&mut self, name: &str, test: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {name} event as expected within {PATIENCE:?}; seen {:?}",
                self.seen
            );
            if let Some(found) = self.seen[self.next..]
                .iter()
                .position(|(event, data)| event == name && test(data))
            {
                let at = self.next + found;
                self.next = at + 1;
                return self.seen[at].1.clone();
            }
            assert!(self.read().await, "the stream ended; seen {:?}", self.seen);
        }
    }

    /// Reads until the stream ends; fails if it does not end within [`PATIENCE`].
    pub(crate) async fn until_closed(&mut self) {
        while self.read().await {}
    }

    /// The raw text of every event seen, to look for what must never appear.
    pub(crate) fn text(&self) -> String {
        format!("{:?}", self.seen)
    }
}

async fn operator_token(server: &Server, tenant: &str, role: Role) -> String {
    server
        .store
        .create_operator_token(tenant, role, None)
        .await
        .unwrap()
}

/// Starts a run of the probe job as a worker would.
pub(crate) async fn start_probe_run(jobs: &dyn JobStore) -> i64 {
    let started = jobs
        .start_run(&NewRun {
            job: PROBE,
            trigger: "manual",
            tier: "active",
            worker: "w1",
            lease: Duration::from_secs(60),
            for_triggers: false,
        })
        .await
        .unwrap();
    match started {
        StartedRun::Started { run_id, .. } => run_id,
        other => panic!("the run did not start: {other:?}"),
    }
}

pub(crate) async fn finish_probe_run(jobs: &dyn JobStore, run_id: i64) {
    let cadence = CadenceRecord {
        tier: "active".into(),
        demotion_toward: None,
        demotion_streak: 0,
        pinned_tier: None,
        pinned_until_ms: None,
        next_run_at_ms: None,
    };
    let finished = FinishedRun {
        status: "succeeded",
        counts: &BTreeMap::from([("events_created".to_owned(), 3)]),
        errors: &[],
        cadence: &cadence,
    };
    assert!(jobs.finish_run(run_id, "w1", &finished).await.unwrap());
}

#[tokio::test]
async fn a_console_sees_triggers_runs_and_devices_as_they_happen() {
    let server = Server::start().await;
    let viewer = operator_token(&server, DEFAULT_TENANT, Role::Viewer).await;
    let mut events = EventStream::open_admin(&server, &viewer).await;

    // A trigger: the job's state, as the state endpoint gives it.
    let (status, body) = server.trigger().await;
    assert_eq!(status, 202, "{body}");
    let state = events
        .wait_for("state", |s| s["pending_triggers"] == 1)
        .await;
    assert_eq!(state, server.sync_state().await);

    // A run starts and finishes: the run as the runs list shows it, each time.
    let run_id = start_probe_run(&*server.jobs).await;
    let started = events
        .wait_for("run", |r| r["id"] == run_id && r["status"] == "running")
        .await;
    assert_eq!(started["job"], PROBE);
    assert!(started.get("log").is_none(), "{started}");
    let mark = events.mark();
    finish_probe_run(&*server.jobs, run_id).await;
    let finished = events
        .wait_for("run", |r| r["id"] == run_id && r["status"] == "succeeded")
        .await;
    let (_, listed) = server.admin_get("/api/admin/sync/runs").await;
    assert_eq!(finished, listed["runs"][0]);
    events.rewind(mark);
    events
        .wait_for("state", |s| {
            s["in_flight"] == false && s["last_run"]["id"] == run_id
        })
        .await;

    // A device pairs and pushes: its entry as the devices list has it.
    let till = server.pair("Till").await;
    let outcomes = server
        .push_ok(&till, json!([product("p1", "Cola", &v(1, &till.id))]))
        .await;
    assert_eq!(outcomes, ["applied"]);
    let entry = events
        .wait_for("device", |d| {
            d["device_id"] == till.id.as_str() && !d["last_push_at"].is_null()
        })
        .await;
    assert_eq!(entry["name"], "Till");

    // A revocation is a device event too.
    let path = format!("/api/admin/devices/{}", till.id);
    let (status, _) = server
        .call(Method::DELETE, &path, Some(&server.admin), None)
        .await;
    assert_eq!(status, 204);
    events
        .wait_for("device", |d| {
            d["device_id"] == till.id.as_str() && !d["revoked_at"].is_null()
        })
        .await;

    let text = events.text();
    for secret in [&till.token, &server.admin, &viewer] {
        assert!(!text.contains(secret.as_str()), "an event carries a token");
    }
}

#[tokio::test]
async fn a_tenant_s_console_sees_its_own_devices_and_no_deployment_jobs() {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    let acme_viewer = operator_token(&server, "acme", Role::Viewer).await;
    let mut acme = EventStream::open_admin(&server, &acme_viewer).await;
    let mut deployment = EventStream::open_admin(&server, &server.admin).await;

    // The deployment's own device and a trigger, then acme's device.
    let ours = server.pair("Ours").await;
    server
        .push_ok(&ours, json!([product("p1", "Cola", &v(1, &ours.id))]))
        .await;
    let (status, _) = server.trigger().await;
    assert_eq!(status, 202);
    let theirs = server.pair_in("acme", "Theirs").await;
    server
        .push_ok(&theirs, json!([product("p1", "Tea", &v(1, &theirs.id))]))
        .await;

    // The deployment's console sees its own device and the job; by the time acme's console
    // sees acme's device, it would have seen the others' events had they been sent to it.
    // The device's event and the job's come from different writes, in either order.
    let mark = deployment.mark();
    deployment
        .wait_for("device", |d| d["device_id"] == ours.id.as_str())
        .await;
    deployment.rewind(mark);
    deployment
        .wait_for("state", |s| s["pending_triggers"] == 1)
        .await;
    acme.wait_for("device", |d| d["device_id"] == theirs.id.as_str())
        .await;
    let (status, _) = server.trigger().await;
    assert_eq!(status, 202);
    let later = server.pair_in("acme", "Later").await;
    acme.wait_for("device", |d| d["device_id"] == later.id.as_str())
        .await;
    for (name, data) in &acme.seen {
        assert_eq!(name, "device", "acme saw {name}: {data}");
        assert_ne!(data["device_id"], ours.id.as_str(), "acme saw our device");
    }
    assert!(
        !deployment.text().contains(&theirs.id),
        "the deployment's console saw acme's device"
    );
}

#[tokio::test]
async fn a_device_that_pushes_often_is_shown_at_most_once_a_second() {
    let server = Server::start().await;
    let mut events = EventStream::open_admin(&server, &server.admin).await;
    let till = server.pair("Till").await;
    let began = tokio::time::Instant::now();
    for n in 0..30 {
        let id = format!("p{n}");
        server
            .push_ok(&till, json!([product(&id, "Cola", &v(n, &till.id))]))
            .await;
    }
    // The last change of the burst is shown, however it was coalesced.
    let body = json!({"device_id": till.id, "schema_hash": server.schema_hash,
                      "changes": [], "pending": 42});
    let (status, _) = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&till.token),
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    events
        .wait_for("device", |d| {
            d["device_id"] == till.id.as_str() && d["pending"] == 42
        })
        .await;
    let seconds = began.elapsed().as_secs_f64();
    let shown = events.seen.iter().filter(|(n, _)| n == "device").count();
    // One at once, then at most one a second.
    assert!(
        shown as f64 <= seconds + 2.0,
        "{shown} device events in {seconds:.1} s for 31 requests"
    );
}

#[tokio::test]
async fn the_stream_needs_an_operator_token_and_ends_when_the_server_stops() {
    let server = Server::start().await;
    let till = server.pair("Till").await;
    let refused = server
        .call(Method::GET, "/api/admin/events", Some(&till.token), None)
        .await;
    assert_error(&refused, 403, "forbidden");
    let refused = server
        .call(Method::GET, "/api/admin/events", None, None)
        .await;
    assert_error(&refused, 401, "unauthorized");

    let viewer = operator_token(&server, DEFAULT_TENANT, Role::Viewer).await;
    let mut events = EventStream::open_admin(&server, &viewer).await;
    // The server's drain does not wait for the stream: it ends it.
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    assert!(stopped.is_ok(), "the server waited for the event stream");
    events.until_closed().await;
}

#[tokio::test]
async fn whoami_tells_the_tenant_the_role_and_what_the_token_reaches() {
    let server = Server::start().await;
    let (status, body) = server.admin_get("/api/admin/whoami").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"tenant": DEFAULT_TENANT, "role": "admin", "deployment": true,
               "jobs": [PROBE], "billing": true})
    );
    assert!(server.store.create_tenant("acme").await.unwrap());
    let viewer = operator_token(&server, "acme", Role::Viewer).await;
    let (status, body) = server
        .call(Method::GET, "/api/admin/whoami", Some(&viewer), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"tenant": "acme", "role": "viewer", "deployment": false,
               "jobs": [], "billing": false})
    );
    let till = server.pair("Till").await;
    let refused = server
        .call(Method::GET, "/api/admin/whoami", Some(&till.token), None)
        .await;
    assert_error(&refused, 403, "forbidden");
}
