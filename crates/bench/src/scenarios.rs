//! The benchmark scenarios. Devices are real SQLite files; servers run on either store, each
//! on a data directory or database of its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferry_client::{Client, ClientOptions};
use ferry_proto::local::CycleTrigger;
use ferry_proto::{
    CLIENT_AGENT_PREFIX, Health, Outcome, PairRequest, PairResponse, PushRequest, PushResponse,
    RowChange,
};
use ferry_store::{DeviceKey, PushBatch};
use ferry_testkit::{Backend, TestServer, no_progress};
use serde_json::{Map, Value, json};

use crate::{SnapshotFigures, ms, percentile, since_ms};

/// The products every benchmark writes: the built-in schema's `products` table.
const PRODUCTS_DDL: &str = "CREATE TABLE products (
  id TEXT PRIMARY KEY NOT NULL, category_id TEXT, sku TEXT, name TEXT NOT NULL,
  price_cents INTEGER NOT NULL DEFAULT 0, active INTEGER NOT NULL DEFAULT 1)";

fn product_id(i: u64) -> String {
    format!("{:08x}-7425-40de-944b-{:012x}", i, i)
}

fn product_data(i: u64) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "id": product_id(i), "category_id": null, "sku": format!("SKU-{i:07}"),
        "name": format!("Product {i}"), "price_cents": (i % 10_000) as i64, "active": 1,
    }) else {
        unreachable!()
    };
    map
}

use ferry_core::time::now_ms;

/// Inserts `rows` products into a fresh SQLite file the fastest plain way; rows per second.
pub(crate) fn raw_insert(path: &Path, rows: u64) -> anyhow::Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(PRODUCTS_DDL)?;
    let start = Instant::now();
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO products (id, category_id, sku, name, price_cents, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for i in 0..rows {
            stmt.execute(rusqlite::params![
                product_id(i),
                Option::<String>::None,
                format!("SKU-{i:07}"),
                format!("Product {i}"),
                (i % 10_000) as i64,
                1
            ])?;
        }
    }
    tx.commit()?;
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// A server on `backend` holding `rows` products, loaded through its store; and how many
/// seconds loading took.
pub(crate) async fn seeded_server(
    backend: Backend,
    rows: u64,
) -> anyhow::Result<(TestServer, f64)> {
    let server = TestServer::start_on(backend, None).await;
    let start = Instant::now();
    seed(&server, rows).await?;
    Ok((server, start.elapsed().as_secs_f64()))
}

/// Fresh devices' first cycles against `server`, in child processes: one per app write
/// interval (`None`: the app does not write meanwhile).
pub(crate) async fn snapshots(
    server: &TestServer,
    rows: u64,
    exe: &Path,
    app_write_every: &[Option<Duration>],
) -> anyhow::Result<Vec<SnapshotFigures>> {
    let mut all = Vec::new();
    for every in app_write_every {
        all.push(snapshot(server, rows, exe, *every).await?);
    }
    Ok(all)
}

async fn snapshot(
    server: &TestServer,
    rows: u64,
    exe: &Path,
    app_write_every: Option<Duration>,
) -> anyhow::Result<SnapshotFigures> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("device.sqlite");
    let code = server.pairing_code().await;
    let options = ClientOptions::default();
    ferry_client::pair(&server.url, &code, &db, "bench device", "bench", options).await?;
    let every_us = app_write_every.map_or(0, |d| d.as_micros() as u64);
    let output = tokio::process::Command::new(exe)
        .arg("device-snapshot")
        .arg(&db)
        .arg(every_us.to_string())
        .output()
        .await
        .context("running the device process")?;
    // `output` captures the child's standard error; pass it on, so its errors are seen.
    std::io::Write::write_all(&mut std::io::stderr(), &output.stderr)?;
    ensure!(
        output.status.success(),
        "the device process failed: {:?}",
        output.status
    );
    let figures: SnapshotFigures =
        serde_json::from_slice(&output.stdout).context("reading the device's figures")?;
    // An earlier device whose app wrote during its cycle may have pushed a row or two.
    ensure!(
        figures.rows >= rows,
        "the device pulled {} rows, expected at least {rows}",
        figures.rows
    );
    Ok(figures)
}

/// Loads the server's store directly, 10,000 rows a transaction, as one seeding device.
async fn seed(server: &TestServer, rows: u64) -> anyhow::Result<()> {
    let seeder = StorePusher::pair(server, "seeder").await?;
    seeder.push(0..rows, 10_000, now_ms() - 60_000).await
}

/// A device that pushes products straight to the server's store: no HTTP, no client.
struct StorePusher<'a> {
    server: &'a TestServer,
    device: DeviceKey,
    schema: Arc<ferry_core::Schema>,
}

impl<'a> StorePusher<'a> {
    async fn pair(server: &'a TestServer, name: &str) -> anyhow::Result<StorePusher<'a>> {
        let code = server.pairing_code().await;
        let paired = server
            .store
            .redeem_pairing_code(&code, name, None)
            .await?
            .context("the pushing device pairs")?;
        Ok(StorePusher {
            server,
            device: DeviceKey {
                tenant: paired.tenant,
                device_id: paired.device_id,
            },
            schema: Arc::new(ferry_schema::parse_ddl(ferry_schema::POINT_OF_SALE)?),
        })
    }

    /// Pushes products `ids` at a version of `version_ms`, `per_batch` changes a request,
    /// making each request's changes just before it.
    async fn push(
        &self,
        ids: std::ops::Range<u64>,
        per_batch: u64,
        version_ms: i64,
    ) -> anyhow::Result<()> {
        let mut next = ids.start;
        while next < ids.end {
            let end = (next + per_batch).min(ids.end);
            let changes = self.changes(next..end, version_ms);
            self.push_batch(changes, ids.end - end).await?;
            next = end;
        }
        Ok(())
    }

    /// Products `ids` as this device's changes at a version of `version_ms`.
    fn changes(&self, ids: std::ops::Range<u64>, version_ms: i64) -> Vec<RowChange> {
        let version = ferry_core::version::format(version_ms, 0, &self.device.device_id);
        product_changes(ids, &version)
    }

    /// One request: `changes`, with `pending` more to come.
    async fn push_batch(&self, changes: Vec<RowChange>, pending: u64) -> anyhow::Result<()> {
        let batch = PushBatch {
            schema: Arc::clone(&self.schema),
            changes,
            pending,
            now_ms: now_ms(),
            max_clock_skew: Duration::from_secs(300),
        };
        let results = self.server.store.push(&self.device, batch).await?;
        ensure!(
            results.iter().all(|r| r.outcome == Outcome::Applied),
            "pushed rows were not all applied"
        );
        Ok(())
    }
}

/// The server's share of a snapshot: a fresh device's pull of every page straight from the
/// store, in the client's page size, with no HTTP and no client; rows per second. The server
/// holds at least `rows` rows.
pub(crate) async fn store_pull_all(server: &TestServer, rows: u64) -> anyhow::Result<f64> {
    let puller = StorePusher::pair(server, "store puller").await?;
    let start = Instant::now();
    let mut cursor = ferry_store::Cursor::START;
    let mut pulled = 0;
    loop {
        // The client's page size, under the server's default byte limit.
        let limit = ferry_store::PageLimit {
            rows: 10_000,
            bytes: ferry_store::PageLimit::DEFAULT_BYTES,
        };
        let page = server.store.pull(&puller.device, cursor, limit).await?;
        pulled += page.count as u64;
        cursor = page.cursor;
        if !page.has_more {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Devices that ran before may have pushed a few rows of their app's own.
    ensure!(
        pulled >= rows,
        "the store gave {pulled} rows, expected at least {rows}"
    );
    Ok(pulled as f64 / seconds)
}

/// In the child process: one forced cycle on a fresh device, while an app thread writes one row
/// every `app_write_every` (if given).
pub(crate) async fn device_snapshot(
    db: &Path,
    app_write_every: Option<Duration>,
) -> anyhow::Result<SnapshotFigures> {
    let client = Client::open(db, ClientOptions::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.to_path_buf(), Arc::clone(&stop));
        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let Some(every) = app_write_every else {
                return Ok(Vec::new());
            };
            let app = rusqlite::Connection::open(&db)?;
            app.busy_timeout(Duration::from_secs(30))?;
            let mut latencies = Vec::new();
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                app.execute(
                    "INSERT INTO customers (id, name) VALUES (?1, ?2)",
                    rusqlite::params![format!("bench-customer-{n}"), "Walk-in"],
                )?;
                latencies.push(since_ms(start));
                n += 1;
                std::thread::sleep(every);
            }
            Ok(latencies)
        })
    };
    let start = Instant::now();
    let report = client.sync(CycleTrigger::Manual, &no_progress).await;
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let latencies = writer.join().expect("writer thread")?;
    ensure!(report.ok, "the snapshot cycle failed: {:?}", report.error);
    Ok(SnapshotFigures {
        rows: report.pulled,
        seconds,
        peak_rss_mb: peak_rss_kb()? as f64 / 1024.0,
        app_writes: latencies.len() as u64,
        app_write_every_ms: app_write_every.map(|d| d.as_secs_f64() * 1000.0),
        // Zero when the app did not write (`app_writes` says so).
        app_write_p50_ms: if latencies.is_empty() {
            0.0
        } else {
            percentile(&latencies, 50.0)
        },
        app_write_p99_ms: if latencies.is_empty() {
            0.0
        } else {
            percentile(&latencies, 99.0)
        },
        app_write_max_ms: latencies.iter().copied().fold(0.0, f64::max),
    })
}

fn peak_rss_kb() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

/// Forced cycles of a device with 10,000 dirty rows against `server`; milliseconds per
/// cycle. The first cycle inserts the rows on the server, the others update them all.
pub(crate) async fn push_10k(server: &TestServer, runs: usize) -> anyhow::Result<Vec<f64>> {
    let device = server.pair_device("bench").await;
    let mut app = device.app();
    let tx = app.transaction()?;
    {
        let mut stmt = tx
            .prepare("INSERT INTO products (id, sku, name, price_cents) VALUES (?1, ?2, ?3, ?4)")?;
        for i in 0..10_000_u64 {
            stmt.execute(rusqlite::params![
                product_id(i),
                format!("SKU-{i:07}"),
                format!("Product {i}"),
                i as i64
            ])?;
        }
    }
    tx.commit()?;
    let mut timings = Vec::with_capacity(runs);
    for run in 0..runs {
        if run > 0 {
            app.execute("UPDATE products SET price_cents = price_cents + 1", [])?;
        }
        let start = Instant::now();
        let report = device.client.sync(CycleTrigger::Manual, &no_progress).await;
        timings.push(ms(start.elapsed()));
        ensure!(
            report.ok && report.pushed == 10_000,
            "push cycle: {report:?}"
        );
    }
    Ok(timings)
}

/// The server's side of [`push_10k`] alone: the same 10,000 rows in requests of 1,000 (the
/// client's batch) straight to the store, `runs` times; milliseconds per run. As there, the
/// first run inserts and the others update.
pub(crate) async fn store_push_10k(server: &TestServer, runs: usize) -> anyhow::Result<Vec<f64>> {
    let pusher = StorePusher::pair(server, "store pusher").await?;
    let mut timings = Vec::with_capacity(runs);
    for run in 0..runs {
        // Products of their own, after push_10k's, so that every run writes rows of this
        // device; made before the clock starts.
        let version_ms = now_ms() - 60_000 + run as i64;
        let batches: Vec<Vec<RowChange>> = (10..20_u64)
            .map(|b| pusher.changes(b * 1_000..(b + 1) * 1_000, version_ms))
            .collect();
        let start = Instant::now();
        for (done, changes) in batches.into_iter().enumerate() {
            let pending = 9_000 - 1_000 * done as u64;
            pusher.push_batch(changes, pending).await?;
        }
        timings.push(ms(start.elapsed()));
    }
    Ok(timings)
}

/// Which rows the runs of a push ingest send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngestRows {
    /// Every run pushes 10,000 rows the server has never held, so each run only inserts, as
    /// the `COPY` reference does.
    New,
    /// Every run pushes the same 10,000 rows at a newer version, after an untimed first push
    /// stored them, so each run updates every row.
    Updated,
}

/// Push ingest over HTTP: the server taking 10,000 pushed rows from one device, as 10
/// `POST /api/sync/push` requests of 1,000 changes (the device client's batch), `runs` times;
/// milliseconds per run. See [`HttpIngest`].
pub(crate) async fn http_push_10k(
    server: &TestServer,
    rows: IngestRows,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut ingest = HttpIngest::start(server, rows).await?;
    let mut timings = Vec::with_capacity(runs);
    for _ in 0..runs {
        timings.push(ingest.run().await?);
    }
    Ok(timings)
}

/// Runs of the push ingest over HTTP, one at a time, so that other measures can run between
/// them. The requests go one after another from one HTTP client, with the device's token and
/// the headers the device client sends (JSON body, `Accept-Encoding` for compressed answers);
/// their bodies are serialized before the clock starts, and the clock runs from sending the
/// first request to receiving the whole answer to the last. Answers are checked after the
/// clock stops. The products are ones of their own, after the other pushes' (from 20,000 for
/// [`IngestRows::Updated`], from 30,000 for [`IngestRows::New`]), pushed by a device of their
/// own.
pub(crate) struct HttpIngest<'a> {
    device: HttpDevice<'a>,
    rows: IngestRows,
    /// Runs pushed so far, the untimed first push of updated rows included.
    pushed: u64,
}

impl<'a> HttpIngest<'a> {
    /// Pairs the pushing device; for [`IngestRows::Updated`], stores the rows with a first,
    /// untimed push.
    pub(crate) async fn start(
        server: &'a TestServer,
        rows: IngestRows,
    ) -> anyhow::Result<HttpIngest<'a>> {
        let device = HttpDevice::pair(server, &format!("http pusher, {rows:?} rows")).await?;
        let mut ingest = HttpIngest {
            device,
            rows,
            pushed: 0,
        };
        if rows == IngestRows::Updated {
            ingest.run().await?;
        }
        Ok(ingest)
    }

    /// One timed run of 10,000 rows; milliseconds.
    pub(crate) async fn run(&mut self) -> anyhow::Result<f64> {
        let first_block = match self.rows {
            IngestRows::New => 30 + 10 * self.pushed,
            IngestRows::Updated => 20,
        };
        let device = &self.device;
        let version = ferry_core::version::format(
            now_ms() - 60_000 + self.pushed as i64,
            0,
            &device.paired.device_id,
        );
        self.pushed += 1;
        let bodies = (first_block..first_block + 10)
            .enumerate()
            .map(|(done, b)| {
                let request = PushRequest {
                    device_id: device.paired.device_id.clone(),
                    schema_hash: device.schema_hash.clone(),
                    changes: product_changes(b * 1_000..(b + 1) * 1_000, &version),
                    pending: 9_000 - 1_000 * done as u64,
                };
                serde_json::to_vec(&request)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let start = Instant::now();
        let mut answers = Vec::with_capacity(bodies.len());
        for body in bodies {
            answers.push(device.push(body).await?);
        }
        let elapsed = ms(start.elapsed());
        for answer in answers {
            let response: PushResponse = serde_json::from_slice(&answer)?;
            ensure!(
                response.results.len() == 1_000
                    && response
                        .results
                        .iter()
                        .all(|r| r.outcome == Outcome::Applied),
                "pushed rows were not all applied"
            );
        }
        Ok(elapsed)
    }

    pub(crate) fn device_id(&self) -> &str {
        &self.device.paired.device_id
    }
}

/// A device that speaks the sync API with a plain HTTP client, as the device client does.
struct HttpDevice<'a> {
    server: &'a TestServer,
    http: reqwest::Client,
    paired: PairResponse,
    schema_hash: String,
}

impl<'a> HttpDevice<'a> {
    /// Pairs through `POST /api/devices/pair` and reads the schema hash from the health check,
    /// which also opens the connection the pushes will use.
    async fn pair(server: &'a TestServer, name: &str) -> anyhow::Result<HttpDevice<'a>> {
        let http = reqwest::Client::builder()
            .user_agent(format!(
                "{CLIENT_AGENT_PREFIX}{}",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        let request = PairRequest {
            code: server.pairing_code().await,
            name: name.into(),
            platform: Some("bench".into()),
        };
        let paired: PairResponse = http
            .post(format!("{}/api/devices/pair", server.url))
            .json(&request)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let health: Health = http
            .get(format!("{}/api/sync/health", server.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(HttpDevice {
            server,
            http,
            paired,
            schema_hash: health.schema_hash,
        })
    }

    /// One push request with a serialized body; the whole answer's bytes.
    async fn push(&self, body: Vec<u8>) -> anyhow::Result<bytes::Bytes> {
        let response = self
            .http
            .post(format!("{}/api/sync/push", self.server.url))
            .bearer_auth(&self.paired.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer = response.bytes().await?;
        ensure!(
            status.is_success(),
            "push answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(answer)
    }
}

/// Products `ids` as changes at `version`.
fn product_changes(ids: std::ops::Range<u64>, version: &str) -> Vec<RowChange> {
    ids.map(|i| RowChange {
        table: "products".into(),
        pk: Map::from_iter([("id".to_string(), Value::String(product_id(i)))]),
        version: version.to_owned(),
        deleted: false,
        data: Some(product_data(i)),
    })
    .collect()
}

/// One-row edits travelling from device A to device B; milliseconds per edit.
pub(crate) async fn a_to_b(edits: usize) -> anyhow::Result<Vec<f64>> {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let b = server.pair_device("B").await;
    let app_a = a.app();
    let app_b = b.app();
    app_a.execute(
        "INSERT INTO products (id, name, price_cents) VALUES ('p1', 'Cola', 0)",
        [],
    )?;
    ensure!(a.sync().await.ok && b.sync().await.ok, "initial cycles");
    let mut timings = Vec::with_capacity(edits);
    for i in 1..=edits as i64 {
        let start = Instant::now();
        app_a.execute("UPDATE products SET price_cents = ?1 WHERE id = 'p1'", [i])?;
        let pushed = a.client.sync(CycleTrigger::Manual, &no_progress).await;
        let pulled = b.client.sync(CycleTrigger::Manual, &no_progress).await;
        timings.push(since_ms(start));
        ensure!(
            pushed.ok && pulled.ok && pulled.pulled == 1,
            "edit {i}: {pushed:?} {pulled:?}"
        );
        let seen: i64 = app_b.query_row(
            "SELECT price_cents FROM products WHERE id = 'p1'",
            [],
            |r| r.get(0),
        )?;
        ensure!(seen == i, "device B sees {seen}, expected {i}");
    }
    Ok(timings)
}
