//! The worker's metrics, rendered in Prometheus' text format for `/metrics`.
//!
//! Kept by hand rather than through a metrics crate: a handful of counters and histograms do
//! not earn a dependency, and the text format is short. [`Histogram`], [`write_histograms`]
//! and [`escape`] are shared with the server's own metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds in seconds: from a millisecond (trigger latency) to an hour (a long
/// run).
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
];

/// Everything the worker counts. Shared by the worker's tasks and the `/metrics` handler.
#[derive(Debug, Default)]
pub struct Metrics {
    runs: Mutex<BTreeMap<(String, String), u64>>,
    run_seconds: Mutex<BTreeMap<String, Histogram>>,
    trigger_latency: Mutex<BTreeMap<String, Histogram>>,
    pending: Mutex<BTreeMap<String, u64>>,
    reconnects: AtomicU64,
    connected: AtomicBool,
}

/// Observed durations, cumulative per bucket as the text format has them.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (count, bound) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.total += 1;
    }
}

impl Metrics {
    /// A run of `job` ended with `status`, after `elapsed`.
    pub fn run_finished(&self, job: &str, status: &str, elapsed: Duration) {
        *lock(&self.runs)
            .entry((job.to_owned(), status.to_owned()))
            .or_default() += 1;
        lock(&self.run_seconds)
            .entry(job.to_owned())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// A trigger of `job` was stored `latency` before the run that claimed it started.
    pub fn trigger_started(&self, job: &str, latency: Duration) {
        lock(&self.trigger_latency)
            .entry(job.to_owned())
            .or_default()
            .observe(latency.as_secs_f64());
    }

    /// How many triggers of `job` wait for a run.
    pub fn set_pending(&self, job: &str, pending: u64) {
        lock(&self.pending).insert(job.to_owned(), pending);
    }

    /// The trigger listener connected (again).
    pub fn listener_connected(&self, reconnect: bool) {
        self.connected.store(true, Ordering::Relaxed);
        if reconnect {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn listener_lost(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }

    /// Completed runs of `job` with `status` so far.
    pub fn runs(&self, job: &str, status: &str) -> u64 {
        lock(&self.runs)
            .get(&(job.to_owned(), status.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Listener reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ferry_worker_runs_total Finished sync runs, by job and status.\n");
        out.push_str("# TYPE ferry_worker_runs_total counter\n");
        for ((job, status), n) in lock(&self.runs).iter() {
            let _ = writeln!(
                out,
                "ferry_worker_runs_total{{job=\"{}\",status=\"{}\"}} {n}",
                escape(job),
                escape(status)
            );
        }
        write_histograms(
            &mut out,
            "ferry_worker_run_duration_seconds",
            "How long sync runs took, by job.",
            "job",
            by_job(&lock(&self.run_seconds)),
        );
        write_histograms(
            &mut out,
            "ferry_worker_trigger_latency_seconds",
            "From a trigger being stored to the run that claimed it starting, by job.",
            "job",
            by_job(&lock(&self.trigger_latency)),
        );
        out.push_str("# HELP ferry_worker_pending_triggers Triggers waiting for a run, by job.\n");
        out.push_str("# TYPE ferry_worker_pending_triggers gauge\n");
        for (job, n) in lock(&self.pending).iter() {
            let _ = writeln!(
                out,
                "ferry_worker_pending_triggers{{job=\"{}\"}} {n}",
                escape(job)
            );
        }
        let _ = write!(
            out,
            "# HELP ferry_worker_listener_reconnects_total Times the trigger listener reconnected.\n\
             # TYPE ferry_worker_listener_reconnects_total counter\n\
             ferry_worker_listener_reconnects_total {}\n\
             # HELP ferry_worker_listener_connected Whether the trigger listener is connected.\n\
             # TYPE ferry_worker_listener_connected gauge\n\
             ferry_worker_listener_connected {}\n",
            self.reconnects.load(Ordering::Relaxed),
            u8::from(self.connected.load(Ordering::Relaxed))
        );
        out
    }
}

/// Histograms by job, as [`write_histograms`] takes them.
fn by_job(histograms: &BTreeMap<String, Histogram>) -> impl Iterator<Item = (&str, &Histogram)> {
    histograms
        .iter()
        .map(|(job, histogram)| (job.as_str(), histogram))
}

/// Writes the histograms of metric `name`, one per value of the label `label`.
pub fn write_histograms<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    by_label: impl IntoIterator<Item = (&'a str, &'a Histogram)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (value, histogram) in by_label {
        let value = escape(value);
        for (count, bound) in histogram.counts.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}\n\
             {name}_sum{{{label}=\"{value}\"}} {}\n{name}_count{{{label}=\"{value}\"}} {}",
            histogram.total, histogram.sum, histogram.total
        );
    }
}

/// A label value as the text format wants it.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update leaves the maps whole, so a poisoned lock still guards good data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let metrics = Metrics::default();
        metrics.run_finished("billing", "succeeded", Duration::from_millis(30));
        metrics.run_finished("billing", "succeeded", Duration::from_secs(2));
        metrics.run_finished("bill\"ing", "failed", Duration::from_secs(2));
        metrics.trigger_started("billing", Duration::from_micros(1500));
        metrics.set_pending("billing", 3);
        metrics.listener_connected(false);
        metrics.listener_lost();
        metrics.listener_connected(true);
        let text = metrics.render();
        assert!(text.contains("ferry_worker_runs_total{job=\"billing\",status=\"succeeded\"} 2"));
        assert!(text.contains("ferry_worker_runs_total{job=\"bill\\\"ing\",status=\"failed\"} 1"));
        assert!(
            text.contains(
                "ferry_worker_run_duration_seconds_bucket{job=\"billing\",le=\"0.05\"} 1"
            )
        );
        assert!(
            text.contains("ferry_worker_run_duration_seconds_bucket{job=\"billing\",le=\"5\"} 2")
        );
        assert!(text.contains("ferry_worker_run_duration_seconds_count{job=\"billing\"} 2"));
        assert!(text.contains(
            "ferry_worker_trigger_latency_seconds_bucket{job=\"billing\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "ferry_worker_trigger_latency_seconds_bucket{job=\"billing\",le=\"0.002\"} 1"
        ));
        assert!(text.contains("ferry_worker_pending_triggers{job=\"billing\"} 3"));
        assert!(text.contains("ferry_worker_listener_reconnects_total 1"));
        assert!(text.contains("ferry_worker_listener_connected 1"));
        assert_eq!(metrics.runs("billing", "succeeded"), 2);
    }
}
