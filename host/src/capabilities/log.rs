//! The `log` import: a plugin's messages go to the host's structured log,
//! tagged with the plugin name (which the plugin cannot choose) and the
//! platform's request identity.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::log::{self as wit, Level};
use crate::limits::MAX_LOG_LINE_BYTES;

/// Log target of everything plugins write, so operators can filter it
/// (`RUST_LOG=plugin=debug`).
pub const TARGET: &str = "plugin";

/// The `log` import of one plugin call.
pub struct LogHost {
    plugin: Arc<str>,
    request_identity: Option<String>,
}

impl LogHost {
    pub fn new(plugin: Arc<str>, request_identity: Option<String>) -> Self {
        Self {
            plugin,
            request_identity,
        }
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

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("héllo", 3), "hé");
        assert_eq!(truncated("short", 100), "short");
    }
}
