//! Command-line arguments. Every flag with an environment variable is listed in the README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_server::init::StoreLocation;
use ferry_store::PgOptions;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_worker::job::{RunStatus, RunTrigger};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Local-first SQLite sync: server, device agent and schema tools"
)]
pub(crate) struct Cli {
    /// Log more (same as FERRY_LOG=debug).
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    /// How log lines on stderr are written: text for people, or json, one object per line,
    /// for a log collector.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", value_enum,
          default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line of text per event; colours only on a terminal.
    Text,
    /// One JSON object per event and line (timestamp, level, fields, target, spans).
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the sync server, on the embedded SQLite store or on PostgreSQL (--database).
    Serve(ServeArgs),
    /// Print a one-time pairing code for a new device: the code alone on stdout, what it is
    /// for on stderr, so `--code "$(ferry pair-code)"` works.
    PairCode(PairCodeArgs),
    /// Bring the store's tables up to date and exit (serve does this on start too).
    Migrate(MigrateArgs),
    /// Copy the embedded SQLite store into a file, safely while the server runs.
    Backup(BackupArgs),
    /// Put a backup in place as the embedded store; no server may run on it meanwhile.
    Restore(RestoreArgs),
    /// Move a tenant from the embedded SQLite store to PostgreSQL; devices keep syncing.
    ///
    /// Copies one tenant (rows, devices, tokens, unused pairing codes, conflict log) from a
    /// data directory into PostgreSQL in one transaction: all of it or nothing. Stop `ferry
    /// serve` on the data directory first. Afterwards run `ferry serve --database <URL>` on the
    /// same address: devices keep the server URL, their tokens and their pull cursors, so they
    /// neither pair again nor download everything again. The data directory is only read.
    MigrateStore(MigrateStoreArgs),
    /// Run the server-side sync jobs as their own process, on PostgreSQL (`ferry serve` runs
    /// them in-process by default).
    Worker(WorkerArgs),
    /// Ask the worker to run a sync job now (POST /api/admin/sync/trigger).
    Trigger(TriggerArgs),
    /// A sync job's run history, newest first.
    Runs(RunsArgs),
    /// A sync job's cadence and what its worker is doing.
    State(StateArgs),
    /// Hold a sync job at a tier for some hours, whatever its activity (POST
    /// /api/admin/sync/pin).
    Pin(PinArgs),
    /// Let a pinned sync job's own tier apply again (DELETE /api/admin/sync/pin).
    Unpin(UnpinArgs),
    /// The devices of the token's tenant: when each was last seen, pushed and pulled, what it
    /// still has to push; `ferry devices revoke ID` revokes one.
    #[command(args_conflicts_with_subcommands = true)]
    Devices(DevicesArgs),
    /// The conflict log of the token's tenant: writes that lost to a newer version of their
    /// row, newest first.
    Conflicts(ConflictsArgs),
    /// Tenants of the store: create one with its first admin token, or list them.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// The billing job's tag mappings and session ledger (through the server's API).
    Billing {
        #[command(subcommand)]
        command: BillingCommand,
    },
    /// Run emulators of StEvE and Lago with demo data, to try the billing job without them.
    Emulate(EmulateArgs),
    /// Operator tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Schema tools.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// The device agent: pair a device, run it, force a cycle, show its status.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

// Where the server's data lives: a data directory, or a PostgreSQL database.
// (Plain comments on the flattened argument groups: clap makes a group's doc comment the
// about of every command that has none of its own, which would hide a command without help.)
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// Data directory of the embedded SQLite store (and its admin token file); not with
    /// --database, which names the other kind of store.
    #[arg(
        long,
        env = "FERRY_DATA",
        default_value = "./ferry-data",
        conflicts_with = "database"
    )]
    pub(crate) data: PathBuf,
    /// PostgreSQL URL, e.g. postgres://ferry@db.internal:5432/ferry. The store is then this
    /// database (tables in its `ferry` schema) instead of the data directory.
    #[arg(long, env = "FERRY_DATABASE_URL")]
    pub(crate) database: Option<String>,
    /// Most PostgreSQL connections this process keeps.
    #[arg(long, env = "FERRY_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) db_pool_size: u32,
    /// PostgreSQL statement_timeout for every statement (0s for none).
    #[arg(long, env = "FERRY_DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub(crate) db_statement_timeout: Duration,
    /// How long a request waits for a free connection before answering 503 unavailable.
    #[arg(long, env = "FERRY_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub(crate) db_acquire_timeout: Duration,
    /// How long opening one PostgreSQL connection may take.
    #[arg(long, env = "FERRY_DB_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub(crate) db_connect_timeout: Duration,
}

impl StoreArgs {
    pub(crate) fn location(&self) -> StoreLocation {
        match &self.database {
            Some(url) => StoreLocation::Postgres {
                url: url.clone(),
                options: PgOptions {
                    pool_size: self.db_pool_size as usize,
                    connect_timeout: self.db_connect_timeout,
                    acquire_timeout: self.db_acquire_timeout,
                    statement_timeout: self.db_statement_timeout,
                },
            },
            None => StoreLocation::DataDir(self.data.clone()),
        }
    }
}

/// `200ms`, `30s`, `5m`, `1h`.
fn duration(text: &str) -> Result<Duration, String> {
    ferry_core::time::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 500ms, 30s, 5m or 1h"))
}

/// The agent's cycle interval: a duration of at least a second; a bare number is seconds, as
/// the flag once took only seconds.
fn cycle_interval(text: &str) -> Result<Duration, String> {
    let interval = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => duration(text)?,
    };
    if interval < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than the shortest interval, 1s"
        ));
    }
    Ok(interval)
}

/// A pairing code's lifetime: from a minute to a week.
fn pairing_ttl(text: &str) -> Result<Duration, String> {
    let ttl = duration(text)?;
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(7 * 86_400) {
        return Err(format!("{text:?} is not between 1m and 7d"));
    }
    Ok(ttl)
}

/// A server's base URL: `http://` or `https://`, a host, maybe a port and a path.
fn server_url(text: &str) -> Result<String, String> {
    let has_scheme = text.starts_with("http://") || text.starts_with("https://");
    if !has_scheme {
        let hint = text.split("://").last().unwrap_or(text);
        return Err(format!(
            "{text:?} has no http:// or https:// in front; write http://{hint} (or https://{hint} \
             behind TLS)"
        ));
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} has a query or fragment; give the server's base URL"
        ));
    }
    Ok(text.to_owned())
}

/// A run status as `--status` offers it, with what it means.
fn status_value(status: RunStatus) -> PossibleValue {
    let help = match status {
        RunStatus::Running => "still running",
        RunStatus::Succeeded => "did all its work",
        RunStatus::Failed => "did none of its work, or stopped on an error",
        RunStatus::Partial => "did some of its work; its errors say what was left",
        RunStatus::Abandoned => "its worker stopped during it; its triggers ran again",
    };
    PossibleValue::new(status.as_str()).help(help)
}

/// A run trigger as `--trigger` offers it, with what it means.
fn trigger_value(trigger: RunTrigger) -> PossibleValue {
    let help = match trigger {
        RunTrigger::Schedule => "the job's cadence",
        RunTrigger::Manual => "an operator's trigger",
        RunTrigger::Catchup => "a worker that found the job overdue when it started",
    };
    PossibleValue::new(trigger.as_str()).help(help)
}

/// A run lease: a duration of at least a second.
fn run_lease(text: &str) -> Result<Duration, String> {
    let lease = duration(text)?;
    if lease < Duration::from_secs(1) {
        return Err(format!("{text:?} is shorter than the shortest lease, 1s"));
    }
    Ok(lease)
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7300")]
    pub(crate) listen: SocketAddr,
    /// SQLite DDL of the synced tables. Without it: the schema the store was last served
    /// with, or the built-in point-of-sale schema. A new schema may only add to the last one
    /// (new tables, new columns at the end), which devices adopt by themselves.
    #[arg(long, env = "FERRY_SCHEMA")]
    pub(crate) schema: Option<PathBuf>,
    /// Serve --schema even when it changes more than it adds; devices on the old schema then
    /// need pairing again.
    #[arg(long, requires = "schema")]
    pub(crate) replace_schema: bool,
    #[command(flatten)]
    pub(crate) jobs: JobArgs,
    /// Do not run the sync worker in this process (on PostgreSQL, run `ferry worker`).
    #[arg(long)]
    pub(crate) no_worker: bool,
    /// After SIGTERM or Ctrl-C, how long to let requests in flight finish.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub(crate) shutdown_grace: Duration,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

// How much one client may ask of the server: sizes, counts, timeouts and concurrency.
#[derive(Args)]
pub(crate) struct LimitArgs {
    /// Largest request body after gzip decompression (decoding stops there): 413.
    #[arg(long, env = "FERRY_MAX_BODY", default_value = "16MiB", value_parser = size)]
    pub(crate) max_body: usize,
    /// Largest request body as sent, compressed when it is gzip (reading stops there): 413.
    #[arg(long, env = "FERRY_MAX_COMPRESSED_BODY", default_value = "16MiB", value_parser = size)]
    pub(crate) max_compressed_body: usize,
    /// Most changes in one push (Ferry's device client sends at most 1,000): 413.
    #[arg(long, env = "FERRY_MAX_PUSH_CHANGES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_push_changes: u32,
    /// Most bytes of push bodies worked on at once, summed over the pushes in flight (a parsed
    /// push takes many times its size in memory); a push beyond waits up to 10 s, then gets
    /// 503 with Retry-After.
    #[arg(long, env = "FERRY_MAX_PUSH_BYTES_IN_FLIGHT", default_value = "64MiB", value_parser = size)]
    pub(crate) max_push_bytes_in_flight: usize,
    /// Most bytes of changes in one pull page; a single larger change still makes a page of
    /// its own.
    #[arg(long, env = "FERRY_MAX_PULL_BYTES", default_value = "8MiB", value_parser = size)]
    pub(crate) max_pull_bytes: usize,
    /// How long a client may take to send a request's head, from its first byte, before the
    /// connection is closed.
    #[arg(long, env = "FERRY_HEADER_TIMEOUT", default_value = "10s", value_parser = timeout)]
    pub(crate) header_timeout: Duration,
    /// How long a client may take to send a request's body, from the end of its head: 408.
    #[arg(long, env = "FERRY_BODY_TIMEOUT", default_value = "60s", value_parser = timeout)]
    pub(crate) body_timeout: Duration,
    /// How long a connection may wait for its next request, or for its client to read a
    /// response, before it is closed. A response that keeps being sent is never cut off.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT", default_value = "60s", value_parser = timeout)]
    pub(crate) idle_timeout: Duration,
    /// Most connections open at once; more wait until one closes. Keep it below the process's
    /// open-file limit (ulimit -n), which the store needs some of too.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections: u32,
    /// Most connections open at once from one client address; more are closed at once.
    /// Behind a proxy every connection comes from its address: set it to --max-connections.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections_per_address: u32,
    /// Most requests handled at once; more are answered 503 unavailable with Retry-After.
    #[arg(long, env = "FERRY_MAX_IN_FLIGHT", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_in_flight: u32,
}

/// A size of at least 1 KiB: `65536`, `64KiB`, `16MiB`, `1GiB` (`KB`, `MB`, `GB` are powers of
/// 1000).
fn size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?} is not a size such as 65536, 64KiB, 16MiB or 1GiB"
            ));
        }
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{text:?} is not a size such as 65536, 64KiB, 16MiB or 1GiB"))?;
    if bytes < 1024 {
        return Err(format!("{text:?} is smaller than the smallest limit, 1KiB"));
    }
    Ok(bytes)
}

/// A timeout: a duration longer than zero.
fn timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration(text)?;
    if timeout.is_zero() {
        return Err(format!(
            "{text:?} would close every connection at once; give a duration such as 10s"
        ));
    }
    Ok(timeout)
}

// Which sync jobs run and how often.
#[derive(Args)]
pub(crate) struct JobArgs {
    /// A probe job, configured as `name=probe2,sleep=200ms,activity=idle` (and `fail`,
    /// `partial` or `panic`, `count.NAME=N`); repeatable. Without any: one probe job named
    /// `probe` that succeeds at once.
    #[arg(long = "probe", value_name = "SPEC")]
    pub(crate) probes: Vec<String>,
    /// Interval of the active tier.
    #[arg(long, env = "FERRY_ACTIVE_INTERVAL", default_value = "15m", value_parser = duration)]
    pub(crate) active_interval: Duration,
    /// Interval of the idle tier.
    #[arg(long, env = "FERRY_IDLE_INTERVAL", default_value = "1h", value_parser = duration)]
    pub(crate) idle_interval: Duration,
    /// Interval of the dormant tier.
    #[arg(long, env = "FERRY_DORMANT_INTERVAL", default_value = "7d", value_parser = duration)]
    pub(crate) dormant_interval: Duration,
    /// Runs older than this are deleted.
    #[arg(long, env = "FERRY_RUN_RETENTION", default_value = "90d", value_parser = duration)]
    pub(crate) run_retention: Duration,
    /// How long a running run may go without a heartbeat before a worker takes it for dead,
    /// marks it abandoned and runs its triggers again; a run sends a heartbeat every sixth of
    /// it. Give every worker on one database the same lease. Shorter leases replace a killed
    /// worker sooner (tests, demos) and cost more heartbeats.
    #[arg(long, default_value = "60s", value_parser = run_lease)]
    pub(crate) run_lease: Duration,
    #[command(flatten)]
    pub(crate) billing: BillingArgs,
}

// The billing job (StEvE → Lago). The API keys come only from the environment
// (`FERRY_STEVE_API_KEY`, `FERRY_LAGO_API_KEY`) or from files, never from a flag's value.
#[derive(Args)]
pub(crate) struct BillingArgs {
    /// Run the billing job: finished charging sessions of StEvE become Lago usage events.
    #[arg(long, env = "FERRY_BILLING")]
    pub(crate) billing: bool,
    /// Where StEvE is served, with its context path (http://host:8180/steve); a URL without a
    /// path gets StEvE's default /steve.
    #[arg(long, env = "FERRY_STEVE_URL")]
    pub(crate) steve_url: Option<String>,
    /// The header StEvE reads its API key from (its `webapi.key`).
    #[arg(
        long,
        env = "FERRY_STEVE_API_KEY_HEADER",
        default_value = "STEVE-API-KEY"
    )]
    pub(crate) steve_api_key_header: String,
    /// A file holding StEvE's API key, instead of FERRY_STEVE_API_KEY.
    #[arg(long, env = "FERRY_STEVE_API_KEY_FILE")]
    pub(crate) steve_api_key_file: Option<PathBuf>,
    /// StEvE's time zone (IANA name, e.g. Europe/Berlin): StEvE reads query times without a
    /// zone, in its own.
    #[arg(long, env = "FERRY_STEVE_TIME_ZONE", default_value = "UTC")]
    pub(crate) steve_time_zone: String,
    /// Lago's API URL (http://host:3000; /api/v1 is added).
    #[arg(long, env = "FERRY_LAGO_URL")]
    pub(crate) lago_url: Option<String>,
    /// A file holding Lago's API key, instead of FERRY_LAGO_API_KEY.
    #[arg(long, env = "FERRY_LAGO_API_KEY_FILE")]
    pub(crate) lago_api_key_file: Option<PathBuf>,
    /// The code of Lago's billable metric the events go to.
    #[arg(
        long,
        env = "FERRY_LAGO_METRIC_CODE",
        default_value = "ev_charging_kwh"
    )]
    pub(crate) lago_metric_code: String,
    /// The event property that carries the energy, in kWh with Wh precision.
    #[arg(long, env = "FERRY_LAGO_ENERGY_PROPERTY", default_value = "kwh")]
    pub(crate) lago_energy_property: String,
    /// Sessions with more energy than this (kWh) wait for an operator's review.
    #[arg(long, env = "FERRY_BILLING_MAX_SESSION_KWH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) billing_max_session_kwh: u32,
    /// Bill sessions that started from this day on (YYYY-MM-DD, UTC) on the first run;
    /// without it, every session StEvE has.
    #[arg(long, env = "FERRY_BILLING_SINCE")]
    pub(crate) billing_since: Option<String>,
    /// With a session started or stopped within this, the job is idle rather than dormant.
    #[arg(long, env = "FERRY_BILLING_IDLE_AFTER", default_value = "1d", value_parser = duration)]
    pub(crate) billing_idle_after: Duration,
    /// How often the job re-reads the last weeks of sessions, for ones StEvE learned late.
    #[arg(long, env = "FERRY_BILLING_SWEEP_EVERY", default_value = "1d", value_parser = duration)]
    pub(crate) billing_sweep_every: Duration,
    /// How far back that sweep reads.
    #[arg(long, env = "FERRY_BILLING_SWEEP_SPAN", default_value = "30d", value_parser = duration)]
    pub(crate) billing_sweep_span: Duration,
    /// Timeout of each request to StEvE and Lago.
    #[arg(long, env = "FERRY_BILLING_HTTP_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub(crate) billing_http_timeout: Duration,
}

#[derive(Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) jobs: JobArgs,
    /// Address to serve the worker's /metrics on. It asks for no token: keep it on loopback
    /// or a private network that only the metrics scraper reaches.
    #[arg(long, env = "FERRY_WORKER_METRICS", default_value = "127.0.0.1:7302")]
    pub(crate) metrics_listen: SocketAddr,
}

// How the commands that use the operator API reach the server.
#[derive(Args)]
pub(crate) struct ApiArgs {
    /// The server's URL.
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:7300", value_parser = server_url)]
    pub(crate) server: String,
    /// An operator token. Without it: the admin token saved in the data directory.
    #[arg(long, env = "FERRY_TOKEN")]
    pub(crate) token: Option<String>,
    /// The data directory whose admin.token to use when --token is not given.
    #[arg(long, env = "FERRY_DATA", default_value = "./ferry-data")]
    pub(crate) data: PathBuf,
    /// Print the server's JSON answer rather than words or a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct TriggerArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The job; the server's default job without it.
    #[arg(long)]
    pub(crate) job: Option<String>,
}

#[derive(Args)]
pub(crate) struct RunsArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Only this job's runs (for example `billing`); every job's without it.
    #[arg(long)]
    pub(crate) job: Option<String>,
    /// How many runs to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub(crate) limit: u32,
    /// Only runs with this status.
    #[arg(long, value_parser = PossibleValuesParser::new(RunStatus::ALL.map(status_value)))]
    pub(crate) status: Option<String>,
    /// Only runs started this way.
    #[arg(long, value_parser = PossibleValuesParser::new(RunTrigger::ALL.map(trigger_value)))]
    pub(crate) trigger: Option<String>,
    /// Only runs that started at or after this RFC 3339 time, for example 2026-11-21T12:00:00Z
    /// or 2026-11-21T13:00:00+01:00.
    #[arg(long, value_parser = time)]
    pub(crate) since: Option<i64>,
    /// Only runs that started before this RFC 3339 time.
    #[arg(long, value_parser = time)]
    pub(crate) until: Option<i64>,
}

/// An RFC 3339 time, as milliseconds since the Unix epoch.
fn time(text: &str) -> Result<i64, String> {
    ferry_core::time::parse_rfc3339_ms(text).ok_or_else(|| {
        format!("{text:?} is not an RFC 3339 time such as 2026-11-21T12:00:00Z or 2026-11-21T13:00:00+01:00")
    })
}

#[derive(Args)]
pub(crate) struct StateArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The job (for example `billing`); the server's default job without it.
    #[arg(long)]
    pub(crate) job: Option<String>,
}

/// A pin's tier.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TierArg {
    /// The busiest cadence (every 15 min by default).
    Active,
    /// Hourly by default.
    Idle,
    /// Weekly by default.
    Dormant,
}

impl TierArg {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TierArg::Active => "active",
            TierArg::Idle => "idle",
            TierArg::Dormant => "dormant",
        }
    }
}

#[derive(Args)]
pub(crate) struct PinArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The tier to hold the job at.
    #[arg(long, value_enum)]
    pub(crate) tier: TierArg,
    /// How long the pin lasts: hours (2, or 0.5), or a duration such as 90m or 3d; at most
    /// 366 days.
    #[arg(long, value_parser = pin_hours)]
    pub(crate) hours: f64,
    /// The job (for example `billing`); the server's default job without it.
    #[arg(long)]
    pub(crate) job: Option<String>,
}

#[derive(Args)]
pub(crate) struct UnpinArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The job (for example `billing`); the server's default job without it.
    #[arg(long)]
    pub(crate) job: Option<String>,
}

/// The longest pin the server takes, in hours: 366 days.
const MAX_PIN_HOURS: f64 = 24.0 * 366.0;

/// A pin's length in hours: a number of hours, as the API takes it, or a duration with its
/// unit like every other duration flag.
fn pin_hours(text: &str) -> Result<f64, String> {
    let hours = match text.trim().parse::<f64>() {
        Ok(hours) => hours,
        Err(_) => {
            duration(text)
                .map_err(|_| {
                    format!(
                        "{text:?} is neither a number of hours nor a duration such as 90m or 3d"
                    )
                })?
                .as_secs_f64()
                / 3600.0
        }
    };
    if !(hours > 0.0 && hours <= MAX_PIN_HOURS) {
        return Err(format!("{text:?} is not between 0 and 366 days"));
    }
    Ok(hours)
}

#[derive(Args)]
pub(crate) struct DevicesArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    #[command(subcommand)]
    pub(crate) command: Option<DevicesCommand>,
}

#[derive(Subcommand)]
pub(crate) enum DevicesCommand {
    /// Revoke a device: its token stops working at once, so it can no longer sync (its rows
    /// stay). Pairing the file again, with a new code and `ferry agent pair --force`, brings it
    /// back as a new device.
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The device's id (`ferry devices` lists them), such as dev_4f2a.
    pub(crate) id: String,
}

#[derive(Args)]
pub(crate) struct ConflictsArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Only conflicts of this table.
    #[arg(long)]
    pub(crate) table: Option<String>,
    /// Only conflicts of this row of --table: its key's value, or a JSON object for a
    /// composite key ('{"sale_id":"s1","line":2}').
    #[arg(long, requires = "table")]
    pub(crate) pk: Option<String>,
    /// How many conflicts to show.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: u32,
}

#[derive(Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant and its first admin token: the token alone on stdout, shown once.
    Create(TenantCreateArgs),
    /// Every tenant of the store, with its devices, oldest first.
    List(TenantListArgs),
}

#[derive(Args)]
pub(crate) struct TenantCreateArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The new tenant's name: 1 to 64 of a-z, 0-9, _ and -.
    #[arg(value_parser = tenant_name)]
    pub(crate) name: String,
}

#[derive(Args)]
pub(crate) struct TenantListArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The longest tenant name.
const MAX_TENANT_NAME: usize = 64;

/// A new tenant's name: lower-case letters, digits, `_` and `-`, so it reads the same in a
/// URL, a shell and a log line, and cannot be mistaken for another by its case.
fn tenant_name(text: &str) -> Result<String, String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if text.is_empty() || text.len() > MAX_TENANT_NAME || !text.bytes().all(allowed) {
        return Err(format!(
            "{text:?} is not a tenant name: use 1 to {MAX_TENANT_NAME} of a-z, 0-9, _ and -"
        ));
    }
    Ok(text.to_owned())
}

#[derive(Subcommand)]
pub(crate) enum BillingCommand {
    /// Map an OCPP tag (and the tags below it) to a Lago customer.
    Map(MapArgs),
    /// Delete a tag's mapping.
    Unmap(UnmapArgs),
    /// List the tag mappings.
    Mappings(ApiOnly),
    /// Import mappings from a CSV of tag,customer,subscription rows (all or none).
    Import(ImportArgs),
    /// Sessions in the billing ledger, newest first.
    Sessions(SessionsArgs),
    /// One session with its events: where did it go?
    Session(SessionArgs),
    /// Settle a session that waits for review: bill it as it is, or never bill it.
    Review(ReviewArgs),
}

#[derive(Args)]
pub(crate) struct ApiOnly {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args)]
pub(crate) struct MapArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The OCPP tag (StEvE's idTag).
    pub(crate) tag: String,
    /// The Lago customer's external id.
    #[arg(long)]
    pub(crate) customer: String,
    /// The Lago subscription's external id; without it, the customer's subscription that
    /// was active at each session's stop.
    #[arg(long)]
    pub(crate) subscription: Option<String>,
}

#[derive(Args)]
pub(crate) struct UnmapArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The OCPP tag whose mapping to delete.
    pub(crate) tag: String,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The CSV file (`-` for standard input); a header row is allowed.
    pub(crate) file: PathBuf,
}

#[derive(Args)]
pub(crate) struct SessionsArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Only sessions in this state: active, billed, parked, needs_review or ignored.
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// Only sessions of this tag.
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// How many sessions to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub(crate) limit: u32,
}

#[derive(Args)]
pub(crate) struct SessionArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// StEvE's transaction id.
    pub(crate) id: i64,
}

#[derive(Args)]
pub(crate) struct ReviewArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// StEvE's transaction id.
    pub(crate) id: i64,
    /// Bill it or ignore it.
    #[arg(value_enum)]
    pub(crate) action: ReviewChoice,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ReviewChoice {
    /// Bill the session as it is.
    Bill,
    /// Never bill it.
    Ignore,
}

#[derive(Args)]
pub(crate) struct EmulateArgs {
    /// Which emulators to run.
    #[arg(value_enum, default_value_t = EmulateWhich::Both)]
    pub(crate) which: EmulateWhich,
    /// Address of the StEvE emulator.
    #[arg(long, default_value = "127.0.0.1:8180")]
    pub(crate) steve_listen: SocketAddr,
    /// Address of the Lago emulator.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub(crate) lago_listen: SocketAddr,
    /// Start empty, without demo tags, customers and sessions.
    #[arg(long)]
    pub(crate) no_demo: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EmulateWhich {
    /// StEvE alone.
    Steve,
    /// Lago alone.
    Lago,
    /// Both.
    Both,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint an operator token (printed once, on the last line).
    Create(TokenCreateArgs),
}

#[derive(Args)]
pub(crate) struct TokenCreateArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// What the token may do: viewer (read), operator (read, trigger, pin), admin.
    #[arg(long, value_enum)]
    pub(crate) role: RoleArg,
    /// The tenant the token acts for (`ferry tenant list` names them).
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
    /// The token stops working after this long (never without it).
    #[arg(long, value_parser = duration)]
    pub(crate) expires_in: Option<Duration>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    /// Reads.
    Viewer,
    /// Reads, triggers and pins sync jobs.
    Operator,
    /// Everything, including devices and tokens.
    Admin,
}

#[derive(Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

#[derive(Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The file to write; it must not exist yet.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The backup file to restore (made by `ferry backup`).
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// Replace the store the data directory holds; it is kept beside, renamed.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args)]
pub(crate) struct MigrateStoreArgs {
    /// Data directory of the embedded SQLite store to read.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// PostgreSQL URL to move the tenant into; its tables are migrated first.
    #[arg(long, env = "FERRY_DATABASE_URL")]
    pub(crate) to: String,
    /// The tenant to move.
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
}

#[derive(Args)]
pub(crate) struct PairCodeArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Tenant the device will join.
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
    /// How long the code stays valid, such as 15m or 2h (at most 7d).
    #[arg(long, default_value = "15m", value_parser = pairing_ttl)]
    pub(crate) ttl: Duration,
    /// The same in minutes, as earlier versions took it.
    #[arg(long, hide = true, conflicts_with = "ttl", value_parser = clap::value_parser!(u32).range(1..=10080))]
    pub(crate) ttl_minutes: Option<u32>,
}

#[derive(Subcommand)]
pub(crate) enum SchemaCommand {
    /// Print the DDL of an existing app database so it can be served as is.
    Infer(InferArgs),
    /// Check a DDL file: list its tables, keys and foreign keys, and print its schema hash.
    Check(CheckArgs),
}

#[derive(Args)]
pub(crate) struct InferArgs {
    /// The app's SQLite database.
    pub(crate) database: PathBuf,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// A file of SQLite DDL.
    pub(crate) ddl: PathBuf,
    /// Print the tables and the hash as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum AgentCommand {
    /// Pair this device's database with a server, using a code from `ferry pair-code`.
    Pair(PairArgs),
    /// Sync on a cadence and serve the local control API.
    Run(RunArgs),
    /// Run one full cycle now and print its report.
    Sync(CycleArgs),
    /// Pull everything from the cloud, cloud authoritative, and print the report.
    Pull(CycleArgs),
    /// Show the sync status and the last cycles.
    Status(StatusArgs),
}

#[derive(Args)]
pub(crate) struct PairArgs {
    /// Server URL, e.g. http://127.0.0.1:7300.
    #[arg(long, env = "FERRY_SERVER", value_parser = server_url)]
    pub(crate) server: String,
    /// Pairing code.
    #[arg(long)]
    pub(crate) code: String,
    /// The app's SQLite database (created if missing).
    #[arg(long, env = "FERRY_DB")]
    pub(crate) db: PathBuf,
    /// Device name shown in the Devices panel.
    #[arg(long)]
    pub(crate) name: String,
    /// Platform shown in the Devices panel.
    #[arg(long, default_value = std::env::consts::OS)]
    pub(crate) platform: String,
    /// Pair a database that is paired already: the new identity replaces the old one, which
    /// is revoked (an agent still running on the file stops).
    #[arg(long)]
    pub(crate) force: bool,
    /// Print the new device's id and tenant as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// The app's SQLite database, paired with `ferry agent pair`.
    #[arg(long, env = "FERRY_DB")]
    pub(crate) db: PathBuf,
    /// Address of the local control API; must be a loopback address.
    #[arg(long, env = "FERRY_AGENT_LISTEN", default_value = "127.0.0.1:7301")]
    pub(crate) listen: SocketAddr,
    /// Time between automatic cycles, such as 30s or 5m (a bare number counts as seconds).
    #[arg(long, env = "FERRY_AGENT_INTERVAL", default_value = "30s", value_parser = cycle_interval)]
    pub(crate) interval: Duration,
    /// Sync only on the interval: do not follow the server's change stream, which starts a
    /// cycle as soon as another device's rows commit.
    #[arg(long)]
    pub(crate) no_change_stream: bool,
    /// How a long cycle (a first pull of a large tenant) shows its progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
}

#[derive(Args)]
pub(crate) struct CycleArgs {
    /// The app's SQLite database, paired with `ferry agent pair`.
    #[arg(long, env = "FERRY_DB")]
    pub(crate) db: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// How the cycle shows its progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// The app's SQLite database, paired with `ferry agent pair`.
    #[arg(long, env = "FERRY_DB")]
    pub(crate) db: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How a long cycle shows its progress.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// A progress bar when stderr is a terminal, nothing otherwise.
    Auto,
    /// A progress bar.
    Bar,
    /// One line per step on stderr (`pull 5000/1000000`), for logs and scripts.
    Lines,
    /// Nothing.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument, subcommand and possible value of the whole command tree, named by its
    /// path (`ferry billing sessions --limit`), that has no help text: `--help` must explain
    /// every one of them.
    fn without_help(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            // clap's own, which explain themselves.
            if id == "help" || id == "version" {
                continue;
            }
            let name = match arg.get_long() {
                Some(long) => format!("{path} --{long}"),
                None => format!("{path} <{}>", id.to_uppercase()),
            };
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(name.clone());
            }
            if arg.get_action().takes_values() {
                for value in arg.get_possible_values() {
                    if value.get_help().is_none() && !value.is_hide_set() {
                        missing.push(format!("{name} {}", value.get_name()));
                    }
                }
            }
        }
        for sub in command.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_name() == "help" {
                continue;
            }
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            without_help(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_argument_and_subcommand_has_help() {
        let mut command = <Cli as clap::CommandFactory>::command();
        command.build();
        let mut missing = Vec::new();
        without_help(&command, "ferry", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn the_command_tree_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn tenant_names_are_short_lower_case_words() {
        for good in ["acme", "shop-2", "north_east", &"a".repeat(64)] {
            assert_eq!(tenant_name(good).as_deref(), Ok(good));
        }
        for bad in ["", "Acme", "a b", "café", "a/b", &"a".repeat(65)] {
            assert!(
                tenant_name(bad)
                    .unwrap_err()
                    .contains("1 to 64 of a-z, 0-9, _ and -"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_pin_lasts_hours_or_a_duration() {
        assert_eq!(pin_hours("2"), Ok(2.0));
        assert_eq!(pin_hours("0.5"), Ok(0.5));
        assert_eq!(pin_hours("90m"), Ok(1.5));
        assert_eq!(pin_hours("3d"), Ok(72.0));
        assert_eq!(pin_hours("366d"), Ok(MAX_PIN_HOURS));
        for out_of_range in ["0", "-1", "0s", "367d", "NaN", "inf"] {
            assert!(
                pin_hours(out_of_range)
                    .unwrap_err()
                    .contains("between 0 and 366 days"),
                "{out_of_range:?}"
            );
        }
        assert!(pin_hours("soon").unwrap_err().contains("number of hours"));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size("65536"), Ok(65536));
        assert_eq!(size("64KiB"), Ok(64 * 1024));
        assert_eq!(size("16MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(size(" 8 MiB "), Ok(8 * 1024 * 1024));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("2MB"), Ok(2_000_000));
        assert!(size("1000").unwrap_err().contains("smallest limit"));
        for nonsense in [
            "",
            "MiB",
            "-1KiB",
            "1.5MiB",
            "16 parsecs",
            "99999999999999999999GiB",
        ] {
            assert!(
                size(nonsense).unwrap_err().contains("is not a size"),
                "{nonsense}"
            );
        }
    }
}
