//! The fixed limits on what a plugin call may move into the host, shared by
//! the capabilities and the runtime so both enforce the same numbers.
//!
//! A leaf module: it depends on nothing else in the crate. The limits an
//! operator sets per plugin (memory, deadline, bytes per host call) are
//! `CallLimits` in `config`; the backends' timeouts belong to
//! `capabilities::connections`; the engine's own sizing (pool slots, epoch
//! tick) stays with the engine in `runtime`.

/// Longest line of a plugin kept in the host log, whether it comes through
/// the `log` import or from stdout/stderr; longer ones are cut, so a plugin
/// cannot flood the log with one line.
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

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
