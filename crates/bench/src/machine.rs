//! A description of the machine and the date, for the report.

pub(crate) fn describe() -> String {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let date = &ferry_core::time::now()[..16].replace('T', " ");
    format!(
        "- **Date**: {date} UTC\n- **Machine**: {cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}\n\
         - **Build**: release profile, Ferry {}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// CPU time this process has used so far, all threads, user and system, in seconds. The
/// emulators run in the benchmark's process, so their work counts too.
pub(crate) fn cpu_seconds() -> f64 {
    // Fields after the command name's closing parenthesis; utime and stime are the 12th
    // and 13th of them, in clock ticks of 1/100 s (Linux's USER_HZ).
    let stat = read("/proc/self/stat");
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}
