//! Retired plugins: a plugin whose file is removed (or whose newer version
//! no longer offers a service) leaves instances behind, which the platform
//! must still be able to fetch, poll, unbind and deprovision. The version
//! that served them last is kept for them, out of the catalog, until the
//! state store holds no instance of its services.
//!
//! When: the instances are counted each time the plugin set is built (on
//! every change of the plugin directory or of broker.toml, at startup, and
//! every `RETIRED_SWEEP` while a retired plugin is kept; see
//! `PluginRuntime::start`), so a retired plugin is released at most that
//! long after its last instance is deprovisioned.
//!
//! Across restarts: the state store records which version (file stem and
//! digest) served each service last (`served_services`), and the compile
//! cache keeps a copy of every plugin file loaded (`compile_cache::keep_source`).
//! At startup a service with instances left that no plugin offers is served
//! by that version, loaded again from the copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::PluginStatus;
use super::compile_cache::read_source;
use super::live_config::LiveSettings;
use super::loader::{LoadedPlugin, Loader};
use super::plugin_set::{Merged, PluginSet, Retired};
use crate::state::served::ServedService;

impl Loader {
    /// Completes a merged set: of the services no serving plugin offers,
    /// keeps those with instances left (with grants from `live`), loads
    /// the versions a restart lost, and records in the state store who
    /// serves what. If the store does not answer, every candidate is kept.
    pub(super) async fn settle(&self, merged: Merged, live: &LiveSettings) -> PluginSet {
        let store = &self.engine().backends.state;
        let counts = match store.live_instances_by_service().await {
            Ok(counts) => Some(counts),
            Err(error) => {
                tracing::error!(%error, "cannot count the instances of each service; retired plugins are kept until the state store answers");
                None
            }
        };
        let instances_of = |service_id: &str| {
            counts
                .as_ref()
                .map(|counts| counts.get(service_id).copied().unwrap_or(0))
        };
        let recorded = match store.served_services().await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::error!(%error, "cannot read which plugin served each service; plugins retired before a restart are not loaded");
                Vec::new()
            }
        };

        let mut regrants = Regrants::default();
        let mut retired = BTreeMap::new();
        for (service_id, candidate) in &merged.unserved {
            let instances = match instances_of(service_id) {
                Some(0) => continue,
                Some(count) => count,
                None => candidate.instances,
            };
            let plugin = regrants.current(&candidate.plugin, live);
            retired.insert(service_id.clone(), Retired { plugin, instances });
        }

        // Services recorded as served that nothing answers for now, with
        // instances left: their plugin retired before this process started.
        let mut lost: BTreeMap<(&str, &str), Vec<(&ServedService, u64)>> = BTreeMap::new();
        for row in &recorded {
            if merged.services.contains_key(&row.service_id)
                || retired.contains_key(&row.service_id)
            {
                continue;
            }
            if let Some(count @ 1..) = instances_of(&row.service_id) {
                lost.entry((row.plugin.as_str(), row.digest.as_str()))
                    .or_default()
                    .push((row, count));
            }
        }
        let mut stranded = Vec::new();
        for ((stem, digest), services) in lost {
            match self.restore(stem, digest, live).await {
                Ok(plugin) => {
                    let plugin = Arc::new(plugin);
                    for (row, instances) in services {
                        let plugin = plugin.clone();
                        retired.insert(row.service_id.clone(), Retired { plugin, instances });
                    }
                }
                Err(why) => {
                    let instances: u64 = services.iter().map(|(_, count)| count).sum();
                    tracing::error!(
                        plugin = stem,
                        %instances,
                        reason = %why,
                        "a retired plugin cannot be loaded again: the instances it left cannot be served \
                         until its file is put back into the plugin directory"
                    );
                    stranded.push(PluginStatus {
                        name: stem.to_owned(),
                        file: PathBuf::from(format!("{stem}.wasm")),
                        info: None,
                        wit_version: None,
                        digest: None,
                        services: services
                            .iter()
                            .map(|(row, _)| row.service_name.clone())
                            .collect(),
                        service_ids: services
                            .iter()
                            .map(|(row, _)| row.service_id.clone())
                            .collect(),
                        error: Some(format!("retired, and cannot be loaded again: {why}")),
                        retired_instances: Some(instances),
                    });
                }
            }
        }

        self.record_served(&merged, &retired, &recorded, |service_id| {
            instances_of(service_id) == Some(0)
        })
        .await;
        merged.finish(retired, stranded)
    }

    /// Loads a retired version from the copy the compile cache kept.
    async fn restore(
        &self,
        stem: &str,
        digest: &str,
        live: &LiveSettings,
    ) -> Result<LoadedPlugin, String> {
        let cache_dir = self.engine().cache_dir().to_owned();
        let wanted = digest.to_owned();
        let wasm = tokio::task::spawn_blocking(move || read_source(&cache_dir, &wanted))
            .await
            .map_err(|error| format!("reading its kept copy did not complete: {error}"))??;
        self.load(stem, wasm, digest, live).await
    }

    /// Brings `served_services` up to date: rows for what serves now,
    /// none for services nothing serves whose instances are all gone.
    async fn record_served(
        &self,
        merged: &Merged,
        retired: &BTreeMap<String, Retired>,
        recorded: &[ServedService],
        none_left: impl Fn(&str) -> bool,
    ) {
        let store = &self.engine().backends.state;
        let serving_now: Vec<ServedService> = merged
            .services
            .iter()
            .filter_map(|(service_id, stem)| {
                let plugin = merged.serving.get(stem)?;
                let offering = plugin
                    .published
                    .catalog
                    .services
                    .iter()
                    .find(|offering| &offering.id == service_id)?;
                Some(ServedService {
                    service_id: service_id.clone(),
                    service_name: offering.name.clone(),
                    plugin: stem.clone(),
                    digest: plugin.digest.clone(),
                    version: plugin.info().version.clone(),
                })
            })
            .filter(|row| !recorded.contains(row))
            .collect();
        if let Err(error) = store.record_served(&serving_now).await {
            tracing::error!(%error, "cannot record which plugin serves each service; after a restart, a plugin removed meanwhile cannot serve the instances it left");
        }
        let gone: Vec<String> = recorded
            .iter()
            .map(|row| &row.service_id)
            .filter(|service_id| {
                !merged.services.contains_key(*service_id)
                    && !retired.contains_key(*service_id)
                    && none_left(service_id)
            })
            .cloned()
            .collect();
        if let Err(error) = store.forget_served(&gone).await {
            tracing::warn!(%error, "cannot forget services that nothing serves any more");
        }
    }
}

/// Retired versions with the grants of the live broker.toml: each version
/// is given them once, however many services it is kept for.
#[derive(Default)]
struct Regrants {
    done: Vec<(Arc<LoadedPlugin>, Arc<LoadedPlugin>)>,
}

impl Regrants {
    fn current(&mut self, plugin: &Arc<LoadedPlugin>, live: &LiveSettings) -> Arc<LoadedPlugin> {
        if plugin.generation == live.generation {
            return plugin.clone();
        }
        if let Some((_, regranted)) = self.done.iter().find(|(old, _)| Arc::ptr_eq(old, plugin)) {
            return regranted.clone();
        }
        let regranted = Arc::new(plugin.regranted(live));
        self.done.push((plugin.clone(), regranted.clone()));
        regranted
    }
}
