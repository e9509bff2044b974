//! What the end-to-end suites share: the `ferry` binary run to its end, a long-running `ferry`
//! process (its banner, its output, a SIGKILL), a `ferry serve`, and a server's operator API
//! with a token.

use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `ferry` binary, killed if the test drops it.
pub(crate) fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.kill_on_drop(true);
    command
}

/// Runs `ferry ARGS` to its end.
pub(crate) async fn run(args: &[&str]) -> Output {
    ferry()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("ferry runs")
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `ferry serve` process: its URL and, on a first start, the admin token.
pub(crate) async fn serve(args: &[&str]) -> (Process, String, Option<String>) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let served = Process::start(ferry(), &all, "Pair a device").await;
    let url = served
        .banner_after(" serving ")
        .expect("serve prints its URL");
    let token = served
        .banner
        .iter()
        .find(|line| line.starts_with("Admin token"))
        .and_then(|line| line.rsplit(": ").next())
        .map(|token| token.trim().to_owned());
    (served, url, token)
}

/// A long-running `ferry serve` or `ferry worker`: its banner, and everything it wrote to
/// stdout and stderr so far. Killed when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) banner: Vec<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `command` with `args` and reads its stdout up to the banner line that starts
    /// with `last`.
    pub(crate) async fn start(mut command: Command, args: &[&str], last: &str) -> Process {
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        loop {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!(
                    "ferry {args:?} ended before its banner: {banner:?}\n{}",
                    stderr.lock().unwrap()
                );
            };
            let done = line.starts_with(last);
            stdout.lock().unwrap().push_str(&format!("{line}\n"));
            banner.push(line);
            if done {
                break;
            }
        }
        // Keep reading stdout, so the process never blocks on a full pipe and a test sees
        // all of it.
        let collected = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Process {
            child,
            banner,
            stdout,
            stderr,
        }
    }

    /// What follows `marker` on the first banner line that has it, up to the next space.
    pub(crate) fn banner_after(&self, marker: &str) -> Option<String> {
        self.banner.iter().find_map(|line| {
            let (_, rest) = line.split_once(marker)?;
            rest.split_whitespace().next().map(str::to_owned)
        })
    }

    /// Everything it wrote, stdout then stderr.
    pub(crate) fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// What it wrote to stderr: its log.
    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to finish a run, record an answer or let go of its lease.
    pub(crate) async fn kill(mut self) {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}

/// A server's operator API, with a token.
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) token: String,
}

impl Api {
    pub(crate) fn new(url: &str, token: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }

    /// `GET path`, which must answer `200`; its JSON.
    pub(crate) async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Stores a trigger for `job` (the server's default job with `None`), as an operator's
    /// script would; returns its id.
    pub(crate) async fn trigger_job(&self, job: Option<&str>) -> i64 {
        let response = self
            .http
            .post(format!("{}/api/admin/sync/trigger", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "job": job }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["trigger_id"].as_i64().unwrap()
    }
}
