//! The sync worker API with a worker on the same store: triggers, runs, state, pins, roles.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_core::time::{format_ms, parse_ms};
use ferry_store::Role;
use ferry_store::jobs::{CadenceRecord, FinishedRun, NewRun, StartedRun};
use reqwest::Method;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn a_trigger_stored_while_no_worker_runs_is_run_when_one_starts() {
    let server = Server::start().await;
    let (status, body) = server.trigger().await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message"], "Sync trigger notification sent to worker");
    assert_eq!(body["job"], PROBE);
    assert!(body["trigger_id"].as_i64().unwrap() > 0);
    let state = server.sync_state().await;
    assert_eq!(state["pending_triggers"], 1);
    assert_eq!(state["in_flight"], false);
    assert_eq!(state["last_run"], serde_json::Value::Null);

    let job = GateJob::open_now(PROBE);
    let worker = server.worker(job.clone(), quick_worker());
    let runs = server.settled_after(1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["tier"], "active");
    assert_eq!(run["counts"]["events_created"], 3);
    assert!(run["duration_ms"].as_i64().unwrap() >= 0);
    assert!(run["finished_at"].is_string());
    assert!(run.get("log").is_none(), "lists leave the log out");

    let (status, detail) = server
        .admin_get(&format!("/api/admin/sync/runs/{}", run["id"]))
        .await;
    assert_eq!(status, 200, "{detail}");
    let log: Vec<&str> = detail["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["message"].as_str().unwrap())
        .collect();
    assert!(log.contains(&"The gate job started."), "{log:?}");
    assert!(
        log.iter().any(|l| l.starts_with("Sync completed in ")
            && l.ends_with("s: 3 events created, 5 transactions processed")),
        "{log:?}"
    );
    let state = server.sync_state().await;
    assert_eq!(state["tier"], "active");
    assert_eq!(state["last_run"]["id"], run["id"]);
    assert!(state["next_run_at"].is_string());
    assert_eq!(state["interval_seconds"], 900);
    assert_eq!(job.runs(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_storm_of_triggers_during_a_run_gives_exactly_one_follow_up_run() {
    let server = Server::start().await;
    let job = GateJob::closed(PROBE);
    let (status, body) = server.trigger().await;
    assert_eq!(status, 202, "{body}");
    let worker = server.worker(job.clone(), quick_worker());
    wait_for("the first run to start", || async { job.runs() == 1 }).await;
    for _ in 0..1000 {
        server.jobs.create_trigger(PROBE, "storm").await.unwrap();
    }
    assert_eq!(server.sync_state().await["in_flight"], true);
    job.open();
    let runs = server.settled_after(2).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(job.runs(), 2);
    assert_eq!(job.most_at_once.load(Ordering::SeqCst), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_panicking_run_is_recorded_as_failed_and_the_worker_goes_on() {
    let server = Server::start().await;
    let job = GateJob::open_now(PROBE);
    job.panic_next.store(true, Ordering::SeqCst);
    // Stored first, so the worker's first run is this trigger's rather than the schedule's.
    assert_eq!(server.trigger().await.0, 202);
    let worker = server.worker(job.clone(), quick_worker());
    let runs = server.settled_after(1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "failed");
    assert!(
        runs[0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("the gate job was told to panic"),
        "{runs:?}"
    );
    assert_eq!(server.trigger().await.0, 202);
    let runs = server.settled_after(2).await;
    assert_eq!(runs[0]["status"], "succeeded", "newest first: {runs:?}");
    worker.stop().await;
}

#[tokio::test]
async fn viewers_read_runs_and_state_but_only_operators_trigger_and_pin() {
    let server = Server::start().await;
    let viewer = server
        .store
        .create_operator_token(DEFAULT_TENANT, Role::Viewer, None)
        .await
        .unwrap();
    let operator = server
        .store
        .create_operator_token(DEFAULT_TENANT, Role::Operator, None)
        .await
        .unwrap();
    let device = server.pair("Till").await;
    let pin = json!({"tier": "idle", "hours": 1});
    for (token, allowed) in [(&viewer, false), (&device.token, false), (&operator, true)] {
        let (status, body) = server
            .call(Method::POST, "/api/admin/sync/trigger", Some(token), None)
            .await;
        let pinned = server
            .call(
                Method::POST,
                "/api/admin/sync/pin",
                Some(token),
                Some(pin.clone()),
            )
            .await;
        let unpinned = server
            .call(Method::DELETE, "/api/admin/sync/pin", Some(token), None)
            .await;
        if allowed {
            assert_eq!(status, 202, "{body}");
            assert_eq!(pinned.0, 200, "{:?}", pinned.1);
            assert_eq!(unpinned.0, 200, "{:?}", unpinned.1);
        } else {
            assert_error(&(status, body), 403, "forbidden");
            assert_error(&pinned, 403, "forbidden");
            assert_error(&unpinned, 403, "forbidden");
        }
    }
    for path in ["/api/admin/sync/state", "/api/admin/sync/runs"] {
        let (status, body) = server.call(Method::GET, path, Some(&viewer), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_error(
            &server.call(Method::GET, path, None, None).await,
            401,
            "unauthorized",
        );
    }
    // The viewer's refused trigger stored nothing; the operator's did.
    assert_eq!(server.sync_state().await["pending_triggers"], 1);
}

#[tokio::test]
async fn a_pin_overrides_the_tier_until_removed_and_bad_pins_are_refused() {
    let server = Server::start().await;
    let admin = Some(server.admin.as_str());
    let (status, state) = server
        .call(
            Method::POST,
            "/api/admin/sync/pin",
            admin,
            Some(json!({"job": PROBE, "tier": "idle", "hours": 2.5})),
        )
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["tier"], "idle");
    assert_eq!(state["interval_seconds"], 3600);
    assert!(state["pinned_until"].is_string());
    assert_eq!(server.sync_state().await["tier"], "idle");

    for bad in [
        json!({"tier": "busy", "hours": 1}),
        json!({"tier": "idle", "hours": 0}),
        json!({"tier": "idle", "hours": -3}),
        json!({"tier": "idle", "hours": 1e9}),
        json!({"tier": "idle"}),
        json!({"tier": "idle", "hours": 1, "colour": "red"}),
    ] {
        let got = server
            .call(
                Method::POST,
                "/api/admin/sync/pin",
                admin,
                Some(bad.clone()),
            )
            .await;
        assert_error(&got, 400, "invalid_request");
    }
    let unknown = server
        .call(
            Method::POST,
            "/api/admin/sync/pin",
            admin,
            Some(json!({"job": "nope", "tier": "idle", "hours": 1})),
        )
        .await;
    assert_error(&unknown, 404, "not_found");
    assert_eq!(
        server.sync_state().await["tier"],
        "idle",
        "refused pins changed nothing"
    );

    let (status, state) = server
        .call(Method::DELETE, "/api/admin/sync/pin?job=probe", admin, None)
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["tier"], "active");
    assert_eq!(state["pinned_until"], serde_json::Value::Null);
}

/// Records a run of `job` straight in the store, started by `trigger` and ended as `status`
/// (`running` leaves it running); its id and `started_at`. The next run starts on a later
/// millisecond, so time bounds tell any two apart.
async fn seed_run(server: &Server, job: &str, trigger: &str, status: &str) -> (i64, String) {
    let run = NewRun {
        job,
        trigger,
        tier: "active",
        worker: "seed",
        lease: Duration::from_secs(60),
        for_triggers: false,
    };
    let StartedRun::Started {
        run_id,
        started_at_ms,
        ..
    } = server.jobs.start_run(&run).await.unwrap()
    else {
        panic!("the seeded run of {job} did not start");
    };
    if status != "running" {
        let counts = BTreeMap::new();
        let cadence = CadenceRecord {
            tier: "active".into(),
            demotion_toward: None,
            demotion_streak: 0,
            pinned_tier: None,
            pinned_until_ms: None,
            next_run_at_ms: None,
        };
        let finished = FinishedRun {
            status,
            counts: &counts,
            errors: &[],
            cadence: &cadence,
        };
        assert!(
            server
                .jobs
                .finish_run(run_id, "seed", &finished)
                .await
                .unwrap()
        );
    }
    wait_for("the store's clock to pass the run's start", || async {
        server.jobs.clock_ms().await.unwrap() > started_at_ms
    })
    .await;
    (run_id, format_ms(started_at_ms))
}

/// Ferry's filters of the runs list, each alone, combined, and with `job` and `before`.
#[tokio::test]
async fn runs_are_filtered_by_status_trigger_and_start_time_and_page_under_filters() {
    let server = Server::start().await;
    // Oldest first. Runs of a job the server does not name are listed without `job`.
    let plan = [
        (PROBE, "schedule", "succeeded"),
        (PROBE, "manual", "failed"),
        ("other", "catchup", "succeeded"),
        (PROBE, "schedule", "partial"),
        (PROBE, "manual", "succeeded"),
        ("other", "schedule", "running"),
    ];
    let mut seeded = Vec::new();
    for (job, trigger, status) in plan {
        seeded.push(seed_run(&server, job, trigger, status).await);
    }
    let id = |n: usize| seeded[n].0;
    let started = |n: usize| seeded[n].1.clone();
    let listed = async |query: &str| -> Vec<i64> {
        let (status, body) = server
            .admin_get(&format!("/api/admin/sync/runs?{query}"))
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| run["id"].as_i64().unwrap())
            .collect()
    };

    assert_eq!(listed("status=succeeded").await, [id(4), id(2), id(0)]);
    assert_eq!(listed("status=failed").await, [id(1)]);
    assert_eq!(listed("status=partial").await, [id(3)]);
    assert_eq!(listed("status=running").await, [id(5)]);
    assert!(listed("status=abandoned").await.is_empty());
    assert_eq!(listed("trigger=schedule").await, [id(5), id(3), id(0)]);
    assert_eq!(listed("trigger=manual").await, [id(4), id(1)]);
    assert_eq!(listed("trigger=catchup").await, [id(2)]);
    // At or after `since`, before `until`.
    assert_eq!(
        listed(&format!("since={}", started(3))).await,
        [id(5), id(4), id(3)]
    );
    assert_eq!(
        listed(&format!("until={}", started(3))).await,
        [id(2), id(1), id(0)]
    );
    // Any offset names the same instant; a `+` in a query string is written `%2B`.
    let ms = parse_ms(&started(3)).unwrap();
    let east = format_ms(ms + 2 * 3_600_000).replace('Z', "%2B02:00");
    let west = format_ms(ms - 5 * 3_600_000 - 30 * 60_000).replace('Z', "-05:30");
    assert_eq!(
        listed(&format!("since={east}")).await,
        [id(5), id(4), id(3)]
    );
    assert_eq!(
        listed(&format!("until={west}")).await,
        [id(2), id(1), id(0)]
    );

    // Combined, with each other and with the job.
    assert_eq!(
        listed(&format!("job={PROBE}&trigger=schedule")).await,
        [id(3), id(0)]
    );
    assert_eq!(
        listed(&format!("job={PROBE}&status=succeeded&trigger=manual")).await,
        [id(4)]
    );
    assert_eq!(
        listed(&format!(
            "job={PROBE}&since={}&until={}",
            started(1),
            started(4)
        ))
        .await,
        [id(3), id(1)]
    );
    assert_eq!(
        listed(&format!("status=succeeded&since={}", started(1))).await,
        [id(4), id(2)]
    );
    assert!(listed("status=failed&trigger=catchup").await.is_empty());
    assert!(
        listed(&format!("since={}&until={}", started(4), started(1)))
            .await
            .is_empty()
    );
    // An empty filter, as a form with nothing chosen sends it, filters nothing.
    assert_eq!(listed("status=&trigger=&since=&until=").await.len(), 6);

    // Paging under a filter: `before` is the previous page's last id.
    let first = listed("status=succeeded&limit=2").await;
    assert_eq!(first, [id(4), id(2)]);
    assert_eq!(
        listed(&format!("status=succeeded&limit=2&before={}", id(2))).await,
        [id(0)]
    );
    assert!(
        listed(&format!("status=succeeded&limit=2&before={}", id(0)))
            .await
            .is_empty()
    );
    let probe_since = format!("job={PROBE}&since={}&limit=1", started(1));
    assert_eq!(listed(&probe_since).await, [id(4)]);
    assert_eq!(
        listed(&format!("{probe_since}&before={}", id(4))).await,
        [id(3)]
    );
    assert_eq!(
        listed(&format!("{probe_since}&before={}", id(3))).await,
        [id(1)]
    );
    assert!(
        listed(&format!("{probe_since}&before={}", id(1)))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_jobs_runs_and_bad_queries_are_refused_without_writing() {
    let server = Server::start().await;
    let admin = Some(server.admin.as_str());
    let unknown = server
        .call(
            Method::POST,
            "/api/admin/sync/trigger",
            admin,
            Some(json!({"job": "nope"})),
        )
        .await;
    assert_error(&unknown, 404, "not_found");
    let extra = server
        .call(
            Method::POST,
            "/api/admin/sync/trigger",
            admin,
            Some(json!({"job": PROBE, "now": true})),
        )
        .await;
    assert_error(&extra, 400, "invalid_request");
    let malformed = server
        .request(Method::POST, "/api/admin/sync/trigger", admin)
        .header("content-type", "application/json")
        .body("{\"job\":");
    assert_error(&send(malformed).await, 400, "invalid_request");
    assert_eq!(server.sync_state().await["pending_triggers"], 0);

    assert_error(
        &server.admin_get("/api/admin/sync/runs/424242").await,
        404,
        "not_found",
    );
    assert_error(
        &server.admin_get("/api/admin/sync/runs/abc").await,
        404,
        "not_found",
    );
    assert_error(
        &server.admin_get("/api/admin/sync/runs?limit=0").await,
        400,
        "invalid_request",
    );
    assert_error(
        &server.admin_get("/api/admin/sync/runs?before=x").await,
        400,
        "invalid_request",
    );
    // Ferry's filters: each message names the parameter and what it takes.
    for (query, message) in [
        (
            "status=done",
            "`status` must be one of running, succeeded, failed, partial, abandoned; got \"done\".",
        ),
        (
            "status=Succeeded",
            "`status` must be one of running, succeeded, failed, partial, abandoned; got \"Succeeded\".",
        ),
        (
            "trigger=cron",
            "`trigger` must be one of schedule, manual, catchup; got \"cron\".",
        ),
        (
            "since=yesterday",
            "`since` must be an RFC 3339 time such as 2026-11-21T12:00:00Z or \
             2026-11-21T13:00:00+01:00; got \"yesterday\".",
        ),
        (
            "until=2026-11-21",
            "`until` must be an RFC 3339 time such as 2026-11-21T12:00:00Z or \
             2026-11-21T13:00:00+01:00; got \"2026-11-21\".",
        ),
        // A `+` that was not encoded arrives as a space.
        (
            "job=probe&status=succeeded&since=2026-11-21T13:00:00+01:00",
            "`since` must be an RFC 3339 time such as 2026-11-21T12:00:00Z or \
             2026-11-21T13:00:00+01:00; got \"2026-11-21T13:00:00 01:00\". A `+` in a query \
             string reads as a space: write it as `%2B`.",
        ),
    ] {
        let refused = server
            .admin_get(&format!("/api/admin/sync/runs?{query}"))
            .await;
        assert_eq!(assert_error(&refused, 400, "invalid_request"), message);
    }
    let (status, listed) = server.admin_get("/api/admin/sync/runs").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["runs"], json!([]), "a refused query wrote a run");
    assert_eq!(server.sync_state().await["pending_triggers"], 0);
    assert_error(
        &server.admin_get("/api/admin/sync/state?job=nope").await,
        404,
        "not_found",
    );
}

/// Guards issue 13: sync jobs are the deployment's, so another tenant's operators, its admin
/// included, neither see nor steer them.
#[tokio::test]
async fn another_tenant_s_operators_neither_see_nor_steer_the_deployment_s_jobs() {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    let pin = json!({"tier": "idle", "hours": 1});
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let other = server
            .store
            .create_operator_token("acme", role, None)
            .await
            .unwrap();
        let token = Some(other.as_str());
        let refused = [
            (Method::POST, "/api/admin/sync/trigger", None),
            (Method::POST, "/api/admin/sync/pin", Some(pin.clone())),
            (Method::DELETE, "/api/admin/sync/pin", None),
            (Method::GET, "/api/admin/sync/state", None),
            (Method::GET, "/api/admin/sync/runs", None),
            (Method::GET, "/api/admin/sync/runs/1", None),
        ];
        for (method, path, body) in refused {
            let got = server.call(method.clone(), path, token, body).await;
            let message = assert_error(&got, 403, "forbidden");
            assert!(!message.is_empty(), "{method} {path}");
        }
    }
    // Nothing was stored or changed, and the deployment's own viewer still reads.
    let viewer = server
        .store
        .create_operator_token(DEFAULT_TENANT, Role::Viewer, None)
        .await
        .unwrap();
    let (status, state) = server
        .call(Method::GET, "/api/admin/sync/state", Some(&viewer), None)
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["pending_triggers"], 0);
    assert_eq!(state["pinned_until"], serde_json::Value::Null);
}

/// Guards issue 13: `/metrics` summarizes the deployment's sync jobs, so it asks what their
/// state asks: a token of the deployment's tenant, viewer or better.
#[tokio::test]
async fn metrics_need_a_viewer_token_of_the_deployment_s_tenant() {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    let viewer = server
        .store
        .create_operator_token(DEFAULT_TENANT, Role::Viewer, None)
        .await
        .unwrap();
    let other_admin = server
        .store
        .create_operator_token("acme", Role::Admin, None)
        .await
        .unwrap();
    let device = server.pair("Till").await;

    assert_error(
        &server.call(Method::GET, "/metrics", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &server
            .call(Method::GET, "/metrics", Some("not-a-token"), None)
            .await,
        401,
        "unauthorized",
    );
    for refused in [other_admin.as_str(), device.token.as_str()] {
        assert_error(
            &server
                .call(Method::GET, "/metrics", Some(refused), None)
                .await,
            403,
            "forbidden",
        );
    }
    for allowed in [viewer.as_str(), server.admin.as_str()] {
        let response = server
            .request(Method::GET, "/metrics", Some(allowed))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }
}
