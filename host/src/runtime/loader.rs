//! Loading the plugin directory: every `*.wasm` is compiled (cached),
//! checked against the contract, linked, asked for its catalog, validated,
//! and merged with the others. A plugin that fails any step is refused with
//! a reason; the others keep serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::call::CallTarget;
use super::compile_cache::compile_cached;
use super::engine::PluginEngine;
use super::{CallError, CallState, PluginStatus, RuntimeError, convert};
use crate::capabilities::PluginGrants;
use crate::catalog::{self, CatalogSnapshot, PluginCatalog};
use crate::config::{CallLimits, Config};
use crate::contract::ServicePluginPre;
use crate::model::PluginInfo;

/// The interface every plugin exports, without version.
const CONTRACT: &str = "wasm-broker:plugin/broker";
/// The contract versions this host's bindings serve.
const SERVED_VERSIONS: &str = "0.1.x";

/// A plugin that passed every check, ready to be called.
pub struct LoadedPlugin {
    /// File stem: the name broker.toml uses.
    pub name: String,
    /// sha256 of the file, hex: what tells a changed file from an unchanged one.
    pub digest: String,
    pub wit_version: String,
    /// Its reported info and its catalog.
    pub published: PluginCatalog,
    pub pre: ServicePluginPre<CallState>,
    pub grants: PluginGrants,
    pub limits: CallLimits,
}

impl LoadedPlugin {
    pub fn target(&self) -> CallTarget<'_> {
        CallTarget {
            name: &self.name,
            pre: &self.pre,
            grants: &self.grants,
            limits: self.limits,
        }
    }

    pub fn info(&self) -> &PluginInfo {
        &self.published.info
    }
}

/// What loading one version of a file gave. Kept per file so an unchanged
/// file is neither loaded nor reported again.
#[derive(Clone)]
enum Attempt {
    Loaded(Arc<LoadedPlugin>),
    Refused(String),
}

#[derive(Clone)]
struct FileRecord {
    digest: String,
    attempt: Attempt,
}

/// Everything the runtime serves at one moment. Replaced as a whole on
/// reload, so a call sees one consistent version from start to end.
pub struct PluginSet {
    serving: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Service id -> stem of the plugin serving it.
    services: BTreeMap<String, String>,
    catalog: Arc<CatalogSnapshot>,
    statuses: Vec<PluginStatus>,
    files: BTreeMap<String, FileRecord>,
}

impl PluginSet {
    pub fn empty() -> Self {
        Self {
            serving: BTreeMap::new(),
            services: BTreeMap::new(),
            catalog: Arc::new(CatalogSnapshot::default()),
            statuses: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    pub fn catalog(&self) -> &Arc<CatalogSnapshot> {
        &self.catalog
    }

    pub fn statuses(&self) -> &[PluginStatus] {
        &self.statuses
    }

    pub fn serving(&self, service_id: &str) -> Option<&Arc<LoadedPlugin>> {
        self.serving.get(self.services.get(service_id)?)
    }
}

/// Loads plugin files into [`PluginSet`]s.
pub struct Loader {
    engine: PluginEngine,
    config: Config,
    /// Scans run one at a time, each building on the result of the last.
    reloading: tokio::sync::Mutex<()>,
}

impl Loader {
    pub fn new(engine: PluginEngine, config: Config) -> Self {
        Self {
            engine,
            config,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Held while a scan runs and its result is stored.
    pub async fn reload_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reloading.lock().await
    }

    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    pub fn plugin_dir(&self) -> &Path {
        &self.config.runtime.plugin_dir
    }

    /// Reads the plugin directory again and builds the set that replaces
    /// `previous`: unchanged files keep their plugin, new and changed ones
    /// are loaded, removed ones are dropped. A plugin whose new file fails
    /// keeps serving its previous version.
    pub async fn scan(&self, previous: &PluginSet) -> Result<PluginSet, RuntimeError> {
        let mut files = BTreeMap::new();
        for (stem, path) in self.plugin_files()? {
            let record = match tokio::fs::read(&path).await {
                Err(error) => FileRecord {
                    digest: String::new(),
                    attempt: Attempt::Refused(format!("cannot read {}: {error}", path.display())),
                },
                Ok(wasm) => {
                    let digest = hex::encode(Sha256::digest(&wasm));
                    match previous.files.get(&stem) {
                        Some(known) if known.digest == digest => known.clone(),
                        _ => {
                            let attempt = match self.load(&stem, wasm, &digest).await {
                                Ok(plugin) => Attempt::Loaded(Arc::new(plugin)),
                                Err(why) => Attempt::Refused(why),
                            };
                            FileRecord { digest, attempt }
                        }
                    }
                }
            };
            files.insert(stem, (path, record));
        }
        Ok(merge(previous, files))
    }

    /// `*.wasm` files of the plugin directory by stem, in name order.
    fn plugin_files(&self) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
        let dir = self.plugin_dir();
        let unreadable = |source| RuntimeError::PluginDir {
            path: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            if path.extension().is_none_or(|extension| extension != "wasm") || !path.is_file() {
                continue;
            }
            match path.file_stem().and_then(|stem| stem.to_str()) {
                Some(stem) => files.push((stem.to_owned(), path.clone())),
                None => {
                    tracing::warn!(file = %path.display(), "ignoring a plugin file whose name is not UTF-8")
                }
            }
        }
        files.sort();
        Ok(files)
    }

    async fn load(&self, stem: &str, wasm: Vec<u8>, digest: &str) -> Result<LoadedPlugin, String> {
        let engine = self.engine.engine().clone();
        let cache_dir = self.engine.cache_dir().to_owned();
        let digest_owned = digest.to_owned();
        let component = tokio::task::spawn_blocking(move || {
            compile_cached(&engine, &cache_dir, &wasm, &digest_owned)
        })
        .await
        .map_err(|error| format!("compilation did not complete: {error}"))??;
        let wit_version = contract_version(&component, self.engine.engine())?;
        let instance_pre = self
            .engine
            .linker()
            .instantiate_pre(&component)
            .map_err(|error| format!("cannot be linked: {error:#}"))?;
        let pre = ServicePluginPre::new(instance_pre)
            .map_err(|error| format!("does not match the {CONTRACT} contract: {error:#}"))?;

        let plugin_config = self.config.plugin(stem);
        let limits = self.config.runtime.limits_for(&plugin_config.limits);
        let grants = PluginGrants::new(stem, &plugin_config, limits.max_host_call_bytes);
        let target = CallTarget {
            name: stem,
            pre: &pre,
            grants: &grants,
            limits,
        };
        let described = |error: CallError, what: &str| match error {
            CallError::Fault { cause, .. } => format!("{what} failed: {cause}"),
            other => format!("{what} failed: {other}"),
        };
        let info = self
            .engine
            .call(&target, "describe", None, |guest, mut store| async move {
                guest
                    .wasm_broker_plugin_broker()
                    .call_describe(&mut store)
                    .await
            })
            .await
            .map_err(|error| described(error, "describe"))?;
        let catalog = self
            .engine
            .call(&target, "catalog", None, |guest, mut store| async move {
                guest
                    .wasm_broker_plugin_broker()
                    .call_catalog(&mut store)
                    .await
            })
            .await
            .map_err(|error| described(error, "catalog"))?;
        let info = convert::plugin_info(info);
        let catalog = convert::catalog(catalog).map_err(|error| format!("catalog has {error}"))?;
        catalog::validate(&info, &catalog).map_err(|error| error.to_string())?;

        Ok(LoadedPlugin {
            name: stem.to_owned(),
            digest: digest.to_owned(),
            wit_version,
            published: PluginCatalog {
                plugin: stem.to_owned(),
                info,
                catalog,
            },
            pre,
            grants,
            limits,
        })
    }
}

/// The version of the contract the component exports, if this host serves it.
fn contract_version(component: &Component, engine: &Engine) -> Result<String, String> {
    let component_type = component.component_type();
    let exports: Vec<&str> = component_type
        .exports(engine)
        .map(|(name, _)| name)
        .collect();
    served_contract(&exports)
}

fn served_contract(exports: &[&str]) -> Result<String, String> {
    let Some(exported) = exports
        .iter()
        .find(|name| name.split('@').next() == Some(CONTRACT))
    else {
        let listed = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(format!("does not export {CONTRACT} (it exports {listed})"));
    };
    let version = exported
        .split_once('@')
        .map(|(_, version)| version)
        .unwrap_or_default();
    let served = semver::VersionReq::parse(SERVED_VERSIONS).map_err(|error| error.to_string())?;
    match semver::Version::parse(version) {
        Ok(parsed) if served.matches(&parsed) => Ok(parsed.to_string()),
        _ => Err(format!(
            "exports {exported} but this host serves {SERVED_VERSIONS}"
        )),
    }
}

/// Decides which plugins serve: plugins that served before are kept first,
/// so a newly added plugin cannot push out a serving one by clashing with
/// it; among the rest, name order decides. Logs every change.
fn merge(previous: &PluginSet, files: BTreeMap<String, (PathBuf, FileRecord)>) -> PluginSet {
    let mut order: Vec<&String> = files.keys().collect();
    order.sort_by_key(|stem| (!previous.serving.contains_key(*stem), *stem));

    let mut serving: BTreeMap<String, Arc<LoadedPlugin>> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for stem in order {
        let (_, record) = &files[stem];
        let old = previous.serving.get(stem);
        let mut candidates: Vec<(&Arc<LoadedPlugin>, bool)> = Vec::new();
        let mut refusal = None;
        match &record.attempt {
            Attempt::Loaded(plugin) => candidates.push((plugin, true)),
            Attempt::Refused(why) => refusal = Some(why.clone()),
        }
        if let Some(old) = old.filter(|old| old.digest != record.digest) {
            candidates.push((old, false));
        }
        let mut chosen = None;
        for (candidate, is_current_file) in candidates {
            match catalog::find_clash(serving.values().map(|p| &p.published), &candidate.published)
            {
                None => {
                    chosen = Some((candidate.clone(), is_current_file));
                    break;
                }
                Some(clash) if refusal.is_none() => refusal = Some(clash.to_string()),
                Some(_) => {}
            }
        }
        match (chosen, refusal) {
            (Some((plugin, true)), _) => {
                serving.insert(stem.clone(), plugin);
            }
            (Some((plugin, false)), refusal) => {
                let why = refusal.unwrap_or_default();
                errors.insert(
                    stem.clone(),
                    format!(
                        "the new file was refused ({why}); still serving version {}",
                        plugin.info().version
                    ),
                );
                serving.insert(stem.clone(), plugin);
            }
            (None, refusal) => {
                errors.insert(
                    stem.clone(),
                    refusal.unwrap_or_else(|| "refused".to_owned()),
                );
            }
        }
    }

    let statuses: Vec<PluginStatus> = files
        .iter()
        .map(|(stem, (path, _))| {
            let plugin = serving.get(stem);
            PluginStatus {
                name: stem.clone(),
                file: path.clone(),
                info: plugin.map(|p| p.info().clone()),
                wit_version: plugin.map(|p| p.wit_version.clone()),
                services: plugin
                    .map(|p| {
                        p.published
                            .catalog
                            .services
                            .iter()
                            .map(|s| s.name.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                error: errors.get(stem).cloned(),
            }
        })
        .collect();
    log_changes(previous, &serving, &statuses);

    let published: Vec<PluginCatalog> = serving
        .values()
        .map(|plugin| plugin.published.clone())
        .collect();
    let services = serving
        .values()
        .flat_map(|plugin| {
            plugin
                .published
                .catalog
                .services
                .iter()
                .map(|offering| (offering.id.clone(), plugin.name.clone()))
        })
        .collect();
    PluginSet {
        catalog: Arc::new(CatalogSnapshot::build(&published)),
        services,
        serving,
        statuses,
        files: files
            .into_iter()
            .map(|(stem, (_, record))| (stem, record))
            .collect(),
    }
}

fn log_changes(
    previous: &PluginSet,
    serving: &BTreeMap<String, Arc<LoadedPlugin>>,
    statuses: &[PluginStatus],
) {
    for status in statuses {
        let before = previous.statuses.iter().find(|old| old.name == status.name);
        let digest_before = previous
            .serving
            .get(&status.name)
            .map(|p| p.digest.as_str());
        let digest_now = serving.get(&status.name).map(|p| p.digest.as_str());
        if before.is_some_and(|old| old.error == status.error) && digest_before == digest_now {
            continue;
        }
        match (&status.error, &status.info) {
            (None, Some(info)) => tracing::info!(
                plugin = %status.name,
                version = %info.version,
                contract = status.wit_version.as_deref().unwrap_or_default(),
                services = %status.services.join(", "),
                "plugin loaded"
            ),
            (error, _) => tracing::error!(
                plugin = %status.name,
                file = %status.file.display(),
                reason = error.as_deref().unwrap_or_default(),
                "plugin refused"
            ),
        }
    }
    for name in previous.serving.keys() {
        if !statuses.iter().any(|status| &status.name == name) {
            tracing::info!(plugin = %name, "plugin removed: its file is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_served_contract_version_is_accepted() {
        assert_eq!(
            served_contract(&["wasi:cli/run@0.2.0", "wasm-broker:plugin/broker@0.1.0"]),
            Ok("0.1.0".to_owned())
        );
        assert_eq!(
            served_contract(&["wasm-broker:plugin/broker@0.1.3"]),
            Ok("0.1.3".to_owned())
        );
        assert_eq!(
            served_contract(&["wasm-broker:plugin/broker@0.2.0"]),
            Err("exports wasm-broker:plugin/broker@0.2.0 but this host serves 0.1.x".to_owned())
        );
        assert_eq!(
            served_contract(&["wasm-broker:plugin/broker"]),
            Err("exports wasm-broker:plugin/broker but this host serves 0.1.x".to_owned())
        );
        assert_eq!(
            served_contract(&["wasi:http/incoming-handler@0.2.0"]),
            Err("does not export wasm-broker:plugin/broker (it exports wasi:http/incoming-handler@0.2.0)".to_owned())
        );
        assert_eq!(
            served_contract(&[]),
            Err("does not export wasm-broker:plugin/broker (it exports nothing)".to_owned())
        );
    }
}
