//! `ferry serve`, `ferry pair-code` and `ferry migrate`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ferry_server::init::StoreLocation;
use ferry_store::StoreError;
use ferry_worker::runtime::Worker;
use tokio_util::sync::CancellationToken;

use crate::args::{MigrateArgs, PairCodeArgs, ServeArgs};
use crate::lock;

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ddl = match &args.schema {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let location = args.store.location();
    if args.no_worker && matches!(location, StoreLocation::DataDir(_)) {
        anyhow::bail!(
            "--no-worker needs --database: on the embedded SQLite store the sync worker can \
             only run inside `ferry serve`"
        );
    }
    // Everything that can be wrong with the flags or the address is found before the store
    // is opened: a first start creates the admin token, which is printed only once serving.
    let prepared = args.jobs.prepare(!args.no_worker)?;
    // Held while serving: a second server on the same directory would share the file with
    // this one, each with its own in-process worker and events. Taken before the address,
    // which a second server on the same directory would most likely find taken.
    let doing = |address| format!("ferry serve on http://{address}");
    let mut data_dir = match &location {
        StoreLocation::DataDir(dir) => Some(lock_data_dir(dir, &doing(args.listen))?),
        StoreLocation::Postgres { .. } => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(lock) = &mut data_dir {
        lock.doing(&doing(addr));
    }
    let change = match args.replace_schema {
        true => ferry_server::init::SchemaChange::Replace,
        false => ferry_server::init::SchemaChange::Additive,
    };
    let opened = ferry_server::init::open_with(&location, ddl.as_deref(), change)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let tables: Vec<&str> = opened
        .schema
        .tables
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let worker_options = prepared.options.clone();
    let mut config = ferry_server::Config::new(opened.schema.clone());
    config.shutdown_grace = args.shutdown_grace;
    let limits = &args.limits;
    config.body_limit_bytes = limits.max_body;
    config.compressed_body_limit_bytes = limits.max_compressed_body;
    config.max_push_changes = limits.max_push_changes as usize;
    config.max_push_bytes_in_flight = limits.max_push_bytes_in_flight;
    config.max_pull_bytes = limits.max_pull_bytes;
    config.header_timeout = limits.header_timeout;
    config.body_timeout = limits.body_timeout;
    config.idle_timeout = limits.idle_timeout;
    config.max_connections = limits.max_connections as usize;
    config.max_connections_per_address = limits.max_connections_per_address as usize;
    config.max_in_flight = limits.max_in_flight as usize;
    warn_if_over_open_file_limit(config.max_connections);
    config.sync_jobs = prepared.names.clone();
    config.tier_intervals = worker_options.intervals;
    // Before the banner: whoever read it may stop the server, and gets a drain.
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    outln!("Ferry {} serving http://{addr}", env!("CARGO_PKG_VERSION"));
    outln!("Console: http://{addr}/console/");
    match &location {
        StoreLocation::DataDir(dir) => outln!("Data directory: {}", dir.display()),
        StoreLocation::Postgres { .. } => outln!("Database: {}", location.describe()),
    }
    outln!(
        "Synced tables: {} (schema hash {})",
        tables.join(", "),
        config.schema_hash
    );
    match (&opened.admin_token, &location) {
        (Some(token), StoreLocation::DataDir(dir)) => outln!(
            "Admin token (shown once, saved to {}): {token}",
            dir.join(ferry_server::init::ADMIN_TOKEN_FILE).display()
        ),
        (Some(token), StoreLocation::Postgres { .. }) => {
            outln!("Admin token (shown once, keep it safe): {token}")
        }
        (None, _) => {}
    }
    match &location {
        StoreLocation::DataDir(dir) => {
            outln!("Pair a device: ferry pair-code --data {}", dir.display())
        }
        StoreLocation::Postgres { .. } => {
            outln!("Pair a device: ferry pair-code --database <the same URL>")
        }
    }
    let mut state = ferry_server::AppState::new(opened.store, config)
        .with_jobs(opened.jobs.clone())
        .with_billing(opened.billing.clone());
    let worker = if args.no_worker {
        None
    } else {
        outln!(
            "Sync worker {} running {}",
            worker_options.worker_id,
            state.config.sync_jobs.join(", ")
        );
        // Its own token: the worker finishes a run in progress while the server drains.
        let jobs = prepared.build(opened.billing.clone());
        let worker = Worker::spawn(opened.jobs, jobs, worker_options, shutdown.child_token());
        state = state.with_metrics(worker.metrics());
        Some(worker)
    };
    ferry_server::serve(listener, state, shutdown)
        .await
        .context("serving")?;
    if let Some(worker) = worker {
        worker.join().await;
    }
    tracing::info!("Server stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Connections, the store and the process itself all take file descriptors: a connection
/// limit near the open-file limit would have accepting fail instead of wait.
fn warn_if_over_open_file_limit(max_connections: usize) {
    /// Descriptors kept for the store, the listener, logs and the like.
    const HEADROOM: u64 = 64;
    let Some(open_files) = open_file_limit() else {
        return;
    };
    if max_connections as u64 + HEADROOM > open_files {
        tracing::warn!(
            max_connections,
            open_files,
            "--max-connections is close to or above the process's open-file limit: at that many \
             connections accepting fails rather than waits. Lower --max-connections or raise \
             the limit (ulimit -n, LimitNOFILE=)."
        );
    }
}

/// The soft limit on open files, where the system tells it (Linux's /proc).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Takes the data directory's lock for `doing`, creating the directory if need be.
pub(crate) fn lock_data_dir(dir: &Path, doing: &str) -> anyhow::Result<lock::Held> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    lock::take_or_say(&lock::of_data_dir(dir), doing, |holder| {
        format!(
            "the data directory {} is in use by {holder}; stop that server first, or give this \
             one another --data",
            dir.display()
        )
    })
}

/// Fails, saying what to do, when `location` is a data directory that holds no store yet:
/// commands that only add to a store must not create an empty one.
pub(crate) fn require_existing(location: &StoreLocation) -> anyhow::Result<()> {
    if let StoreLocation::DataDir(dir) = location {
        let database = dir.join(ferry_server::init::DATABASE_FILE);
        if !database.exists() {
            anyhow::bail!(
                "there is no Ferry store in {} (no {}); start the server there first with \
                 `ferry serve --data {}`, or give the --data of the server you run",
                dir.display(),
                database.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

pub(crate) async fn pair_code(args: PairCodeArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location();
    require_existing(&location)?;
    let store = ferry_server::init::open_store(&location)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let ttl = match args.ttl_minutes {
        Some(minutes) => std::time::Duration::from_secs(u64::from(minutes) * 60),
        None => args.ttl,
    };
    let code = match ferry_server::init::create_pairing_code(&store, &args.tenant, ttl).await {
        Err(StoreError::UnknownTenant(tenant)) => anyhow::bail!(
            "the store {} has no tenant {tenant:?}; `ferry serve` creates the default tenant on \
             its first start",
            location.describe()
        ),
        other => other.context("creating a pairing code")?,
    };
    // The code alone on stdout, so `--code "$(ferry pair-code)"` works; the words are for
    // the person reading the terminal.
    eprintln!(
        "Pairing code for tenant {} (one use, expires {}):",
        code.tenant, code.expires_at
    );
    outln!("{}", code.code);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location();
    // A running server migrated its store when it started; one migrated under it would run
    // code that predates the new tables.
    let _data_dir = match &location {
        StoreLocation::DataDir(dir) => Some(lock_data_dir(dir, "ferry migrate")?),
        StoreLocation::Postgres { .. } => None,
    };
    let applied = ferry_server::init::migrate(&location)
        .await
        .with_context(|| format!("migrating the store {}", location.describe()))?;
    match applied.as_slice() {
        [] => outln!("The store {} is up to date.", location.describe()),
        versions => outln!(
            "Migrated the store {} to version {} (applied {}).",
            location.describe(),
            versions[versions.len() - 1],
            versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on Ctrl-C or SIGTERM: decide, tell, wait. The handlers are in place when
/// this returns, so a signal sent as soon as a command's banner is out gets the drain rather
/// than the default action, which ends the process at once.
pub(crate) fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    let signalled = {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        }
    };
    #[cfg(not(unix))]
    let signalled = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("Shutting down: finishing requests in flight.");
        token.cancel();
    });
}
