//! An agent killed with SIGKILL in the middle of a cycle loses nothing and duplicates nothing
//! once it runs again.

use std::process::Stdio;

use ferry_testkit::{TestDevice, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const ROWS: i64 = 30_000;

/// Starts `ferry agent sync` on the device and kills it as soon as it reports rows done in
/// `phase` ("push" or "pull"). Returns whether it was killed before it finished.
async fn kill_during(device: &TestDevice, phase: &str) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["agent", "sync", "--progress", "lines", "--db"])
        .arg(&device.db_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ferry runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        // Progress lines read `push 2000/30000` or `pull 5000`.
        let done = line
            .strip_prefix(phase)
            .and_then(|rest| rest.trim().split('/').next())
            .and_then(|n| n.parse::<u64>().ok());
        if done.is_some_and(|n| n > 0) {
            child.start_kill().unwrap(); // SIGKILL: no chance to clean up.
            break;
        }
    }
    let status = child.wait().await.unwrap();
    !status.success()
}

fn insert_products(device: &TestDevice, n: i64) {
    let mut app = device.app();
    let tx = app.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO products (id, name, price_cents) VALUES (?1, ?2, ?3)")
            .unwrap();
        for i in 0..n {
            stmt.execute(rusqlite::params![
                format!("p{i:06}"),
                format!("Product {i}"),
                i
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn price_sum(device: &TestDevice) -> i64 {
    device
        .app()
        .query_row(
            "SELECT coalesce(sum(price_cents), 0) FROM products",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_pull_resumes_without_loss_or_duplicates() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    insert_products(&a, ROWS);
    a.sync_ok().await;

    let b = server.pair_device("B").await;
    assert!(
        kill_during(&b, "pull").await,
        "the agent was killed mid-cycle"
    );
    let partial = b.count("products");
    assert!(
        partial < ROWS,
        "killed before the snapshot completed ({partial} rows)"
    );
    assert_eq!(
        b.dirty("products"),
        0,
        "rows applied from a pull are never dirty"
    );

    let report = b.sync_ok().await;
    assert_eq!(report.pushed, 0, "nothing pulled is pushed back");
    assert_eq!(b.count("products"), ROWS);
    assert_eq!(price_sum(&b), price_sum(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_push_resumes_without_loss_or_duplicates() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    insert_products(&a, ROWS);
    a.app()
        .execute("UPDATE products SET price_cents = price_cents + 1", [])
        .unwrap();
    assert!(
        kill_during(&a, "push").await,
        "the agent was killed mid-cycle"
    );
    let left = a.dirty("products");
    assert!(
        left > 0 && left < ROWS,
        "killed after some batches were confirmed ({left} dirty)"
    );

    a.sync_ok().await;
    assert_eq!(a.dirty("products"), 0);
    let b = server.pair_device("B").await;
    let report = b.sync_ok().await;
    assert_eq!(report.pulled, ROWS as u64, "each row arrives once");
    assert_eq!(b.count("products"), ROWS);
    assert_eq!(price_sum(&b), price_sum(&a));
}
