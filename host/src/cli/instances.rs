//! `instances list` and `instances show`: the service instances in the
//! state store, read while a broker may be serving from it. None of it shows
//! a credential.

use std::sync::Arc;

use anyhow::Context;

use wasm_broker::catalog::CatalogSnapshot;
use wasm_broker::config::{Config, StateBackend};
use wasm_broker::printable::printable;
use wasm_broker::state::inventory::{
    BindingSummary, HistoryEntry, InstanceFilter, InstancePage, InstanceSummary, StatusFilter,
};
use wasm_broker::state::{InstanceRecord, StateStore};

use super::StatusArg;
use super::plugins::load_plugins;
use super::text::{
    bindings_table, columns, indent, labelled, operation_detail, operation_text, plan_name,
    service_name, short_time, status_text,
};

/// `--status` and `--all` as a filter: deleted instances are hidden unless
/// asked for.
pub fn status_filter(status: Option<StatusArg>, all: bool) -> StatusFilter {
    match (status, all) {
        (Some(status), _) => StatusFilter::Only(status.into()),
        (None, true) => StatusFilter::Any,
        (None, false) => StatusFilter::NotDeleted,
    }
}

pub async fn list(
    config: Config,
    service: Option<&str>,
    status: StatusFilter,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let catalog = catalog_for_names(&config).await;
    let filter = InstanceFilter {
        service_id: service.map(|service| service_id_of(&catalog, service)),
        status,
        limit: (limit > 0).then_some(limit),
    };
    let page = store
        .list_instances(&filter)
        .await
        .context("listing instances")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page)?);
    } else {
        print!("{}", instances_table(&page, &catalog));
    }
    Ok(())
}

pub async fn show(config: Config, id: &str, json: bool) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let Some(report) = InstanceReport::load(&store, id).await? else {
        anyhow::bail!("{}", unknown_instance(&store, id).await?);
    };
    let catalog = catalog_for_names(&config).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&catalog))?
        );
    } else {
        print!("{}", report.to_text(&catalog));
    }
    Ok(())
}

/// Why there is no instance `id`, with what its history still tells (a
/// purge leaves its trace there).
pub(super) async fn unknown_instance(store: &StateStore, id: &str) -> anyhow::Result<String> {
    let history = store.instance_history(id).await?;
    Ok(match history.last() {
        Some(last) => format!(
            "there is no service instance {id:?} in the state store; its history ends with {} {} at {}",
            last.kind, last.phase, last.at
        ),
        None => format!(
            "there is no service instance {id:?} in the state store (`wasm-broker instances list` shows the ids)"
        ),
    })
}

/// The store `instances` and `purge` work on: the one `serve` uses.
pub(super) async fn open_store(config: &Config) -> anyhow::Result<StateStore> {
    require_store(config)?;
    StateStore::open(&config.state)
        .await
        .context("opening the state store")
}

/// `instances`/`purge` read the store the broker serves from: refuse a
/// configuration that points at none rather than create an empty one.
fn require_store(config: &Config) -> anyhow::Result<()> {
    let path = &config.state.path;
    if config.state.backend == StateBackend::Sqlite && !path.exists() {
        anyhow::bail!(
            "there is no state store at {}: is --config right?",
            path.display()
        );
    }
    Ok(())
}

/// The catalog of the plugin directory, for service and plan names. The
/// store keeps only ids, and names are a convenience: without a loadable
/// catalog the commands show ids.
pub(super) async fn catalog_for_names(config: &Config) -> Arc<CatalogSnapshot> {
    match load_plugins(config, &config.runtime.plugin_dir).await {
        Ok(runtime) => runtime.catalog(),
        Err(error) => {
            tracing::warn!(%error, "cannot load the plugin directory; showing ids instead of names");
            Arc::new(CatalogSnapshot::default())
        }
    }
}

/// The offering id for `--service`: an offering name the catalog knows,
/// else the argument taken as an id (the offering may have left the
/// catalog while instances of it remain).
fn service_id_of(catalog: &CatalogSnapshot, name_or_id: &str) -> String {
    catalog
        .catalog
        .services
        .iter()
        .find(|offering| offering.name == name_or_id)
        .map_or_else(|| name_or_id.to_owned(), |offering| offering.id.clone())
}

/// The table of `instances list`, with a last line saying whether the page
/// holds them all.
fn instances_table(page: &InstancePage, catalog: &CatalogSnapshot) -> String {
    if page.instances.is_empty() {
        return "no instances match\n".to_owned();
    }
    let mut rows = vec![
        [
            "ID",
            "SERVICE",
            "PLAN",
            "STATUS",
            "LAST OPERATION",
            "CREATED",
            "UPDATED",
        ]
        .map(str::to_owned),
    ];
    rows.extend(page.instances.iter().map(|instance| {
        [
            instance.id.clone(),
            service_name(catalog, &instance.service_id),
            plan_name(catalog, &instance.service_id, &instance.plan_id),
            status_text(instance.status).to_owned(),
            operation_text(instance.last_operation.as_ref()),
            short_time(&instance.created_at),
            short_time(&instance.updated_at),
        ]
    }));
    let mut text = columns(&rows);
    let shown = page.instances.len();
    text.push_str(&if page.more {
        format!(
            "{shown} shown, newest first; more match: raise --limit (0 for all) or narrow with --service/--status\n"
        )
    } else {
        format!("{shown} instance(s)\n")
    });
    text
}

/// Everything `instances show` knows of an instance.
struct InstanceReport {
    summary: InstanceSummary,
    record: InstanceRecord,
    bindings: Vec<BindingSummary>,
    history: Vec<HistoryEntry>,
}

impl InstanceReport {
    /// The report, or `None` if the store has no instance `id`.
    async fn load(store: &StateStore, id: &str) -> anyhow::Result<Option<Self>> {
        let (Some(summary), Some(record)) =
            (store.instance_summary(id).await?, store.instance(id).await?)
        else {
            return Ok(None);
        };
        Ok(Some(Self {
            summary,
            record,
            bindings: store.binding_summaries(id).await?,
            history: store.instance_history(id).await?,
        }))
    }

    fn to_json(&self, catalog: &CatalogSnapshot) -> serde_json::Value {
        let instance = &self.record.instance;
        serde_json::json!({
            "id": instance.id,
            "service_id": instance.service_id,
            "service_name": catalog.service(&instance.service_id).map(|s| &s.name),
            "plan_id": instance.plan_id,
            "plan_name": catalog.plan(&instance.service_id, &instance.plan_id).map(|p| &p.name),
            "status": self.summary.status,
            "created_at": self.summary.created_at,
            "updated_at": self.summary.updated_at,
            "plugin_version": instance.plugin_version,
            "maintenance_version": instance.maintenance_version,
            "organization_guid": instance.organization_guid,
            "space_guid": instance.space_guid,
            "parameters": instance.parameters,
            "context": instance.context,
            "dashboard_url": self.record.dashboard_url,
            "metadata": self.record.metadata,
            "last_operation": self.summary.last_operation,
            "bindings": self.bindings,
            "history": self.history,
        })
    }

    fn to_text(&self, catalog: &CatalogSnapshot) -> String {
        let instance = &self.record.instance;
        let json = |value: &Option<serde_json::Value>| {
            value
                .as_ref()
                .map_or_else(|| "-".to_owned(), serde_json::Value::to_string)
        };
        let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
        let fields = [
            (
                "service",
                labelled(
                    service_name(catalog, &instance.service_id),
                    &instance.service_id,
                ),
            ),
            (
                "plan",
                labelled(
                    plan_name(catalog, &instance.service_id, &instance.plan_id),
                    &instance.plan_id,
                ),
            ),
            ("status", status_text(self.summary.status).to_owned()),
            (
                "last operation",
                operation_detail(self.summary.last_operation.as_ref()),
            ),
            ("created", self.summary.created_at.clone()),
            ("updated", self.summary.updated_at.clone()),
            ("plugin version", instance.plugin_version.clone()),
            ("maintenance", text(&instance.maintenance_version)),
            ("organization", text(&instance.organization_guid)),
            ("space", text(&instance.space_guid)),
            ("parameters", json(&instance.parameters)),
            ("context", json(&instance.context)),
            ("dashboard url", text(&self.record.dashboard_url)),
            ("metadata", json(&self.record.metadata)),
        ];
        let mut out = format!("service instance {}\n", printable(&instance.id));
        for (name, value) in fields {
            out.push_str(&format!("  {name:<15} {}\n", printable(&value)));
        }
        out.push_str(&format!(
            "\nbindings ({}; credentials are never shown)\n",
            self.bindings.len()
        ));
        if !self.bindings.is_empty() {
            out.push_str(&indent(&bindings_table(&self.bindings)));
        }
        out.push_str(&format!("\noperation history ({})\n", self.history.len()));
        if !self.history.is_empty() {
            let mut rows = vec![
                [
                    "AT",
                    "RESOURCE",
                    "KIND",
                    "PHASE",
                    "OPERATION",
                    "DESCRIPTION",
                ]
                .map(str::to_owned),
            ];
            rows.extend(self.history.iter().map(|entry| {
                [
                    short_time(&entry.at),
                    format!("{} {}", entry.resource_kind, entry.resource_id),
                    entry.kind.clone(),
                    entry.phase.replace('_', " "),
                    entry.operation_id.clone(),
                    entry.description.clone().unwrap_or_default(),
                ]
            }));
            out.push_str(&indent(&columns(&rows)));
        }
        out
    }
}
