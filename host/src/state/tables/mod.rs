//! Rows <-> records: the SQL of the state tables (schemas in
//! `host/migrations/{sqlite,postgres}`) and the JSON documents stored in
//! them. One text per statement serves both backends unless marked.
//!
//! This file holds the rows of `instances` and `bindings`; `credentials`
//! the sealed column of `bindings` that holds what a binding handed out;
//! `history` the `operations` table. (`plugin_kv` and `replicas` each have
//! a single user, whose file holds their SQL.)

pub(super) mod credentials;
pub(super) mod history;

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{BindingRecord, InstanceRecord, StateError};
use crate::lifecycle::{OperationPhase, OperationRecord, ResourceStatus};
use crate::model::{Binding, Instance};
use crate::secrets::Keyring;

pub(super) const SELECT_INSTANCE: &str =
    "SELECT id, status, record, operation FROM instances WHERE id = $1";

pub(super) const SELECT_INSTANCES_IN_PHASE: &str =
    "SELECT id, status, record, operation FROM instances WHERE operation_phase = $1";

/// PostgreSQL only. `$1` is `Calling`, `$2` the replica asking (whose own
/// calls are alive), `$3` the lease in seconds.
const SELECT_INSTANCES_OF_EXPIRED_REPLICAS: &str = "\
    SELECT id, status, record, operation FROM instances \
    WHERE operation_phase = $1 AND calling_replica IS DISTINCT FROM $2 AND NOT EXISTS ( \
        SELECT 1 FROM replicas WHERE replicas.id = instances.calling_replica \
        AND replicas.heartbeat_at > clock_timestamp() - make_interval(secs => $3))";

/// `$8` is `Deleted`: a create that reuses a deleted id makes a new resource,
/// so it gets a new creation time. `$9` is the replica writing, stored only
/// with a `Calling` operation: the replica that calls the plugin.
pub(super) const UPSERT_INSTANCE: &str = "\
    INSERT INTO instances (id, service_id, plan_id, status, record, operation, operation_phase, calling_replica) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $9) \
    ON CONFLICT (id) DO UPDATE SET \
        service_id = excluded.service_id, plan_id = excluded.plan_id, status = excluded.status, \
        record = excluded.record, operation = excluded.operation, operation_phase = excluded.operation_phase, \
        calling_replica = excluded.calling_replica, \
        created_at = CASE WHEN instances.status = $8 THEN excluded.created_at ELSE instances.created_at END, \
        updated_at = excluded.updated_at";

pub(super) const SELECT_BINDING: &str =
    "SELECT id, status, record, result, operation FROM bindings WHERE id = $1";

pub(super) const SELECT_LIVE_BINDINGS: &str = "\
    SELECT id, status, record, result, operation FROM bindings \
    WHERE instance_id = $1 AND status <> $2 ORDER BY created_at, id";

pub(super) const SELECT_BINDINGS_IN_PHASE: &str =
    "SELECT id, status, record, result, operation FROM bindings WHERE operation_phase = $1";

/// PostgreSQL only, as for instances.
const SELECT_BINDINGS_OF_EXPIRED_REPLICAS: &str = "\
    SELECT id, status, record, result, operation FROM bindings \
    WHERE operation_phase = $1 AND calling_replica IS DISTINCT FROM $2 AND NOT EXISTS ( \
        SELECT 1 FROM replicas WHERE replicas.id = bindings.calling_replica \
        AND replicas.heartbeat_at > clock_timestamp() - make_interval(secs => $3))";

/// `$8` is `Deleted` and `$9` the replica writing, as for instances.
pub(super) const UPSERT_BINDING: &str = "\
    INSERT INTO bindings (id, instance_id, status, record, result, operation, operation_phase, calling_replica) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $9) \
    ON CONFLICT (id) DO UPDATE SET \
        instance_id = excluded.instance_id, status = excluded.status, record = excluded.record, \
        result = excluded.result, operation = excluded.operation, operation_phase = excluded.operation_phase, \
        calling_replica = excluded.calling_replica, \
        created_at = CASE WHEN bindings.status = $8 THEN excluded.created_at ELSE bindings.created_at END, \
        updated_at = excluded.updated_at";

/// A row of `instances` or `bindings` as either driver returns it: sqlx's
/// (reads and PostgreSQL) or rusqlite's (SQLite's batch writer, see
/// `state::writer`). Errors are the driver's message, for `corrupt`.
pub(super) trait StoredRow {
    fn text(&self, column: &str) -> Result<String, String>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, String>;
    fn optional_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, String>;
}

impl StoredRow for AnyRow {
    fn text(&self, column: &str) -> Result<String, String> {
        self.try_get(column).map_err(|error| error.to_string())
    }

    fn optional_text(&self, column: &str) -> Result<Option<String>, String> {
        self.try_get(column).map_err(|error| error.to_string())
    }

    fn optional_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, String> {
        self.try_get(column).map_err(|error| error.to_string())
    }
}

/// The values `UPSERT_INSTANCE` and `UPSERT_BINDING` bind, `$1` to `$9` in
/// order (bindings have no service or plan: their `$2` is the instance id
/// and their `$3` the status, and so on, see [`binding_columns`]).
pub(super) struct Columns<'a> {
    pub(super) values: [Column<'a>; 9],
}

/// One bound value (`None` is NULL).
pub(super) enum Column<'a> {
    Text(Option<Cow<'a, str>>),
    Bytes(Option<Vec<u8>>),
}

impl<'a> Column<'a> {
    fn text(text: &'a str) -> Self {
        Column::Text(Some(Cow::Borrowed(text)))
    }

    fn owned(text: String) -> Self {
        Column::Text(Some(Cow::Owned(text)))
    }
}

impl Columns<'_> {
    /// The statement with every value bound, for sqlx.
    fn bind<'q>(
        &'q self,
        statement: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        self.values
            .iter()
            .fold(sqlx::query(statement), |query, value| match value {
                Column::Text(text) => query.bind(text.as_deref()),
                Column::Bytes(bytes) => query.bind(bytes.as_deref()),
            })
    }
}

/// Which `Calling` operations were cut short by a crash.
pub(super) enum Interrupted<'a> {
    /// All of them (SQLite, at startup: one broker per store).
    All,
    /// Those whose calling replica is not `replica` and has not renewed its
    /// lease for `lease` (PostgreSQL).
    LeaseExpired { replica: &'a str, lease: Duration },
}

impl ResourceStatus {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Creating => "creating",
            ResourceStatus::Ready => "ready",
            ResourceStatus::Failed => "failed",
            ResourceStatus::Deleted => "deleted",
        }
    }

    fn from_column(text: &str) -> Option<Self> {
        [
            ResourceStatus::Creating,
            ResourceStatus::Ready,
            ResourceStatus::Failed,
            ResourceStatus::Deleted,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

impl OperationPhase {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            OperationPhase::Calling => "calling",
            OperationPhase::InProgress => "in_progress",
            OperationPhase::Succeeded => "succeeded",
            OperationPhase::Failed => "failed",
        }
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
    connection: &mut AnyConnection,
    id: &str,
) -> Result<Option<InstanceRecord>, StateError> {
    let row = sqlx::query(SELECT_INSTANCE)
        .bind(id)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(decode_instance).transpose()
}

pub(super) async fn read_interrupted_instances(
    connection: &mut AnyConnection,
    interrupted: &Interrupted<'_>,
) -> Result<Vec<InstanceRecord>, StateError> {
    let rows = interrupted_query(
        interrupted,
        SELECT_INSTANCES_IN_PHASE,
        SELECT_INSTANCES_OF_EXPIRED_REPLICAS,
    )
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode_instance).collect()
}

/// `all` or `expired` with their parameters bound, as `interrupted` says.
fn interrupted_query<'q>(
    interrupted: &Interrupted<'q>,
    all: &'q str,
    expired: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let calling = OperationPhase::Calling.as_str();
    match *interrupted {
        Interrupted::All => sqlx::query(all).bind(calling),
        Interrupted::LeaseExpired { replica, lease } => sqlx::query(expired)
            .bind(calling)
            .bind(replica)
            .bind(lease.as_secs_f64()),
    }
}

pub(super) async fn write_instance(
    connection: &mut AnyConnection,
    replica: &str,
    record: &InstanceRecord,
) -> Result<(), StateError> {
    instance_columns(replica, record)?
        .bind(UPSERT_INSTANCE)
        .execute(connection)
        .await?;
    Ok(())
}

/// What `UPSERT_INSTANCE` stores for `record`, written by `replica`.
pub(super) fn instance_columns<'a>(
    replica: &'a str,
    record: &'a InstanceRecord,
) -> Result<Columns<'a>, StateError> {
    let id = &record.instance.id;
    let document = InstanceDocumentRef {
        instance: &record.instance,
        dashboard_url: &record.dashboard_url,
        metadata: &record.metadata,
    };
    let [operation, phase, deleted, calling] =
        operation_columns(id, replica, record.operation.as_ref())?;
    Ok(Columns {
        values: [
            Column::text(id),
            Column::text(&record.instance.service_id),
            Column::text(&record.instance.plan_id),
            Column::text(record.status.as_str()),
            Column::owned(encode(id, &document)?),
            operation,
            phase,
            deleted,
            calling,
        ],
    })
}

pub(super) async fn read_binding(
    connection: &mut AnyConnection,
    keyring: &Keyring,
    id: &str,
) -> Result<Option<BindingRecord>, StateError> {
    let row = sqlx::query(SELECT_BINDING)
        .bind(id)
        .fetch_optional(connection)
        .await?;
    row.as_ref()
        .map(|row| decode_binding(row, keyring))
        .transpose()
}

pub(super) async fn read_live_bindings(
    connection: &mut AnyConnection,
    keyring: &Keyring,
    instance_id: &str,
) -> Result<Vec<BindingRecord>, StateError> {
    let rows = sqlx::query(SELECT_LIVE_BINDINGS)
        .bind(instance_id)
        .bind(ResourceStatus::Deleted.as_str())
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| decode_binding(row, keyring))
        .collect()
}

pub(super) async fn read_interrupted_bindings(
    connection: &mut AnyConnection,
    keyring: &Keyring,
    interrupted: &Interrupted<'_>,
) -> Result<Vec<BindingRecord>, StateError> {
    let rows = interrupted_query(
        interrupted,
        SELECT_BINDINGS_IN_PHASE,
        SELECT_BINDINGS_OF_EXPIRED_REPLICAS,
    )
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| decode_binding(row, keyring))
        .collect()
}

pub(super) async fn write_binding(
    connection: &mut AnyConnection,
    keyring: &Keyring,
    replica: &str,
    record: &BindingRecord,
) -> Result<(), StateError> {
    binding_columns(keyring, replica, record)?
        .bind(UPSERT_BINDING)
        .execute(connection)
        .await?;
    Ok(())
}

/// What `UPSERT_BINDING` stores for `record` (its credentials sealed with
/// `keyring`'s current key), written by `replica`.
pub(super) fn binding_columns<'a>(
    keyring: &Keyring,
    replica: &'a str,
    record: &'a BindingRecord,
) -> Result<Columns<'a>, StateError> {
    let id = &record.binding.id;
    let result = record
        .result
        .as_ref()
        .map(|result| credentials::seal_result(keyring, id, result))
        .transpose()?;
    let [operation, phase, deleted, calling] =
        operation_columns(id, replica, record.operation.as_ref())?;
    Ok(Columns {
        values: [
            Column::text(id),
            Column::text(&record.binding.instance_id),
            Column::text(record.status.as_str()),
            Column::owned(encode(id, &record.binding)?),
            Column::Bytes(result),
            operation,
            phase,
            deleted,
            calling,
        ],
    })
}

/// `$6` to `$9` of both upserts: the operation, its phase, `Deleted` and
/// the calling replica.
fn operation_columns<'a>(
    id: &str,
    replica: &'a str,
    operation: Option<&'a OperationRecord>,
) -> Result<[Column<'a>; 4], StateError> {
    Ok([
        Column::Text(
            operation
                .map(|op| encode(id, op))
                .transpose()?
                .map(Cow::Owned),
        ),
        Column::Text(operation.map(|op| Cow::Borrowed(op.phase.as_str()))),
        Column::text(ResourceStatus::Deleted.as_str()),
        Column::Text(calling_replica(replica, operation).map(Cow::Borrowed)),
    ])
}

/// The `calling_replica` column: the replica writing a `Calling` operation
/// is the one calling the plugin (only the replica that started a call
/// writes the record before the call ends).
fn calling_replica<'a>(replica: &'a str, operation: Option<&OperationRecord>) -> Option<&'a str> {
    operation
        .is_some_and(|op| op.phase == OperationPhase::Calling)
        .then_some(replica)
}

pub(super) fn decode_instance(row: &impl StoredRow) -> Result<InstanceRecord, StateError> {
    let id = row.text("id").map_err(|error| corrupt("?", "id", error))?;
    let status = decode_status(&id, row)?;
    let document: InstanceDocument = decode_json(&id, "record", row.text("record"))?;
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

pub(super) fn decode_binding(
    row: &impl StoredRow,
    keyring: &Keyring,
) -> Result<BindingRecord, StateError> {
    let id = row.text("id").map_err(|error| corrupt("?", "id", error))?;
    let status = decode_status(&id, row)?;
    let binding: Binding = decode_json(&id, "record", row.text("record"))?;
    if binding.id != id {
        return Err(corrupt(
            &id,
            "record",
            format!("it describes binding {}", binding.id),
        ));
    }
    let result = row
        .optional_bytes("result")
        .map_err(|error| corrupt(&id, "result", error))?;
    let result = result
        .map(|sealed| credentials::open_result(keyring, &id, &sealed))
        .transpose()?;
    Ok(BindingRecord {
        binding,
        status,
        result,
        operation: decode_operation(&id, row)?,
    })
}

fn decode_status(id: &str, row: &impl StoredRow) -> Result<ResourceStatus, StateError> {
    let text = row
        .text("status")
        .map_err(|error| corrupt(id, "status", error))?;
    ResourceStatus::from_column(&text)
        .ok_or_else(|| corrupt(id, "status", format!("unknown status {text:?}")))
}

fn decode_operation(id: &str, row: &impl StoredRow) -> Result<Option<OperationRecord>, StateError> {
    let text = row
        .optional_text("operation")
        .map_err(|error| corrupt(id, "operation", error))?;
    text.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|error| corrupt(id, "operation", error))
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    id: &str,
    column: &str,
    text: Result<String, String>,
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
