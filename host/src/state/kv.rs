//! The plugins' private key-value store (the `kv` capability): one
//! `plugin_kv` table, keyed by plugin and key, so no plugin reads another's
//! keys. Its writes take this process's turn to write like every other, but
//! no transaction: a write is its quota check and one statement.
//!
//! Values are sealed with the credentials key (see [`crate::secrets`]),
//! bound to their plugin and key, whenever a key is configured (`sealed` =
//! 1); rows from before, or from a broker without a key, are read in clear
//! until `rotate-key` seals them.

use super::{StateBackend, StateError, StateStore};
use crate::secrets::Keyring;

/// What one plugin may keep in its kv store: keys, and bytes of keys and
/// values as stored (a sealed value is 37 bytes longer than the plugin's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    pub max_keys: u64,
    pub max_bytes: u64,
}

/// How a write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    Stored,
    /// Refused, storing nothing: it would take the plugin past its quota
    /// (the reason says which limit).
    OverQuota(String),
}

/// The plugin's keys and bytes, except those of key `$2` (which a write
/// replaces). Byte lengths: SQLite's `length` counts characters of text.
const USAGE_SQLITE: &str = "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) \
     FROM plugin_kv WHERE plugin = $1 AND key <> $2";
const USAGE_POSTGRES: &str = "SELECT count(*), coalesce(sum(octet_length(key) + length(value)), 0) \
     FROM plugin_kv WHERE plugin = $1 AND key <> $2";

/// What a kv value is sealed for: its plugin and key (the plugin's length
/// first, so no two pairs give the same bytes), and this table.
pub(super) fn kv_context(plugin: &str, key: &str) -> Vec<u8> {
    format!("plugin_kv:{}:{plugin}:{key}", plugin.len()).into_bytes()
}

/// A stored value as the plugin wrote it.
pub(super) fn open_value(
    keyring: &Keyring,
    plugin: &str,
    key: &str,
    stored: Vec<u8>,
    sealed: i64,
) -> Result<Vec<u8>, StateError> {
    if sealed == 0 {
        return Ok(stored);
    }
    let plaintext = keyring.open(&stored, &kv_context(plugin, key))?;
    Ok(plaintext.to_vec())
}

pub(super) const KEYS_IN_RANGE: &str =
    "SELECT key FROM plugin_kv WHERE plugin = $1 AND key >= $2 AND key < $3 ORDER BY key";

pub(super) const KEYS_FROM: &str =
    "SELECT key FROM plugin_kv WHERE plugin = $1 AND key >= $2 ORDER BY key";

impl StateStore {
    /// The plugin's private key-value store (`kv` capability).
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT value, sealed FROM plugin_kv WHERE plugin = $1 AND key = $2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(stored, sealed)| open_value(&self.keyring, plugin, key, stored, sealed))
            .transpose()
    }

    /// Stores `value` under `key` unless that takes the plugin past `quota`.
    /// Replicas sharing a PostgreSQL store check their quotas apart, so
    /// concurrent writes on several replicas may overshoot by a value each.
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        quota: KvQuota,
    ) -> Result<KvWrite, StateError> {
        let (stored, sealed) = if self.keyring.current_key_id().is_some() {
            (self.keyring.seal(value, &kv_context(plugin, key))?, 1_i64)
        } else {
            (value.to_vec(), 0)
        };
        let _turn = self.write_gate.exclusive().await;
        let usage = match self.backend {
            StateBackend::Sqlite => USAGE_SQLITE,
            StateBackend::Postgres => USAGE_POSTGRES,
        };
        let (keys, bytes): (i64, i64) = sqlx::query_as(usage)
            .bind(plugin)
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        let keys = u64::try_from(keys).unwrap_or(0).saturating_add(1);
        let bytes = u64::try_from(bytes)
            .unwrap_or(0)
            .saturating_add((key.len() + stored.len()) as u64);
        if keys > quota.max_keys {
            return Ok(KvWrite::OverQuota(format!(
                "the plugin's kv store would hold {keys} keys, more than its quota of {} (kv_max_keys)",
                quota.max_keys
            )));
        }
        if bytes > quota.max_bytes {
            return Ok(KvWrite::OverQuota(format!(
                "the plugin's kv store would hold {bytes} bytes, more than its quota of {} (kv_max_bytes)",
                quota.max_bytes
            )));
        }
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value, sealed) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, sealed = excluded.sealed",
        )
        .bind(plugin)
        .bind(key)
        .bind(stored)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(KvWrite::Stored)
    }

    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StateError> {
        let _turn = self.write_gate.exclusive().await;
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keys of `plugin` starting with `prefix`, in byte order.
    pub async fn kv_list_keys(
        &self,
        plugin: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StateError> {
        // A range on the primary key rather than LIKE/GLOB: no wildcard
        // escaping, and the database walks only the matching keys.
        let keys = match prefix_successor(prefix) {
            Some(end) => {
                sqlx::query_scalar(KEYS_IN_RANGE)
                    .bind(plugin)
                    .bind(prefix)
                    .bind(end)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_scalar(KEYS_FROM)
                    .bind(plugin)
                    .bind(prefix)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(keys)
    }
}

/// The smallest string above every string that starts with `prefix`, or
/// `None` when there is none (empty prefix, or only `char::MAX`s). UTF-8
/// byte order, which both backends compare keys in (SQLite's BINARY
/// collation, PostgreSQL's "C"), is code point order, so bumping the last
/// code point that can be bumped is exact.
pub(super) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
