//! The `log` import: a plugin's messages go to the host's structured log,
//! tagged with the plugin name (which the plugin cannot choose) and the
//! platform's request identity. What one call logs is bounded by its
//! [`LogBudget`], shared with its stdout and stderr.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::log::{self as wit, Level};
use crate::limits::{LogAdmission, LogBudget, MAX_LOG_LINE_BYTES};

/// Log target of everything plugins write, so operators can filter it
/// (`RUST_LOG=plugin=debug`).
pub const TARGET: &str = "plugin";

/// The `log` import of one plugin call.
pub struct LogHost {
    plugin: Arc<str>,
    request_identity: Option<String>,
    budget: Arc<LogBudget>,
}

impl LogHost {
    pub fn new(plugin: Arc<str>, request_identity: Option<String>, budget: Arc<LogBudget>) -> Self {
        Self {
            plugin,
            request_identity,
            budget,
        }
    }
}

/// Whether a message of `bytes` from `plugin` may be logged; logs the
/// notice when it is the first one past the call's budget.
pub(crate) fn within_budget(budget: &LogBudget, plugin: &str, bytes: usize) -> bool {
    match budget.admit(bytes) {
        LogAdmission::Write => true,
        LogAdmission::Exhausted => {
            tracing::warn!(target: TARGET, plugin, "{}", budget.notice());
            false
        }
        LogAdmission::Drop => false,
    }
}

/// `message` cut at a character boundary at or below `max` bytes.
fn truncated(message: &str, max: usize) -> &str {
    let mut end = message.len().min(max);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

macro_rules! plugin_event {
    ($level:expr, $host:expr, $message:expr) => {
        tracing::event!(
            target: TARGET,
            $level,
            plugin = %$host.plugin,
            request_identity = $host.request_identity.as_deref(),
            "{}",
            crate::printable::printable($message)
        )
    };
}

impl wit::Host for LogHost {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncated(&message, MAX_LOG_LINE_BYTES);
        if !within_budget(&self.budget, &self.plugin, message.len()) {
            return Ok(());
        }
        match level {
            Level::Trace => plugin_event!(tracing::Level::TRACE, self, message),
            Level::Debug => plugin_event!(tracing::Level::DEBUG, self, message),
            Level::Info => plugin_event!(tracing::Level::INFO, self, message),
            Level::Warn => plugin_event!(tracing::Level::WARN, self, message),
            Level::Error => plugin_event!(tracing::Level::ERROR, self, message),
        }
        Ok(())
    }
}

impl Capability for LogHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self::new(
            call.plugin().clone(),
            call.request_identity.map(str::to_owned),
            call.log_budget.clone(),
        )
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_logs_no_more_than_its_budget() {
        use wit::Host as _;
        let budget = Arc::new(LogBudget::new(3 * 8192, 1000));
        let mut host = LogHost::new(Arc::from("p"), None, budget.clone());
        for _ in 0..100 {
            host.log(Level::Info, "x".repeat(8192))
                .await
                .expect("no trap");
        }
        assert_eq!(budget.admit(0), LogAdmission::Drop, "the budget is spent");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("héllo", 3), "hé");
        assert_eq!(truncated("short", 100), "short");
    }
}
