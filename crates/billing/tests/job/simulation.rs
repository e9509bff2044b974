//! A seeded, randomized simulation: many sessions over many runs (long ones, zombies, revised
//! stop values, tags mapped late) while Lago and StEvE fail at random. The invariant: every
//! finished session of a mapped tag has exactly its energy in Lago, and no `transaction_id`
//! is charged twice.
//!
//! `FERRY_BILLING_SIM_SEEDS` (a count of seeds, default 2) and `FERRY_BILLING_SIM_ROUNDS`
//! (default 10) scale it up for a soak.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::support::{DAY, HOUR, World, now};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn every_finished_session_of_a_mapped_tag_reaches_lago_exactly_once() {
    let seeds = env_number("FERRY_BILLING_SIM_SEEDS", 2);
    let rounds = env_number("FERRY_BILLING_SIM_ROUNDS", 10);
    for seed in 0..seeds {
        simulate(0xB111_0000 + seed, rounds).await;
    }
}

/// A session as the simulation knows it.
struct Known {
    tag: &'static str,
    start_ms: i64,
    stop_meter: Option<i64>,
}

const TAGS: [&str; 5] = ["TAG", "CHILD", "LATE", "NEVER", "OTHER"];

async fn simulate(seed: u64, rounds: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let world = World::new().await;
    world.steve.handle().add_tag("CHILD", Some("TAG")).unwrap();
    world.customer("other", "sub-other");
    world.map("OTHER", "other", None).await;
    let mut sessions: HashMap<i64, Known> = HashMap::new();
    let mut active: Vec<i64> = Vec::new();
    for round in 0..rounds {
        // Sessions that started long ago are seen by a run while they charge (as on a real
        // site, where StEvE records a session when it starts), so only earlier rounds' stop.
        let stoppable = active.clone();
        for _ in 0..rng.random_range(1..6) {
            let tag = TAGS[rng.random_range(0..TAGS.len())];
            // Most start now; some long ago (longer than any window).
            let start_ms = if rng.random_bool(0.2) {
                now() - rng.random_range(2..40) * DAY
            } else {
                now() - rng.random_range(1..20) * 60_000
            };
            let id = world.start(tag, start_ms);
            sessions.insert(
                id,
                Known {
                    tag,
                    start_ms,
                    stop_meter: None,
                },
            );
            active.push(id);
        }
        let mut stoppable = stoppable;
        for _ in 0..rng.random_range(0..4) {
            if stoppable.is_empty() {
                break;
            }
            let id = stoppable.swap_remove(rng.random_range(0..stoppable.len()));
            active.retain(|a| *a != id);
            let known = sessions.get_mut(&id).unwrap();
            let meter = 1000 + rng.random_range(0..80_000);
            // Some stop late: a zombie whose stop is long after its start.
            let stop_ms = (known.start_ms + HOUR).min(now());
            world.stop(id, stop_ms, meter);
            known.stop_meter = Some(meter);
        }
        // Revise a recent billed session now and then (recent, so the next window re-reads it).
        if rng.random_bool(0.3) {
            let recent: Vec<i64> = sessions
                .iter()
                .filter(|(_, k)| k.stop_meter.is_some() && now() - k.start_ms < 30 * 60_000)
                .map(|(id, _)| *id)
                .collect();
            if let Some(&id) = recent.get(rng.random_range(0..recent.len().max(1))) {
                let meter = 1000 + rng.random_range(0..80_000);
                world
                    .steve
                    .handle()
                    .revise_stop_value(i32::try_from(id).unwrap(), &meter.to_string())
                    .unwrap();
                sessions.get_mut(&id).unwrap().stop_meter = Some(meter);
            }
        }
        if round == rounds / 2 {
            world.customer("late", "sub-late");
            world.map("LATE", "late", None).await;
        }
        let lago = world.lago.handle();
        match rng.random_range(0..6) {
            0 => lago.fail_next(rng.random_range(1..4)),
            1 => lago.drop_next(1),
            2 => lago.rate_limit_next(1, 1),
            3 => world.steve.handle().fail_next(1),
            _ => {}
        }
        world.run().await;
        lago.clear_faults();
        world.steve.handle().clear_faults();
    }
    // Calm: every pending event goes out and every parked session is looked at again.
    world.run().await;
    world.run().await;

    let events = world.lago.handle().events();
    let mut charged = HashSet::new();
    for event in &events {
        assert!(
            charged.insert((
                event.external_subscription_id.clone(),
                event.transaction_id.clone()
            )),
            "seed {seed:#x}: {} charged twice",
            event.transaction_id
        );
    }
    for (id, known) in &sessions {
        let expected = match (known.stop_meter, known.tag) {
            (Some(meter), "TAG" | "CHILD" | "LATE" | "OTHER") => meter - 1000,
            _ => 0,
        };
        assert_eq!(
            world.lago_wh(*id),
            expected,
            "seed {seed:#x}: session {id} of {} ({:?})",
            known.tag,
            world.session(*id).await
        );
    }
}
