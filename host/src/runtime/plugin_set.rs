//! What the runtime serves at one moment: the plugins the directory yields
//! (merged so that ids never clash), and the retired ones: versions kept
//! for the instances of services no serving plugin offers any more.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::PluginStatus;
use super::live_config::LiveSettings;
use super::loader::LoadedPlugin;
use crate::catalog::ownership::{self, Owners};
use crate::catalog::{CatalogSnapshot, PluginCatalog};

/// What loading one version of a file gave. Kept per file so an unchanged
/// file is neither loaded nor reported again.
#[derive(Clone)]
pub(super) enum Attempt {
    Loaded(Arc<LoadedPlugin>),
    Refused(String),
}

#[derive(Clone)]
pub(super) struct FileRecord {
    pub digest: String,
    /// The broker.toml version the attempt was made under: after a change
    /// the file is loaded again, with its new grants.
    pub generation: u64,
    pub attempt: Attempt,
}

/// A plugin version kept for the instances of a service that no serving
/// plugin offers any more (its file is gone, or its newer version dropped
/// the service): the catalog no longer offers the service, but those
/// instances can still be fetched, polled, unbound and deprovisioned.
#[derive(Clone)]
pub(super) struct Retired {
    pub plugin: Arc<LoadedPlugin>,
    /// Instances of the service left in the state store (not deleted), as
    /// counted when the set was built.
    pub instances: u64,
}

/// Everything the runtime serves at one moment. Replaced as a whole on
/// reload, so a call sees one consistent version from start to end.
pub struct PluginSet {
    serving: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Service id -> stem of the plugin serving it.
    services: BTreeMap<String, String>,
    /// Service id -> the version that served it last, for services no
    /// serving plugin offers but whose instances remain.
    retired: BTreeMap<String, Retired>,
    catalog: Arc<CatalogSnapshot>,
    statuses: Vec<PluginStatus>,
    files: BTreeMap<String, FileRecord>,
    /// Owners of ids and names as last read from the state store: used if
    /// the store does not answer at the next scan.
    owners: Owners,
}

impl PluginSet {
    /// Before the first scan: nothing served, the catalog says "loading".
    pub fn empty() -> Self {
        Self {
            serving: BTreeMap::new(),
            services: BTreeMap::new(),
            retired: BTreeMap::new(),
            catalog: Arc::new(CatalogSnapshot::loading()),
            statuses: Vec::new(),
            files: BTreeMap::new(),
            owners: Owners::default(),
        }
    }

    pub(super) fn owners(&self) -> &Owners {
        &self.owners
    }

    pub fn catalog(&self) -> &Arc<CatalogSnapshot> {
        &self.catalog
    }

    pub fn statuses(&self) -> &[PluginStatus] {
        &self.statuses
    }

    /// The plugin that answers for instances of `service_id`: the one
    /// offering it, else the retired version that served it last.
    pub fn serving(&self, service_id: &str) -> Option<&Arc<LoadedPlugin>> {
        match self.services.get(service_id) {
            Some(stem) => self.serving.get(stem),
            None => self.retired.get(service_id).map(|retired| &retired.plugin),
        }
    }

    pub(super) fn file(&self, stem: &str) -> Option<&FileRecord> {
        self.files.get(stem)
    }

    /// The digests of every plugin version this set holds: the directory's
    /// files (served or refused) and the retired versions.
    pub(super) fn digests(&self) -> std::collections::HashSet<String> {
        self.files
            .values()
            .map(|file| &file.digest)
            .chain(self.retired.values().map(|retired| &retired.plugin.digest))
            .cloned()
            .collect()
    }

    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }
}

/// The plugin directory's verdict, before the retired plugins are settled
/// (which takes the state store: `retired`).
pub(super) struct Merged {
    pub serving: BTreeMap<String, Arc<LoadedPlugin>>,
    pub services: BTreeMap<String, String>,
    /// Services the previous set answered for that no serving plugin offers
    /// now, with the version that answered: candidates for retirement.
    pub unserved: BTreeMap<String, Retired>,
    statuses: Vec<PluginStatus>,
    files: BTreeMap<String, FileRecord>,
    previous_serving: BTreeMap<String, Arc<LoadedPlugin>>,
    previous_retired: BTreeMap<String, Retired>,
    previous_refused: Vec<String>,
    previous_statuses: Vec<PluginStatus>,
    /// The owners the merge was decided with.
    pub owners: Owners,
}

/// Decides which plugins serve: a plugin declaring an id or name another
/// one owns (`owners`, from the state store) is refused, whatever the
/// order. For what nobody owns yet, plugins that served before are kept
/// first, so a newly added plugin cannot push out a serving one by clashing
/// with it; among the rest, name order decides (the first start only: what
/// serves is recorded as owned). A version kept from `previous`
/// (its new file, or its reload under a changed broker.toml, was refused)
/// takes the grants and limits of `live`. Logs every change of the files.
pub(super) fn merge(
    previous: &PluginSet,
    files: BTreeMap<String, (PathBuf, FileRecord)>,
    live: &LiveSettings,
    owners: &Owners,
) -> Merged {
    let mut order: Vec<&String> = files.keys().collect();
    order.sort_by_key(|stem| (!previous.serving.contains_key(*stem), *stem));

    let mut serving: BTreeMap<String, Arc<LoadedPlugin>> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for stem in order {
        let (_, record) = &files[stem];
        let mut candidates: Vec<(&Arc<LoadedPlugin>, bool)> = Vec::new();
        let mut refusal = None;
        match &record.attempt {
            Attempt::Loaded(plugin) => candidates.push((plugin, true)),
            Attempt::Refused(why) => refusal = Some(why.clone()),
        }
        let is_current = |old: &&Arc<LoadedPlugin>| matches!(&record.attempt, Attempt::Loaded(plugin) if Arc::ptr_eq(plugin, *old));
        if let Some(old) = previous.serving.get(stem).filter(|old| !is_current(old)) {
            candidates.push((old, false));
        }
        let mut chosen = None;
        for (candidate, is_current_file) in candidates {
            let admitted = ownership::admit(
                owners,
                serving.values().map(|p| &p.published),
                &candidate.published,
            );
            match admitted {
                Ok(()) => {
                    chosen = Some((candidate.clone(), is_current_file));
                    break;
                }
                Err(clash) if refusal.is_none() => refusal = Some(clash.to_string()),
                Err(_) => {}
            }
        }
        match (chosen, refusal) {
            (Some((plugin, true)), _) => {
                serving.insert(stem.clone(), plugin);
            }
            (Some((plugin, false)), refusal) => {
                let why = refusal.unwrap_or_default();
                let what = if plugin.digest == record.digest {
                    "loading it again with the changed broker.toml failed"
                } else {
                    "the new file was refused"
                };
                errors.insert(
                    stem.clone(),
                    format!(
                        "{what} ({why}); still serving version {}",
                        plugin.info().version
                    ),
                );
                let plugin = if plugin.generation == live.generation {
                    plugin
                } else {
                    Arc::new(plugin.regranted(live))
                };
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
                digest: plugin.map(|p| p.digest.clone()),
                services: plugin
                    .map(|p| service_names(p, |_| true))
                    .unwrap_or_default(),
                service_ids: plugin.map(|p| service_ids(p, |_| true)).unwrap_or_default(),
                error: errors.get(stem).cloned(),
                retired_instances: None,
            }
        })
        .collect();
    log_changes(previous, &serving, &statuses);

    let services: BTreeMap<String, String> = serving
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
    let mut unserved = BTreeMap::new();
    for (service_id, stem) in &previous.services {
        if let Some(plugin) = previous.serving.get(stem)
            && !services.contains_key(service_id)
        {
            let candidate = Retired {
                plugin: plugin.clone(),
                instances: 0,
            };
            unserved.insert(service_id.clone(), candidate);
        }
    }
    for (service_id, retired) in &previous.retired {
        if !services.contains_key(service_id) {
            unserved.insert(service_id.clone(), retired.clone());
        }
    }
    Merged {
        serving,
        services,
        unserved,
        statuses,
        files: files
            .into_iter()
            .map(|(stem, (_, record))| (stem, record))
            .collect(),
        previous_serving: previous.serving.clone(),
        previous_retired: previous.retired.clone(),
        previous_refused: previous.catalog.refused().to_vec(),
        previous_statuses: previous.statuses.clone(),
        owners: owners.clone(),
    }
}

impl Merged {
    /// The set served, with `retired` (service id -> retired version) as
    /// settled against the state store, and `stranded` statuses of retired
    /// versions that could not be loaded again. Logs retirements and
    /// releases.
    pub fn finish(
        self,
        retired: BTreeMap<String, Retired>,
        stranded: Vec<PluginStatus>,
    ) -> PluginSet {
        self.log_retirements(&retired);
        let published: Vec<PluginCatalog> = self
            .serving
            .values()
            .map(|plugin| plugin.published.clone())
            .collect();
        let retired_offerings = retired.iter().filter_map(|(service_id, entry)| {
            entry
                .plugin
                .published
                .catalog
                .services
                .iter()
                .find(|offering| &offering.id == service_id)
        });
        let mut statuses = self.statuses;
        statuses.extend(retired_statuses(&retired));
        statuses.extend(stranded);
        let refused = refused_plugins(&statuses);
        count_refused(&self.previous_refused, &refused);
        count_serving(&self.previous_serving, &self.serving);
        count_info(&self.previous_statuses, &statuses);
        let catalog = CatalogSnapshot::build(&published)
            .with_retired(retired_offerings)
            .with_refused(refused);
        PluginSet {
            owners: self.owners,
            catalog: Arc::new(catalog),
            services: self.services,
            serving: self.serving,
            retired,
            statuses,
            files: self.files,
        }
    }

    fn log_retirements(&self, retired: &BTreeMap<String, Retired>) {
        for (plugin, services) in by_plugin(retired) {
            let newly: Vec<&str> = services
                .iter()
                .filter(|(service_id, _)| !self.previous_retired.contains_key(*service_id))
                .map(|(service_id, _)| service_id.as_str())
                .collect();
            if newly.is_empty() {
                continue;
            }
            let instances: u64 = services.iter().map(|(_, count)| count).sum();
            let why = match self.files.get(&plugin.name).map(|file| &file.attempt) {
                None => "its file was removed",
                Some(Attempt::Refused(_)) => "its file is refused",
                Some(Attempt::Loaded(_)) => "its file no longer offers these services",
            };
            tracing::info!(
                plugin = %plugin.name,
                version = %plugin.info().version,
                services = %service_names(plugin, |id| newly.contains(&id)).join(", "),
                instances,
                "plugin retired: {why}; the catalog no longer offers its services, but it serves \
                 their remaining instances until they are deprovisioned"
            );
        }
        for (service_id, old) in &self.previous_retired {
            if !retired.contains_key(service_id) && !self.services.contains_key(service_id) {
                tracing::info!(
                    plugin = %old.plugin.name,
                    version = %old.plugin.info().version,
                    service = %service_names(&old.plugin, |id| id == service_id.as_str()).join(", "),
                    "retired plugin released: no instance of its service is left"
                );
            }
        }
        for (name, plugin) in &self.previous_serving {
            let retired_now = retired
                .values()
                .any(|retired| Arc::ptr_eq(&retired.plugin, plugin));
            if !self.files.contains_key(name) && !retired_now {
                tracing::info!(plugin = %name, "plugin removed: its file is gone and none of its instances is left");
            }
        }
    }
}

/// Plugins refused (their file, or their kept copy when retired), by name.
fn refused_plugins(statuses: &[PluginStatus]) -> Vec<String> {
    let mut refused: Vec<String> = statuses
        .iter()
        .filter(|status| status.error.is_some())
        .map(|status| status.name.clone())
        .collect();
    refused.sort();
    refused.dedup();
    refused
}

/// `plugin_refused{plugin}`: 1 while the plugin is refused, back to 0 once
/// it is not (or its file is gone).
fn count_refused(before: &[String], now: &[String]) {
    for plugin in before.iter().filter(|plugin| !now.contains(plugin)) {
        metrics::gauge!("plugin_refused", "plugin" => plugin.clone()).set(0.0);
    }
    for plugin in now {
        metrics::gauge!("plugin_refused", "plugin" => plugin.clone()).set(1.0);
    }
}

/// `plugin_info{plugin,version,state}`: 1 for each plugin of the set as it
/// is now (state `serving`, `refused` or `retired`; version `-` when
/// nothing of it loaded), 0 for a combination it had before this load and
/// has no more, so a query for `== 1` shows the present only.
fn count_info(before: &[PluginStatus], now: &[PluginStatus]) {
    let labels = |status: &PluginStatus| {
        let version = status
            .info
            .as_ref()
            .map_or_else(|| "-".to_owned(), |info| info.version.clone());
        vec![
            metrics::Label::new("plugin", status.name.clone()),
            metrics::Label::new("version", version),
            metrics::Label::new("state", status.state().as_str()),
        ]
    };
    let current: Vec<Vec<metrics::Label>> = now.iter().map(labels).collect();
    for gone in before
        .iter()
        .map(labels)
        .filter(|old| !current.contains(old))
    {
        metrics::gauge!("plugin_info", gone).set(0.0);
    }
    for labels in current {
        metrics::gauge!("plugin_info", labels).set(1.0);
    }
}

/// `plugin_serving{plugin,version,digest}`: 1 for the version of each plugin
/// that serves now (its file's sha256 prefix tells two builds of one version
/// apart), 0 for one that served before this load and does not any more:
/// what `wasm-broker plugins list` cannot say, as it reads the directory,
/// not the running broker (after a refused replacement the previous
/// version goes on serving).
fn count_serving(
    before: &BTreeMap<String, Arc<LoadedPlugin>>,
    now: &BTreeMap<String, Arc<LoadedPlugin>>,
) {
    let labels = |plugin: &LoadedPlugin| {
        vec![
            metrics::Label::new("plugin", plugin.name.clone()),
            metrics::Label::new("version", plugin.published.info.version.clone()),
            metrics::Label::new("digest", plugin.digest.chars().take(12).collect::<String>()),
        ]
    };
    for (name, plugin) in before {
        let replaced = now
            .get(name)
            .is_none_or(|current| current.digest != plugin.digest);
        if replaced {
            metrics::gauge!("plugin_serving", labels(plugin)).set(0.0);
        }
    }
    for plugin in now.values() {
        metrics::gauge!("plugin_serving", labels(plugin)).set(1.0);
    }
}

/// A retired version and the services (id, instances left) it is kept for.
type RetiredGroup<'a> = (&'a Arc<LoadedPlugin>, Vec<(&'a String, u64)>);

/// Retired services grouped by the version kept for them, with their
/// instance counts.
fn by_plugin(retired: &BTreeMap<String, Retired>) -> Vec<RetiredGroup<'_>> {
    let mut groups: Vec<RetiredGroup<'_>> = Vec::new();
    for (service_id, entry) in retired {
        match groups
            .iter_mut()
            .find(|group| Arc::ptr_eq(group.0, &entry.plugin))
        {
            Some((_, services)) => services.push((service_id, entry.instances)),
            None => groups.push((&entry.plugin, vec![(service_id, entry.instances)])),
        }
    }
    groups
}

fn retired_statuses(retired: &BTreeMap<String, Retired>) -> Vec<PluginStatus> {
    by_plugin(retired)
        .into_iter()
        .map(|(plugin, services)| PluginStatus {
            name: plugin.name.clone(),
            file: PathBuf::from(format!("{}.wasm", plugin.name)),
            info: Some(plugin.info().clone()),
            wit_version: Some(plugin.wit_version.clone()),
            digest: Some(plugin.digest.clone()),
            services: service_names(plugin, |id| services.iter().any(|(s, _)| s.as_str() == id)),
            service_ids: service_ids(plugin, |id| services.iter().any(|(s, _)| s.as_str() == id)),
            error: None,
            retired_instances: Some(services.iter().map(|(_, count)| count).sum()),
        })
        .collect()
}

/// Names of the plugin's offerings whose id `wanted` accepts.
fn service_names(plugin: &LoadedPlugin, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    offerings(plugin, wanted)
        .map(|offering| offering.name.clone())
        .collect()
}

/// Ids of the plugin's offerings whose id `wanted` accepts, in the order
/// of `service_names`.
fn service_ids(plugin: &LoadedPlugin, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    offerings(plugin, wanted)
        .map(|offering| offering.id.clone())
        .collect()
}

fn offerings(
    plugin: &LoadedPlugin,
    wanted: impl Fn(&str) -> bool,
) -> impl Iterator<Item = &crate::model::ServiceOffering> {
    plugin
        .published
        .catalog
        .services
        .iter()
        .filter(move |offering| wanted(&offering.id))
}

fn log_changes(
    previous: &PluginSet,
    serving: &BTreeMap<String, Arc<LoadedPlugin>>,
    statuses: &[PluginStatus],
) {
    for status in statuses {
        let before = previous
            .statuses
            .iter()
            .find(|old| old.name == status.name && old.retired_instances.is_none());
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
}
