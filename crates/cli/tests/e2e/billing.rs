//! The billing job (StEvE → Lago) through real `ferry` processes: a new user's path on the
//! embedded store, configuration mistakes, a `ferry worker` killed with SIGKILL at each point of
//! sending on PostgreSQL, two workers on one database, and StEvE and Lago down, then back.
//!
//! StEvE and Lago are the emulators, served inside the test process on 127.0.0.1:0, so a test
//! injects faults and reads what Lago holds. What every test comes down to: each session's
//! energy is in Lago exactly once, one event per `transaction_id` with kWh = stop − start.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::Duration;

use ferry_emulators::Running;
use ferry_emulators::lago::{self, Lago};
use ferry_emulators::steve::{self, Steve, StopActor};
use ferry_testkit::{TestDatabase, wait_for};
use serde_json::Value;
use tokio::process::Command;

use super::support::{Api, Process};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// The settings of the billing job a test's `ferry` reads from its environment; removed from
/// every `ferry` the tests start, so the test runner's environment cannot leak in.
const BILLING_VARS: &[&str] = &[
    "FERRY_BILLING",
    "FERRY_STEVE_URL",
    "FERRY_STEVE_API_KEY",
    "FERRY_STEVE_API_KEY_FILE",
    "FERRY_STEVE_TIME_ZONE",
    "FERRY_LAGO_URL",
    "FERRY_LAGO_API_KEY",
    "FERRY_LAGO_API_KEY_FILE",
    "FERRY_BILLING_HTTP_TIMEOUT",
];

/// The API keys a `ferry` gets in its environment, and only there.
struct Keys {
    steve: String,
    lago: String,
}

impl Keys {
    /// The emulators' default keys.
    fn defaults() -> Keys {
        Keys {
            steve: steve::Config::default().api_key,
            lago: lago::Config::default().api_key,
        }
    }
}

/// `ferry` with the keys in its environment, or none.
fn ferry(keys: Option<&Keys>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.kill_on_drop(true).stdin(Stdio::null());
    for var in BILLING_VARS {
        command.env_remove(var);
    }
    if let Some(keys) = keys {
        command
            .env("FERRY_STEVE_API_KEY", &keys.steve)
            .env("FERRY_LAGO_API_KEY", &keys.lago);
    }
    command
}

/// Runs `ferry ARGS` (a command that ends) to its end.
async fn run(args: &[&str]) -> Output {
    ferry(None).args(args).output().await.expect("ferry runs")
}

/// `ferry COMMAND... --server URL --data DATA`: with the admin token a new store saved in its
/// data directory. It must succeed; its stdout.
async fn run_saved(url: &str, data: &str, mut args: Vec<&str>) -> String {
    args.extend_from_slice(&["--server", url, "--data", data]);
    let output = run(&args).await;
    assert!(output.status.success(), "ferry {args:?}: {output:?}");
    stdout(&output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The last banner line of a `ferry serve` that runs the worker in-process.
const WORKER_LINE: &str = "Sync worker ";

/// `ferry serve ARGS` as `command` (a [`ferry`]), read up to the banner line that starts with
/// `last`: the process, its URL and its first start's admin token.
async fn serve(command: Command, args: &[&str], last: &str) -> (Process, String, String) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let served = Process::start(command, &all, last).await;
    let url = served
        .banner_after(" serving ")
        .expect("serve prints its URL");
    let token = served
        .banner
        .iter()
        .find(|line| line.starts_with("Admin token"))
        .and_then(|line| line.rsplit(": ").next())
        .map(|token| token.trim().to_owned())
        .expect("a new store gets an admin token");
    (served, url, token)
}

impl Api {
    async fn billing_state(&self) -> Value {
        self.get("/api/admin/sync/state?job=billing").await
    }

    /// The id of the billing job's newest run, 0 before its first.
    async fn last_run_id(&self) -> i64 {
        self.billing_state().await["last_run"]["id"]
            .as_i64()
            .unwrap_or(0)
    }

    /// Waits until the job is quiet (no run in flight, no trigger pending) and its newest run,
    /// newer than `after`, has finished; returns that run with its log and events.
    async fn finished_run_after(&self, after: i64) -> Value {
        let newest = std::cell::Cell::new(0);
        wait_for(
            &format!("a finished billing run after run {after}"),
            || async {
                let state = self.billing_state().await;
                let last = &state["last_run"];
                newest.set(last["id"].as_i64().unwrap_or(0));
                // The state's parts are read one after another: a run that starts in between
                // shows as the last run, still running, while nothing is in flight.
                state["in_flight"] == false
                    && state["pending_triggers"] == 0
                    && newest.get() > after
                    && last["status"] != "running"
            },
        )
        .await;
        self.get(&format!("/api/admin/sync/runs/{}", newest.get()))
            .await
    }

    /// Every session in the ledger (at most 500), newest first.
    async fn sessions(&self) -> Vec<Value> {
        self.get("/api/admin/billing/sessions?limit=500").await["sessions"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Stores a trigger for the billing job, as an operator's script would.
    async fn trigger_billing(&self) {
        self.trigger_job(Some("billing")).await;
    }

    /// `ferry COMMAND... --server URL --token TOKEN`, which must succeed; its stdout.
    async fn cli(&self, command: &[&str]) -> String {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--server", &self.url, "--token", &self.token]);
        let output = run(&args).await;
        assert!(output.status.success(), "ferry {command:?}: {output:?}");
        stdout(&output)
    }
}

/// StEvE and Lago emulators on local ports.
struct Emulators {
    steve: Running<Steve>,
    lago: Running<Lago>,
}

impl Emulators {
    async fn start(keys: &Keys) -> Emulators {
        let steve = steve::spawn(steve::Config {
            api_key: keys.steve.clone(),
            ..steve::Config::default()
        })
        .await
        .unwrap();
        let lago = lago::spawn(lago::Config {
            api_key: keys.lago.clone(),
        })
        .await
        .unwrap();
        Emulators { steve, lago }
    }

    fn steve(&self) -> &Steve {
        self.steve.handle()
    }

    fn lago(&self) -> &Lago {
        self.lago.handle()
    }

    /// A Lago customer with a subscription that started a year ago.
    fn customer(&self, customer: &str, subscription: &str) {
        let started = ferry_core::time::now_ms() - 365 * DAY_MS;
        self.lago().add_customer(customer, customer);
        self.lago()
            .add_subscription(subscription, customer, "ev", started, None)
            .unwrap();
    }

    /// The flags that run the billing job against the emulators, with `timeout` for each
    /// request.
    fn flags(&self, timeout: &'static str) -> Vec<String> {
        [
            "--billing",
            "--steve-url",
            self.steve.url(),
            "--lago-url",
            self.lago.url(),
            "--billing-http-timeout",
            timeout,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A session that started 40 minutes ago (within the hour by which each read of StEvE
    /// overlaps the last, so the next run reads it) and stopped 10 minutes ago, `wh` Wh on a meter that read 1000 Wh at its start. Returns its
    /// transaction id.
    fn charge(&self, tag: &str, wh: i64) -> i64 {
        let now = ferry_core::time::now_ms();
        let id = self.start_session(tag, now - 40 * MINUTE_MS);
        self.steve()
            .stop_session(
                id,
                now - 10 * MINUTE_MS,
                &(1000 + wh).to_string(),
                Some("Local"),
                StopActor::Station,
            )
            .unwrap();
        i64::from(id)
    }

    fn start_session(&self, tag: &str, start_ms: i64) -> i32 {
        self.steve()
            .start_session("CB-1", 1, tag, start_ms, Some("1000"))
    }

    /// Each session of `expected` (id → Wh) is in Lago exactly once, and nothing else is.
    fn assert_billed_once(&self, expected: &BTreeMap<i64, i64>) {
        let mut held: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for event in self.lago().events() {
            held.entry(event.transaction_id)
                .or_default()
                .push(wh_of(&event.properties["kwh"]));
        }
        let mut wrong = Vec::new();
        for (id, wh) in expected {
            match held.remove(&format!("steve-{id}")) {
                Some(found) if found == [*wh] => {}
                found => wrong.push(format!(
                    "session {id}: {wh} Wh expected, Lago has {found:?}"
                )),
            }
        }
        wrong.extend(
            held.keys()
                .map(|extra| format!("{extra} is not a session's event")),
        );
        assert!(
            wrong.is_empty(),
            "{} of {} sessions are not in Lago exactly once:\n{}",
            wrong.len(),
            expected.len(),
            wrong[..wrong.len().min(20)].join("\n")
        );
    }
}

/// A kWh property (JSON number or numeric text) in Wh.
fn wh_of(value: &Value) -> i64 {
    let kwh = match value {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        other => panic!("not a kWh value: {other}"),
    };
    (kwh * 1000.0).round() as i64
}

/// The ledger agrees with Lago: every session of `expected` is billed with its energy, its
/// one event delivered.
async fn assert_ledger_billed(api: &Api, expected: &BTreeMap<i64, i64>) {
    let sessions = api.sessions().await;
    let by_id: BTreeMap<i64, &Value> = sessions
        .iter()
        .map(|s| (s["steve_transaction_id"].as_i64().unwrap(), s))
        .collect();
    for (id, wh) in expected {
        let session = by_id
            .get(id)
            .unwrap_or_else(|| panic!("the ledger has no session {id}"));
        assert_eq!(session["state"], "billed", "{session}");
        assert_eq!(session["billed_wh"], *wh, "{session}");
        let events = session["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{session}");
        assert_eq!(events[0]["status"], "delivered", "{session}");
        assert_eq!(events[0]["transaction_id"], format!("steve-{id}"));
    }
}

#[tokio::test]
async fn a_new_user_bills_sessions_from_the_command_line_and_the_api_keys_are_never_shown() {
    // Keys no log line could contain by chance.
    let keys = Keys {
        steve: "steve-key-e2e-7d41c9f0".to_owned(),
        lago: "lago-key-e2e-b2f80361".to_owned(),
    };
    let world = Emulators::start(&keys).await;
    world.customer("cust-a", "sub-a");
    world.customer("cust-b", "sub-b");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let mut args = vec!["--data", data];
    let flags = world.flags("2s");
    args.extend(flags.iter().map(String::as_str));
    // Debug logging, whatever the test runner's: not even a debug line may show a key.
    let mut command = ferry(Some(&keys));
    command.env("FERRY_LOG", "debug").env_remove("RUST_LOG");
    let (served, url, token) = serve(command, &args, WORKER_LINE).await;
    assert!(
        served.banner.last().unwrap().ends_with(" running billing"),
        "{:?}",
        served.banner
    );
    let api = Api::new(&url, &token);
    // A new store's first run starts at once; StEvE has nothing yet.
    let first = api.finished_run_after(0).await;
    assert_eq!(first["status"], "succeeded", "{first}");

    // The commands below use the admin token saved in the data directory.
    assert_eq!(
        run_saved(
            &url,
            data,
            vec!["billing", "map", "TAG-A", "--customer", "cust-a"]
        )
        .await,
        "Mapped TAG-A → customer cust-a, its subscription active at each session's stop.\n"
    );
    let csv = dir.path().join("tags.csv");
    std::fs::write(&csv, "tag,customer,subscription\nTAG-B,cust-b,sub-b\n").unwrap();
    assert_eq!(
        run_saved(&url, data, vec!["billing", "import", csv.to_str().unwrap()]).await,
        "Imported 1 mapping(s).\n"
    );
    let mappings = run_saved(&url, data, vec!["billing", "mappings"]).await;
    assert!(
        mappings
            .contains("TAG-A → customer cust-a, its subscription active at each session's stop\n")
            && mappings.contains("TAG-B → customer cust-b, subscription sub-b\n"),
        "{mappings}"
    );

    let a = world.charge("TAG-A", 12_345);
    let b = world.charge("TAG-B", 8_000);
    let stranger = world.charge("STRANGER", 5_000);
    let charging = world.start_session("TAG-A", ferry_core::time::now_ms() - MINUTE_MS);
    let before = api.last_run_id().await;
    let triggered = run_saved(&url, data, vec!["trigger", "--job", "billing"]).await;
    assert!(
        triggered.starts_with("Sync trigger notification sent to worker (job billing, trigger "),
        "{triggered}"
    );
    wait_for("Lago to hold the two mapped sessions", || async {
        world.lago().events_stored() == 2
    })
    .await;
    let run = api.finished_run_after(before).await;
    assert_eq!(
        (&run["trigger"], &run["status"]),
        (&Value::from("manual"), &Value::from("succeeded")),
        "{run}"
    );
    world.assert_billed_once(&BTreeMap::from([(a, 12_345), (b, 8_000)]));
    let subscriptions: Vec<Option<String>> = world
        .lago()
        .events()
        .into_iter()
        .map(|e| e.external_subscription_id)
        .collect();
    assert!(
        subscriptions.contains(&Some("sub-a".into()))
            && subscriptions.contains(&Some("sub-b".into())),
        "{subscriptions:?}"
    );

    // The run as `ferry runs` shows it, and its log and events as the API does.
    let runs = run_saved(&url, data, vec!["runs", "--job", "billing"]).await;
    let newest = runs.lines().next().unwrap();
    assert!(
        newest.starts_with(&format!("#{} billing manual active succeeded ", run["id"])),
        "{runs}"
    );
    for count in [
        "events_created=2",
        "transactions_processed=4",
        "sessions_parked=1",
        "events_rejected=0",
    ] {
        assert!(newest.contains(count), "{count} in {newest}");
    }
    let log: Vec<&str> = run["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["message"].as_str().unwrap())
        .collect();
    let completion = log.last().unwrap();
    let seconds = completion
        .strip_prefix("Sync completed in ")
        .and_then(|rest| rest.strip_suffix("s: 2 events created, 4 transactions processed"))
        .unwrap_or_else(|| panic!("the contract's completion line: {log:?}"));
    let (whole, hundredths) = seconds.split_once('.').unwrap_or_default();
    assert!(
        whole.parse::<u64>().is_ok() && hundredths.len() == 2 && hundredths.parse::<u8>().is_ok(),
        "X.XXs: {completion}"
    );
    let delivered: Vec<&str> = run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(delivered.len(), 2, "{run}");
    assert!(
        delivered.contains(&format!("steve-{a}").as_str()),
        "{delivered:?}"
    );

    // The unmapped tag's session waits, and says why; the one still charging is followed.
    let parked = run_saved(&url, data, vec!["billing", "sessions", "--state", "parked"]).await;
    assert_eq!(parked.lines().count(), 1, "{parked}");
    assert!(
        parked.starts_with(&format!("#{stranger} CB-1/1 STRANGER stopped "))
            && parked.contains(" 5.000 kWh parked: no mapping for tag \"STRANGER\""),
        "{parked}"
    );
    let active = run_saved(&url, data, vec!["billing", "sessions", "--state", "active"]).await;
    assert!(
        active.starts_with(&format!("#{charging} CB-1/1 TAG-A started ")),
        "{active}"
    );
    let shown = run_saved(&url, data, vec!["billing", "session", &a.to_string()]).await;
    let mut lines = shown.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with(" 12.345 kWh billed (12.345 kWh in Lago)"),
        "{shown}"
    );
    let event = lines.next().unwrap();
    assert!(
        event.starts_with(&format!("  steve-{a} 12345 Wh → sub-a at "))
            && event.ends_with(&format!(" delivered (run #{})", run["id"])),
        "{shown}"
    );

    // The keys went in by the environment only: neither the command line (what `ps` shows)
    // nor anything the server wrote has them.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", served.child.id().unwrap()))
        .expect("the server's command line (Linux /proc)");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--billing"), "{cmdline}");
    let output = served.output();
    assert!(output.contains("Sync completed in "), "{output}");
    for key in [&keys.steve, &keys.lago] {
        assert!(!cmdline.contains(key.as_str()), "{key} in {cmdline}");
        assert!(
            !output.contains(key.as_str()),
            "{key} in the server's output:\n{output}"
        );
    }
}

#[tokio::test]
async fn missing_or_wrong_billing_settings_are_named_and_nothing_is_served() {
    let keys = Keys::defaults();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let steve = "http://127.0.0.1:9/steve";
    let lago = "http://127.0.0.1:9";
    // (environment, arguments after `serve --billing`, exit code, what stderr must say)
    let cases: [(Option<&Keys>, Vec<&str>, i32, &str); 6] = [
        (
            Some(&keys),
            vec!["--lago-url", lago],
            1,
            "--billing needs --steve-url (or FERRY_STEVE_URL)",
        ),
        (
            Some(&keys),
            vec!["--steve-url", steve],
            1,
            "--billing needs --lago-url (or FERRY_LAGO_URL)",
        ),
        (
            None,
            vec!["--steve-url", steve, "--lago-url", lago],
            1,
            "--billing needs StEvE's API key in FERRY_STEVE_API_KEY",
        ),
        (
            Some(&keys),
            vec![
                "--steve-url",
                steve,
                "--lago-url",
                lago,
                "--steve-time-zone",
                "Mars/Olympus",
            ],
            1,
            "--steve-time-zone \"Mars/Olympus\" is not a time zone name",
        ),
        (
            Some(&keys),
            vec![
                "--steve-url",
                steve,
                "--lago-url",
                lago,
                "--billing-http-timeout",
                "soon",
            ],
            2,
            "--billing-http-timeout",
        ),
        (
            Some(&keys),
            vec![
                "--steve-url",
                steve,
                "--lago-url",
                lago,
                "--run-lease",
                "100ms",
            ],
            2,
            "shorter than the shortest lease, 1s",
        ),
    ];
    for (env, flags, code, says) in cases {
        let mut args = vec![
            "serve",
            "--billing",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
        ];
        args.extend(flags.iter().copied());
        let output = ferry(env).args(&args).output().await.unwrap();
        assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
        assert!(
            stderr(&output).contains(says),
            "{says:?} for {args:?}: {output:?}"
        );
        assert!(
            !stdout(&output).contains(" serving "),
            "{args:?}: {output:?}"
        );
    }

    // Only Lago's key missing: the message names its variable.
    let output = ferry(None)
        .args([
            "serve",
            "--billing",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
        ])
        .args(["--steve-url", steve, "--lago-url", lago])
        .env("FERRY_STEVE_API_KEY", "k")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr(&output).contains("--billing needs Lago's API key in FERRY_LAGO_API_KEY"),
        "{output:?}"
    );
}

/// A PostgreSQL database with `ferry serve --no-worker` for the API, the emulators with
/// customer `cust` (subscription `sub`) and tag `TAG` mapped to it; `ferry worker` processes
/// come and go.
struct PgSite {
    world: Emulators,
    database: TestDatabase,
    _served: Process,
    api: Api,
}

/// How long a killed worker's run holds its lease; its successor takes over after it.
const LEASE: &str = "2s";

impl PgSite {
    async fn new() -> PgSite {
        let keys = Keys::defaults();
        let world = Emulators::start(&keys).await;
        world.customer("cust", "sub");
        let database = TestDatabase::create().await;
        // The API server needs --billing to know the job it is asked to trigger.
        let mut args = vec!["--database", database.url.as_str(), "--no-worker"];
        let flags = world.flags("10s");
        args.extend(flags.iter().map(String::as_str));
        let (served, url, token) = serve(ferry(Some(&keys)), &args, "Pair a device").await;
        let api = Api::new(&url, &token);
        api.cli(&["billing", "map", "TAG", "--customer", "cust"])
            .await;
        PgSite {
            world,
            database,
            _served: served,
            api,
        }
    }

    /// A `ferry worker --billing` on the database. Its client waits 10 s for an answer, so a
    /// held or stalled post outlasts the moment the test kills the worker in.
    async fn worker(&self) -> Process {
        let mut args = vec![
            "worker",
            "--database",
            self.database.url.as_str(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--run-lease",
            LEASE,
        ];
        let flags = self.world.flags("10s");
        args.extend(flags.iter().map(String::as_str));
        let worker = Process::start(ferry(Some(&Keys::defaults())), &args, "Metrics: ").await;
        assert!(
            worker.banner[0].contains(" running billing on "),
            "{:?}",
            worker.banner
        );
        worker
    }

    /// `n` sessions of `TAG`, each with its own energy; id → Wh.
    fn charge(&self, n: i64) -> BTreeMap<i64, i64> {
        (0..n)
            .map(|i| {
                let wh = 1_000 + 7 * i;
                (self.world.charge("TAG", wh), wh)
            })
            .collect()
    }

    /// Starts a worker again after a kill and waits until the job is quiet with every
    /// session of `expected` settled; checks Lago and the ledger, and that the dead run was
    /// abandoned rather than finished.
    async fn restart_and_settle(&self, expected: &BTreeMap<i64, i64>, dead: i64) -> Process {
        self.world.lago().clear_faults();
        let worker = self.worker().await;
        // The dead run's triggers run again once its lease lapses; an operator's trigger
        // waits for the same.
        self.api.trigger_billing().await;
        wait_for("every session delivered after the restart", || async {
            let sessions = self.api.sessions().await;
            sessions.len() == expected.len()
                && sessions.iter().all(|s| {
                    s["billed_wh"].as_i64()
                        == Some(expected[&s["steve_transaction_id"].as_i64().unwrap()])
                })
        })
        .await;
        let run = self.api.finished_run_after(dead).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        self.world.assert_billed_once(expected);
        assert_ledger_billed(&self.api, expected).await;
        let abandoned = self.api.get(&format!("/api/admin/sync/runs/{dead}")).await;
        assert_eq!(abandoned["status"], "abandoned", "{abandoned}");
        worker
    }

    /// Stores a trigger, starts a worker and waits for its run to start.
    async fn start_a_run(&self) -> (Process, i64) {
        self.api.trigger_billing().await;
        let worker = self.worker().await;
        wait_for("the worker's run", || async {
            self.api.billing_state().await["in_flight"] == true
        })
        .await;
        let run = self.api.last_run_id().await;
        (worker, run)
    }
}

#[tokio::test]
async fn a_worker_killed_before_lago_applied_its_post_bills_every_session_once_after_a_restart() {
    let site = PgSite::new().await;
    let expected = site.charge(5);
    let lago = site.world.lago();
    lago.stall_next(100, Duration::from_secs(600));
    let (worker, dead) = site.start_a_run().await;
    wait_for("the first post to reach Lago", || async {
        lago.event_posts() >= 1
    })
    .await;
    worker.kill().await;
    assert_eq!(lago.events_stored(), 0, "stalled before it was applied");
    let sessions = site.api.sessions().await;
    assert!(
        sessions
            .iter()
            .all(|s| s["state"] == "billed" && s["events"][0]["status"] == "pending"),
        "planned into the outbox before the send: {sessions:?}"
    );

    let _worker = site.restart_and_settle(&expected, dead).await;
    assert_eq!(
        lago.event_posts(),
        2,
        "the stalled post, then one that was answered"
    );
}

#[tokio::test]
async fn a_worker_killed_after_lago_applied_its_post_settles_it_as_duplicates_after_a_restart() {
    let site = PgSite::new().await;
    let expected = site.charge(5);
    let lago = site.world.lago();
    lago.hold_answer_next(1, Duration::from_secs(600));
    let (worker, dead) = site.start_a_run().await;
    wait_for("Lago to apply the post", || async {
        lago.events_stored() == 5
    })
    .await;
    worker.kill().await;
    let sessions = site.api.sessions().await;
    assert!(
        sessions
            .iter()
            .all(|s| s["billed_wh"] == 0 && s["events"][0]["status"] == "pending"),
        "Ferry never heard Lago's answer: {sessions:?}"
    );

    let _worker = site.restart_and_settle(&expected, dead).await;
    assert_eq!(
        lago.event_posts(),
        2,
        "the held post, then the same batch again, answered as duplicates"
    );
    assert_eq!(lago.events_stored(), 5, "nothing was stored twice");
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_of_a_batch_sequence_bills_every_session_once_after_a_restart()
 {
    let site = PgSite::new().await;
    // Five batches (4 × 100 and 50), four in flight at once, the fifth when one is settled.
    // Lago refuses the first two posts for a minute (their senders wait it out; nothing is
    // applied), applies the third and holds its answer, and takes the rest: killed then, the
    // worker leaves batches recorded, one applied but unrecorded, and two never applied.
    let expected = site.charge(450);
    let lago = site.world.lago();
    lago.rate_limit_next(2, 60);
    lago.hold_answer_next(1, Duration::from_secs(600));
    let (worker, dead) = site.start_a_run().await;
    let delivered = || async {
        let sessions = site.api.sessions().await;
        (sessions.iter())
            .filter(|s| s["events"][0]["status"] == "delivered")
            .count()
    };
    wait_for(
        "two batches recorded (100 + 50), a third applied with its answer held",
        || async { lago.events_stored() == 250 && delivered().await == 150 },
    )
    .await;
    worker.kill().await;
    assert_eq!(lago.event_posts(), 5);
    assert_eq!(lago.events_stored(), 250, "two batches were never applied");
    assert_eq!(delivered().await, 150);

    // The 300 pending events go out again in batches that mix the applied ones (duplicates)
    // with the others.
    let _worker = site.restart_and_settle(&expected, dead).await;
}

#[tokio::test]
async fn two_workers_on_one_database_bill_every_session_once() {
    let site = PgSite::new().await;
    let (one, two) = tokio::join!(site.worker(), site.worker());
    let http = reqwest::Client::new();
    for worker in [&one, &two] {
        let metrics = worker.banner_after("Metrics: ").unwrap();
        wait_for("the worker's trigger listener", || async {
            let text = http
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains("\nferry_worker_listener_connected 1\n")
        })
        .await;
    }
    let mut expected = BTreeMap::new();
    for _round in 0..6 {
        expected.extend(site.charge(40));
        // Each trigger wakes both workers, and both try to start a run for it.
        let before = site.api.last_run_id().await;
        tokio::join!(site.api.trigger_billing(), site.api.trigger_billing());
        let run = site.api.finished_run_after(before).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    site.world.assert_billed_once(&expected);
    assert_ledger_billed(&site.api, &expected).await;
    let runs = site
        .api
        .get("/api/admin/sync/runs?job=billing&limit=500")
        .await;
    for run in runs["runs"].as_array().unwrap() {
        assert!(
            run["status"] == "succeeded" || run["status"] == "partial",
            "{run}"
        );
    }
    for worker in [&one, &two] {
        let log = worker.output();
        assert!(
            log.contains("Received sync trigger notification from api"),
            "both workers heard the triggers:\n{log}"
        );
    }
}

#[tokio::test]
async fn steve_and_lago_down_park_nothing_and_everything_is_billed_once_when_they_are_back() {
    let keys = Keys::defaults();
    let world = Emulators::start(&keys).await;
    world.customer("cust", "sub");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let mut args = vec!["--data", data.to_str().unwrap()];
    let flags = world.flags("2s");
    args.extend(flags.iter().map(String::as_str));
    let (_served, url, token) = serve(ferry(Some(&keys)), &args, WORKER_LINE).await;
    let api = Api::new(&url, &token);
    api.finished_run_after(0).await;
    api.cli(&["billing", "map", "TAG", "--customer", "cust"])
        .await;

    // Lago down: the sessions are planned, their events wait in the outbox.
    let mut expected: BTreeMap<i64, i64> = (0..3)
        .map(|i| (world.charge("TAG", 500 + i), 500 + i))
        .collect();
    world.lago().fail_next(10_000);
    let before = api.last_run_id().await;
    api.cli(&["trigger", "--job", "billing"]).await;
    let run = api.finished_run_after(before).await;
    assert_eq!(run["status"], "partial", "{run}");
    let errors = run["errors"].to_string();
    assert!(
        errors.contains("Sending events to Lago stopped"),
        "{errors}"
    );
    assert_eq!(run["counts"]["events_created"], 0, "{run}");
    assert_eq!(world.lago().events_stored(), 0);
    for session in api.sessions().await {
        assert_eq!(session["state"], "billed", "planned, not parked: {session}");
        assert_eq!(session["events"][0]["status"], "pending", "{session}");
    }

    // StEvE down as well: nothing can be read or sent, and nothing new is decided.
    world.steve().fail_next(10_000);
    let late = world.charge("TAG", 900);
    expected.insert(late, 900);
    let before = run["id"].as_i64().unwrap();
    api.cli(&["trigger", "--job", "billing"]).await;
    let run = api.finished_run_after(before).await;
    assert_eq!(run["status"], "failed", "{run}");
    let errors = run["errors"].to_string();
    assert!(
        errors.contains("Reading StEvE failed")
            && errors.contains("Sending events to Lago stopped"),
        "{errors}"
    );
    assert_eq!(
        api.cli(&["billing", "sessions", "--state", "parked"]).await,
        "No sessions match.\n"
    );
    assert_eq!(
        api.sessions().await.len(),
        3,
        "the late session is not known yet"
    );
    assert_eq!(world.lago().events_stored(), 0);

    // Both back: one run bills what waited and what it reads now, once.
    world.steve().clear_faults();
    world.lago().clear_faults();
    let before = run["id"].as_i64().unwrap();
    api.cli(&["trigger", "--job", "billing"]).await;
    let run = api.finished_run_after(before).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counts"]["events_created"], 4, "{run}");
    world.assert_billed_once(&expected);
    assert_ledger_billed(&api, &expected).await;
    assert_eq!(
        api.cli(&["billing", "sessions", "--state", "parked"]).await,
        "No sessions match.\n"
    );
}
