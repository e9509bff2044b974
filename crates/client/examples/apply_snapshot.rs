//! Measures applying a fresh device's snapshot: pull response bodies parsed and applied to a
//! real file while an "app" thread writes now and then through its own connection, and reports
//! rows/s and the app's write latencies.
//!
//! `cargo run --release -p ferry-client --example apply_snapshot -- [rows] [page]`
//! Environment: `NO_APP=1` leaves the app out; `HOLD_MS` and `PAUSE_US` override the engine's
//! write-lock duty cycle (`apply_max_time`, `apply_pause`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_client::replica::{ApplyMode, PulledPage, Replica, ReplicaOptions};
use ferry_proto::{PullResponse, RowChange};
use serde_json::json;

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(1_000_000, |a| a.parse().unwrap());
    let page_size: usize = args.next().map_or(5_000, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let mut replica = Replica::install(
        &path,
        ferry_schema::POINT_OF_SALE,
        "dev_bench",
        options_from_env(),
    )
    .unwrap();
    if let Ok(value) = std::env::var("ENGINE_CKPT") {
        replica
            .connection()
            .pragma_update(None, "wal_autocheckpoint", &value)
            .unwrap();
    }
    let pages = snapshot_pages(rows, page_size);
    let bytes: usize = pages.iter().map(Vec::len).sum();
    let pages = pages.into_iter();

    let done = AtomicBool::new(false);
    let with_app = std::env::var("NO_APP").is_err();
    let (elapsed, parse_time, mut latencies) = std::thread::scope(|scope| {
        let app = scope.spawn(|| {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut latencies = Vec::new();
            while with_app && !done.load(Ordering::Acquire) {
                let start = Instant::now();
                conn.execute(
                    "INSERT INTO customers (id, name) VALUES (?1, 'walk-in')",
                    [format!("app-{}", latencies.len())],
                )
                .unwrap();
                latencies.push(start.elapsed());
                // An app writes now and then, not in a tight loop.
                std::thread::sleep(Duration::from_millis(2));
            }
            latencies
        });
        let start = Instant::now();
        // As in a cycle: the next page is parsed on another thread while this one applies.
        let (parsed_tx, parsed_rx) = std::sync::mpsc::sync_channel::<PulledPage>(1);
        let parser = scope.spawn(move || {
            let mut parse_time = Duration::ZERO;
            for body in pages {
                let parse_start = Instant::now();
                let page = PulledPage::parse(body).unwrap();
                parse_time += parse_start.elapsed();
                parsed_tx.send(page).unwrap();
            }
            parse_time
        });
        for page in parsed_rx {
            replica
                .apply_pulled(&page, ApplyMode::LastWriteWins)
                .unwrap();
        }
        let parse_time = parser.join().unwrap();
        let elapsed = start.elapsed();
        done.store(true, Ordering::Release);
        (elapsed, parse_time, app.join().unwrap())
    });

    println!(
        "{rows} rows ({} MB of JSON) in {:.2} s: {:.0} rows/s (parsing took {:.2} s on another thread)",
        bytes / 1_000_000,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        parse_time.as_secs_f64()
    );
    if latencies.is_empty() {
        return;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "app writes meanwhile: {}, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap()
    );
    assert_eq!(replica.pending().unwrap() as usize, latencies.len());
}

/// Pull response bodies as the server would send them: a products snapshot.
fn snapshot_pages(rows: usize, page_size: usize) -> Vec<Vec<u8>> {
    (0..rows)
        .step_by(page_size)
        .map(|start| {
            let changes: Vec<RowChange> = (start..(start + page_size).min(rows))
                .map(|i| {
                    let id = format!("0000{i:08}-7425-40de-944b-e07fc1f90ae7");
                    let data = json!({"id": id, "category_id": null, "sku": format!("SKU-{i}"),
                        "name": format!("Product {i}"), "price_cents": i % 10_000, "active": 1});
                    RowChange {
                        table: "products".into(),
                        pk: json!({"id": id}).as_object().unwrap().clone(),
                        version: ferry_core::version::format(
                            1_700_000_000_000 + i as i64,
                            0,
                            "srv",
                        ),
                        deleted: false,
                        data: data.as_object().cloned(),
                    }
                })
                .collect();
            serde_json::to_vec(&PullResponse {
                changes,
                cursor: start.to_string(),
                has_more: start + page_size < rows,
                server_time: String::new(),
            })
            .unwrap()
        })
        .collect()
}

fn options_from_env() -> ReplicaOptions {
    let mut options = ReplicaOptions::default();
    if let Ok(ms) = std::env::var("HOLD_MS") {
        options.apply_max_time = Duration::from_secs_f64(ms.parse::<f64>().unwrap() / 1000.0);
    }
    if let Ok(us) = std::env::var("PAUSE_US") {
        options.apply_pause = Duration::from_micros(us.parse().unwrap());
    }
    options
}
