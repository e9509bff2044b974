//! The adaptive cadence of a server-side sync job: which tier it runs in, when it runs next, and
//! how an operator's "run now" and pin change that.
//!
//! Everything here is a pure function of the stored [`CadenceState`] and a time the caller passes
//! in, in milliseconds since the Unix epoch. The worker reads that time from the database's clock,
//! so that several worker processes and a restarted worker agree on one timeline; nothing here
//! reads a clock.
//!
//! The rules:
//! - After every run the job's reported activity is evaluated against the stored tier.
//!   Promotion to a more active tier is immediate. Demotion needs [`DEMOTION_EVALUATIONS`]
//!   evaluations in a row that suggest a less active tier; it then goes to the most active of
//!   those suggestions. An evaluation at or above the stored tier ends the streak.
//! - A manual trigger makes the stored tier active at once and ends any streak.
//! - A pin overrides the tier the job runs at (its *effective* tier) until it ends; the stored
//!   tier keeps being evaluated underneath and applies again when the pin ends or is removed.
//! - The next run is due one interval of the effective tier after the previous run finished. A
//!   pin's end bounds that: the run after a pin is due at most one interval of the stored tier
//!   after the pin ends, so a long pinned interval does not outlive its pin.
//! - When the effective tier changes between runs (manual trigger, pin, unpin), the next run is
//!   brought forward if the new tier would run sooner, counted from the change; it is never
//!   delayed, so a run already scheduled is not lost by pinning a slower tier.
//! - A run that became due while no worker ran is run once at start-up (trigger `catchup`),
//!   however many slots were missed: the run's end schedules the next one from then.

use std::fmt;
use std::time::Duration;

use crate::job::RunTrigger;

/// The number of evaluations in a row that must suggest a less active tier before a job is
/// demoted, so one quiet run does not slow a busy job down.
pub const DEMOTION_EVALUATIONS: u32 = 2;

/// How busy a job is, which decides how often it runs.
///
/// `Ord` compares activity, `Dormant < Idle < Active`, so `max` picks the more active tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Dormant,
    Idle,
    Active,
}

impl Tier {
    /// Every tier, most active first.
    pub const ALL: [Tier; 3] = [Tier::Active, Tier::Idle, Tier::Dormant];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Active => "active",
            Tier::Idle => "idle",
            Tier::Dormant => "dormant",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier interval of zero would make a job run back to back forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the interval of the {0} tier must be longer than zero")]
pub struct ZeroInterval(pub Tier);

/// How often a job runs in each tier. Every interval is longer than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierIntervals {
    active: Duration,
    idle: Duration,
    dormant: Duration,
}

impl TierIntervals {
    pub fn new(active: Duration, idle: Duration, dormant: Duration) -> Result<Self, ZeroInterval> {
        let intervals = TierIntervals {
            active,
            idle,
            dormant,
        };
        match Tier::ALL
            .into_iter()
            .find(|&t| intervals.interval(t).is_zero())
        {
            Some(tier) => Err(ZeroInterval(tier)),
            None => Ok(intervals),
        }
    }

    pub fn interval(&self, tier: Tier) -> Duration {
        match tier {
            Tier::Active => self.active,
            Tier::Idle => self.idle,
            Tier::Dormant => self.dormant,
        }
    }

    fn interval_ms(&self, tier: Tier) -> i64 {
        i64::try_from(self.interval(tier).as_millis()).unwrap_or(i64::MAX)
    }
}

impl Default for TierIntervals {
    /// Active every 15 minutes, idle hourly, dormant weekly.
    fn default() -> Self {
        TierIntervals {
            active: Duration::from_secs(15 * 60),
            idle: Duration::from_secs(60 * 60),
            dormant: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// Evaluations in a row that suggested a less active tier than the stored one, too few so far to
/// demote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingDemotion {
    /// The most active of the suggestions in the streak: where the job goes if it is demoted.
    pub toward: Tier,
    /// How many evaluations in a row suggested a demotion (below [`DEMOTION_EVALUATIONS`]).
    pub streak: u32,
}

/// An operator's pin: the job runs at `tier` until `until_ms`, whatever its activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierPin {
    pub tier: Tier,
    pub until_ms: i64,
}

/// Everything about a job's cadence that must survive a restart; the worker stores it in the
/// database and passes it back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CadenceState {
    /// The tier earned by activity and manual triggers. A pin overrides it without replacing it.
    pub tier: Tier,
    pub pending_demotion: Option<PendingDemotion>,
    /// May have ended already; [`CadenceState::active_pin`] says whether it still applies.
    pub pin: Option<TierPin>,
    /// When the next scheduled run is due; `None` until the job's first run has finished, which
    /// means due at once.
    pub next_run_at_ms: Option<i64>,
}

impl Default for CadenceState {
    fn default() -> Self {
        CadenceState::new()
    }
}

/// What the worker does next about a job's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextRun {
    /// A run is due: start one now with this trigger.
    Now(RunTrigger),
    /// Nothing is due; ask again after this long.
    After(Duration),
}

impl CadenceState {
    /// The state of a job that has never run: active, and due at once so its first run tells
    /// what its activity is.
    pub const fn new() -> Self {
        CadenceState {
            tier: Tier::Active,
            pending_demotion: None,
            pin: None,
            next_run_at_ms: None,
        }
    }

    /// The pin, if it still applies at `now_ms`.
    pub fn active_pin(&self, now_ms: i64) -> Option<TierPin> {
        self.pin.filter(|pin| now_ms < pin.until_ms)
    }

    /// The tier the job runs at: the pinned tier while a pin applies, the stored tier otherwise.
    pub fn effective_tier(&self, now_ms: i64) -> Tier {
        self.active_pin(now_ms).map_or(self.tier, |pin| pin.tier)
    }

    /// The interval of the effective tier, as `/api/admin/sync/state` shows it.
    pub fn interval(&self, now_ms: i64, intervals: &TierIntervals) -> Duration {
        intervals.interval(self.effective_tier(now_ms))
    }

    /// The state after a run that finished at `finished_at_ms`: the tier re-evaluated with the
    /// run's reported activity, a pin that ended dropped, and the next run scheduled.
    ///
    /// `activity` is `None` when the run learned nothing about activity (it panicked, or failed
    /// before it could look): the tier and any demotion streak stay as they were, because a
    /// broken run is no evidence that the job went quiet.
    #[must_use]
    pub fn after_run(
        self,
        activity: Option<Tier>,
        finished_at_ms: i64,
        intervals: &TierIntervals,
    ) -> Self {
        let mut state = match activity {
            Some(suggested) => self.evaluated(suggested),
            None => self,
        };
        state.pin = state.active_pin(finished_at_ms);
        state.next_run_at_ms = Some(state.scheduled_from(finished_at_ms, intervals));
        state
    }

    /// The state after an operator's manual trigger at `now_ms`: active at once, any demotion
    /// streak ended. The manual run itself is the caller's to start.
    #[must_use]
    pub fn after_manual_trigger(self, now_ms: i64, intervals: &TierIntervals) -> Self {
        CadenceState {
            tier: Tier::Active,
            pending_demotion: None,
            ..self
        }
        .rescheduled(now_ms, intervals)
    }

    /// The state after an operator pins `tier` for `duration` from `now_ms`, replacing any pin.
    #[must_use]
    pub fn pinned(
        self,
        tier: Tier,
        duration: Duration,
        now_ms: i64,
        intervals: &TierIntervals,
    ) -> Self {
        let length = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let until_ms = now_ms.saturating_add(length);
        CadenceState {
            // A pin that ends before it starts is no pin.
            pin: (now_ms < until_ms).then_some(TierPin { tier, until_ms }),
            ..self
        }
        .rescheduled(now_ms, intervals)
    }

    /// The state after an operator removes the pin at `now_ms`: the stored tier applies again.
    #[must_use]
    pub fn unpinned(self, now_ms: i64, intervals: &TierIntervals) -> Self {
        CadenceState { pin: None, ..self }.rescheduled(now_ms, intervals)
    }

    /// What to do at `now_ms` while the worker is running: a scheduled run when one is due.
    pub fn next_run(&self, now_ms: i64) -> NextRun {
        match self.next_run_at_ms {
            Some(at) if now_ms < at => NextRun::After(millis(at - now_ms)),
            _ => NextRun::Now(RunTrigger::Schedule),
        }
    }

    /// What to do when a worker starts at `now_ms`. A run that fell due while no worker ran is
    /// overdue: it runs once now as a catch-up, however many slots were missed, since that run's
    /// end schedules the next one from then.
    pub fn next_run_at_startup(&self, now_ms: i64) -> NextRun {
        match (self.next_run_at_ms, self.next_run(now_ms)) {
            (Some(_), NextRun::Now(_)) => NextRun::Now(RunTrigger::Catchup),
            // A job that has never run has missed nothing; its first run is its schedule's.
            (None, next) | (Some(_), next @ NextRun::After(_)) => next,
        }
    }

    /// The state after one evaluation of a run's suggested tier against the stored tier.
    fn evaluated(self, suggested: Tier) -> Self {
        if suggested >= self.tier {
            return CadenceState {
                tier: suggested,
                pending_demotion: None,
                ..self
            };
        }
        let pending = match self.pending_demotion {
            // A streak only counts toward the tier it was built under; a stale one (stored tier
            // changed since, or edited in the database) starts over.
            Some(p) if p.toward < self.tier => PendingDemotion {
                toward: p.toward.max(suggested),
                streak: p.streak.saturating_add(1),
            },
            _ => PendingDemotion {
                toward: suggested,
                streak: 1,
            },
        };
        if pending.streak >= DEMOTION_EVALUATIONS {
            CadenceState {
                tier: pending.toward,
                pending_demotion: None,
                ..self
            }
        } else {
            CadenceState {
                pending_demotion: Some(pending),
                ..self
            }
        }
    }

    /// When a run finishing at `from_ms` makes the next one due: one interval of the effective
    /// tier later, but no later than one interval of the stored tier after the pin ends.
    fn scheduled_from(&self, from_ms: i64, intervals: &TierIntervals) -> i64 {
        let due = from_ms.saturating_add(intervals.interval_ms(self.effective_tier(from_ms)));
        match self.active_pin(from_ms) {
            Some(pin) => due.min(
                pin.until_ms
                    .saturating_add(intervals.interval_ms(self.tier)),
            ),
            None => due,
        }
    }

    /// Brings the next run forward after the effective tier changed at `now_ms`, if the new tier
    /// runs sooner; a job that is already due (or has never run) stays so.
    fn rescheduled(self, now_ms: i64, intervals: &TierIntervals) -> Self {
        CadenceState {
            next_run_at_ms: self
                .next_run_at_ms
                .map(|at| at.min(self.scheduled_from(now_ms, intervals))),
            ..self
        }
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    /// 2023-11-14T22:13:20Z, an arbitrary database "now".
    const T0: i64 = 1_700_000_000_000;

    fn intervals() -> TierIntervals {
        TierIntervals::default()
    }

    fn at(tier: Tier) -> CadenceState {
        CadenceState {
            tier,
            ..CadenceState::new()
        }
    }

    /// The state after one run per suggestion, each finishing an hour after the previous.
    fn after_runs(mut state: CadenceState, suggestions: &[Tier]) -> CadenceState {
        for (i, &suggested) in suggestions.iter().enumerate() {
            state = state.after_run(Some(suggested), T0 + i as i64 * HOUR, &intervals());
        }
        state
    }

    #[test]
    fn tiers_read_and_write_their_contract_names_and_compare_by_activity() {
        for tier in Tier::ALL {
            assert_eq!(Tier::parse(tier.as_str()), Some(tier));
            assert_eq!(tier.to_string(), tier.as_str());
        }
        assert_eq!(Tier::parse("active"), Some(Tier::Active));
        assert_eq!(Tier::parse("idle"), Some(Tier::Idle));
        assert_eq!(Tier::parse("dormant"), Some(Tier::Dormant));
        assert_eq!(Tier::parse("Active"), None);
        assert_eq!(Tier::parse("weekly"), None);
        assert!(Tier::Active > Tier::Idle && Tier::Idle > Tier::Dormant);
        assert_eq!(Tier::Idle.max(Tier::Dormant), Tier::Idle);
    }

    #[test]
    fn default_intervals_are_fifteen_minutes_an_hour_and_a_week() {
        let intervals = TierIntervals::default();
        assert_eq!(intervals.interval(Tier::Active), Duration::from_secs(900));
        assert_eq!(intervals.interval(Tier::Idle), Duration::from_secs(3600));
        assert_eq!(
            intervals.interval(Tier::Dormant),
            Duration::from_secs(604_800)
        );
    }

    #[test]
    fn intervals_are_configurable_but_never_zero() {
        let second = Duration::from_secs(1);
        let custom = TierIntervals::new(second, 2 * second, 3 * second).unwrap();
        assert_eq!(custom.interval(Tier::Idle), 2 * second);
        assert_eq!(
            TierIntervals::new(second, Duration::ZERO, second),
            Err(ZeroInterval(Tier::Idle))
        );
        assert_eq!(
            ZeroInterval(Tier::Idle).to_string(),
            "the interval of the idle tier must be longer than zero"
        );
    }

    #[test]
    fn a_new_job_is_active_and_due_at_once_as_a_scheduled_run() {
        let state = CadenceState::default();
        assert_eq!(state.tier, Tier::Active);
        assert_eq!(state.next_run(T0), NextRun::Now(RunTrigger::Schedule));
        assert_eq!(
            state.next_run_at_startup(T0),
            NextRun::Now(RunTrigger::Schedule),
            "a job that never ran has missed nothing to catch up"
        );
    }

    #[test]
    fn promotion_is_immediate() {
        let state = at(Tier::Dormant).after_run(Some(Tier::Active), T0, &intervals());
        assert_eq!(state.tier, Tier::Active);
        let state = at(Tier::Dormant).after_run(Some(Tier::Idle), T0, &intervals());
        assert_eq!(state.tier, Tier::Idle);
    }

    #[test]
    fn promotion_ends_a_demotion_streak() {
        let state = after_runs(at(Tier::Idle), &[Tier::Dormant, Tier::Active]);
        assert_eq!(state.tier, Tier::Active);
        assert_eq!(state.pending_demotion, None);
    }

    #[test]
    fn demotion_needs_two_evaluations_in_a_row() {
        let once = after_runs(at(Tier::Active), &[Tier::Idle]);
        assert_eq!(once.tier, Tier::Active, "one quiet run does not demote");
        assert_eq!(
            once.pending_demotion,
            Some(PendingDemotion {
                toward: Tier::Idle,
                streak: 1
            })
        );
        let twice = after_runs(once, &[Tier::Idle]);
        assert_eq!(twice.tier, Tier::Idle);
        assert_eq!(twice.pending_demotion, None);
    }

    #[test]
    fn demotion_can_skip_a_tier_when_both_evaluations_agree() {
        let state = after_runs(at(Tier::Active), &[Tier::Dormant, Tier::Dormant]);
        assert_eq!(state.tier, Tier::Dormant);
    }

    #[test]
    fn mixed_demotion_suggestions_demote_to_the_more_active_of_them() {
        let state = after_runs(at(Tier::Active), &[Tier::Dormant, Tier::Idle]);
        assert_eq!(state.tier, Tier::Idle);
        let state = after_runs(at(Tier::Active), &[Tier::Idle, Tier::Dormant]);
        assert_eq!(state.tier, Tier::Idle);
    }

    #[test]
    fn a_suggestion_of_the_current_tier_resets_the_streak() {
        let state = after_runs(at(Tier::Active), &[Tier::Idle, Tier::Active, Tier::Idle]);
        assert_eq!(
            state.tier,
            Tier::Active,
            "the two quiet runs were not in a row"
        );
        assert_eq!(state.pending_demotion.map(|p| p.streak), Some(1));
    }

    #[test]
    fn after_a_demotion_the_next_demotion_needs_a_fresh_streak() {
        let state = after_runs(at(Tier::Active), &[Tier::Idle, Tier::Idle, Tier::Dormant]);
        assert_eq!(state.tier, Tier::Idle);
        assert_eq!(after_runs(state, &[Tier::Dormant]).tier, Tier::Dormant);
    }

    #[test]
    fn a_stale_streak_from_another_tier_starts_over() {
        // Stored by a database edit or an older rule: a "demotion" toward a tier that is not
        // below the stored one.
        let state = CadenceState {
            pending_demotion: Some(PendingDemotion {
                toward: Tier::Active,
                streak: 1,
            }),
            ..at(Tier::Idle)
        };
        let state = after_runs(state, &[Tier::Dormant]);
        assert_eq!(state.tier, Tier::Idle);
        assert_eq!(state.pending_demotion.map(|p| p.streak), Some(1));
    }

    #[test]
    fn a_run_without_activity_changes_neither_tier_nor_streak() {
        let state = after_runs(at(Tier::Active), &[Tier::Idle]);
        let failed = state.after_run(None, T0 + DAY, &intervals());
        assert_eq!(failed.tier, Tier::Active);
        assert_eq!(failed.pending_demotion, state.pending_demotion);
        assert_eq!(failed.next_run_at_ms, Some(T0 + DAY + 15 * MINUTE));
        assert_eq!(
            after_runs(failed, &[Tier::Idle]).tier,
            Tier::Idle,
            "the failed run neither broke nor extended the streak"
        );
    }

    #[test]
    fn the_next_run_is_one_interval_of_the_tier_after_the_run_finished() {
        for (tier, interval) in [
            (Tier::Active, 15 * MINUTE),
            (Tier::Idle, HOUR),
            (Tier::Dormant, 7 * DAY),
        ] {
            let state = at(tier).after_run(Some(tier), T0, &intervals());
            assert_eq!(state.next_run_at_ms, Some(T0 + interval), "{tier}");
        }
        let custom = TierIntervals::new(
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(90),
        )
        .unwrap();
        let state = at(Tier::Idle).after_run(Some(Tier::Idle), T0, &custom);
        assert_eq!(state.next_run_at_ms, Some(T0 + 60_000));
    }

    #[test]
    fn the_next_run_uses_the_tier_the_evaluation_just_chose() {
        let promoted = at(Tier::Dormant).after_run(Some(Tier::Active), T0, &intervals());
        assert_eq!(promoted.next_run_at_ms, Some(T0 + 15 * MINUTE));
        let first_quiet = at(Tier::Active).after_run(Some(Tier::Dormant), T0, &intervals());
        assert_eq!(
            first_quiet.next_run_at_ms,
            Some(T0 + 15 * MINUTE),
            "not demoted yet"
        );
    }

    #[test]
    fn next_run_waits_until_due_then_asks_for_a_scheduled_run() {
        let state = at(Tier::Active).after_run(Some(Tier::Active), T0, &intervals());
        assert_eq!(
            state.next_run(T0 + MINUTE),
            NextRun::After(Duration::from_secs(14 * 60))
        );
        assert_eq!(
            state.next_run(T0 + 15 * MINUTE),
            NextRun::Now(RunTrigger::Schedule)
        );
        assert_eq!(
            state.next_run(T0 + HOUR),
            NextRun::Now(RunTrigger::Schedule)
        );
    }

    #[test]
    fn a_manual_trigger_makes_the_job_active_at_once_and_ends_the_streak() {
        let dormant = after_runs(at(Tier::Dormant), &[Tier::Dormant]);
        let now = T0 + HOUR;
        let state = dormant.after_manual_trigger(now, &intervals());
        assert_eq!(state.tier, Tier::Active);
        assert_eq!(state.effective_tier(now), Tier::Active);
        assert_eq!(state.pending_demotion, None);

        let streaking = after_runs(at(Tier::Active), &[Tier::Idle]);
        let state = streaking.after_manual_trigger(now, &intervals());
        assert_eq!(state.pending_demotion, None);
        assert_eq!(
            after_runs(state, &[Tier::Idle]).tier,
            Tier::Active,
            "the quiet run before the trigger does not count"
        );
    }

    #[test]
    fn a_manual_trigger_brings_a_distant_next_run_forward() {
        let dormant = at(Tier::Dormant).after_run(Some(Tier::Dormant), T0, &intervals());
        assert_eq!(dormant.next_run_at_ms, Some(T0 + 7 * DAY));
        let state = dormant.after_manual_trigger(T0 + HOUR, &intervals());
        assert_eq!(state.next_run_at_ms, Some(T0 + HOUR + 15 * MINUTE));
    }

    #[test]
    fn a_pin_overrides_the_tier_until_it_ends_then_the_stored_tier_applies() {
        let state = at(Tier::Active).pinned(
            Tier::Dormant,
            Duration::from_secs(2 * 3600),
            T0,
            &intervals(),
        );
        assert_eq!(
            state.pin,
            Some(TierPin {
                tier: Tier::Dormant,
                until_ms: T0 + 2 * HOUR
            })
        );
        assert_eq!(state.tier, Tier::Active, "the stored tier is kept");
        assert_eq!(state.effective_tier(T0), Tier::Dormant);
        assert_eq!(state.effective_tier(T0 + 2 * HOUR - 1), Tier::Dormant);
        assert_eq!(
            state.interval(T0, &intervals()),
            Duration::from_secs(604_800)
        );
        assert_eq!(state.effective_tier(T0 + 2 * HOUR), Tier::Active);
        assert_eq!(state.active_pin(T0 + 2 * HOUR), None);
        assert_eq!(
            state.interval(T0 + 3 * HOUR, &intervals()),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn a_pin_replaces_the_previous_pin() {
        let state = CadenceState::new()
            .pinned(Tier::Dormant, Duration::from_secs(3600), T0, &intervals())
            .pinned(Tier::Idle, Duration::from_secs(7200), T0, &intervals());
        assert_eq!(
            state.pin,
            Some(TierPin {
                tier: Tier::Idle,
                until_ms: T0 + 2 * HOUR
            })
        );
    }

    #[test]
    fn a_pin_of_no_length_is_no_pin() {
        let state = CadenceState::new().pinned(Tier::Dormant, Duration::ZERO, T0, &intervals());
        assert_eq!(state.pin, None);
    }

    #[test]
    fn unpinning_restores_the_stored_tier_at_once() {
        let pinned = at(Tier::Idle).pinned(
            Tier::Active,
            Duration::from_secs(24 * 3600),
            T0,
            &intervals(),
        );
        let state = pinned.unpinned(T0 + HOUR, &intervals());
        assert_eq!(state.pin, None);
        assert_eq!(state.effective_tier(T0 + HOUR), Tier::Idle);
        assert_eq!(state.tier, Tier::Idle);
    }

    #[test]
    fn runs_under_a_pin_are_scheduled_at_the_pinned_interval() {
        let pinned = at(Tier::Dormant).pinned(
            Tier::Active,
            Duration::from_secs(4 * 3600),
            T0,
            &intervals(),
        );
        let state = pinned.after_run(Some(Tier::Dormant), T0 + HOUR, &intervals());
        assert_eq!(state.next_run_at_ms, Some(T0 + HOUR + 15 * MINUTE));
        assert_eq!(
            state.tier,
            Tier::Dormant,
            "evaluation continues under the pin"
        );
    }

    #[test]
    fn the_stored_tier_keeps_being_evaluated_under_a_pin() {
        let pinned = at(Tier::Active).pinned(
            Tier::Active,
            Duration::from_secs(24 * 3600),
            T0,
            &intervals(),
        );
        let state = after_runs(pinned, &[Tier::Dormant, Tier::Dormant]);
        assert_eq!(state.tier, Tier::Dormant);
        assert_eq!(state.effective_tier(T0 + 2 * HOUR), Tier::Active);
        assert_eq!(state.effective_tier(T0 + 24 * HOUR), Tier::Dormant);
    }

    #[test]
    fn a_run_after_the_pin_ended_drops_it_and_uses_the_stored_tier() {
        let pinned =
            at(Tier::Active).pinned(Tier::Dormant, Duration::from_secs(3600), T0, &intervals());
        let state = pinned.after_run(Some(Tier::Active), T0 + 2 * HOUR, &intervals());
        assert_eq!(state.pin, None);
        assert_eq!(state.next_run_at_ms, Some(T0 + 2 * HOUR + 15 * MINUTE));
    }

    #[test]
    fn a_slow_pin_does_not_outlive_itself_in_the_schedule() {
        // Pinned dormant (weekly) for two hours: the run after the pin is one active interval
        // after the pin ends, not a week after the last pinned run.
        let pinned = at(Tier::Active).pinned(
            Tier::Dormant,
            Duration::from_secs(2 * 3600),
            T0,
            &intervals(),
        );
        let state = pinned.after_run(Some(Tier::Active), T0 + HOUR, &intervals());
        assert_eq!(state.next_run_at_ms, Some(T0 + 2 * HOUR + 15 * MINUTE));
    }

    #[test]
    fn pinning_a_faster_tier_brings_the_next_run_forward() {
        let dormant = at(Tier::Dormant).after_run(Some(Tier::Dormant), T0, &intervals());
        let state = dormant.pinned(
            Tier::Active,
            Duration::from_secs(3600),
            T0 + DAY,
            &intervals(),
        );
        assert_eq!(state.next_run_at_ms, Some(T0 + DAY + 15 * MINUTE));
    }

    #[test]
    fn pinning_a_slower_tier_never_delays_a_scheduled_run() {
        let active = at(Tier::Active).after_run(Some(Tier::Active), T0, &intervals());
        let state = active.pinned(
            Tier::Dormant,
            Duration::from_secs(3600),
            T0 + MINUTE,
            &intervals(),
        );
        assert_eq!(state.next_run_at_ms, Some(T0 + 15 * MINUTE));
        let new_job =
            CadenceState::new().pinned(Tier::Dormant, Duration::from_secs(3600), T0, &intervals());
        assert_eq!(new_job.next_run_at_ms, None, "still due at once");
    }

    #[test]
    fn unpinning_a_slow_pin_brings_the_next_run_forward() {
        let pinned = at(Tier::Active).pinned(
            Tier::Dormant,
            Duration::from_secs(30 * 24 * 3600),
            T0,
            &intervals(),
        );
        let waiting = pinned.after_run(Some(Tier::Active), T0, &intervals());
        assert_eq!(waiting.next_run_at_ms, Some(T0 + 7 * DAY));
        let state = waiting.unpinned(T0 + HOUR, &intervals());
        assert_eq!(state.next_run_at_ms, Some(T0 + HOUR + 15 * MINUTE));
    }

    #[test]
    fn an_overdue_run_at_startup_is_one_catch_up_run() {
        // Active every 15 minutes, then no worker for ten days: 960 missed slots.
        let state = at(Tier::Active).after_run(Some(Tier::Active), T0, &intervals());
        let now = T0 + 10 * DAY;
        assert_eq!(
            state.next_run_at_startup(now),
            NextRun::Now(RunTrigger::Catchup)
        );
        let caught_up = state.after_run(Some(Tier::Active), now + 1_000, &intervals());
        assert_eq!(
            caught_up.next_run_at_startup(now + 1_000),
            NextRun::After(Duration::from_secs(15 * 60)),
            "the missed slots are not run one by one"
        );
        assert_eq!(
            caught_up.next_run(now + 1_000),
            NextRun::After(Duration::from_secs(15 * 60))
        );
    }

    #[test]
    fn a_run_due_exactly_at_startup_is_a_catch_up_run() {
        let state = at(Tier::Idle).after_run(Some(Tier::Idle), T0, &intervals());
        assert_eq!(
            state.next_run_at_startup(T0 + HOUR),
            NextRun::Now(RunTrigger::Catchup)
        );
    }

    #[test]
    fn a_run_not_yet_due_at_startup_waits_for_its_slot() {
        let state = at(Tier::Idle).after_run(Some(Tier::Idle), T0, &intervals());
        assert_eq!(
            state.next_run_at_startup(T0 + 20 * MINUTE),
            NextRun::After(Duration::from_secs(40 * 60))
        );
    }

    #[test]
    fn extreme_times_and_intervals_saturate_instead_of_overflowing() {
        let huge = TierIntervals::new(Duration::MAX, Duration::MAX, Duration::MAX).unwrap();
        let state = at(Tier::Idle).after_run(Some(Tier::Idle), i64::MAX - 1, &huge);
        assert_eq!(state.next_run_at_ms, Some(i64::MAX));
        let pinned = at(Tier::Idle).pinned(Tier::Active, Duration::MAX, T0, &huge);
        assert_eq!(pinned.pin.map(|p| p.until_ms), Some(i64::MAX));
    }
}
