//! The `ferry` command: the sync server, the device agent and schema tools.
//!
//! Exit codes: 0 success; 1 failure (including a sync cycle that did not complete); 2 usage
//! error. Only this crate reads environment variables and installs the tracing subscriber.

use std::process::ExitCode;

use clap::Parser;

#[macro_use]
mod output;

mod admin;
mod agent;
mod api;
mod args;
mod backup;
mod billing;
mod emulate;
mod lock;
mod migrate_store;
mod progress;
mod schema;
mod serve;
mod tenant;
mod worker;

use args::{AgentCommand, Cli, Command, LogFormat, SchemaCommand, TenantCommand, TokenCommand};

/// mimalloc: a sync moves many small rows, and each is parsed into (and written from) short-lived
/// allocations; mimalloc serves those markedly faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_tracing(cli.verbose, log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::PairCode(args) => serve::pair_code(args).await,
            Command::Migrate(args) => serve::migrate(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::MigrateStore(args) => migrate_store::run(args).await,
            Command::Worker(args) => worker::worker(args).await,
            Command::Trigger(args) => worker::trigger(args).await,
            Command::Runs(args) => worker::runs(args).await,
            Command::State(args) => worker::state(args).await,
            Command::Pin(args) => worker::pin(args).await,
            Command::Unpin(args) => worker::unpin(args).await,
            Command::Devices(args) => admin::devices(args).await,
            Command::Conflicts(args) => admin::conflicts(args).await,
            Command::Tenant { command } => match command {
                TenantCommand::Create(args) => tenant::create(args).await,
                TenantCommand::List(args) => tenant::list(args).await,
            },
            Command::Billing { command } => billing::command(command).await,
            Command::Emulate(args) => emulate::run(args).await,
            Command::Token {
                command: TokenCommand::Create(args),
            } => worker::create_token(args).await,
            Command::Schema {
                command: SchemaCommand::Infer(args),
            } => schema::infer(args),
            Command::Schema {
                command: SchemaCommand::Check(args),
            } => schema::check(args),
            Command::Agent { command } => match command {
                AgentCommand::Pair(args) => agent::pair(args).await,
                AgentCommand::Run(args) => agent::run(args).await,
                AgentCommand::Sync(args) => agent::sync(args).await,
                AgentCommand::Pull(args) => agent::pull(args).await,
                AgentCommand::Status(args) => agent::status(args).await,
            },
        }
    });
    match result {
        Ok(code) => code,
        // A log collector reading JSON lines gets the failure as one of them.
        Err(e) if log_format == LogFormat::Json => {
            tracing::error!(error = %format!("{e:#}"), "The command failed.");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. `FERRY_LOG` (or `RUST_LOG`) takes a tracing filter such as `debug` or
/// `ferry_server=debug`; `-v` is a shortcut for `debug`. Text has colours only on a terminal,
/// and never with `NO_COLOR` set (to anything but the empty string); JSON never has any.
fn init_tracing(verbose: bool, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("FERRY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| {
            if verbose {
                "debug".into()
            } else {
                "info".into()
            }
        });
    // A log line stderr cannot take is dropped. tracing-subscriber would report it with
    // `eprintln!`, which panics on the same broken stderr: whatever logged would die (a server
    // starting, or the task that handles SIGTERM, so that a server or an agent whose stderr
    // reader had gone no longer stopped on a signal).
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logs
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .with_target(false)
            .init(),
        // The target stays: a collector filters on it, where a person reading text would
        // only be slowed down by it.
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// Whether log lines may carry colour codes: only on a terminal, and not when `NO_COLOR` is
/// set to something (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
