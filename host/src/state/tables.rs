//! Rows <-> records: the SQL of the state tables (schema in
//! `host/migrations/`) and the JSON documents stored in them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::model::{Binding, BindingResult, Instance};

use super::{
    BindingRecord, InstanceRecord, OperationPhase, OperationRecord, ResourceStatus, StateError,
};

pub(super) const SELECT_INSTANCE: &str =
    "SELECT id, status, record, operation FROM instances WHERE id = ?1";

pub(super) const SELECT_INSTANCES_IN_PHASE: &str =
    "SELECT id, status, record, operation FROM instances WHERE operation_phase = ?1";

/// `?8` is `Deleted`: a create that reuses a deleted id makes a new resource,
/// so it gets a new creation time.
const UPSERT_INSTANCE: &str = "\
    INSERT INTO instances (id, service_id, plan_id, status, record, operation, operation_phase) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
    ON CONFLICT (id) DO UPDATE SET \
        service_id = excluded.service_id, plan_id = excluded.plan_id, status = excluded.status, \
        record = excluded.record, operation = excluded.operation, operation_phase = excluded.operation_phase, \
        created_at = CASE WHEN instances.status = ?8 THEN excluded.created_at ELSE instances.created_at END, \
        updated_at = excluded.updated_at";

pub(super) const SELECT_BINDING: &str =
    "SELECT id, status, record, result, operation FROM bindings WHERE id = ?1";

pub(super) const SELECT_LIVE_BINDINGS: &str = "\
    SELECT id, status, record, result, operation FROM bindings \
    WHERE instance_id = ?1 AND status <> ?2 ORDER BY created_at, id";

pub(super) const SELECT_BINDINGS_IN_PHASE: &str =
    "SELECT id, status, record, result, operation FROM bindings WHERE operation_phase = ?1";

/// `?8` is `Deleted`, as for instances.
const UPSERT_BINDING: &str = "\
    INSERT INTO bindings (id, instance_id, status, record, result, operation, operation_phase) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
    ON CONFLICT (id) DO UPDATE SET \
        instance_id = excluded.instance_id, status = excluded.status, record = excluded.record, \
        result = excluded.result, operation = excluded.operation, operation_phase = excluded.operation_phase, \
        created_at = CASE WHEN bindings.status = ?8 THEN excluded.created_at ELSE bindings.created_at END, \
        updated_at = excluded.updated_at";

const INSERT_HISTORY: &str = "\
    INSERT INTO operations (resource_kind, resource_id, operation_id, kind, phase, description) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

pub(super) const KV_KEYS_IN_RANGE: &str =
    "SELECT key FROM plugin_kv WHERE plugin = ?1 AND key >= ?2 AND key < ?3 ORDER BY key";

pub(super) const KV_KEYS_FROM: &str =
    "SELECT key FROM plugin_kv WHERE plugin = ?1 AND key >= ?2 ORDER BY key";

/// `resource_kind` in the history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub(super) enum ResourceKind {
    Instance,
    Binding,
}

/// What identifies one step of an operation in the history: a new id or a
/// new phase is a new step, anything else is detail.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OperationMark(Option<(String, OperationPhase)>);

impl OperationMark {
    pub(super) fn of(operation: Option<&OperationRecord>) -> Self {
        Self(operation.map(|op| (op.id.clone(), op.phase)))
    }
}

/// The `record` column of `instances`: the instance, nested rather than
/// flattened so a field added to `Instance` cannot collide with ours.
#[derive(Serialize)]
struct InstanceDocumentRef<'a> {
    instance: &'a Instance,
    dashboard_url: &'a Option<String>,
    metadata: &'a Option<Value>,
}

#[derive(Deserialize)]
struct InstanceDocument {
    instance: Instance,
    dashboard_url: Option<String>,
    metadata: Option<Value>,
}

pub(super) async fn read_instance(
    connection: &mut SqliteConnection,
    id: &str,
) -> Result<Option<InstanceRecord>, StateError> {
    let row = sqlx::query(SELECT_INSTANCE)
        .bind(id)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(decode_instance).transpose()
}

pub(super) async fn read_instances_in_phase(
    connection: &mut SqliteConnection,
    phase: OperationPhase,
) -> Result<Vec<InstanceRecord>, StateError> {
    let rows = sqlx::query(SELECT_INSTANCES_IN_PHASE)
        .bind(phase)
        .fetch_all(connection)
        .await?;
    rows.iter().map(decode_instance).collect()
}

pub(super) async fn write_instance(
    connection: &mut SqliteConnection,
    record: &InstanceRecord,
) -> Result<(), StateError> {
    let id = &record.instance.id;
    let document = InstanceDocumentRef {
        instance: &record.instance,
        dashboard_url: &record.dashboard_url,
        metadata: &record.metadata,
    };
    sqlx::query(UPSERT_INSTANCE)
        .bind(id)
        .bind(&record.instance.service_id)
        .bind(&record.instance.plan_id)
        .bind(record.status)
        .bind(encode(id, &document)?)
        .bind(
            record
                .operation
                .as_ref()
                .map(|op| encode(id, op))
                .transpose()?,
        )
        .bind(record.operation.as_ref().map(|op| op.phase))
        .bind(ResourceStatus::Deleted)
        .execute(connection)
        .await?;
    Ok(())
}

pub(super) async fn read_binding(
    connection: &mut SqliteConnection,
    id: &str,
) -> Result<Option<BindingRecord>, StateError> {
    let row = sqlx::query(SELECT_BINDING)
        .bind(id)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(decode_binding).transpose()
}

pub(super) async fn read_live_bindings(
    connection: &mut SqliteConnection,
    instance_id: &str,
) -> Result<Vec<BindingRecord>, StateError> {
    let rows = sqlx::query(SELECT_LIVE_BINDINGS)
        .bind(instance_id)
        .bind(ResourceStatus::Deleted)
        .fetch_all(connection)
        .await?;
    rows.iter().map(decode_binding).collect()
}

pub(super) async fn read_bindings_in_phase(
    connection: &mut SqliteConnection,
    phase: OperationPhase,
) -> Result<Vec<BindingRecord>, StateError> {
    let rows = sqlx::query(SELECT_BINDINGS_IN_PHASE)
        .bind(phase)
        .fetch_all(connection)
        .await?;
    rows.iter().map(decode_binding).collect()
}

pub(super) async fn write_binding(
    connection: &mut SqliteConnection,
    record: &BindingRecord,
) -> Result<(), StateError> {
    let id = &record.binding.id;
    let result = record.result.as_ref().map(serde_json::to_vec).transpose();
    sqlx::query(UPSERT_BINDING)
        .bind(id)
        .bind(&record.binding.instance_id)
        .bind(record.status)
        .bind(encode(id, &record.binding)?)
        .bind(result.map_err(|source| StateError::Encode {
            id: id.clone(),
            source,
        })?)
        .bind(
            record
                .operation
                .as_ref()
                .map(|op| encode(id, op))
                .transpose()?,
        )
        .bind(record.operation.as_ref().map(|op| op.phase))
        .bind(ResourceStatus::Deleted)
        .execute(connection)
        .await?;
    Ok(())
}

/// Appends `after` to the history if it is a new step compared to `before`.
pub(super) async fn append_history(
    connection: &mut SqliteConnection,
    kind: ResourceKind,
    resource_id: &str,
    before: &OperationMark,
    after: &Option<OperationRecord>,
) -> Result<(), StateError> {
    let Some(operation) = after else {
        return Ok(());
    };
    if *before == OperationMark::of(Some(operation)) {
        return Ok(());
    }
    sqlx::query(INSERT_HISTORY)
        .bind(kind)
        .bind(resource_id)
        .bind(&operation.id)
        .bind(operation.kind.as_str())
        .bind(operation.phase)
        .bind(&operation.description)
        .execute(connection)
        .await?;
    Ok(())
}

fn decode_instance(row: &SqliteRow) -> Result<InstanceRecord, StateError> {
    let id: String = row.try_get("id")?;
    let status = row
        .try_get("status")
        .map_err(|error| corrupt(&id, "status", error))?;
    let document: InstanceDocument = decode_json(&id, "record", row.try_get("record"))?;
    if document.instance.id != id {
        return Err(corrupt(
            &id,
            "record",
            format!("it describes instance {}", document.instance.id),
        ));
    }
    Ok(InstanceRecord {
        instance: document.instance,
        status,
        dashboard_url: document.dashboard_url,
        metadata: document.metadata,
        operation: decode_operation(&id, row)?,
    })
}

fn decode_binding(row: &SqliteRow) -> Result<BindingRecord, StateError> {
    let id: String = row.try_get("id")?;
    let status = row
        .try_get("status")
        .map_err(|error| corrupt(&id, "status", error))?;
    let binding: Binding = decode_json(&id, "record", row.try_get("record"))?;
    if binding.id != id {
        return Err(corrupt(
            &id,
            "record",
            format!("it describes binding {}", binding.id),
        ));
    }
    let result = row
        .try_get::<Option<Vec<u8>>, _>("result")
        .map_err(|error| corrupt(&id, "result", error))?;
    let result: Option<BindingResult> = result
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|error| corrupt(&id, "result", error))?;
    Ok(BindingRecord {
        binding,
        status,
        result,
        operation: decode_operation(&id, row)?,
    })
}

fn decode_operation(id: &str, row: &SqliteRow) -> Result<Option<OperationRecord>, StateError> {
    let text: Option<String> = row
        .try_get("operation")
        .map_err(|error| corrupt(id, "operation", error))?;
    text.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|error| corrupt(id, "operation", error))
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    id: &str,
    column: &str,
    text: Result<String, sqlx::Error>,
) -> Result<T, StateError> {
    let text = text.map_err(|error| corrupt(id, column, error))?;
    serde_json::from_str(&text).map_err(|error| corrupt(id, column, error))
}

fn encode(id: &str, value: &impl Serialize) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|source| StateError::Encode {
        id: id.to_owned(),
        source,
    })
}

fn corrupt(id: &str, column: &str, cause: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        id: id.to_owned(),
        cause: format!("column {column}: {cause}"),
    }
}
