//! What operators ask of the store outside the OSB flow: listing and
//! inspecting instances, purging a stuck one, and counting the operations
//! under way for `/metrics`. None of it reads a credential: the queries
//! never select `bindings.result`.
//!
//! The SQL is plain and numbers its parameters (`$1`), which SQLite and
//! PostgreSQL both read. Status and phase columns hold the serde names of
//! [`ResourceStatus`] and [`OperationPhase`], so they are converted with
//! serde.

use serde::de::IntoDeserializer as _;
use serde::{Deserialize, Serialize};

use crate::model::OperationKind;

use super::{StateError, StateStore};
use crate::lifecycle::{OperationPhase, ResourceStatus};

/// The `kind` of the history row a purge leaves. Not an [`OperationKind`]:
/// no plugin ever runs one.
pub const PURGE_KIND: &str = "purge";

/// `resource_kind` values of the history table.
const INSTANCE: &str = "instance";
const BINDING: &str = "binding";

const SELECT_INSTANCE_SUMMARY: &str = "\
    SELECT id, service_id, plan_id, status, operation, created_at, updated_at \
    FROM instances WHERE id = $1";

const SELECT_BINDING_SUMMARIES: &str = "\
    SELECT id, status, operation, created_at, updated_at \
    FROM bindings WHERE instance_id = $1 ORDER BY created_at, id";

/// The instance's own steps and those of its current binding records, in
/// the order they happened. (A purge removes binding records, so from then
/// on only the instance's own steps, the purge included, are found.)
const SELECT_HISTORY: &str = "\
    SELECT seq, resource_kind, resource_id, operation_id, kind, phase, description, at \
    FROM operations WHERE resource_kind = $1 AND resource_id = $2 \
    UNION ALL \
    SELECT o.seq, o.resource_kind, o.resource_id, o.operation_id, o.kind, o.phase, o.description, o.at \
    FROM operations o JOIN bindings b ON b.id = o.resource_id \
    WHERE o.resource_kind = $3 AND b.instance_id = $2 \
    ORDER BY seq";

const DELETE_BINDINGS: &str = "DELETE FROM bindings WHERE instance_id = $1";

const DELETE_INSTANCE: &str = "DELETE FROM instances WHERE id = $1";

const INSERT_PURGE_HISTORY: &str = "\
    INSERT INTO operations (resource_kind, resource_id, operation_id, kind, phase, description) \
    VALUES ($1, $2, $3, $4, $5, $6)";

/// Both phases in which an operation is under way, counted per phase.
const COUNT_INSTANCES_RUNNING: &str = "\
    SELECT operation_phase, count(*) FROM instances \
    WHERE operation_phase IN ($1, $2) GROUP BY operation_phase";

const COUNT_BINDINGS_RUNNING: &str = "\
    SELECT operation_phase, count(*) FROM bindings \
    WHERE operation_phase IN ($1, $2) GROUP BY operation_phase";

/// Which instances `list_instances` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub service_id: Option<String>,
    pub status: StatusFilter,
    /// At most this many; `None` for all.
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusFilter {
    /// Every instance but the tombstones of deleted ones.
    #[default]
    NotDeleted,
    Only(ResourceStatus),
    Any,
}

/// One page of `list_instances`.
#[derive(Debug, Clone, Serialize)]
pub struct InstancePage {
    pub instances: Vec<InstanceSummary>,
    /// More instances match than the limit let through.
    pub more: bool,
}

/// An instance as operators list it: the filterable columns and its latest
/// operation, without parameters or anything the plugin returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSummary {
    pub id: String,
    pub service_id: String,
    pub plan_id: String,
    pub status: ResourceStatus,
    pub last_operation: Option<OperationSummary>,
    /// UTC, RFC 3339, as stored.
    pub created_at: String,
    pub updated_at: String,
}

/// A binding as operators see it: never its credentials.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BindingSummary {
    pub id: String,
    pub status: ResourceStatus,
    pub last_operation: Option<OperationSummary>,
    pub created_at: String,
    pub updated_at: String,
}

/// The part of an operation record an operator needs to see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationSummary {
    pub id: String,
    pub kind: OperationKind,
    pub phase: OperationPhase,
    pub description: Option<String>,
}

impl OperationSummary {
    /// A plugin call or an asynchronous operation has not finished.
    pub fn is_under_way(&self) -> bool {
        matches!(
            self.phase,
            OperationPhase::Calling | OperationPhase::InProgress
        )
    }
}

/// One row of the append-only `operations` history.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct HistoryEntry {
    pub resource_kind: String,
    pub resource_id: String,
    pub operation_id: String,
    /// An [`OperationKind`], or [`PURGE_KIND`].
    pub kind: String,
    pub phase: String,
    pub description: Option<String>,
    pub at: String,
}

/// What a purge is about to remove, as shown to the operator who confirms
/// it. The purge goes ahead only if the store still holds exactly this.
#[derive(Debug, Clone, PartialEq)]
pub struct PurgePreview {
    pub instance: InstanceSummary,
    pub bindings: Vec<BindingSummary>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PurgeOutcome {
    /// Removed, with the ids of the bindings removed with it.
    Purged { binding_ids: Vec<String> },
    /// Someone purged it meanwhile.
    Gone,
    /// A broker serving from the same store changed the instance or its
    /// bindings since the preview: the operator confirmed something else.
    Changed,
}

/// Operations under way in the store, for one kind of resource and phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningCount {
    pub resource: &'static str,
    pub phase: OperationPhase,
    pub count: i64,
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: String,
    service_id: String,
    plan_id: String,
    status: String,
    operation: Option<String>,
    created_at: String,
    updated_at: String,
}

#[derive(sqlx::FromRow)]
struct BindingRow {
    id: String,
    status: String,
    operation: Option<String>,
    created_at: String,
    updated_at: String,
}

impl StateStore {
    /// Instances matching `filter`, newest first.
    pub async fn list_instances(
        &self,
        filter: &InstanceFilter,
    ) -> Result<InstancePage, StateError> {
        let sql = list_instances_sql(filter);
        let mut query = sqlx::query_as::<_, InstanceRow>(&sql);
        query = match filter.status {
            StatusFilter::NotDeleted => query.bind(column_text(ResourceStatus::Deleted)),
            StatusFilter::Only(status) => query.bind(column_text(status)),
            StatusFilter::Any => query,
        };
        if let Some(service_id) = &filter.service_id {
            query = query.bind(service_id);
        }
        if let Some(limit) = filter.limit {
            // One more than asked: whether it comes tells if more match.
            query = query.bind(i64::from(limit) + 1);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut instances = rows
            .into_iter()
            .map(InstanceSummary::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let limit = filter.limit.and_then(|limit| usize::try_from(limit).ok());
        let more = limit.is_some_and(|limit| instances.len() > limit);
        if let Some(limit) = limit {
            instances.truncate(limit);
        }
        Ok(InstancePage { instances, more })
    }

    pub async fn instance_summary(&self, id: &str) -> Result<Option<InstanceSummary>, StateError> {
        let row = sqlx::query_as::<_, InstanceRow>(SELECT_INSTANCE_SUMMARY)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(InstanceSummary::try_from).transpose()
    }

    /// Every binding record of the instance, deleted ones included, oldest
    /// first.
    pub async fn binding_summaries(
        &self,
        instance_id: &str,
    ) -> Result<Vec<BindingSummary>, StateError> {
        let rows = sqlx::query_as::<_, BindingRow>(SELECT_BINDING_SUMMARIES)
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(BindingSummary::try_from).collect()
    }

    /// The history of an instance and of its bindings, oldest first. It
    /// outlives a purge.
    pub async fn instance_history(
        &self,
        instance_id: &str,
    ) -> Result<Vec<HistoryEntry>, StateError> {
        Ok(sqlx::query_as::<_, HistoryEntry>(SELECT_HISTORY)
            .bind(INSTANCE)
            .bind(instance_id)
            .bind(BINDING)
            .fetch_all(&self.pool)
            .await?)
    }

    /// What purging `id` would remove, or `None` if there is no such
    /// instance.
    pub async fn purge_preview(&self, id: &str) -> Result<Option<PurgePreview>, StateError> {
        let Some(instance) = self.instance_summary(id).await? else {
            return Ok(None);
        };
        let bindings = self.binding_summaries(id).await?;
        Ok(Some(PurgePreview { instance, bindings }))
    }

    /// Removes the instance and its binding records, if they are still
    /// what `preview` shows, and appends a `purge` step to the history of
    /// each, with `description`. No plugin is called: what the instance has
    /// in its backend stays there.
    pub async fn purge_instance(
        &self,
        preview: &PurgePreview,
        description: &str,
    ) -> Result<PurgeOutcome, StateError> {
        let id = &preview.instance.id;
        let mut write = self.begin_write().await?;
        let instance = sqlx::query_as::<_, InstanceRow>(SELECT_INSTANCE_SUMMARY)
            .bind(id)
            .fetch_optional(&mut *write.transaction)
            .await?;
        let Some(instance) = instance else {
            return Ok(PurgeOutcome::Gone);
        };
        let bindings = sqlx::query_as::<_, BindingRow>(SELECT_BINDING_SUMMARIES)
            .bind(id)
            .fetch_all(&mut *write.transaction)
            .await?
            .into_iter()
            .map(BindingSummary::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if InstanceSummary::try_from(instance)? != preview.instance || bindings != preview.bindings
        {
            return Ok(PurgeOutcome::Changed);
        }
        sqlx::query(DELETE_BINDINGS)
            .bind(id)
            .execute(&mut *write.transaction)
            .await?;
        sqlx::query(DELETE_INSTANCE)
            .bind(id)
            .execute(&mut *write.transaction)
            .await?;
        let purged =
            std::iter::once((INSTANCE, id)).chain(bindings.iter().map(|b| (BINDING, &b.id)));
        for (kind, resource_id) in purged {
            sqlx::query(INSERT_PURGE_HISTORY)
                .bind(kind)
                .bind(resource_id)
                .bind(new_purge_id())
                .bind(PURGE_KIND)
                .bind(column_text(OperationPhase::Succeeded))
                .bind(description)
                .execute(&mut *write.transaction)
                .await?;
        }
        write.transaction.commit().await?;
        Ok(PurgeOutcome::Purged {
            binding_ids: bindings.into_iter().map(|b| b.id).collect(),
        })
    }

    /// Operations under way (`Calling` or `InProgress`) per resource kind
    /// and phase, zeros included, across every broker sharing the store.
    pub async fn count_running_operations(&self) -> Result<Vec<RunningCount>, StateError> {
        let mut counts = Vec::with_capacity(4);
        for (resource, sql) in [
            (INSTANCE, COUNT_INSTANCES_RUNNING),
            (BINDING, COUNT_BINDINGS_RUNNING),
        ] {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql)
                .bind(column_text(OperationPhase::Calling))
                .bind(column_text(OperationPhase::InProgress))
                .fetch_all(&self.pool)
                .await?;
            for phase in [OperationPhase::Calling, OperationPhase::InProgress] {
                let text = column_text(phase);
                let count = rows
                    .iter()
                    .find(|(found, _)| *found == text)
                    .map_or(0, |(_, count)| *count);
                counts.push(RunningCount {
                    resource,
                    phase,
                    count,
                });
            }
        }
        Ok(counts)
    }
}

/// Parameters in the order `list_instances` binds them: status, service,
/// limit, each only when the filter uses it.
fn list_instances_sql(filter: &InstanceFilter) -> String {
    let mut conditions = Vec::new();
    let mut parameter = 0;
    let mut next = || {
        parameter += 1;
        format!("${parameter}")
    };
    match filter.status {
        StatusFilter::NotDeleted => conditions.push(format!("status <> {}", next())),
        StatusFilter::Only(_) => conditions.push(format!("status = {}", next())),
        StatusFilter::Any => {}
    }
    if filter.service_id.is_some() {
        conditions.push(format!("service_id = {}", next()));
    }
    let mut sql = String::from(
        "SELECT id, service_id, plan_id, status, operation, created_at, updated_at FROM instances",
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC");
    if filter.limit.is_some() {
        sql.push_str(&format!(" LIMIT {}", next()));
    }
    sql
}

/// An id for the history row of a purge, shaped like operation ids.
fn new_purge_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// How a status or phase is stored: its serde name.
pub(super) fn column_text(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => unreachable!("statuses and phases serialize as strings"),
    }
}

fn decode_status(id: &str, text: &str) -> Result<ResourceStatus, StateError> {
    ResourceStatus::deserialize(text.into_deserializer()).map_err(
        |error: serde::de::value::Error| StateError::Corrupt {
            id: id.to_owned(),
            cause: format!("column status: {error}"),
        },
    )
}

fn decode_operation(
    id: &str,
    text: Option<String>,
) -> Result<Option<OperationSummary>, StateError> {
    text.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|error| StateError::Corrupt {
            id: id.to_owned(),
            cause: format!("column operation: {error}"),
        })
}

impl TryFrom<InstanceRow> for InstanceSummary {
    type Error = StateError;

    fn try_from(row: InstanceRow) -> Result<Self, StateError> {
        let status = decode_status(&row.id, &row.status)?;
        let last_operation = decode_operation(&row.id, row.operation)?;
        Ok(Self {
            id: row.id,
            service_id: row.service_id,
            plan_id: row.plan_id,
            status,
            last_operation,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

impl TryFrom<BindingRow> for BindingSummary {
    type Error = StateError;

    fn try_from(row: BindingRow) -> Result<Self, StateError> {
        let status = decode_status(&row.id, &row.status)?;
        let last_operation = decode_operation(&row.id, row.operation)?;
        Ok(Self {
            id: row.id,
            status,
            last_operation,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_hold_the_serde_names() {
        assert_eq!(column_text(ResourceStatus::Deleted), "deleted");
        assert_eq!(column_text(OperationPhase::InProgress), "in_progress");
        for status in [
            ResourceStatus::Creating,
            ResourceStatus::Ready,
            ResourceStatus::Failed,
            ResourceStatus::Deleted,
        ] {
            assert_eq!(decode_status("id", &column_text(status)).ok(), Some(status));
        }
        assert!(decode_status("id", "stuck").is_err());
    }

    #[test]
    fn list_parameters_are_numbered_in_binding_order() {
        let filter = InstanceFilter {
            service_id: Some("s".to_owned()),
            status: StatusFilter::Only(ResourceStatus::Failed),
            limit: Some(10),
        };
        let sql = list_instances_sql(&filter);
        assert!(
            sql.contains("status = $1 AND service_id = $2") && sql.ends_with("LIMIT $3"),
            "{sql}"
        );
        let sql = list_instances_sql(&InstanceFilter {
            service_id: Some("s".to_owned()),
            status: StatusFilter::Any,
            limit: None,
        });
        assert!(
            sql.contains("WHERE service_id = $1") && !sql.contains("LIMIT"),
            "{sql}"
        );
    }
}
