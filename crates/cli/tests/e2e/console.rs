//! The admin console in a real headless Chromium, against a real `ferry serve --billing` on
//! the StEvE and Lago emulators: sign in, trigger a run and see it arrive live, open its
//! detail, see a device pair live, revoke one (after the confirmation), edit a billing mapping,
//! settle a session that needs review; a viewer is offered none of those actions.
//!
//! With `FERRY_SCREENSHOTS=<dir>` (a path from the workspace root, e.g. `docs/screenshots`)
//! the operator's test also saves every page at desktop (1280×800) and tablet (768×1024) size
//! there, as `console-<page>-<size>.png`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use ferry_client::{Client, ClientOptions};
use ferry_emulators::Running;
use ferry_emulators::lago::{self, Lago};
use ferry_emulators::steve::{self, Steve, StopActor};
use ferry_proto::local::CycleTrigger;
use ferry_testkit::browser::Browser;
use serde_json::{Value, json};
use tokio::process::Command;

use super::support::{Api, Process};

const MINUTE_MS: i64 = 60_000;
const DESKTOP: (u32, u32) = (1280, 800);
const TABLET: (u32, u32) = (768, 1024);

/// A `ferry serve --billing` on a new data directory, with StEvE and Lago emulators that hold
/// the demo data and one session whose meter ran backwards.
struct World {
    served: Process,
    console: String,
    admin: Api,
    data: tempfile::TempDir,
    steve: Running<Steve>,
    _lago: Running<Lago>,
    /// Where app databases of devices are.
    devices: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let steve = steve::spawn(steve::Config::default()).await.unwrap();
        let lago = lago::spawn(lago::Config::default()).await.unwrap();
        ferry_emulators::demo::seed(steve.handle(), steve.url(), lago.handle(), lago.url())
            .unwrap();
        let now = ferry_core::time::now_ms();
        let backwards = steve.handle().start_session(
            "CB-STREET-7",
            2,
            "BOB",
            now - 90 * MINUTE_MS,
            Some("52000"),
        );
        steve
            .handle()
            .stop_session(
                backwards,
                now - 30 * MINUTE_MS,
                "51200",
                Some("Local"),
                StopActor::Station,
            )
            .unwrap();

        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("data");
        let mut command = ferry();
        command
            .env("FERRY_STEVE_API_KEY", steve::Config::default().api_key)
            .env("FERRY_LAGO_API_KEY", lago::Config::default().api_key);
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            dir.to_str().unwrap(),
            "--billing",
            "--steve-url",
            steve.url(),
            "--lago-url",
            lago.url(),
        ];
        let served = Process::start(command, &args, "Sync worker ").await;
        let url = served
            .banner_after(" serving ")
            .expect("serve prints its URL");
        let console = served
            .banner_after("Console: ")
            .expect("serve prints the console's URL");
        assert_eq!(console, format!("{url}/console/"));
        let token = served
            .banner
            .iter()
            .find(|line| line.starts_with("Admin token"))
            .and_then(|line| line.rsplit(": ").next())
            .map(|token| token.trim().to_owned())
            .expect("a new store gets an admin token");
        World {
            served,
            console,
            admin: Api::new(&url, &token),
            data,
            steve,
            _lago: lago,
            devices: tempfile::tempdir().unwrap(),
        }
    }

    fn data_dir(&self) -> String {
        self.data.path().join("data").to_str().unwrap().to_owned()
    }

    /// `ferry ARGS --data DIR`, which must succeed; the last line it printed.
    async fn ferry_last_line(&self, args: &[&str]) -> String {
        let data = self.data_dir();
        let output = ferry()
            .args(args)
            .args(["--data", &data])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "ferry {args:?}: {output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        text.lines().last().unwrap().trim().to_owned()
    }

    async fn token(&self, role: &str) -> String {
        self.ferry_last_line(&["token", "create", "--role", role])
            .await
    }

    /// Pairs a device whose app database is a new file, and runs one cycle on it.
    async fn device(&self, name: &str) -> Device {
        let code = self.ferry_last_line(&["pair-code"]).await;
        let db = self.devices.path().join(format!("{name}.sqlite"));
        ferry_client::pair(
            &self.admin.url,
            &code,
            &db,
            name,
            "test",
            ClientOptions::default(),
        )
        .await
        .unwrap();
        let client = Client::open(&db, ClientOptions::default()).unwrap();
        sync(&client).await;
        Device { client, db }
    }

    async fn put_mapping(&self, tag: &str, customer: &str) {
        let response = self
            .admin
            .http
            .put(format!(
                "{}/api/admin/billing/mappings/{tag}",
                self.admin.url
            ))
            .bearer_auth(&self.admin.token)
            .json(&json!({"external_customer_id": customer, "external_subscription_id": null}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// The billing job's newest run after run `after`, once it has finished.
    async fn finished_run(&self, after: i64) -> Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let state = self.admin.get("/api/admin/sync/state?job=billing").await;
            let run = &state["last_run"];
            if run["id"].as_i64().unwrap_or(0) > after
                && run["status"] != "running"
                && state["in_flight"] == false
                && state["pending_triggers"] == 0
            {
                return run.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no finished billing run after #{after}: {state}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A session of `tag` that stopped a few minutes ago, charging `wh` Wh.
    fn charge(&self, tag: &str, wh: u32) {
        let now = ferry_core::time::now_ms();
        let start = 20_000;
        let id = self.steve.handle().start_session(
            "CB-DEPOT-1",
            2,
            tag,
            now - 50 * MINUTE_MS,
            Some(&start.to_string()),
        );
        self.steve
            .handle()
            .stop_session(
                id,
                now - 5 * MINUTE_MS,
                &(start + wh).to_string(),
                Some("Local"),
                StopActor::Station,
            )
            .unwrap();
    }

    /// Writes `count` finished billing runs that started an hour ago straight into the
    /// server's store, as if a worker had run them; their ids, oldest first.
    fn seed_runs(&self, count: usize, trigger: &str, status: &str) -> Vec<i64> {
        let path = Path::new(&self.data_dir()).join(ferry_server::init::DATABASE_FILE);
        let mut db = rusqlite::Connection::open(path).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        let now = ferry_core::time::now_ms();
        let mut ids = Vec::new();
        for n in 0..count {
            let started = ferry_core::time::format_ms(now - 60 * MINUTE_MS + n as i64 * 1000);
            let finished =
                ferry_core::time::format_ms(now - 60 * MINUTE_MS + n as i64 * 1000 + 500);
            tx.execute(
                "INSERT INTO runs (job, trigger, tier, status, worker, started_at, heartbeat_at,
                                   finished_at, duration_ms)
                 VALUES ('billing', ?1, 'active', ?2, 'seed', ?3, ?3, ?4, 500)",
                rusqlite::params![trigger, status, started, finished],
            )
            .unwrap();
            ids.push(tx.last_insert_rowid());
        }
        tx.commit().unwrap();
        ids
    }

    async fn newest_run_id(&self) -> i64 {
        let state = self.admin.get("/api/admin/sync/state?job=billing").await;
        state["last_run"]["id"].as_i64().unwrap_or(0)
    }
}

/// A paired device: its client and its app database.
struct Device {
    client: Client,
    db: PathBuf,
}

fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.kill_on_drop(true).stdin(Stdio::null());
    for var in [
        "FERRY_BILLING",
        "FERRY_STEVE_URL",
        "FERRY_LAGO_URL",
        "FERRY_TOKEN",
    ] {
        command.env_remove(var);
    }
    command
}

async fn sync(client: &Client) {
    let report = client
        .sync(CycleTrigger::Manual, &ferry_testkit::no_progress)
        .await;
    assert!(report.ok, "{report:?}");
}

/// Where screenshots go, when asked for.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRY_SCREENSHOTS")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Some(root.join(dir))
}

/// Signs in with `token` and waits for the first page.
async fn sign_in(browser: &Browser, console: &str, token: &str) {
    browser.goto(console).await;
    browser.fill("input[name=token]", token).await;
    browser.click("form.sign-in button[type=submit]").await;
    browser.wait_for("#nav a[aria-current=page]").await;
}

/// Marks the page, so that a test can tell it was not reloaded since.
async fn mark_page(browser: &Browser) {
    browser
        .eval("window.notReloaded = true; return true", vec![])
        .await;
}

async fn assert_not_reloaded(browser: &Browser) {
    let marked = browser
        .eval("return window.notReloaded === true", vec![])
        .await;
    assert_eq!(marked, json!(true), "the page was reloaded");
}

/// Every page of the console, as (name, hash, what shows it is drawn).
const PAGES: [(&str, &str, &str, &str); 7] = [
    ("sync", "#/sync", ".card .last-run", "#"),
    ("runs", "#/runs", "tbody tr td", "billing"),
    ("run", "#/runs/RUN", "h1", "Run #"),
    ("devices", "#/devices", "tbody tr td", "Till 1"),
    (
        "conflicts",
        "#/conflicts?table=products",
        ".conflict h2",
        "products",
    ),
    ("billing", "#/billing", "#mappings", "Tag mappings"),
    ("session", "#/billing/sessions/SESSION", "h1", "Session #"),
];

#[tokio::test]
async fn an_operator_works_the_console_and_sees_changes_live() {
    let world = World::start().await;
    // The first run of a new store runs at once: the sessions park until their tags map.
    let first = world.finished_run(0).await;
    for (tag, customer) in [
        ("ALICE", "ALICE"),
        ("BOB", "BOB"),
        ("CAROL", "CAROL"),
        ("FLEET-ACME", "FLEET-ACME"),
    ] {
        world.put_mapping(tag, customer).await;
    }
    world.admin.trigger_job(Some("billing")).await;
    let billed = world.finished_run(first["id"].as_i64().unwrap()).await;
    assert_eq!(billed["status"], "succeeded", "{billed}");

    // Two devices; the second overwrites the first's product, which logs a conflict.
    let till = world.device("Till 1").await;
    let tablet = world.device("Tablet 2").await;
    for (device, name) in [(&till, "Cola"), (&tablet, "Cola Zero")] {
        let app = rusqlite::Connection::open(&device.db).unwrap();
        app.execute(
            "INSERT INTO products (id, name, price_cents) VALUES ('p1', ?1, 250)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            [name],
        )
        .unwrap();
        drop(app);
        sync(&device.client).await;
    }

    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    browser.goto(&world.console).await;
    browser.wait_for_text("form.sign-in h1", "Sign in").await;
    let shots = screenshot_dir();
    if let Some(dir) = &shots {
        browser
            .screenshot(dir.join("console-sign-in-desktop.png"))
            .await;
    }
    sign_in(&browser, &world.console, &world.admin.token).await;
    browser.wait_for_text("h1", "Sync jobs").await;
    browser.wait_for_text("#live", "Live").await;

    // Trigger Sync: the notice says what happened, and the run shows up without a reload.
    mark_page(&browser).await;
    let before = world.newest_run_id().await;
    browser
        .click_text("section.card button", "Trigger Sync")
        .await;
    browser
        .wait_for_text(".notice", "for billing was stored. A worker is listening")
        .await;
    let run = world.finished_run(before).await;
    let run_id = run["id"].as_i64().unwrap();
    browser
        .wait_for(&format!(".card .last-run a[href='#/runs/{run_id}']"))
        .await;
    assert_not_reloaded(&browser).await;

    // Pin the job: the card says until when, and offers to unpin.
    browser
        .fill("form[aria-label='Pin billing'] input[name=hours]", "6")
        .await;
    browser
        .click_text("form[aria-label='Pin billing'] button", "Pin")
        .await;
    browser
        .wait_for_text(".notice", "billing is pinned at active for 6 hours")
        .await;
    browser.wait_for_text(".card dd", "pinned until").await;
    browser.wait_for_text("section.card button", "Unpin").await;
    let state = world.admin.get("/api/admin/sync/state?job=billing").await;
    assert!(state["pinned_until"].is_string(), "{state}");

    // A run started elsewhere (another tab, a script) appears in the open runs list live.
    browser.click("#nav a[data-page=runs]").await;
    browser
        .wait_for(&format!("tbody tr[data-key='{run_id}']"))
        .await;
    world.admin.trigger_job(Some("billing")).await;
    let next = world.finished_run(run_id).await;
    let next_id = next["id"].as_i64().unwrap();
    browser
        .wait_for_text(&format!("tbody tr[data-key='{next_id}']"), "succeeded")
        .await;
    assert_not_reloaded(&browser).await;

    // Its detail: counts, log lines.
    browser.click(&format!("a[href='#/runs/{next_id}']")).await;
    browser
        .wait_for_text("h1", &format!("Run #{next_id} · billing"))
        .await;
    browser
        .wait_for_text("td .message", "Sync completed in")
        .await;

    // Filters go to the server: the runs of the first run's trigger (the others were
    // triggered by hand), and the filter stays in the page's URL.
    let first_id = first["id"].as_i64().unwrap();
    let first_trigger = first["trigger"].as_str().unwrap();
    assert_ne!(first_trigger, "manual", "{first}");
    browser.click("#nav a[data-page=runs]").await;
    browser
        .wait_for(&format!("tbody tr[data-key='{next_id}']"))
        .await;
    browser
        .click(&format!(
            "form[aria-label='Filter runs'] select[name=trigger] option[value={first_trigger}]"
        ))
        .await;
    browser
        .click_text("form[aria-label='Filter runs'] button", "Filter")
        .await;
    browser
        .wait_for_text("p[role=status]", "Showing the only matching run.")
        .await;
    let rows = browser.find_all("tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].attr("data-key").await.unwrap(),
        Some(first_id.to_string())
    );
    let hash = browser.eval("return location.hash", vec![]).await;
    assert_eq!(hash, json!(format!("#/runs?trigger={first_trigger}")));
    // A link from before the filters moved to the server says `after`; it still filters.
    browser
        .goto(&format!(
            "{}#/runs?trigger=manual&after=2999-01-01T00:00",
            world.console
        ))
        .await;
    browser
        .wait_for_text(".empty", "No run matches these filters.")
        .await;
    let since = browser
        .eval(
            "return document.querySelector('input[name=since]').value",
            vec![],
        )
        .await;
    assert_eq!(since, json!("2999-01-01T00:00"));
    // What the server refuses, the page shows in its words.
    browser
        .goto(&format!("{}#/runs?status=done", world.console))
        .await;
    browser
        .wait_for_text(".alert", "`status` must be one of running, succeeded")
        .await;
    assert!(
        !browser.exists(".empty").await,
        "an error is not \"no run\""
    );
    for error in browser.console_errors().await {
        assert!(
            error.contains("/api/admin/sync/runs?status=done") && error.contains("400"),
            "the page logged errors: {error}"
        );
    }

    // Devices: a device pairing now shows up live; revoking one asks first.
    browser.click("#nav a[data-page=devices]").await;
    browser.wait_for_text("tbody tr td", "Tablet 2").await;
    mark_page(&browser).await;
    let _late = world.device("Late 3").await;
    browser.wait_for_text("tbody tr td", "Late 3").await;
    assert_not_reloaded(&browser).await;
    let tablet_id = tablet.client.device_id().to_owned();
    let row = format!("tbody tr[data-key='{tablet_id}']");
    browser
        .click(&format!("{row} button[aria-label^='Revoke']"))
        .await;
    browser
        .wait_for_text("dialog.confirm h2", "Revoke Tablet 2?")
        .await;
    browser.click_text("dialog.confirm button", "Cancel").await;
    browser.wait_gone("dialog.confirm").await;
    let listed = world.admin.get("/api/admin/devices").await;
    let entry = |listed: &Value| {
        listed["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == tablet_id.as_str())
            .cloned()
            .unwrap()
    };
    assert!(
        entry(&listed).get("revoked_at").is_none(),
        "cancel revoked it"
    );
    browser
        .click(&format!("{row} button[aria-label^='Revoke']"))
        .await;
    browser
        .click_text("dialog.confirm button", "Revoke device")
        .await;
    browser
        .wait_for_text(&format!("{row} .badge"), "revoked")
        .await;
    browser
        .wait_for_text(".notice", "Tablet 2 was revoked")
        .await;
    let listed = world.admin.get("/api/admin/devices").await;
    assert!(entry(&listed)["revoked_at"].is_string());

    // Conflicts: the loser and the winner side by side.
    browser.goto(&format!("{}#/conflicts", world.console)).await;
    browser.fill("input[name=table]", "products").await;
    browser.fill("input[name=pk]", "p1").await;
    browser.click_text("form.filters button", "Search").await;
    browser.wait_for_text(".conflict .side-loser", "Cola").await;
    browser
        .wait_for_text(".conflict .side-winner", "Winner")
        .await;
    // The winner's values beside the loser's, the differing name marked on both.
    browser
        .wait_for_text(".conflict .side-winner dd.differs", "Cola Zero")
        .await;
    browser
        .wait_for_text(".conflict .side-loser dd.differs", "\"Cola\"")
        .await;
    // A new conflict shows up without a reload: the till overwrites the tablet's name.
    mark_page(&browser).await;
    let app = rusqlite::Connection::open(&till.db).unwrap();
    app.execute("UPDATE products SET name = 'Cola Max' WHERE id = 'p1'", [])
        .unwrap();
    drop(app);
    sync(&till.client).await;
    browser
        .wait_for_text(".conflict .side-loser dd.differs", "Cola Zero")
        .await;
    assert_not_reloaded(&browser).await;

    // Billing: the session that needs review comes first, with its reason; edit a mapping.
    browser.click("#nav a[data-page=billing]").await;
    browser
        .wait_for_text("#attention ~ div td", "needs review")
        .await;
    browser
        .click("tbody tr td button[aria-label^='Edit mapping BOB']")
        .await;
    browser
        .wait_for_text("#mapping-form", "Edit the mapping of BOB")
        .await;
    browser
        .fill("input[name=external_subscription_id]", "sub-BOB")
        .await;
    browser
        .click_text("form.mapping button", "Save mapping")
        .await;
    browser
        .wait_for_text(".notice", "BOB now bills to BOB (sub-BOB)")
        .await;
    browser
        .wait_for_text("tbody tr[data-key='BOB']", "sub-BOB")
        .await;
    let mappings = world.admin.get("/api/admin/billing/mappings").await;
    let bob = mappings["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id_tag"] == "BOB")
        .cloned()
        .unwrap();
    assert_eq!(bob["external_subscription_id"], "sub-BOB");

    // The session that needs review, on its own page.
    let review = world
        .admin
        .get("/api/admin/billing/sessions?state=needs_review")
        .await;
    let session_id = review["sessions"][0]["steve_transaction_id"]
        .as_i64()
        .unwrap();
    browser
        .click(&format!("a[href='#/billing/sessions/{session_id}']"))
        .await;
    browser
        .wait_for_text("h1", &format!("Session #{session_id}"))
        .await;
    browser.wait_for_text("dd", "needs review").await;

    // A session to bill, so the newest run has something to show.
    world.charge("ALICE", 18_250);
    world.admin.trigger_job(Some("billing")).await;
    let last = world.finished_run(next_id).await;
    assert_eq!(last["counts"]["events_created"], 1, "{last}");
    let last_id = last["id"].as_i64().unwrap();
    browser.click("#nav a[data-page=sync]").await;
    browser
        .wait_for(&format!(".card .last-run a[href='#/runs/{last_id}']"))
        .await;
    browser
        .wait_for_text(".card .counts", "events created 1")
        .await;

    if let Some(dir) = &shots {
        for (width, height, size) in [
            (DESKTOP.0, DESKTOP.1, "desktop"),
            (TABLET.0, TABLET.1, "tablet"),
        ] {
            browser.resize(width, height).await;
            for (name, hash, ready, text) in PAGES {
                let hash = hash
                    .replace("RUN", &last_id.to_string())
                    .replace("SESSION", &session_id.to_string());
                browser.goto(&format!("{}{hash}", world.console)).await;
                browser.wait_for_text(ready, text).await;
                // Live first: the stream has opened and the page read everything again.
                browser.wait_for_text("#live", "Live").await;
                // What earlier actions said is not part of the page.
                browser
                    .eval("document.querySelectorAll('.notice').forEach((n) => n.remove()); return true", vec![])
                    .await;
                browser
                    .screenshot(dir.join(format!("console-{name}-{size}.png")))
                    .await;
            }
        }
    }
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
    browser.close().await;
    assert!(
        !world.served.log().contains(&world.admin.token),
        "the server logged the admin token"
    );
}

/// The Runs page's filters are the server's: "Show older runs" pages through the runs that
/// match, more than a page of them, and a live run is placed where the server's answer puts it.
#[tokio::test]
async fn the_runs_page_pages_through_the_server_s_matches_and_follows_live_runs() {
    let world = World::start().await;
    let first = world.finished_run(0).await;
    let first_id = first["id"].as_i64().unwrap();
    assert_ne!(first["trigger"], "manual", "{first}");
    let seeded = world.seed_runs(60, "manual", "failed");

    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    sign_in(&browser, &world.console, &world.admin.token).await;
    browser.wait_for_text("#live", "Live").await;
    browser
        .goto(&format!("{}#/runs?trigger=manual", world.console))
        .await;
    browser
        .wait_for_text(
            "p[role=status]",
            "Showing the 50 most recent matching runs.",
        )
        .await;
    browser.click_text("button", "Show older runs").await;
    browser
        .wait_for_text("p[role=status]", "Showing all 60 matching runs.")
        .await;
    let rows = browser.find_all("tbody tr").await;
    assert_eq!(rows.len(), 60);
    assert_eq!(
        rows[59].attr("data-key").await.unwrap(),
        Some(seeded[0].to_string())
    );
    assert!(
        !browser
            .exists(&format!("tbody tr[data-key='{first_id}']"))
            .await,
        "the first run was not manual"
    );

    // A manual run started elsewhere comes in on top; the page reads as many runs again, so
    // the oldest match moves to the next page.
    world.admin.trigger_job(Some("billing")).await;
    let run = world.finished_run(*seeded.last().unwrap()).await;
    let run_id = run["id"].as_i64().unwrap();
    let status = run["status"].as_str().unwrap();
    browser
        .wait_for_text(&format!("tbody tr[data-key='{run_id}']"), status)
        .await;
    browser
        .wait_for_text(
            "p[role=status]",
            "Showing the 60 most recent matching runs.",
        )
        .await;
    browser.click_text("button", "Show older runs").await;
    browser
        .wait_for_text("p[role=status]", "Showing all 61 matching runs.")
        .await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_is_offered_no_action_and_the_api_refuses_them_anyway() {
    let world = World::start().await;
    world.finished_run(0).await;
    world.put_mapping("ALICE", "ALICE").await;
    let _till = world.device("Till 1").await;
    let viewer = world.token("viewer").await;

    let browser = Browser::start(TABLET.0, TABLET.1).await;
    sign_in(&browser, &world.console, &viewer).await;
    browser.wait_for_text("#who", "viewer").await;
    browser.wait_for(".card .last-run").await;
    assert!(
        !browser.exists("section.card button").await,
        "a viewer is offered a Sync action"
    );
    assert!(!browser.exists("form[aria-label^='Pin']").await);

    browser.click("#nav a[data-page=devices]").await;
    browser.wait_for_text("tbody tr td", "Till 1").await;
    assert!(
        !browser.exists("tbody button").await,
        "a viewer is offered Revoke"
    );

    browser.click("#nav a[data-page=billing]").await;
    browser
        .wait_for_text("tbody tr[data-key='ALICE']", "ALICE")
        .await;
    assert!(
        !browser.exists("form.mapping").await,
        "a viewer is offered to edit mappings"
    );
    assert!(
        !browser.exists("tbody button").await,
        "a viewer is offered billing actions"
    );

    // Signing out forgets the token: a reload shows the sign-in form.
    browser.click("#sign-out").await;
    browser.wait_for("form.sign-in").await;
    browser.goto(&world.console).await;
    browser.wait_for("form.sign-in").await;

    // The API refuses what the page does not offer.
    let refused = world
        .admin
        .http
        .post(format!("{}/api/admin/sync/trigger", world.admin.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
    browser.close().await;
}
