//! Convergence under faults: seeded random runs of several devices against one server, with
//! requests and answers lost, agents killed mid-cycle, the server restarted and app writes
//! landing while cycles run; once the faults stop and every device is quiet, all of them and
//! the server must hold the same rows, and every write must be there unless a greater version
//! of its row won (see `check` for the invariants).
//!
//! Runs on SQLite as `convergence` and on PostgreSQL as `convergence_postgres`. A plain
//! `cargo test` runs a short budget; these scale it up for a soak:
//!
//! - `FERRY_CONVERGENCE_SEEDS=<n>`: how many seeds (default 4), from
//!   `FERRY_CONVERGENCE_FIRST_SEED` (default 1) on;
//! - `FERRY_CONVERGENCE_STEPS=<n>`: steps per seed (default 100);
//! - `FERRY_CONVERGENCE_SEED=<seed>`: that one seed only, to replay a failure (the failure
//!   names its seed). A seed replays the same steps and fault choices; the moments at which
//!   concurrent work interleaves are the machine's.

mod app;
mod check;
mod model;
mod run;

use ferry_testkit::Backend;

const DEFAULT_SEEDS: u64 = 4;
const DEFAULT_STEPS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_converge_under_faults() {
    let backend = Backend::of_binary(env!("CARGO_CRATE_NAME"));
    let steps = env_number("FERRY_CONVERGENCE_STEPS").unwrap_or(DEFAULT_STEPS as u64) as usize;
    let seeds = match env_number("FERRY_CONVERGENCE_SEED") {
        Some(seed) => seed..=seed,
        None => {
            let first = env_number("FERRY_CONVERGENCE_FIRST_SEED").unwrap_or(1);
            let count = env_number("FERRY_CONVERGENCE_SEEDS").unwrap_or(DEFAULT_SEEDS);
            first..=first + count.saturating_sub(1)
        }
    };
    // Every seed runs, each as a task of its own so that a failure (its panic, printed above
    // its summary) can be named by its seed.
    let mut failed = Vec::new();
    for seed in seeds {
        match tokio::spawn(run::run(backend, seed, steps)).await {
            Ok(summary) => eprintln!("seed {seed}: {summary}"),
            Err(_) => {
                eprintln!("seed {seed}: FAILED (see the panic above)");
                failed.push(seed);
            }
        }
    }
    let binary = env!("CARGO_CRATE_NAME");
    assert!(
        failed.is_empty(),
        "convergence failed for seed(s) {failed:?}; replay one with \
         FERRY_CONVERGENCE_SEED=<seed> FERRY_CONVERGENCE_STEPS={steps} \
         cargo test -p ferry-testkit --test {binary} -- --nocapture"
    );
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}
