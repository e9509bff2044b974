//! `ferry emulate`: the StEvE and Lago emulators on fixed local ports, seeded with demo data,
//! so the billing job can be tried without either service.

use std::process::ExitCode;

use anyhow::Context;
use ferry_emulators::{demo, lago, steve};
use tokio_util::sync::CancellationToken;

use crate::args::{EmulateArgs, EmulateWhich};
use crate::serve::cancel_on_signal;

pub(crate) async fn run(args: EmulateArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let steve = steve::Steve::new(steve::Config::default());
    let lago = lago::Lago::new(lago::Config::default());
    let mut tasks = tokio::task::JoinSet::new();
    let mut steve_url = None;
    let mut lago_url = None;
    if args.which != EmulateWhich::Lago {
        let listener = tokio::net::TcpListener::bind(args.steve_listen)
            .await
            .with_context(|| format!("listening on {} for StEvE", args.steve_listen))?;
        steve_url = Some(steve::url(listener.local_addr()?));
        let (steve, shutdown) = (steve.clone(), shutdown.clone());
        tasks.spawn(async move { steve.serve(listener, shutdown).await });
    }
    if args.which != EmulateWhich::Steve {
        let listener = tokio::net::TcpListener::bind(args.lago_listen)
            .await
            .with_context(|| format!("listening on {} for Lago", args.lago_listen))?;
        lago_url = Some(lago::url(listener.local_addr()?));
        let (lago, shutdown) = (lago.clone(), shutdown.clone());
        tasks.spawn(async move { lago.serve(listener, shutdown).await });
    }
    let steve_at = steve_url
        .clone()
        .unwrap_or_else(|| "(not running)".to_owned());
    let lago_at = lago_url
        .clone()
        .unwrap_or_else(|| "(not running)".to_owned());
    if args.no_demo {
        outln!(
            "StEvE emulator: {steve_at} (header STEVE-API-KEY: {})",
            steve.config().api_key
        );
        outln!(
            "Lago emulator:  {lago_at} (Bearer {})",
            lago.config().api_key
        );
    } else {
        let seeded = demo::seed(&steve, &steve_at, &lago, &lago_at).context("seeding demo data")?;
        outln!("{seeded}");
    }
    outln!();
    outln!("Bill it with Ferry (in another terminal):");
    outln!(
        "  FERRY_STEVE_API_KEY={} FERRY_LAGO_API_KEY={} \\",
        steve.config().api_key,
        lago.config().api_key
    );
    outln!("    ferry serve --billing --steve-url {steve_at} --lago-url {lago_at}");
    let steve_control = steve_at.trim_end_matches("/steve");
    outln!(
        "Start, stop and revise sessions, add customers or inject faults under \
         {steve_control}/_emulator/ and {lago_at}/_emulator/ (see the README)."
    );
    outln!("Ctrl-C stops them; their data lives in memory only.");
    while tasks.join_next().await.is_some() {}
    Ok(ExitCode::SUCCESS)
}
