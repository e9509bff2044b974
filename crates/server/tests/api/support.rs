//! A server on a real socket over a real store, and helpers to talk to it.
//!
//! This suite runs twice: as `api` on SQLite files and as `api_postgres` on a fresh
//! PostgreSQL database per test (see `tests/api_postgres.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ferry_proto::{Conflict, DeviceInfo, PairResponse, PairingCode, PushResult};
use ferry_server::{AppState, Config};
use ferry_store::{
    BillingStore, ConflictQuery, Cursor, DeviceKey, JobStore, PageLimit, Principal, PullPage,
    PushBatch, Role, Store, StoreError, TenantInfo,
};
pub(crate) use ferry_testkit::wait_for;
use ferry_testkit::{Backend, TestStore};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) const DEFAULT_TENANT: &str = ferry_store::DEFAULT_TENANT;
/// The sync job every test server's worker API knows.
pub(crate) const PROBE: &str = "probe";

/// The store this test binary runs on.
pub(crate) fn backend() -> Backend {
    Backend::of_binary(env!("CARGO_CRATE_NAME"))
}

/// A new, empty store of this binary's backend.
pub(crate) async fn test_store() -> TestStore {
    TestStore::new(backend()).await
}

/// A server on 127.0.0.1:0 with its own data directory.
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) admin: String,
    pub(crate) store: Arc<dyn Store>,
    /// The same store's sync job state (the sync worker API serves job [`PROBE`]).
    pub(crate) jobs: Arc<dyn JobStore>,
    /// The same store's billing ledger, which the billing API serves (as `ferry serve` does).
    pub(crate) billing: Arc<dyn BillingStore>,
    /// Switches and signals wrapped around the real store.
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) schema_hash: String,
    /// Shared so that a test can keep the store after stopping the server.
    pub(crate) storage: Arc<TestStore>,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A paired device.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) tenant: String,
}

impl Server {
    /// The built-in point-of-sale schema and default settings.
    pub(crate) async fn start() -> Server {
        Server::start_with(None, |_| {}).await
    }

    pub(crate) async fn start_with(
        ddl: Option<&str>,
        configure: impl FnOnce(&mut Config),
    ) -> Server {
        Server::start_in(test_store().await, ddl, configure).await
    }

    /// A server on a store the test made (say, with its own pool options).
    pub(crate) async fn start_in(
        storage: TestStore,
        ddl: Option<&str>,
        configure: impl FnOnce(&mut Config),
    ) -> Server {
        let opened = ferry_server::init::open(&storage.location, ddl)
            .await
            .unwrap();
        let hooks = Arc::new(Hooks::default());
        let store: Arc<dyn Store> = Arc::new(HookedStore {
            inner: opened.store,
            hooks: hooks.clone(),
        });
        let mut config = Config::new(opened.schema);
        config.sync_jobs = vec![PROBE.to_owned()];
        configure(&mut config);
        let schema_hash = config.schema_hash.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let jobs = opened.jobs;
        let billing = opened.billing;
        let state = AppState::new(store.clone(), config)
            .with_jobs(jobs.clone())
            .with_billing(billing.clone());
        let task = tokio::spawn(ferry_server::serve(listener, state, shutdown.clone()));
        Server {
            url,
            // A store that already existed (a second instance) printed its token before.
            admin: opened.admin_token.unwrap_or_default(),
            store,
            jobs,
            billing,
            hooks,
            schema_hash,
            storage: Arc::new(storage),
            http: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has drained.
    pub(crate) async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.task.take().unwrap().await.unwrap()
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) async fn code(&self, tenant: &str) -> String {
        ferry_server::init::create_pairing_code(&self.store, tenant, Duration::from_secs(900))
            .await
            .unwrap()
            .code
    }

    pub(crate) async fn pair(&self, name: &str) -> Device {
        self.pair_in(DEFAULT_TENANT, name).await
    }

    pub(crate) async fn pair_in(&self, tenant: &str, name: &str) -> Device {
        let code = self.code(tenant).await;
        let (status, body) = self
            .call(
                Method::POST,
                "/api/devices/pair",
                None,
                Some(json!({"code": code, "name": name, "platform": "test"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let paired: PairResponse = serde_json::from_value(body).unwrap();
        assert_eq!(paired.tenant, tenant);
        Device {
            id: paired.device_id,
            token: paired.token,
            tenant: paired.tenant,
        }
    }

    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request).await
    }

    /// Pushes `changes` as `device` with the server's schema hash.
    pub(crate) async fn push(&self, device: &Device, changes: Value) -> (u16, Value) {
        let body = json!({
            "device_id": device.id,
            "schema_hash": self.schema_hash,
            "changes": changes,
            "pending": 0,
        });
        self.call(
            Method::POST,
            "/api/sync/push",
            Some(&device.token),
            Some(body),
        )
        .await
    }

    /// [`Server::push`] on a task of its own, for a push the test holds up or kills.
    pub(crate) fn spawn_push(
        &self,
        device: &Device,
        changes: Value,
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let body = json!({
            "device_id": device.id,
            "schema_hash": self.schema_hash,
            "changes": changes,
            "pending": 0,
        });
        let request = self
            .request(Method::POST, "/api/sync/push", Some(&device.token))
            .json(&body);
        tokio::spawn(send(request))
    }

    /// Pushes and returns the outcomes (with codes for rejections), asserting a 200.
    pub(crate) async fn push_ok(&self, device: &Device, changes: Value) -> Vec<String> {
        let (status, body) = self.push(device, changes).await;
        assert_eq!(status, 200, "{body}");
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match r["code"].as_str() {
                Some(code) => format!("rejected:{code}"),
                None => r["outcome"].as_str().unwrap().to_owned(),
            })
            .collect()
    }

    pub(crate) async fn pull(
        &self,
        device: &Device,
        since: Option<&str>,
        limit: Option<u32>,
    ) -> (u16, Value) {
        let mut path = "/api/sync/pull?".to_owned();
        if let Some(since) = since {
            path.push_str(&format!("since={since}&"));
        }
        if let Some(limit) = limit {
            path.push_str(&format!("limit={limit}"));
        }
        self.call(Method::GET, &path, Some(&device.token), None)
            .await
    }

    /// Pulls every page after `since`; returns the changes and the final cursor.
    pub(crate) async fn pull_all(
        &self,
        device: &Device,
        since: Option<&str>,
    ) -> (Vec<Value>, String) {
        let mut since = since.map(str::to_owned);
        let mut changes = Vec::new();
        loop {
            let (status, body) = self.pull(device, since.as_deref(), None).await;
            assert_eq!(status, 200, "{body}");
            changes.extend(body["changes"].as_array().unwrap().iter().cloned());
            since = Some(body["cursor"].as_str().unwrap().to_owned());
            if !body["has_more"].as_bool().unwrap() {
                return (changes, since.unwrap());
            }
        }
    }

    /// The tenant's rows as a fresh device would see them: `table/pk -> version`, sorted.
    pub(crate) async fn snapshot(&self, tenant: &str) -> Vec<(String, String, bool)> {
        let observer = self.pair_in(tenant, "observer").await;
        let (changes, _) = self.pull_all(&observer, None).await;
        let mut rows: Vec<(String, String, bool)> = changes
            .iter()
            .map(|c| {
                (
                    format!("{}/{}", c["table"].as_str().unwrap(), c["pk"]),
                    c["version"].as_str().unwrap().to_owned(),
                    c["deleted"].as_bool().unwrap(),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    pub(crate) async fn devices(&self) -> Vec<DeviceInfo> {
        let (status, body) = self
            .call(Method::GET, "/api/admin/devices", Some(&self.admin), None)
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["devices"].clone()).unwrap()
    }

    pub(crate) async fn device(&self, id: &str) -> DeviceInfo {
        self.devices()
            .await
            .into_iter()
            .find(|d| d.device_id == id)
            .expect("the device is listed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

/// Asserts the contract's error body and returns its message.
#[track_caller]
pub(crate) fn assert_error(got: &(u16, Value), status: u16, code: &str) -> String {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["details"].is_object(), "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A version `step` milliseconds after a base an hour ago: `v(1, n) < v(2, n)`.
pub(crate) fn v(step: i64, node: &str) -> String {
    // An hour back keeps every test version well inside the clock-skew window.
    let base = (now_ms() / 3_600_000 - 1) * 3_600_000;
    ferry_core::version::format(base + step, 0, node)
}

pub(crate) fn category(id: &str, parent: Option<&str>, version: &str) -> Value {
    json!({"table": "categories", "pk": {"id": id}, "version": version,
           "data": {"id": id, "name": format!("Category {id}"), "parent_id": parent}})
}

pub(crate) fn product(id: &str, name: &str, version: &str) -> Value {
    json!({"table": "products", "pk": {"id": id}, "version": version,
           "data": {"id": id, "name": name, "price_cents": 250}})
}

pub(crate) fn customer(id: &str, version: &str) -> Value {
    json!({"table": "customers", "pk": {"id": id}, "version": version,
           "data": {"id": id, "name": format!("Customer {id}")}})
}

pub(crate) fn sale(id: &str, customer: Option<&str>, version: &str) -> Value {
    json!({"table": "sales", "pk": {"id": id}, "version": version,
           "data": {"id": id, "customer_id": customer, "created_at": "2026-11-21T12:00:00.000Z"}})
}

pub(crate) fn sale_item(id: &str, sale: &str, product: &str, version: &str) -> Value {
    json!({"table": "sale_items", "pk": {"id": id}, "version": version,
           "data": {"id": id, "sale_id": sale, "product_id": product, "unit_price_cents": 250}})
}

pub(crate) fn tombstone(table: &str, id: &str, version: &str) -> Value {
    json!({"table": table, "pk": {"id": id}, "version": version, "deleted": true})
}

/// Test switches around the real store: take it down, or learn when a request reached it.
#[derive(Default)]
pub(crate) struct Hooks {
    /// While set, every call fails as if the database could not be reached.
    pub(crate) down: AtomicBool,
    /// Notified when a push reaches the store (the request is then in flight).
    pub(crate) push_started: Notify,
    /// While set, a push waits for `release_push` before it runs.
    pub(crate) hold_push: AtomicBool,
    pub(crate) release_push: Notify,
}

struct HookedStore {
    inner: Arc<dyn Store>,
    hooks: Arc<Hooks>,
}

impl HookedStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.hooks.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "unable to open database file (test)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for HookedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
    async fn list_tenants(&self) -> Result<Vec<TenantInfo>, StoreError> {
        self.check()?;
        self.inner.list_tenants().await
    }
    async fn create_tenant(&self, tenant: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.create_tenant(tenant).await
    }
    async fn create_operator_token(
        &self,
        tenant: &str,
        role: Role,
        expires_at_ms: Option<i64>,
    ) -> Result<String, StoreError> {
        self.check()?;
        self.inner
            .create_operator_token(tenant, role, expires_at_ms)
            .await
    }
    fn pool_status(&self) -> Option<ferry_store::PoolStatus> {
        self.inner.pool_status()
    }
    async fn last_change(&self, tenant: &str) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.last_change(tenant).await
    }
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        self.check()?;
        self.inner.authenticate(token).await
    }
    async fn revoke_token(&self, token: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.revoke_token(token).await
    }
    async fn create_pairing_code(
        &self,
        tenant: &str,
        ttl: Duration,
    ) -> Result<PairingCode, StoreError> {
        self.check()?;
        self.inner.create_pairing_code(tenant, ttl).await
    }
    async fn pairing_code_tenant(&self, code: &str) -> Result<Option<String>, StoreError> {
        self.check()?;
        self.inner.pairing_code_tenant(code).await
    }
    async fn redeem_pairing_code(
        &self,
        code: &str,
        name: &str,
        platform: Option<&str>,
    ) -> Result<Option<PairResponse>, StoreError> {
        self.check()?;
        self.inner.redeem_pairing_code(code, name, platform).await
    }
    async fn check_in(
        &self,
        device: &DeviceKey,
        client_version: Option<&str>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.check_in(device, client_version).await
    }
    async fn authenticate_and_check_in(
        &self,
        token: &str,
        client_version: Option<&str>,
    ) -> Result<Option<Principal>, StoreError> {
        self.check()?;
        self.inner
            .authenticate_and_check_in(token, client_version)
            .await
    }
    async fn list_devices(&self, tenant: &str) -> Result<Vec<DeviceInfo>, StoreError> {
        self.check()?;
        self.inner.list_devices(tenant).await
    }
    async fn revoke_device(&self, tenant: &str, device_id: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.revoke_device(tenant, device_id).await
    }
    async fn push(
        &self,
        device: &DeviceKey,
        batch: PushBatch,
    ) -> Result<Vec<PushResult>, StoreError> {
        self.check()?;
        if self.hooks.hold_push.load(Ordering::SeqCst) {
            let released = self.hooks.release_push.notified();
            self.hooks.push_started.notify_one();
            released.await;
        }
        self.inner.push(device, batch).await
    }
    async fn pull(
        &self,
        device: &DeviceKey,
        since: Cursor,
        limit: PageLimit,
    ) -> Result<PullPage, StoreError> {
        self.check()?;
        self.inner.pull(device, since, limit).await
    }
    async fn conflicts(
        &self,
        tenant: &str,
        query: ConflictQuery,
    ) -> Result<Vec<Conflict>, StoreError> {
        self.check()?;
        self.inner.conflicts(tenant, query).await
    }
    async fn schema_ddl(&self) -> Result<Option<String>, StoreError> {
        self.check()?;
        self.inner.schema_ddl().await
    }
    async fn set_schema_ddl(&self, ddl: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.set_schema_ddl(ddl).await
    }
    async fn events(&self) -> Result<ferry_store::StoreEvents, StoreError> {
        self.check()?;
        self.inner.events().await
    }
}

/// A sync job for tests: each run counts itself and, while the gate is closed, waits for the
/// test to open it; a run may be told to panic.
pub(crate) struct GateJob {
    name: String,
    gate: tokio::sync::Semaphore,
    pub(crate) runs: std::sync::atomic::AtomicUsize,
    running: std::sync::atomic::AtomicUsize,
    pub(crate) most_at_once: std::sync::atomic::AtomicUsize,
    pub(crate) panic_next: AtomicBool,
}

impl GateJob {
    /// Runs wait until [`GateJob::open`].
    pub(crate) fn closed(name: &str) -> Arc<GateJob> {
        Arc::new(GateJob {
            name: name.to_owned(),
            gate: tokio::sync::Semaphore::new(0),
            runs: Default::default(),
            running: Default::default(),
            most_at_once: Default::default(),
            panic_next: AtomicBool::new(false),
        })
    }

    /// Runs go straight through.
    pub(crate) fn open_now(name: &str) -> Arc<GateJob> {
        let job = GateJob::closed(name);
        job.open();
        job
    }

    pub(crate) fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    pub(crate) fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl ferry_worker::job::SyncJob for GateJob {
    fn name(&self) -> &str {
        &self.name
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ferry_worker::job::RunContext,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = ferry_worker::job::RunOutcome> + Send + 'a>,
    > {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            self.runs.fetch_add(1, Ordering::SeqCst);
            ctx.log(tracing::Level::INFO, "The gate job started.");
            let permit = self.gate.acquire().await;
            drop(permit);
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.panic_next.swap(false, Ordering::SeqCst) {
                panic!("the gate job was told to panic");
            }
            ferry_worker::job::RunOutcome::succeeded(ferry_worker::cadence::Tier::Active)
                .with_count("events_created", 3)
                .with_count("transactions_processed", 5)
        })
    }
}

/// Worker options that react within a test's patience.
pub(crate) fn quick_worker() -> ferry_worker::runtime::WorkerOptions {
    ferry_worker::runtime::WorkerOptions {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_secs(5),
        safety_poll: Duration::from_secs(1),
        listener_ping: Duration::from_secs(1),
        reconnect_backoff: (Duration::from_millis(10), Duration::from_millis(200)),
        ..Default::default()
    }
}

impl Server {
    /// Starts a worker on this server's store running `job`.
    pub(crate) fn worker(
        &self,
        job: Arc<GateJob>,
        options: ferry_worker::runtime::WorkerOptions,
    ) -> ferry_worker::runtime::Worker {
        ferry_worker::runtime::Worker::spawn(
            self.jobs.clone(),
            vec![job],
            options,
            CancellationToken::new(),
        )
    }

    /// `POST /api/admin/sync/trigger` with the admin token and no body; status and body.
    pub(crate) async fn trigger(&self) -> (u16, Value) {
        self.call(
            Method::POST,
            "/api/admin/sync/trigger",
            Some(&self.admin),
            None,
        )
        .await
    }

    /// `GET` with the admin token; status and body.
    pub(crate) async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(&self.admin), None).await
    }

    /// The job's state, asserting a 200.
    pub(crate) async fn sync_state(&self) -> Value {
        let (status, body) = self.admin_get("/api/admin/sync/state").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the worker has finished `runs` runs and nothing is pending or running;
    /// returns the runs, newest first.
    pub(crate) async fn settled_after(&self, runs: usize) -> Vec<Value> {
        let settled = |listed: &[Value], state: &Value| {
            state["in_flight"] == false
                && state["pending_triggers"] == 0
                && listed.len() >= runs
                && listed.iter().all(|r| r["status"] != "running")
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.sync_state().await;
            let (_, body) = self.admin_get("/api/admin/sync/runs").await;
            let listed = body["runs"].as_array().cloned().unwrap_or_default();
            if settled(&listed, &state) {
                return listed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {runs} finished runs: {state} {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl GateJob {
    /// Lets the run waiting at the closed gate through and closes the gate behind it, so the
    /// next run waits again. Call it while a run waits at the gate: on a current-thread runtime,
    /// once [`GateJob::runs`] has counted that run (it counts itself just before it waits).
    // Only the PostgreSQL-only tests (tests/postgres) use it, so the `api` binary does not.
    #[allow(dead_code)]
    pub(crate) async fn let_one_through(&self) {
        self.gate.add_permits(1);
        // The semaphore is fair: the waiting run gets the permit first, and this takes it back
        // when that run returns it, before any later run can.
        self.gate.acquire().await.unwrap().forget();
    }
}
