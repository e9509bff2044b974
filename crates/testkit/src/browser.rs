//! A real headless Chromium for tests of Ferry's pages (the admin console, the agent's Cloud
//! Sync panel), driven over WebDriver by [`fantoccini`].
//!
//! ```no_run
//! # async fn example() {
//! use ferry_testkit::browser::Browser;
//! let browser = Browser::start(1280, 800).await;
//! browser.goto("http://127.0.0.1:7300/console/").await;
//! browser.fill("input[name=token]", "…").await;
//! browser.click("button[type=submit]").await;
//! browser.wait_for_text("h1", "Sync jobs").await;
//! browser.screenshot("docs/screenshots/sync.png").await;
//! browser.close().await;
//! # }
//! ```
//!
//! Each [`Browser`] starts its own `chromedriver` on a free loopback port and one headless
//! Chromium session (`--headless=new --no-sandbox --window-size=W,H`, a profile in a
//! temporary directory), so tests can run side by side. The `wait_*` helpers poll the page
//! until what they look for is there, failing after [`Browser::patience`] (20 s unless set):
//! a test never sleeps a fixed time. Failures panic with what was awaited and, when the page
//! logged errors, its console errors.
//!
//! Chromium and chromedriver come from Debian (`apt-get install -y chromium
//! chromium-driver`; `.ci/run` installs them when missing). `FERRY_CHROMEDRIVER` and
//! `FERRY_CHROMIUM` name other binaries. Without them, [`Browser::start`] fails the test with
//! that instruction.
//!
//! Call [`Browser::close`] at the end of a test: it ends the session, which closes Chromium.
//! If a test panics first, dropping the `Browser` kills Chromium and chromedriver by their
//! process ids.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

/// What to install when the browser is missing.
pub const INSTALL_HINT: &str = "Browser tests need Chromium and its WebDriver: install Debian's \
     `chromium` and `chromium-driver` packages (`apt-get install -y chromium chromium-driver`; \
     .ci/run does it when they are missing), or set FERRY_CHROMEDRIVER (and FERRY_CHROMIUM) to \
     other binaries.";

/// How often the `wait_*` helpers look again.
const POLL: Duration = Duration::from_millis(50);

/// A headless Chromium session and the chromedriver that runs it.
pub struct Browser {
    client: Client,
    driver: Child,
    driver_url: String,
    session_id: String,
    /// Chromium's own process, killed on drop if the session was not closed.
    chromium_pid: Option<u64>,
    patience: Duration,
    _profile: TempDir,
}

impl Browser {
    /// A headless Chromium whose viewport is `width` × `height` CSS pixels. Fails the test,
    /// saying what to install, when Chromium or chromedriver is missing.
    pub async fn start(width: u32, height: u32) -> Browser {
        match Browser::try_start(width, height).await {
            Ok(browser) => browser,
            Err(error) => panic!("{error}"),
        }
    }

    /// [`Browser::start`], returning why it could not start instead of panicking.
    pub async fn try_start(width: u32, height: u32) -> Result<Browser, String> {
        let driver_binary = binary("FERRY_CHROMEDRIVER", "chromedriver")
            .ok_or_else(|| format!("chromedriver was not found. {INSTALL_HINT}"))?;
        let chromium = std::env::var_os("FERRY_CHROMIUM").map(PathBuf::from);
        if chromium.is_none() && binary("FERRY_CHROMIUM", "chromium").is_none() {
            return Err(format!("chromium was not found. {INSTALL_HINT}"));
        }
        let port = free_port().map_err(|e| format!("no free port for chromedriver: {e}"))?;
        let mut driver = Command::new(&driver_binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "{} did not start: {e}. {INSTALL_HINT}",
                    driver_binary.display()
                )
            })?;
        let driver_url = format!("http://127.0.0.1:{port}");
        if let Err(error) = wait_ready(&driver_url, &mut driver).await {
            let _ = driver.kill();
            let _ = driver.wait();
            return Err(error);
        }

        let profile = tempfile::tempdir().map_err(|e| format!("no profile directory: {e}"))?;
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                format!("--window-size={width},{height}"),
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if let Some(chromium) = chromium {
            options["binary"] = json!(chromium);
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("capabilities are an object");
        };
        let connected = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver_url)
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(error) => {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err(format!(
                    "Chromium did not start a session: {error}. {INSTALL_HINT}"
                ));
            }
        };
        let created = client.session_creation_response();
        let session_id = created
            .map(|c| c.session_id().to_owned())
            .unwrap_or_default();
        let chromium_pid = created
            .and_then(|c| c.capabilities())
            .and_then(|c| c.get("goog:processID"))
            .and_then(Value::as_u64);
        let browser = Browser {
            client,
            driver,
            driver_url,
            session_id,
            chromium_pid,
            patience: Duration::from_secs(20),
            _profile: profile,
        };
        browser.resize(width, height).await;
        Ok(browser)
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How long the `wait_*` helpers wait before they fail the test.
    pub fn patience(mut self, patience: Duration) -> Browser {
        self.patience = patience;
        self
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Makes the viewport (what a page sees as `innerWidth` × `innerHeight`, and what a
    /// screenshot holds) `width` × `height` CSS pixels; the window is that plus its frame.
    pub async fn resize(&self, width: u32, height: u32) {
        let set = |w: u32, h: u32| async move {
            self.client
                .set_window_size(w, h)
                .await
                .unwrap_or_else(|e| panic!("resizing the window to {w}×{h}: {e}"));
        };
        set(width, height).await;
        let inner = self
            .eval("return [window.innerWidth, window.innerHeight]", vec![])
            .await;
        let frame = |requested: u32, got: &Value| {
            requested.saturating_sub(u32::try_from(got.as_u64().unwrap_or(0)).unwrap_or(0))
        };
        let (extra_w, extra_h) = (frame(width, &inner[0]), frame(height, &inner[1]));
        if extra_w > 0 || extra_h > 0 {
            set(width + extra_w, height + extra_h).await;
        }
        self.wait_until(&format!("a viewport of {width}×{height}"), || async move {
            self.eval("return [window.innerWidth, window.innerHeight]", vec![])
                .await
                == json!([width, height])
        })
        .await;
    }

    /// The first element matching `css`, once there is one.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.poll(&format!("an element {css:?}"), || self.find(css))
            .await
    }

    /// The first element matching `css` whose text contains `text`, once there is one.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        self.poll(
            &format!("an element {css:?} with the text {text:?}"),
            || self.find_with_text(css, text),
        )
        .await
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        self.wait_until(&format!("no element {css:?}"), || async move {
            self.find(css).await.is_none()
        })
        .await;
    }

    /// Waits until the page's script `condition` (a function body that returns) is truthy.
    pub async fn wait_for_script(&self, what: &str, condition: &str) {
        self.wait_until(what, || async move {
            let value = self.eval(condition, vec![]).await;
            !(value.is_null() || value == json!(false))
        })
        .await;
    }

    /// Polls `condition` until it holds; fails the test after [`Browser::patience`] with
    /// `what` and the page's console errors.
    pub async fn wait_until<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.poll(what, || {
            let holds = condition();
            async move { holds.await.then_some(()) }
        })
        .await;
    }

    /// Polls `look` until it finds something; fails the test after [`Browser::patience`] with
    /// `what` and the page's console errors.
    pub async fn poll<T, F, Fut>(&self, what: &str, mut look: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            if let Some(found) = look().await {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                let url = self.client.current_url().await.map(|u| u.to_string());
                let errors = self.console_errors().await;
                panic!(
                    "gave up after {:?} waiting for {what} (page {url:?}; its console errors: \
                     {errors:?})",
                    self.patience
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The first element matching `css`, if any (no waiting).
    pub async fn find(&self, css: &str) -> Option<Element> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Some(element),
            Err(error) if is_missing(&error) => None,
            Err(error) => panic!("looking for {css:?}: {error}"),
        }
    }

    /// Every element matching `css` (no waiting).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("looking for {css:?}: {e}"))
    }

    async fn find_with_text(&self, css: &str, text: &str) -> Option<Element> {
        for element in self.find_all(css).await {
            match element.text().await {
                Ok(shown) if shown.contains(text) => return Some(element),
                Ok(_) => {}
                // Redrawn meanwhile: the next poll finds its successor.
                Err(error) if is_missing(&error) => {}
                Err(error) => panic!("reading the text of {css:?}: {error}"),
            }
        }
        None
    }

    /// Whether an element matching `css` is there now.
    pub async fn exists(&self, css: &str) -> bool {
        self.find(css).await.is_some()
    }

    /// Clicks the first element matching `css`, once there is one.
    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.click_element(&element, css).await;
    }

    /// Clicks the first element matching `css` whose text contains `text`.
    pub async fn click_text(&self, css: &str, text: &str) {
        let element = self.wait_for_text(css, text).await;
        self.click_element(&element, &format!("{css} {text:?}"))
            .await;
    }

    /// Clicks `element` as a person would: scrolled to the middle of the window first, so a
    /// fixed footer or notice at the window's edge does not take the click.
    pub async fn click_element(&self, element: &Element, what: &str) {
        let arg = serde_json::to_value(element).expect("an element is JSON");
        self.eval(
            "arguments[0].scrollIntoView({block: 'center', inline: 'center'}); return true",
            vec![arg],
        )
        .await;
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {what}: {e}"));
    }

    /// Replaces the value of the first field matching `css` with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing {css:?}: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css:?}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running a script in the page: {e}"))
    }

    /// A PNG of the viewport, written to `path` (its directory is created).
    pub async fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
    }

    /// The page's console messages at error level since the last call (Chromium's log).
    pub async fn console_errors(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.driver_url, self.session_id);
        let Ok(response) = reqwest::Client::new()
            .post(url)
            .json(&json!({"type": "browser"}))
            .send()
            .await
        else {
            return Vec::new();
        };
        let Ok(body) = response.json::<Value>().await else {
            return Vec::new();
        };
        body["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter_map(|entry| entry["message"].as_str().map(str::to_owned))
            .collect()
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(mut self) {
        if self.client.clone().close().await.is_ok() {
            self.chromium_pid = None;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.chromium_pid {
            // Its renderers follow it when it goes.
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn is_missing(error: &CmdError) -> bool {
    matches!(
        error,
        CmdError::Standard(e)
            if e.error == ErrorStatus::NoSuchElement || e.error == ErrorStatus::StaleElementReference
    )
}

/// The binary named by `variable`, else `name` on `PATH`.
fn binary(variable: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until chromedriver answers that it is ready.
async fn wait_ready(url: &str, driver: &mut Child) -> Result<(), String> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!(
                "chromedriver exited at once ({status}). {INSTALL_HINT}"
            ));
        }
        if let Ok(response) = http.get(format!("{url}/status")).send().await
            && let Ok(body) = response.json::<Value>().await
            && body["value"]["ready"] == true
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "chromedriver did not get ready at {url}. {INSTALL_HINT}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
