//! The plugins' key-value store and its prefix ranges.

use super::*;
use crate::state::kv::prefix_successor;

async fn kv_round_trip_and_prefix_listing(scratch: &Scratch) {
    let store = open(scratch).await;
    assert_eq!(store.kv_get("mysql", "a").await.expect("get"), None);
    for key in ["a", "a/b", "a/c", "a%_*?[", "ab", "b", "a/\u{10FFFF}x"] {
        store
            .kv_set("mysql", key, key.as_bytes())
            .await
            .expect("set");
    }
    store
        .kv_set("redis", "a/b", b"other plugin")
        .await
        .expect("set");
    store
        .kv_set("mysql", "a/b", &[0, 255, 7])
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

on_both_backends!(kv_round_trip_and_prefix_listing,);
