use std::sync::Mutex;

use tokio::sync::Semaphore;

use super::*;

/// A job whose runs wait for a permit, so a test decides when each run ends.
struct Probe {
    permits: Semaphore,
    started: Mutex<Vec<(&'static str, Trigger)>>,
    started_tx: mpsc::UnboundedSender<()>,
}

impl Probe {
    fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (started_tx, rx) = mpsc::unbounded_channel();
        let probe = Probe {
            permits: Semaphore::new(0),
            started: Mutex::new(vec![]),
            started_tx,
        };
        (Arc::new(probe), rx)
    }

    fn starts(&self) -> Vec<(&'static str, Trigger)> {
        self.started.lock().unwrap().clone()
    }
}

impl Job for Probe {
    type Request = &'static str;
    type Output = usize; // The number of the run that served the request.

    fn scheduled(&self) -> &'static str {
        "sync"
    }

    fn run(
        &self,
        request: &'static str,
        trigger: Trigger,
    ) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(async move {
            let number = {
                let mut started = self.started.lock().unwrap();
                started.push((request, trigger));
                started.len()
            };
            let _ = self.started_tx.send(());
            if request == "panic" {
                panic!("probe asked to panic");
            }
            self.permits.acquire().await.unwrap().forget();
            number
        })
    }

    fn panicked(&self, _: &'static str, _: Trigger, message: String) -> usize {
        assert_eq!(message, "probe asked to panic");
        usize::MAX
    }

    /// Run `n` asks for the next run `10 n` seconds after its end; from the third run on, for
    /// none.
    fn next_due(&self, number: &usize) -> Option<Duration> {
        (*number < 3).then(|| Duration::from_secs(10 * *number as u64))
    }
}

#[tokio::test]
async fn requests_during_a_run_coalesce_into_exactly_one_follow_up_run() {
    let (probe, mut started) = Probe::new();
    let (runner, _task) = Runner::spawn(probe.clone(), Cadence::Manual, CancellationToken::new());
    let first = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_now("sync").await }
    });
    started.recv().await.unwrap(); // Run 1 is in progress.
    // A storm of requests while run 1 is in progress.
    let waiters: Vec<_> = (0..1000).map(|_| runner.enqueue("sync").unwrap()).collect();
    probe.permits.add_permits(1);
    assert_eq!(first.await.unwrap(), Ok(1));
    started.recv().await.unwrap(); // Run 2 started.
    probe.permits.add_permits(1);
    for waiter in waiters {
        assert_eq!(
            waiter.wait().await,
            Ok(2),
            "served by the run that started after the request"
        );
    }
    assert_eq!(
        probe.starts(),
        vec![("sync", Trigger::Manual), ("sync", Trigger::Manual)]
    );
}

#[tokio::test]
async fn different_requests_run_one_after_the_other_never_together() {
    let (probe, mut started) = Probe::new();
    let (runner, _task) = Runner::spawn(probe.clone(), Cadence::Manual, CancellationToken::new());
    runner.trigger("sync").unwrap();
    started.recv().await.unwrap();
    runner.trigger("pull").unwrap();
    runner.trigger("sync").unwrap();
    runner.trigger("pull").unwrap();
    assert!(runner.state().running);
    probe.permits.add_permits(1);
    started.recv().await.unwrap();
    assert_eq!(
        probe.starts().len(),
        2,
        "the second run waits for the first to end"
    );
    probe.permits.add_permits(2);
    started.recv().await.unwrap();
    let names: Vec<_> = probe.starts().into_iter().map(|(r, _)| r).collect();
    assert_eq!(names, ["sync", "pull", "sync"]);
}

#[tokio::test(start_paused = true)]
async fn the_cadence_counts_from_the_end_of_the_previous_run() {
    let (probe, mut started) = Probe::new();
    let every = Duration::from_secs(30);
    let (runner, _task) = Runner::spawn(
        probe.clone(),
        Cadence::Every(every),
        CancellationToken::new(),
    );
    let t0 = Instant::now();
    started.recv().await.unwrap();
    assert_eq!(Instant::now(), t0, "the first scheduled run starts at once");
    tokio::time::sleep(Duration::from_secs(5)).await; // The run takes 5 s.
    probe.permits.add_permits(1);
    let mut watch = runner.watch();
    watch.wait_for(|s| s.runs_completed == 1).await.unwrap();
    assert_eq!(
        runner.state().next_scheduled,
        Some(t0 + Duration::from_secs(35))
    );
    started.recv().await.unwrap();
    assert_eq!(Instant::now(), t0 + Duration::from_secs(35));
    assert_eq!(
        probe.starts(),
        vec![("sync", Trigger::Schedule), ("sync", Trigger::Schedule)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reported_cadence_schedules_each_run_from_the_previous_runs_output() {
    let (probe, mut started) = Probe::new();
    let (runner, _task) =
        Runner::spawn(probe.clone(), Cadence::AsReported, CancellationToken::new());
    let t0 = Instant::now();
    started.recv().await.unwrap();
    assert_eq!(Instant::now(), t0, "the first scheduled run starts at once");
    tokio::time::sleep(Duration::from_secs(5)).await; // Run 1 takes 5 s.
    probe.permits.add_permits(1);
    let mut watch = runner.watch();
    watch.wait_for(|s| s.runs_completed == 1).await.unwrap();
    assert_eq!(
        runner.state().next_scheduled,
        Some(t0 + Duration::from_secs(15)),
        "run 1 asked for the next run 10 s after its end"
    );
    started.recv().await.unwrap();
    assert_eq!(Instant::now(), t0 + Duration::from_secs(15));
    // A storm of requests during run 2: one follow-up run, at once, whatever run 2 reports.
    let waiters: Vec<_> = (0..100).map(|_| runner.enqueue("sync").unwrap()).collect();
    probe.permits.add_permits(1);
    started.recv().await.unwrap();
    assert_eq!(Instant::now(), t0 + Duration::from_secs(15));
    probe.permits.add_permits(1);
    for waiter in waiters {
        assert_eq!(waiter.wait().await, Ok(3));
    }
    assert_eq!(
        runner.state().next_scheduled,
        None,
        "run 3 asked for no next run"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        probe.starts(),
        vec![
            ("sync", Trigger::Schedule),
            ("sync", Trigger::Schedule),
            ("sync", Trigger::Manual)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_manual_run_resets_the_timer_and_counts_as_manual() {
    let (probe, mut started) = Probe::new();
    let (runner, _task) = Runner::spawn(
        probe.clone(),
        Cadence::Every(Duration::from_secs(30)),
        CancellationToken::new(),
    );
    started.recv().await.unwrap();
    probe.permits.add_permits(1);
    runner
        .watch()
        .wait_for(|s| s.runs_completed == 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    probe.permits.add_permits(1);
    assert_eq!(runner.run_now("sync").await, Ok(2));
    let after_manual = Instant::now();
    assert_eq!(
        runner.state().next_scheduled,
        Some(after_manual + Duration::from_secs(30))
    );
    assert_eq!(probe.starts()[1], ("sync", Trigger::Manual));
}

#[tokio::test]
async fn a_panicking_run_is_contained_and_the_loop_goes_on() {
    let (probe, _started) = Probe::new();
    let (runner, _task) = Runner::spawn(probe.clone(), Cadence::Manual, CancellationToken::new());
    assert_eq!(runner.run_now("panic").await, Ok(usize::MAX));
    probe.permits.add_permits(1);
    assert_eq!(runner.run_now("sync").await, Ok(2));
}

#[tokio::test]
async fn shutdown_waits_for_the_run_in_progress_then_refuses_requests() {
    let (probe, mut started) = Probe::new();
    let shutdown = CancellationToken::new();
    let (runner, task) = Runner::spawn(probe.clone(), Cadence::Manual, shutdown.clone());
    let pending = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_now("sync").await }
    });
    started.recv().await.unwrap();
    shutdown.cancel();
    assert!(!task.is_finished());
    probe.permits.add_permits(1);
    task.await.unwrap();
    assert_eq!(pending.await.unwrap(), Ok(1));
    assert_eq!(runner.run_now("sync").await, Err(Stopped));
    assert_eq!(runner.state().next_scheduled, None);
}

/// A job that notes what the loop's state says when it is told a run started or ended.
struct Watcher {
    state: std::sync::OnceLock<watch::Receiver<LoopState>>,
    seen: Mutex<Vec<(&'static str, bool)>>,
}

impl Job for Watcher {
    type Request = &'static str;
    type Output = ();

    fn scheduled(&self) -> &'static str {
        "sync"
    }

    fn run(&self, _: &'static str, _: Trigger) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }

    fn panicked(&self, _: &'static str, _: Trigger, _: String) {}

    fn observe(&self, event: RunEvent<'_, Self>) {
        let running = self
            .state
            .get()
            .expect("the state is known")
            .borrow()
            .running;
        let name = match event {
            RunEvent::Started { .. } => "started",
            RunEvent::Finished { .. } => "finished",
        };
        self.seen.lock().unwrap().push((name, running));
    }
}

/// A status reader woken by `Finished` must find the loop idle: otherwise it shows the run as
/// going on, and nothing wakes it again to say otherwise.
#[tokio::test]
async fn observers_see_the_loop_running_at_the_start_and_idle_at_the_end() {
    let job = Arc::new(Watcher {
        state: std::sync::OnceLock::new(),
        seen: Mutex::new(Vec::new()),
    });
    let (runner, run_loop) =
        Runner::new(Arc::clone(&job), Cadence::Manual, CancellationToken::new());
    job.state.set(runner.watch()).unwrap();
    tokio::spawn(run_loop);
    runner.run_now("sync").await.unwrap();
    assert_eq!(
        *job.seen.lock().unwrap(),
        [("started", true), ("finished", false)]
    );
}
