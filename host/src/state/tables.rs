//! Rows <-> records: the SQL of the state tables (schema in
//! `host/migrations/`) and the JSON documents stored in them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::model::{Binding, BindingResult, Instance};
use crate::secrets::{self, KeyId, Keyring, SecretsError};

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

/// The header of each stored credential, counted: which keys the store
/// needs. Headers hold no secret.
const COUNT_RESULTS_BY_HEADER: &str = "\
    SELECT substr(result, 1, ?1) AS header, count(*) FROM bindings \
    WHERE result IS NOT NULL GROUP BY header";

/// Credentials whose key id (bytes 2..9 of the header) is not `?1`.
const SELECT_RESULTS_NOT_SEALED_WITH: &str = "\
    SELECT id, result FROM bindings \
    WHERE result IS NOT NULL AND substr(result, 2, ?2) IS NOT ?1 LIMIT ?3";

const UPDATE_RESULT: &str = "UPDATE bindings SET result = ?2 WHERE id = ?1";

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
    connection: &mut SqliteConnection,
    keyring: &Keyring,
    instance_id: &str,
) -> Result<Vec<BindingRecord>, StateError> {
    let rows = sqlx::query(SELECT_LIVE_BINDINGS)
        .bind(instance_id)
        .bind(ResourceStatus::Deleted)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| decode_binding(row, keyring))
        .collect()
}

pub(super) async fn read_bindings_in_phase(
    connection: &mut SqliteConnection,
    keyring: &Keyring,
    phase: OperationPhase,
) -> Result<Vec<BindingRecord>, StateError> {
    let rows = sqlx::query(SELECT_BINDINGS_IN_PHASE)
        .bind(phase)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| decode_binding(row, keyring))
        .collect()
}

pub(super) async fn write_binding(
    connection: &mut SqliteConnection,
    keyring: &Keyring,
    record: &BindingRecord,
) -> Result<(), StateError> {
    let id = &record.binding.id;
    let result = record
        .result
        .as_ref()
        .map(|result| seal_result(keyring, id, result))
        .transpose()?;
    sqlx::query(UPSERT_BINDING)
        .bind(id)
        .bind(&record.binding.instance_id)
        .bind(record.status)
        .bind(encode(id, &record.binding)?)
        .bind(result)
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

/// (header, how many credentials have it).
pub(super) async fn count_results_by_header(
    connection: &mut SqliteConnection,
) -> Result<Vec<(Vec<u8>, i64)>, StateError> {
    let header_len = i64::try_from(secrets::HEADER_LEN).unwrap_or(i64::MAX);
    Ok(sqlx::query_as(COUNT_RESULTS_BY_HEADER)
        .bind(header_len)
        .fetch_all(connection)
        .await?)
}

/// Up to `limit` (binding id, sealed credentials) not sealed with `key`.
pub(super) async fn read_results_not_sealed_with(
    connection: &mut SqliteConnection,
    key: KeyId,
    limit: i64,
) -> Result<Vec<(String, Vec<u8>)>, StateError> {
    let key_id = key.as_bytes();
    Ok(sqlx::query_as(SELECT_RESULTS_NOT_SEALED_WITH)
        .bind(key_id)
        .bind(i64::try_from(key_id.len()).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(connection)
        .await?)
}

pub(super) async fn replace_result(
    connection: &mut SqliteConnection,
    id: &str,
    sealed: &[u8],
) -> Result<(), StateError> {
    sqlx::query(UPDATE_RESULT)
        .bind(id)
        .bind(sealed)
        .execute(connection)
        .await?;
    Ok(())
}

/// Stored credentials decrypted with any key of `keyring` and encrypted
/// again with its current one.
pub(super) fn reseal_result(
    keyring: &Keyring,
    id: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, StateError> {
    let context = result_context(id);
    let plaintext = keyring
        .open(sealed, &context)
        .map_err(|source| credentials_error(id, source))?;
    keyring
        .seal(&plaintext, &context)
        .map_err(|source| credentials_error(id, source))
}

/// What a `result` value is bound to: its binding, and this column (should
/// another column ever be encrypted with the same key).
fn result_context(id: &str) -> Vec<u8> {
    [b"bindings.result:".as_slice(), id.as_bytes()].concat()
}

fn seal_result(keyring: &Keyring, id: &str, result: &BindingResult) -> Result<Vec<u8>, StateError> {
    let plaintext = serde_json::to_vec(result)
        .map(secrecy::zeroize::Zeroizing::new)
        .map_err(|source| StateError::Encode {
            id: id.to_owned(),
            source,
        })?;
    keyring
        .seal(&plaintext, &result_context(id))
        .map_err(|source| credentials_error(id, source))
}

fn open_result(keyring: &Keyring, id: &str, sealed: &[u8]) -> Result<BindingResult, StateError> {
    let plaintext = keyring
        .open(sealed, &result_context(id))
        .map_err(|source| credentials_error(id, source))?;
    // serde's messages can quote the offending value: only its kind and
    // place go into the error, which is logged and shown to the platform.
    serde_json::from_slice(&plaintext).map_err(|error| {
        corrupt(
            id,
            "result",
            format!(
                "{:?} error at line {} column {}",
                error.classify(),
                error.line(),
                error.column()
            ),
        )
    })
}

/// A damaged value is corrupt; one this broker has no key for, or that was
/// altered or moved, is a credentials problem the operator must act on.
fn credentials_error(id: &str, source: SecretsError) -> StateError {
    match source {
        SecretsError::UnknownFormat { .. } | SecretsError::Truncated { .. } => {
            corrupt(id, "result", source)
        }
        cause => StateError::Credentials {
            id: id.to_owned(),
            cause,
        },
    }
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

fn decode_binding(row: &SqliteRow, keyring: &Keyring) -> Result<BindingRecord, StateError> {
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
    let result = result
        .map(|sealed| open_result(keyring, &id, &sealed))
        .transpose()?;
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
