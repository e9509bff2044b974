//! The StEvE and Lago clients against small HTTP servers on real sockets: what each client
//! sends, and how it reads every kind of answer, faults included.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const KEY: &str = "sk-test-5f2a9c41e7";

/// One request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// The query, percent-decoded, in order.
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A server on 127.0.0.1:0 that records every request and answers with `respond`.
struct TestServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start<F>(respond: F) -> TestServer
    where
        F: Fn(&Seen) -> Response + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let record = seen.clone();
        let app = Router::new().fallback(move |request: Request| {
            let record = record.clone();
            let respond = respond.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let query = match parts.uri.query() {
                    Some(query) => reqwest::Url::parse(&format!("http://x/?{query}"))
                        .unwrap()
                        .query_pairs()
                        .map(|(n, v)| (n.into_owned(), v.into_owned()))
                        .collect(),
                    None => Vec::new(),
                };
                let request = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query,
                    headers: parts.headers,
                    body,
                };
                record.lock().unwrap().push(request.clone());
                respond(&request)
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer { url, seen }
    }

    /// A server whose every answer is the same.
    async fn answering(status: u16, headers: &[(&'static str, &'static str)], body: Value) -> Self {
        let headers = headers.to_vec();
        TestServer::start(move |_| json_answer(status, &headers, &body)).await
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn only_request(&self) -> Seen {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests.into_iter().next().unwrap()
    }
}

fn json_answer(status: u16, headers: &[(&'static str, &'static str)], body: &Value) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    for (name, value) in headers {
        response.headers_mut().insert(*name, value.parse().unwrap());
    }
    response
}

fn text_answer(status: u16, content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", content_type)],
        body,
    )
        .into_response()
}

/// A server that holds every request well past any client timeout the tests use.
async fn stalling_server() -> String {
    let app = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        StatusCode::OK
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A server that reads each request and closes the connection without a word.
async fn hanging_up_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // Read until the end of the headers, so the request has surely arrived.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            drop(socket);
        }
    });
    url
}

/// A URL where nothing listens.
async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Every way an error can be shown leaves the key out.
fn assert_key_hidden(error: &dyn std::error::Error) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(KEY), "the key shows in: {shown}");
}

mod steve {
    use super::*;
    use ferry_billing::steve::{
        OcppTag, SteveClient, SteveConfig, SteveError, StopEventActor, TransactionKind,
        TransactionQuery, parse_meter_mwh,
    };
    use jiff::Timestamp;
    use jiff::tz::TimeZone;

    fn client(url: &str) -> SteveClient {
        SteveClient::new(SteveConfig::new(url, KEY)).unwrap()
    }

    fn berlin_client(url: &str) -> SteveClient {
        let mut config = SteveConfig::new(url, KEY);
        config.time_zone = TimeZone::get("Europe/Berlin").unwrap();
        SteveClient::new(config).unwrap()
    }

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    async fn error_for(server: &TestServer) -> SteveError {
        let error = client(&server.url)
            .transactions(&TransactionQuery::all())
            .await
            .unwrap_err();
        assert_key_hidden(&error);
        error
    }

    #[tokio::test]
    async fn the_key_goes_in_its_header_and_the_window_in_steves_local_time() {
        let server = TestServer::answering(200, &[], json!([])).await;
        let query = TransactionQuery::all()
            // Winter time (UTC+1) to summer time (UTC+2): each bound keeps its own offset.
            .started_between(
                "2026-03-28T23:30:00.400Z".parse().unwrap(),
                "2026-03-29T10:15:30.001Z".parse().unwrap(),
            )
            .transaction_pk(42)
            .ocpp_id_tag("TAG 1/ä")
            .charge_box_id("CB-7");
        let found = berlin_client(&server.url)
            .transactions(&query)
            .await
            .unwrap();
        assert!(found.is_empty());

        let request = server.only_request();
        assert_eq!(request.method, "GET");
        // A URL without a path means StEvE's default context path.
        assert_eq!(request.path, "/steve/api/v1/transactions");
        assert_eq!(request.header("steve-api-key"), Some(KEY));
        assert_eq!(request.header("authorization"), None);
        assert_eq!(
            request.query,
            [
                ("type", "ALL"),
                ("periodType", "FROM_TO"),
                ("from", "2026-03-29T00:30:00"),
                ("to", "2026-03-29T12:15:31"),
                ("transactionPk", "42"),
                ("ocppIdTag", "TAG 1/ä"),
                ("chargeBoxId", "CB-7"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[tokio::test]
    async fn a_window_in_the_hour_repeated_in_autumn_is_widened_not_narrowed() {
        let server = TestServer::answering(200, &[], json!([])).await;
        // Berlin repeats 02:00-03:00 on 2026-10-25; 01:30Z is the second 02:30.
        let query = TransactionQuery::all()
            .started_between_ms(ms("2026-10-24T22:00:00Z"), ms("2026-10-25T01:30:00Z"));
        berlin_client(&server.url)
            .transactions(&query)
            .await
            .unwrap();
        let request = server.only_request();
        assert_eq!(request.query_value("from"), Some("2026-10-25T00:00:00"));
        assert_eq!(request.query_value("to"), Some("2026-10-25T03:30:00"));
    }

    #[tokio::test]
    async fn active_sessions_and_a_configured_header_and_context_path() {
        let server = TestServer::answering(200, &[], json!([])).await;
        let mut config = SteveConfig::new(format!("{}/ocpp/steve/", server.url), KEY);
        config.header_name = "X-Api-Key".to_string();
        let client = SteveClient::new(config).unwrap();
        let query = TransactionQuery::active();
        assert_eq!(query.kind, TransactionKind::Active);
        client.transactions(&query).await.unwrap();
        let request = server.only_request();
        assert_eq!(request.path, "/ocpp/steve/api/v1/transactions");
        assert_eq!(request.header("x-api-key"), Some(KEY));
        assert_eq!(request.header("steve-api-key"), None);
        assert_eq!(request.query_value("type"), Some("ACTIVE"));
        assert_eq!(request.query_value("periodType"), Some("ALL"));
        assert_eq!(request.query_value("from"), None);
    }

    #[tokio::test]
    async fn transactions_are_read_leniently_and_a_malformed_one_stands_alone() {
        let server = TestServer::answering(
            200,
            &[],
            json!([
                {
                    "id": 12, "connectorId": 2, "chargeBoxPk": 3, "ocppTagPk": 4,
                    "chargeBoxId": "CB-1", "ocppIdTag": "TAG-1",
                    "startTimestamp": "2026-12-06T01:02:03.456Z", "startValue": "1000.5",
                    "stopTimestamp": "2026-12-06T03:00:00+01:00", "stopValue": "13345.678",
                    "stopReason": "Local", "stopEventActor": "station",
                    "someFieldOfALaterVersion": {"x": 1}
                },
                {
                    "id": 11, "connectorId": 1, "chargeBoxPk": 3, "ocppTagPk": 4,
                    "chargeBoxId": "CB-1", "ocppIdTag": "TAG-1",
                    "startTimestamp": "the day before", "startValue": "1",
                    "stopTimestamp": "2026-12-05T10:00:00Z", "stopValue": "2"
                },
                {
                    "id": 10, "connectorId": 1, "chargeBoxPk": 3, "ocppTagPk": 4,
                    "chargeBoxId": "CB-1", "ocppIdTag": "TAG-1",
                    "startTimestamp": "2026-12-05T08:00:00", "startValue": null,
                    "stopEventActor": "manual"
                },
                {
                    "id": 9, "connectorId": 1, "chargeBoxId": "CB-2", "ocppIdTag": "TAG-2",
                    "startTimestamp": "2026-07-05T08:00:00", "startValue": "5",
                    "stopTimestamp": "2026-07-05T09:00:00", "stopValue": "4e3"
                }
            ]),
        )
        .await;
        let found = berlin_client(&server.url)
            .transactions(&TransactionQuery::all())
            .await
            .unwrap();
        assert_eq!(
            found.iter().map(|t| t.id).collect::<Vec<_>>(),
            [12, 11, 10, 9]
        );

        let finished = &found[0];
        assert_eq!(finished.defect(), None);
        assert_eq!(finished.connector_id, Some(2));
        assert_eq!(finished.charge_box_pk, Some(3));
        assert_eq!(finished.ocpp_tag_pk, Some(4));
        assert_eq!(finished.charge_box_id.as_deref(), Some("CB-1"));
        assert_eq!(finished.ocpp_id_tag.as_deref(), Some("TAG-1"));
        assert_eq!(finished.start_ms(), Some(ms("2026-12-06T01:02:03.456Z")));
        assert_eq!(finished.stop_ms(), Some(ms("2026-12-06T02:00:00Z")));
        assert_eq!(
            finished.start.as_ref().unwrap().text,
            "2026-12-06T01:02:03.456Z"
        );
        assert_eq!(finished.start_value.as_deref(), Some("1000.5"));
        assert_eq!(finished.stop_value.as_deref(), Some("13345.678"));
        assert_eq!(
            parse_meter_mwh(finished.stop_value.as_deref().unwrap()),
            Some(13_345_678)
        );
        assert_eq!(finished.stop_reason.as_deref(), Some("Local"));
        assert_eq!(finished.stop_event_actor, Some(StopEventActor::Station));

        let malformed = &found[1];
        assert_eq!(malformed.start_ms(), None);
        assert_eq!(malformed.stop_ms(), Some(ms("2026-12-05T10:00:00Z")));
        let reason = malformed.defect().unwrap();
        assert!(reason.contains("the day before"), "{reason}");

        // No zone: read in StEvE's zone (Berlin, UTC+1 in December). Missing = null.
        let running = &found[2];
        assert_eq!(running.defect(), None);
        assert_eq!(running.start_ms(), Some(ms("2026-12-05T07:00:00Z")));
        assert_eq!(running.start_value, None);
        assert!(!running.is_stopped());
        assert_eq!(running.stop_value, None);
        assert_eq!(running.stop_reason, None);
        assert_eq!(running.stop_event_actor, Some(StopEventActor::Manual));

        // Summer: UTC+2. The meter text is kept as sent, even when it is not a plain decimal.
        let summer = &found[3];
        assert_eq!(summer.start_ms(), Some(ms("2026-07-05T06:00:00Z")));
        assert_eq!(summer.charge_box_pk, None);
        assert_eq!(summer.stop_value.as_deref(), Some("4e3"));
        assert_eq!(parse_meter_mwh("4e3"), None);
    }

    #[tokio::test]
    async fn ocpp_tags_are_listed_with_their_parents() {
        let server = TestServer::answering(
            200,
            &[],
            json!([
                {"ocppTagPk": 1, "idTag": "FLEET", "parentIdTag": null, "blocked": false,
                 "inTransaction": false, "activeTransactionCount": 0},
                {"ocppTagPk": 2, "idTag": "CARD-1", "parentIdTag": "FLEET",
                 "parentOcppTagPk": 1, "note": "blue card"}
            ]),
        )
        .await;
        let tags = client(&server.url).ocpp_tags().await.unwrap();
        assert_eq!(
            tags,
            [
                OcppTag {
                    ocpp_tag_pk: 1,
                    id_tag: "FLEET".into(),
                    parent_id_tag: None,
                    parent_ocpp_tag_pk: None,
                },
                OcppTag {
                    ocpp_tag_pk: 2,
                    id_tag: "CARD-1".into(),
                    parent_id_tag: Some("FLEET".into()),
                    parent_ocpp_tag_pk: Some(1),
                },
            ]
        );
        let request = server.only_request();
        assert_eq!(request.path, "/steve/api/v1/ocppTags");
        assert_eq!(request.header("steve-api-key"), Some(KEY));
    }

    #[tokio::test]
    async fn a_refused_key_is_unauthorized() {
        let server = TestServer::answering(
            401,
            &[],
            json!({"timestamp": "2026-12-06T01:02:03.456Z", "status": 401,
                   "error": "Unauthorized", "message": "Full authentication is required",
                   "path": "/steve/api/v1/transactions"}),
        )
        .await;
        let error = error_for(&server).await;
        assert!(
            matches!(error, SteveError::Unauthorized { .. }),
            "{error:?}"
        );
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(
            text.contains("StEvE") && text.contains("/steve/api/v1/transactions"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_bad_request_surfaces_steves_message() {
        let server = TestServer::answering(
            400,
            &[],
            json!({"timestamp": "2026-12-06T01:02:03.456Z", "status": 400,
                   "error": "Bad Request", "message": "'to' must be after 'from'",
                   "path": "/steve/api/v1/transactions"}),
        )
        .await;
        let error = error_for(&server).await;
        let SteveError::BadRequest { message, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(message, "'to' must be after 'from'");
        assert!(!error.is_transient());
        assert!(error.to_string().contains("'to' must be after 'from'"));
    }

    #[tokio::test]
    async fn server_errors_are_transient() {
        let server = TestServer::answering(
            500,
            &[],
            json!({"status": 500, "error": "Internal Server Error", "message": "db down"}),
        )
        .await;
        let error = error_for(&server).await;
        assert!(
            matches!(&error, SteveError::Server { status: 500, message, .. } if message == "db down"),
            "{error:?}"
        );
        assert!(error.is_transient());

        let server = TestServer::start(|_| text_answer(503, "text/html", "<h1>down</h1>")).await;
        let error = error_for(&server).await;
        assert!(
            matches!(error, SteveError::Server { status: 503, .. }),
            "{error:?}"
        );
        assert!(error.is_transient());

        let server = TestServer::answering(429, &[], json!({})).await;
        assert!(error_for(&server).await.is_transient());
    }

    #[tokio::test]
    async fn a_wrong_context_path_says_so() {
        let server = TestServer::start(|_| {
            let mut response = text_answer(302, "text/plain", "");
            response
                .headers_mut()
                .insert("location", "/steve/manager/signin".parse().unwrap());
            response
        })
        .await;
        let error = error_for(&server).await;
        assert!(
            matches!(error, SteveError::Server { status: 302, .. }),
            "{error:?}"
        );
        assert!(!error.is_transient());
        assert!(error.to_string().contains("context path"), "{error}");

        let server = TestServer::start(|_| text_answer(404, "text/html", "")).await;
        let error = error_for(&server).await;
        assert!(
            matches!(error, SteveError::Server { status: 404, .. }),
            "{error:?}"
        );
        assert!(!error.is_transient());
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_json_array_is_a_decode_error() {
        let server =
            TestServer::start(|_| text_answer(200, "text/html", "<html>login</html>")).await;
        let error = error_for(&server).await;
        assert!(matches!(error, SteveError::Decode { .. }), "{error:?}");
        assert!(!error.is_transient());

        let server = TestServer::answering(200, &[], json!({"transactions": []})).await;
        assert!(matches!(
            error_for(&server).await,
            SteveError::Decode { .. }
        ));
    }

    #[tokio::test]
    async fn a_stalled_server_times_out() {
        let url = stalling_server().await;
        let mut config = SteveConfig::new(url, KEY);
        config.timeout = Duration::from_millis(300);
        let error = SteveClient::new(config)
            .unwrap()
            .transactions(&TransactionQuery::all())
            .await
            .unwrap_err();
        assert!(matches!(error, SteveError::Timeout { .. }), "{error:?}");
        assert!(error.is_transient());
        assert_key_hidden(&error);
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_or_refused_is_a_connect_error() {
        for url in [hanging_up_server().await, refused_url().await] {
            let error = client(&url)
                .transactions(&TransactionQuery::all())
                .await
                .unwrap_err();
            assert!(matches!(error, SteveError::Connect { .. }), "{error:?}");
            assert!(error.is_transient());
            assert_key_hidden(&error);
        }
    }
}

mod lago {
    use super::*;
    use ferry_billing::lago::{
        BatchOutcome, Event, EventOutcome, EventVerdict, LagoClient, LagoConfig, LagoError,
    };
    use serde_json::Map;

    fn client(url: &str) -> LagoClient {
        LagoClient::new(LagoConfig::new(url, KEY)).unwrap()
    }

    fn event(n: usize) -> Event {
        let mut properties = Map::new();
        properties.insert("energy_wh".into(), json!("1234.5"));
        Event {
            transaction_id: format!("steve-{n}"),
            external_subscription_id: "sub-1".into(),
            code: "charging_energy".into(),
            timestamp_ms: 1_651_240_791_123 + n as i64,
            properties,
        }
    }

    fn events(count: usize) -> Vec<Event> {
        (0..count).map(event).collect()
    }

    fn validation_errors(details: Value) -> Value {
        json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
               "error_details": details})
    }

    async fn batch_error(server: &TestServer) -> LagoError {
        let error = client(&server.url)
            .post_batch(&events(2))
            .await
            .unwrap_err();
        assert_key_hidden(&error);
        error
    }

    #[tokio::test]
    async fn a_batch_is_posted_with_the_bearer_key_and_accepted_whole() {
        let server = TestServer::answering(200, &[], json!({"events": []})).await;
        // A base URL that already names the API is not extended again.
        let client = client(&format!("{}/api/v1/", server.url));
        let outcome = client.post_batch(&events(2)).await.unwrap();
        assert_eq!(outcome, BatchOutcome::Accepted);

        let request = server.only_request();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/api/v1/events/batch");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.json(),
            json!({"events": [
                {"transaction_id": "steve-0", "external_subscription_id": "sub-1",
                 "code": "charging_energy", "timestamp": "1651240791.123",
                 "properties": {"energy_wh": "1234.5"}},
                {"transaction_id": "steve-1", "external_subscription_id": "sub-1",
                 "code": "charging_energy", "timestamp": "1651240791.124",
                 "properties": {"energy_wh": "1234.5"}},
            ]})
        );
    }

    #[tokio::test]
    async fn a_refused_batch_reports_each_event() {
        let server = TestServer::answering(
            422,
            &[],
            validation_errors(json!({
                "1": {"transaction_id": ["value_already_exist"]},
                "3": {"properties": ["invalid_value"]},
                "4": {"transaction_id": ["value_already_exist"], "code": ["value_is_mandatory"]},
            })),
        )
        .await;
        let outcome = client(&server.url).post_batch(&events(6)).await.unwrap();
        let BatchOutcome::RolledBack(verdicts) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(verdicts.len(), 6);
        assert_eq!(verdicts[0], EventVerdict::NotApplied);
        assert_eq!(verdicts[1], EventVerdict::AlreadyExists);
        assert_eq!(verdicts[2], EventVerdict::NotApplied);
        assert_eq!(
            verdicts[3],
            EventVerdict::Invalid("properties: invalid_value".into())
        );
        let EventVerdict::Invalid(text) = &verdicts[4] else {
            panic!("{:?}", verdicts[4]);
        };
        assert!(text.contains("value_is_mandatory") && text.contains("value_already_exist"));
        assert_eq!(verdicts[5], EventVerdict::NotApplied);
        assert_eq!(
            server.only_request().json()["events"]
                .as_array()
                .unwrap()
                .len(),
            6
        );
    }

    #[tokio::test]
    async fn a_refusal_of_the_batch_as_a_whole_is_an_error() {
        let server = TestServer::answering(
            422,
            &[],
            validation_errors(json!({"events": ["too_many_events"]})),
        )
        .await;
        let error = batch_error(&server).await;
        let LagoError::Rejected {
            status: 422,
            code,
            message,
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(code.as_deref(), Some("validation_errors"));
        assert!(message.contains("too_many_events"), "{message}");
        assert!(!error.is_transient());
        assert!(!error.is_ambiguous());
    }

    #[tokio::test]
    async fn more_than_a_hundred_events_are_not_sent() {
        let server = TestServer::answering(200, &[], json!({"events": []})).await;
        let client = client(&server.url);
        let error = client.post_batch(&events(101)).await.unwrap_err();
        assert!(
            matches!(error, LagoError::BatchTooLarge { count: 101 }),
            "{error:?}"
        );
        assert_eq!(
            client.post_batch(&[]).await.unwrap(),
            BatchOutcome::Accepted
        );
        assert!(server.requests().is_empty());
        assert_eq!(
            client.post_batch(&events(100)).await.unwrap(),
            BatchOutcome::Accepted
        );
    }

    #[tokio::test]
    async fn a_single_event_is_wrapped_and_its_refusals_read() {
        let server = TestServer::answering(200, &[], json!({"event": {}})).await;
        let outcome = client(&server.url).post_event(&event(7)).await.unwrap();
        assert_eq!(outcome, EventOutcome::Accepted);
        let request = server.only_request();
        assert_eq!(request.path, "/api/v1/events");
        assert_eq!(
            request.json(),
            json!({"event": {"transaction_id": "steve-7", "external_subscription_id": "sub-1",
                             "code": "charging_energy", "timestamp": "1651240791.130",
                             "properties": {"energy_wh": "1234.5"}}})
        );

        let server = TestServer::answering(
            422,
            &[],
            validation_errors(json!({"transaction_id": ["value_already_exist"]})),
        )
        .await;
        let outcome = client(&server.url).post_event(&event(7)).await.unwrap();
        assert_eq!(outcome, EventOutcome::AlreadyExists);

        let server = TestServer::answering(
            422,
            &[],
            validation_errors(json!({"code": ["does_not_exist"]})),
        )
        .await;
        let outcome = client(&server.url).post_event(&event(7)).await.unwrap();
        assert_eq!(
            outcome,
            EventOutcome::Invalid("code: does_not_exist".into())
        );
    }

    #[tokio::test]
    async fn an_event_is_looked_up_by_its_encoded_id() {
        let server = TestServer::start(|request| {
            if request.path == "/api/v1/events/steve%2F42%20a" {
                json_answer(
                    200,
                    &[],
                    &json!({"event": {
                        "lago_id": "0a1b", "transaction_id": "steve/42 a",
                        "lago_customer_id": null, "code": "charging_energy",
                        "timestamp": "2022-04-29T13:59:51.123Z",
                        "external_subscription_id": "sub-1",
                        "properties": {"energy_wh": "1234.5"}, "created_at": "2022-04-29T14:00:00Z",
                    }}),
                )
            } else {
                json_answer(
                    404,
                    &[],
                    &json!({"status": 404, "error": "Not Found", "code": "event_not_found"}),
                )
            }
        })
        .await;
        let client = client(&server.url);
        let stored = client.event("steve/42 a").await.unwrap().unwrap();
        assert_eq!(stored.transaction_id, "steve/42 a");
        assert_eq!(stored.lago_id.as_deref(), Some("0a1b"));
        assert_eq!(stored.external_subscription_id.as_deref(), Some("sub-1"));
        assert_eq!(stored.code, "charging_energy");
        assert_eq!(stored.timestamp_ms, 1_651_240_791_123);
        assert_eq!(stored.properties["energy_wh"], "1234.5");
        assert_eq!(client.event("steve-1").await.unwrap(), None);
        let requests = server.requests();
        assert_eq!(requests[0].method, "GET");
        assert_eq!(
            requests[0].header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );

        // A 404 that is not Lago's JSON means the URL is wrong, not that the event is absent.
        let server = TestServer::start(|_| text_answer(404, "text/html", "<h1>404</h1>")).await;
        let error = super::lago::client(&server.url)
            .event("x")
            .await
            .unwrap_err();
        assert!(
            matches!(error, LagoError::Rejected { status: 404, .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn subscriptions_are_followed_over_every_page() {
        let server = TestServer::start(|request| {
            let page: u64 = request.query_value("page").unwrap().parse().unwrap();
            let subscription = |n: u64, terminated: Option<&str>| {
                json!({"external_id": format!("sub-{n}"), "external_customer_id": "cust 1",
                       "lago_id": "x", "plan_code": "p",
                       "status": if terminated.is_some() { "terminated" } else { "active" },
                       "started_at": "2026-01-01T00:00:00Z", "terminated_at": terminated})
            };
            let (subscriptions, next) = match page {
                1 => (
                    vec![
                        subscription(1, None),
                        subscription(2, Some("2026-02-01T00:00:00Z")),
                    ],
                    Some(2),
                ),
                2 => (vec![subscription(3, None)], Some(3)),
                _ => (
                    vec![
                        json!({"external_id": "sub-4", "external_customer_id": "cust 1",
                                  "status": "active", "started_at": null}),
                    ],
                    None,
                ),
            };
            json_answer(
                200,
                &[],
                &json!({"subscriptions": subscriptions,
                        "meta": {"current_page": page, "next_page": next,
                                 "prev_page": if page > 1 { Some(page - 1) } else { None },
                                 "total_pages": 3, "total_count": 4}}),
            )
        })
        .await;
        let subscriptions = client(&server.url).subscriptions("cust 1").await.unwrap();
        assert_eq!(
            subscriptions
                .iter()
                .map(|s| s.external_id.as_str())
                .collect::<Vec<_>>(),
            ["sub-1", "sub-2", "sub-3", "sub-4"]
        );
        assert_eq!(subscriptions[0].started_at_ms, Some(1_767_225_600_000));
        assert_eq!(subscriptions[0].terminated_at_ms, None);
        assert_eq!(subscriptions[1].status, "terminated");
        assert_eq!(subscriptions[1].terminated_at_ms, Some(1_769_904_000_000));
        assert_eq!(subscriptions[3].started_at_ms, None);

        let requests = server.requests();
        assert_eq!(requests.len(), 3);
        for (n, request) in requests.iter().enumerate() {
            assert_eq!(request.path, "/api/v1/subscriptions");
            assert_eq!(
                request.query,
                [
                    ("external_customer_id", "cust 1"),
                    ("status[]", "active"),
                    ("status[]", "terminated"),
                    ("per_page", "100"),
                    ("page", &(n + 1).to_string()),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
            );
        }
    }

    #[tokio::test]
    async fn pagination_that_goes_backwards_is_a_decode_error() {
        let server = TestServer::answering(
            200,
            &[],
            json!({"subscriptions": [], "meta": {"current_page": 1, "next_page": 1,
                                                 "total_pages": 1, "total_count": 0}}),
        )
        .await;
        let error = client(&server.url).subscriptions("c").await.unwrap_err();
        assert!(matches!(error, LagoError::Decode { .. }), "{error:?}");
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_key_is_unauthorized() {
        let server =
            TestServer::answering(401, &[], json!({"status": 401, "error": "Unauthorized"})).await;
        let error = batch_error(&server).await;
        assert!(matches!(error, LagoError::Unauthorized { .. }), "{error:?}");
        assert!(!error.is_transient());
        assert!(!error.is_ambiguous());
        let text = error.to_string();
        assert!(
            text.contains("Lago") && text.contains("/api/v1/events/batch"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn rate_limits_say_how_long_to_wait() {
        let cases: [(&[(&'static str, &'static str)], u64); 4] = [
            (&[("retry-after", "7"), ("x-ratelimit-reset", "3")], 7),
            (
                &[("x-ratelimit-limit", "10"), ("x-ratelimit-reset", "3")],
                3,
            ),
            (&[], 1),
            (&[("retry-after", "3600")], 60),
        ];
        for (headers, seconds) in cases {
            let server = TestServer::answering(
                429,
                headers,
                json!({"status": 429, "error": "Too Many Requests"}),
            )
            .await;
            let error = batch_error(&server).await;
            let LagoError::RateLimited { retry_after, .. } = &error else {
                panic!("{error:?}");
            };
            assert_eq!(*retry_after, Duration::from_secs(seconds), "{headers:?}");
            assert_eq!(error.retry_after(), Some(Duration::from_secs(seconds)));
            assert!(error.is_transient());
            assert!(!error.is_ambiguous());
        }
    }

    #[tokio::test]
    async fn server_errors_are_transient_and_ambiguous() {
        let server = TestServer::answering(
            500,
            &[],
            json!({"status": 500, "error": "Internal Server Error"}),
        )
        .await;
        let error = batch_error(&server).await;
        assert!(
            matches!(error, LagoError::Server { status: 500, .. }),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert!(error.is_ambiguous());

        let server =
            TestServer::start(|_| text_answer(502, "text/html", "<h1>Bad Gateway</h1>")).await;
        let error = batch_error(&server).await;
        assert!(
            matches!(error, LagoError::Server { status: 502, .. }),
            "{error:?}"
        );
        assert!(error.is_transient() && error.is_ambiguous());
    }

    #[tokio::test]
    async fn other_refusals_are_neither_transient_nor_ambiguous() {
        let server = TestServer::answering(
            400,
            &[],
            json!({"status": 400, "error": "BadRequest: param is missing or the value is empty: events"}),
        )
        .await;
        let error = batch_error(&server).await;
        let LagoError::Rejected {
            status: 400,
            message,
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert!(message.contains("param is missing"), "{message}");
        assert!(!error.is_transient() && !error.is_ambiguous());
    }

    #[tokio::test]
    async fn a_success_that_is_not_lagos_json_is_a_decode_error() {
        let server = TestServer::start(|_| text_answer(200, "text/html", "<html>app</html>")).await;
        let error = batch_error(&server).await;
        assert!(matches!(error, LagoError::Decode { .. }), "{error:?}");
        assert!(error.is_ambiguous());
        assert!(!error.is_transient());
    }

    #[tokio::test]
    async fn a_stalled_server_times_out_ambiguously() {
        let url = stalling_server().await;
        let mut config = LagoConfig::new(url, KEY);
        config.timeout = Duration::from_millis(300);
        let error = LagoClient::new(config)
            .unwrap()
            .post_batch(&events(1))
            .await
            .unwrap_err();
        assert!(matches!(error, LagoError::Timeout { .. }), "{error:?}");
        assert!(error.is_transient());
        assert!(error.is_ambiguous());
        assert_key_hidden(&error);
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_ambiguous() {
        let url = hanging_up_server().await;
        let error = client(&url).post_batch(&events(1)).await.unwrap_err();
        assert!(
            matches!(
                error,
                LagoError::Connect {
                    request_sent: true,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert!(error.is_ambiguous());
        assert_key_hidden(&error);
    }

    #[tokio::test]
    async fn a_refused_connection_sent_nothing() {
        let url = refused_url().await;
        let error = client(&url).post_batch(&events(1)).await.unwrap_err();
        assert!(
            matches!(
                error,
                LagoError::Connect {
                    request_sent: false,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert!(!error.is_ambiguous());
        assert_key_hidden(&error);
    }
}
