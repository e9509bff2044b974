//! Concurrent pushers and pullers on one tenant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::support::*;

const PUSHERS: usize = 4;
const PULLERS: usize = 3;
const ROUNDS: i64 = 12;
const ROWS_PER_PUSH: i64 = 25;
/// Fewer ids than writes, so pushers overwrite each other's rows.
const IDS: i64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushers_and_pullers_all_end_with_the_servers_rows() {
    let server = Arc::new(Server::start().await);
    let mut pushers = Vec::new();
    for n in 0..PUSHERS {
        let device = server.pair(&format!("pusher-{n}")).await;
        let server = server.clone();
        pushers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let changes: Vec<Value> = (0..ROWS_PER_PUSH)
                    .map(|k| {
                        let id = format!("p{}", (round * 7 + k * 3 + n as i64 * 11) % IDS);
                        let version = v(round * 100 + k, &format!("node{n}"));
                        product(&id, &format!("{n}/{round}/{k}"), &version)
                    })
                    .collect();
                let outcomes = server.push_ok(&device, Value::Array(changes)).await;
                assert!(
                    outcomes.iter().all(|o| !o.starts_with("rejected")),
                    "{outcomes:?}"
                );
            }
        }));
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut pullers = Vec::new();
    for n in 0..PULLERS {
        let device = server.pair(&format!("puller-{n}")).await;
        let (server, done) = (server.clone(), done.clone());
        pullers.push(tokio::spawn(async move {
            let mut rows = BTreeMap::new();
            let mut cursor: Option<String> = None;
            loop {
                // Read the flag first: a pull that starts after every push finished is final.
                let last = done.load(Ordering::SeqCst);
                let (changes, next) = server.pull_all(&device, cursor.as_deref()).await;
                for change in changes {
                    let key = format!("{}/{}", change["table"].as_str().unwrap(), change["pk"]);
                    let version = change["version"].as_str().unwrap().to_owned();
                    rows.insert(key, (version, change["deleted"].as_bool().unwrap()));
                }
                cursor = Some(next);
                if last {
                    return rows;
                }
            }
        }));
    }
    for pusher in pushers {
        pusher.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let expected: Vec<(String, String, bool)> = server.snapshot(DEFAULT_TENANT).await;
    assert!(!expected.is_empty());
    for puller in pullers {
        let rows = puller.await.unwrap();
        let got: Vec<(String, String, bool)> = rows
            .into_iter()
            .map(|(key, (version, deleted))| (key, version, deleted))
            .collect();
        assert_eq!(
            got, expected,
            "a puller ended with other rows than the server"
        );
    }
}
