//! Every route of the HTTP API, described: the one list that [`crate::app`] builds its router
//! from and that `GET /api/openapi.json` documents (see `openapi`). A route is added here, in
//! its area, and nowhere else; its handler lives in `routes`.
//!
//! Each entry says who may call the route, what it reads and answers, and the refusals that
//! are its own; the ones it shares with others (request limits, tokens, bodies, the store)
//! are added from those by `openapi`.

use ferry_proto::billing::{
    ImportMappings, ImportResponse, Mapping, MappingsResponse, PutMapping, ReviewRequest, Session,
    SessionsResponse,
};
use ferry_proto::worker::{
    PinRequest, RunsResponse, SyncRun, SyncState, TriggerRequest, TriggerResponse,
};
use ferry_proto::{
    ChangedEvent, ConflictsResponse, DeviceInfo, DevicesResponse, ErrorCode, Health,
    HealthUnavailable, PairRequest, PairResponse, PairingCode, ProbeStatus, PullResponse,
    PushRequest, PushResponse, SchemaResponse, SyncDevicesResponse, WhoAmI,
};
use ferry_store::Role;
use serde_json::{Map, Value};

use crate::openapi::{Auth, Endpoint, Tag, delete, get, post, put};
use crate::routes::{self, admin, billing, changes, console, devices, events, sync, worker};

/// Every route, by area.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    [
        (Tag::Sync, device_sync()),
        (Tag::Pairing, pairing()),
        (Tag::Admin, tenant_admin()),
        (Tag::Worker, sync_worker()),
        (Tag::Billing, billing_ledger()),
        (Tag::Operations, operations()),
        (Tag::Console, admin_console()),
    ]
    .into_iter()
    .flat_map(|(tag, endpoints)| endpoints.into_iter().map(move |e| e.tag(tag)))
    .collect()
}

fn device_sync() -> Vec<Endpoint> {
    vec![
        get("/api/sync/health", sync::health)
            .doc(
                "health",
                Auth::Public,
                "Whether the server and its store are up",
            )
            .describe("Clients give it a 5 s timeout.")
            .ok::<Health>("Up: the server's time and version, and the schema hash devices send.")
            .fails_as::<HealthUnavailable>(
                503,
                ErrorCode::Unavailable,
                "The store cannot be reached: the health shape with `status` `unavailable`, \
                 and `error`.",
            )
            .fails_as::<HealthUnavailable>(
                503,
                ErrorCode::Internal,
                "The store failed otherwise; the same shape.",
            ),
        post("/api/sync/push", sync::push)
            .doc("push", Auth::Device, "Push a batch of row changes")
            .describe(
                "One transaction. The server orders the batch by foreign-key dependency \
                 (parents first), keeps the greater version of each row (last-write-wins) and \
                 logs the losing one as a conflict. Pushing the same batch twice changes nothing \
                 the second time. `pending` is how many dirty rows the device still holds.",
            )
            .body::<PushRequest>()
            .ok::<PushResponse>(
                "One result per change, in request order: `applied`, `duplicate`, `superseded` \
                 (all confirmed: the device clears their dirty flag) or `rejected` with `code` \
                 and `message` (the row stays dirty).",
            )
            .fails(
                ErrorCode::Forbidden,
                "`device_id` is not the device the token belongs to.",
            )
            .fails(
                ErrorCode::SchemaMismatch,
                "`schema_hash` is not the server's; `details` has both hashes.",
            )
            .fails(
                ErrorCode::PayloadTooLarge,
                "The push holds more changes than the server takes in one request (10,000 by \
                 default; `details.limit_changes`).",
            ),
        get("/api/sync/pull", sync::pull)
            .doc("pull", Auth::Device, "The tenant's changes after a cursor")
            .describe(
                "Changes in commit order after `since`, each row at most once per page at its \
                 latest version, tombstones included. Without `since`, all pages until \
                 `has_more` is false are the whole tenant snapshot, the device's own rows \
                 included. A page ends at `limit` rows or before the change that would take it \
                 over the server's page size (8 MiB of changes by default).",
            )
            .query::<sync::PullParams>()
            .ok::<PullResponse>(
                "A page of changes and the cursor to pull from next; `has_more` says whether \
                 another page follows.",
            )
            .fails(
                ErrorCode::InvalidCursor,
                "`since` is not a cursor this server handed out, or is ahead of everything it \
                 has stored (another server, or a reset store): pull without `since` to start \
                 over.",
            ),
        get("/api/sync/schema", sync::schema)
            .doc(
                "schema",
                Auth::TokenOrPairingCode,
                "The synced schema as SQLite DDL",
            )
            .describe(
                "Ferry's own. A device about to pair checks with its pairing code that its file \
                 can take the schema before it redeems the code.",
            )
            .ok::<SchemaResponse>("The schema's hash and its DDL."),
        get("/api/sync/stream", changes::stream)
            .doc(
                "changeStream",
                Auth::Device,
                "Events telling the device its tenant has rows it has not pulled",
            )
            .describe(
                "After each push of another device of the tenant that wrote rows, a `changed` \
                 event with the cursor a pull reaches once it has them; whichever instance took \
                 the write. Events coalesce while the device reads slowly. A hint only: a device \
                 that misses one loses nothing, since its cadence still runs. The stream ends \
                 when the server shuts down or the device is revoked.",
            )
            .events("The event stream.")
            .event::<ChangedEvent>("changed"),
        get("/api/sync/devices", devices::list)
            .doc(
                "listTenantDevices",
                Auth::Device,
                "The devices of the device's own tenant",
            )
            .ok::<SyncDevicesResponse>(
                "Each device as the admin list has it, and whether it is the one that asks.",
            ),
        delete("/api/sync/device", devices::revoke_self)
            .doc(
                "revokeThisDevice",
                Auth::Device,
                "The device gives up its identity",
            )
            .describe(
                "Ferry's own, as a file paired again does with its old identity. The device \
                 stays in the list, revoked.",
            )
            .no_content("Revoked: the token no longer works."),
    ]
}

fn pairing() -> Vec<Endpoint> {
    vec![
        post("/api/devices/pair", devices::pair)
            .doc(
                "pair",
                Auth::Public,
                "Redeem a pairing code for a device and its token",
            )
            .describe("Codes are one-time and expire (15 min by default).")
            .uses_store()
            .body::<PairRequest>()
            .answers::<PairResponse>(201, "Paired: the device's id, its tenant and its token.")
            .fails(
                ErrorCode::InvalidRequest,
                "`name` is not 1 to 200 characters, `platform` is over 200, or either holds a \
                 control character.",
            )
            .fails(
                ErrorCode::InvalidPairingCode,
                "The code is unknown, already used or expired.",
            )
            .fails(
                ErrorCode::RateLimited,
                "This client address presented bad codes too often lately; `Retry-After` says \
                 when it may try again.",
            ),
    ]
}

fn tenant_admin() -> Vec<Endpoint> {
    vec![
        post("/api/admin/pairing-codes", admin::create_pairing_code)
            .doc(
                "createPairingCode",
                Auth::Tenant(Role::Admin),
                "A new one-time pairing code for the tenant",
            )
            .describe("Ferry's own; `ferry pair-code` is the CLI. A request body is ignored.")
            .answers::<PairingCode>(201, "The code, its tenant and when it expires."),
        get("/api/admin/devices", admin::list_devices)
            .doc(
                "listDevices",
                Auth::Tenant(Role::Viewer),
                "The tenant's devices, revoked ones included",
            )
            .ok::<DevicesResponse>("The devices."),
        delete("/api/admin/devices/{device_id}", admin::revoke_device)
            .doc(
                "revokeDevice",
                Auth::Tenant(Role::Admin),
                "Revoke a device's token",
            )
            .path_param("device_id", "The device's id.")
            .no_content("Revoked.")
            .fails(
                ErrorCode::NotFound,
                "The tenant has no such device (another tenant's is not found either).",
            ),
        get("/api/admin/conflicts", admin::conflicts)
            .doc(
                "listConflicts",
                Auth::Tenant(Role::Viewer),
                "The conflict log: overwritten (losing) versions, newest first",
            )
            .query::<admin::ConflictParams>()
            .ok::<ConflictsResponse>("The conflicts.")
            .fails(
                ErrorCode::InvalidRequest,
                "`pk` without `table`, a table not in the schema, or a `pk` that names no row \
                 of it.",
            ),
        get("/api/admin/whoami", console::whoami)
            .doc(
                "whoAmI",
                Auth::Tenant(Role::Viewer),
                "Whom the token acts for and what it reaches",
            )
            .describe("Ferry's own: a console offers only what the token may do.")
            .ok::<WhoAmI>("The token's tenant and role, and what it reaches."),
        get("/api/admin/events", events::events)
            .doc(
                "adminEvents",
                Auth::Tenant(Role::Viewer),
                "Live events for consoles",
            )
            .describe(
                "`run` (a run started or finished; as the runs list has it, without log lines) \
                 and `state` (a job's state) go to tokens of the deployment's tenant only; \
                 `device` (a device checked in, pushed or pulled; its devices-list entry) to \
                 tokens of the device's tenant, at most once a second per device. A record \
                 that did not change is not sent again. No event carries a token.",
            )
            .events("The event stream.")
            .event::<SyncRun>("run")
            .event::<SyncState>("state")
            .event::<DeviceInfo>("device"),
    ]
}

fn sync_worker() -> Vec<Endpoint> {
    const NO_JOB: &str = "The server runs no sync jobs, or none of the name `job` gives.";
    vec![
        post("/api/admin/sync/trigger", worker::trigger)
            .doc(
                "triggerSync",
                Auth::Deployment(Role::Operator),
                "Run a sync job now",
            )
            .describe(
                "The trigger is stored before the worker is told, so one sent while no worker \
                 runs is picked up when one starts. Returns at once; it never waits for the \
                 run. The job's tier becomes `active`.",
            )
            .optional_body::<TriggerRequest>()
            .answers::<TriggerResponse>(202, "Stored, and the worker told.")
            .fails(ErrorCode::NotFound, NO_JOB),
        get("/api/admin/sync/state", worker::state)
            .doc(
                "syncState",
                Auth::Deployment(Role::Viewer),
                "A job's cadence, its last run and the worker's listener",
            )
            .query::<worker::JobParam>()
            .ok::<SyncState>("The job's state.")
            .fails(ErrorCode::NotFound, NO_JOB),
        get("/api/admin/sync/runs", worker::runs)
            .doc(
                "listRuns",
                Auth::Deployment(Role::Viewer),
                "Runs, newest first",
            )
            .query::<worker::RunsParams>()
            .ok::<RunsResponse>("The runs, without their log lines.")
            .fails(ErrorCode::NotFound, NO_JOB),
        get("/api/admin/sync/runs/{id}", worker::run)
            .doc(
                "getRun",
                Auth::Deployment(Role::Viewer),
                "One run with its log lines",
            )
            .path_param("id", "The run's id.")
            .ok::<SyncRun>("The run, its log lines and, for a billing run, its events.")
            .fails(
                ErrorCode::NotFound,
                "There is no such run, or the server runs no sync jobs.",
            ),
        post("/api/admin/sync/pin", worker::pin)
            .doc(
                "pinTier",
                Auth::Deployment(Role::Operator),
                "Run a job at a tier for a while",
            )
            .body::<PinRequest>()
            .ok::<SyncState>("Pinned: the job's state.")
            .fails(
                ErrorCode::InvalidRequest,
                "`tier` is not `active`, `idle` or `dormant`, or `hours` is not more than 0 and \
                 at most 8784.",
            )
            .fails(ErrorCode::NotFound, NO_JOB),
        delete("/api/admin/sync/pin", worker::unpin)
            .doc(
                "unpinTier",
                Auth::Deployment(Role::Operator),
                "End a job's pin",
            )
            .query::<worker::JobParam>()
            .ok::<SyncState>("Unpinned: the job's state.")
            .fails(ErrorCode::NotFound, NO_JOB),
    ]
}

fn billing_ledger() -> Vec<Endpoint> {
    const NO_BILLING: &str = "The server does not run the billing job.";
    const BAD_IDS: &str = "A tag, customer or subscription id is empty, over 255 bytes, holds a \
                           control character or starts or ends with white space.";
    vec![
        get("/api/admin/billing/mappings", billing::mappings)
            .doc(
                "listMappings",
                Auth::Deployment(Role::Viewer),
                "Tags' mappings to Lago customers",
            )
            .ok::<MappingsResponse>("Every mapping.")
            .fails(ErrorCode::NotFound, NO_BILLING),
        post("/api/admin/billing/mappings", billing::import_mappings)
            .doc(
                "importMappings",
                Auth::Deployment(Role::Operator),
                "Many mappings at once, all or none",
            )
            .describe("Ferry's own. A tag's own `PUT` stays free for any tag name.")
            .body_or_csv::<ImportMappings>(
                "Rows `tag,customer[,subscription]`; the subscription may be empty; a first row \
                 whose first field is `tag` or `id_tag` names the columns and is skipped.",
            )
            .ok::<ImportResponse>("Imported.")
            .fails(
                ErrorCode::InvalidRequest,
                "A row is not a mapping, or maps a tag twice (`details` names its `index`, or \
                 its CSV `line`), or the import holds none.",
            )
            .fails(ErrorCode::InvalidRequest, BAD_IDS)
            .fails(ErrorCode::NotFound, NO_BILLING),
        put("/api/admin/billing/mappings/{id_tag}", billing::put_mapping)
            .doc(
                "putMapping",
                Auth::Deployment(Role::Operator),
                "Create or replace a tag's mapping",
            )
            .path_param("id_tag", "The OCPP id tag.")
            .body::<PutMapping>()
            .ok::<Mapping>("The mapping as stored.")
            .fails(ErrorCode::InvalidRequest, BAD_IDS)
            .fails(ErrorCode::NotFound, NO_BILLING),
        delete(
            "/api/admin/billing/mappings/{id_tag}",
            billing::delete_mapping,
        )
        .doc(
            "deleteMapping",
            Auth::Deployment(Role::Operator),
            "Delete a tag's mapping",
        )
        .path_param("id_tag", "The OCPP id tag.")
        .no_content("Deleted.")
        .fails(
            ErrorCode::NotFound,
            "The tag has no mapping, or the server does not run the billing job.",
        ),
        get("/api/admin/billing/sessions", billing::sessions)
            .doc(
                "listSessions",
                Auth::Deployment(Role::Viewer),
                "Charging sessions, newest first, each with its events",
            )
            .query::<billing::SessionsParams>()
            .ok::<SessionsResponse>("The sessions.")
            .fails(ErrorCode::NotFound, NO_BILLING),
        get("/api/admin/billing/sessions/{id}", billing::session_detail)
            .doc(
                "getSession",
                Auth::Deployment(Role::Viewer),
                "One session with its events",
            )
            .path_param("id", "The session's StEvE transaction id.")
            .ok::<Session>("The session.")
            .fails(
                ErrorCode::NotFound,
                "The ledger has no such session, or the server does not run the billing job.",
            ),
        post("/api/admin/billing/sessions/{id}/review", billing::review)
            .doc(
                "reviewSession",
                Auth::Deployment(Role::Operator),
                "Bill or ignore a session that needs review",
            )
            .describe(
                "After `bill`, a trigger is stored so the billing job bills the session at once.",
            )
            .path_param("id", "The session's StEvE transaction id.")
            .body::<ReviewRequest>()
            .ok::<Session>("Settled: the session.")
            .fails(
                ErrorCode::InvalidRequest,
                "`action` is not `bill` or `ignore`, or the session is not in `needs_review` \
                 (`details.state` says where it is).",
            )
            .fails(
                ErrorCode::NotFound,
                "The ledger has no such session, or the server does not run the billing job.",
            ),
    ]
}

fn operations() -> Vec<Endpoint> {
    vec![
        get("/metrics", routes::metrics)
            .doc(
                "metrics",
                Auth::Deployment(Role::Viewer),
                "Prometheus metrics of the sync engine and the in-process worker",
            )
            .text(
                &["text/plain; version=0.0.4"],
                "Prometheus text exposition (README, HTTP API, lists the metrics).",
            ),
        get("/livez", routes::live)
            .doc(
                "live",
                Auth::Public,
                "Liveness probe: the process serves requests",
            )
            .describe(
                "It asks nothing of the store, so a database outage never gets a healthy process \
                 restarted.",
            )
            .ok::<ProbeStatus>("`{\"status\": \"ok\"}`."),
        get("/readyz", routes::ready)
            .doc(
                "ready",
                Auth::Public,
                "Readiness probe: the store answers and the instance is not shutting down",
            )
            .uses_store()
            .ok::<ProbeStatus>("`{\"status\": \"ok\"}`.")
            .fails(
                ErrorCode::Unavailable,
                "The server is shutting down: it finishes the requests in flight and takes no \
                 new ones.",
            ),
        get("/api/openapi.json", routes::openapi)
            .doc("openapi", Auth::Public, "This document")
            .describe("Made from the table the server builds its router from.")
            .ok::<Map<String, Value>>("The OpenAPI 3.1 document of the API."),
    ]
}

fn admin_console() -> Vec<Endpoint> {
    const PAGES: &[&str] = &["text/html", "text/css", "text/javascript", "image/svg+xml"];
    vec![
        get("/console", console::redirect)
            .doc(
                "consoleRedirect",
                Auth::Public,
                "The console lives under `/console/`",
            )
            .redirect(308, "/console/", "Where the console's relative links work."),
        get("/console/", console::asset)
            .doc("console", Auth::Public, "The admin console's page")
            .describe(
                "A thin client of this API: people sign in with an operator token, which the \
                 page keeps in the tab's session storage.",
            )
            .text(
                &["text/html"],
                "The page, with a Content-Security-Policy that allows only its own scripts and \
                 styles.",
            ),
        get("/console/{*path}", console::asset)
            .doc("consoleAsset", Auth::Public, "A file of the admin console")
            .path_rest("path", "The file's path under `/console/`.")
            .text(PAGES, "The file.")
            .fails(ErrorCode::NotFound, "The console has no such file."),
    ]
}
