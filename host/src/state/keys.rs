//! The encryption keys of the stored credentials: a store opens only with
//! the keys its credentials need, and `wasm-broker rotate-key` re-encrypts
//! them all with a new one, and the plugins' kv values too. (How one value
//! is sealed is in `tables` and `kv`.)

use super::kv::{kv_context, open_value};
use super::tables::credentials;
use super::{StateError, StateStore};
use crate::config::StateConfig;
use crate::secrets::{EncryptionKey, KeyId, Keyring};

/// Credentials re-encrypted per transaction by a key rotation: small enough
/// that a broker serving meanwhile waits only briefly for the write lock.
pub(super) const ROTATION_BATCH: i64 = 100;

impl StateStore {
    /// Re-encrypts every stored credential not yet encrypted with `new_key`,
    /// reading with the keys of `config`. Each batch commits on its own, so
    /// a rotation cut short resumes when run again, and a broker serving
    /// meanwhile is held up only briefly. Returns how many were re-encrypted.
    pub async fn rotate_encryption_key(
        config: &StateConfig,
        new_key: EncryptionKey,
    ) -> Result<u64, StateError> {
        let keyring = Keyring::from_config(config)?.rotating_to(new_key);
        let store = Self::open_with_keys(config, keyring).await?;
        let rotated = store.reencrypt_credentials().await;
        let resealed = match rotated {
            Ok(_) => store.reseal_kv_values().await,
            Err(_) => Ok(0),
        };
        store.close().await;
        let resealed = resealed?;
        if resealed > 0 {
            tracing::info!(values = resealed, "re-encrypted the plugins' kv values");
        }
        rotated
    }

    /// Refuses a store holding credentials that no configured key decrypts:
    /// serving it would fail every fetch and unbind of those bindings.
    /// Damaged values are left to be reported when their binding is read.
    pub(super) async fn check_credentials_readable(&self) -> Result<(), StateError> {
        let mut connection = self.pool.acquire().await?;
        let headers = credentials::count_results_by_header(&mut connection).await?;
        let count: i64 = headers.iter().map(|(_, count)| count).sum();
        if count > 0 && self.keyring.is_empty() {
            return Err(StateError::CredentialsWithoutKey {
                count,
                key_env: self.keyring.key_env().to_owned(),
            });
        }
        for (header, count) in headers {
            let Ok(key_id) = crate::secrets::sealed_key_id(&header) else {
                continue;
            };
            if let Err(cause) = self.keyring.key_for(key_id) {
                return Err(StateError::CredentialsUnreadable { count, cause });
            }
        }
        Ok(())
    }

    async fn reencrypt_credentials(&self) -> Result<u64, StateError> {
        let target: KeyId = self.keyring.require_current()?.id();
        let mut rotated = 0;
        loop {
            let mut write = self.begin_write().await?;
            let batch = credentials::read_results_not_sealed_with(
                &mut write.transaction,
                target,
                ROTATION_BATCH,
            )
            .await?;
            if batch.is_empty() {
                return Ok(rotated);
            }
            for (id, sealed) in &batch {
                let resealed = credentials::reseal_result(&self.keyring, id, sealed)?;
                credentials::replace_result(&mut write.transaction, id, &resealed).await?;
            }
            write.transaction.commit().await?;
            rotated += batch.len() as u64;
        }
    }

    /// Seals with the current key every kv value not sealed with it: those
    /// of the former keys, and those stored in clear (before kv values were
    /// sealed, or by a broker without a key). Batched as credentials are.
    async fn reseal_kv_values(&self) -> Result<u64, StateError> {
        let target = self.keyring.require_current()?.id();
        let key_id = target.as_bytes();
        let mut resealed = 0;
        loop {
            let mut write = self.begin_write().await?;
            let batch: Vec<(String, String, Vec<u8>, i64)> =
                sqlx::query_as(SELECT_KV_NOT_SEALED_WITH)
                    .bind(key_id)
                    .bind(i32::try_from(key_id.len()).unwrap_or(i32::MAX))
                    .bind(ROTATION_BATCH)
                    .fetch_all(&mut *write.transaction)
                    .await?;
            if batch.is_empty() {
                return Ok(resealed);
            }
            for (plugin, key, stored, sealed) in batch {
                let value = open_value(&self.keyring, &plugin, &key, stored, sealed)?;
                let value = self.keyring.seal(&value, &kv_context(&plugin, &key))?;
                sqlx::query(UPDATE_KV_SEALED)
                    .bind(&plugin)
                    .bind(&key)
                    .bind(value)
                    .execute(&mut *write.transaction)
                    .await?;
                resealed += 1;
            }
            write.transaction.commit().await?;
        }
    }
}

/// kv values in clear, or whose key id (bytes 2..9 of the header) is not `$1`.
const SELECT_KV_NOT_SEALED_WITH: &str = "\
    SELECT plugin, key, value, sealed FROM plugin_kv \
    WHERE sealed = 0 OR substr(value, 2, $2) IS DISTINCT FROM $1 LIMIT $3";

const UPDATE_KV_SEALED: &str =
    "UPDATE plugin_kv SET value = $3, sealed = 1 WHERE plugin = $1 AND key = $2";
