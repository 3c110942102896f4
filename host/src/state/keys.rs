//! The encryption keys of the stored credentials: a store opens only with
//! the keys its credentials need, and `wasm-broker rotate-key` re-encrypts
//! them all with a new one. (How one value is sealed is in `tables`.)

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
        store.close().await;
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
}
