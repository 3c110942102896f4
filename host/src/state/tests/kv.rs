//! The plugins' key-value store and its prefix ranges.

use super::*;
use crate::state::kv::prefix_successor;

async fn kv_round_trip_and_prefix_listing(scratch: &Scratch) {
    let store = open(scratch).await;
    assert_eq!(store.kv_get("mysql", "a").await.expect("get"), None);
    for key in ["a", "a/b", "a/c", "a%_*?[", "ab", "b", "a/\u{10FFFF}x"] {
        store
            .kv_set("mysql", key, key.as_bytes(), KV_UNLIMITED)
            .await
            .expect("set");
    }
    store
        .kv_set("redis", "a/b", b"other plugin", KV_UNLIMITED)
        .await
        .expect("set");
    store
        .kv_set("mysql", "a/b", &[0, 255, 7], KV_UNLIMITED)
        .await
        .expect("overwrite");

    assert_eq!(
        store.kv_get("mysql", "a/b").await.expect("get"),
        Some(vec![0, 255, 7])
    );
    assert_eq!(
        store.kv_get("redis", "a/b").await.expect("get"),
        Some(b"other plugin".to_vec())
    );
    let list = async |prefix: &str| store.kv_list_keys("mysql", prefix).await.expect("list");
    assert_eq!(list("a/").await, ["a/b", "a/c", "a/\u{10FFFF}x"]);
    assert_eq!(list("a%").await, ["a%_*?["]);
    assert_eq!(
        list("a").await,
        ["a", "a%_*?[", "a/b", "a/c", "a/\u{10FFFF}x", "ab"]
    );
    assert_eq!(list("a/\u{10FFFF}").await, ["a/\u{10FFFF}x"]);
    assert_eq!(list("").await.len(), 7);
    assert!(list("c").await.is_empty());

    store.kv_delete("mysql", "a/b").await.expect("delete");
    store
        .kv_delete("mysql", "never-there")
        .await
        .expect("delete of a missing key");
    assert_eq!(store.kv_get("mysql", "a/b").await.expect("get"), None);
    assert_eq!(
        store.kv_get("redis", "a/b").await.expect("get"),
        Some(b"other plugin".to_vec())
    );
}

#[test]
fn prefix_successor_bounds_exactly() {
    assert_eq!(prefix_successor(""), None);
    assert_eq!(prefix_successor("a/").as_deref(), Some("a0"));
    assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(prefix_successor("\u{10FFFF}\u{10FFFF}"), None);
    assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
}

/// (plugin, key, stored value, sealed) of every kv row.
async fn raw_kv(store: &StateStore) -> Vec<(String, String, Vec<u8>, i64)> {
    sqlx::query_as("SELECT plugin, key, value, sealed FROM plugin_kv ORDER BY plugin, key")
        .fetch_all(&store.pool)
        .await
        .expect("kv rows")
}

async fn kv_values_are_sealed_and_rotated_and_clear_ones_stay_readable(scratch: &Scratch) {
    let old = new_key();
    let store = open_with_key(scratch, Some(&old)).await;
    store
        .kv_set("mysql", "op/1", b"s3cret-progress", KV_UNLIMITED)
        .await
        .expect("set");
    // A value from before kv values were sealed.
    sqlx::query("INSERT INTO plugin_kv (plugin, key, value) VALUES ('mysql', 'legacy', $1)")
        .bind(b"clear-legacy".as_slice())
        .execute(&store.pool)
        .await
        .expect("legacy row");
    let rows = raw_kv(&store).await;
    let (_, _, stored, sealed) = &rows[rows.len() - 1];
    assert_eq!(*sealed, 1);
    assert!(
        !String::from_utf8_lossy(stored).contains("s3cret"),
        "a kv value is stored in clear"
    );
    assert_eq!(
        crate::secrets::sealed_key_id(stored).ok(),
        store.keyring.current_key_id()
    );
    assert_eq!(
        store.kv_get("mysql", "legacy").await.expect("get"),
        Some(b"clear-legacy".to_vec())
    );
    // Sealed for its plugin and key: copied elsewhere, it does not open.
    sqlx::query(
        "INSERT INTO plugin_kv (plugin, key, value, sealed) VALUES ('redis', 'op/1', $1, 1)",
    )
    .bind(stored.as_slice())
    .execute(&store.pool)
    .await
    .expect("copied row");
    assert!(store.kv_get("redis", "op/1").await.is_err());
    sqlx::query("DELETE FROM plugin_kv WHERE plugin = 'redis'")
        .execute(&store.pool)
        .await
        .expect("cleanup");
    store.close().await;

    let new = new_key();
    StateStore::rotate_encryption_key(&scratch.config(Some(&old)), encryption_key(&new))
        .await
        .expect("rotated");
    let store = open_with_key(scratch, Some(&new)).await;
    for (_, key, stored, sealed) in raw_kv(&store).await {
        assert_eq!(sealed, 1, "{key} still in clear after the rotation");
        assert_eq!(
            crate::secrets::sealed_key_id(&stored).ok(),
            store.keyring.current_key_id(),
            "{key} not sealed with the new key"
        );
    }
    assert_eq!(
        store.kv_get("mysql", "op/1").await.expect("get"),
        Some(b"s3cret-progress".to_vec())
    );
    assert_eq!(
        store.kv_get("mysql", "legacy").await.expect("get"),
        Some(b"clear-legacy".to_vec())
    );
}

async fn kv_quota_counts_keys_and_bytes_per_plugin(scratch: &Scratch) {
    let store = open(scratch).await;
    let quota = KvQuota {
        max_keys: 2,
        max_bytes: 200,
    };
    assert_eq!(
        store.kv_set("a", "k1", &[0; 50], quota).await.expect("set"),
        KvWrite::Stored
    );
    assert_eq!(
        store.kv_set("a", "k2", &[0; 50], quota).await.expect("set"),
        KvWrite::Stored
    );
    assert!(matches!(
        store.kv_set("a", "k3", &[0; 1], quota).await.expect("set"),
        KvWrite::OverQuota(reason) if reason.contains("3 keys")
    ));
    assert!(matches!(
        store.kv_set("a", "k2", &[0; 150], quota).await.expect("set"),
        KvWrite::OverQuota(reason) if reason.contains("kv_max_bytes")
    ));
    // Multi-byte keys count in bytes.
    assert!(matches!(
        store.kv_set("b", &"\u{10FFFF}".repeat(50), &[], quota).await.expect("set"),
        KvWrite::OverQuota(reason) if reason.contains("kv_max_bytes")
    ));
    assert_eq!(
        store.kv_set("b", "k1", &[0; 50], quota).await.expect("set"),
        KvWrite::Stored,
        "each plugin has its own quota"
    );
}

on_both_backends!(
    kv_round_trip_and_prefix_listing,
    kv_values_are_sealed_and_rotated_and_clear_ones_stay_readable,
    kv_quota_counts_keys_and_bytes_per_plugin,
);
