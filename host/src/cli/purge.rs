//! `purge`: forget a stuck service instance and its bindings without
//! calling the plugin, once the operator has confirmed what goes.

use wasm_broker::catalog::CatalogSnapshot;
use wasm_broker::config::Config;
use wasm_broker::state::inventory::{OperationSummary, PurgeOutcome, PurgePreview};

use super::instances::{catalog_for_names, open_store, unknown_instance};
use super::text::{bindings_table, indent, operation_text, plan_name, service_name, status_text};

pub async fn purge(
    config: Config,
    id: &str,
    yes: bool,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let Some(preview) = store.purge_preview(id).await? else {
        anyhow::bail!("{}", unknown_instance(&store, id).await?);
    };
    let catalog = catalog_for_names(&config).await;
    eprint!("{}", purge_warning(&preview, &catalog));
    if !yes {
        confirm_purge(id)?;
    }
    let description = purge_description(&preview, reason);
    match store.purge_instance(&preview, &description).await? {
        PurgeOutcome::Purged { binding_ids } => {
            println!(
                "purged service instance {id} and {} binding record(s){}",
                binding_ids.len(),
                if binding_ids.is_empty() {
                    String::new()
                } else {
                    format!(": {}", binding_ids.join(", "))
                }
            );
            println!(
                "the plugin was not called: remove the instance's backend resources by hand; \
                 the purge is recorded in the operation history of {id}"
            );
            Ok(())
        }
        PurgeOutcome::Gone => anyhow::bail!("service instance {id} was purged meanwhile"),
        PurgeOutcome::Changed => anyhow::bail!(
            "service instance {id} or its bindings changed while you confirmed (a broker is working \
             on it): nothing was purged; run purge again to see the current state"
        ),
    }
}

/// Asks the operator to type the instance id. Refuses without a terminal:
/// a script must say --yes.
fn confirm_purge(id: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "refusing to purge without confirmation: there is no terminal to ask on. \
         Pass --yes to purge from a script."
    );
    eprint!("Type the instance id to purge it: ");
    std::io::stderr().flush()?;
    let mut typed = String::new();
    std::io::stdin().lock().read_line(&mut typed)?;
    anyhow::ensure!(
        typed.trim() == id,
        "nothing was purged: what you typed is not the instance id"
    );
    Ok(())
}

/// What `purge` tells the operator before asking for confirmation.
fn purge_warning(preview: &PurgePreview, catalog: &CatalogSnapshot) -> String {
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
fn purge_description(preview: &PurgePreview, reason: Option<&str>) -> String {
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
