//! `catalog` and `plugins`: what the plugin directory, or one plugin file,
//! yields when loaded as `serve` loads it.

use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;

use wasm_broker::config::{Config, StateBackend, StateConfig};
use wasm_broker::runtime::{PluginRuntime, PluginStatus};
use wasm_broker::state::StateStore;

/// Prints the merged catalog, as `GET /v2/catalog` would serve it.
pub async fn print_catalog(config: &Config) -> anyhow::Result<()> {
    let runtime = load_plugins(config, &config.runtime.plugin_dir).await?;
    let catalog: serde_json::Value = serde_json::from_slice(&runtime.catalog().json)?;
    println!("{}", serde_json::to_string_pretty(&catalog)?);
    Ok(())
}

/// One line per file in the plugin directory.
pub async fn list(config: &Config) -> anyhow::Result<()> {
    let runtime = load_plugins(config, &config.runtime.plugin_dir).await?;
    for status in runtime.plugins() {
        println!("{}", describe_status(&status));
        let revealed = config.revealed_to(&status.name);
        if !revealed.is_empty() {
            println!(
                "{:<16} HOLDS THE ADMIN CREDENTIALS of {} (reveal_credentials = true)",
                "",
                revealed.join(", ")
            );
        }
    }
    Ok(())
}

/// Validates `file`; fails if the broker would refuse it.
pub async fn check(config: &Config, file: &Path) -> anyhow::Result<()> {
    let status = check_plugin(config, file).await?;
    println!("{}", describe_status(&status));
    match status.error {
        Some(reason) => anyhow::bail!("{} would be refused: {reason}", file.display()),
        None => Ok(()),
    }
}

/// Loads a plugin directory as `serve` would, with a scratch state store so
/// inspecting never touches (or needs the key of) the real one.
pub async fn load_plugins(
    config: &Config,
    plugin_dir: &Path,
) -> anyhow::Result<Arc<PluginRuntime>> {
    let scratch =
        tempfile::tempdir().map_err(|error| anyhow!("cannot make a scratch dir: {error}"))?;
    let mut scratch_config = config.clone();
    scratch_config.runtime.plugin_dir = plugin_dir.to_owned();
    scratch_config.state = StateConfig {
        backend: StateBackend::Sqlite,
        path: scratch.path().join("state.db"),
        ..config.state.clone()
    };
    let store = StateStore::open(&scratch_config.state).await?;
    Ok(PluginRuntime::start(&scratch_config, store).await?)
}

/// Validates one `.wasm` against the contract and the catalog rules, alone
/// in a scratch plugin directory.
async fn check_plugin(config: &Config, file: &Path) -> anyhow::Result<PluginStatus> {
    let stem = file
        .file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|_| file.extension().is_some_and(|ext| ext == "wasm"))
        .ok_or_else(|| anyhow!("{} is not a .wasm file", file.display()))?;
    let scratch =
        tempfile::tempdir().map_err(|error| anyhow!("cannot make a scratch dir: {error}"))?;
    std::fs::copy(file, scratch.path().join(format!("{stem}.wasm")))
        .map_err(|error| anyhow!("cannot read {}: {error}", file.display()))?;
    let runtime = load_plugins(config, scratch.path()).await?;
    runtime
        .plugins()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} was not picked up as a plugin", file.display()))
}

/// One line per plugin for `plugins list`.
fn describe_status(status: &PluginStatus) -> String {
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
