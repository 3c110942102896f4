//! Loading the plugin directory: every `*.wasm` is compiled (cached),
//! checked against the contract, linked, asked for its catalog, validated,
//! and merged with the others (`plugin_set`). A plugin that fails any step
//! is refused with a reason; the others keep serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::call::CallTarget;
use super::compile_cache::compile_cached;
use super::engine::PluginEngine;
use super::live_config::LiveSettings;
use super::plugin_set::{Attempt, FileRecord, Merged, PluginSet, merge};
use super::{CallError, CallState, RuntimeError, convert};
use crate::capabilities::PluginGrants;
use crate::catalog::ownership::Owners;
use crate::catalog::{self, PluginCatalog};
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
    /// The broker.toml version (`LiveSettings::generation`) its grants and
    /// limits come from.
    pub generation: u64,
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

    /// The same code and catalog with the grants and limits of `live`,
    /// without calling the plugin: for a version kept in memory (a retired
    /// plugin, or the old version serving while a newer file is refused),
    /// which has no file to load again.
    pub fn regranted(&self, live: &LiveSettings) -> Self {
        let (grants, limits) = grants_and_limits(&self.name, live);
        Self {
            name: self.name.clone(),
            digest: self.digest.clone(),
            wit_version: self.wit_version.clone(),
            published: self.published.clone(),
            pre: self.pre.clone(),
            grants,
            limits,
            generation: live.generation,
        }
    }
}

/// What `[plugins.<stem>]` of the live broker.toml grants and allows.
fn grants_and_limits(stem: &str, live: &LiveSettings) -> (PluginGrants, CallLimits) {
    let plugin_config = live.config.plugin(stem);
    let limits = live.config.runtime.limits_for(&plugin_config.limits);
    let grants = PluginGrants::new(
        stem,
        &plugin_config,
        live.connections.clone(),
        limits.max_host_call_bytes,
    );
    (grants, limits)
}

/// Loads plugin files into [`PluginSet`]s.
pub struct Loader {
    engine: PluginEngine,
    /// Not live: the directory watched is the one the broker started with.
    plugin_dir: PathBuf,
    /// The broker.toml plugins are loaded with now; replaced (under the
    /// reload turn) when a changed broker.toml is applied.
    live: ArcSwap<LiveSettings>,
    /// The broker.toml the broker started with: what settings that cannot
    /// change live are compared against.
    started: Config,
    /// Scans run one at a time, each building on the result of the last.
    reloading: tokio::sync::Mutex<()>,
}

impl Loader {
    pub fn new(engine: PluginEngine, config: Config, live: LiveSettings) -> Self {
        Self {
            engine,
            plugin_dir: config.runtime.plugin_dir.clone(),
            live: ArcSwap::from_pointee(live),
            started: config,
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
        &self.plugin_dir
    }

    pub fn live(&self) -> Arc<LiveSettings> {
        self.live.load_full()
    }

    /// Replaces the live settings; the caller holds the reload turn and
    /// scans next, so plugins pick them up.
    pub fn set_live(&self, live: Arc<LiveSettings>) {
        self.live.store(live);
    }

    pub fn started(&self) -> &Config {
        &self.started
    }

    /// Reads the plugin directory again and builds the set that replaces
    /// `previous`: unchanged files keep their plugin, new and changed ones
    /// are loaded, removed ones are dropped (or retired, see `retired`). A
    /// plugin whose new file fails keeps serving its previous version.
    /// After a broker.toml change every plugin is loaded again with its new
    /// grants and limits (from the compiled code it has; its catalog is
    /// asked again, since it may depend on its settings).
    pub async fn scan(&self, previous: &PluginSet) -> Result<PluginSet, RuntimeError> {
        let live = self.live();
        let mut files = BTreeMap::new();
        for (stem, path) in self.plugin_files()? {
            let record = match tokio::fs::read(&path).await {
                Err(error) => FileRecord {
                    digest: String::new(),
                    generation: live.generation,
                    attempt: Attempt::Refused(format!("cannot read {}: {error}", path.display())),
                },
                Ok(wasm) => {
                    let digest = hex::encode(Sha256::digest(&wasm));
                    let known = previous.file(&stem).filter(|known| known.digest == digest);
                    let attempt = match known {
                        Some(known) if known.generation == live.generation => {
                            files.insert(stem, (path, known.clone()));
                            continue;
                        }
                        // The same file under a changed broker.toml: its
                        // code is ready, only the grants and catalog change.
                        Some(FileRecord {
                            attempt: Attempt::Loaded(plugin),
                            ..
                        }) => {
                            self.admit(
                                &stem,
                                &digest,
                                plugin.pre.clone(),
                                &plugin.wit_version,
                                &live,
                            )
                            .await
                        }
                        _ => self.load(&stem, wasm, &digest, &live).await,
                    };
                    FileRecord {
                        digest,
                        generation: live.generation,
                        attempt: match attempt {
                            Ok(plugin) => Attempt::Loaded(Arc::new(plugin)),
                            Err(why) => Attempt::Refused(why),
                        },
                    }
                }
            };
            files.insert(stem, (path, record));
        }
        let owners = self.owners(previous).await;
        let mut merged = merge(previous, files.clone(), &live, &owners);
        // Another replica may record an owner for something this merge gave
        // to another plugin, between our read and our claim: decide again
        // with what the store says (twice at most; a third race waits for
        // the next scan).
        for _ in 0..2 {
            match self.claim(&merged).await {
                Some(owners) => merged = merge(previous, files.clone(), &live, &owners),
                None => break,
            }
        }
        Ok(self.settle(merged, &live).await)
    }

    /// The owners of ids and names the state store records; the ones last
    /// read if it does not answer (none at startup: then the first start's
    /// rule, name order, decides what is not yet owned).
    async fn owners(&self, previous: &PluginSet) -> Owners {
        match self.engine.backends.state.owners().await {
            Ok(owners) => owners,
            Err(error) => {
                tracing::error!(%error, "cannot read which plugin owns each service id and name; deciding with the owners read last");
                previous.owners().clone()
            }
        }
    }

    /// Records as owned what the merge serves that nobody owns yet. Returns
    /// the owners after it if a serving plugin lost one of its claims to
    /// another replica meanwhile (the merge must be decided again).
    async fn claim(&self, merged: &Merged) -> Option<Owners> {
        let unclaimed = merged
            .owners
            .unclaimed(merged.serving.values().map(|plugin| &plugin.published));
        if unclaimed.is_empty() {
            return None;
        }
        match self.engine.backends.state.claim(&unclaimed).await {
            Ok(owners) => merged
                .serving
                .values()
                .any(|plugin| owners.trespass(&plugin.published).is_some())
                .then_some(owners),
            Err(error) => {
                tracing::error!(%error, "cannot record which plugin owns each service id and name; recording again at the next change");
                None
            }
        }
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

    /// Compiles (or takes from the compile cache) and admits one version of
    /// a plugin. Keeps a copy of the file in the cache directory, so that a
    /// retired version can be loaded again after a restart.
    pub(super) async fn load(
        &self,
        stem: &str,
        wasm: Vec<u8>,
        digest: &str,
        live: &LiveSettings,
    ) -> Result<LoadedPlugin, String> {
        let started = std::time::Instant::now();
        tracing::info!(
            plugin = stem,
            "compiling {stem} ({})",
            human_size(wasm.len())
        );
        let loaded = self.compile_and_admit(stem, wasm, digest, live).await;
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &loaded {
            Ok(_) => tracing::info!(
                plugin = stem,
                took_ms,
                "{stem} compiled and checked in {took_ms} ms"
            ),
            Err(_) => tracing::info!(plugin = stem, took_ms, "{stem} refused after {took_ms} ms"),
        }
        loaded
    }

    async fn compile_and_admit(
        &self,
        stem: &str,
        wasm: Vec<u8>,
        digest: &str,
        live: &LiveSettings,
    ) -> Result<LoadedPlugin, String> {
        let engine = self.engine.engine().clone();
        let settings = self.engine.settings;
        let cache_dir = self.engine.cache_dir().to_owned();
        let digest_owned = digest.to_owned();
        let component = tokio::task::spawn_blocking(move || {
            compile_cached(&engine, &settings, &cache_dir, &wasm, &digest_owned)
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
        self.admit(stem, digest, pre, &wit_version, live).await
    }

    /// Asks linked code for its info and catalog under the grants and
    /// limits of `live`, and validates them.
    async fn admit(
        &self,
        stem: &str,
        digest: &str,
        pre: ServicePluginPre<CallState>,
        wit_version: &str,
        live: &LiveSettings,
    ) -> Result<LoadedPlugin, String> {
        let (grants, limits) = grants_and_limits(stem, live);
        // describe and catalog get a deadline of their own, shorter than a
        // call's: a plugin looping there must not hold up loading the rest
        // (at startup, the broker's readiness) for call_timeout_ms.
        let load_limits = CallLimits {
            call_timeout_ms: limits
                .call_timeout_ms
                .min(live.config.runtime.catalog_timeout_ms),
            ..limits
        };
        let target = CallTarget {
            name: stem,
            pre: &pre,
            grants: &grants,
            limits: load_limits,
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
        // Served all the same: the stem is what broker.toml, the kv store and
        // ownership go by, so renaming the file now would cost more than
        // the mismatch. `plugins check` and `plugins test` fail on it.
        if !catalog::stem_names(stem, &info.name) {
            tracing::warn!(
                plugin = stem,
                reported_name = %crate::printable::printable(&info.name),
                "the plugin's file is {stem}.wasm but it reports the name {:?}: broker.toml's \
                 [plugins.{stem}], its kv store and the ids it owns go by the file name; name \
                 the file after the plugin (`plugins check` fails on this)",
                info.name
            );
        }

        Ok(LoadedPlugin {
            name: stem.to_owned(),
            digest: digest.to_owned(),
            wit_version: wit_version.to_owned(),
            published: PluginCatalog {
                plugin: stem.to_owned(),
                info,
                catalog,
            },
            pre,
            grants,
            limits,
            generation: live.generation,
        })
    }
}

/// `412 KiB`, `18.7 MiB`: a file size for the log.
fn human_size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let size = bytes as f64;
    if size < KIB {
        format!("{bytes} B")
    } else if size < KIB * KIB {
        format!("{:.0} KiB", size / KIB)
    } else {
        format!("{:.1} MiB", size / (KIB * KIB))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_logged_for_people() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(50 * 1024), "50 KiB");
        assert_eq!(human_size(19_608_371), "18.7 MiB");
    }

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
