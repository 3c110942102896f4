//! Operation records: starting, finishing and reporting them.

use crate::model::{OperationKind, OperationState, OperationStatus};
use crate::state::{OperationPhase, OperationRecord};

use super::{AcceptedReply, new_operation_id};

/// A new operation, in the `Calling` phase: the record that keeps other
/// requests for the same resource out while the plugin works.
pub(super) fn start(kind: OperationKind, request_fingerprint: String) -> OperationRecord {
    OperationRecord {
        id: new_operation_id(),
        kind,
        phase: OperationPhase::Calling,
        plugin_operation: None,
        description: None,
        instance_usable: None,
        update_repeatable: None,
        changes: None,
        request_fingerprint,
    }
}

/// Whether an operation still runs (synchronously or asynchronously).
pub(super) fn is_running(operation: Option<&OperationRecord>) -> bool {
    operation.is_some_and(|op| {
        matches!(
            op.phase,
            OperationPhase::Calling | OperationPhase::InProgress
        )
    })
}

/// What a delete gets while `running` is under way: a repeat of an
/// asynchronous deletion of the same kind is answered with its operation (OSB
/// lets the platform re-send it), anything else is a concurrency conflict
/// (`None`).
pub(super) fn pending_deletion(
    running: &OperationRecord,
    deletion: OperationKind,
    accepts_incomplete: bool,
) -> Option<AcceptedReply> {
    let same_async_deletion =
        running.kind == deletion && running.phase == OperationPhase::InProgress;
    (same_async_deletion && accepts_incomplete).then(|| AcceptedReply {
        operation: running.id.clone(),
        dashboard_url: None,
    })
}

/// The OSB `last_operation` view of a record.
pub(super) fn status(operation: &OperationRecord) -> OperationStatus {
    let state = match operation.phase {
        OperationPhase::Calling | OperationPhase::InProgress => OperationState::InProgress,
        OperationPhase::Succeeded => OperationState::Succeeded,
        OperationPhase::Failed => OperationState::Failed,
    };
    OperationStatus {
        state,
        description: operation.description.clone(),
        instance_usable: operation.instance_usable,
        update_repeatable: operation.update_repeatable,
    }
}

/// Records a terminal or in-progress status reported by the plugin.
pub(super) fn record_status(operation: &mut OperationRecord, reported: &OperationStatus) {
    operation.phase = match reported.state {
        OperationState::InProgress => OperationPhase::InProgress,
        OperationState::Succeeded => OperationPhase::Succeeded,
        OperationState::Failed => OperationPhase::Failed,
    };
    operation.description = reported.description.clone();
    operation.instance_usable = reported.instance_usable;
    operation.update_repeatable = reported.update_repeatable;
}

pub(super) fn succeed(operation: &mut OperationRecord) {
    operation.phase = OperationPhase::Succeeded;
    operation.description = None;
}

pub(super) fn fail(operation: &mut OperationRecord, description: String) {
    operation.phase = OperationPhase::Failed;
    operation.description = Some(description);
}

/// The plugin accepted the work: remember its token for polling.
pub(super) fn accept(operation: &mut OperationRecord, plugin_operation: Option<String>) {
    operation.phase = OperationPhase::InProgress;
    operation.plugin_operation = plugin_operation;
}
