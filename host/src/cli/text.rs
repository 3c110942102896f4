//! How the store commands show what they read: names from the catalog
//! where it has them, statuses and operations in words, aligned columns.

use wasm_broker::catalog::CatalogSnapshot;
use wasm_broker::lifecycle::{OperationPhase, ResourceStatus};
use wasm_broker::printable::printable;
use wasm_broker::state::inventory::{BindingSummary, OperationSummary};

pub(super) fn bindings_table(bindings: &[BindingSummary]) -> String {
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

pub(super) fn service_name(catalog: &CatalogSnapshot, service_id: &str) -> String {
    catalog
        .service(service_id)
        .map_or_else(|| service_id.to_owned(), |offering| offering.name.clone())
}

pub(super) fn plan_name(catalog: &CatalogSnapshot, service_id: &str, plan_id: &str) -> String {
    catalog
        .plan(service_id, plan_id)
        .map_or_else(|| plan_id.to_owned(), |plan| plan.name.clone())
}

/// `name (id)`, or the id alone when the catalog has no name for it.
pub(super) fn labelled(name: String, id: &str) -> String {
    if name == id {
        name
    } else {
        format!("{name} ({id})")
    }
}

pub(super) fn status_text(status: ResourceStatus) -> &'static str {
    match status {
        ResourceStatus::Creating => "creating",
        ResourceStatus::Ready => "ready",
        ResourceStatus::Failed => "failed",
        ResourceStatus::Deleted => "deleted",
    }
}

pub(super) fn phase_text(phase: OperationPhase) -> &'static str {
    match phase {
        OperationPhase::Calling => "calling the plugin",
        OperationPhase::InProgress => "in progress",
        OperationPhase::Succeeded => "succeeded",
        OperationPhase::Failed => "failed",
    }
}

pub(super) fn operation_text(operation: Option<&OperationSummary>) -> String {
    operation.map_or_else(
        || "-".to_owned(),
        |op| format!("{} {}", op.kind.as_str(), phase_text(op.phase)),
    )
}

pub(super) fn operation_detail(operation: Option<&OperationSummary>) -> String {
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
pub(super) fn short_time(stored: &str) -> String {
    stored
        .get(..19)
        .map_or_else(|| stored.to_owned(), |time| time.replacen('T', " ", 1))
}

/// Left-aligned columns two spaces apart, sized to their widest cell. Cells
/// hold ids and names from platforms and plugins: control characters are
/// shown escaped, never sent to the terminal.
pub(super) fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.clone().map(|cell| printable(&cell).into_owned()))
        .collect();
    let mut widths = [0; N];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
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

pub(super) fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
