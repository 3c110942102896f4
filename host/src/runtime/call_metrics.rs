//! The metrics of plugin calls, by plugin and operation:
//! `plugin_call_duration_seconds` and `plugin_calls_in_progress`, with their
//! handles resolved once. (`plugin_faults_total` is counted in `call`, where
//! a fault is classified.)

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use metrics::{Gauge, Histogram};

/// Counts a call in `plugin_calls_in_progress{plugin, operation}` (waiting
/// for a slot included) for as long as it lives, however the call ends.
pub(super) struct CallInProgress(Gauge);

impl CallInProgress {
    pub(super) fn start(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The metric handles of each plugin and operation, resolved on the first
/// call: building a metric key for every call (label strings, hashing, the
/// recorder's registry lookup) is an allocation-heavy detour on a path
/// that is otherwise a few microseconds of wasmtime.
#[derive(Default)]
pub(super) struct CallMetrics {
    by_plugin: RwLock<HashMap<Box<str>, Vec<OperationMetrics>>>,
}

#[derive(Clone)]
pub(super) struct OperationMetrics {
    operation: &'static str,
    pub(super) duration: Histogram,
    pub(super) in_progress: Gauge,
}

impl CallMetrics {
    pub(super) fn of(&self, plugin: &str, operation: &'static str) -> OperationMetrics {
        let find = |by_plugin: &HashMap<Box<str>, Vec<OperationMetrics>>| {
            by_plugin
                .get(plugin)?
                .iter()
                .find(|known| known.operation == operation)
                .cloned()
        };
        // The locks guard only this cache: nothing can leave it half-written,
        // so a poisoned lock is still usable.
        if let Some(known) = find(
            &self
                .by_plugin
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return known;
        }
        let mut by_plugin = self
            .by_plugin
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = find(&by_plugin) {
            return known;
        }
        let resolved = OperationMetrics {
            operation,
            duration: metrics::histogram!(
                "plugin_call_duration_seconds",
                "plugin" => plugin.to_owned(),
                "operation" => operation
            ),
            in_progress: metrics::gauge!(
                "plugin_calls_in_progress",
                "plugin" => plugin.to_owned(),
                "operation" => operation
            ),
        };
        by_plugin
            .entry(plugin.into())
            .or_default()
            .push(resolved.clone());
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_handles_are_resolved_once_per_plugin_and_operation() {
        let metrics = CallMetrics::default();
        for (plugin, operation) in [
            ("mysql", "provision"),
            ("mysql", "provision"),
            ("mysql", "bind"),
            ("redis", "provision"),
        ] {
            assert_eq!(metrics.of(plugin, operation).operation, operation);
        }
        let by_plugin = metrics.by_plugin.read().expect("not poisoned");
        assert_eq!(by_plugin.len(), 2);
        assert_eq!(by_plugin["mysql"].len(), 2);
        assert_eq!(by_plugin["redis"].len(), 1);
    }
}
