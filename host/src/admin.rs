//! Operator commands that inspect without serving. They run the same
//! loading and validation code as `serve`, once, so what they report is what
//! the broker would do.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, StateConfig};
use crate::runtime::{PluginRuntime, PluginStatus, RuntimeError};
use crate::state::{StateError, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Input(String),
}

/// Loads a plugin directory as `serve` would, with a scratch state store so
/// inspecting never touches (or needs the key of) the real one.
pub async fn load_plugins(
    config: &Config,
    plugin_dir: &Path,
) -> Result<Arc<PluginRuntime>, AdminError> {
    let scratch = tempfile::tempdir()
        .map_err(|error| AdminError::Input(format!("cannot make a scratch dir: {error}")))?;
    let mut scratch_config = config.clone();
    scratch_config.runtime.plugin_dir = plugin_dir.to_owned();
    scratch_config.state = StateConfig {
        path: scratch.path().join("state.db"),
        ..config.state.clone()
    };
    let store = StateStore::open(&scratch_config.state).await?;
    Ok(PluginRuntime::start(&scratch_config, store).await?)
}

/// Validates one `.wasm` against the contract and the catalog rules, alone
/// in a scratch plugin directory.
pub async fn check_plugin(config: &Config, file: &Path) -> Result<PluginStatus, AdminError> {
    let stem = file
        .file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|_| file.extension().is_some_and(|ext| ext == "wasm"))
        .ok_or_else(|| AdminError::Input(format!("{} is not a .wasm file", file.display())))?;
    let scratch = tempfile::tempdir()
        .map_err(|error| AdminError::Input(format!("cannot make a scratch dir: {error}")))?;
    std::fs::copy(file, scratch.path().join(format!("{stem}.wasm")))
        .map_err(|error| AdminError::Input(format!("cannot read {}: {error}", file.display())))?;
    let runtime = load_plugins(config, scratch.path()).await?;
    runtime.plugins().into_iter().next().ok_or_else(|| {
        AdminError::Input(format!("{} was not picked up as a plugin", file.display()))
    })
}

/// One line per plugin for `plugins list`.
pub fn describe_status(status: &PluginStatus) -> String {
    match (&status.info, &status.error) {
        (Some(info), None) => format!(
            "{name:<16} {version:<10} wit {wit:<8} serving   services: {services}",
            name = status.name,
            version = info.version,
            wit = status.wit_version.as_deref().unwrap_or("?"),
            services = status.services.join(", "),
        ),
        (Some(info), Some(error)) => format!(
            "{name:<16} {version:<10} wit {wit:<8} serving   services: {services} (replacement refused: {error})",
            name = status.name,
            version = info.version,
            wit = status.wit_version.as_deref().unwrap_or("?"),
            services = status.services.join(", "),
        ),
        (None, error) => format!(
            "{name:<16} {:<10} {:<12} REFUSED   {}",
            "-",
            "",
            error.as_deref().unwrap_or("unknown reason"),
            name = status.name,
        ),
    }
}
