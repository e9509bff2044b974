//! The billing API over a real socket: tag mappings (one by one and imported), the session
//! ledger as the store holds it, operators' reviews, a billing run's events, and roles.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_server::{AppState, Config};
use ferry_store::billing::{
    EventOutcome, LedgerWrite, NewEvent, SessionRecord, SessionState, SessionWrite, Settlement,
};
use ferry_store::jobs::{CadenceRecord, FinishedRun, NewRun, StartedRun};
use ferry_store::{JobStore, Role};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::support::*;

const MAPPINGS: &str = "/api/admin/billing/mappings";
const IMPORT: &str = "/api/admin/billing/mappings";
const SESSIONS: &str = "/api/admin/billing/sessions";
const BILLING: &str = "billing";

/// 2026-01-01T00:00:00Z: seeded sessions start around here.
const T0: i64 = 1_767_225_600_000;

/// The fields the contract lists, in the contract's order.
const MAPPING_FIELDS: [&str; 4] = [
    "id_tag",
    "external_customer_id",
    "external_subscription_id",
    "updated_at",
];
const SESSION_FIELDS: [&str; 12] = [
    "steve_transaction_id",
    "charge_box_id",
    "connector_id",
    "id_tag",
    "started_at",
    "stopped_at",
    "start_wh",
    "stop_wh",
    "billed_wh",
    "state",
    "reason",
    "events",
];
const EVENT_FIELDS: [&str; 9] = [
    "transaction_id",
    "external_subscription_id",
    "code",
    "timestamp",
    "properties",
    "wh",
    "status",
    "error",
    "run_id",
];

/// A server whose sync worker API also knows the `billing` job, as `ferry serve` with billing
/// configured.
async fn billing_server() -> Server {
    Server::start_with(None, |c| c.sync_jobs.push(BILLING.to_owned())).await
}

async fn token(server: &Server, role: Role) -> String {
    server
        .store
        .create_operator_token(DEFAULT_TENANT, role, None)
        .await
        .unwrap()
}

/// `text` as one path segment: everything but RFC 3986's unreserved characters
/// percent-encoded (so `/` is `%2F`).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn mapping_path(tag: &str) -> String {
    format!("{MAPPINGS}/{}", segment(tag))
}

async fn put_mapping(server: &Server, token: &str, tag: &str, body: Value) -> (u16, Value) {
    server
        .call(Method::PUT, &mapping_path(tag), Some(token), Some(body))
        .await
}

/// The stored mappings as the API lists them, by tag.
async fn mappings(server: &Server) -> BTreeMap<String, Value> {
    let (status, body) = server.admin_get(MAPPINGS).await;
    assert_eq!(status, 200, "{body}");
    body["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id_tag"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

/// The stored mappings as `tag -> (customer, subscription)`.
async fn mapped(server: &Server) -> BTreeMap<String, (String, Option<String>)> {
    mappings(server)
        .await
        .into_iter()
        .map(|(tag, m)| {
            let customer = m["external_customer_id"].as_str().unwrap().to_owned();
            let subscription = m["external_subscription_id"].as_str().map(str::to_owned);
            (tag, (customer, subscription))
        })
        .collect()
}

fn entry(customer: &str, subscription: Option<&str>) -> (String, Option<String>) {
    (customer.to_owned(), subscription.map(str::to_owned))
}

async fn import_csv(server: &Server, token: &str, csv: &str) -> (u16, Value) {
    let request = server
        .request(Method::POST, IMPORT, Some(token))
        .header("content-type", "text/csv; charset=utf-8")
        .body(csv.to_owned());
    send(request).await
}

async fn import_json(server: &Server, token: &str, body: Value) -> (u16, Value) {
    server
        .call(Method::POST, IMPORT, Some(token), Some(body))
        .await
}

async fn review(server: &Server, token: &str, id: &str, action: &str) -> (u16, Value) {
    server
        .call(
            Method::POST,
            &format!("{SESSIONS}/{id}/review"),
            Some(token),
            Some(json!({ "action": action })),
        )
        .await
}

#[track_caller]
fn assert_fields(object: &Value, fields: &[&str]) {
    let mut got: Vec<&str> = object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut expected = fields.to_vec();
    expected.sort_unstable();
    assert_eq!(got, expected, "{object}");
}

/// A stopped session of `id_tag` in `state`, as the planner writes one.
fn session(id: i64, id_tag: &str, state: SessionState) -> SessionRecord {
    let started = T0 + id * 60_000;
    SessionRecord {
        id,
        charge_box_id: "CB-7".into(),
        connector_id: 2,
        id_tag: id_tag.into(),
        started_at_ms: Some(started),
        stopped_at_ms: Some(started + 45_000),
        start_mwh: Some(1_000_123),
        stop_mwh: Some(13_345_801),
        planned_wh: 0,
        billed_wh: 0,
        state,
        reason: None,
        approved: false,
        revision: 0,
        updated_at_ms: 0,
    }
}

fn with_reason(mut session: SessionRecord, reason: &str) -> SessionRecord {
    session.reason = Some(reason.to_owned());
    session
}

/// Session `session`'s event (`seq` 0, `steve-<id>`) or correction (`steve-<id>-r<seq>`).
fn event(session: i64, seq: i64, wh: i64) -> NewEvent {
    NewEvent {
        transaction_id: if seq == 0 {
            format!("steve-{session}")
        } else {
            format!("steve-{session}-r{seq}")
        },
        session_id: session,
        seq,
        customer: "cust-1".into(),
        subscription: "sub-1".into(),
        code: "energy_wh".into(),
        timestamp_ms: T0 + session * 60_000 + 45_000,
        wh,
        properties: format!(r#"{{"wh":{wh},"charge_box_id":"CB-7"}}"#),
    }
}

/// Writes sessions the ledger does not have yet, with their events, as a planner would.
async fn seed(server: &Server, sessions: Vec<SessionRecord>, events: Vec<NewEvent>) {
    let write = LedgerWrite {
        sessions: sessions
            .into_iter()
            .map(|session| SessionWrite {
                session,
                expected_revision: None,
            })
            .collect(),
        events,
        ..LedgerWrite::default()
    };
    let written = server.billing.write_ledger(None, &write).await.unwrap();
    assert_eq!(written.stale, Vec::<i64>::new());
}

async fn settle(server: &Server, run_id: i64, outcomes: &[(&NewEvent, EventOutcome)]) {
    let settled: Vec<Settlement> = outcomes
        .iter()
        .map(|(event, outcome)| Settlement {
            transaction_id: event.transaction_id.clone(),
            outcome: outcome.clone(),
        })
        .collect();
    server
        .billing
        .settle_events(run_id, &settled)
        .await
        .unwrap();
}

/// The ids of listed sessions, in the answer's order.
fn ids(body: &Value) -> Vec<i64> {
    body["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions: {body}"))
        .iter()
        .map(|s| s["steve_transaction_id"].as_i64().unwrap())
        .collect()
}

async fn listed(server: &Server, query: &str) -> Vec<i64> {
    let (status, body) = server.admin_get(&format!("{SESSIONS}{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    ids(&body)
}

/// Six sessions in every state, two tags, with delivered, pending and rejected events.
async fn seeded_ledger(server: &Server) {
    let sessions = vec![
        session(1, "TAG-A", SessionState::Billed),
        with_reason(
            session(2, "TAG-B", SessionState::Parked),
            "Tag TAG-B has no mapping.",
        ),
        with_reason(
            session(3, "TAG-A", SessionState::NeedsReview),
            "The meter went backwards.",
        ),
        SessionRecord {
            stopped_at_ms: None,
            stop_mwh: None,
            ..session(4, "TAG-B", SessionState::Active)
        },
        session(5, "TAG-A", SessionState::Ignored),
        session(6, "TAG-B", SessionState::Billed),
    ];
    let (first, correction, refused) = (event(1, 0, 12_345), event(1, 1, -5), event(6, 0, 700));
    seed(
        server,
        sessions,
        vec![first.clone(), correction.clone(), refused.clone()],
    )
    .await;
    settle(
        server,
        7,
        &[
            (&first, EventOutcome::Delivered),
            (
                &correction,
                EventOutcome::Unsettled("Lago timed out.".into()),
            ),
            (
                &refused,
                EventOutcome::Rejected("customer not found".into()),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_mapping_is_created_replaced_listed_and_deleted() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    assert_eq!(mappings(&server).await, BTreeMap::new());

    let (status, created) = put_mapping(
        &server,
        &admin,
        "TAG-1",
        json!({"external_customer_id": "cust-1", "external_subscription_id": "sub-1"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_fields(&created, &MAPPING_FIELDS);
    assert_eq!(created["id_tag"], "TAG-1");
    assert_eq!(created["external_customer_id"], "cust-1");
    assert_eq!(created["external_subscription_id"], "sub-1");
    let created_at = ferry_core::time::parse_ms(created["updated_at"].as_str().unwrap())
        .unwrap_or_else(|| panic!("updated_at is RFC 3339: {created}"));
    assert!((now_ms() - created_at).abs() < 60_000, "{created}");

    // Replaced: no subscription named (absent or null) is stored as null.
    let (status, replaced) = put_mapping(
        &server,
        &admin,
        "TAG-1",
        json!({"external_customer_id": "cust-2"}),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["external_customer_id"], "cust-2");
    assert_eq!(replaced["external_subscription_id"], Value::Null);
    let replaced_at = ferry_core::time::parse_ms(replaced["updated_at"].as_str().unwrap()).unwrap();
    assert!(replaced_at >= created_at, "{created} {replaced}");
    let (status, other) = put_mapping(
        &server,
        &admin,
        "TAG-2",
        json!({"external_customer_id": "cust-3", "external_subscription_id": null}),
    )
    .await;
    assert_eq!(status, 200, "{other}");

    let listed = mappings(&server).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        listed["TAG-1"], replaced,
        "the list shows what PUT answered"
    );
    assert_eq!(listed["TAG-2"], other);
    for mapping in listed.values() {
        assert_fields(mapping, &MAPPING_FIELDS);
    }

    let (status, body) = server
        .call(Method::DELETE, &mapping_path("TAG-1"), Some(&admin), None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let again = server
        .call(Method::DELETE, &mapping_path("TAG-1"), Some(&admin), None)
        .await;
    let message = assert_error(&again, 404, "not_found");
    assert!(message.contains("TAG-1"), "{message}");
    assert_eq!(
        mapped(&server).await,
        BTreeMap::from([("TAG-2".to_owned(), entry("cust-3", None))])
    );
}

#[tokio::test]
async fn tags_that_need_url_encoding_round_trip() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    let tags = [
        "TAG 7",
        "fleet/driver 12",
        "Zoë ✓ 充电",
        "50%?#&=+;",
        // The import endpoint is the collection's POST, so no tag name is taken by it.
        "import",
        // The longest tag accepted.
        &"x".repeat(255),
    ];
    for (n, tag) in tags.iter().enumerate() {
        let customer = format!("cust/{n} é");
        let (status, body) = put_mapping(
            &server,
            &admin,
            tag,
            json!({"external_customer_id": customer}),
        )
        .await;
        assert_eq!(status, 200, "{tag}: {body}");
        assert_eq!(body["id_tag"], *tag);
        assert_eq!(body["external_customer_id"], customer);
    }
    let listed = mapped(&server).await;
    let expected: BTreeMap<String, _> = tags
        .iter()
        .enumerate()
        .map(|(n, tag)| (tag.to_string(), entry(&format!("cust/{n} é"), None)))
        .collect();
    assert_eq!(listed, expected);

    for tag in tags {
        let (status, body) = server
            .call(Method::DELETE, &mapping_path(tag), Some(&admin), None)
            .await;
        assert_eq!(status, 204, "{tag}: {body}");
    }
    assert_eq!(mapped(&server).await, BTreeMap::new());
}

#[tokio::test]
async fn invalid_mappings_are_refused_and_write_nothing() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    let (status, body) = put_mapping(
        &server,
        &admin,
        "TAG-1",
        json!({"external_customer_id": "cust-1", "external_subscription_id": "sub-1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let before = mappings(&server).await;

    let long = "x".repeat(256);
    let cases: Vec<(&str, String, Value)> = vec![
        ("missing customer", "TAG-1".into(), json!({})),
        (
            "missing customer, subscription only",
            "TAG-1".into(),
            json!({"external_subscription_id": "sub-2"}),
        ),
        (
            "empty customer",
            "TAG-1".into(),
            json!({"external_customer_id": ""}),
        ),
        (
            "blank customer",
            "TAG-1".into(),
            json!({"external_customer_id": "   "}),
        ),
        (
            "customer with surrounding space",
            "TAG-1".into(),
            json!({"external_customer_id": " cust-2"}),
        ),
        (
            "empty subscription",
            "TAG-1".into(),
            json!({"external_customer_id": "cust-2", "external_subscription_id": ""}),
        ),
        (
            "customer of the wrong type",
            "TAG-1".into(),
            json!({"external_customer_id": 42}),
        ),
        (
            "unknown field",
            "TAG-1".into(),
            json!({"external_customer_id": "cust-2", "plan": "gold"}),
        ),
        (
            "NUL byte in the customer",
            "TAG-1".into(),
            json!({"external_customer_id": "cust\u{0}2"}),
        ),
        (
            "control character in the subscription",
            "TAG-1".into(),
            json!({"external_customer_id": "cust-2", "external_subscription_id": "sub\n2"}),
        ),
        (
            "NUL byte in the tag",
            "TAG\u{0}1".into(),
            json!({"external_customer_id": "cust-2"}),
        ),
        (
            "control character in the tag",
            "TAG\u{1b}1".into(),
            json!({"external_customer_id": "cust-2"}),
        ),
        (
            "tag of white space",
            " ".into(),
            json!({"external_customer_id": "cust-2"}),
        ),
        (
            "over-long tag",
            long.clone(),
            json!({"external_customer_id": "cust-2"}),
        ),
        (
            "over-long customer",
            "TAG-1".into(),
            json!({"external_customer_id": long}),
        ),
        (
            "over-long subscription",
            "TAG-1".into(),
            json!({"external_customer_id": "cust-2", "external_subscription_id": long}),
        ),
    ];
    for (what, tag, body) in cases {
        let got = put_mapping(&server, &admin, &tag, body).await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(mappings(&server).await, before, "{what} wrote something");
    }

    let malformed = server
        .request(Method::PUT, &mapping_path("TAG-1"), Some(&admin))
        .header("content-type", "application/json")
        .body("{\"external_customer_id\": ");
    assert_error(&send(malformed).await, 400, "invalid_request");
    assert_eq!(mappings(&server).await, before);
}

#[tokio::test]
async fn a_csv_import_maps_every_line_with_quotes_and_empty_subscriptions() {
    let server = Server::start().await;
    let csv = "tag,customer,subscription\n\
               TAG-1,cust-1,sub-1\n\
               \"TAG,2\",\"cust \"\"two\"\"\",\n\
               TAG 3 , cust-3 , \n\
               TAG-4,cust-4\n";
    let (status, body) = import_csv(&server, &server.admin, csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"imported": 4}));
    assert_eq!(
        mapped(&server).await,
        BTreeMap::from([
            ("TAG-1".to_owned(), entry("cust-1", Some("sub-1"))),
            ("TAG,2".to_owned(), entry("cust \"two\"", None)),
            ("TAG 3".to_owned(), entry("cust-3", None)),
            ("TAG-4".to_owned(), entry("cust-4", None)),
        ])
    );

    // Without a header row, the first line is a mapping.
    let (status, body) = import_csv(&server, &server.admin, "TAG-5,cust-5,sub-5\n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"imported": 1}));
    assert_eq!(
        mapped(&server).await["TAG-5"],
        entry("cust-5", Some("sub-5"))
    );
}

#[tokio::test]
async fn a_json_import_maps_every_entry() {
    let server = Server::start().await;
    let (status, body) = import_json(
        &server,
        &server.admin,
        json!({"mappings": [
            {"id_tag": "J-1", "external_customer_id": "c1", "external_subscription_id": "s1"},
            {"id_tag": "J-2", "external_customer_id": "c2"},
            {"id_tag": "J/3 ✓", "external_customer_id": "c3", "external_subscription_id": null},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"imported": 3}));
    assert_eq!(
        mapped(&server).await,
        BTreeMap::from([
            ("J-1".to_owned(), entry("c1", Some("s1"))),
            ("J-2".to_owned(), entry("c2", None)),
            ("J/3 ✓".to_owned(), entry("c3", None)),
        ])
    );
}

#[tokio::test]
async fn an_import_with_a_bad_line_or_a_repeated_tag_imports_nothing() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    let (status, body) = put_mapping(
        &server,
        &admin,
        "TAG-1",
        json!({"external_customer_id": "cust-old"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let before = mappings(&server).await;

    // Line 3 lacks its customer; lines 2 and 4 are fine, and line 2 would replace TAG-1.
    for csv in [
        "tag,customer,subscription\nTAG-1,cust-new,sub-1\nTAG-2,,sub-2\nTAG-3,cust-3,\n",
        "tag,customer,subscription\nTAG-1,cust-new,sub-1\nTAG-2\nTAG-3,cust-3,\n",
    ] {
        let got = import_csv(&server, &admin, csv).await;
        let message = assert_error(&got, 400, "invalid_request");
        assert!(message.contains("Line 3"), "{message}");
        assert_eq!(got.1["error"]["details"]["line"], 3, "{}", got.1);
        assert_eq!(mappings(&server).await, before, "all or none: {csv:?}");
    }

    let bad_csvs = [
        (
            "the same tag twice",
            "TAG-9,cust-1,\nTAG-8,cust-2,\nTAG-9,cust-3,\n",
        ),
        ("four fields", "TAG-9,cust-1,sub-1,extra\n"),
        ("a NUL byte", "TAG-9,cust\u{0}1,\n"),
        ("a header only", "tag,customer,subscription\n"),
        ("nothing", ""),
        // The stray quote would swallow the next line into the customer.
        ("an unterminated quote", "TAG-9,\"cust-1\nTAG-8,cust-2\n"),
    ];
    // A tag twice is named by the lines it is on.
    let got = import_csv(
        &server,
        &admin,
        "tag,customer\nTAG-9,c1\nTAG-8,c2\nTAG-9,c3\n",
    )
    .await;
    let message = assert_error(&got, 400, "invalid_request");
    assert!(
        message.contains("Line 4") && message.contains("line 2"),
        "{message}"
    );
    assert_eq!(got.1["error"]["details"]["line"], 4, "{}", got.1);
    for (what, csv) in bad_csvs {
        let got = import_csv(&server, &admin, csv).await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(mappings(&server).await, before, "{what} wrote something");
    }

    let bad_json = [
        json!({"mappings": [
            {"id_tag": "TAG-9", "external_customer_id": "c1"},
            {"id_tag": "TAG-9", "external_customer_id": "c2"},
        ]}),
        json!({"mappings": [
            {"id_tag": "TAG-1", "external_customer_id": "cust-new"},
            {"id_tag": "TAG-9", "external_customer_id": ""},
        ]}),
        json!({"mappings": [{"id_tag": "TAG-9", "external_customer_id": "c1", "plan": "gold"}]}),
        json!({"mappings": [{"id_tag": "TAG-9"}]}),
        json!([{"id_tag": "TAG-9", "external_customer_id": "c1"}]),
    ];
    for body in bad_json {
        let got = import_json(&server, &admin, body.clone()).await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(mappings(&server).await, before, "{body} wrote something");
    }
    // A bad JSON entry is named by its index.
    let got = import_json(
        &server,
        &admin,
        json!({"mappings": [
            {"id_tag": "TAG-9", "external_customer_id": "c1"},
            {"id_tag": "TAG-8", "external_customer_id": "c\u{7}2"},
        ]}),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(got.1["error"]["details"]["index"], 1, "{}", got.1);
}

#[tokio::test]
async fn an_import_replaces_existing_mappings_of_its_tags_and_keeps_the_others() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    for (tag, customer) in [("TAG-1", "cust-old"), ("TAG-9", "cust-9")] {
        let (status, body) = put_mapping(
            &server,
            &admin,
            tag,
            json!({"external_customer_id": customer, "external_subscription_id": "sub-old"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = import_csv(&server, &admin, "TAG-1,cust-new,\nTAG-2,cust-2,sub-2\n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"], 2);
    assert_eq!(
        mapped(&server).await,
        BTreeMap::from([
            ("TAG-1".to_owned(), entry("cust-new", None)),
            ("TAG-2".to_owned(), entry("cust-2", Some("sub-2"))),
            ("TAG-9".to_owned(), entry("cust-9", Some("sub-old"))),
        ])
    );
}

#[tokio::test]
async fn viewers_read_billing_but_only_operators_write() {
    let server = Server::start().await;
    seed(
        &server,
        vec![
            with_reason(session(1, "TAG-A", SessionState::NeedsReview), "Odd."),
            with_reason(session(2, "TAG-A", SessionState::NeedsReview), "Odd."),
        ],
        Vec::new(),
    )
    .await;
    let (status, body) = put_mapping(
        &server,
        &server.admin,
        "TAG-1",
        json!({"external_customer_id": "cust-1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let viewer = token(&server, Role::Viewer).await;
    let operator = token(&server, Role::Operator).await;
    let device = server.pair("Till").await;
    let before = mappings(&server).await;

    for reader in [&viewer, &operator, &server.admin] {
        for path in [
            MAPPINGS.to_owned(),
            SESSIONS.to_owned(),
            format!("{SESSIONS}/1"),
        ] {
            let (status, body) = server.call(Method::GET, &path, Some(reader), None).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
    }

    let refused = [
        (viewer.as_str(), 403, "forbidden"),
        (device.token.as_str(), 403, "forbidden"),
        ("not-a-token", 401, "unauthorized"),
    ];
    for (token, status, code) in refused {
        let put = put_mapping(
            &server,
            token,
            "TAG-2",
            json!({"external_customer_id": "cust-2"}),
        )
        .await;
        assert_error(&put, status, code);
        let delete = server
            .call(Method::DELETE, &mapping_path("TAG-1"), Some(token), None)
            .await;
        assert_error(&delete, status, code);
        assert_error(
            &import_csv(&server, token, "TAG-3,cust-3,\n").await,
            status,
            code,
        );
        assert_error(
            &import_json(
                &server,
                token,
                json!({"mappings": [{"id_tag": "TAG-3", "external_customer_id": "c"}]}),
            )
            .await,
            status,
            code,
        );
        assert_error(&review(&server, token, "1", "ignore").await, status, code);
        assert_error(&review(&server, token, "1", "bill").await, status, code);
    }
    for path in [MAPPINGS.to_owned(), format!("{SESSIONS}/1")] {
        assert_error(
            &server.call(Method::GET, &path, None, None).await,
            401,
            "unauthorized",
        );
        assert_error(
            &server
                .call(Method::GET, &path, Some(&device.token), None)
                .await,
            403,
            "forbidden",
        );
    }
    let anonymous = server
        .request(Method::PUT, &mapping_path("TAG-2"), None)
        .json(&json!({"external_customer_id": "cust-2"}));
    assert_error(&send(anonymous).await, 401, "unauthorized");
    // The refused writes wrote nothing.
    assert_eq!(mappings(&server).await, before);
    let untouched = server.billing.sessions(&[1]).await.unwrap();
    assert_eq!(untouched[0].state, SessionState::NeedsReview);
    assert!(!untouched[0].approved);

    // An operator may write.
    let (status, body) = put_mapping(
        &server,
        &operator,
        "TAG-2",
        json!({"external_customer_id": "cust-2"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = import_csv(&server, &operator, "TAG-3,cust-3,\n").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            Method::DELETE,
            &mapping_path("TAG-1"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = review(&server, &operator, "1", "ignore").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "ignored");
    let (status, body) = review(&server, &operator, "2", "bill").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        mapped(&server).await,
        BTreeMap::from([
            ("TAG-2".to_owned(), entry("cust-2", None)),
            ("TAG-3".to_owned(), entry("cust-3", None)),
        ])
    );
}

#[tokio::test]
async fn sessions_are_listed_newest_first_with_the_contracts_fields() {
    let server = Server::start().await;
    assert_eq!(listed(&server, "").await, Vec::<i64>::new());
    seeded_ledger(&server).await;

    let (status, body) = server.admin_get(SESSIONS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), [6, 5, 4, 3, 2, 1]);
    let sessions = body["sessions"].as_array().unwrap();
    for session in sessions {
        assert_fields(session, &SESSION_FIELDS);
        for event in session["events"].as_array().unwrap() {
            assert_fields(event, &EVENT_FIELDS);
        }
    }

    // A billed session with its delivered event and a pending correction whose send failed.
    assert_eq!(
        sessions[5],
        json!({
            "steve_transaction_id": 1,
            "charge_box_id": "CB-7",
            "connector_id": 2,
            "id_tag": "TAG-A",
            "started_at": "2026-01-01T00:01:00.000Z",
            "stopped_at": "2026-01-01T00:01:45.000Z",
            "start_wh": 1000.123,
            "stop_wh": 13345.801,
            "billed_wh": 12345,
            "state": "billed",
            "reason": null,
            "events": [
                {
                    "transaction_id": "steve-1",
                    "external_subscription_id": "sub-1",
                    "code": "energy_wh",
                    "timestamp": "2026-01-01T00:01:45.000Z",
                    "properties": {"wh": 12345, "charge_box_id": "CB-7"},
                    "wh": 12345,
                    "status": "delivered",
                    "error": null,
                    "run_id": 7,
                },
                {
                    "transaction_id": "steve-1-r1",
                    "external_subscription_id": "sub-1",
                    "code": "energy_wh",
                    "timestamp": "2026-01-01T00:01:45.000Z",
                    "properties": {"wh": -5, "charge_box_id": "CB-7"},
                    "wh": -5,
                    "status": "pending",
                    "error": "Lago timed out.",
                    "run_id": null,
                },
            ],
        })
    );
    // A parked session says why; an active one has no stop yet.
    assert_eq!(sessions[4]["state"], "parked");
    assert_eq!(sessions[4]["reason"], "Tag TAG-B has no mapping.");
    assert_eq!(sessions[4]["events"], json!([]));
    assert_eq!(sessions[2]["state"], "active");
    assert_eq!(sessions[2]["stopped_at"], Value::Null);
    assert_eq!(sessions[2]["stop_wh"], Value::Null);
    assert_eq!(sessions[1]["state"], "ignored");
    // Lago refused session 6's event: the session waits for review with Lago's error.
    let refused = &sessions[0];
    assert_eq!(refused["state"], "needs_review");
    assert_eq!(refused["billed_wh"], 0);
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("customer not found"),
        "{refused}"
    );
    assert_eq!(refused["events"][0]["status"], "rejected");
    assert_eq!(refused["events"][0]["error"], "customer not found");
    assert_eq!(refused["events"][0]["run_id"], 7);
    assert_eq!(refused["events"][0]["wh"], 700);
}

#[tokio::test]
async fn sessions_filter_by_state_and_tag_and_page_with_before() {
    let server = Server::start().await;
    seeded_ledger(&server).await;

    assert_eq!(listed(&server, "?state=needs_review").await, [6, 3]);
    assert_eq!(listed(&server, "?state=billed").await, [1]);
    assert_eq!(listed(&server, "?state=parked").await, [2]);
    assert_eq!(listed(&server, "?state=active").await, [4]);
    assert_eq!(listed(&server, "?state=ignored").await, [5]);
    assert_eq!(listed(&server, "?id_tag=TAG-A").await, [5, 3, 1]);
    assert_eq!(listed(&server, "?id_tag=TAG-B").await, [6, 4, 2]);
    assert_eq!(listed(&server, "?id_tag=TAG-Z").await, Vec::<i64>::new());
    assert_eq!(
        listed(&server, "?id_tag=TAG-B&state=needs_review").await,
        [6]
    );
    // Empty filters filter nothing.
    assert_eq!(listed(&server, "?state=&id_tag=").await, [6, 5, 4, 3, 2, 1]);

    // Paging: each page's last id is the next page's `before`.
    assert_eq!(listed(&server, "?limit=4").await, [6, 5, 4, 3]);
    assert_eq!(listed(&server, "?limit=4&before=3").await, [2, 1]);
    assert_eq!(
        listed(&server, "?limit=4&before=1").await,
        Vec::<i64>::new()
    );
    assert_eq!(listed(&server, "?limit=1&before=6&id_tag=TAG-B").await, [4]);
    assert_eq!(listed(&server, "?before=1000").await, [6, 5, 4, 3, 2, 1]);
    // A limit above the largest page is capped, not refused.
    assert_eq!(listed(&server, "?limit=100000").await.len(), 6);
}

#[tokio::test]
async fn bad_session_queries_are_refused() {
    let server = Server::start().await;
    seeded_ledger(&server).await;
    for query in [
        "?state=done",
        "?state=Billed",
        "?limit=0",
        "?limit=-1",
        "?limit=ten",
        "?limit=",
        "?before=x",
        "?before=1.5",
    ] {
        let got = server.admin_get(&format!("{SESSIONS}{query}")).await;
        let message = assert_error(&got, 400, "invalid_request");
        let name = query[1..].split('=').next().unwrap();
        assert!(message.contains(name), "{query}: {message}");
    }
}

#[tokio::test]
async fn one_session_is_shown_with_its_events_and_unknown_ids_are_not_found() {
    let server = Server::start().await;
    seeded_ledger(&server).await;
    let (status, list) = server.admin_get(SESSIONS).await;
    assert_eq!(status, 200, "{list}");
    for listed in list["sessions"].as_array().unwrap() {
        let id = &listed["steve_transaction_id"];
        let (status, one) = server.admin_get(&format!("{SESSIONS}/{id}")).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(&one, listed, "the detail is the listed session");
    }
    for id in ["999", "0", "-1", "abc", "1.0", "99999999999999999999"] {
        let got = server.admin_get(&format!("{SESSIONS}/{id}")).await;
        assert_error(&got, 404, "not_found");
    }
}

#[tokio::test]
async fn ignore_settles_a_session_in_review_for_good() {
    let server = billing_server().await;
    seed(
        &server,
        vec![with_reason(
            session(3, "TAG-A", SessionState::NeedsReview),
            "The meter went backwards.",
        )],
        Vec::new(),
    )
    .await;
    let (status, body) = review(&server, &server.admin, "3", "ignore").await;
    assert_eq!(status, 200, "{body}");
    assert_fields(&body, &SESSION_FIELDS);
    assert_eq!(body["steve_transaction_id"], 3);
    assert_eq!(body["state"], "ignored");
    assert!(body["reason"].is_string(), "{body}");
    assert_eq!(server.admin_get(&format!("{SESSIONS}/3")).await.1, body);
    let stored = &server.billing.sessions(&[3]).await.unwrap()[0];
    assert_eq!(stored.state, SessionState::Ignored);
    assert!(!stored.approved);
    // Ignoring asks the job for nothing.
    let state = server.admin_get("/api/admin/sync/state?job=billing").await;
    assert_eq!(state.0, 200, "{}", state.1);
    assert_eq!(state.1["pending_triggers"], 0);

    // It left review: a second answer is refused and changes nothing.
    let again = review(&server, &server.admin, "3", "bill").await;
    let message = assert_error(&again, 400, "invalid_request");
    assert!(message.contains("ignored"), "{message}");
    assert_eq!(again.1["error"]["details"]["state"], "ignored");
    assert_eq!(&server.billing.sessions(&[3]).await.unwrap()[0], stored);
}

#[tokio::test]
async fn bill_approves_a_session_in_review_and_triggers_the_billing_job() {
    let server = billing_server().await;
    seed(
        &server,
        vec![with_reason(
            session(3, "TAG-A", SessionState::NeedsReview),
            "The meter went backwards.",
        )],
        Vec::new(),
    )
    .await;
    let state = server.admin_get("/api/admin/sync/state?job=billing").await;
    assert_eq!(state.1["pending_triggers"], 0, "{}", state.1);

    let (status, body) = review(&server, &server.admin, "3", "bill").await;
    assert_eq!(status, 200, "{body}");
    assert_fields(&body, &SESSION_FIELDS);
    // The next run bills it; until then it stays in review, approved.
    assert_eq!(body["state"], "needs_review");
    assert_eq!(body["reason"], "The meter went backwards.");
    let stored = &server.billing.sessions(&[3]).await.unwrap()[0];
    assert_eq!(stored.state, SessionState::NeedsReview);
    assert!(stored.approved);
    assert_eq!(
        server.billing.open_sessions().await.unwrap(),
        std::slice::from_ref(stored),
        "the next run looks at it"
    );
    let state = server.admin_get("/api/admin/sync/state?job=billing").await;
    assert_eq!(state.0, 200, "{}", state.1);
    assert_eq!(state.1["pending_triggers"], 1);
    // The probe job was not asked.
    assert_eq!(server.sync_state().await["pending_triggers"], 0);
}

#[tokio::test]
async fn bill_on_a_server_without_the_billing_job_stores_no_trigger() {
    // The default test server's sync worker API knows only the probe job.
    let server = Server::start().await;
    seed(
        &server,
        vec![with_reason(
            session(3, "TAG-A", SessionState::NeedsReview),
            "Odd.",
        )],
        Vec::new(),
    )
    .await;
    let (status, body) = review(&server, &server.admin, "3", "bill").await;
    assert_eq!(status, 200, "{body}");
    assert!(server.billing.sessions(&[3]).await.unwrap()[0].approved);
    assert_eq!(server.jobs.pending_count(BILLING).await.unwrap(), 0);
    assert_eq!(server.jobs.pending_count(PROBE).await.unwrap(), 0);
}

#[tokio::test]
async fn a_review_of_a_session_not_in_review_or_with_an_unknown_action_changes_nothing() {
    let server = billing_server().await;
    seed(
        &server,
        vec![
            session(1, "TAG-A", SessionState::Billed),
            with_reason(session(3, "TAG-A", SessionState::NeedsReview), "Odd."),
        ],
        Vec::new(),
    )
    .await;
    let before = server.billing.sessions(&[1, 3]).await.unwrap();

    for action in ["bill", "ignore"] {
        let got = review(&server, &server.admin, "1", action).await;
        let message = assert_error(&got, 400, "invalid_request");
        assert!(message.contains("billed"), "{message}");
        assert_eq!(got.1["error"]["details"]["state"], "billed");
    }
    for action in ["approve", "BILL", ""] {
        let got = review(&server, &server.admin, "3", action).await;
        assert_error(&got, 400, "invalid_request");
    }
    for body in [
        json!({}),
        json!({"action": "bill", "note": "ok"}),
        json!({"action": 1}),
    ] {
        let got = server
            .call(
                Method::POST,
                &format!("{SESSIONS}/3/review"),
                Some(&server.admin),
                Some(body),
            )
            .await;
        assert_error(&got, 400, "invalid_request");
    }
    for id in ["999", "abc"] {
        assert_error(
            &review(&server, &server.admin, id, "bill").await,
            404,
            "not_found",
        );
    }
    let mut after = server.billing.sessions(&[1, 3]).await.unwrap();
    let mut before = before;
    after.sort_by_key(|s| s.id);
    before.sort_by_key(|s| s.id);
    assert_eq!(after, before);
    let state = server.admin_get("/api/admin/sync/state?job=billing").await;
    assert_eq!(state.1["pending_triggers"], 0, "{}", state.1);
}

/// Starts a run of `job` as a worker would.
async fn start_run(jobs: &dyn JobStore, job: &str) -> i64 {
    let started = jobs
        .start_run(&NewRun {
            job,
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

async fn finish_run(server: &Server, run_id: i64, status: &str) {
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
        counts: &BTreeMap::from([("events_created".to_owned(), 1)]),
        errors: &[],
        cadence: &cadence,
    };
    assert!(
        server
            .jobs
            .finish_run(run_id, "w1", &finished)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_billing_runs_detail_lists_the_events_it_settled() {
    let server = billing_server().await;
    let events = [
        event(1, 0, 100),
        event(2, 0, 200),
        event(3, 0, 300),
        event(4, 0, 400),
        event(5, 0, 500),
    ];
    seed(
        &server,
        (1..=5)
            .map(|id| session(id, "TAG-A", SessionState::Billed))
            .collect(),
        events.to_vec(),
    )
    .await;

    let run = start_run(&*server.jobs, BILLING).await;
    settle(
        &server,
        run,
        &[
            (&events[0], EventOutcome::Delivered),
            (
                &events[1],
                EventOutcome::Rejected("subscription ended".into()),
            ),
            (
                &events[2],
                EventOutcome::Unsettled("Lago timed out.".into()),
            ),
        ],
    )
    .await;
    finish_run(&server, run, "partial").await;
    // Another billing run settles another event; a probe run carries the last one's run id.
    let later = start_run(&*server.jobs, BILLING).await;
    settle(&server, later, &[(&events[3], EventOutcome::Delivered)]).await;
    finish_run(&server, later, "succeeded").await;
    let probe = start_run(&*server.jobs, PROBE).await;
    settle(&server, probe, &[(&events[4], EventOutcome::Delivered)]).await;
    finish_run(&server, probe, "succeeded").await;

    let (status, detail) = server
        .admin_get(&format!("/api/admin/sync/runs/{run}"))
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["job"], BILLING);
    assert_eq!(detail["status"], "partial");
    let listed = detail["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{detail}"));
    for event in listed {
        assert_fields(event, &EVENT_FIELDS);
        assert_eq!(event["run_id"], run);
    }
    let summary: Vec<(&str, &str, Option<&str>, i64)> = listed
        .iter()
        .map(|e| {
            (
                e["transaction_id"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["error"].as_str(),
                e["wh"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("steve-1", "delivered", None, 100),
            ("steve-2", "rejected", Some("subscription ended"), 200),
        ]
    );
    // The same event as the session shows it.
    let (_, session) = server.admin_get(&format!("{SESSIONS}/1")).await;
    assert_eq!(session["events"][0], listed[0]);

    let (status, detail) = server
        .admin_get(&format!("/api/admin/sync/runs/{later}"))
        .await;
    assert_eq!(status, 200, "{detail}");
    let listed: Vec<&str> = detail["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{detail}"))
        .iter()
        .map(|e| e["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["steve-4"]);

    let (status, detail) = server
        .admin_get(&format!("/api/admin/sync/runs/{probe}"))
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["job"], PROBE);
    assert!(detail.get("events").is_none(), "{detail}");
    assert!(detail["log"].is_array(), "{detail}");

    // A billing run that settled nothing lists no events, but says so.
    let idle = start_run(&*server.jobs, BILLING).await;
    finish_run(&server, idle, "succeeded").await;
    let (status, detail) = server
        .admin_get(&format!("/api/admin/sync/runs/{idle}"))
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["events"], json!([]));
    // Lists leave events out, as they leave the log out.
    let (status, runs) = server.admin_get("/api/admin/sync/runs?job=billing").await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs["runs"].as_array().unwrap().len(), 3, "{runs}");
    assert!(
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("events").is_none()),
        "{runs}"
    );
}

#[tokio::test]
async fn a_server_without_the_billing_ledger_answers_not_found() {
    // As a server with the sync worker API but no billing ledger (the benchmark's) is built.
    let storage = test_store().await;
    let opened = ferry_server::init::open(&storage.location, None)
        .await
        .unwrap();
    let admin = opened.admin_token.clone().unwrap();
    let mut config = Config::new(opened.schema);
    config.sync_jobs = vec![PROBE.to_owned(), BILLING.to_owned()];
    let state = AppState::new(opened.store, config).with_jobs(opened.jobs.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(ferry_server::serve(listener, state, shutdown));
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str| {
        http.request(method, format!("{url}{path}"))
            .bearer_auth(&admin)
    };

    let requests = [
        call(Method::GET, MAPPINGS),
        call(Method::PUT, &mapping_path("TAG-1")).json(&json!({"external_customer_id": "c"})),
        call(Method::DELETE, &mapping_path("TAG-1")),
        call(Method::POST, IMPORT)
            .header("content-type", "text/csv")
            .body("TAG-1,c,\n"),
        call(Method::POST, IMPORT)
            .json(&json!({"mappings": [{"id_tag": "TAG-1", "external_customer_id": "c"}]})),
        call(Method::GET, SESSIONS),
        call(Method::GET, &format!("{SESSIONS}?state=billed&limit=5")),
        call(Method::GET, &format!("{SESSIONS}/1")),
        call(Method::POST, &format!("{SESSIONS}/1/review")).json(&json!({"action": "bill"})),
    ];
    for request in requests {
        let got = send(request).await;
        let message = assert_error(&got, 404, "not_found");
        assert!(message.contains("billing"), "{message}");
    }
    // Nothing reached the ledger, which the store has all the same.
    let ledger = ferry_server::init::open_billing(&storage.location)
        .await
        .unwrap();
    assert_eq!(ledger.mappings().await.unwrap(), []);

    // A billing run's detail has no events without the ledger to read them from.
    let run = start_run(&*opened.jobs, BILLING).await;
    let (status, detail) = send(call(Method::GET, &format!("/api/admin/sync/runs/{run}"))).await;
    assert_eq!(status, 200, "{detail}");
    assert!(detail.get("events").is_none(), "{detail}");
}

/// Regression: axum answered a path segment that is not UTF-8 in plain text, and PostgreSQL
/// failed (`500`) a tag with a NUL byte in a DELETE or a session filter.
#[tokio::test]
async fn undecodable_paths_and_nul_bytes_get_the_contracts_answers_on_both_stores() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    seeded_ledger(&server).await;
    let before = mappings(&server).await;
    let put = json!({"external_customer_id": "cust-1"});
    let undecodable = [
        (Method::PUT, format!("{MAPPINGS}/TAG%FF"), Some(put.clone())),
        (Method::DELETE, format!("{MAPPINGS}/TAG%FF"), None),
        (Method::GET, format!("{SESSIONS}/%FF"), None),
        (
            Method::POST,
            format!("{SESSIONS}/%FF/review"),
            Some(json!({"action": "bill"})),
        ),
        (Method::GET, "/api/admin/sync/runs/%FF".to_owned(), None),
        (Method::DELETE, "/api/admin/devices/%FF".to_owned(), None),
    ];
    for (method, path, body) in undecodable {
        let got = server.call(method, &path, Some(&admin), body).await;
        let message = assert_error(&got, 400, "invalid_request");
        assert!(message.contains("UTF-8"), "{path}: {message}");
    }
    assert_eq!(mappings(&server).await, before);

    // A NUL byte anywhere in the path or query is refused before it reaches a store
    // (PostgreSQL answered 500 for it).
    for (method, path) in [
        (Method::DELETE, format!("{MAPPINGS}/%00")),
        (Method::DELETE, "/api/admin/devices/%00".to_owned()),
        (Method::GET, format!("{SESSIONS}?id_tag=%00")),
        (Method::GET, format!("{SESSIONS}?id_tag=TAG-A%00")),
        (Method::GET, "/api/admin/conflicts?table=%00".to_owned()),
        (Method::GET, "/api/admin/sync/state?job=%00".to_owned()),
        (Method::GET, "/api/admin/sync/runs?job=a%00b".to_owned()),
        (Method::GET, "/api/sync/pull?since=%00".to_owned()),
    ] {
        let got = server.call(method, &path, Some(&admin), None).await;
        let message = assert_error(&got, 400, "invalid_request");
        assert!(message.contains("NUL"), "{path}: {message}");
    }
    assert_eq!(listed(&server, "?id_tag=TAG-A").await, [5, 3, 1]);
}

/// Regression: `#` started a CSV comment, so a tag beginning with it was left out of an
/// import that answered success.
#[tokio::test]
async fn a_csv_line_starting_with_a_hash_is_a_mapping_not_a_comment() {
    let server = Server::start().await;
    let (status, body) = import_csv(
        &server,
        &server.admin,
        "tag,customer\n#TAG-1,cust-1\nTAG-2,cust-2\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"], 2);
    assert_eq!(
        mapped(&server).await,
        BTreeMap::from([
            ("#TAG-1".to_owned(), entry("cust-1", None)),
            ("TAG-2".to_owned(), entry("cust-2", None)),
        ])
    );
    // A note that is not a mapping fails loudly, naming its line, rather than vanishing.
    let got = import_csv(&server, &server.admin, "TAG-3,cust-3\n# a note\n").await;
    let message = assert_error(&got, 400, "invalid_request");
    assert!(message.contains("Line 2"), "{message}");
    assert_eq!(mapped(&server).await.len(), 2);
}

/// Guards issue 13: the billing ledger is the deployment's, so another tenant's operators, its
/// admin included, neither read nor change it.
#[tokio::test]
async fn another_tenant_s_operators_neither_read_nor_change_the_billing_ledger() {
    let server = Server::start().await;
    seed(
        &server,
        vec![with_reason(
            session(1, "TAG-A", SessionState::NeedsReview),
            "Odd.",
        )],
        Vec::new(),
    )
    .await;
    let (status, body) = put_mapping(
        &server,
        &server.admin,
        "TAG-1",
        json!({"external_customer_id": "cust-1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let before = mappings(&server).await;
    assert!(server.store.create_tenant("acme").await.unwrap());

    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let other = server
            .store
            .create_operator_token("acme", role, None)
            .await
            .unwrap();
        for path in [
            MAPPINGS.to_owned(),
            SESSIONS.to_owned(),
            format!("{SESSIONS}/1"),
        ] {
            let got = server.call(Method::GET, &path, Some(&other), None).await;
            assert_error(&got, 403, "forbidden");
        }
        let put = put_mapping(
            &server,
            &other,
            "TAG-2",
            json!({"external_customer_id": "cust-2"}),
        )
        .await;
        assert_error(&put, 403, "forbidden");
        let delete = server
            .call(Method::DELETE, &mapping_path("TAG-1"), Some(&other), None)
            .await;
        assert_error(&delete, 403, "forbidden");
        assert_error(
            &import_csv(&server, &other, "TAG-3,cust-3,\n").await,
            403,
            "forbidden",
        );
        assert_error(
            &import_json(
                &server,
                &other,
                json!({"mappings": [{"id_tag": "TAG-3", "external_customer_id": "c"}]}),
            )
            .await,
            403,
            "forbidden",
        );
        assert_error(
            &review(&server, &other, "1", "ignore").await,
            403,
            "forbidden",
        );
        assert_error(
            &review(&server, &other, "1", "bill").await,
            403,
            "forbidden",
        );
    }
    // The refused writes wrote nothing.
    assert_eq!(mappings(&server).await, before);
    let untouched = server.billing.sessions(&[1]).await.unwrap();
    assert_eq!(untouched[0].state, SessionState::NeedsReview);
    assert!(!untouched[0].approved);
}
