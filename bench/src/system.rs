//! What the machine is and what a process holds: the facts printed with
//! every table, since figures mean little without them.

use std::time::Duration;

use crate::load::Window;

/// Resident memory of a process (`VmRSS`), in KiB.
pub fn resident_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
pub fn peak_resident_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time a process used (all its threads, user and system), from
/// `/proc/<pid>/stat`, in clock ticks of 10 ms (`getconf CLK_TCK` is 100 on
/// Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis start with field 3.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// The CPU time `pid` used inside `window` (waits for its end).
pub async fn cpu_time_during(pid: u32, window: Window) -> Option<Duration> {
    tokio::time::sleep_until(window.start.into()).await;
    let before = cpu_time(pid)?;
    tokio::time::sleep_until(window.end.into()).await;
    cpu_time(pid)?.checked_sub(before)
}

/// Samples a process's resident memory until dropped, keeping the largest.
pub struct RssSampler {
    task: tokio::task::JoinHandle<()>,
    largest: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let largest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = largest.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticks.tick().await;
                if let Some(kib) = resident_kib(pid) {
                    seen.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Self { task, largest }
    }

    pub fn largest_kib(&self) -> u64 {
        self.largest.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One line per fact: cores, CPU model, memory, load when the run started.
pub fn describe_machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned());
    vec![
        ("cores (nproc)".to_owned(), cores),
        ("CPU".to_owned(), model),
        ("memory".to_owned(), memory),
        ("load average at start (1, 5, 15 min)".to_owned(), load),
    ]
}
