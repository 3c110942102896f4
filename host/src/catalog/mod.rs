//! The merged catalog: validation of each plugin's catalog against the OSB
//! rules, merging across plugins, and the lookups the broker core needs.
//! Pure data, no wasmtime.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{Catalog, PluginInfo, ServiceOffering, ServicePlan};

pub mod ownership;

/// OSB allows only these values in an offering's `requires`.
const ALLOWED_REQUIRES: [&str; 3] = ["syslog_drain", "route_forwarding", "volume_mount"];

/// Largest parameters schema OSB lets a broker publish.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Why a plugin's catalog cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The catalog breaks OSB rules; every problem found is listed, so a
    /// plugin author fixes them in one round.
    #[error("invalid catalog: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
    /// An id or name is already served by another plugin.
    #[error("{0}")]
    Clash(String),
    /// An id or name is owned by another plugin (`ownership`).
    #[error("{0}")]
    Owned(String),
}

/// One plugin's contribution to the merged catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginCatalog {
    /// File stem: the name broker.toml uses for the plugin.
    pub plugin: String,
    pub info: PluginInfo,
    pub catalog: Catalog,
}

/// Whether a plugin file's stem names the plugin that reports `name`.
/// broker.toml's `[plugins.<stem>]`, the plugin's kv namespace and the ids
/// it owns all go by the stem; the plugin's own name should be the same,
/// so operators and logs speak of one name. A `_` in the stem stands for a
/// `-` in the name: cargo writes a crate's `-` as `_` in the file it builds
/// (`slow_async.wasm` for `slow-async`).
pub fn stem_names(stem: &str, name: &str) -> bool {
    stem == name || stem.replace('_', "-") == name
}

/// Checks a plugin's own report and catalog against OSB (checklist §3.4).
/// Uniqueness across plugins is [`find_clash`]'s job.
pub fn validate(info: &PluginInfo, catalog: &Catalog) -> Result<(), CatalogError> {
    let mut problems = Vec::new();
    if !is_cli_friendly(&info.name) {
        problems.push(format!("plugin name {:?} must match [a-z0-9-]+", info.name));
    }
    if semver::Version::parse(&info.version).is_err() {
        problems.push(format!(
            "plugin version {:?} is not SemVer 2.0",
            info.version
        ));
    }

    let mut offering_ids = HashSet::new();
    let mut offering_names = HashSet::new();
    let mut plan_ids = HashSet::new();
    for offering in &catalog.services {
        let at = format!("offering {:?}", offering.name);
        check_offering(offering, &at, &mut problems);
        if !offering.id.is_empty() && !offering_ids.insert(offering.id.as_str()) {
            problems.push(format!(
                "{at}: id {:?} is used by another offering",
                offering.id
            ));
        }
        if !offering.name.is_empty() && !offering_names.insert(offering.name.as_str()) {
            problems.push(format!("{at}: the name is used by another offering"));
        }
        let mut plan_names = HashSet::new();
        for plan in &offering.plans {
            let at = format!("{at}, plan {:?}", plan.name);
            check_plan(plan, &at, &mut problems);
            if !plan.id.is_empty() && !plan_ids.insert(plan.id.as_str()) {
                problems.push(format!("{at}: id {:?} is used by another plan", plan.id));
            }
            if !plan.name.is_empty() && !plan_names.insert(plan.name.as_str()) {
                problems.push(format!(
                    "{at}: the name is used by another plan of the offering"
                ));
            }
        }
    }
    // OSB ids are global: an offering and a plan may not share one either.
    let mut shared_ids: Vec<&str> = offering_ids.intersection(&plan_ids).copied().collect();
    shared_ids.sort_unstable();
    for id in shared_ids {
        problems.push(format!("id {id:?} is used by both an offering and a plan"));
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::Invalid { problems })
    }
}

fn check_offering(offering: &ServiceOffering, at: &str, problems: &mut Vec<String>) {
    require_non_empty(&offering.id, at, "id", problems);
    require_non_empty(&offering.description, at, "description", problems);
    if !is_cli_friendly(&offering.name) {
        problems.push(format!("{at}: the name must match [a-z0-9-]+"));
    }
    if offering.plans.is_empty() {
        problems.push(format!("{at}: needs at least one plan"));
    }
    for requirement in &offering.requires {
        if !ALLOWED_REQUIRES.contains(&requirement.as_str()) {
            problems.push(format!(
                "{at}: requires {requirement:?}, but only {} are allowed",
                ALLOWED_REQUIRES.join(", ")
            ));
        }
    }
    check_metadata(offering.metadata.as_ref(), at, problems);
    if let Some(client) = &offering.dashboard_client {
        require_non_empty(&client.id, at, "dashboard_client.id", problems);
        require_non_empty(&client.secret, at, "dashboard_client.secret", problems);
    }
}

fn check_plan(plan: &ServicePlan, at: &str, problems: &mut Vec<String>) {
    require_non_empty(&plan.id, at, "id", problems);
    require_non_empty(&plan.description, at, "description", problems);
    if !is_cli_friendly(&plan.name) {
        problems.push(format!("{at}: the name must match [a-z0-9-]+"));
    }
    check_metadata(plan.metadata.as_ref(), at, problems);
    if let Some(maintenance) = &plan.maintenance_info
        && semver::Version::parse(&maintenance.version).is_err()
    {
        problems.push(format!(
            "{at}: maintenance_info.version {:?} is not SemVer 2.0",
            maintenance.version
        ));
    }
    let Some(schemas) = &plan.schemas else { return };
    let instance = schemas.service_instance.as_ref();
    let binding = schemas.service_binding.as_ref();
    let named = [
        (
            "service_instance.create",
            instance.and_then(|s| s.create.as_ref()),
        ),
        (
            "service_instance.update",
            instance.and_then(|s| s.update.as_ref()),
        ),
        (
            "service_binding.create",
            binding.and_then(|s| s.create.as_ref()),
        ),
    ];
    for (name, schema) in named {
        if let Some(schema) = schema
            && let Err(problem) = check_schema(&schema.parameters)
        {
            problems.push(format!("{at}: schema {name}: {problem}"));
        }
    }
}

fn require_non_empty(value: &str, at: &str, field: &str, problems: &mut Vec<String>) {
    if value.trim().is_empty() {
        problems.push(format!("{at}: {field} must not be empty"));
    }
}

fn check_metadata(metadata: Option<&Value>, at: &str, problems: &mut Vec<String>) {
    if metadata.is_some_and(|metadata| !metadata.is_object()) {
        problems.push(format!("{at}: metadata must be a JSON object"));
    }
}

/// Names pass the OSB conformance suites' `^[a-z0-9-]+$`.
fn is_cli_friendly(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A parameters schema a platform can use: a JSON object declaring its
/// dialect, self-contained (platforms do not fetch external documents), small
/// enough to publish, and one the broker can compile to validate requests.
fn check_schema(schema: &Value) -> Result<(), String> {
    let Some(object) = schema.as_object() else {
        return Err("must be a JSON object".to_owned());
    };
    if !object.contains_key("$schema") {
        return Err("has no \"$schema\"".to_owned());
    }
    if let Some(reference) = external_ref(schema) {
        return Err(format!(
            "has the external $ref {reference:?}; only local references (#...) are allowed"
        ));
    }
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "is {size} bytes, more than the {MAX_SCHEMA_BYTES} allowed"
        ));
    }
    jsonschema::validator_for(schema)
        .map_err(|error| format!("is not a valid JSON Schema: {error}"))?;
    Ok(())
}

fn external_ref(value: &Value) -> Option<&str> {
    match value {
        Value::Object(object) => object.iter().find_map(|(key, value)| match value {
            Value::String(reference) if key == "$ref" && !reference.starts_with('#') => {
                Some(reference.as_str())
            }
            _ => external_ref(value),
        }),
        Value::Array(items) => items.iter().find_map(external_ref),
        _ => None,
    }
}

/// The first offering id, plan id or offering name of `candidate` that a
/// plugin in `serving` already uses, as a message naming both plugins.
pub fn find_clash<'a>(
    serving: impl IntoIterator<Item = &'a PluginCatalog>,
    candidate: &PluginCatalog,
) -> Option<CatalogError> {
    for other in serving {
        for theirs in &other.catalog.services {
            for ours in &candidate.catalog.services {
                let clash = if ours.id == theirs.id {
                    Some(format!("offering id {:?}", ours.id))
                } else if ours.name == theirs.name {
                    Some(format!("offering name {:?}", ours.name))
                } else {
                    plan_id_clash(ours, theirs).map(|id| format!("plan id {id:?}"))
                };
                if let Some(what) = clash {
                    return Some(CatalogError::Clash(format!(
                        "plugin {} declares {what}, which plugin {} already serves",
                        candidate.plugin, other.plugin
                    )));
                }
            }
        }
    }
    None
}

/// Ids are global in OSB: a plan id may not repeat any plan or offering id.
fn plan_id_clash<'a>(ours: &'a ServiceOffering, theirs: &ServiceOffering) -> Option<&'a str> {
    let their_ids: HashSet<&str> = std::iter::once(theirs.id.as_str())
        .chain(theirs.plans.iter().map(|plan| plan.id.as_str()))
        .collect();
    ours.plans
        .iter()
        .map(|plan| plan.id.as_str())
        .find(|id| their_ids.contains(id))
        .or_else(|| {
            theirs
                .plans
                .iter()
                .any(|plan| plan.id == ours.id)
                .then_some(ours.id.as_str())
        })
}

/// Where an offering sits in the snapshot.
#[derive(Debug, Clone)]
struct OfferingEntry {
    offering: usize,
    plugin: usize,
    plans: HashMap<String, usize>,
}

/// The catalog as served: the merged offerings, their pre-serialized OSB
/// JSON (so `GET /v2/catalog` costs no serialization) and an ETag.
#[derive(Debug)]
pub struct CatalogSnapshot {
    pub catalog: Catalog,
    /// `{"services": [...]}` exactly as served.
    pub json: bytes::Bytes,
    /// Strong ETag of `json`, quoted.
    pub etag: String,
    /// Serving plugins: file stem and reported info.
    plugins: Vec<(String, PluginInfo)>,
    offerings: HashMap<String, OfferingEntry>,
    /// Offerings of retired plugins: not offered (not in `catalog`), but
    /// still describing the instances made from them, which can be fetched,
    /// unbound and deprovisioned until none is left.
    retired: HashMap<String, ServiceOffering>,
    /// Set only before the first load of the plugin directory finished.
    loading: bool,
    /// Plugin files refused (or kept at an older version because their new
    /// file was refused): the broker serves, degraded.
    refused: Vec<String>,
}

impl Default for CatalogSnapshot {
    fn default() -> Self {
        Self::build(&[])
    }
}

impl CatalogSnapshot {
    /// Merges catalogs that passed [`validate`] and [`find_clash`], in the
    /// given order.
    pub fn build(plugins: &[PluginCatalog]) -> Self {
        let mut catalog = Catalog::default();
        let mut offerings = HashMap::new();
        for (plugin, contribution) in plugins.iter().enumerate() {
            for offering in &contribution.catalog.services {
                let plans = offering
                    .plans
                    .iter()
                    .enumerate()
                    .map(|(index, plan)| (plan.id.clone(), index))
                    .collect();
                let entry = OfferingEntry {
                    offering: catalog.services.len(),
                    plugin,
                    plans,
                };
                offerings.insert(offering.id.clone(), entry);
                catalog.services.push(offering.clone());
            }
        }
        // Serializing plain data with string keys cannot fail; an empty body
        // would still be answered with a matching ETag.
        let json = bytes::Bytes::from(serde_json::to_vec(&catalog).unwrap_or_default());
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&json)));
        let plugins = plugins
            .iter()
            .map(|p| (p.plugin.clone(), p.info.clone()))
            .collect();
        Self {
            catalog,
            json,
            etag,
            plugins,
            offerings,
            retired: HashMap::new(),
            loading: false,
            refused: Vec::new(),
        }
    }

    /// What is served before the plugins are loaded: nothing, and saying so.
    pub fn loading() -> Self {
        Self {
            loading: true,
            ..Self::default()
        }
    }

    /// The same catalog, knowing which plugins were refused.
    pub fn with_refused(mut self, refused: Vec<String>) -> Self {
        self.refused = refused;
        self
    }

    /// Whether the plugins are still being loaded (the broker just started).
    pub fn is_loading(&self) -> bool {
        self.loading
    }

    /// Plugins refused, by file stem.
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    /// The same catalog, knowing `offerings` as retired ones. The served
    /// catalog (and its ETag) does not change.
    pub fn with_retired<'a>(
        mut self,
        offerings: impl IntoIterator<Item = &'a ServiceOffering>,
    ) -> Self {
        self.retired = offerings
            .into_iter()
            .filter(|offering| !self.offerings.contains_key(&offering.id))
            .map(|offering| (offering.id.clone(), offering.clone()))
            .collect();
        self
    }

    /// Whether any plugin serves anything: an offering, or the instances of
    /// a retired one (which the platform must still be able to unbind and
    /// deprovision, so the broker is ready while they exist).
    pub fn serves_anything(&self) -> bool {
        !self.catalog.services.is_empty() || !self.retired.is_empty()
    }

    /// The offering of a retired plugin with this id: no longer offered,
    /// but its instances remain.
    pub fn retired_service(&self, service_id: &str) -> Option<&ServiceOffering> {
        self.retired.get(service_id)
    }

    /// The offering `service_id` names, offered or retired: what describes
    /// an existing instance.
    pub fn service_of_instance(&self, service_id: &str) -> Option<&ServiceOffering> {
        self.service(service_id)
            .or_else(|| self.retired_service(service_id))
    }

    /// A plan of [`Self::service_of_instance`].
    pub fn plan_of_instance(&self, service_id: &str, plan_id: &str) -> Option<&ServicePlan> {
        self.plan(service_id, plan_id).or_else(|| {
            self.retired_service(service_id)?
                .plans
                .iter()
                .find(|plan| plan.id == plan_id)
        })
    }

    pub fn service(&self, service_id: &str) -> Option<&ServiceOffering> {
        let entry = self.offerings.get(service_id)?;
        self.catalog.services.get(entry.offering)
    }

    pub fn plan(&self, service_id: &str, plan_id: &str) -> Option<&ServicePlan> {
        let entry = self.offerings.get(service_id)?;
        let plan = *entry.plans.get(plan_id)?;
        self.catalog.services.get(entry.offering)?.plans.get(plan)
    }

    /// The plugin serving `service_id` (its name and reported info).
    pub fn plugin_of(&self, service_id: &str) -> Option<(&str, &PluginInfo)> {
        let entry = self.offerings.get(service_id)?;
        self.plugins
            .get(entry.plugin)
            .map(|(name, info)| (name.as_str(), info))
    }
}

pub type SharedCatalog = Arc<CatalogSnapshot>;

#[cfg(test)]
mod tests;
