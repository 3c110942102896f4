//! The OSB lifecycle rules, as pure functions and the words they use.
//!
//! Given what the store holds and what a request asks, [`admit`] and
//! [`admit_binding`] decide the answer or the operation to start; given what
//! the plugin answered, [`settle`] and [`settle_poll`] decide how the record
//! changes and what the platform hears. One set of rules serves instances and
//! bindings: only the wording ([`Resource`]) differs.
//!
//! Nothing here does I/O. The broker core (`crate::broker`) reads and writes
//! records and calls plugins around these decisions, and the store
//! (`crate::state`) persists the vocabulary defined here. So a rule is changed
//! in one place, and `tests.rs` checks every (stored status, phase, request)
//! combination in milliseconds, without a database or a plugin.

mod admission;
mod settlement;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{InstanceChanges, OperationKind, OperationState, OperationStatus};

pub use admission::{Admission, Found, Request, admit, admit_binding, fetchable_instance};
pub use settlement::{
    ASYNC_WITHOUT_ACCEPTS_INCOMPLETE, Answer, PollStep, Polled, Settlement, Step, Verdict,
    fail_interrupted, poll_step, record_status, settle, settle_poll,
};

/// Where a resource (instance or binding) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    /// Provision/bind started and has not succeeded yet.
    Creating,
    /// Usable.
    Ready,
    /// Creation failed; the platform will send a delete (orphan mitigation),
    /// which must still reach the plugin to clean up half-made resources.
    Failed,
    /// Deleted; kept as a tombstone so `last_operation` can still report the
    /// deletion's success. A new create may reuse the id.
    Deleted,
}

/// Phase of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationPhase {
    /// A synchronous plugin call is under way. Found with no live broker
    /// process making the call (at startup on SQLite; once the calling
    /// replica's lease ran out on PostgreSQL), it becomes `Failed`.
    Calling,
    /// The plugin accepted the work asynchronously; polled via last_operation.
    InProgress,
    Succeeded,
    Failed,
}

/// The latest operation on a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The id the platform sees (`operation` in 202 bodies).
    pub id: String,
    pub kind: OperationKind,
    pub phase: OperationPhase,
    /// The plugin's own token from `accepted`, passed back when polling.
    pub plugin_operation: Option<String>,
    pub description: Option<String>,
    pub instance_usable: Option<bool>,
    pub update_repeatable: Option<bool>,
    /// For an update: what to apply to the instance when it succeeds.
    pub changes: Option<StoredChanges>,
    /// Fingerprint of the request that started it, so a re-sent identical
    /// request gets the same answer.
    pub request_fingerprint: String,
}

/// `InstanceChanges` in storable form.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoredChanges {
    pub plan_id: Option<String>,
    pub parameters: Option<Value>,
    pub context: Option<Value>,
    pub maintenance_version: Option<String>,
}

impl From<&InstanceChanges> for StoredChanges {
    fn from(changes: &InstanceChanges) -> Self {
        Self {
            plan_id: changes.plan_id.clone(),
            parameters: changes.parameters.clone(),
            context: changes.context.clone(),
            maintenance_version: changes.maintenance_version.clone(),
        }
    }
}

impl From<&StoredChanges> for InstanceChanges {
    fn from(changes: &StoredChanges) -> Self {
        Self {
            plan_id: changes.plan_id.clone(),
            parameters: changes.parameters.clone(),
            context: changes.context.clone(),
            maintenance_version: changes.maintenance_version.clone(),
        }
    }
}

/// Which kind of resource a rule speaks of: the rules are the same, the
/// words the platform reads differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Instance,
    Binding,
}

impl Resource {
    pub fn noun(self) -> &'static str {
        match self {
            Self::Instance => "service instance",
            Self::Binding => "service binding",
        }
    }
}

/// Whether `kind` creates its resource (provision, bind): a creation that
/// fails keeps its record as `Failed`, so the platform's orphan-mitigation
/// delete still reaches the plugin.
pub fn is_creation(kind: OperationKind) -> bool {
    matches!(kind, OperationKind::Provision | OperationKind::Bind)
}

/// Whether `kind` deletes its resource (deprovision, unbind): the plugin's
/// `gone` then means success.
pub fn is_deletion(kind: OperationKind) -> bool {
    matches!(kind, OperationKind::Deprovision | OperationKind::Unbind)
}

/// Whether an operation still runs (synchronously or asynchronously): the
/// record is then the lock that keeps other requests for the resource out.
pub fn is_running(operation: Option<&OperationRecord>) -> bool {
    operation.is_some_and(|op| {
        matches!(
            op.phase,
            OperationPhase::Calling | OperationPhase::InProgress
        )
    })
}

/// A new operation, in the `Calling` phase: the record that keeps other
/// requests for the same resource out while the plugin works.
pub fn start(kind: OperationKind, attributes: &Value) -> OperationRecord {
    OperationRecord {
        id: new_operation_id(),
        kind,
        phase: OperationPhase::Calling,
        plugin_operation: None,
        description: None,
        instance_usable: None,
        update_repeatable: None,
        changes: None,
        request_fingerprint: fingerprint(attributes),
    }
}

/// The OSB `last_operation` view of a record.
pub fn status(operation: &OperationRecord) -> OperationStatus {
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

/// A fresh operation id: what the platform sees in 202 bodies and polls with.
fn new_operation_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Request attributes as a JSON value, so identical requests compare equal
/// whatever the key order of their parameters.
fn fingerprint(attributes: &Value) -> String {
    attributes.to_string()
}

fn same_fingerprint(stored: &str, attributes: &Value) -> bool {
    serde_json::from_str::<Value>(stored).is_ok_and(|stored| &stored == attributes)
}
