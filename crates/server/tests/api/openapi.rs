//! `GET /api/openapi.json`: the document describes exactly the routes the server serves, each
//! with who may call it and every status it answers, and the bodies it documents are the
//! bodies the server sends.

use std::collections::{BTreeMap, BTreeSet};

use ferry_store::Role;
use reqwest::Method;
use serde_json::{Value, json};

use super::events::EventStream;
use super::support::*;

const DOCUMENT: &str = "/api/openapi.json";

/// The document, fetched as any client would.
async fn document(server: &Server) -> Value {
    let response = server
        .request(Method::GET, DOCUMENT, None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// The router's routes (method, router pattern), in OpenAPI's terms: lowercase methods, and
/// `{*rest}` as `{rest}`.
fn served_routes() -> BTreeSet<(String, String)> {
    ferry_server::routes()
        .into_iter()
        .map(|(method, pattern)| {
            (
                method.as_str().to_ascii_lowercase(),
                pattern.replace("{*", "{"),
            )
        })
        .collect()
}

/// Every operation of the document: (method, path) to the operation.
fn operations(document: &Value) -> BTreeMap<(String, String), &Value> {
    let mut operations = BTreeMap::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            operations.insert((method.clone(), path.clone()), operation);
        }
    }
    operations
}

/// The value a local reference (`#/a/b`) points at in `document`.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

/// A validator of `schema`, a schema of the document whose references point into it.
fn validator(document: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = document["components"].clone();
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("the schema {schema} does not compile: {e}"))
}

/// Asserts that `body` is valid against `schema` of `document`, saying why not.
#[track_caller]
fn assert_valid(document: &Value, schema: &Value, body: &Value, what: &str) {
    let validator = validator(document, schema);
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {body} is not valid against {schema}: {errors:?}"
    );
}

/// The documented JSON schema of `status` of an operation.
#[track_caller]
fn response_schema(operation: &Value, status: u16) -> &Value {
    let schema =
        &operation["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "no JSON body for {status} in {operation}"
    );
    schema
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_describes_exactly_the_routes_served() {
    let server = Server::start().await;
    let document = document(&server).await;
    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1"), "openapi {version}");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    let documented: BTreeSet<(String, String)> = operations(&document).into_keys().collect();
    let served = served_routes();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    assert!(documented.contains(&("get".to_owned(), DOCUMENT.to_owned())));

    let mut ids = BTreeSet::new();
    for ((method, path), operation) in operations(&document) {
        let id = operation["operationId"].as_str().unwrap();
        assert!(ids.insert(id), "operationId {id} twice");
        assert!(operation["summary"].as_str().is_some_and(|s| !s.is_empty()));
        // Every `{name}` of the path is a documented path parameter, and nothing else is.
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let described: BTreeSet<String> = parameters
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        let described: BTreeSet<&str> = described.iter().map(String::as_str).collect();
        assert_eq!(in_path, described, "{method} {path}: path parameters");
    }
}

#[tokio::test]
async fn every_operation_lists_its_refusals_with_the_error_body_and_every_ref_resolves() {
    let server = Server::start().await;
    let document = document(&server).await;

    let mut references = Vec::new();
    collect_references(&document, &mut references);
    assert!(references.len() > 50, "{} references", references.len());
    for reference in &references {
        assert!(
            resolve(&document, reference).is_some(),
            "{reference} does not resolve"
        );
    }

    let error_detail = json!({"$ref": "#/components/schemas/ErrorDetail"});
    for ((method, path), operation) in operations(&document) {
        let what = format!("{method} {path}");
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{what} has no success"
        );
        // What the layers in front of every route refuse, every operation lists.
        for status in ["400", "413", "414", "431", "503"] {
            assert!(responses.contains_key(status), "{what} lists no {status}");
        }
        let authenticated = !operation["security"].as_array().unwrap().is_empty();
        assert_eq!(responses.contains_key("401"), authenticated, "{what}: 401");
        for (status, response) in responses {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            assert!(
                carries(&document, schema, &error_detail),
                "{what}: {status}'s body {schema} is not the error body"
            );
            let text = response["description"].as_str().unwrap();
            assert!(text.contains('`'), "{what}: {status} names no code: {text}");
        }
    }
}

/// Whether every body `schema` allows has a required `error` of the contract's shape.
fn carries(document: &Value, schema: &Value, error_detail: &Value) -> bool {
    if let Some(reference) = schema["$ref"].as_str() {
        return carries(
            document,
            resolve(document, reference).unwrap(),
            error_detail,
        );
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().any(|s| carries(document, s, error_detail));
    }
    if let Some(any) = schema["anyOf"].as_array() {
        return any.iter().all(|s| carries(document, s, error_detail));
    }
    let required = schema["required"].as_array().into_iter().flatten();
    schema["properties"]["error"] == *error_detail && required.into_iter().any(|r| r == "error")
}

fn collect_references(value: &Value, references: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match item.as_str() {
                    Some(reference) if key == "$ref" => references.push(reference.to_owned()),
                    _ => collect_references(item, references),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_references(i, references)),
        _ => {}
    }
}

/// Who calls, in the route matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    Device,
    /// An operator token of the deployment's own tenant.
    Operator(Role),
    /// An admin token of another tenant.
    OtherTenantAdmin,
}

impl Caller {
    /// Whether the operation's documented security requirements let the caller in.
    fn admitted(self, operation: &Value) -> bool {
        let requirements = operation["security"].as_array().unwrap();
        if requirements.is_empty() {
            return true;
        }
        requirements.iter().any(|requirement| {
            requirement
                .as_object()
                .unwrap()
                .iter()
                .all(|(scheme, roles)| {
                    let least = roles[0]
                        .as_str()
                        .map_or(Role::Viewer, |r| Role::parse(r).unwrap());
                    match (scheme.as_str(), self) {
                        ("deviceToken", Caller::Device) => true,
                        ("operatorToken", Caller::Operator(role)) => role >= least,
                        ("operatorToken", Caller::OtherTenantAdmin) => true,
                        ("deploymentToken", Caller::Operator(role)) => role >= least,
                        _ => false,
                    }
                })
        })
    }
}

#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_documented() {
    let server = Server::start().await;
    let document = document(&server).await;
    let operations = operations(&document);
    assert!(server.store.create_tenant("acme").await.unwrap());
    let mut tokens = BTreeMap::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let token = server
            .store
            .create_operator_token(DEFAULT_TENANT, role, None)
            .await
            .unwrap();
        tokens.insert(format!("{role:?}"), token);
    }
    let other_admin = server
        .store
        .create_operator_token("acme", Role::Admin, None)
        .await
        .unwrap();
    // Redirects are answers to check, not to follow.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let callers = [
        Caller::Nobody,
        Caller::Device,
        Caller::Operator(Role::Viewer),
        Caller::Operator(Role::Operator),
        Caller::Operator(Role::Admin),
        Caller::OtherTenantAdmin,
    ];
    for (method, pattern) in ferry_server::routes() {
        let key = (
            method.as_str().to_ascii_lowercase(),
            pattern.replace("{*", "{"),
        );
        let operation = operations[&key];
        // Each path parameter named `x`: an id no record has.
        let path: String = pattern
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        // A device of its own per route: one route revokes the device that calls it.
        let device = server.pair(&format!("Caller of {pattern}")).await;
        for caller in callers {
            let token = match caller {
                Caller::Nobody => None,
                Caller::Device => Some(device.token.clone()),
                Caller::Operator(role) => Some(tokens[&format!("{role:?}")].clone()),
                Caller::OtherTenantAdmin => Some(other_admin.clone()),
            };
            let mut request = http.request(method.clone(), format!("{}{path}", server.url));
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let what = format!("{method} {path} as {caller:?}: {status}");
            let documented = &operation["responses"][status.to_string()];
            assert!(documented.is_object(), "{what} is not documented");

            if caller.admitted(operation) {
                assert!(
                    !matches!(status, 401 | 403),
                    "{what}: the document admits it"
                );
            } else {
                let refused = if caller == Caller::Nobody { 401 } else { 403 };
                assert_eq!(status, refused, "{what}: the document refuses it");
            }

            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let Some(content_type) = content_type else {
                assert!(documented["content"].is_null(), "{what}: no body");
                continue;
            };
            let essence = |media: &str| media.split(';').next().unwrap().trim().to_owned();
            let media: Vec<String> = documented["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: a body that is not documented"))
                .keys()
                .map(|m| essence(m))
                .collect();
            assert!(
                media.contains(&essence(&content_type)),
                "{what}: {content_type} is not one of {media:?}"
            );
            if essence(&content_type) != "application/json" {
                // Event streams never end: the head is what there is to check here.
                continue;
            }
            let body: Value = response.json().await.unwrap();
            let schema = &documented["content"]["application/json"]["schema"];
            assert_valid(&document, schema, &body, &what);
        }
    }

    // The router's own view: `/metrics` counts requests by the pattern of the route that
    // matched them. Every route was called, so each served pattern is there, each documented.
    let (status, _) = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_eq!(status, 200);
    let metrics = server
        .request(Method::GET, "/metrics", Some(&server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let matched: BTreeSet<(String, String)> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("ferry_http_requests_total{route=\""))
        .map(|rest| {
            let (route, rest) = rest.split_once('"').unwrap();
            let method = rest
                .strip_prefix(",method=\"")
                .and_then(|m| m.split_once('"'))
                .unwrap()
                .0;
            (method.to_ascii_lowercase(), route.replace("{*", "{"))
        })
        .collect();
    let documented: BTreeSet<(String, String)> = operations.keys().cloned().collect();
    assert_eq!(matched, documented, "the routes that matched requests");
}

#[tokio::test]
async fn a_real_push_pull_and_refusal_match_their_documented_bodies() {
    let server = Server::start().await;
    let document = document(&server).await;
    let operations = operations(&document);
    let op = |method: &str, path: &str| operations[&(method.to_owned(), path.to_owned())];
    let push = op("post", "/api/sync/push");
    let till = server.pair("Till").await;

    // A push with an applied row and a rejected one: the request the device sends is what the
    // document asks for, and the answer is what it promises.
    let request = json!({
        "device_id": till.id,
        "schema_hash": server.schema_hash,
        "changes": [
            product("p1", "Cola", &v(1, &till.id)),
            sale_item("i1", "no-such-sale", "p1", &v(1, &till.id)),
            tombstone("products", "p0", &v(1, &till.id)),
        ],
    });
    let request_schema = &push["requestBody"]["content"]["application/json"]["schema"];
    assert_valid(&document, request_schema, &request, "a push request");
    let (status, answer) = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&till.token),
            Some(request),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][1]["code"], "fk_violation", "{answer}");
    assert_valid(
        &document,
        response_schema(push, 200),
        &answer,
        "a push answer",
    );
    // A body the document rejects: a change without its version.
    let broken =
        json!({"device_id": till.id, "schema_hash": "x", "changes": [{"table": "t", "pk": {}}]});
    assert!(!validator(&document, request_schema).is_valid(&broken));

    // A pull from the beginning: rows and a tombstone.
    let (status, page) = server.pull(&till, None, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page["changes"].as_array().unwrap().is_empty());
    let pull = op("get", "/api/sync/pull");
    assert_valid(
        &document,
        response_schema(pull, 200),
        &page,
        "a pull answer",
    );

    // Refusals: a missing token, another schema, a bad cursor.
    let refused = server
        .call(Method::POST, "/api/sync/push", None, Some(json!({})))
        .await;
    assert_error(&refused, 401, "unauthorized");
    assert_valid(&document, response_schema(push, 401), &refused.1, "a 401");
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert_valid(
        &document,
        &error_body,
        &refused.1,
        "a 401 as the error body",
    );
    let mismatch = server
        .call(
            Method::POST,
            "/api/sync/push",
            Some(&till.token),
            Some(json!({"device_id": till.id, "schema_hash": "other", "changes": []})),
        )
        .await;
    assert_error(&mismatch, 409, "schema_mismatch");
    assert_valid(&document, response_schema(push, 409), &mismatch.1, "a 409");
    let bad_cursor = server.pull(&till, Some("nonsense"), None).await;
    assert_error(&bad_cursor, 400, "invalid_cursor");
    assert_valid(
        &document,
        response_schema(pull, 400),
        &bad_cursor.1,
        "a 400",
    );
    // A code the document does not list for a status fails its schema.
    let mut wrong = refused.1.clone();
    wrong["error"]["code"] = json!("schema_mismatch");
    assert!(!validator(&document, response_schema(push, 401)).is_valid(&wrong));

    // The change stream's event data.
    let tablet = server.pair("Tablet").await;
    let mut stream = EventStream::open(&server, "/api/sync/stream", &till.token).await;
    server
        .push_ok(&tablet, json!([product("p2", "Tea", &v(2, &tablet.id))]))
        .await;
    let data = stream.wait_for("changed", |_| true).await;
    let events = &op("get", "/api/sync/stream")["responses"]["200"]["content"]["text/event-stream"]
        ["x-ferry-events"];
    assert_valid(&document, &events["changed"], &data, "a changed event");
}
