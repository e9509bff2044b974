//! The `ferry` binary as a new user runs it: serve, pair two devices, sync, read the status.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn run(args: &[&str]) -> Output {
    ferry().args(args).output().expect("ferry runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A `ferry serve` process; killed when dropped.
struct Served {
    child: Child,
    url: String,
    admin_token: Option<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, extra: &[&str]) -> Served {
    banner(spawn_serve(data, extra))
}

/// `ferry serve` on `data`, or on the database `extra` names (`--database` and `--data`
/// exclude each other), on a free port unless `extra` names one.
fn spawn_serve(data: &Path, extra: &[&str]) -> Child {
    let mut command = ferry();
    command.arg("serve");
    if !extra.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--database") {
        command.arg("--data").arg(data);
    }
    command
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry serve starts")
}

/// Reads a starting server's banner: its URL and, on a first start, the admin token.
fn banner(mut child: Child) -> Served {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut admin_token) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(token) = line
            .split(": ")
            .nth(1)
            .filter(|_| line.starts_with("Admin token"))
        {
            admin_token = Some(token.trim().to_string());
        }
        if let Some(rest) = line.split(" serving ").nth(1) {
            url = Some(rest.trim().to_string());
        }
        if line.starts_with("Pair a device") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        url: url.expect("serve prints its URL"),
        admin_token,
    }
}

fn pair_code(data: &Path) -> String {
    pair_code_on(&["--data", data.to_str().unwrap()])
}

/// A pairing code from `ferry pair-code` with these store arguments.
fn pair_code_on(store: &[&str]) -> String {
    let output = ferry()
        .arg("pair-code")
        .args(store)
        .output()
        .expect("ferry runs");
    assert!(output.status.success(), "{output:?}");
    stdout(&output)
        .lines()
        .last()
        .expect("the code is on the last line")
        .trim()
        .to_string()
}

/// `ferry agent pair` of `db` with the server, using `code`.
fn agent_pair(url: &str, code: &str, db: &Path, name: &str) -> Output {
    run(&[
        "agent",
        "pair",
        "--server",
        url,
        "--code",
        code,
        "--db",
        db.to_str().unwrap(),
        "--name",
        name,
    ])
}

#[test]
fn a_new_user_serves_pairs_two_devices_and_syncs_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let server = serve(&data, &[]);
    let token = server
        .admin_token
        .clone()
        .expect("the first start prints the admin token");
    let saved = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert_eq!(saved.trim(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let mut dbs = Vec::new();
    for name in ["a", "b"] {
        let db = dir.path().join(format!("{name}.sqlite"));
        let code = pair_code(&data);
        let output = agent_pair(&server.url, &code, &db, name);
        assert!(output.status.success(), "{output:?}");
        dbs.push(db);
    }
    // A used code is refused.
    let code = pair_code(&data);
    let db = dir.path().join("c.sqlite");
    assert!(agent_pair(&server.url, &code, &db, "c").status.success());
    let again = agent_pair(&server.url, &code, &dir.path().join("d.sqlite"), "d");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("pairing code"),
        "{again:?}"
    );

    let app = rusqlite::Connection::open(&dbs[0]).unwrap();
    app.execute("INSERT INTO customers (id, name) VALUES ('c1', 'Ada')", [])
        .unwrap();
    drop(app);

    let a = run(&["agent", "sync", "--json", "--db", dbs[0].to_str().unwrap()]);
    assert!(a.status.success(), "{a:?}");
    let report: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(report["pushed"], 1);
    assert_eq!(report["trigger"], "manual");

    let b = run(&["agent", "sync", "--json", "--db", dbs[1].to_str().unwrap()]);
    assert!(b.status.success(), "{b:?}");
    let report: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(report["pulled"], 1);
    let name: String = rusqlite::Connection::open(&dbs[1])
        .unwrap()
        .query_row("SELECT name FROM customers WHERE id = 'c1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(name, "Ada");

    let status = run(&[
        "agent",
        "status",
        "--json",
        "--db",
        dbs[1].to_str().unwrap(),
    ]);
    assert!(status.status.success(), "{status:?}");
    let body: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(body["status"]["state"], "synced");
    assert_eq!(body["status"]["pending"], 0);
    assert_eq!(body["cycles"][0]["pulled"], 1);

    // A second start keeps the token and does not print it again.
    drop(server);
    let again = serve(&data, &[]);
    assert!(again.admin_token.is_none());
}

#[test]
fn agent_sync_exits_non_zero_when_the_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let db = dir.path().join("a.sqlite");
    {
        let server = serve(&data, &[]);
        let code = pair_code(&data);
        let output = agent_pair(&server.url, &code, &db, "a");
        assert!(output.status.success(), "{output:?}");
    }
    let output = run(&["agent", "sync", "--db", db.to_str().unwrap()]);
    assert!(!output.status.success());
    let status = run(&["agent", "status", "--json", "--db", db.to_str().unwrap()]);
    let body: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(body["status"]["state"], "offline");
    assert!(body["status"]["last_error"].is_string());
}

#[test]
fn serve_with_a_custom_schema_and_schema_tools() {
    let dir = tempfile::tempdir().unwrap();
    // An existing app database, adopted as is.
    let app_db = dir.path().join("app.sqlite");
    let app = rusqlite::Connection::open(&app_db).unwrap();
    app.execute_batch(
        "CREATE TABLE tables (n INTEGER PRIMARY KEY, seats INTEGER NOT NULL);
         CREATE TABLE tabs (table_n INTEGER NOT NULL REFERENCES tables (n), opened TEXT NOT NULL,
                            total REAL, PRIMARY KEY (table_n, opened));
         CREATE TABLE staff (id TEXT PRIMARY KEY, manager_id TEXT REFERENCES staff (id));",
    )
    .unwrap();
    drop(app);
    let inferred = run(&["schema", "infer", app_db.to_str().unwrap()]);
    assert!(inferred.status.success(), "{inferred:?}");
    let ddl_path = dir.path().join("app.sql");
    std::fs::write(&ddl_path, &inferred.stdout).unwrap();
    let check = run(&["schema", "check", ddl_path.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    assert!(
        stdout(&check).contains("tabs (3 columns), primary key (table_n, opened)"),
        "{}",
        stdout(&check)
    );

    let data = dir.path().join("ferry-data");
    let server = serve(&data, &["--schema", ddl_path.to_str().unwrap()]);
    let code = pair_code(&data);
    let output = agent_pair(&server.url, &code, &app_db, "till");
    assert!(output.status.success(), "{output:?}");

    // A table without a primary key is refused, by name.
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "CREATE TABLE ok (id TEXT PRIMARY KEY); CREATE TABLE audit (msg TEXT);",
    )
    .unwrap();
    let refused = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        dir.path().join("other").to_str().unwrap(),
        "--schema",
        bad.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("table audit has no primary key"),
        "{refused:?}"
    );
}

/// A TCP balancer that sends each new connection to the next upstream in turn, as a load
/// balancer in front of several instances would. Threads, so it needs no runtime.
struct RoundRobin {
    url: String,
    /// Connections sent to each upstream.
    sent: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

impl RoundRobin {
    fn start(upstreams: Vec<std::net::SocketAddr>) -> RoundRobin {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent: std::sync::Arc<Vec<AtomicUsize>> =
            std::sync::Arc::new(upstreams.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = sent.clone();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let target = n % upstreams.len();
                counts[target].fetch_add(1, Ordering::SeqCst);
                let upstream = upstreams[target];
                std::thread::spawn(move || pipe(client, upstream));
            }
        });
        RoundRobin { url, sent }
    }
}

fn pipe(client: std::net::TcpStream, upstream: std::net::SocketAddr) {
    use std::net::Shutdown;
    let Ok(server) = std::net::TcpStream::connect(upstream) else {
        return;
    };
    let (mut client_in, mut server_out) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let upload = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = std::io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = upload.join();
}

fn sync_json(db: &Path) -> serde_json::Value {
    let output = run(&["agent", "sync", "--json", "--db", db.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_serve_processes_on_one_postgres_database_behave_as_one_server() {
    let database = ferry_testkit::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = ["--database", database.url.as_str()];
    // Both start at once on the empty database: one migrates it, the other waits for that.
    let first = spawn_serve(&dir.path().join("one"), &store);
    let second = spawn_serve(&dir.path().join("two"), &store);
    let (one, two) = tokio::task::spawn_blocking(move || (banner(first), banner(second)))
        .await
        .unwrap();
    let tokens: Vec<&String> = [&one, &two]
        .iter()
        .filter_map(|s| s.admin_token.as_ref())
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "exactly one instance creates the admin token"
    );
    let admin = tokens[0].clone();

    let upstreams = [&one, &two]
        .map(|s| s.url.trim_start_matches("http://").parse().unwrap())
        .to_vec();
    let balancer = RoundRobin::start(upstreams);
    let dbs: Vec<std::path::PathBuf> = ["a", "b"]
        .iter()
        .map(|name| {
            let db = dir.path().join(format!("{name}.sqlite"));
            let code = pair_code_on(&store);
            let output = agent_pair(&balancer.url, &code, &db, name);
            assert!(output.status.success(), "{output:?}");
            db
        })
        .collect();

    // Every sync is a new process and a new connection, so each lands on the other instance
    // than the one before.
    for round in 0..4 {
        let app = rusqlite::Connection::open(&dbs[round % 2]).unwrap();
        app.execute(
            "INSERT INTO customers (id, name) VALUES (?1, ?2)",
            [format!("c{round}"), format!("Customer {round}")],
        )
        .unwrap();
        drop(app);
        assert_eq!(sync_json(&dbs[round % 2])["pushed"], 1);
        assert_eq!(sync_json(&dbs[(round + 1) % 2])["pulled"], 1);
    }
    for db in &dbs {
        let count: i64 = rusqlite::Connection::open(db)
            .unwrap()
            .query_row("SELECT count(*) FROM customers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 4);
    }
    let sent: Vec<usize> = balancer
        .sent
        .iter()
        .map(|n| n.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");

    // Check-ins made through either instance are listed by both, identically.
    let http = reqwest::Client::new();
    let mut listings = Vec::new();
    for server in [&one, &two] {
        let body: serde_json::Value = http
            .get(format!("{}/api/admin/devices", server.url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let devices = body["devices"].as_array().unwrap().clone();
        assert_eq!(devices.len(), 2);
        assert!(devices.iter().all(|d| d["last_push_at"].is_string()));
        listings.push(devices);
    }
    assert_eq!(listings[0], listings[1]);
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = run(&["migrate", "--data", data.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("Migrated the store's database."), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(
        output.stdout.is_empty() || !stdout(&output).contains('\u{1b}'),
        "{output:?}"
    );
}

#[test]
fn a_reader_that_went_away_is_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ddl = dir.path().join("schema.sql");
    std::fs::write(
        &ddl,
        "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, name TEXT);",
    )
    .unwrap();
    // `ferry schema check schema.sql | head -0`, without the race: the pipe's reader is
    // closed before ferry writes its first line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = ferry()
        .args(["schema", "check", ddl.to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("ferry runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{output:?}");
    assert!(!log.contains("panicked"), "{log}");
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The device id `ferry agent pair` printed.
fn paired_device_id(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    let text = stdout(output);
    let (_, rest) = text.split_once(" as device ").expect("the device id");
    rest.split_whitespace().next().unwrap().to_owned()
}

/// The server's devices, as its admin lists them.
async fn devices(server: &Served) -> Vec<serde_json::Value> {
    let token = server.admin_token.as_ref().expect("an admin token");
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/admin/devices", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["devices"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pairing_that_fails_on_the_device_keeps_its_code_and_leaves_no_device() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let server = serve(&data, &[]);
    let code = pair_code(&data);

    // The app's own `customers` is not the server's: pairing stops before it spends the code.
    let app = dir.path().join("app.sqlite");
    rusqlite::Connection::open(&app)
        .unwrap()
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, nickname TEXT)")
        .unwrap();
    let refused = agent_pair(&server.url, &code, &app, "Till");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("customers"),
        "{}",
        stderr(&refused)
    );
    // A directory that does not exist cannot hold the database either.
    let nowhere = dir.path().join("no-such-dir").join("b.sqlite");
    let refused = agent_pair(&server.url, &code, &nowhere, "Tablet");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("cannot be created"),
        "{}",
        stderr(&refused)
    );
    assert!(devices(&server).await.is_empty(), "no device was left");

    // The same code pairs a file that can take the schema.
    let good = dir.path().join("good.sqlite");
    paired_device_id(&agent_pair(&server.url, &code, &good, "Till"));
    let listed = devices(&server).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "Till");
    // And it is spent now.
    let again = agent_pair(&server.url, &code, &dir.path().join("c.sqlite"), "C");
    assert!(
        stderr(&again).contains("pairing code was refused"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_a_paired_file_again_takes_force_which_revokes_the_old_identity_and_stops_its_agent()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let server = serve(&data, &[]);
    let db = dir.path().join("till.sqlite");
    let first = paired_device_id(&agent_pair(&server.url, &pair_code(&data), &db, "Till"));

    let code = pair_code(&data);
    let refused = agent_pair(&server.url, &code, &db, "Till again");
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("already paired")
            && message.contains(&first)
            && message.contains("--force"),
        "{message}"
    );

    let mut agent = crate::support::Process::start(
        crate::support::ferry(),
        &[
            "agent",
            "run",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "Cloud Sync panel",
    )
    .await;
    let forced = ferry()
        .args([
            "agent",
            "pair",
            "--force",
            "--server",
            &server.url,
            "--code",
            &code,
        ])
        .args(["--db", db.to_str().unwrap(), "--name", "Till again"])
        .output()
        .unwrap();
    let second = paired_device_id(&forced);
    assert_ne!(first, second);

    // The old identity is revoked; the agent that ran as it notices and stops.
    let listed = devices(&server).await;
    let old = listed
        .iter()
        .find(|d| d["device_id"] == first.as_str())
        .unwrap();
    assert!(old["revoked_at"].is_string(), "{old}");
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), agent.child.wait())
        .await
        .expect("the agent stopped")
        .unwrap();
    assert!(!status.success());
    assert!(agent.log().contains("paired again"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_and_device_files_have_one_user_at_a_time_and_say_who() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let server = serve(&data, &[]);
    let served_at = server.url.trim_start_matches("http://").to_owned();

    // A second server, a migration and a move of the same directory are refused, naming
    // the server that holds it.
    for args in [
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
        vec!["migrate", "--data", data.to_str().unwrap()],
        vec![
            "migrate-store",
            "--from",
            data.to_str().unwrap(),
            "--to",
            "postgres://nowhere/x",
        ],
    ] {
        let refused = run(&args);
        assert!(!refused.status.success(), "{args:?}");
        let message = stderr(&refused);
        assert!(
            message.contains("in use by ferry serve on http://") && message.contains(&served_at),
            "{args:?}: {message}"
        );
    }

    // One process syncs a device file at a time: a one-off cycle beside a running agent is
    // refused, naming the agent.
    let db = dir.path().join("till.sqlite");
    paired_device_id(&agent_pair(&server.url, &pair_code(&data), &db, "Till"));
    let agent = crate::support::Process::start(
        crate::support::ferry(),
        &[
            "agent",
            "run",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "Cloud Sync panel",
    )
    .await;
    let panel = agent.banner_after("Cloud Sync panel: ").unwrap();
    let refused = run(&["agent", "sync", "--db", db.to_str().unwrap()]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    let address = panel.trim_end_matches('/');
    assert!(
        message.contains("ferry agent run (control API") && message.contains(address),
        "{message}"
    );
    drop(agent);
}

#[test]
fn commands_that_add_to_a_store_say_when_there_is_none_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-served-yet");
    for args in [
        vec!["pair-code", "--data", missing.to_str().unwrap()],
        vec![
            "token",
            "create",
            "--role",
            "admin",
            "--data",
            missing.to_str().unwrap(),
        ],
        vec![
            "tenant",
            "create",
            "acme",
            "--data",
            missing.to_str().unwrap(),
        ],
        vec!["tenant", "list", "--data", missing.to_str().unwrap()],
    ] {
        let refused = run(&args);
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            stderr(&refused).contains("no Ferry store"),
            "{}",
            stderr(&refused)
        );
        assert!(!missing.exists(), "{args:?} created the directory");
    }
    let both = run(&["pair-code", "--data", "d", "--database", "postgres://x/y"]);
    assert!(!both.status.success());
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
    let schemeless = run(&[
        "agent",
        "pair",
        "--server",
        "127.0.0.1:7300",
        "--code",
        "X",
        "--db",
        "a.sqlite",
        "--name",
        "A",
    ]);
    assert!(!schemeless.status.success());
    assert!(
        stderr(&schemeless).contains("write http://127.0.0.1:7300"),
        "{}",
        stderr(&schemeless)
    );
}

/// Writes a customer into a device's app database, as the app would.
fn insert_customer(db: &Path, id: &str, name: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute(
            "INSERT INTO customers (id, name) VALUES (?1, ?2)",
            [id, name],
        )
        .unwrap();
}

fn customers(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut statement = conn
        .prepare("SELECT id FROM customers ORDER BY id")
        .unwrap();
    statement
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_backup_taken_while_serving_restores_to_what_the_store_held_then() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data_arg = data.to_str().unwrap();
    let server = serve(&data, &[]);
    let till = dir.path().join("till.sqlite");
    paired_device_id(&agent_pair(&server.url, &pair_code(&data), &till, "Till"));
    insert_customer(&till, "c1", "Ada");
    insert_customer(&till, "c2", "Grace");
    assert!(sync_json(&till)["ok"].as_bool().unwrap());

    let backup = dir.path().join("ferry-backup.sqlite");
    let made = run(&[
        "backup",
        "--data",
        data_arg,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{made:?}");
    assert!(
        stdout(&made).contains("1 device(s), 2 row(s)"),
        "{}",
        stdout(&made)
    );
    // Never over an existing file.
    let again = run(&[
        "backup",
        "--data",
        data_arg,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );

    insert_customer(&till, "c3", "Edsger");
    assert!(sync_json(&till)["ok"].as_bool().unwrap());
    let from = backup.to_str().unwrap();
    let busy = run(&["restore", "--data", data_arg, "--from", from, "--force"]);
    assert!(
        stderr(&busy).contains("in use by ferry serve"),
        "{}",
        stderr(&busy)
    );
    let server_address = server.url.trim_start_matches("http://").to_owned();
    drop(server);

    let refused = run(&["restore", "--data", data_arg, "--from", from]);
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    let restored = run(&["restore", "--data", data_arg, "--from", from, "--force"]);
    assert!(restored.status.success(), "{restored:?}");

    // A new device pulls what the store held at the backup. The server is back where the
    // till knows it.
    let address = server_address.as_str();
    let server = serve(&data, &["--listen", address]);
    let tablet = dir.path().join("tablet.sqlite");
    paired_device_id(&agent_pair(
        &server.url,
        &pair_code(&data),
        &tablet,
        "Tablet",
    ));
    assert!(sync_json(&tablet)["ok"].as_bool().unwrap());
    assert_eq!(customers(&tablet), ["c1", "c2"]);
    // The till pulled past the backup before it; it still gets what is written after the
    // restore, however few changes that is.
    insert_customer(&tablet, "c4", "Barbara");
    assert!(sync_json(&tablet)["ok"].as_bool().unwrap());
    assert!(sync_json(&till)["ok"].as_bool().unwrap());
    assert_eq!(customers(&till), ["c1", "c2", "c3", "c4"]);
    let kept = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ferry.sqlite.before-restore-")
        });
    assert!(kept, "the replaced store is kept");
}

#[test]
fn an_additive_schema_change_reaches_devices_without_losing_pending_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let write = |name: &str, ddl: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, ddl).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let v1 = write(
        "v1.sql",
        "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL);",
    );
    let v2 = write(
        "v2.sql",
        "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT);
         CREATE TABLE loyalty (id TEXT PRIMARY KEY,
                               customer_id TEXT NOT NULL REFERENCES customers (id),
                               points INTEGER NOT NULL DEFAULT 0);",
    );
    let server = serve(&data, &["--schema", &v1]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let till = dir.path().join("till.sqlite");
    let tablet = dir.path().join("tablet.sqlite");
    paired_device_id(&agent_pair(&server.url, &pair_code(&data), &till, "Till"));
    paired_device_id(&agent_pair(
        &server.url,
        &pair_code(&data),
        &tablet,
        "Tablet",
    ));
    // Written on the old schema, not yet pushed.
    insert_customer(&till, "c1", "Ada");
    drop(server);

    // The operator serves the grown schema on the same store and address.
    let server = serve(&data, &["--schema", &v2, "--listen", &address]);
    let report = sync_json(&till);
    assert_eq!(report["pushed"], 1, "the pending write went out: {report}");
    let report = sync_json(&tablet);
    assert_eq!(report["pulled"], 1, "{report}");
    let app = rusqlite::Connection::open(&tablet).unwrap();
    app.execute_batch(
        "UPDATE customers SET email = 'ada@example.com' WHERE id = 'c1';
         INSERT INTO loyalty (id, customer_id, points) VALUES ('l1', 'c1', 10);",
    )
    .unwrap();
    assert_eq!(sync_json(&tablet)["pushed"], 2);
    assert_eq!(sync_json(&till)["pulled"], 2);
    let till_app = rusqlite::Connection::open(&till).unwrap();
    let (email, points): (String, i64) = till_app
        .query_row(
            "SELECT email, points FROM customers JOIN loyalty ON loyalty.customer_id = customers.id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((email.as_str(), points), ("ada@example.com", 10));
    drop(server);

    // A change devices could not follow is refused, unless the operator replaces the schema.
    let v3 = write(
        "v3.sql",
        "CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT);",
    );
    let refused = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--schema",
        &v3,
    ]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    for part in [
        "table loyalty is gone",
        "customers.name",
        "--replace-schema",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let replaced = serve(&data, &["--schema", &v3, "--replace-schema"]);
    assert!(replaced.url.starts_with("http://"));
}

#[test]
fn schema_infer_prints_what_it_can_and_names_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let app_db = dir.path().join("app.sqlite");
    rusqlite::Connection::open(&app_db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT);
             CREATE TABLE audit (code TEXT UNIQUE, msg TEXT);
             CREATE TABLE audit_notes (id TEXT PRIMARY KEY, code TEXT REFERENCES audit (code));",
        )
        .unwrap();
    let inferred = run(&["schema", "infer", app_db.to_str().unwrap()]);
    assert!(inferred.status.success(), "{inferred:?}");
    let said = stderr(&inferred);
    assert!(
        said.contains(
            "Left out table audit: it has no primary key, and Ferry needs one to sync a row"
        ),
        "{said}"
    );
    assert!(
        said.contains("Left out table audit_notes: its foreign key (code) references audit, which is left out."),
        "{said}"
    );
    let ddl = stdout(&inferred);
    assert!(ddl.contains("CREATE TABLE items"), "{ddl}");
    assert!(!ddl.contains("CREATE TABLE audit"), "{ddl}");

    // What it printed is a schema the server takes as it is.
    let ddl_path = dir.path().join("app.sql");
    std::fs::write(&ddl_path, &ddl).unwrap();
    let check = run(&["schema", "check", "--json", ddl_path.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    let checked: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(checked["tables"][0]["name"], "items");
    assert_eq!(
        checked["tables"][0]["primary_key"],
        serde_json::json!(["id"])
    );
    assert_eq!(checked["tables"].as_array().unwrap().len(), 1);
    assert!(
        ddl.contains(checked["schema_hash"].as_str().unwrap()),
        "{ddl}"
    );

    // With nothing it can print, it fails, saying why.
    let keyless = dir.path().join("keyless.sqlite");
    rusqlite::Connection::open(&keyless)
        .unwrap()
        .execute_batch("CREATE TABLE log (at TEXT, msg TEXT);")
        .unwrap();
    let refused = run(&["schema", "infer", keyless.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let said = stderr(&refused);
    assert!(
        said.contains("Left out table log: it has no primary key") && said.contains("no table of"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_json_logs_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = crate::support::Process::start(
        crate::support::ferry(),
        &[
            "serve",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
        "Pair a device",
    )
    .await;
    ferry_testkit::wait_for("the log of the first start", || async {
        served
            .log()
            .contains("Created the default tenant and its admin token.")
    })
    .await;
    let log = served.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a JSON log: {log:?}"
    );
    let mut messages = Vec::new();
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["level"].is_string(), "{line}");
        messages.push(event["fields"]["message"].as_str().unwrap().to_owned());
    }
    assert!(
        messages
            .iter()
            .any(|m| m == "Migrated the store's database."),
        "{messages:?}"
    );
    // The banner is the server's answer to a person, on stdout, and stays text.
    assert!(
        served.banner[0].starts_with("Ferry "),
        "{:?}",
        served.banner
    );
    served.kill().await;
}

/// Regression: tracing-subscriber reported a log line stderr could not take with `eprintln!`,
/// which panicked on the same broken stderr: a server whose log reader had gone died at its
/// first log line, or, once started, never stopped on SIGTERM. And a SIGTERM sent as soon as
/// the banner was out could beat the handler to it and end the server without a drain.
#[test]
fn a_server_whose_log_reader_went_away_still_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = ferry()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(writer)
        .spawn()
        .expect("ferry serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner: Vec<String> = lines
        .by_ref()
        .map(Result::unwrap)
        .take_while(|line| !line.starts_with("Pair a device"))
        .collect();
    assert!(
        banner
            .first()
            .is_some_and(|line| line.contains(" serving ")),
        "it started: {banner:?}"
    );
    std::thread::spawn(move || for _ in lines {});

    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait().unwrap()));
    let status = stopped
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("ferry serve stopped within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}
