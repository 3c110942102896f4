//! The `result` column of `bindings`: what the platform got for a binding,
//! credentials included, sealed with the store's current key (see
//! [`crate::secrets`]) and bound to its binding. Also the statements key
//! checks and rotations run on that column, which read only headers and
//! sealed bytes.

use sqlx::AnyConnection;

use super::corrupt;
use crate::model::BindingResult;
use crate::secrets::{self, KeyId, Keyring, SecretsError};
use crate::state::StateError;

/// The header of each stored credential, counted: which keys the store
/// needs. Headers hold no secret.
const COUNT_RESULTS_BY_HEADER: &str = "\
    SELECT substr(result, 1, $1) AS header, count(*) FROM bindings \
    WHERE result IS NOT NULL GROUP BY header";

/// Credentials whose key id (bytes 2..9 of the header) is not `$1`.
const SELECT_RESULTS_NOT_SEALED_WITH: &str = "\
    SELECT id, result FROM bindings \
    WHERE result IS NOT NULL AND substr(result, 2, $2) IS DISTINCT FROM $1 LIMIT $3";

const UPDATE_RESULT: &str = "UPDATE bindings SET result = $2 WHERE id = $1";

/// (header, how many credentials have it).
pub(in crate::state) async fn count_results_by_header(
    connection: &mut AnyConnection,
) -> Result<Vec<(Vec<u8>, i64)>, StateError> {
    // i32: PostgreSQL's substr takes an integer, and does not narrow a bigint.
    let header_len = i32::try_from(secrets::HEADER_LEN).unwrap_or(i32::MAX);
    Ok(sqlx::query_as(COUNT_RESULTS_BY_HEADER)
        .bind(header_len)
        .fetch_all(connection)
        .await?)
}

/// Up to `limit` (binding id, sealed credentials) not sealed with `key`.
pub(in crate::state) async fn read_results_not_sealed_with(
    connection: &mut AnyConnection,
    key: KeyId,
    limit: i64,
) -> Result<Vec<(String, Vec<u8>)>, StateError> {
    let key_id = key.as_bytes();
    Ok(sqlx::query_as(SELECT_RESULTS_NOT_SEALED_WITH)
        .bind(key_id)
        .bind(i32::try_from(key_id.len()).unwrap_or(i32::MAX))
        .bind(limit)
        .fetch_all(connection)
        .await?)
}

pub(in crate::state) async fn replace_result(
    connection: &mut AnyConnection,
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
pub(in crate::state) fn reseal_result(
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

pub(super) fn seal_result(
    keyring: &Keyring,
    id: &str,
    result: &BindingResult,
) -> Result<Vec<u8>, StateError> {
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

pub(super) fn open_result(
    keyring: &Keyring,
    id: &str,
    sealed: &[u8],
) -> Result<BindingResult, StateError> {
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
