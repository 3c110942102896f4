//! What each plugin of the running set is doing: the status `plugins list`,
//! `/admin/plugins` and the `plugin_info` gauge report.

/// Load state of one plugin file, for `plugins list` and `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    /// File stem: the name broker.toml uses for it.
    pub name: String,
    pub file: std::path::PathBuf,
    pub info: Option<crate::model::PluginInfo>,
    pub wit_version: Option<String>,
    /// sha256 of the file of the version that serves (hex), telling two
    /// builds of one version apart.
    pub digest: Option<String>,
    pub services: Vec<String>,
    /// The ids of `services`, in the same order.
    pub service_ids: Vec<String>,
    /// Why the plugin was refused, if it was. With `info` set, the file was
    /// refused but the version before it still serves.
    pub error: Option<String>,
    /// Set for a retired plugin: one whose file is gone (or whose newer
    /// version no longer offers these services), kept out of the catalog
    /// for the instances it served; how many of them are left.
    pub retired_instances: Option<u64>,
}

/// What a plugin does for the platform now, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Its services are in the catalog (possibly by the version before a
    /// refused file).
    Serving,
    /// Nothing of it serves: its file was refused.
    Refused,
    /// Out of the catalog, kept for the instances its services left.
    Retired,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Refused => "refused",
            Self::Retired => "retired",
        }
    }
}

impl PluginStatus {
    pub fn state(&self) -> PluginState {
        if self.retired_instances.is_some() {
            PluginState::Retired
        } else if self.info.is_some() {
            PluginState::Serving
        } else {
            PluginState::Refused
        }
    }
}
