//! The API's description of itself: an [`Endpoint`] is one route of [`crate::app`] (method, path
//! pattern, handler) together with what it takes and what it answers, and [`document`] turns
//! the list of them (`crate::api`) into the OpenAPI 3.1 document served at
//! `GET /api/openapi.json`.
//!
//! The router and the document are made from the same list, and a route can only be put in it
//! described ([`Route::doc`]), so no route is served undocumented. Each entry names only what
//! is its own: its auth, query, body, answers and the refusals only it makes. What many routes
//! answer alike is added here from those: every route's refusals by the layers in front of all
//! of them (request heads, bodies as sent, requests in flight); the token's refusals from its
//! [`Auth`]; a body's from reading it; the store's from using it. So the list of statuses an
//! operation documents is the list it can answer with.
//!
//! Bodies' schemas are derived from `ferry_proto`'s wire types (`schemars`, JSON Schema 2020-12,
//! which is OpenAPI 3.1's dialect): what a route reads as serde reads it, what it answers as
//! serde writes it. The two differ where a field has a default (a pushed change may leave out
//! `deleted`; a pulled one always has it); a type whose two schemas differ is described twice,
//! the one for requests named `<Type>Input`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;
use ferry_proto::{ErrorBody, ErrorCode};
use ferry_store::{DEFAULT_TENANT, Role};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::AppState;

/// The OpenAPI version of the document; 3.1 is the first whose schemas are plain JSON Schema.
const OPENAPI_VERSION: &str = "3.1.0";

/// Where the document's schemas live, and where request schemas wait until [`Schemas::finish`]
/// knows which of them are the same as the answers' of the same name.
const SCHEMAS: &str = "#/components/schemas/";
const REQUEST_SCHEMAS: &str = "#/components/requestSchemas/";

/// A schema of a type, made by a generator; `schema::<T>` for a wire type `T`.
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A route not described yet: the only thing to do with it is [`Route::doc`].
pub(crate) struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

/// `GET path`, answered by `handler`. Path patterns are the router's: `{name}` for a segment,
/// `{*name}` for the rest of the path.
pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::GET, path, axum::routing::get(handler))
}

pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::POST, path, axum::routing::post(handler))
}

pub(crate) fn put<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::PUT, path, axum::routing::put(handler))
}

pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::DELETE, path, axum::routing::delete(handler))
}

impl Route {
    fn new(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Route {
        Route {
            method,
            path,
            handler,
        }
    }

    /// Describes the route: its `operationId`, who may call it, and what it does in a line.
    pub(crate) fn doc(self, id: &'static str, auth: Auth, summary: &'static str) -> Endpoint {
        Endpoint {
            method: self.method,
            path: self.path,
            handler: self.handler,
            operation: Operation {
                id,
                tag: None,
                summary,
                description: None,
                auth,
                uses_store: auth != Auth::Public,
                path_params: Vec::new(),
                query: None,
                body: None,
                answers: Vec::new(),
                failures: Vec::new(),
            },
        }
    }
}

/// One route and its description.
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) handler: MethodRouter<AppState>,
    operation: Operation,
}

/// Who may call a route. The extractors of `crate::auth` are what checks it; the API test
/// calls every route with every kind of token and holds the two to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// No token.
    Public,
    /// A device token (`DeviceAuth`).
    Device,
    /// Any valid token, or a pairing code that is still good in `X-Ferry-Pairing-Code`
    /// (`SchemaAccess`).
    TokenOrPairingCode,
    /// An operator token of at least this role, for its own tenant (`ReadAccess` for viewers,
    /// `AdminAccess` for admins).
    Tenant(Role),
    /// An operator token of the deployment's own tenant with at least this role
    /// (`DeploymentReader`, `DeploymentOperator`).
    Deployment(Role),
}

/// The document's groups of operations, in the order it lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Sync,
    Pairing,
    Admin,
    Worker,
    Billing,
    Operations,
    Console,
}

impl Tag {
    const ALL: [Tag; 7] = [
        Tag::Sync,
        Tag::Pairing,
        Tag::Admin,
        Tag::Worker,
        Tag::Billing,
        Tag::Operations,
        Tag::Console,
    ];

    fn name(self) -> &'static str {
        match self {
            Tag::Sync => "sync",
            Tag::Pairing => "pairing",
            Tag::Admin => "admin",
            Tag::Worker => "worker",
            Tag::Billing => "billing",
            Tag::Operations => "operations",
            Tag::Console => "console",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Tag::Sync => {
                "The device sync API: the four-step cycle (health, push, pull; the device stamps \
                 its rows itself), the schema, the change stream and the devices list a device \
                 reads."
            }
            Tag::Pairing => "A one-time pairing code becomes a device and its token.",
            Tag::Admin => {
                "Operators of a tenant: pairing codes, devices, the conflict log, whom a token \
                 acts for, and the live event stream of consoles."
            }
            Tag::Worker => {
                "The sync worker API: triggers, state, runs and pins of the server-side sync \
                 jobs. Jobs belong to the whole deployment."
            }
            Tag::Billing => {
                "The billing job's ledger (StEvE to Lago): tag mappings, sessions and their \
                 events, reviews. It belongs to the whole deployment."
            }
            Tag::Operations => {
                "Running the server: metrics, probes for load balancers, and this document."
            }
            Tag::Console => "The admin console's pages, embedded in the binary.",
        }
    }
}

struct Operation {
    id: &'static str,
    tag: Option<Tag>,
    summary: &'static str,
    description: Option<&'static str>,
    auth: Auth,
    /// Whether the route asks the store (always, when it checks a token).
    uses_store: bool,
    /// Each `{name}` of the path, with what it is.
    path_params: Vec<(&'static str, &'static str)>,
    /// A struct whose fields are the query parameters (each `Option`: none is required).
    query: Option<SchemaFn>,
    body: Option<Body>,
    answers: Vec<Answer>,
    failures: Vec<Failure>,
}

struct Body {
    schema: SchemaFn,
    required: bool,
    /// The body may be CSV instead, as this says.
    csv: Option<&'static str>,
}

struct Answer {
    status: u16,
    description: &'static str,
    content: Content,
}

enum Content {
    Json(SchemaFn),
    Empty,
    /// Server-Sent Events: each event's name and the schema of its JSON data.
    Events(Vec<(&'static str, SchemaFn)>),
    /// A body of one of these media types.
    Text(&'static [&'static str]),
    /// A redirect to this location.
    Redirect(&'static str),
}

/// One way a route refuses a request: the status, the contract's code and when.
#[derive(Clone)]
struct Failure {
    status: u16,
    code: ErrorCode,
    when: Cow<'static, str>,
    /// The body's schema when it is not the bare error body.
    body: Option<SchemaFn>,
}

impl Failure {
    fn new(code: ErrorCode, when: impl Into<Cow<'static, str>>) -> Failure {
        Failure::with_status(code.status(), code, when)
    }

    /// For statuses the contract's table does not list (`408`, `414`, `431`), which carry its
    /// closest code.
    fn with_status(status: u16, code: ErrorCode, when: impl Into<Cow<'static, str>>) -> Failure {
        Failure {
            status,
            code,
            when: when.into(),
            body: None,
        }
    }
}

impl Endpoint {
    /// Puts the endpoint under `tag`.
    pub(crate) fn tag(mut self, tag: Tag) -> Endpoint {
        self.operation.tag = Some(tag);
        self
    }

    /// More than the summary says: paragraphs of CommonMark.
    pub(crate) fn describe(mut self, description: &'static str) -> Endpoint {
        self.operation.description = Some(description);
        self
    }

    /// The route asks the store although it checks no token.
    pub(crate) fn uses_store(mut self) -> Endpoint {
        self.operation.uses_store = true;
        self
    }

    /// What the path's `{name}` is. A segment that does not decode (percent-encoded bytes
    /// that are not UTF-8) is refused, as `routes::path_text` does.
    pub(crate) fn path_param(mut self, name: &'static str, description: &'static str) -> Endpoint {
        self.operation.path_params.push((name, description));
        self.fails(
            ErrorCode::InvalidRequest,
            "A path segment is not UTF-8 once percent-decoded.",
        )
    }

    /// The rest of the path (`{*name}`), which may hold slashes; every value is taken.
    pub(crate) fn path_rest(mut self, name: &'static str, description: &'static str) -> Endpoint {
        self.operation.path_params.push((name, description));
        self
    }

    /// The query parameters: the fields of `Q`, the struct the handler reads them into.
    pub(crate) fn query<Q: JsonSchema>(mut self) -> Endpoint {
        // Inline: the parameters are listed one by one, not as a schema of their own.
        self.operation.query = Some(|generator| Q::json_schema(generator));
        self.fails(
            ErrorCode::InvalidRequest,
            "The query string is not valid for this endpoint (a parameter's value is not one \
             it takes).",
        )
    }

    /// A JSON body of type `T`, which the route reads.
    pub(crate) fn body<T: JsonSchema>(self) -> Endpoint {
        self.read_body(schema::<T>, true, None)
    }

    /// A JSON body of type `T` that may be left out (or empty).
    pub(crate) fn optional_body<T: JsonSchema>(self) -> Endpoint {
        self.read_body(schema::<T>, false, None)
    }

    /// A JSON body of type `T`, or CSV as `csv` says (`Content-Type: text/csv`).
    pub(crate) fn body_or_csv<T: JsonSchema>(self, csv: &'static str) -> Endpoint {
        self.read_body(schema::<T>, true, Some(csv))
    }

    fn read_body(
        mut self,
        schema: SchemaFn,
        required: bool,
        csv: Option<&'static str>,
    ) -> Endpoint {
        self.operation.body = Some(Body {
            schema,
            required,
            csv,
        });
        self.fails(
            ErrorCode::InvalidRequest,
            "The body is not JSON of the documented shape (malformed, a wrong type, a missing \
             or unknown field), or it claims gzip and is not.",
        )
        .fails(
            ErrorCode::PayloadTooLarge,
            "The body is larger than the server takes, as sent or decoded; `details` names the \
             limit (`limit_bytes`) and which it is (`measured`).",
        )
        .fails_with(
            408,
            ErrorCode::InvalidRequest,
            "The body did not arrive within the server's body timeout (60 s by default) of \
             the request's head.",
        )
    }

    /// `200` with a JSON body of type `T`.
    pub(crate) fn ok<T: JsonSchema>(self, description: &'static str) -> Endpoint {
        self.answers::<T>(200, description)
    }

    /// `status` with a JSON body of type `T`.
    pub(crate) fn answers<T: JsonSchema>(self, status: u16, description: &'static str) -> Endpoint {
        self.answer(status, description, Content::Json(schema::<T>))
    }

    /// `204` without a body.
    pub(crate) fn no_content(self, description: &'static str) -> Endpoint {
        self.answer(204, description, Content::Empty)
    }

    /// `200` with a stream of Server-Sent Events; add them with [`Endpoint::event`].
    pub(crate) fn events(self, description: &'static str) -> Endpoint {
        self.answer(200, description, Content::Events(Vec::new()))
    }

    /// An event of the route's stream: its name (`event:`) and its data, JSON of type `T`.
    pub(crate) fn event<T: JsonSchema>(mut self, name: &'static str) -> Endpoint {
        let stream = self.operation.answers.iter_mut().find_map(|answer| {
            let Content::Events(events) = &mut answer.content else {
                return None;
            };
            Some(events)
        });
        stream
            .expect("`events` comes before its `event`s")
            .push((name, schema::<T>));
        self
    }

    /// `200` with a body of one of `media_types`, not JSON.
    pub(crate) fn text(
        self,
        media_types: &'static [&'static str],
        description: &'static str,
    ) -> Endpoint {
        self.answer(200, description, Content::Text(media_types))
    }

    /// `status`, a redirect to `location`.
    pub(crate) fn redirect(
        self,
        status: u16,
        location: &'static str,
        description: &'static str,
    ) -> Endpoint {
        self.answer(status, description, Content::Redirect(location))
    }

    fn answer(mut self, status: u16, description: &'static str, content: Content) -> Endpoint {
        self.operation.answers.push(Answer {
            status,
            description,
            content,
        });
        self
    }

    /// A refusal of the route's own: `code` with its status, and when.
    pub(crate) fn fails(mut self, code: ErrorCode, when: &'static str) -> Endpoint {
        self.operation.failures.push(Failure::new(code, when));
        self
    }

    /// A refusal with a status the contract's table does not give `code`.
    pub(crate) fn fails_with(
        mut self,
        status: u16,
        code: ErrorCode,
        when: &'static str,
    ) -> Endpoint {
        self.operation
            .failures
            .push(Failure::with_status(status, code, when));
        self
    }

    /// A refusal whose body is `T` (which carries the error object) rather than the bare
    /// error body.
    pub(crate) fn fails_as<T: JsonSchema>(
        mut self,
        status: u16,
        code: ErrorCode,
        when: &'static str,
    ) -> Endpoint {
        self.operation.failures.push(Failure {
            body: Some(schema::<T>),
            ..Failure::with_status(status, code, when)
        });
        self
    }
}

/// The OpenAPI 3.1 document of `endpoints`.
pub(crate) fn document(endpoints: &[Endpoint]) -> Value {
    let mut schemas = Schemas::new();
    let error_body = schemas.answer(schema::<ErrorBody>);
    let mut paths = Map::new();
    for endpoint in endpoints {
        let operation = endpoint
            .operation
            .render(endpoint.path, &error_body, &mut schemas);
        let item = paths
            .entry(openapi_path(endpoint.path))
            .or_insert_with(|| Value::Object(Map::new()));
        item[endpoint.method.as_str().to_ascii_lowercase()] = operation;
    }
    let mut paths = Value::Object(paths);
    let mut schemas = Value::Object(schemas.finish(&mut paths));
    for described in [&mut paths, &mut schemas] {
        unlink_descriptions(described);
    }
    let tags: Vec<Value> = Tag::ALL
        .iter()
        .map(|tag| json!({"name": tag.name(), "description": tag.description()}))
        .collect();
    json!({
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Ferry",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The HTTP API of Ferry's sync server.",
            "description": INFO,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": security_schemes(),
        },
    })
}

const INFO: &str = "\
The wire contract of `shared/PROTOCOL.md` (v1.1) and Ferry's own additions (README, \"HTTP \
API\"). The server makes this document from the table it builds its router from, so every route \
it serves is here.

Bodies are JSON (UTF-8) unless an operation says otherwise; timestamps are RFC 3339 UTC with \
milliseconds. A request body may be gzip-compressed (`Content-Encoding: gzip`); answers are \
gzip or zstd when the client offers them (`Accept-Encoding`).

Every answer that is not 2xx or 3xx has the body `{\"error\": {\"code\", \"message\", \
\"details\"}}` (`ErrorBody`): programs branch on `code`, people read `message`, and `details` \
adds what a program may use (limits, hashes). Each operation lists the statuses it can answer \
with and, for each refusal, its codes and when. Besides those, a path no route has is \
`404 not_found`, and a method its path does not take is `405 method_not_allowed`, with the same \
body. `HEAD` is answered wherever `GET` is. A request head over hyper's own limits (a target \
over 64 KiB, a head over about 400 KiB or 100 headers) is refused before the server sees it, \
with an empty body.

Tokens travel as `Authorization: Bearer <token>`. A role named in an operation's security \
requirement is the least it needs: roles are ordered viewer < operator < admin.";

fn security_schemes() -> Value {
    json!({
        "deviceToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "A device's token, from `POST /api/devices/pair`: it acts for one \
                device of one tenant. Every request with it checks the device in.",
        },
        "operatorToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "An operator token (`ferry token create`, or the admin token the \
                first start prints) with its role, `viewer`, `operator` or `admin`, acting for \
                its own tenant.",
        },
        "deploymentToken": {
            "type": "http",
            "scheme": "bearer",
            "description": format!(
                "An operator token of the deployment's own tenant (`{DEFAULT_TENANT}`, the one \
                 the first start creates), with its role. The sync jobs, the billing ledger \
                 and `/metrics` serve the whole deployment: another tenant's token, its \
                 admin's included, is refused with `403 forbidden`."
            ),
        },
        "pairingCode": {
            "type": "apiKey",
            "in": "header",
            "name": crate::auth::PAIRING_CODE_HEADER,
            "description": "A pairing code that is still good, checked and not spent: a device \
                about to pair reads the schema with it.",
        },
    })
}

/// The router's pattern in OpenAPI's terms: `{*rest}` is `{rest}` (OpenAPI has no pattern for
/// the rest of a path; the parameter says it may hold slashes).
pub(crate) fn openapi_path(pattern: &str) -> String {
    pattern.replace("{*", "{")
}

impl Operation {
    fn render(&self, path: &str, error_body: &Value, schemas: &mut Schemas) -> Value {
        let mut operation = Map::new();
        operation.insert("operationId".into(), self.id.into());
        if let Some(tag) = self.tag {
            operation.insert("tags".into(), json!([tag.name()]));
        }
        operation.insert("summary".into(), self.summary.into());
        let mut description = auth_sentence(self.auth);
        if let Some(more) = self.description {
            description = format!("{more}\n\n{description}");
        }
        operation.insert("description".into(), description.into());
        operation.insert("security".into(), security(self.auth));
        let parameters = self.parameters(path, schemas);
        if !parameters.is_empty() {
            operation.insert("parameters".into(), parameters.into());
        }
        if let Some(body) = &self.body {
            operation.insert("requestBody".into(), body.render(schemas));
        }
        let mut responses = Map::new();
        for answer in &self.answers {
            responses.insert(answer.status.to_string(), answer.render(schemas));
        }
        for (status, failures) in self.failures_by_status() {
            responses.insert(
                status.to_string(),
                render_failures(status, &failures, error_body, schemas),
            );
        }
        operation.insert("responses".into(), responses.into());
        Value::Object(operation)
    }

    fn parameters(&self, path: &str, schemas: &mut Schemas) -> Vec<Value> {
        let mut parameters = Vec::new();
        for &(name, description) in &self.path_params {
            let rest = path.contains(&format!("{{*{name}}}"));
            let description = if rest {
                format!("{description} The rest of the path: it may hold slashes.")
            } else {
                description.to_owned()
            };
            parameters.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": description,
                "schema": {"type": "string"},
            }));
        }
        let Some(query) = self.query else {
            return parameters;
        };
        let query = schemas.request(query);
        let required: BTreeSet<&str> = query["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (name, property) in query["properties"].as_object().into_iter().flatten() {
            let mut schema = property.clone();
            let description = schema
                .as_object_mut()
                .and_then(|s| s.remove("description"))
                .unwrap_or_default();
            parameters.push(json!({
                "name": name,
                "in": "query",
                "required": required.contains(name.as_str()),
                "description": description,
                "schema": without_null(schema),
            }));
        }
        parameters
    }

    /// Every refusal of the route by status: the layers' that every route has, its token's,
    /// its own (its body's among them), and the store's.
    fn failures_by_status(&self) -> BTreeMap<u16, Vec<Failure>> {
        let mut by_status: BTreeMap<u16, Vec<Failure>> = BTreeMap::new();
        let store = if self.uses_store {
            store_failures()
        } else {
            Vec::new()
        };
        let all = every_route_failures()
            .into_iter()
            .chain(auth_failures(self.auth))
            .chain(self.failures.iter().cloned())
            .chain(store);
        for failure in all {
            let same = by_status.entry(failure.status).or_default();
            // One line per code and case, however many sources name it.
            if !same
                .iter()
                .any(|f| f.code == failure.code && f.when == failure.when)
            {
                same.push(failure);
            }
        }
        by_status
    }
}

/// What the layers in front of every route refuse (`routes::limit_request_head`,
/// `limits::limit_in_flight`, `body::decode`).
fn every_route_failures() -> Vec<Failure> {
    vec![
        Failure::new(
            ErrorCode::InvalidRequest,
            "The path or query holds a NUL byte (`%00`), or the body's `Content-Encoding` is \
             not `gzip` or `identity`.",
        ),
        Failure::new(
            ErrorCode::PayloadTooLarge,
            "The body is declared (`Content-Length`) larger than the server takes (16 MiB by \
             default).",
        ),
        Failure::with_status(
            414,
            ErrorCode::InvalidRequest,
            "The path and query are longer than the server takes (8 KiB by default).",
        ),
        Failure::with_status(
            431,
            ErrorCode::InvalidRequest,
            "The request's headers are larger than the server takes (32 KiB by default).",
        ),
        Failure::new(
            ErrorCode::Unavailable,
            "The server is handling as many requests as it takes at once; `Retry-After` says \
             when to try again.",
        ),
    ]
}

/// What checking the token refuses (`crate::auth`).
fn auth_failures(auth: Auth) -> Vec<Failure> {
    let forbidden = match auth {
        Auth::Public => return Vec::new(),
        Auth::TokenOrPairingCode => None,
        Auth::Device => Some(Cow::Borrowed(
            "The token is an operator's; this endpoint is for devices.",
        )),
        Auth::Tenant(Role::Viewer) => Some(Cow::Borrowed("The token is a device's.")),
        Auth::Tenant(role) => Some(Cow::Owned(format!(
            "The token is a device's, or an operator token below the {} role.",
            role.as_str()
        ))),
        Auth::Deployment(role) => {
            let below = match role {
                Role::Viewer => String::new(),
                role => format!(", or below the {} role", role.as_str()),
            };
            Some(Cow::Owned(format!(
                "The token is a device's, or an operator token of another tenant than the \
                 deployment's own (`{DEFAULT_TENANT}`){below}."
            )))
        }
    };
    let mut failures = vec![
        Failure::new(
            ErrorCode::Unauthorized,
            "There is no `Authorization: Bearer` token, or it is unknown, revoked or expired.",
        ),
        Failure::new(
            ErrorCode::RateLimited,
            "This client address failed to authenticate too often lately; `Retry-After` says \
             when it may try again.",
        ),
    ];
    if let Some(when) = forbidden {
        failures.push(Failure::new(ErrorCode::Forbidden, when));
    }
    if auth == Auth::TokenOrPairingCode {
        failures.push(Failure::new(
            ErrorCode::InvalidPairingCode,
            "The pairing code is unknown, already used or expired.",
        ));
        failures.push(Failure::new(
            ErrorCode::RateLimited,
            "This client address presented bad pairing codes too often lately.",
        ));
    }
    failures
}

/// What a failing store makes of any request that uses it (`ApiError::from(StoreError)`).
fn store_failures() -> Vec<Failure> {
    vec![
        Failure::new(
            ErrorCode::Unavailable,
            "The store cannot be reached right now; try again shortly.",
        ),
        Failure::new(
            ErrorCode::Internal,
            "The server failed; the error is logged, and the body says no more.",
        ),
    ]
}

/// The refusals of one status as a response: each code and when in its description, and a
/// body schema that names those codes.
fn render_failures(
    status: u16,
    failures: &[Failure],
    error_body: &Value,
    schemas: &mut Schemas,
) -> Value {
    let description: Vec<String> = failures
        .iter()
        .map(|f| format!("- `{}`: {}", f.code.as_str(), f.when))
        .collect();
    let mut codes: Vec<&str> = Vec::new();
    let mut bodies: Vec<Value> = Vec::new();
    for failure in failures {
        match failure.body {
            None if !codes.contains(&failure.code.as_str()) => codes.push(failure.code.as_str()),
            None => {}
            Some(body) => {
                let body = schemas.answer(body);
                if !bodies.contains(&body) {
                    bodies.push(body);
                }
            }
        }
    }
    if !codes.is_empty() {
        // The error body, its code narrowed to the ones this status carries here.
        bodies.push(json!({
            "allOf": [
                error_body,
                {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
            ],
        }));
    }
    let schema = match bodies.len() {
        1 => bodies.remove(0),
        _ => json!({ "anyOf": bodies }),
    };
    let mut response = json!({
        "description": description.join("\n"),
        "content": {"application/json": {"schema": schema}},
    });
    if status == 429 || status == 503 {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Whole seconds to wait before trying again (a `429`, and a `503` \
                    of a server with too many requests in flight).",
                "schema": {"type": "integer", "minimum": 1},
            },
        });
    }
    response
}

/// A sentence on who may call an operation, for people reading its description.
fn auth_sentence(auth: Auth) -> String {
    match auth {
        Auth::Public => "**Auth:** none.".to_owned(),
        Auth::Device => "**Auth:** a device token.".to_owned(),
        Auth::TokenOrPairingCode => "**Auth:** any valid token, or a pairing code that is still \
            good in `X-Ferry-Pairing-Code` (checked, not spent)."
            .to_owned(),
        Auth::Tenant(Role::Viewer) => {
            "**Auth:** an operator token of any role, for its own tenant.".to_owned()
        }
        Auth::Tenant(role) => format!(
            "**Auth:** an operator token with the {} role, for its own tenant.",
            role.as_str()
        ),
        Auth::Deployment(role) => format!(
            "**Auth:** an operator token of the deployment's own tenant (`{DEFAULT_TENANT}`) \
             with the {} role or above.",
            role.as_str()
        ),
    }
}

/// The operation's security requirements: any one of them lets a request through.
fn security(auth: Auth) -> Value {
    match auth {
        Auth::Public => json!([]),
        Auth::Device => json!([{"deviceToken": []}]),
        Auth::TokenOrPairingCode => {
            json!([{"deviceToken": []}, {"operatorToken": []}, {"pairingCode": []}])
        }
        Auth::Tenant(role) => json!([{"operatorToken": [role.as_str()]}]),
        Auth::Deployment(role) => json!([{"deploymentToken": [role.as_str()]}]),
    }
}

impl Body {
    fn render(&self, schemas: &mut Schemas) -> Value {
        let mut content = json!({"application/json": {"schema": schemas.request(self.schema)}});
        if let Some(csv) = self.csv {
            content["text/csv"] = json!({"schema": {"type": "string", "description": csv}});
        }
        json!({"required": self.required, "content": content})
    }
}

impl Answer {
    fn render(&self, schemas: &mut Schemas) -> Value {
        let mut response = json!({"description": self.description});
        match &self.content {
            Content::Empty => {}
            Content::Json(schema) => {
                response["content"] =
                    json!({"application/json": {"schema": schemas.answer(*schema)}});
            }
            Content::Events(events) => {
                let events: Map<String, Value> = events
                    .iter()
                    .map(|&(name, schema)| (name.to_owned(), schemas.answer(schema)))
                    .collect();
                response["content"] = json!({"text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "Server-Sent Events: each event is an `event: <name>` \
                            line and a `data: <JSON>` line; `x-ferry-events` gives each \
                            name's data. Comment lines (`: connected` first, `: keep-alive` \
                            after 10 s without an event) keep the stream open.",
                    },
                    "x-ferry-events": events,
                }});
            }
            Content::Text(media_types) => {
                let content: Map<String, Value> = media_types
                    .iter()
                    .map(|&media| (media.to_owned(), json!({"schema": {"type": "string"}})))
                    .collect();
                response["content"] = content.into();
            }
            Content::Redirect(location) => {
                response["headers"] = json!({"Location": {
                    "description": format!("`{location}`."),
                    "schema": {"type": "string", "const": location},
                }});
            }
        }
        response
    }
}

/// Descriptions made from doc comments, without rustdoc's link brackets: "[`Type`]" reads
/// "`Type`".
fn unlink_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    Value::String(text) if key == "description" => {
                        *text = text.replace("[`", "`").replace("`]", "`");
                    }
                    _ => unlink_descriptions(item),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unlink_descriptions),
        _ => {}
    }
}

/// A parameter's schema without the `null` that an `Option` field's schema allows: a
/// parameter is absent, never null.
fn without_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types.remove(0);
        }
    }
    schema
}

/// The document's schemas: two generators, one describing types as the server reads them
/// (requests), one as it writes them (answers), merged by [`Schemas::finish`].
struct Schemas {
    requests: SchemaGenerator,
    answers: SchemaGenerator,
}

impl Schemas {
    fn new() -> Schemas {
        let settings = |path: &'static str| {
            SchemaSettings::draft2020_12().with(|s| {
                s.definitions_path = path.trim_end_matches('/').into();
                s.meta_schema = None;
            })
        };
        Schemas {
            requests: settings(REQUEST_SCHEMAS).for_deserialize().into_generator(),
            answers: settings(SCHEMAS).for_serialize().into_generator(),
        }
    }

    /// The schema of a request's type (a `$ref`, or an inline schema).
    fn request(&mut self, schema: SchemaFn) -> Value {
        schema(&mut self.requests).to_value()
    }

    /// The schema of an answer's type.
    fn answer(&mut self, schema: SchemaFn) -> Value {
        schema(&mut self.answers).to_value()
    }

    /// The document's `components.schemas`; points the request schemas' references in
    /// `document` at them. A request type whose schema is the answer type's of the same name
    /// (with the types it refers to the same too) is described once; otherwise its request
    /// schema is `<Name>Input`.
    fn finish(mut self, document: &mut Value) -> Map<String, Value> {
        let mut schemas = self.answers.take_definitions(true);
        let mut requests = self.requests.take_definitions(true);
        let differ = |name: &str, schema: &Value| {
            schemas.get(name).is_some_and(|answer| {
                let mut schema = schema.clone();
                retarget(&mut schema, &|n| n.to_owned());
                *answer != schema
            })
        };
        let mut renamed: BTreeSet<String> = requests
            .iter()
            .filter(|(name, schema)| differ(name, schema))
            .map(|(name, _)| name.clone())
            .collect();
        // A type that refers to a renamed one is renamed too (when the answers have it).
        loop {
            let more: Vec<String> = requests
                .iter()
                .filter(|(name, schema)| {
                    !renamed.contains(*name)
                        && schemas.contains_key(*name)
                        && references(schema).iter().any(|r| renamed.contains(r))
                })
                .map(|(name, _)| name.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            renamed.extend(more);
        }
        let target = |name: &str| {
            if renamed.contains(name) {
                format!("{name}Input")
            } else {
                name.to_owned()
            }
        };
        for (name, mut schema) in std::mem::take(&mut requests) {
            retarget(&mut schema, &target);
            if renamed.contains(&name) || !schemas.contains_key(&name) {
                schemas.insert(target(&name), schema);
            }
        }
        retarget(document, &target);
        schemas
    }
}

/// Points every request schema reference in `value` at `components.schemas`, under the name
/// `target` gives.
fn retarget(value: &mut Value, target: &dyn Fn(&str) -> String) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    Value::String(reference) if key == "$ref" => {
                        if let Some(name) = reference.strip_prefix(REQUEST_SCHEMAS) {
                            *reference = format!("{SCHEMAS}{}", target(name));
                        }
                    }
                    _ => retarget(item, target),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| retarget(item, target)),
        _ => {}
    }
}

/// The names of the request schemas `value` refers to.
fn references(value: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    match item.as_str().and_then(|r| r.strip_prefix(REQUEST_SCHEMAS)) {
                        Some(name) if key == "$ref" => names.push(name.to_owned()),
                        _ => stack.push(item),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(document: &Value) -> &Map<String, Value> {
        document["components"]["schemas"].as_object().unwrap()
    }

    #[test]
    fn a_type_read_and_written_differently_is_described_twice() {
        let document = document(&crate::api::endpoints());
        let schemas = components(&document);
        // A pulled change always has `deleted`; a pushed one may leave it out.
        let required = |name: &str| schemas[name]["required"].as_array().unwrap().clone();
        assert!(required("RowChange").contains(&json!("deleted")));
        assert!(!required("RowChangeInput").contains(&json!("deleted")));
        assert_eq!(
            schemas["PushRequest"]["properties"]["changes"]["items"]["$ref"],
            "#/components/schemas/RowChangeInput"
        );
        assert_eq!(
            schemas["PullResponse"]["properties"]["changes"]["items"]["$ref"],
            "#/components/schemas/RowChange"
        );
        // A type read and written alike is described once.
        assert!(schemas.contains_key("PairRequest"));
        assert!(
            !schemas
                .keys()
                .any(|name| name.ends_with("Input") && name != "RowChangeInput")
        );
        assert!(!document.to_string().contains("requestSchemas"));
    }

    #[test]
    fn an_operation_lists_its_own_refusals_beside_the_shared_ones() {
        let document = document(&crate::api::endpoints());
        let pull = &document["paths"]["/api/sync/pull"]["get"]["responses"];
        let codes = &pull["400"]["content"]["application/json"]["schema"]["allOf"][1]["properties"]
            ["error"]["properties"]["code"]["enum"];
        assert_eq!(*codes, json!(["invalid_request", "invalid_cursor"]));
        for status in ["401", "403", "414", "429", "431", "500", "503"] {
            assert!(pull[status].is_object(), "{status}");
        }
        assert!(pull["408"].is_null(), "a pull reads no body");
        assert!(pull["429"]["headers"]["Retry-After"].is_object());
        // Descriptions read without rustdoc's link brackets.
        assert!(!document.to_string().contains("[`"));
    }
}
