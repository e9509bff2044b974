//! `ferry serve` and `ferry pair-code`.

use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::args::{PairCodeArgs, ServeArgs};

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ddl = match &args.schema {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let opened = ferry_server::init::open_data_dir(&args.data, ddl.as_deref())
        .with_context(|| format!("opening the data directory {}", args.data.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let tables: Vec<&str> = opened
        .schema
        .tables
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let config = ferry_server::Config::new(opened.schema.clone());
    println!("Ferry {} serving http://{addr}", env!("CARGO_PKG_VERSION"));
    println!("Data directory: {}", args.data.display());
    println!(
        "Synced tables: {} (schema hash {})",
        tables.join(", "),
        config.schema_hash
    );
    if let Some(token) = &opened.admin_token {
        println!(
            "Admin token (shown once, saved to {}): {token}",
            args.data.join("admin.token").display()
        );
    }
    println!(
        "Pair a device: ferry pair-code --data {}",
        args.data.display()
    );
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let state = ferry_server::AppState::new(opened.store, config);
    ferry_server::serve(listener, state, shutdown)
        .await
        .context("serving")?;
    tracing::info!("Server stopped.");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn pair_code(args: PairCodeArgs) -> anyhow::Result<ExitCode> {
    let opened = ferry_server::init::open_data_dir(&args.data, None)
        .with_context(|| format!("opening the data directory {}", args.data.display()))?;
    let ttl = std::time::Duration::from_secs(u64::from(args.ttl_minutes) * 60);
    let code = ferry_server::init::create_pairing_code(&opened.store, &args.tenant, ttl)
        .await
        .context("creating a pairing code")?;
    println!(
        "Pairing code for tenant {} (one use, expires {}):",
        code.tenant, code.expires_at
    );
    println!("{}", code.code);
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on Ctrl-C or SIGTERM: decide, tell, wait.
pub(crate) fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutting down: finishing requests in flight.");
        token.cancel();
    });
}
