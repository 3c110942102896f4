//! `catalog` and `plugins`: what the plugin directory, or one plugin file,
//! yields when loaded as `serve` loads it; and, from the state store, the
//! retired plugins a broker keeps for the instances they left.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;

use wasm_broker::capabilities::probe;
use wasm_broker::catalog::ownership::Claim;
use wasm_broker::catalog::{CatalogSnapshot, PluginCatalog};
use wasm_broker::config::{Config, StateBackend, StateConfig};
use wasm_broker::model::Catalog;
use wasm_broker::printable::printable;
use wasm_broker::runtime::{PluginRuntime, PluginStatus};
use wasm_broker::state::StateStore;

use super::plugin_test::{Scratch, rules};
use super::plugins_live as live;

/// Prints the merged catalog, as `GET /v2/catalog` would serve it.
pub async fn print_catalog(config: &Config) -> anyhow::Result<()> {
    let runtime = load_plugins(config, &config.runtime.plugin_dir).await?;
    let catalog: serde_json::Value = serde_json::from_slice(&runtime.catalog().json)?;
    println!("{}", serde_json::to_string_pretty(&catalog)?);
    Ok(())
}

/// What the running broker serves, from its `/admin/plugins`; else, when
/// no broker answers at the configured address, one line per file in the
/// plugin directory as a broker would load it, then one per retired plugin.
pub async fn list(config: &Config) -> anyhow::Result<()> {
    match live::report(config).await {
        Ok((url, report)) => {
            println!("# the running broker at {url}");
            for line in live::describe(&report) {
                println!("{}", printable(&line));
            }
            print_revealed(
                config,
                report.plugins.iter().map(|plugin| plugin.name.as_str()),
            );
            return Ok(());
        }
        Err(why) => eprintln!(
            "# no running broker answered ({why:#}); what the plugin directory would load:"
        ),
    }
    let runtime = load_plugins(config, &config.runtime.plugin_dir).await?;
    let statuses = runtime.plugins();
    for status in &statuses {
        println!("{}", printable(&describe_status(status)));
    }
    print_revealed(config, statuses.iter().map(|status| status.name.as_str()));
    match retired_plugins(config, &runtime.catalog()).await {
        Ok(retired) => {
            for line in retired {
                println!("{}", printable(&line));
            }
        }
        Err(error) => {
            eprintln!("cannot read the state store, so retired plugins are not listed: {error:#}")
        }
    }
    Ok(())
}

/// The plugins holding the admin credentials of their connections.
fn print_revealed<'a>(config: &Config, names: impl Iterator<Item = &'a str>) {
    for name in names {
        let revealed = config.revealed_to(name);
        if !revealed.is_empty() {
            println!(
                "{name:<16} HOLDS THE ADMIN CREDENTIALS of {} (reveal_credentials = true)",
                revealed.join(", ")
            );
        }
    }
}

/// Plugins the broker keeps retired: services recorded in the state store
/// as served, no longer offered by the plugin directory, with instances
/// left. A broker serving from this configuration keeps (or, after a
/// restart, loads again) the version that served them last.
async fn retired_plugins(
    config: &Config,
    catalog: &CatalogSnapshot,
) -> anyhow::Result<Vec<String>> {
    if config.state.backend == StateBackend::Sqlite && !config.state.path.exists() {
        return Ok(Vec::new());
    }
    let store = StateStore::open(&config.state).await?;
    let served = store.served_services().await;
    let counts = store.live_instances_by_service().await;
    store.close().await;
    let (served, counts) = (served?, counts?);
    // (plugin, version) -> (service names, instances left)
    let mut retired: BTreeMap<(String, String), (Vec<String>, u64)> = BTreeMap::new();
    for row in served {
        let instances = counts.get(&row.service_id).copied().unwrap_or(0);
        if catalog.service(&row.service_id).is_some() || instances == 0 {
            continue;
        }
        let entry = retired.entry((row.plugin, row.version)).or_default();
        entry.0.push(row.service_name);
        entry.1 += instances;
    }
    Ok(retired
        .into_iter()
        .map(|((name, version), (services, instances))| {
            describe_retired(&name, &version, &services, instances)
        })
        .collect())
}

fn describe_retired(name: &str, version: &str, services: &[String], instances: u64) -> String {
    format!(
        "{name:<16} {version:<10} {:<12} RETIRED   services: {services} ({instances} instance{s} left; \
         served until deprovisioned, no longer offered)",
        "",
        services = services.join(", "),
        s = if instances == 1 { "" } else { "s" },
    )
}

/// Forgets what plugin `name` owns in the state store, printing it.
pub async fn release(config: &Config, name: &str) -> anyhow::Result<()> {
    let store = StateStore::open(&config.state).await?;
    let released = store.release_owner(name).await;
    store.close().await;
    let released = released?;
    if released.is_empty() {
        println!("plugin {name} owns nothing");
        return Ok(());
    }
    for claim in &released {
        println!("released {claim} (owned by plugin {name})");
    }
    println!(
        "another plugin may serve these from the next restart or plugin-directory change; \
         if {name}.wasm is still served, it claims them again"
    );
    Ok(())
}

/// Validates `file`; fails if the broker would refuse it, or it breaks the
/// rules of `plugin_test::rules` against `plugins_dir` (default: the
/// configuration's plugin directory).
pub async fn check(config: &Config, file: &Path, plugins_dir: Option<&Path>) -> anyhow::Result<()> {
    let (status, catalog) = check_plugin(config, file).await?;
    println!("{}", printable(&describe_status(&status)));
    let mut rules_held = true;
    if let (Some(info), None) = (&status.info, &status.error) {
        let candidate = PluginCatalog {
            plugin: status.name.clone(),
            info: info.clone(),
            catalog,
        };
        let dir = plugins_dir.unwrap_or(&config.runtime.plugin_dir);
        let (lines, held) = rules::check_rules(config, dir, &candidate).await?;
        for line in lines {
            println!("{}", printable(&line));
        }
        rules_held = held;
    }
    // The grants of the plugin's section, whether or not the file loads.
    let stem = file
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default();
    match probe::probe_config(config, Some(stem)).await {
        Ok(reports) => {
            for line in reports.iter().flat_map(probe::Report::lines) {
                println!("{}", printable(&line));
            }
        }
        Err(error) => println!("could not check the rights of the granted accounts: {error}"),
    }
    match status.error {
        Some(reason) => anyhow::bail!("{} would be refused: {reason}", file.display()),
        None if !rules_held => anyhow::bail!("{} breaks a rule above", file.display()),
        None => Ok(()),
    }
}

/// Loads a plugin directory as `serve` would, with a scratch state store so
/// inspecting never writes to the real one; only the owners of ids and
/// names are copied from it (if it can be read), so a plugin the broker
/// would refuse for declaring another's id is shown refused.
pub async fn load_plugins(
    config: &Config,
    plugin_dir: &Path,
) -> anyhow::Result<Arc<PluginRuntime>> {
    let scratch =
        tempfile::tempdir().map_err(|error| anyhow!("cannot make a scratch dir: {error}"))?;
    load_plugins_with_state(config, plugin_dir, &scratch.path().join("state.db")).await
}

/// [`load_plugins`] with the scratch state store at `state_path`, which the
/// caller keeps while it calls the plugins (their kv store is there).
pub async fn load_plugins_with_state(
    config: &Config,
    plugin_dir: &Path,
    state_path: &Path,
) -> anyhow::Result<Arc<PluginRuntime>> {
    let owners = recorded_owners(config).await;
    let mut scratch_config = config.clone();
    scratch_config.runtime.plugin_dir = plugin_dir.to_owned();
    scratch_config.state = StateConfig {
        backend: StateBackend::Sqlite,
        path: state_path.to_owned(),
        ..config.state.clone()
    };
    let store = StateStore::open(&scratch_config.state).await?;
    if !owners.is_empty() {
        store.claim(&owners).await?;
    }
    Ok(PluginRuntime::start(&scratch_config, store).await?)
}

/// The owners the real state store records; none (after saying why) if it
/// does not exist yet or cannot be opened.
async fn recorded_owners(config: &Config) -> Vec<(Claim, String)> {
    if config.state.backend == StateBackend::Sqlite && !config.state.path.exists() {
        return Vec::new();
    }
    let read = async {
        let store = StateStore::open(&config.state).await?;
        let owners = store.owners().await;
        store.close().await;
        anyhow::Ok(owners?)
    };
    match read.await {
        Ok(owners) => owners
            .iter()
            .map(|(claim, plugin)| (claim.clone(), plugin.to_owned()))
            .collect(),
        Err(error) => {
            eprintln!(
                "cannot read the state store, so ids and names other plugins own are not checked: {error:#}"
            );
            Vec::new()
        }
    }
}

/// Validates one `.wasm` against the contract and the catalog rules, alone
/// in a scratch plugin directory.
/// Its status, and its catalog if it loaded.
async fn check_plugin(config: &Config, file: &Path) -> anyhow::Result<(PluginStatus, Catalog)> {
    let stem = rules::plugin_stem(file)?;
    let scratch = Scratch::load(config, &[(stem.to_owned(), file.to_owned())]).await?;
    let status = scratch
        .runtime
        .plugins()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} was not picked up as a plugin", file.display()))?;
    Ok((status, scratch.runtime.catalog().catalog.clone()))
}

/// One line per plugin for `plugins list`.
fn describe_status(status: &PluginStatus) -> String {
    if let Some(instances) = status.retired_instances {
        let version = status
            .info
            .as_ref()
            .map_or("-", |info| info.version.as_str());
        let line = describe_retired(&status.name, version, &status.services, instances);
        return match &status.error {
            Some(error) => format!("{line}: {error}"),
            None => line,
        };
    }
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
