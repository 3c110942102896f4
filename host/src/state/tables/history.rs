//! The `operations` table: the history of every instance and binding, one
//! row per step of an operation (a new operation, or a new phase of one),
//! appended in the transaction that writes the step.

use sqlx::AnyConnection;

use crate::lifecycle::{OperationPhase, OperationRecord};
use crate::state::StateError;

pub(in crate::state) const INSERT_HISTORY: &str = "\
    INSERT INTO operations (resource_kind, resource_id, operation_id, kind, phase, description) \
    VALUES ($1, $2, $3, $4, $5, $6)";

/// `resource_kind` in the history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::state) enum ResourceKind {
    Instance,
    Binding,
}

impl ResourceKind {
    fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Instance => "instance",
            ResourceKind::Binding => "binding",
        }
    }
}

/// What identifies one step of an operation in the history: a new id or a
/// new phase is a new step, anything else is detail.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::state) struct OperationMark(Option<(String, OperationPhase)>);

impl OperationMark {
    pub(in crate::state) fn of(operation: Option<&OperationRecord>) -> Self {
        Self(operation.map(|op| (op.id.clone(), op.phase)))
    }
}

/// Appends `after` to the history if it is a new step compared to `before`.
pub(in crate::state) async fn append(
    connection: &mut AnyConnection,
    kind: ResourceKind,
    resource_id: &str,
    before: &OperationMark,
    after: &Option<OperationRecord>,
) -> Result<(), StateError> {
    let Some(entry) = Entry::of(kind, resource_id, before, after) else {
        return Ok(());
    };
    entry
        .values()
        .into_iter()
        .fold(sqlx::query(INSERT_HISTORY), |query, value| {
            query.bind(value)
        })
        .execute(connection)
        .await?;
    Ok(())
}

/// One row of the history, if `after` is a new step compared to `before`.
pub(in crate::state) struct Entry<'a> {
    kind: ResourceKind,
    resource_id: &'a str,
    operation: &'a OperationRecord,
}

impl<'a> Entry<'a> {
    pub(in crate::state) fn of(
        kind: ResourceKind,
        resource_id: &'a str,
        before: &OperationMark,
        after: &'a Option<OperationRecord>,
    ) -> Option<Self> {
        let operation = after.as_ref()?;
        (*before != OperationMark::of(Some(operation))).then_some(Self {
            kind,
            resource_id,
            operation,
        })
    }

    /// What `INSERT_HISTORY` binds, `$1` to `$6`.
    pub(in crate::state) fn values(&self) -> [Option<&'a str>; 6] {
        let operation = self.operation;
        [
            Some(self.kind.as_str()),
            Some(self.resource_id),
            Some(&operation.id),
            Some(operation.kind.as_str()),
            Some(operation.phase.as_str()),
            operation.description.as_deref(),
        ]
    }
}
