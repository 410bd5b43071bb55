//! `process_*` metrics, as Prometheus' client libraries export them (CPU, memory, file
//! descriptors, start time), read from `/proc/self` when scraped. Elsewhere than Linux there
//! is no `/proc` and these families are left out.

use super::text::{Family, Value};

/// Clock ticks per second of `/proc/self/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on every
/// Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: f64 = 4096.0;

pub fn families() -> Vec<Family> {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Vec::new() };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, after_name)) = stat.rsplit_once(')') else { return Vec::new() };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field numbers of proc(5) are 1-based and the state (3) is fields[0].
    let field = |number: usize| fields.get(number - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (field(14) + field(15)) / TICKS_PER_SECOND;
    let start = boot_time().map(|boot| boot + field(22) / TICKS_PER_SECOND);
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|dir| dir.count() as f64).unwrap_or(0.0);
    let mut families = vec![
        Family::single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Value::Counter(cpu),
        ),
        Family::single("process_open_fds", "Number of open file descriptors.", Value::Gauge(open_fds)),
        Family::single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Value::Gauge(field(24) * PAGE_SIZE),
        ),
        Family::single(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Value::Gauge(field(23)),
        ),
    ];
    if let Some(max) = max_fds() {
        families.push(Family::single(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Value::Gauge(max),
        ));
    }
    if let Some(start) = start {
        families.push(Family::single(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Value::Gauge(start),
        ));
    }
    families
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|t| t.trim().parse().ok())
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let families = super::families();
        let value = |name: &str| match &families.iter().find(|f| f.name == name).expect(name).series[0].value
        {
            super::Value::Gauge(v) | super::Value::Counter(v) => *v,
            other => panic!("{other:?}"),
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "a test binary holds more than 1 MB");
        assert!(value("process_open_fds") >= 3.0);
        let started = value("process_start_time_seconds");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(started <= now + 1.0 && started > now - 86_400.0, "started within a day: {started} vs {now}");
    }
}
