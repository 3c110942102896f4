//! The limits on what a plugin call may move into the host, shared by the
//! capabilities and the runtime so both enforce the same numbers: the byte
//! budget of a host call, the log line cap, and the log budget of a call.
//!
//! A leaf module: it depends on nothing else in the crate. The limits an
//! operator sets per plugin (memory, deadline, bytes per host call, log
//! budget, kv quota, concurrent calls) are `CallLimits` in `config`; the backends' timeouts belong to
//! `capabilities::connections`; the engine's own sizing (pool slots, epoch
//! tick) stays with the engine in `runtime`.

use std::sync::{Mutex, PoisonError};

/// Longest line of a plugin kept in the host log, whether it comes through
/// the `log` import or from stdout/stderr; longer ones are cut, so a plugin
/// cannot flood the log with one line.
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

/// `max_host_call_bytes` unless broker.toml says otherwise.
pub const DEFAULT_MAX_HOST_CALL_BYTES: u64 = 4 * 1024 * 1024;

/// Counts the bytes one host call moves across the sandbox boundary against
/// `max_host_call_bytes`, so a plugin cannot make the host buffer (or copy
/// into its memory) more than the operator allowed.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    limit: u64,
    used: u64,
}

impl ByteBudget {
    pub(crate) fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }

    /// Adds `bytes`; fails once the total is over the limit, naming `what`.
    pub(crate) fn take(&mut self, bytes: usize, what: &str) -> Result<(), String> {
        self.used = self
            .used
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        if self.used > self.limit {
            return Err(format!(
                "{what} exceeds the host-call data limit of {} bytes",
                self.limit
            ));
        }
        Ok(())
    }
}

/// The instant a plugin call must end by. The runtime interrupts the guest
/// there (epoch interruption), and every host call the guest waits on ends
/// there too ([`CallDeadline::bound`]): a statement, command or request in
/// flight is abandoned, its connection closed rather than reused.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline {
    at: tokio::time::Instant,
    timeout_ms: u64,
}

/// A host call was still waiting when its plugin call's deadline came. The
/// host function returns it as a trap, so the call fails there; the runtime
/// reports it as a deadline fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "did not finish within its deadline of {timeout_ms} ms (a {capability} host call was still waiting)"
)]
pub struct DeadlineExceeded {
    pub timeout_ms: u64,
    pub capability: &'static str,
}

impl CallDeadline {
    /// `timeout` from now.
    pub fn after(timeout: std::time::Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + timeout,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A deadline that does not come in practice: for hosts built outside a
    /// plugin call (tests).
    pub fn distant() -> Self {
        Self::after(std::time::Duration::from_secs(365 * 24 * 3600))
    }

    pub fn instant(self) -> tokio::time::Instant {
        self.at
    }

    /// `work`'s output, or [`DeadlineExceeded`] if the deadline comes first
    /// (then `work` is dropped, and with it whatever it held).
    pub async fn bound<F: std::future::Future>(
        self,
        capability: &'static str,
        work: F,
    ) -> Result<F::Output, DeadlineExceeded> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| DeadlineExceeded {
                timeout_ms: self.timeout_ms,
                capability,
            })
    }
}

/// What one call may write to the host log: the `log` import and the
/// guest's stdout and stderr draw on the same budget, so a plugin cannot
/// fill the disk or drown other plugins' lines (one call once wrote
/// 471 MiB in 4.8 s). Past either limit its messages are dropped, and the
/// first one dropped is replaced by a notice.
#[derive(Debug)]
pub struct LogBudget {
    max_bytes: u64,
    max_lines: u64,
    used: Mutex<LogUse>,
}

#[derive(Debug, Default)]
struct LogUse {
    bytes: u64,
    lines: u64,
    exhausted: bool,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAdmission {
    Write,
    /// The first message past the budget: log [`LogBudget::notice`] instead.
    Exhausted,
    Drop,
}

impl LogBudget {
    pub fn new(max_bytes: u64, max_lines: u64) -> Self {
        Self {
            max_bytes,
            max_lines,
            used: Mutex::new(LogUse::default()),
        }
    }

    /// Counts a message of `bytes`.
    pub fn admit(&self, bytes: usize) -> LogAdmission {
        // Only counters behind the lock: a panic cannot leave them broken.
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.exhausted {
            return LogAdmission::Drop;
        }
        used.bytes = used
            .bytes
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        used.lines += 1;
        if used.bytes > self.max_bytes || used.lines > self.max_lines {
            used.exhausted = true;
            return LogAdmission::Exhausted;
        }
        LogAdmission::Write
    }

    /// The one line logged when the budget runs out.
    pub fn notice(&self) -> String {
        format!(
            "the plugin wrote more than the log budget of this call ({} bytes, {} lines: \
             [runtime] max_log_bytes_per_call, max_log_lines_per_call); the rest of its log \
             in this call is dropped",
            self.max_bytes, self.max_lines
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_ends_the_work_it_bounds() {
        let deadline = CallDeadline::after(std::time::Duration::from_millis(20));
        assert_eq!(
            deadline.bound("sql", async { 7 }).await.expect("in time"),
            7
        );
        let late = deadline
            .bound(
                "sql",
                tokio::time::sleep(std::time::Duration::from_secs(30)),
            )
            .await
            .expect_err("late");
        assert_eq!(
            late.to_string(),
            "did not finish within its deadline of 20 ms (a sql host call was still waiting)"
        );
    }

    #[test]
    fn the_log_budget_admits_up_to_its_limits_then_one_notice() {
        let budget = LogBudget::new(10, 100);
        assert_eq!(budget.admit(6), LogAdmission::Write);
        assert_eq!(budget.admit(4), LogAdmission::Write);
        assert_eq!(budget.admit(1), LogAdmission::Exhausted);
        assert_eq!(budget.admit(0), LogAdmission::Drop);
        assert_eq!(budget.admit(1), LogAdmission::Drop);

        let budget = LogBudget::new(1000, 2);
        assert_eq!(budget.admit(1), LogAdmission::Write);
        assert_eq!(budget.admit(1), LogAdmission::Write);
        assert_eq!(budget.admit(1), LogAdmission::Exhausted);
    }

    #[test]
    fn byte_budget_counts_up_to_the_limit() {
        let mut budget = ByteBudget::new(10);
        budget.take(6, "x").expect("within");
        budget.take(4, "x").expect("exactly at the limit");
        let error = budget.take(1, "the result").expect_err("over");
        assert_eq!(
            error,
            "the result exceeds the host-call data limit of 10 bytes"
        );
    }
}
