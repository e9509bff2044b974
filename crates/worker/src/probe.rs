//! The probe: a job that does no real work, only what it is configured to do (sleep, then
//! succeed, fail, report a partial run or panic), so the runtime can be exercised and tested
//! before real jobs exist.
//!
//! Its configuration is one compact string, so it fits a command-line flag or a test's
//! literal: comma-separated options, each `key=value` or a bare flag.
//!
//! | option           | meaning                                                   | default  |
//! |------------------|-----------------------------------------------------------|----------|
//! | `name=TEXT`      | the job name runs and state are stored under              | `probe`  |
//! | `sleep=DURATION` | how long a run takes: a whole number and `ms`, `s`, `m`, `h` or `d`, e.g. `200ms` | `0ms` |
//! | `activity=TIER`  | the activity it reports: `active`, `idle` or `dormant`    | `active` |
//! | `count.NAME=N`   | a count to report, e.g. `count.events_created=3`          | none     |
//! | `fail`           | end the run failed                                        |          |
//! | `partial`        | end the run partial                                       |          |
//! | `panic`          | panic at the end of the run                               |          |
//!
//! Every run also reports `probes=1` unless a `count.probes` says otherwise. At most one of
//! `fail`, `partial` and `panic` may be given. Unknown options are errors, so a typo does not
//! silently run a different probe. Example: `sleep=200ms,fail,activity=idle`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use ferry_core::time::parse_duration;
use tracing::Level;

use crate::cadence::Tier;
use crate::job::{FinalStatus, RunContext, RunOutcome, SyncJob};

/// How a probe run ends once it has slept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeEnd {
    #[default]
    Succeed,
    Fail,
    Partial,
    Panic,
}

impl ProbeEnd {
    fn flag(self) -> &'static str {
        match self {
            ProbeEnd::Succeed => "succeed",
            ProbeEnd::Fail => "fail",
            ProbeEnd::Partial => "partial",
            ProbeEnd::Panic => "panic",
        }
    }
}

/// What a probe does; see the module documentation for its string form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub name: String,
    pub sleep: Duration,
    pub end: ProbeEnd,
    pub activity: Tier,
    /// Reported besides `probes=1`, and over it when named `probes`.
    pub counts: BTreeMap<String, i64>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            name: "probe".to_string(),
            sleep: Duration::ZERO,
            end: ProbeEnd::Succeed,
            activity: Tier::Active,
            counts: BTreeMap::new(),
        }
    }
}

/// A probe configuration string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeConfigError {
    #[error(
        "unknown probe option {0:?}; expected name=, sleep=, activity=, count.NAME=, fail, \
         partial or panic"
    )]
    UnknownOption(String),
    #[error("probe option {0:?} needs a value, as in {0}=...")]
    MissingValue(String),
    #[error("probe option {0:?} takes no value")]
    UnexpectedValue(String),
    #[error("probe option {key}={value:?} is invalid: expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("probe options {0} and {1} conflict: a run ends one way")]
    Conflict(&'static str, &'static str),
}

impl ProbeConfig {
    /// Reads the compact form described in the module documentation; an empty string is the
    /// default probe.
    pub fn parse(text: &str) -> Result<Self, ProbeConfigError> {
        let mut config = ProbeConfig::default();
        let mut end: Option<ProbeEnd> = None;
        for option in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim())),
                None => (option, None),
            };
            let flag = match key {
                "fail" => Some(ProbeEnd::Fail),
                "partial" => Some(ProbeEnd::Partial),
                "panic" => Some(ProbeEnd::Panic),
                _ => None,
            };
            if let Some(flag) = flag {
                if value.is_some() {
                    return Err(ProbeConfigError::UnexpectedValue(key.to_string()));
                }
                match end {
                    Some(earlier) if earlier != flag => {
                        return Err(ProbeConfigError::Conflict(earlier.flag(), flag.flag()));
                    }
                    _ => end = Some(flag),
                }
                continue;
            }
            let Some(value) = value else {
                return Err(match key {
                    "name" | "sleep" | "activity" => ProbeConfigError::MissingValue(key.into()),
                    _ if key.starts_with("count.") => ProbeConfigError::MissingValue(key.into()),
                    _ => ProbeConfigError::UnknownOption(key.into()),
                });
            };
            let invalid = |expected| ProbeConfigError::InvalidValue {
                key: key.to_string(),
                value: value.to_string(),
                expected,
            };
            match key {
                "name" if !value.is_empty() => config.name = value.to_string(),
                "name" => return Err(invalid("a non-empty name")),
                "sleep" => {
                    config.sleep = parse_duration(value)
                        .ok_or_else(|| invalid("a whole number with ms, s, m or h"))?;
                }
                "activity" => {
                    config.activity =
                        Tier::parse(value).ok_or_else(|| invalid("active, idle or dormant"))?;
                }
                _ => match key.strip_prefix("count.") {
                    Some(name) if !name.is_empty() => {
                        let count = value.parse().map_err(|_| invalid("a whole number"))?;
                        config.counts.insert(name.to_string(), count);
                    }
                    _ => return Err(ProbeConfigError::UnknownOption(key.to_string())),
                },
            }
        }
        config.end = end.unwrap_or_default();
        Ok(config)
    }
}

impl FromStr for ProbeConfig {
    type Err = ProbeConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ProbeConfig::parse(text)
    }
}

/// The probe job; see the module documentation.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    config: ProbeConfig,
}

impl ProbeJob {
    pub fn new(config: ProbeConfig) -> Self {
        ProbeJob { config }
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }
}

impl SyncJob for ProbeJob {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunContext,
    ) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>> {
        Box::pin(async move {
            let config = &self.config;
            ctx.log(
                Level::INFO,
                format!(
                    "The probe started ({} run at tier {}); it sleeps for {:?}.",
                    ctx.trigger(),
                    ctx.tier(),
                    config.sleep
                ),
            );
            // The sleep stands for one unit of work, which shutdown does not interrupt.
            tokio::time::sleep(config.sleep).await;
            let mut counts = BTreeMap::from([("probes".to_string(), 1)]);
            counts.extend(config.counts.clone());
            let (status, errors) = match config.end {
                ProbeEnd::Succeed => {
                    ctx.log(Level::INFO, "The probe succeeded.");
                    (FinalStatus::Succeeded, vec![])
                }
                ProbeEnd::Partial => {
                    let error = "the probe was configured to end partial";
                    ctx.log(Level::WARN, format!("The probe ended partial: {error}."));
                    (FinalStatus::Partial, vec![error.to_string()])
                }
                ProbeEnd::Fail => {
                    let error = "the probe was configured to fail";
                    ctx.log(Level::ERROR, format!("The probe failed: {error}."));
                    (FinalStatus::Failed, vec![error.to_string()])
                }
                ProbeEnd::Panic => panic!("the probe was configured to panic"),
            };
            RunOutcome {
                status,
                counts,
                errors,
                activity: Some(config.activity),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::job::{RunTrigger, run_contained};

    fn probe(text: &str) -> Arc<ProbeJob> {
        Arc::new(ProbeJob::new(ProbeConfig::parse(text).unwrap()))
    }

    fn context() -> RunContext {
        RunContext::new(
            1,
            RunTrigger::Schedule,
            Tier::Idle,
            CancellationToken::new(),
        )
    }

    #[test]
    fn an_empty_string_is_the_default_probe() {
        assert_eq!(ProbeConfig::parse("").unwrap(), ProbeConfig::default());
        assert_eq!(ProbeConfig::parse(" , ").unwrap(), ProbeConfig::default());
        let default = ProbeConfig::default();
        assert_eq!(default.name, "probe");
        assert_eq!(default.sleep, Duration::ZERO);
        assert_eq!(default.end, ProbeEnd::Succeed);
        assert_eq!(default.activity, Tier::Active);
    }

    #[test]
    fn every_option_is_read() {
        let config: ProbeConfig =
            "name=probe2, sleep=200ms,fail,activity=idle,count.events_created=3,count.probes=0"
                .parse()
                .unwrap();
        assert_eq!(
            config,
            ProbeConfig {
                name: "probe2".into(),
                sleep: Duration::from_millis(200),
                end: ProbeEnd::Fail,
                activity: Tier::Idle,
                counts: BTreeMap::from([("events_created".into(), 3), ("probes".into(), 0)]),
            }
        );
        assert_eq!(ProbeConfig::parse("panic").unwrap().end, ProbeEnd::Panic);
        assert_eq!(
            ProbeConfig::parse("partial,partial").unwrap().end,
            ProbeEnd::Partial
        );
    }

    #[test]
    fn bad_options_are_errors_that_name_them() {
        let error = |text| ProbeConfig::parse(text).unwrap_err();
        assert_eq!(
            error("sleep=200ms,fial"),
            ProbeConfigError::UnknownOption("fial".into())
        );
        assert_eq!(
            error("colour=red"),
            ProbeConfigError::UnknownOption("colour".into())
        );
        assert_eq!(
            error("count.=3"),
            ProbeConfigError::UnknownOption("count.".into())
        );
        assert_eq!(
            error("sleep"),
            ProbeConfigError::MissingValue("sleep".into())
        );
        assert_eq!(
            error("count.events"),
            ProbeConfigError::MissingValue("count.events".into())
        );
        assert_eq!(
            error("fail=true"),
            ProbeConfigError::UnexpectedValue("fail".into())
        );
        assert_eq!(
            error("fail,panic"),
            ProbeConfigError::Conflict("fail", "panic")
        );
        assert_eq!(
            error("activity=busy"),
            ProbeConfigError::InvalidValue {
                key: "activity".into(),
                value: "busy".into(),
                expected: "active, idle or dormant"
            }
        );
        assert!(matches!(
            error("count.events=many"),
            ProbeConfigError::InvalidValue { .. }
        ));
        assert!(matches!(
            error("name="),
            ProbeConfigError::InvalidValue { .. }
        ));
        assert_eq!(
            error("sleep=5").to_string(),
            "probe option sleep=\"5\" is invalid: expected a whole number with ms, s, m or h"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_sleeps_then_succeeds_with_its_counts_and_activity() {
        let job = probe("sleep=1h,activity=dormant,count.events_created=3");
        assert_eq!(job.name(), "probe");
        let ctx = context();
        let start = Instant::now();
        let outcome = run_contained(job, ctx.clone()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
        assert_eq!(
            outcome,
            RunOutcome {
                status: FinalStatus::Succeeded,
                counts: BTreeMap::from([("events_created".into(), 3), ("probes".into(), 1)]),
                errors: vec![],
                activity: Some(Tier::Dormant),
            }
        );
        let lines = ctx.take_lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].text,
            "The probe started (schedule run at tier idle); it sleeps for 3600s."
        );
        assert_eq!(lines[1].elapsed, Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_fails_when_asked() {
        let outcome = run_contained(probe("sleep=200ms,fail,activity=idle"), context()).await;
        assert_eq!(outcome.status, FinalStatus::Failed);
        assert_eq!(outcome.errors, ["the probe was configured to fail"]);
        assert_eq!(outcome.activity, Some(Tier::Idle));
        assert_eq!(outcome.counts.get("probes"), Some(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_ends_partial_when_asked() {
        let outcome = run_contained(probe("partial"), context()).await;
        assert_eq!(outcome.status, FinalStatus::Partial);
        assert_eq!(outcome.errors.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_probe_is_contained_as_a_failed_run() {
        let ctx = context();
        let start = Instant::now();
        let outcome = run_contained(probe("sleep=2s,panic"), ctx.clone()).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "it panics after its sleep"
        );
        assert_eq!(
            outcome,
            RunOutcome::failed("the probe was configured to panic")
        );
        let last = ctx.take_lines().pop().unwrap();
        assert_eq!(last.level, Level::ERROR);
        assert_eq!(
            last.text,
            "The run panicked: the probe was configured to panic"
        );
    }
}
