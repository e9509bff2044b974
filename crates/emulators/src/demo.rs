//! Demo data for a first try: `ferry emulate` seeds both emulators with it and prints how to
//! reach them.
//!
//! The data keeps one convention: a driver's customer in Lago has the driver's id tag as its
//! external id, and its subscription is `sub-<id tag>`. A child tag (a fleet's van) has no
//! customer of its own; it bills to its parent's. The sessions exercise the cases a billing
//! run meets:
//!
//! | Tag | Parent | Customer | Subscription | Sessions |
//! |---|---|---|---|---|
//! | `FLEET-ACME` | | Acme Logistics | active | |
//! | `ACME-VAN-1` | `FLEET-ACME` | (the parent's) | | one finished |
//! | `ALICE` | | Alice Martin | active | one finished, one in progress |
//! | `BOB` | | Bob Chen | active | one finished |
//! | `CAROL` | | Carol Diaz | terminated 5 days ago | one finished, which has nothing to bill to |

use std::fmt;

use crate::lago::{self, Lago};
use crate::steve::{self, Steve, StopActor};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A driver or a fleet: an id tag, and the customer it is in Lago if it is one.
struct Account {
    id_tag: &'static str,
    parent: Option<&'static str>,
    customer: Option<(&'static str, Subscribed)>,
}

#[derive(Clone, Copy)]
enum Subscribed {
    Active,
    TerminatedDaysAgo(i64),
}

const ACCOUNTS: [Account; 5] = [
    Account {
        id_tag: "FLEET-ACME",
        parent: None,
        customer: Some(("Acme Logistics", Subscribed::Active)),
    },
    Account {
        id_tag: "ACME-VAN-1",
        parent: Some("FLEET-ACME"),
        customer: None,
    },
    Account {
        id_tag: "ALICE",
        parent: None,
        customer: Some(("Alice Martin", Subscribed::Active)),
    },
    Account {
        id_tag: "BOB",
        parent: None,
        customer: Some(("Bob Chen", Subscribed::Active)),
    },
    Account {
        id_tag: "CAROL",
        parent: None,
        customer: Some(("Carol Diaz", Subscribed::TerminatedDaysAgo(5))),
    },
];

/// A finished session, at a time relative to now.
struct Finished {
    charge_box_id: &'static str,
    connector_id: i32,
    id_tag: &'static str,
    hours_ago: i64,
    minutes: i64,
    start_wh: u32,
    stop_wh: u32,
}

const FINISHED: [Finished; 4] = [
    Finished {
        charge_box_id: "CB-DEPOT-1",
        connector_id: 1,
        id_tag: "ACME-VAN-1",
        hours_ago: 50,
        minutes: 190,
        start_wh: 12_000,
        stop_wh: 54_500,
    },
    Finished {
        charge_box_id: "CB-DEPOT-1",
        connector_id: 2,
        id_tag: "ALICE",
        hours_ago: 26,
        minutes: 95,
        start_wh: 3_300,
        stop_wh: 15_900,
    },
    Finished {
        charge_box_id: "CB-STREET-7",
        connector_id: 1,
        id_tag: "BOB",
        hours_ago: 5,
        minutes: 120,
        start_wh: 48_210,
        stop_wh: 70_110,
    },
    Finished {
        charge_box_id: "CB-STREET-7",
        connector_id: 1,
        id_tag: "CAROL",
        hours_ago: 3,
        minutes: 60,
        start_wh: 70_110,
        stop_wh: 81_020,
    },
];

/// Why demo data could not be seeded: the emulators held data already.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seeding StEvE: {0}")]
    Steve(#[from] steve::Error),
    #[error("seeding Lago: {0}")]
    Lago(#[from] lago::Error),
}

/// How to reach the seeded emulators; its `Display` is what `ferry emulate` prints.
#[derive(Clone, Debug)]
pub struct Demo {
    pub steve_url: String,
    pub steve_api_key_header: String,
    pub steve_api_key: String,
    pub steve_time_zone: String,
    pub lago_url: String,
    pub lago_api_key: String,
}

/// Seeds the demo data, with times relative to now, into emulators that hold no data yet.
pub fn seed(steve: &Steve, steve_url: &str, lago: &Lago, lago_url: &str) -> Result<Demo, Error> {
    let now_ms = ferry_core::time::now_ms() / MINUTE_MS * MINUTE_MS;
    for account in &ACCOUNTS {
        steve.add_tag(account.id_tag, account.parent)?;
        let Some((name, subscribed)) = account.customer else {
            continue;
        };
        lago.add_customer(account.id_tag, name);
        let ended = match subscribed {
            Subscribed::Active => None,
            Subscribed::TerminatedDaysAgo(days) => Some(now_ms - days * DAY_MS),
        };
        let subscription = format!("sub-{}", account.id_tag);
        let started = now_ms - 60 * DAY_MS;
        lago.add_subscription(&subscription, account.id_tag, "charging", started, ended)?;
    }
    for session in &FINISHED {
        let start_ms = now_ms - session.hours_ago * HOUR_MS;
        let id = steve.start_session(
            session.charge_box_id,
            session.connector_id,
            session.id_tag,
            start_ms,
            Some(&session.start_wh.to_string()),
        );
        let stop_ms = start_ms + session.minutes * MINUTE_MS;
        let stop_wh = session.stop_wh.to_string();
        let reason = Some("EVDisconnected");
        steve.stop_session(id, stop_ms, &stop_wh, reason, StopActor::Station)?;
    }
    steve.start_session(
        "CB-DEPOT-1",
        2,
        "ALICE",
        now_ms - 20 * MINUTE_MS,
        Some("15900"),
    );

    let config = steve.config();
    Ok(Demo {
        steve_url: steve_url.to_owned(),
        steve_api_key_header: config.api_key_header.clone(),
        steve_api_key: config.api_key.clone(),
        steve_time_zone: config.time_zone.iana_name().unwrap_or("UTC").to_owned(),
        lago_url: lago_url.to_owned(),
        lago_api_key: lago.config().api_key.clone(),
    })
}

impl fmt::Display for Demo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StEvE  {}", self.steve_url)?;
        writeln!(
            f,
            "       header {}: {}, time zone {}",
            self.steve_api_key_header, self.steve_api_key, self.steve_time_zone
        )?;
        writeln!(f, "Lago   {}", self.lago_url)?;
        writeln!(
            f,
            "       header Authorization: Bearer {}",
            self.lago_api_key
        )?;
        writeln!(f, "Id tags (a customer's external id in Lago is its tag):")?;
        for account in &ACCOUNTS {
            let about = match (account.parent, account.customer) {
                (Some(parent), _) => format!("child of {parent}, bills to its customer"),
                (None, Some((name, Subscribed::Active))) => {
                    format!("{name}, subscription sub-{} (active)", account.id_tag)
                }
                (None, Some((name, Subscribed::TerminatedDaysAgo(days)))) => format!(
                    "{name}, subscription sub-{} terminated {days} days ago",
                    account.id_tag
                ),
                (None, None) => "no customer".to_owned(),
            };
            writeln!(f, "  {:<12} {about}", account.id_tag)?;
        }
        write!(
            f,
            "Sessions: {} finished in the last 3 days, 1 in progress (ALICE at CB-DEPOT-1).",
            FINISHED.len()
        )
    }
}
