//! The plugins' private key-value store (the `kv` capability): one
//! `plugin_kv` table, keyed by plugin and key, so no plugin reads another's
//! keys. Its writes take this process's turn to write like every other, but
//! no transaction: each is one statement.

use super::{StateError, StateStore};

pub(super) const KEYS_IN_RANGE: &str =
    "SELECT key FROM plugin_kv WHERE plugin = $1 AND key >= $2 AND key < $3 ORDER BY key";

pub(super) const KEYS_FROM: &str =
    "SELECT key FROM plugin_kv WHERE plugin = $1 AND key >= $2 ORDER BY key";

impl StateStore {
    /// The plugin's private key-value store (`kv` capability).
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let value =
            sqlx::query_scalar("SELECT value FROM plugin_kv WHERE plugin = $1 AND key = $2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(value)
    }

    pub async fn kv_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        let _turn = self.write_gate.lock().await;
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
        )
        .bind(plugin)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StateError> {
        let _turn = self.write_gate.lock().await;
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
