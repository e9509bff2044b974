//! The Cloud Sync panel in a real headless Chromium, against a real `ferry agent run`: the pill
//! goes yellow then green on "Force sync now", red when the server goes away and red with the
//! reason for a rejected row; the Devices list shows the other device; Force pull asks first.
//!
//! The device reaches the server through a [`Gate`], a TCP proxy the test can hold: a cycle
//! then waits in its health check, so "Syncing…" stays on screen until the test opens it.
//!
//! With `FERRY_SCREENSHOTS=<dir>` (a path from the workspace root, e.g. `docs/screenshots`) the
//! tests also save the panel's screenshots there, at desktop (1280×800) and tablet (768×1024)
//! size.

use std::path::PathBuf;
use std::time::Duration;

use ferry_client::ClientOptions;
use ferry_testkit::TestServer;
use ferry_testkit::browser::Browser;
use ferry_testkit::pos::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::watch;

use crate::support::Process;

/// What the [`Gate`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Passes them through.
    Open,
    /// Lets them wait, unanswered, until it opens again.
    Held,
}

/// A TCP proxy in front of the server. Changing the mode closes the connections it carries,
/// so the next request of the device's pooled client meets the new mode.
struct Gate {
    url: String,
    mode: watch::Sender<Mode>,
}

impl Gate {
    async fn start(upstream: std::net::SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (mode, _) = watch::channel(Mode::Open);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(carry(client, upstream, modes.subscribe()));
            }
        });
        Gate { url, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn carry(
    mut client: TcpStream,
    upstream: std::net::SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    loop {
        match *mode.borrow_and_update() {
            Mode::Open => break,
            Mode::Held => {}
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = mode.changed() => {}
    }
}

/// A server, a device paired through a [`Gate`] with `ferry agent run` serving its panel, and a
/// second device, "Tablet B", that has synced.
struct Setup {
    server: TestServer,
    gate: Gate,
    agent: Process,
    panel_url: String,
    db_path: PathBuf,
    _dir: tempfile::TempDir,
    tablet: ferry_testkit::TestDevice,
}

impl Setup {
    async fn start() -> Setup {
        let server = TestServer::start().await;
        let gate = Gate::start(server.addr).await;
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("front-desk.sqlite");
        let code = server.pairing_code().await;
        ferry_client::pair(
            &gate.url,
            &code,
            &db_path,
            "Front desk",
            "test",
            ClientOptions::default(),
        )
        .await
        .unwrap();
        let app = rusqlite::Connection::open(&db_path).unwrap();
        insert_category(&app, "drinks", "Drinks", None);
        insert_product(&app, "cola", Some("drinks"), "Cola", 250);
        insert_product(&app, "lemonade", Some("drinks"), "Lemonade", 300);
        drop(app);

        let tablet = server.pair_device("Tablet B").await;
        insert_customer(&tablet.app(), "ada", "Ada Lovelace");
        tablet.sync_ok().await;

        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.env("FERRY_LOG", "info").kill_on_drop(true);
        let db = db_path.to_str().unwrap().to_owned();
        let agent = Process::start(
            command,
            &[
                "agent",
                "run",
                "--db",
                &db,
                "--listen",
                "127.0.0.1:0",
                "--progress",
                "none",
            ],
            "Cloud Sync panel:",
        )
        .await;
        let panel_url = agent
            .banner_after("Cloud Sync panel: ")
            .expect("ferry agent run prints the panel's address");
        Setup {
            server,
            gate,
            agent,
            panel_url,
            db_path,
            _dir: dir,
            tablet,
        }
    }

    /// The app's own connection to the device's database.
    fn app(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.db_path).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }
}

/// Where to save screenshots, if anywhere.
fn screenshots() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRY_SCREENSHOTS")?;
    // Tests run in the crate's directory; the path is meant from the workspace root.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

const DESKTOP: (u32, u32) = (1280, 800);
const TABLET: (u32, u32) = (768, 1024);

/// Sizes the window so that the page's viewport is `width` × `height` CSS pixels, the size of
/// the screenshots (the window's own frame takes some of its height).
async fn viewport(browser: &Browser, (width, height): (u32, u32)) {
    browser.resize(width, height).await;
    let inner = browser
        .eval("return [window.innerWidth, window.innerHeight]", vec![])
        .await;
    let extra = |i: usize, want: u32| want as i64 - inner[i].as_i64().unwrap();
    let (wider, taller) = (extra(0, width), extra(1, height));
    if (wider, taller) != (0, 0) {
        browser
            .client()
            .set_window_size(
                (width as i64 + wider) as u32,
                (height as i64 + taller) as u32,
            )
            .await
            .unwrap();
        browser
            .wait_for_script(
                &format!("a viewport of {width}×{height}"),
                &format!("return window.innerWidth === {width} && window.innerHeight === {height}"),
            )
            .await;
    }
}

/// Saves the viewport as `panel-<name>-desktop.png` and `panel-<name>-tablet.png`, when
/// screenshots are asked for; the window ends at desktop size.
async fn screenshots_of(browser: &Browser, name: &str) {
    let Some(dir) = screenshots() else {
        return;
    };
    for (size, dimensions) in [("desktop", DESKTOP), ("tablet", TABLET)] {
        viewport(browser, dimensions).await;
        // Drawn at the new width before the picture is taken.
        browser
            .eval(
                "return new Promise((done) => requestAnimationFrame(() => done(true)))",
                vec![],
            )
            .await;
        browser
            .screenshot(dir.join(format!("panel-{name}-{size}.png")))
            .await;
    }
    viewport(browser, DESKTOP).await;
}

/// The text of the first element matching `css` (it must be there).
async fn text(browser: &Browser, css: &str) -> String {
    browser.wait_for(css).await.text().await.unwrap()
}

/// The agent's cycle log, newest first, read from its API.
async fn log(setup: &Setup) -> Vec<serde_json::Value> {
    let body: serde_json::Value = reqwest::get(format!("{}local/log", setup.panel_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["cycles"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_sync_turns_the_pill_yellow_then_green_and_devices_show_the_other_device() {
    let setup = Setup::start().await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    viewport(&browser, DESKTOP).await;
    browser.goto(&setup.panel_url).await;

    // The first automatic cycle has run: green, with its row in the log.
    browser
        .wait_for_text("#pill[data-tone='ok'] .pill-text", "Synced")
        .await;
    browser
        .wait_for_text("#log-rows tr.cycle", "Automatic")
        .await;
    assert!(text(&browser, "#pending").await.starts_with("None"));

    // The other device, and this one marked.
    let tablet = browser.wait_for_text("#devices .device", "Tablet B").await;
    assert!(
        tablet.text().await.unwrap().contains("last seen"),
        "{}",
        tablet.text().await.unwrap()
    );
    let seen = browser
        .wait_for("#devices .device:not(.this-device) time")
        .await;
    let exact = seen.attr("title").await.unwrap().unwrap_or_default();
    assert!(!exact.is_empty(), "the exact time on hover");
    let mine = text(&browser, "#devices .device.this-device").await;
    assert!(
        mine.contains("Front desk") && mine.contains("This device"),
        "{mine}"
    );
    screenshots_of(&browser, "synced").await;

    // A write waits; Force sync now, held in its health check: yellow, the button disabled.
    insert_customer(&setup.app(), "grace", "Grace Hopper");
    browser.wait_for_text("#pending", "1 change waiting").await;
    setup.gate.set(Mode::Held);
    browser.click("#sync-now").await;
    browser
        .wait_for_text("#pill[data-tone='busy'] .pill-text", "Syncing…")
        .await;
    browser
        .wait_for_script(
            "the button to wait for its cycle",
            "return document.getElementById('sync-now').disabled",
        )
        .await;
    screenshots_of(&browser, "syncing").await;

    // Through: green again, with what the cycle did.
    setup.gate.set(Mode::Open);
    browser
        .wait_for_text("#pill[data-tone='ok'] .pill-text", "Synced")
        .await;
    let result = browser.wait_for_text("#sync-result", "Sync finished").await;
    let result = result.text().await.unwrap();
    assert!(result.contains("pushed 1"), "{result}");
    browser
        .wait_for_text("#log-rows tr.cycle", "Force sync")
        .await;
    browser.wait_for_text("#pending", "None").await;
    assert!(
        !browser
            .eval(
                "return document.getElementById('sync-now').disabled",
                vec![]
            )
            .await
            .as_bool()
            .unwrap()
    );
    let newest = &log(&setup).await[0];
    assert_eq!(
        (newest["trigger"].as_str(), newest["pushed"].as_u64()),
        (Some("manual"), Some(1)),
        "{newest}"
    );
    assert!(browser.console_errors().await.is_empty());
    browser.close().await;
    drop(setup.tablet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_shows_its_reason_and_a_stopped_server_turns_the_pill_red() {
    let setup = Setup::start().await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    viewport(&browser, DESKTOP).await;
    browser.goto(&setup.panel_url).await;
    browser
        .wait_for_text("#pill[data-tone='ok'] .pill-text", "Synced")
        .await;

    // A sale line whose sale the server has never seen: rejected, with the reason.
    // (An app that leaves SQLite's foreign keys off writes it.)
    let app = setup.app();
    app.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    insert_sale_item(&app, "line-1", "no-such-sale", "cola", 2, 250);
    drop(app);
    browser.click("#sync-now").await;
    browser
        .wait_for_text(
            "#pill[data-tone='bad'] .pill-text",
            "Sync error · 1 row rejected",
        )
        .await;
    let detail = text(&browser, "#status-detail").await;
    assert!(
        detail.contains("fk_violation") && detail.contains("no-such-sale"),
        "{detail}"
    );
    assert!(
        detail.contains("Correct them in the app"),
        "what to do: {detail}"
    );
    let result = browser.wait_for_text("#sync-result", "Sync failed").await;
    assert!(result.text().await.unwrap().contains("rejected 1"));
    let error_row = text(&browser, "#log-rows tr.cycle-error").await;
    assert!(error_row.contains("fk_violation"), "{error_row}");
    screenshots_of(&browser, "error").await;

    // The server goes away: red, offline, with the time of the last sync.
    let Setup {
        server,
        agent,
        panel_url,
        ..
    } = setup;
    server.stop().await;
    browser.click("#sync-now").await;
    browser
        .wait_for_text("#pill[data-tone='bad'] .pill-text", "Offline · last sync")
        .await;
    let detail = text(&browser, "#status-detail").await;
    assert!(detail.contains("cannot be reached"), "{detail}");
    assert!(
        detail.contains("sent once the cloud can be reached"),
        "{detail}"
    );
    browser
        .wait_for_text("#devices-note", "Devices unavailable while offline")
        .await;
    // The list read before stays, under the note.
    browser.wait_for_text("#devices .device", "Tablet B").await;
    browser
        .wait_for_text("#log-rows td.result-cell", "Offline")
        .await;
    screenshots_of(&browser, "offline").await;
    browser.close().await;
    drop((agent, panel_url));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_pull_waits_under_show_advanced_and_asks_first() {
    let setup = Setup::start().await;
    let browser = Browser::start(TABLET.0, TABLET.1).await;
    browser.goto(&setup.panel_url).await;
    browser
        .wait_for_text("#pill[data-tone='ok'] .pill-text", "Synced")
        .await;

    let button = browser.wait_for("#force-pull").await;
    assert!(
        !button.is_displayed().await.unwrap(),
        "hidden until asked for"
    );
    browser.click_text("summary", "Show advanced").await;
    assert!(button.is_displayed().await.unwrap());
    let warning = text(&browser, "#advanced .warning").await;
    assert!(warning.contains("overwritten"), "{warning}");

    // Asked, then cancelled: nothing happens.
    browser.click("#force-pull").await;
    browser
        .wait_for_script(
            "the confirmation",
            "return document.getElementById('confirm-pull').open",
        )
        .await;
    let question = text(&browser, "#confirm-pull").await;
    assert!(question.contains("Force pull from cloud?"), "{question}");
    assert!(question.contains("has been sent"), "{question}");
    browser.click("#confirm-cancel").await;
    browser
        .wait_for_script(
            "the confirmation to close",
            "return !document.getElementById('confirm-pull').open",
        )
        .await;
    assert!(
        log(&setup)
            .await
            .iter()
            .all(|c| c["trigger"] != "force_pull")
    );

    // Asked again, and confirmed.
    browser.click("#force-pull").await;
    browser
        .wait_for_script(
            "the confirmation",
            "return document.getElementById('confirm-pull').open",
        )
        .await;
    browser.click("#confirm-ok").await;
    let result = browser
        .wait_for_text("#pull-result", "Force pull finished")
        .await;
    assert!(result.text().await.unwrap().contains("pulled"));
    assert_eq!(log(&setup).await[0]["trigger"], "force_pull");
    browser
        .wait_for_text("#log-rows tr.cycle", "Force pull")
        .await;
    browser.close().await;
}

/// A page of another origin: the app's, with the pill tag in its header.
async fn host_page(panel_url: &str) -> String {
    let html = format!(
        "<!doctype html><html><head><title>POS</title></head><body>\
         <header id=\"bar\" style=\"display:flex;gap:1rem;align-items:center;padding:8px 16px;\
         background:#1f2933;color:#fff;font-family:sans-serif\"><b>Corner Café POS</b>\
         <span style=\"flex:1\"></span>\
         <script src=\"{panel_url}pill.js\" async></script></header></body></html>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pill_shows_in_another_page_which_can_neither_read_the_status_nor_force_a_sync() {
    let setup = Setup::start().await;
    let host = host_page(&setup.panel_url).await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    browser.goto(&host).await;

    let frame = browser
        .wait_for("#bar iframe[title='Cloud sync status']")
        .await;
    frame.clone().enter_frame().await.unwrap();
    browser
        .wait_for_text("#pill[data-tone='ok'] .pill-text", "Synced")
        .await;
    browser.client().enter_parent_frame().await.unwrap();
    if let Some(dir) = screenshots() {
        // The app's header alone.
        let header = browser.wait_for("#bar").await;
        let png = header.screenshot().await.unwrap();
        std::fs::write(dir.join("pill-in-header.png"), png).unwrap();
    }

    // The page itself gets nothing: no CORS for reads, and its blind POST is refused.
    let before = log(&setup).await.len();
    let read = browser
        .eval(
            "return fetch(arguments[0] + 'local/status').then(() => 'read', () => 'refused')",
            vec![setup.panel_url.clone().into()],
        )
        .await;
    assert_eq!(read, "refused");
    let sent = browser
        .eval(
            "return fetch(arguments[0] + 'local/sync', {method: 'POST', mode: 'no-cors'})\
             .then(() => 'sent', () => 'failed')",
            vec![setup.panel_url.clone().into()],
        )
        .await;
    assert_eq!(
        sent, "sent",
        "the browser sends it; the agent must refuse it"
    );
    // Only automatic cycles may have run since.
    let cycles = log(&setup).await;
    assert!(
        cycles[..cycles.len() - before]
            .iter()
            .all(|c| c["trigger"] == "schedule"),
        "no cycle ran for it: {cycles:?}"
    );
    browser.close().await;
}
