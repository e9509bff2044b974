//! `ferry serve`'s resource limits as its flags set them, on the real process and its socket.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::Instant;

use super::support::Process;

fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.kill_on_drop(true).stdin(Stdio::null());
    command
}

#[tokio::test]
async fn serve_refuses_limits_that_make_no_sense() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (flag, value, says) in [
        ("--max-body", "10", "smaller than the smallest limit"),
        ("--max-compressed-body", "16 parsecs", "is not a size"),
        ("--max-pull-bytes", "0", "smaller than the smallest limit"),
        ("--header-timeout", "0s", "would close every connection"),
        ("--idle-timeout", "soon", "is not a duration"),
        ("--max-in-flight", "0", "0 is not in 1..=1000000"),
        ("--max-connections", "-5", "unexpected argument"),
        ("--max-push-changes", "0", "0 is not in 1..=1000000"),
    ] {
        let output = ferry()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data",
                data,
                flag,
                value,
            ])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was taken");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was created"
    );
}

#[tokio::test]
async fn serve_applies_its_limit_flags() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        dir.path().to_str().unwrap(),
        "--header-timeout",
        "500ms",
        "--max-compressed-body",
        "4KiB",
    ];
    let served = Process::start(ferry(), &args, "Pair a device").await;
    let url = served
        .banner_after(" serving ")
        .expect("serve prints its URL");
    let address = url.trim_start_matches("http://").to_owned();

    // Half a request head, then nothing: the connection is closed after the header timeout,
    // while other clients are served.
    let mut stalled = TcpStream::connect(&address).await.unwrap();
    let sent = Instant::now();
    stalled
        .write_all(b"GET /api/sync/health HTTP/1.1\r\nhost: ferry\r\n")
        .await
        .unwrap();
    let health = reqwest::get(format!("{url}/api/sync/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer))
        .await
        .expect("the stalled connection is closed")
        .unwrap();
    assert!(answer.is_empty());
    assert!(sent.elapsed() >= Duration::from_millis(500));

    // A body over 4 KiB as sent.
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/api/devices/pair"))
        .header("content-type", "application/json")
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(body["error"]["details"]["limit_bytes"], 4096);
}
