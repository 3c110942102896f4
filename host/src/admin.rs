//! Operator commands that work without serving. They run the same loading
//! and validation code as `serve`, once, so what they report is what the
//! broker would do; and they read (`instances`) and repair (`purge`) the
//! store it serves from.

use std::path::Path;
use std::sync::Arc;

use crate::catalog::CatalogSnapshot;
use crate::config::{Config, StateBackend, StateConfig};
use crate::runtime::{PluginRuntime, PluginStatus, RuntimeError};
use crate::state::inventory::{
    BindingSummary, HistoryEntry, InstancePage, InstanceSummary, OperationSummary, PurgePreview,
};
use crate::lifecycle::{OperationPhase, ResourceStatus};
use crate::state::{InstanceRecord, StateError, StateStore};

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
        backend: StateBackend::Sqlite,
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

/// `instances`/`purge` read the store the broker serves from: refuse a
/// configuration that points at none rather than create an empty one.
pub fn require_store(config: &Config) -> Result<(), AdminError> {
    let path = &config.state.path;
    if config.state.backend == StateBackend::Sqlite && !path.exists() {
        return Err(AdminError::Input(format!(
            "there is no state store at {}: is --config right?",
            path.display()
        )));
    }
    Ok(())
}

/// The catalog of the plugin directory, for service and plan names. The
/// store keeps only ids, and names are a convenience: without a loadable
/// catalog the commands show ids.
pub async fn catalog_for_names(config: &Config) -> Arc<CatalogSnapshot> {
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
pub fn service_id_of(catalog: &CatalogSnapshot, name_or_id: &str) -> String {
    catalog
        .catalog
        .services
        .iter()
        .find(|offering| offering.name == name_or_id)
        .map_or_else(|| name_or_id.to_owned(), |offering| offering.id.clone())
}

/// The table of `instances list`, with a last line saying whether the page
/// holds them all.
pub fn instances_table(page: &InstancePage, catalog: &CatalogSnapshot) -> String {
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
pub struct InstanceReport {
    pub summary: InstanceSummary,
    pub record: InstanceRecord,
    pub bindings: Vec<BindingSummary>,
    pub history: Vec<HistoryEntry>,
}

impl InstanceReport {
    /// The report, or `None` if the store has no instance `id`.
    pub async fn load(store: &StateStore, id: &str) -> Result<Option<Self>, AdminError> {
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

    pub fn to_json(&self, catalog: &CatalogSnapshot) -> serde_json::Value {
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

    pub fn to_text(&self, catalog: &CatalogSnapshot) -> String {
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
        let mut out = format!("service instance {}\n", instance.id);
        for (name, value) in fields {
            out.push_str(&format!("  {name:<15} {value}\n"));
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

/// What `purge` tells the operator before asking for confirmation.
pub fn purge_warning(preview: &PurgePreview, catalog: &CatalogSnapshot) -> String {
    let instance = &preview.instance;
    let mut out = format!(
        "This forgets service instance {id} ({service}, plan {plan}, status {status}, last operation: {operation}).\n\
         Its record and the records of its bindings are removed from the state store; the plugin is NOT called,\n\
         so whatever the instance has in its backend (databases, users, queues, ...) is NOT deleted:\n\
         remove it by hand. The platform can then provision {id} again.\n",
        id = instance.id,
        service = service_name(catalog, &instance.service_id),
        plan = plan_name(catalog, &instance.service_id, &instance.plan_id),
        status = status_text(instance.status),
        operation = operation_text(instance.last_operation.as_ref()),
    );
    let under_way = |operation: &Option<OperationSummary>| {
        operation
            .as_ref()
            .is_some_and(OperationSummary::is_under_way)
    };
    if under_way(&instance.last_operation)
        || preview
            .bindings
            .iter()
            .any(|binding| under_way(&binding.last_operation))
    {
        out.push_str(
            "WARNING: an operation on it is under way. If a broker is serving from this store, what that\n\
             operation still creates is recorded nowhere once the records are gone.\n",
        );
    }
    if preview.bindings.is_empty() {
        out.push_str("It has no binding records.\n");
    } else {
        out.push_str(&format!(
            "Binding records forgotten with it ({}); their credentials stay valid in the backend:\n",
            preview.bindings.len()
        ));
        out.push_str(&indent(&bindings_table(&preview.bindings)));
    }
    out
}

/// The history row of a purge: what was removed, and the operator's reason.
pub fn purge_description(preview: &PurgePreview, reason: Option<&str>) -> String {
    let mut description = format!(
        "purged with `wasm-broker purge`: the instance record and {} binding record(s) were \
         removed without calling the plugin; backend resources were not deleted",
        preview.bindings.len()
    );
    if let Some(reason) = reason.map(str::trim).filter(|reason| !reason.is_empty()) {
        description.push_str(&format!("; reason: {reason}"));
    }
    description
}

fn bindings_table(bindings: &[BindingSummary]) -> String {
    let mut rows =
        vec![["ID", "STATUS", "LAST OPERATION", "CREATED", "UPDATED"].map(str::to_owned)];
    rows.extend(bindings.iter().map(|binding| {
        [
            binding.id.clone(),
            status_text(binding.status).to_owned(),
            operation_text(binding.last_operation.as_ref()),
            short_time(&binding.created_at),
            short_time(&binding.updated_at),
        ]
    }));
    columns(&rows)
}

fn service_name(catalog: &CatalogSnapshot, service_id: &str) -> String {
    catalog
        .service(service_id)
        .map_or_else(|| service_id.to_owned(), |offering| offering.name.clone())
}

fn plan_name(catalog: &CatalogSnapshot, service_id: &str, plan_id: &str) -> String {
    catalog
        .plan(service_id, plan_id)
        .map_or_else(|| plan_id.to_owned(), |plan| plan.name.clone())
}

/// `name (id)`, or the id alone when the catalog has no name for it.
fn labelled(name: String, id: &str) -> String {
    if name == id {
        name
    } else {
        format!("{name} ({id})")
    }
}

fn status_text(status: ResourceStatus) -> &'static str {
    match status {
        ResourceStatus::Creating => "creating",
        ResourceStatus::Ready => "ready",
        ResourceStatus::Failed => "failed",
        ResourceStatus::Deleted => "deleted",
    }
}

fn phase_text(phase: OperationPhase) -> &'static str {
    match phase {
        OperationPhase::Calling => "calling the plugin",
        OperationPhase::InProgress => "in progress",
        OperationPhase::Succeeded => "succeeded",
        OperationPhase::Failed => "failed",
    }
}

fn operation_text(operation: Option<&OperationSummary>) -> String {
    operation.map_or_else(
        || "-".to_owned(),
        |op| format!("{} {}", op.kind.as_str(), phase_text(op.phase)),
    )
}

fn operation_detail(operation: Option<&OperationSummary>) -> String {
    let Some(op) = operation else {
        return "-".to_owned();
    };
    let mut text = format!("{} (operation {})", operation_text(Some(op)), op.id);
    if let Some(description) = &op.description {
        text.push_str(&format!(": {description}"));
    }
    text
}

/// `2025-01-31T12:00:00.123Z` as `2025-01-31 12:00:00`: the table stays
/// narrow; `--json` and `show` keep the stored value.
fn short_time(stored: &str) -> String {
    stored
        .get(..19)
        .map_or_else(|| stored.to_owned(), |time| time.replacen('T', " ", 1))
}

/// Left-aligned columns two spaces apart, sized to their widest cell.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
