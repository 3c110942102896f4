//! The operators' view of the running broker, beside the OSB routes: which
//! version of each plugin serves, which are refused and why, which are
//! retired, and how many instances each has. Behind the broker's basic
//! credentials (no OSB version header: this is not OSB). `plugins list`
//! reads it while a broker runs, since the plugin directory alone cannot
//! say what serves (after a refused replacement the version before it
//! still does).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::runtime::{PluginState, PluginStatus};

pub const PLUGINS: &str = "/admin/plugins";

/// The body of `GET /admin/plugins`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PluginsReport {
    /// The plugin directory's first load has not finished: `plugins` is
    /// empty for that reason, not because nothing is there.
    pub loading: bool,
    pub plugins: Vec<PluginReport>,
    /// Set when the state store did not answer: `instances` are unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PluginReport {
    /// The file stem, the name broker.toml grants to.
    pub name: String,
    pub state: PluginState,
    /// The version that serves (or is kept, when retired); none when
    /// nothing of the plugin loaded.
    pub version: Option<String>,
    pub digest: Option<String>,
    pub wit_version: Option<String>,
    pub file: String,
    pub services: Vec<String>,
    /// Instances of its services not deleted, from the state store (none
    /// for a refused plugin, or when the store does not answer).
    pub instances: Option<u64>,
    /// Why its file was refused. Set with state `serving` too, when the
    /// version before a refused file goes on serving.
    pub error: Option<String>,
}

pub async fn plugins(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = state.guard.auth_refusal(&headers) {
        return refusal;
    }
    let loading = state.broker.catalog().is_loading();
    let statuses = state.broker.plugins().plugins();
    let counts = match state.broker.records().live_instances_by_service().await {
        Ok(counts) => Some(counts),
        Err(error) => {
            tracing::warn!(%error, "/admin/plugins: the state store does not answer");
            None
        }
    };
    Json(report(loading, &statuses, counts.as_ref())).into_response()
}

/// The report from the runtime's statuses and the store's instance counts
/// per service id (`None`: the store did not answer).
pub fn report(
    loading: bool,
    statuses: &[PluginStatus],
    counts: Option<&BTreeMap<String, u64>>,
) -> PluginsReport {
    let plugins = statuses
        .iter()
        .map(|status| {
            // A refused plugin serves no service: whose instances it would
            // have is not known.
            let instances = match (status.retired_instances, counts) {
                (Some(left), _) => Some(left),
                (None, _) if status.state() == PluginState::Refused => None,
                (None, Some(counts)) => Some(
                    status
                        .service_ids
                        .iter()
                        .filter_map(|id| counts.get(id))
                        .sum(),
                ),
                (None, None) => None,
            };
            PluginReport {
                name: status.name.clone(),
                state: status.state(),
                version: status.info.as_ref().map(|info| info.version.clone()),
                digest: status.digest.clone(),
                wit_version: status.wit_version.clone(),
                file: status.file.display().to_string(),
                services: status.services.clone(),
                instances,
                error: status.error.clone(),
            }
        })
        .collect();
    PluginsReport {
        loading,
        plugins,
        store_error: counts
            .is_none()
            .then(|| "state store unreachable".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::PluginInfo;

    fn status(name: &str, version: Option<&str>, error: Option<&str>) -> PluginStatus {
        PluginStatus {
            name: name.to_owned(),
            file: PathBuf::from(format!("plugins/{name}.wasm")),
            info: version.map(|version| PluginInfo {
                name: name.to_owned(),
                version: version.to_owned(),
                description: String::new(),
            }),
            wit_version: version.map(|_| "0.1.0".to_owned()),
            digest: version.map(|_| "ab".repeat(32)),
            services: vec![format!("{name}-a"), format!("{name}-b")],
            service_ids: vec![format!("{name}-id-a"), format!("{name}-id-b")],
            error: error.map(str::to_owned),
            retired_instances: None,
        }
    }

    /// Name, state, version, instances, whether an error is given.
    type Seen<'a> = (&'a str, PluginState, Option<&'a str>, Option<u64>, bool);

    #[test]
    fn each_plugin_gets_its_state_version_and_instances() {
        let mut retired = status("old", Some("0.9.0"), None);
        retired.retired_instances = Some(3);
        let statuses = [
            status("mysql", Some("1.2.0"), None),
            status(
                "redis",
                Some("1.0.0"),
                Some("the new file was refused (bad)"),
            ),
            status("broken", None, Some("not a component")),
            retired,
        ];
        let counts = BTreeMap::from([
            ("mysql-id-a".to_owned(), 2),
            ("mysql-id-b".to_owned(), 5),
            ("redis-id-b".to_owned(), 1),
            ("old-id-a".to_owned(), 99),
        ]);
        let report = report(false, &statuses, Some(&counts));
        let seen: Vec<Seen<'_>> = report
            .plugins
            .iter()
            .map(|plugin| {
                (
                    plugin.name.as_str(),
                    plugin.state,
                    plugin.version.as_deref(),
                    plugin.instances,
                    plugin.error.is_some(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("mysql", PluginState::Serving, Some("1.2.0"), Some(7), false),
                ("redis", PluginState::Serving, Some("1.0.0"), Some(1), true),
                ("broken", PluginState::Refused, None, None, true),
                // A retired plugin's count is the one settled at its load.
                ("old", PluginState::Retired, Some("0.9.0"), Some(3), false),
            ]
        );
        assert_eq!(report.store_error, None);
    }

    #[test]
    fn without_the_store_instances_are_unknown_but_retired_counts_stay() {
        let mut retired = status("old", Some("0.9.0"), None);
        retired.retired_instances = Some(3);
        let report = report(true, &[status("mysql", Some("1.2.0"), None), retired], None);
        assert!(report.loading);
        assert_eq!(report.plugins[0].instances, None);
        assert_eq!(report.plugins[1].instances, Some(3));
        assert_eq!(
            report.store_error.as_deref(),
            Some("state store unreachable")
        );
    }
}
