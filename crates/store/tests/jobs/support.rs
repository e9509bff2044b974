//! Stores opened the way the server opens them, and helpers to drive runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_server::init::{DATABASE_FILE, StoreLocation};
use ferry_store::jobs::{CadenceRecord, FinishedRun, JobStore, NewRun, StartedRun, TriggerRecord};
use ferry_store::{PgStore, SqliteStore};
use ferry_testkit::{Backend, TestStore};

/// How long a test waits for something that should happen at once.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A lease long enough that no run in a test goes stale unless the test ages it.
pub(crate) const LEASE: Duration = Duration::from_secs(60);

/// The store this test binary runs on.
pub(crate) fn backend() -> Backend {
    Backend::of_binary(env!("CARGO_CRATE_NAME"))
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("this should have happened within the wait")
}

/// A new, empty store of this binary's backend.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) storage: TestStore,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let storage = TestStore::new(backend()).await;
        let store = open(&storage.location).await;
        Fixture { store, storage }
    }

    /// A second store on the same database, as another process would open it.
    pub(crate) async fn another_instance(&self) -> Arc<dyn JobStore> {
        open(&self.storage.location).await
    }

    /// Moves every time of a run back by `by`, as if it had started (and last sent a
    /// heartbeat, and finished) that much earlier.
    pub(crate) async fn backdate(&self, run_id: i64, by: Duration) {
        let by_ms = i64::try_from(by.as_millis()).unwrap();
        match &self.storage.location {
            StoreLocation::DataDir(dir) => {
                let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
                conn.busy_timeout(WAIT).unwrap();
                let shift = format!("-{} seconds", by_ms as f64 / 1000.0);
                let changed = conn
                    .execute(
                        "UPDATE runs SET
                           started_at = strftime('%Y-%m-%dT%H:%M:%fZ', started_at, ?2),
                           heartbeat_at = strftime('%Y-%m-%dT%H:%M:%fZ', heartbeat_at, ?2),
                           finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', finished_at, ?2)
                         WHERE id = ?1",
                        rusqlite::params![run_id, shift],
                    )
                    .unwrap();
                assert_eq!(changed, 1);
            }
            StoreLocation::Postgres { .. } => {
                let database = self.storage.database.as_ref().unwrap();
                let client = database.connect().await;
                let changed = client
                    .execute(
                        "UPDATE ferry.runs SET
                           started_at = started_at - $2::bigint * interval '1 millisecond',
                           heartbeat_at = heartbeat_at - $2::bigint * interval '1 millisecond',
                           finished_at = finished_at - $2::bigint * interval '1 millisecond'
                         WHERE id = $1",
                        &[&run_id, &by_ms],
                    )
                    .await
                    .unwrap();
                assert_eq!(changed, 1);
            }
        }
    }
}

/// Opens the concrete store at `location` (migrated) as a job store.
pub(crate) async fn open(location: &StoreLocation) -> Arc<dyn JobStore> {
    match location {
        StoreLocation::DataDir(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            Arc::new(SqliteStore::open(&dir.join(DATABASE_FILE)).unwrap())
        }
        StoreLocation::Postgres { url, options } => {
            Arc::new(PgStore::connect(url, options).await.unwrap())
        }
    }
}

/// A manual run of `job` by `worker` with the test lease.
pub(crate) fn new_run<'a>(job: &'a str, worker: &'a str) -> NewRun<'a> {
    NewRun {
        job,
        trigger: "manual",
        tier: "active",
        worker,
        lease: LEASE,
        for_triggers: false,
    }
}

/// What a started run got.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) run_id: i64,
    pub(crate) started_at_ms: i64,
    pub(crate) tier: String,
    pub(crate) triggers: Vec<TriggerRecord>,
    pub(crate) abandoned: Vec<i64>,
}

/// Starts a run, which must not find the job busy.
pub(crate) async fn start(store: &dyn JobStore, run: &NewRun<'_>) -> Started {
    match store.start_run(run).await.unwrap() {
        StartedRun::Started {
            run_id,
            started_at_ms,
            tier,
            triggers,
            abandoned,
        } => Started {
            run_id,
            started_at_ms,
            tier,
            triggers,
            abandoned,
        },
        StartedRun::Busy { running } => panic!("the job is busy with run {running}"),
        StartedRun::NothingPending => panic!("nothing was pending"),
    }
}

/// The cadence every test saves unless it cares.
pub(crate) fn active_cadence() -> CadenceRecord {
    CadenceRecord {
        tier: "active".into(),
        demotion_toward: None,
        demotion_streak: 0,
        pinned_tier: None,
        pinned_until_ms: None,
        next_run_at_ms: None,
    }
}

/// Finishes a run as succeeded with no counts; it must still be the worker's.
pub(crate) async fn succeed(store: &dyn JobStore, run_id: i64, worker: &str) {
    let counts = Default::default();
    let finished = FinishedRun {
        status: "succeeded",
        counts: &counts,
        errors: &[],
        cadence: &active_cadence(),
    };
    assert!(store.finish_run(run_id, worker, &finished).await.unwrap());
}

/// The ids of some triggers.
pub(crate) fn ids(triggers: &[TriggerRecord]) -> Vec<i64> {
    triggers.iter().map(|trigger| trigger.id).collect()
}
