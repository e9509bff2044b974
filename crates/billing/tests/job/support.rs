//! A world to bill in: StEvE and Lago emulators, a store, and the job between them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ferry_billing::job::{BillingJob, BillingOptions};
use ferry_billing::lago::{LagoClient, LagoConfig};
use ferry_billing::steve::{SteveClient, SteveConfig};
use ferry_emulators::lago::Lago;
use ferry_emulators::steve::{Steve, StopActor};
use ferry_emulators::{Running, lago, steve};
use ferry_store::BillingStore;
use ferry_store::billing::{NewMapping, SessionRecord, SessionState};
use ferry_testkit::{Backend, TestStore};
use ferry_worker::cadence::Tier;
use ferry_worker::job::{RunContext, RunOutcome, RunTrigger, SyncJob};
use tokio_util::sync::CancellationToken;

pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 24 * HOUR;

/// The store this test binary runs on.
pub(crate) fn backend() -> Backend {
    Backend::of_binary(env!("CARGO_CRATE_NAME"))
}

/// StEvE and Lago emulators, a store, and a billing job that reads one and writes the other.
pub(crate) struct World {
    pub(crate) steve: Running<Steve>,
    pub(crate) lago: Running<Lago>,
    pub(crate) ledger: Arc<dyn BillingStore>,
    pub(crate) job: BillingJob,
    pub(crate) storage: TestStore,
    next_run: AtomicI64,
}

impl World {
    pub(crate) async fn new() -> World {
        World::with_options(BillingOptions::default()).await
    }

    /// A world whose job uses `options`, with a short client timeout so that stalls end
    /// tests quickly; customer `cust` with subscription `sub` (active for a year) and tag
    /// `TAG` (in StEvE) mapped to it.
    pub(crate) async fn with_options(options: BillingOptions) -> World {
        let steve = steve::spawn(steve::Config::default()).await.unwrap();
        let lago = lago::spawn(lago::Config::default()).await.unwrap();
        let storage = TestStore::new(backend()).await;
        let ledger = ferry_server::init::open_billing(&storage.location)
            .await
            .unwrap();
        let job = job_for(&steve, &lago, ledger.clone(), options);
        let world = World {
            steve,
            lago,
            ledger,
            job,
            storage,
            next_run: AtomicI64::new(1),
        };
        world.steve.handle().add_tag("TAG", None).unwrap();
        world.customer("cust", "sub");
        world.map("TAG", "cust", None).await;
        world
    }

    /// A second job on the same store and emulators, as another worker would run it.
    pub(crate) async fn second_job(&self) -> BillingJob {
        let ledger = ferry_server::init::open_billing(&self.storage.location)
            .await
            .unwrap();
        job_for(&self.steve, &self.lago, ledger, BillingOptions::default())
    }

    pub(crate) fn customer(&self, customer: &str, subscription: &str) {
        let lago = self.lago.handle();
        lago.add_customer(customer, customer);
        lago.add_subscription(subscription, customer, "ev", now() - 365 * DAY, None)
            .unwrap();
    }

    pub(crate) async fn map(&self, tag: &str, customer: &str, subscription: Option<&str>) {
        self.ledger
            .put_mapping(&NewMapping {
                id_tag: tag.into(),
                customer: customer.into(),
                subscription: subscription.map(Into::into),
            })
            .await
            .unwrap();
    }

    /// One run of the job, as the worker would start it.
    pub(crate) async fn run(&self) -> RunOutcome {
        self.run_job(&self.job).await
    }

    pub(crate) async fn run_job(&self, job: &BillingJob) -> RunOutcome {
        let id = self.next_run.fetch_add(1, Ordering::Relaxed);
        let ctx = RunContext::new(
            id,
            RunTrigger::Manual,
            Tier::Active,
            CancellationToken::new(),
        );
        job.run(&ctx).await
    }

    /// A session of `tag` from `start_ms` to an hour later, `wh` Wh on a meter that read
    /// 1000 Wh at its start. Returns its transaction id.
    pub(crate) fn charge(&self, tag: &str, start_ms: i64, wh: i64) -> i64 {
        let id = self.start(tag, start_ms);
        self.stop(id, start_ms + HOUR, 1000 + wh);
        id
    }

    pub(crate) fn start(&self, tag: &str, start_ms: i64) -> i64 {
        i64::from(
            self.steve
                .handle()
                .start_session("CB-1", 1, tag, start_ms, Some("1000")),
        )
    }

    pub(crate) fn stop(&self, id: i64, stop_ms: i64, meter_wh: i64) {
        self.steve
            .handle()
            .stop_session(
                i32::try_from(id).unwrap(),
                stop_ms,
                &meter_wh.to_string(),
                Some("Local"),
                StopActor::Station,
            )
            .unwrap();
    }

    /// Wh Lago holds for a transaction id prefix `steve-<id>` (the session and its
    /// corrections), from the `kwh` property.
    pub(crate) fn lago_wh(&self, session: i64) -> i64 {
        let prefix = format!("steve-{session}");
        self.lago
            .handle()
            .events()
            .iter()
            .filter(|e| {
                e.transaction_id == prefix || e.transaction_id.starts_with(&format!("{prefix}-"))
            })
            .map(|e| wh_of(&e.properties["kwh"]))
            .sum()
    }

    pub(crate) async fn session(&self, id: i64) -> SessionRecord {
        self.ledger
            .sessions(&[id])
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("the ledger has no session {id}"))
    }

    pub(crate) async fn state(&self, id: i64) -> SessionState {
        self.session(id).await.state
    }
}

fn job_for(
    steve: &Running<Steve>,
    lago: &Running<Lago>,
    ledger: Arc<dyn BillingStore>,
    mut options: BillingOptions,
) -> BillingJob {
    let steve_config = steve.handle().config();
    let steve_client = SteveClient::new(SteveConfig {
        header_name: steve_config.api_key_header.clone(),
        time_zone: steve_config.time_zone.clone(),
        timeout: Duration::from_secs(2),
        ..SteveConfig::new(steve.url(), steve_config.api_key.clone())
    })
    .unwrap();
    let lago_client = LagoClient::new(LagoConfig {
        timeout: Duration::from_secs(2),
        ..LagoConfig::new(lago.url(), lago.handle().config().api_key.clone())
    })
    .unwrap();
    // Tests wait out Lago's answers, not backoffs.
    options.attempts = options.attempts.max(1);
    BillingJob::new(steve_client, lago_client, ledger, options)
}

/// A kWh value as Wh, from a JSON number or numeric text.
pub(crate) fn wh_of(value: &serde_json::Value) -> i64 {
    let kwh = match value {
        serde_json::Value::Number(n) => n.as_f64().unwrap(),
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => panic!("not a kWh value: {other}"),
    };
    (kwh * 1000.0).round() as i64
}

pub(crate) fn now() -> i64 {
    ferry_core::time::now_ms()
}

pub(crate) fn count(outcome: &RunOutcome, name: &str) -> i64 {
    outcome.counts.get(name).copied().unwrap_or(0)
}
