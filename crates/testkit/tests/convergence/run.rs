//! One seeded run: a server, a fault proxy and a few devices, some with clocks running ahead;
//! random steps of app writes, cycles (some while the app writes), killed cycles, server
//! restarts, edits that cross a pull, and rounds of every device at once; then the faults stop,
//! every device syncs until nothing moves, and the checks run.

use std::fmt;
use std::time::{Duration, Instant};

use ferry_client::{ClientOptions, CycleReport, CycleTrigger};
use ferry_testkit::faults::{FaultProxy, FaultStats, Faults};
use ferry_testkit::{Backend, TestDevice, TestServer, no_progress};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::app;
use super::check::{self, Observed};
use super::model::{Model, RowId, Write};

/// Rounds of clean cycles after the faults stop before the run counts as stuck.
const SETTLE_ROUNDS: usize = 15;

/// What a run did, for the test's output.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    devices: usize,
    push_batch: usize,
    pull_limit: u32,
    writes: usize,
    cycles: u64,
    failed_cycles: u64,
    killed_cycles: u64,
    restarts: u64,
    concurrent_writes: u64,
    settle_rounds: usize,
    conflicts: u64,
    server_conflicts: usize,
    categories_in_loops: usize,
    rejected_rows: usize,
    faults: FaultStats,
    took: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} devices (push batch {}, pull limit {}), {} writes, {} cycles ({} failed, {} \
             killed, {} with app writes landing), {} server restarts, {} of {} requests \
             dropped and {} answers dropped, {} local and {} server conflict records, quiet \
             after {} clean rounds, {} rows left rejected, {} categories in reference loops on \
             the server, {:.1} s",
            self.devices,
            self.push_batch,
            self.pull_limit,
            self.writes,
            self.cycles,
            self.failed_cycles,
            self.killed_cycles,
            self.concurrent_writes,
            self.restarts,
            self.faults.dropped_requests,
            self.faults.requests,
            self.faults.dropped_answers,
            self.conflicts,
            self.server_conflicts,
            self.settle_rounds,
            self.rejected_rows,
            self.categories_in_loops,
            self.took.as_secs_f64(),
        )
    }
}

/// Runs seed `seed` for `steps` steps on `backend` and checks the invariants; panics, naming
/// what broke, when one does not hold.
pub(crate) async fn run(backend: Backend, seed: u64, steps: usize) -> Summary {
    let started = Instant::now();
    let mut world = World::start(backend, seed).await;
    for _ in 0..steps {
        world.step().await;
    }
    let reports = world.settle().await;
    let observed = world.observe(reports).await;
    let problems = check::check(&world.model, &observed);
    let mut summary = world.summary;
    summary.writes = world.model.len();
    summary.faults = world.proxy.stats();
    summary.rejected_rows = observed.devices.iter().map(|d| d.dirty_rows()).sum();
    summary.took = started.elapsed();
    assert!(
        problems.is_empty(),
        "{} invariant(s) broken after {summary}:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    summary
}

struct World {
    rng: StdRng,
    server: TestServer,
    proxy: FaultProxy,
    devices: Vec<TestDevice>,
    /// How far ahead of the wall clock each device's clock runs.
    clocks_ahead_ms: Vec<i64>,
    options: ClientOptions,
    model: Model,
    summary: Summary,
}

impl World {
    async fn start(backend: Backend, seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let server = TestServer::start_on(backend, None).await;
        let proxy = FaultProxy::start(server.addr, rng.random()).await;
        // Small batches and pages put batch boundaries (and kills) between parents and
        // children, and between the rows of a group.
        let options = ClientOptions {
            push_batch: *[1, 2, 3, 5, 1_000].choose(&mut rng).expect("a size"),
            pull_limit: *[2, 5, 1_000].choose(&mut rng).expect("a limit"),
            request_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let count = rng.random_range(2..=4);
        let mut devices = Vec::with_capacity(count);
        let mut clocks_ahead_ms = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("Device {i}");
            let device = server
                .pair_device_via(&proxy.url, &name, options.clone())
                .await;
            // Devices' clocks disagree: one that runs ahead stamps versions that beat later
            // writes of the others.
            let ahead_ms = match i {
                0 => 0,
                1 => *[150, 2_000].choose(&mut rng).expect("a skew"),
                _ => *[0, 150, 2_000].choose(&mut rng).expect("a skew"),
            };
            clocks_ahead_ms.push(ahead_ms);
            devices.push(device);
        }
        proxy.set_faults(Faults {
            drop_request: rng.random_range(0.02..0.15),
            drop_answer: rng.random_range(0.02..0.15),
            max_delay: Duration::from_millis(rng.random_range(0..=3)),
        });
        let summary = Summary {
            devices: count,
            push_batch: options.push_batch,
            pull_limit: options.pull_limit,
            ..Summary::default()
        };
        World {
            rng,
            server,
            proxy,
            devices,
            clocks_ahead_ms,
            options,
            model: Model::default(),
            summary,
        }
    }

    async fn step(&mut self) {
        let device = self.rng.random_range(0..self.devices.len());
        match self.rng.random_range(0..100) {
            0..28 => {
                self.app_writes(device, 1, false).await;
            }
            28..44 => {
                let report = self.devices[device].sync().await;
                self.count(&report);
            }
            44..56 => self.cycle_while_app_writes(device).await,
            56..70 => self.killed_cycle(device).await,
            70..74 => self.restart_server(device).await,
            74..82 => self.crossing_edits().await,
            _ => self.round().await,
        }
    }

    /// App transactions on one device, recorded in the model; returns the rows they wrote.
    async fn app_writes(&mut self, device: usize, transactions: usize, pause: bool) -> Vec<RowId> {
        let conn = self.devices[device].app();
        let seed = self.rng.random();
        let app_device = self.app_device(device);
        let writes = tokio::task::spawn_blocking(move || {
            app::write(conn, seed, app_device, transactions, pause)
        })
        .await
        .expect("the app's writes");
        self.record(writes)
    }

    fn app_device(&self, device: usize) -> app::Device {
        app::Device {
            index: device,
            clock_ahead_ms: self.clocks_ahead_ms[device],
        }
    }

    fn record(&mut self, writes: Vec<(RowId, Write)>) -> Vec<RowId> {
        let mut rows = Vec::with_capacity(writes.len());
        for (row, write) in writes {
            if !rows.contains(&row) {
                rows.push(row.clone());
            }
            self.model.record(row, write);
        }
        rows
    }

    /// Two devices edit the same rows. The one with the fastest clock edits and syncs first;
    /// then the other's cycle runs with its pull held back at the proxy, and it edits the
    /// same rows meanwhile: after its push, before its pull. The pulled versions are greater
    /// (that clock is ahead) and win, and the local conflict record must keep the edits.
    async fn crossing_edits(&mut self) {
        let count = self.devices.len();
        let fast = (0..count)
            .max_by_key(|&d| self.clocks_ahead_ms[d])
            .expect("devices");
        let slow = (fast + self.rng.random_range(1..count)) % count;
        let rows = self.app_writes(fast, 1, false).await;
        let report = self.devices[fast].sync().await;
        self.count(&report);

        self.proxy.hold("/api/sync/pull");
        let mut cycle = self.spawn_cycle(slow);
        let mut finished = false;
        tokio::select! {
            // A cycle that failed before its pull.
            report = &mut cycle => {
                let report = report.expect("the cycle's task");
                self.count(&report);
                finished = true;
            }
            () = self.proxy.wait_for_held() => {}
        }
        let conn = self.devices[slow].app();
        let seed = self.rng.random();
        let app_device = self.app_device(slow);
        let writes = tokio::task::spawn_blocking(move || app::edit(conn, seed, app_device, &rows))
            .await
            .expect("the app's edits");
        self.record(writes);
        self.proxy.release();
        self.summary.concurrent_writes += 1;
        if !finished {
            let report = cycle.await.expect("the cycle's task");
            self.count(&report);
        }
    }

    /// A cycle while the app keeps writing to the same file.
    async fn cycle_while_app_writes(&mut self, device: usize) {
        let cycle = self.spawn_cycle(device);
        let transactions = self.rng.random_range(1..=3);
        self.app_writes(device, transactions, true).await;
        let report = cycle.await.expect("the cycle's task");
        self.count(&report);
        self.summary.concurrent_writes += 1;
    }

    /// The agent is killed mid-cycle, after a random number of its requests: the cycle's
    /// future is dropped wherever it is, and the device is opened again from its files.
    async fn killed_cycle(&mut self, device: usize) {
        let mut cycle = self.spawn_cycle(device);
        let after = self.proxy.requests() + self.rng.random_range(1..=5);
        let extra = Duration::from_micros(self.rng.random_range(0..2_000));
        let proxy = &self.proxy;
        let kill = async {
            proxy.wait_for_requests(after).await;
            tokio::time::sleep(extra).await;
        };
        tokio::select! {
            report = &mut cycle => {
                let report = report.expect("the cycle's task");
                self.count(&report);
            }
            () = kill => {
                cycle.abort();
                let _ = cycle.await;
                self.summary.killed_cycles += 1;
            }
        }
        self.devices[device].reopen(self.options.clone());
    }

    /// The server stops (letting requests in flight finish) and starts again on the same
    /// store, now and then while a device's cycle is under way.
    async fn restart_server(&mut self, device: usize) {
        let mut cycle = None;
        if self.rng.random_bool(0.5) {
            let mut running = self.spawn_cycle(device);
            let after = self.proxy.requests() + self.rng.random_range(1..=3);
            // The cycle may finish before it makes that many requests.
            tokio::select! {
                report = &mut running => {
                    let report = report.expect("the cycle's task");
                    self.count(&report);
                }
                () = self.proxy.wait_for_requests(after) => cycle = Some(running),
            }
        }
        self.server.restart().await;
        self.proxy.set_upstream(self.server.addr);
        self.summary.restarts += 1;
        if let Some(cycle) = cycle {
            let report = cycle.await.expect("the cycle's task");
            self.count(&report);
        }
    }

    /// Every device runs a cycle at the same time, now and then while one's app writes.
    async fn round(&mut self) {
        let cycles: Vec<_> = (0..self.devices.len())
            .map(|d| self.spawn_cycle(d))
            .collect();
        if self.rng.random_bool(0.5) {
            let device = self.rng.random_range(0..self.devices.len());
            let transactions = self.rng.random_range(1..=3);
            self.app_writes(device, transactions, true).await;
            self.summary.concurrent_writes += 1;
        }
        for cycle in cycles {
            let report = cycle.await.expect("the cycle's task");
            self.count(&report);
        }
    }

    fn spawn_cycle(&self, device: usize) -> tokio::task::JoinHandle<CycleReport> {
        let client = self.devices[device].client.clone();
        tokio::spawn(async move { client.sync(CycleTrigger::Manual, &no_progress).await })
    }

    fn count(&mut self, report: &CycleReport) {
        self.summary.cycles += 1;
        self.summary.failed_cycles += u64::from(!report.ok);
        self.summary.conflicts += report.conflicts;
    }

    /// With the faults gone, every device syncs in turn until a whole round moves nothing;
    /// returns each device's last report. Only rejected rows may fail a cycle now.
    async fn settle(&mut self) -> Vec<CycleReport> {
        self.proxy.set_faults(Faults::NONE);
        for round in 1..=SETTLE_ROUNDS {
            let mut reports = Vec::with_capacity(self.devices.len());
            for (i, device) in self.devices.iter().enumerate() {
                let report = device.sync().await;
                assert!(
                    report.ok || check::only_rejections(&report),
                    "Device {i}'s cycle failed after the faults stopped: {report:?}"
                );
                reports.push(report);
            }
            for report in &reports {
                self.count(report);
            }
            if reports.iter().all(|r| r.pushed == 0 && r.pulled == 0) {
                self.summary.settle_rounds = round;
                return reports;
            }
        }
        panic!("the devices still push or pull after {SETTLE_ROUNDS} rounds without faults");
    }

    /// The server's rows, every device's rows, and a fresh device's full pull.
    async fn observe(&mut self, reports: Vec<CycleReport>) -> Observed {
        let fresh = self.server.pair_device("Fresh").await;
        let report = fresh.sync().await;
        assert!(report.ok, "a fresh device's first cycle failed: {report:?}");
        let server = check::server_rows(&self.server, &fresh.device_id).await;
        self.summary.categories_in_loops = check::categories_in_loops(&server);
        let mut recorded = check::server_conflicts(&self.server).await;
        self.summary.server_conflicts = recorded.len();
        let mut devices = Vec::with_capacity(self.devices.len());
        for (i, (device, report)) in self.devices.iter().zip(reports).enumerate() {
            recorded.extend(check::local_conflicts(device));
            devices.push(check::device_state(&format!("Device {i}"), device, report));
        }
        Observed {
            server,
            devices,
            fresh: check::device_state("A fresh device", &fresh, report),
            recorded,
        }
    }
}
