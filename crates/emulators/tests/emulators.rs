//! The emulators over real sockets, as Ferry's clients meet them.

use ferry_core::time::parse_ms;
use serde_json::Value;

/// Milliseconds of an RFC 3339 UTC time.
fn ms(text: &str) -> i64 {
    parse_ms(text).expect("a valid test time")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

mod steve {
    use std::time::Duration;

    use ferry_emulators::Running;
    use ferry_emulators::steve::{self, Config, Steve, StopActor};
    use serde_json::{Value, json};

    use super::{json_of, ms};

    async fn spawn() -> Running<Steve> {
        steve::spawn(Config::default()).await.unwrap()
    }

    async fn get(steve: &Running<Steve>, path: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", steve.url()))
            .header("STEVE-API-KEY", "steve-api-key")
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    fn ids(body: &Value) -> Vec<i64> {
        let list = body.as_array().expect("a list");
        list.iter()
            .map(|item| item["id"].as_i64().unwrap())
            .collect()
    }

    /// Checks StEvE's error body and returns its message.
    fn error_message(body: &Value, status: u16, reason: &str, url: &str) -> String {
        assert_eq!(body["status"], status);
        assert_eq!(body["error"], reason);
        assert_eq!(body["path"], url);
        let timestamp = body["timestamp"].as_str().unwrap();
        assert!(
            ferry_core::time::parse_ms(timestamp).is_some(),
            "{timestamp}"
        );
        assert_eq!(body.as_object().unwrap().len(), 5, "{body}");
        body["message"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn requests_without_the_right_key_get_401_with_steves_body() {
        let config = Config {
            api_key_header: "X-Key".to_owned(),
            ..Config::default()
        };
        let steve = steve::spawn(config).await.unwrap();
        let url = format!("{}/api/v1/transactions", steve.url());
        let client = reqwest::Client::new();
        for key in [None, Some("wrong"), Some("steve-api-key")] {
            let mut request = client.get(&url);
            if let Some(key) = key {
                request = request.header("STEVE-API-KEY", key);
            }
            let (status, body) = json_of(request.send().await.unwrap()).await;
            assert_eq!(status, 401);
            let message = error_message(&body, 401, "Unauthorized", &url);
            assert_eq!(
                message,
                "Full authentication is required to access this resource"
            );
        }
        let response = client
            .get(&url)
            .header("X-Key", "steve-api-key")
            .send()
            .await;
        assert_eq!(response.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn transactions_show_every_field_with_explicit_nulls() {
        let steve = spawn().await;
        let handle = steve.handle();
        let done = handle.start_session(
            "CB-1",
            2,
            "ALICE",
            ms("2026-12-06T01:02:03.456Z"),
            Some("12345"),
        );
        let reason = Some("EVDisconnected");
        let stop = ms("2026-12-06T03:00:00Z");
        handle
            .stop_session(done, stop, "20000", reason, StopActor::Station)
            .unwrap();
        handle.start_session("CB-2", 1, "BOB", ms("2026-12-06T04:00:00Z"), None);

        let (status, body) = get(&steve, "transactions").await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!([
                {
                    "id": 2, "connectorId": 1, "chargeBoxPk": 2, "ocppTagPk": 2,
                    "chargeBoxId": "CB-2", "ocppIdTag": "BOB",
                    "startTimestamp": "2026-12-06T04:00:00.000Z", "startValue": null,
                    "stopTimestamp": null, "stopValue": null, "stopReason": null,
                    "stopEventActor": null,
                },
                {
                    "id": 1, "connectorId": 2, "chargeBoxPk": 1, "ocppTagPk": 1,
                    "chargeBoxId": "CB-1", "ocppIdTag": "ALICE",
                    "startTimestamp": "2026-12-06T01:02:03.456Z", "startValue": "12345",
                    "stopTimestamp": "2026-12-06T03:00:00.000Z", "stopValue": "20000",
                    "stopReason": "EVDisconnected", "stopEventActor": "station",
                },
            ])
        );

        let (_, active) = get(&steve, "transactions?type=ACTIVE").await;
        assert_eq!(ids(&active), [2]);
        let (_, alice) = get(&steve, "transactions?ocppIdTag=ALICE&unknownParam=1").await;
        assert_eq!(ids(&alice), [1]);
        let (_, by_box) = get(&steve, "transactions?chargeBoxId=CB-2").await;
        assert_eq!(ids(&by_box), [2]);
        let (_, by_pk) = get(&steve, "transactions?transactionPk=1").await;
        assert_eq!(ids(&by_pk), [1]);
        let (_, none) = get(&steve, "transactions?ocppIdTag=NOBODY").await;
        assert_eq!(none, json!([]));

        handle.revise_stop_value(done, "21000").unwrap();
        let (_, revised) = get(&steve, "transactions?transactionPk=1").await;
        assert_eq!(revised[0]["stopValue"], "21000");
    }

    /// Starts sessions around a window and returns the ids of those inside it.
    fn sessions_around_window(steve: &Steve, starts: &[(&str, bool)]) -> Vec<i64> {
        let mut inside = Vec::new();
        for (start, is_inside) in starts {
            let id = steve.start_session("CB-1", 1, "ALICE", ms(start), Some("0"));
            if *is_inside {
                inside.insert(0, i64::from(id));
            }
        }
        inside
    }

    #[tokio::test]
    async fn from_to_selects_starts_inclusively_in_steves_zone() {
        let config = Config {
            time_zone: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            ..Config::default()
        };
        let steve = steve::spawn(config).await.unwrap();
        // Berlin is UTC+2 in July: 09:00 to 12:00 there is 07:00 to 10:00 UTC.
        let inside = sessions_around_window(
            steve.handle(),
            &[
                ("2026-07-01T06:59:59.999Z", false),
                ("2026-07-01T07:00:00Z", true),
                ("2026-07-01T08:30:00Z", true),
                ("2026-07-01T10:00:00Z", true),
                ("2026-07-01T10:00:00.001Z", false),
            ],
        );
        let window = "periodType=FROM_TO&from=2026-07-01T09:00:00&to=2026-07-01T12:00";
        let (status, body) = get(&steve, &format!("transactions?{window}")).await;
        assert_eq!(status, 200);
        assert_eq!(ids(&body), inside);

        let (_, day) = get(
            &steve,
            "transactions?periodType=FROM_TO&from=2026-07-01&to=2026-07-02",
        )
        .await;
        assert_eq!(ids(&day), [5, 4, 3, 2, 1]);
        let fraction = "periodType=FROM_TO&from=2026-07-01T09:00:00.000&to=2026-07-01T11:59:59.999";
        let (_, before_noon) = get(&steve, &format!("transactions?{fraction}")).await;
        assert_eq!(ids(&before_noon), [3, 2]);
    }

    #[tokio::test]
    async fn today_and_last_days_go_by_calendar_date() {
        let steve = spawn().await;
        let now = ferry_core::time::now_ms();
        let day = 86_400_000;
        let handle = steve.handle();
        let long_ago = handle.start_session("CB-1", 1, "ALICE", now - 20 * day, None);
        let recent = handle.start_session("CB-1", 1, "ALICE", now - 2 * day, None);
        let today = handle.start_session("CB-1", 1, "ALICE", now, None);

        let (_, last_10) = get(&steve, "transactions?periodType=LAST_10").await;
        assert_eq!(ids(&last_10), [i64::from(today), i64::from(recent)]);
        let (_, last_30) = get(&steve, "transactions?periodType=LAST_30").await;
        assert_eq!(ids(&last_30), [today, recent, long_ago].map(i64::from));
        let (_, only_today) = get(&steve, "transactions?periodType=TODAY").await;
        assert_eq!(ids(&only_today), [i64::from(today)]);
    }

    #[tokio::test]
    async fn parameters_steve_cannot_bind_get_400() {
        let steve = spawn().await;
        let url = format!("{}/api/v1/transactions", steve.url());
        for query in [
            "type=active",
            "type=NONE",
            "periodType=YESTERDAY",
            "periodType=FROM_TO&from=2026-07-01T09:00:00",
            "periodType=FROM_TO&from=2026-07-01T09:00:00&to=2026-07-01T09:00:00",
            "periodType=FROM_TO&from=2026-07-02&to=2026-07-01",
            "from=2026-07-01T09:00:00Z",
            "from=yesterday",
            "to=2026-07-01T9:00",
            "transactionPk=one",
        ] {
            let (status, body) = get(&steve, &format!("transactions?{query}")).await;
            assert_eq!(status, 400, "{query}");
            let message = error_message(&body, 400, "Bad Request", &url);
            assert_eq!(message, "Error understanding the request", "{query}");
        }
    }

    #[tokio::test]
    async fn tags_show_parents_and_active_sessions() {
        let steve = spawn().await;
        let handle = steve.handle();
        let fleet = handle.add_tag("FLEET", None).unwrap();
        let van = handle.add_tag("VAN-1", Some("FLEET")).unwrap();
        handle.start_session("CB-1", 1, "VAN-1", ms("2026-12-06T10:00:00Z"), None);

        let (status, body) = get(&steve, &format!("ocppTags/{van}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({
                "ocppTagPk": van, "idTag": "VAN-1",
                "parentOcppTagPk": fleet, "parentIdTag": "FLEET",
                "expiryDate": null, "inTransaction": true, "blocked": false,
                "maxActiveTransactionCount": 1, "activeTransactionCount": 1, "note": null,
            })
        );
        let (_, children) = get(&steve, "ocppTags?parentIdTag=FLEET&blocked=FALSE").await;
        assert_eq!(children.as_array().unwrap().len(), 1);
        assert_eq!(children[0]["idTag"], "VAN-1");
        let (_, all) = get(&steve, "ocppTags").await;
        assert_eq!(all[0]["idTag"], "FLEET");
        assert_eq!(all[0]["inTransaction"], false);
        let (status, _) = get(&steve, "ocppTags/99").await;
        assert_eq!(status, 404);
        assert_eq!(
            handle.add_tag("CAR", Some("NOBODY")),
            Err(steve::Error::UnknownTag("NOBODY".into()))
        );
    }

    #[tokio::test]
    async fn posting_a_tag_creates_it_once() {
        let steve = spawn().await;
        let client = reqwest::Client::new();
        let url = format!("{}/api/v1/ocppTags", steve.url());
        let post = |body: Value| {
            let request = client.post(&url).header("STEVE-API-KEY", "steve-api-key");
            async move { json_of(request.json(&body).send().await.unwrap()).await }
        };
        let (status, created) = post(json!({"idTag": "ALICE", "note": "front desk"})).await;
        assert_eq!(status, 201);
        assert_eq!(created["idTag"], "ALICE");
        assert_eq!(created["note"], "front desk");
        let (status, body) = post(json!({"idTag": "ALICE"})).await;
        assert_eq!(status, 422);
        error_message(&body, 422, "Unprocessable Entity", &url);
        let (status, _) = post(json!({"note": "no tag"})).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn deleting_a_tag_deletes_its_transactions() {
        let steve = spawn().await;
        let handle = steve.handle();
        let alice = handle.add_tag("ALICE", None).unwrap();
        handle.start_session("CB-1", 1, "ALICE", ms("2026-12-06T10:00:00Z"), Some("0"));
        let bob = handle.start_session("CB-1", 1, "BOB", ms("2026-12-06T11:00:00Z"), Some("0"));
        handle.start_session("CB-1", 1, "ALICE", ms("2026-12-06T12:00:00Z"), Some("0"));

        let response = reqwest::Client::new()
            .delete(format!("{}/api/v1/ocppTags/{alice}", steve.url()))
            .header("STEVE-API-KEY", "steve-api-key")
            .send()
            .await
            .unwrap();
        let (status, deleted) = json_of(response).await;
        assert_eq!(status, 200);
        assert_eq!(deleted["idTag"], "ALICE");
        assert_eq!(deleted["activeTransactionCount"], 2);

        let (_, left) = get(&steve, "transactions").await;
        assert_eq!(ids(&left), [i64::from(bob)]);
        let (status, _) = get(&steve, &format!("ocppTags/{alice}")).await;
        assert_eq!(status, 404);
        assert_eq!(steve.handle().snapshot().sessions.len(), 1);
    }

    #[tokio::test]
    async fn armed_failures_answer_500_then_requests_succeed() {
        let steve = spawn().await;
        steve.handle().fail_next(2);
        let url = format!("{}/api/v1/transactions", steve.url());
        for _ in 0..2 {
            let (status, body) = get(&steve, "transactions").await;
            assert_eq!(status, 500);
            error_message(&body, 500, "Internal Server Error", &url);
        }
        let (status, _) = get(&steve, "transactions").await;
        assert_eq!(status, 200);
        assert_eq!(steve.handle().requests_served(), 3);
    }

    #[tokio::test]
    async fn a_stalled_request_outlasts_the_clients_timeout() {
        let steve = spawn().await;
        steve.handle().stall_next(1, Duration::from_secs(30));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let request = || {
            client
                .get(format!("{}/api/v1/ocppTags", steve.url()))
                .header("STEVE-API-KEY", "steve-api-key")
                .send()
        };
        let error = request().await.unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(request().await.unwrap().status(), 200);
        assert_eq!(steve.handle().requests_served(), 2);
    }

    #[tokio::test]
    async fn the_emulator_routes_drive_the_simulation() {
        let steve = spawn().await;
        let client = reqwest::Client::new();
        let base = steve.url().trim_end_matches("/steve").to_owned();
        let post = |path: &str, body: Value| {
            client
                .post(format!("{base}/_emulator/{path}"))
                .json(&body)
                .send()
        };

        let started = post(
            "sessions",
            json!({"charge_box_id": "CB-9", "connector_id": 1, "id_tag": "ZED",
                   "start": "2026-12-06T11:00:00+01:00", "start_value": "100"}),
        );
        let (status, body) = json_of(started.await.unwrap()).await;
        assert_eq!(status, 201);
        let id = body["transaction_id"].as_i64().unwrap();
        let reading = post(
            &format!("sessions/{id}/meter-values"),
            json!({"value": "150"}),
        );
        assert_eq!(reading.await.unwrap().status(), 204);
        let stop = json!({"at": "2026-12-09T10:00:00Z", "value": "200", "actor": "manual"});
        assert_eq!(
            post(&format!("sessions/{id}/stop"), stop.clone())
                .await
                .unwrap()
                .status(),
            204
        );
        assert_eq!(
            post(&format!("sessions/{id}/stop"), stop)
                .await
                .unwrap()
                .status(),
            409
        );
        let faults = post("faults", json!({"fail_next": 1}));
        assert_eq!(faults.await.unwrap().status(), 204);

        let (status, _) = get(&steve, "transactions").await;
        assert_eq!(status, 500);
        let (_, body) = get(&steve, "transactions").await;
        assert_eq!(body[0]["startTimestamp"], "2026-12-06T10:00:00.000Z");
        assert_eq!(body[0]["stopTimestamp"], "2026-12-09T10:00:00.000Z");
        assert_eq!(body[0]["stopEventActor"], "manual");
        let snapshot = steve.handle().snapshot();
        assert_eq!(snapshot.sessions[0].meter_values[0].value, "150");
        let state = client
            .get(format!("{base}/_emulator/state"))
            .send()
            .await
            .unwrap();
        let (_, state) = json_of(state).await;
        assert_eq!(state["tags"][0]["id_tag"], "ZED");
    }
}

mod lago {
    use std::time::Duration;

    use ferry_emulators::Running;
    use ferry_emulators::lago::{self, Config, Lago};
    use serde_json::{Value, json};

    use super::json_of;

    async fn spawn() -> Running<Lago> {
        lago::spawn(Config::default()).await.unwrap()
    }

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn post(lago: &Running<Lago>, path: &str, body: Value) -> (u16, Value) {
        json_of(send_post(&client(), lago, path, body).await.unwrap()).await
    }

    fn send_post(
        client: &reqwest::Client,
        lago: &Running<Lago>,
        path: &str,
        body: Value,
    ) -> impl Future<Output = reqwest::Result<reqwest::Response>> {
        client
            .post(format!("{}/api/v1/{path}", lago.url()))
            .bearer_auth("lago-api-key")
            .json(&body)
            .send()
    }

    async fn get(lago: &Running<Lago>, path: &str) -> (u16, Value) {
        let response = client()
            .get(format!("{}/api/v1/{path}", lago.url()))
            .bearer_auth("lago-api-key")
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    fn event(transaction_id: &str) -> Value {
        json!({
            "transaction_id": transaction_id,
            "external_subscription_id": "sub-1",
            "code": "kwh",
            "timestamp": 1_780_000_000,
            "properties": {"kwh": "1.5"},
        })
    }

    fn batch(size: usize) -> Vec<Value> {
        (0..size)
            .map(|index| event(&format!("tx-{index}")))
            .collect()
    }

    #[tokio::test]
    async fn requests_without_the_bearer_key_get_401() {
        let lago = spawn().await;
        let url = format!("{}/api/v1/events", lago.url());
        for key in [None, Some("wrong")] {
            let mut request = client().post(&url).json(&json!({"event": event("t")}));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let (status, body) = json_of(request.send().await.unwrap()).await;
            assert_eq!(
                (status, body),
                (401, json!({"status": 401, "error": "Unauthorized"}))
            );
        }
        assert_eq!(lago.handle().events_stored(), 0);
    }

    #[tokio::test]
    async fn a_posted_event_is_stored_once_per_subscription() {
        let lago = spawn().await;
        let sent = json!({
            "transaction_id": "tx-1", "external_subscription_id": "sub-1", "code": "kwh",
            "timestamp": "1651240791.123", "properties": {"kwh": 12.5},
        });
        let (status, body) = post(&lago, "events", json!({"event": sent})).await;
        assert_eq!(status, 200);
        let event = &body["event"];
        assert_eq!(event["transaction_id"], "tx-1");
        assert_eq!(event["external_subscription_id"], "sub-1");
        assert_eq!(event["code"], "kwh");
        assert_eq!(event["timestamp"], "2022-04-29T13:59:51.123Z");
        assert_eq!(event["properties"], json!({"kwh": 12.5}));
        for null in [
            "lago_customer_id",
            "lago_subscription_id",
            "precise_total_amount_cents",
        ] {
            assert_eq!(event[null], Value::Null, "{null}");
        }
        assert_eq!(event["lago_id"].as_str().unwrap().len(), 36);
        assert!(event["created_at"].is_string());

        let again = json!({"transaction_id": "tx-1", "external_subscription_id": "sub-1",
                           "code": "kwh", "properties": {"kwh": 99}});
        let (status, body) = post(&lago, "events", json!({"event": again})).await;
        assert_eq!(status, 422);
        assert_eq!(
            body,
            json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                   "error_details": {"transaction_id": ["value_already_exist"]}})
        );
        assert_eq!(lago.handle().events()[0].properties, json!({"kwh": 12.5}));

        let other =
            json!({"transaction_id": "tx-1", "external_subscription_id": "sub-2", "code": "kwh"});
        assert_eq!(post(&lago, "events", json!({"event": other})).await.0, 200);
        assert_eq!(lago.handle().events_stored(), 2);
    }

    #[tokio::test]
    async fn invalid_events_name_their_fields() {
        let lago = spawn().await;
        let cases = [
            (
                json!({"external_subscription_id": "s", "code": "kwh"}),
                json!({"transaction_id": ["value_is_mandatory"]}),
            ),
            (
                json!({"transaction_id": "t", "code": ""}),
                json!({"code": ["value_is_mandatory"]}),
            ),
            (
                json!({"transaction_id": "t", "code": "kwh", "timestamp": "noon"}),
                json!({"timestamp": ["invalid_format"]}),
            ),
        ];
        for (sent, details) in cases {
            let (status, body) = post(&lago, "events", json!({"event": sent})).await;
            assert_eq!(status, 422);
            assert_eq!(body["error_details"], details);
        }
        let (status, body) = post(&lago, "events", json!({"events": []})).await;
        assert_eq!(status, 400);
        assert!(
            body["error"].as_str().unwrap().starts_with("BadRequest: "),
            "{body}"
        );
        assert_eq!(lago.handle().events_stored(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_stored_whole_or_not_at_all() {
        let lago = spawn().await;
        let (status, body) = post(&lago, "events/batch", json!({"events": batch(3)})).await;
        assert_eq!(status, 200);
        assert_eq!(body["events"].as_array().unwrap().len(), 3);

        let mut events: Vec<Value> = (10..20)
            .map(|index| event(&format!("tx-{index}")))
            .collect();
        events[3] = event("tx-1");
        events[7]["code"] = json!(null);
        events[9] = event("tx-15");
        let (status, body) = post(&lago, "events/batch", json!({"events": events})).await;
        assert_eq!(status, 422);
        assert_eq!(
            body["error_details"],
            json!({
                "3": {"transaction_id": ["value_already_exist"]},
                "7": {"code": ["value_is_mandatory"]},
                "9": {"transaction_id": ["value_already_exist"]},
            })
        );
        assert_eq!(lago.handle().events_stored(), 3);

        let (status, body) = post(&lago, "events/batch", json!({"events": []})).await;
        assert_eq!(
            (status, &body["error_details"]),
            (422, &json!({"events": ["no_events"]}))
        );
        let (status, body) = post(&lago, "events/batch", json!({"events": batch(101)})).await;
        assert_eq!(
            (status, &body["error_details"]),
            (422, &json!({"events": ["too_many_events"]}))
        );
        assert_eq!(lago.handle().events_stored(), 3);
        assert_eq!(lago.handle().event_posts(), 4);
    }

    #[tokio::test]
    async fn an_event_is_found_by_its_url_encoded_transaction_id() {
        let lago = spawn().await;
        post(&lago, "events", json!({"event": event("session 7/stop")})).await;
        let (status, body) = get(&lago, "events/session%207%2Fstop").await;
        assert_eq!(status, 200);
        assert_eq!(body["event"]["transaction_id"], "session 7/stop");
        let (status, body) = get(&lago, "events/nothing").await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            json!({"status": 404, "error": "Not Found", "code": "event_not_found"})
        );
    }

    #[tokio::test]
    async fn sums_read_numbers_and_numeric_text() {
        let lago = spawn().await;
        let mut events = batch(3);
        events[1]["properties"] = json!({"kwh": 2.25});
        events[2]["properties"] = json!({"other": 5});
        post(&lago, "events/batch", json!({"events": events})).await;
        assert_eq!(lago.handle().sum_property("kwh"), 3.75);
    }

    #[tokio::test]
    async fn subscriptions_are_listed_by_customer_and_status() {
        let lago = spawn().await;
        let handle = lago.handle();
        let now = ferry_core::time::now_ms();
        let day = 86_400_000;
        handle.add_customer("alice", "Alice");
        handle.add_customer("bob", "Bob");
        handle
            .add_subscription(
                "sub-old",
                "alice",
                "charging",
                now - 90 * day,
                Some(now - 30 * day),
            )
            .unwrap();
        handle
            .add_subscription("sub-now", "alice", "charging", now - 30 * day, None)
            .unwrap();
        handle
            .add_subscription("sub-next", "alice", "charging", now + day, None)
            .unwrap();
        handle
            .add_subscription("sub-bob", "bob", "charging", now - day, Some(now + day))
            .unwrap();
        let unknown = handle.add_subscription("sub-x", "nobody", "charging", now, None);
        assert_eq!(unknown, Err(lago::Error::UnknownCustomer("nobody".into())));

        let external_ids = |body: &Value| -> Vec<String> {
            let list = body["subscriptions"].as_array().unwrap();
            list.iter()
                .map(|s| s["external_id"].as_str().unwrap().to_owned())
                .collect()
        };
        let (status, body) = get(&lago, "subscriptions?external_customer_id=alice").await;
        assert_eq!(status, 200);
        assert_eq!(external_ids(&body), ["sub-now"]);
        assert_eq!(body["subscriptions"][0]["status"], "active");
        assert_eq!(body["subscriptions"][0]["terminated_at"], Value::Null);
        assert_eq!(
            body["meta"],
            json!({"current_page": 1, "next_page": null, "prev_page": null,
                   "total_pages": 1, "total_count": 1})
        );

        let both = "subscriptions?external_customer_id=alice&status[]=active&status[]=terminated";
        let (_, body) = get(&lago, both).await;
        assert_eq!(external_ids(&body), ["sub-now", "sub-old"]);
        assert_eq!(body["subscriptions"][1]["status"], "terminated");
        assert!(body["subscriptions"][1]["terminated_at"].is_string());

        let (_, body) = get(&lago, "customers/alice/subscriptions?status%5B%5D=pending").await;
        assert_eq!(external_ids(&body), ["sub-next"]);
        assert_eq!(body["subscriptions"][0]["started_at"], Value::Null);

        let (_, body) = get(&lago, "subscriptions?per_page=1&page=2").await;
        assert_eq!(external_ids(&body), ["sub-now"]);
        assert_eq!(
            body["meta"],
            json!({"current_page": 2, "next_page": null, "prev_page": 1,
                   "total_pages": 2, "total_count": 2})
        );
        let (_, body) = get(&lago, "subscriptions?external_customer_id=bob").await;
        assert_eq!(body["subscriptions"][0]["status"], "active");
        assert!(body["subscriptions"][0]["ending_at"].is_string());

        handle
            .terminate_subscription("sub-now", now - 1000)
            .unwrap();
        let (_, body) = get(&lago, "subscriptions?external_customer_id=alice").await;
        assert_eq!(external_ids(&body), Vec::<String>::new());
    }

    #[tokio::test]
    async fn customers_are_found_by_external_id() {
        let lago = spawn().await;
        lago.handle().add_customer("alice", "Alice");
        let (status, body) = get(&lago, "customers/alice").await;
        assert_eq!(status, 200);
        assert_eq!(body["customer"]["external_id"], "alice");
        assert_eq!(body["customer"]["name"], "Alice");
        assert!(body["customer"]["lago_id"].is_string());
        for path in ["customers/bob", "customers/bob/subscriptions"] {
            let (status, body) = get(&lago, path).await;
            assert_eq!(status, 404);
            assert_eq!(body["code"], "customer_not_found");
        }
    }

    #[tokio::test]
    async fn an_armed_failure_answers_500_and_stores_nothing() {
        let lago = spawn().await;
        lago.handle().fail_next(1);
        let (status, body) = post(&lago, "events/batch", json!({"events": batch(2)})).await;
        assert_eq!(
            (status, body),
            (
                500,
                json!({"status": 500, "error": "Internal Server Error"})
            )
        );
        assert_eq!(lago.handle().events_stored(), 0);
        assert_eq!(
            post(&lago, "events/batch", json!({"events": batch(2)}))
                .await
                .0,
            200
        );
        assert_eq!(lago.handle().events_stored(), 2);
    }

    #[tokio::test]
    async fn a_stalled_post_outlasts_the_clients_timeout() {
        let lago = spawn().await;
        lago.handle().stall_next(1, Duration::from_secs(30));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let error = send_post(&client, &lago, "events", json!({"event": event("t-1")}))
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        let next = send_post(&client, &lago, "events", json!({"event": event("t-2")})).await;
        assert_eq!(next.unwrap().status(), 200);
        assert_eq!(lago.handle().event_posts(), 2);
    }

    #[tokio::test]
    async fn a_dropped_connection_comes_after_the_events_are_stored() {
        let lago = spawn().await;
        lago.handle().drop_next(1);
        let client = client();
        let sent = send_post(&client, &lago, "events/batch", json!({"events": batch(5)})).await;
        let error = sent.unwrap_err();
        assert!(error.status().is_none() && !error.is_timeout(), "{error:?}");
        assert!(error.is_request(), "{error:?}");
        assert_eq!(lago.handle().events_stored(), 5);

        // The client retries; the batch is now a duplicate, and nothing is stored twice.
        let (status, body) = post(&lago, "events/batch", json!({"events": batch(5)})).await;
        assert_eq!(status, 422);
        assert_eq!(
            body["error_details"]["0"],
            json!({"transaction_id": ["value_already_exist"]})
        );
        assert_eq!(lago.handle().events_stored(), 5);
    }

    #[tokio::test]
    async fn a_held_answer_comes_after_the_events_are_stored() {
        let lago = spawn().await;
        lago.handle().hold_answer_next(1, Duration::from_secs(30));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let sent = send_post(&client, &lago, "events/batch", json!({"events": batch(5)})).await;
        let error = sent.unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(
            lago.handle().events_stored(),
            5,
            "applied before the answer"
        );

        // Only one post is held: the client's resend is answered at once, as duplicates.
        let (status, body) = post(&lago, "events/batch", json!({"events": batch(5)})).await;
        assert_eq!(status, 422);
        assert_eq!(
            body["error_details"]["4"],
            json!({"transaction_id": ["value_already_exist"]})
        );
        assert_eq!(lago.handle().events_stored(), 5);
        assert_eq!(lago.handle().event_posts(), 2);
    }

    #[tokio::test]
    async fn a_hold_is_used_up_by_the_first_post_that_is_handled() {
        let lago = spawn().await;
        lago.handle().rate_limit_next(1, 60);
        lago.handle().hold_answer_next(1, Duration::from_secs(30));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let limited = send_post(&client, &lago, "events", json!({"event": event("t-1")})).await;
        assert_eq!(limited.unwrap().status(), 429, "answered at once, not held");
        let held = send_post(&client, &lago, "events", json!({"event": event("t-2")})).await;
        assert!(held.unwrap_err().is_timeout());
        let answered = send_post(&client, &lago, "events", json!({"event": event("t-3")})).await;
        assert_eq!(answered.unwrap().status(), 200);
        let stored: Vec<String> = (lago.handle().events().into_iter())
            .map(|e| e.transaction_id)
            .collect();
        assert_eq!(stored, ["t-2", "t-3"]);
    }

    #[tokio::test]
    async fn a_held_answer_is_armed_over_http_and_the_client_hears_it_late() {
        let lago = spawn().await;
        let client = client();
        let control = format!("{}/_emulator/faults", lago.url());
        let armed = client
            .post(&control)
            .json(&json!({"hold_answer_next": 1, "hold_answer_ms": 300}))
            .send();
        assert_eq!(armed.await.unwrap().status(), 204);
        let (_, report) = json_of(client.get(&control).send().await.unwrap()).await;
        assert_eq!(
            (
                report["hold_answer_next"].as_u64(),
                report["hold_answer_ms"].as_u64()
            ),
            (Some(1), Some(300))
        );

        let since = std::time::Instant::now();
        let (status, body) = post(&lago, "events", json!({"event": event("t-1")})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["event"]["transaction_id"], "t-1");
        assert!(
            since.elapsed() >= Duration::from_millis(300),
            "held {:?}",
            since.elapsed()
        );
        let (_, report) = json_of(client.get(&control).send().await.unwrap()).await;
        assert_eq!(report["hold_answer_next"], 0);
        assert_eq!(report["events_stored"], 1);
    }

    #[tokio::test]
    async fn a_rate_limited_post_says_when_to_retry() {
        let lago = spawn().await;
        lago.handle().rate_limit_next(1, 7);
        let response = send_post(&client(), &lago, "events", json!({"event": event("t")}))
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("retry-after"), "7");
        assert_eq!(header("x-ratelimit-remaining"), "0");
        assert_eq!(header("x-ratelimit-reset"), "7");
        assert!(header("x-ratelimit-limit").parse::<u32>().is_ok());
        let (_, body) = json_of(response).await;
        assert_eq!(
            body,
            json!({"status": 429, "error": "Too Many Requests", "code": "too_many_requests"})
        );
        assert_eq!(lago.handle().events_stored(), 0);
    }

    #[tokio::test]
    async fn a_rejected_transaction_fails_its_whole_batch() {
        let lago = spawn().await;
        lago.handle()
            .reject_transaction("tx-2", "properties", "invalid_value");
        let (status, body) = post(&lago, "events/batch", json!({"events": batch(4)})).await;
        assert_eq!(status, 422);
        assert_eq!(
            body["error_details"],
            json!({"2": {"properties": ["invalid_value"]}})
        );
        let (status, _) = post(&lago, "events/batch", json!({"events": batch(4)})).await;
        assert_eq!(status, 422, "the rejection is permanent");
        assert_eq!(lago.handle().events_stored(), 0);

        lago.handle().clear_faults();
        assert_eq!(
            post(&lago, "events/batch", json!({"events": batch(4)}))
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn faults_are_armed_over_http() {
        let lago = spawn().await;
        let client = client();
        let control = |path: &str| format!("{}/_emulator/{path}", lago.url());
        let armed = client
            .post(control("faults"))
            .json(&json!({"drop_next": 1}))
            .send();
        assert_eq!(armed.await.unwrap().status(), 204);
        let rejected = json!({"transaction_id": "tx-0", "field": "code", "code": "invalid"});
        let armed = client.post(control("rejections")).json(&rejected).send();
        assert_eq!(armed.await.unwrap().status(), 204);

        let (_, report) = json_of(client.get(control("faults")).send().await.unwrap()).await;
        assert_eq!(report["drop_next"], 1);
        assert_eq!(report["rejections"][0]["transaction_id"], "tx-0");
        let sent = send_post(&client, &lago, "events", json!({"event": event("tx-0")})).await;
        assert!(sent.is_err(), "the connection is dropped after a 422");
        let (_, report) = json_of(client.get(control("faults")).send().await.unwrap()).await;
        assert_eq!(
            (report["drop_next"].as_u64(), report["event_posts"].as_u64()),
            (Some(0), Some(1))
        );
        assert_eq!(report["events_stored"], 0);
    }

    #[tokio::test]
    async fn the_emulator_routes_add_subscriptions() {
        let lago = spawn().await;
        let client = client();
        let control = |path: &str| format!("{}/_emulator/{path}", lago.url());
        let customer = json!({"external_id": "alice", "name": "Alice"});
        client
            .post(control("customers"))
            .json(&customer)
            .send()
            .await
            .unwrap();
        let subscription = json!({"external_id": "sub-a", "external_customer_id": "alice",
                                  "plan_code": "charging", "started_at": "2026-01-01T00:00:00Z"});
        let added = client
            .post(control("subscriptions"))
            .json(&subscription)
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 204);
        let again = client
            .post(control("subscriptions"))
            .json(&subscription)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 409);
        let (_, body) = get(&lago, "subscriptions?external_customer_id=alice").await;
        assert_eq!(
            body["subscriptions"][0]["started_at"],
            "2026-01-01T00:00:00Z"
        );

        post(&lago, "events", json!({"event": event("tx-9")})).await;
        let sum = client
            .get(control("events/sum?property=kwh"))
            .send()
            .await
            .unwrap();
        assert_eq!(json_of(sum).await.1, json!({"property": "kwh", "sum": 1.5}));
        let events = client.get(control("events")).send().await.unwrap();
        assert_eq!(
            json_of(events).await.1["events"][0]["transaction_id"],
            "tx-9"
        );
    }
}

mod demo {
    use ferry_emulators::{demo, lago, steve};

    use super::json_of;

    #[tokio::test]
    async fn the_demo_has_one_session_in_progress_and_a_customer_without_a_subscription() {
        let steve = steve::spawn(Default::default()).await.unwrap();
        let lago = lago::spawn(Default::default()).await.unwrap();
        let demo = demo::seed(steve.handle(), steve.url(), lago.handle(), lago.url()).unwrap();
        let printed = demo.to_string();
        assert!(
            printed.contains(steve.url()) && printed.contains("lago-api-key"),
            "{printed}"
        );

        let client = reqwest::Client::new();
        let active = client
            .get(format!("{}/api/v1/transactions?type=ACTIVE", steve.url()))
            .header("STEVE-API-KEY", "steve-api-key")
            .send();
        let (_, active) = json_of(active.await.unwrap()).await;
        assert_eq!(active.as_array().unwrap().len(), 1);
        let carol = client
            .get(format!(
                "{}/api/v1/subscriptions?external_customer_id=CAROL",
                lago.url()
            ))
            .bearer_auth("lago-api-key")
            .send();
        let (_, carol) = json_of(carol.await.unwrap()).await;
        assert_eq!(carol["meta"]["total_count"], 0);
        let seeded_twice = demo::seed(steve.handle(), steve.url(), lago.handle(), lago.url());
        assert!(seeded_twice.is_err());
    }
}
