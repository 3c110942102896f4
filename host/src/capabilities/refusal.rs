//! Refusals by a grant's policy (`crate::policy`): logged for the operator
//! and counted in `plugin_host_calls_denied_total{plugin, capability}`, so
//! a plugin probing what it may do shows up on a dashboard.

use std::sync::Arc;

/// Counts and logs the policy refusals of one plugin's call.
#[derive(Debug, Clone)]
pub(crate) struct Refusals {
    plugin: Arc<str>,
}

impl Refusals {
    pub(crate) fn new(plugin: Arc<str>) -> Self {
        Self { plugin }
    }

    /// Records a refusal of `capability` through `alias` and hands back
    /// `reason`, for the plugin's `denied` error.
    pub(crate) fn denied(&self, capability: &'static str, alias: &str, reason: String) -> String {
        tracing::warn!(plugin = %self.plugin, capability, connection = alias, %reason, "host call denied by the grant's policy");
        metrics::counter!(
            "plugin_host_calls_denied_total",
            "plugin" => self.plugin.to_string(),
            "capability" => capability
        )
        .increment(1);
        reason
    }
}
