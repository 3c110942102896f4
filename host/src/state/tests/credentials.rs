//! Credentials at rest: encrypted in their own column, bound to their
//! binding, readable only with their key, and re-encrypted by a rotation.

use super::*;
use crate::state::keys::ROTATION_BATCH;

async fn binding_round_trips_with_credentials_in_their_own_column(scratch: &Scratch) {
    let store = open(scratch).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    let mut record = binding_record("b-1", "i-1", ResourceStatus::Ready, None);
    record.result = Some(BindingResult {
        credentials: Some(json!({"uri": "mysql://u:s3cret-password@db/x"})),
        metadata: Some(BindingMetadata {
            expires_at: Some("2030-01-01T00:00:00Z".to_owned()),
            renew_before: None,
        }),
        syslog_drain_url: Some("syslog://drain".to_owned()),
        route_service_url: None,
        volume_mounts: Vec::new(),
        endpoints: vec![Endpoint {
            host: "db".to_owned(),
            ports: vec!["3306".to_owned()],
            protocol: EndpointProtocol::Tcp,
        }],
    });
    put_binding(&store, record.clone()).await;

    assert_eq!(store.binding("b-1").await.expect("readable"), Some(record));
    let (stored_record, stored_result): (String, Vec<u8>) =
        sqlx::query_as("SELECT record, result FROM bindings WHERE id = 'b-1'")
            .fetch_one(&store.pool)
            .await
            .expect("row");
    assert!(
        !stored_record.contains("s3cret"),
        "credentials leaked into the record column: {stored_record}"
    );
    assert_encrypted(&store, &stored_result);
}

/// `sealed` is encrypted with the store's current key and shows nothing of
/// the test credentials.
#[track_caller]
fn assert_encrypted(store: &StateStore, sealed: &[u8]) {
    let text = String::from_utf8_lossy(sealed);
    for plain in ["s3cret", "password", "u-1", "credentials", "3306"] {
        assert!(
            !text.contains(plain),
            "{plain:?} stored unencrypted: {text}"
        );
    }
    assert_eq!(
        crate::secrets::sealed_key_id(sealed).ok(),
        store.keyring.current_key_id()
    );
}

/// (binding id, raw `result` column) of every binding with credentials.
async fn raw_results(store: &StateStore) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as("SELECT id, result FROM bindings WHERE result IS NOT NULL ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .expect("rows")
}

#[tokio::test]
async fn credentials_are_encrypted_on_disk_including_the_wal() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let config = scratch.config(Some(&new_key()));
    let path = config.path.clone();
    let store = StateStore::open(&config).await.expect("store opens");
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    put_binding(
        &store,
        binding_record("b-1", "i-1", ResourceStatus::Ready, None),
    )
    .await;
    let (id, sealed) = raw_results(&store).await.remove(0);
    assert_eq!(id, "b-1");
    assert_encrypted(&store, &sealed);

    let mut files = vec![path.clone()];
    files.push(path.with_extension("db-wal"));
    let mut bytes = Vec::new();
    for file in &files {
        bytes.extend(std::fs::read(file).unwrap_or_default());
    }
    assert!(bytes.len() > 4096, "the database files were read");
    assert!(
        !bytes
            .windows(b"s3cret-password".len())
            .any(|w| w == b"s3cret-password"),
        "the password is in the database files in clear"
    );
    store.close().await;
}

async fn credentials_moved_to_another_binding_do_not_decrypt(scratch: &Scratch) {
    let store = open(scratch).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    put_binding(
        &store,
        binding_record("b-1", "i-1", ResourceStatus::Ready, None),
    )
    .await;
    let mut other = binding_record("b-2", "i-1", ResourceStatus::Ready, None);
    other.result = None;
    put_binding(&store, other).await;
    sqlx::query("UPDATE bindings SET result = (SELECT result FROM bindings WHERE id = 'b-1') WHERE id = 'b-2'")
        .execute(&store.pool)
        .await
        .expect("moved");

    match store.binding("b-2").await {
        Err(StateError::Credentials { id, cause }) => {
            assert_eq!(id, "b-2");
            assert!(matches!(cause, SecretsError::Tampered { .. }), "{cause:?}");
        }
        other => panic!("expected a credentials error, got {other:?}"),
    }
    assert!(store.binding("b-1").await.expect("readable").is_some());
}

async fn a_store_with_credentials_needs_their_key_to_open(scratch: &Scratch) {
    let key = new_key();
    let store = open_with_key(scratch, Some(&key)).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    put_binding(
        &store,
        binding_record("b-1", "i-1", ResourceStatus::Ready, None),
    )
    .await;
    put_binding(
        &store,
        binding_record("b-2", "i-1", ResourceStatus::Ready, None),
    )
    .await;
    store.close().await;

    let refused = StateStore::open(&scratch.config(None)).await;
    match refused {
        Err(error @ StateError::CredentialsWithoutKey { count: 2, .. }) => {
            assert!(
                error.to_string().contains("WASM_BROKER_ENCRYPTION_KEY"),
                "{error}"
            );
        }
        other => panic!("expected CredentialsWithoutKey, got {:?}", other.err()),
    }
    let wrong = StateStore::open(&scratch.config(Some(&new_key()))).await;
    match wrong {
        Err(error @ StateError::CredentialsUnreadable { count: 2, .. }) => {
            let id = encryption_key(&key).id().to_string();
            assert!(
                error.to_string().contains(&id),
                "the missing key is named: {error}"
            );
        }
        other => panic!("expected CredentialsUnreadable, got {:?}", other.err()),
    }
    let store = open_with_key(scratch, Some(&key)).await;
    assert!(store.binding("b-1").await.expect("readable").is_some());
}

async fn without_a_key_a_store_opens_empty_but_creates_no_binding(scratch: &Scratch) {
    let store = open_with_key(scratch, None).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    store
        .kv_set("mysql", "k", b"v", KV_UNLIMITED)
        .await
        .expect("kv works without a key");

    let mut creating = binding_record("b-1", "i-1", ResourceStatus::Creating, None);
    creating.result = None;
    let refused = store
        .transition_binding("b-1", "i-1", |_, _| Transition::Write(creating, ()))
        .await;
    match refused {
        Err(StateError::Secrets(error @ SecretsError::NoKey { .. })) => {
            assert!(
                error.to_string().contains("WASM_BROKER_ENCRYPTION_KEY"),
                "{error}"
            );
        }
        other => panic!("expected NoKey, got {other:?}"),
    }
    let ready = binding_record("b-1", "i-1", ResourceStatus::Ready, None);
    let refused = store
        .transition_binding("b-1", "i-1", |_, _| Transition::Write(ready, ()))
        .await;
    assert!(
        matches!(refused, Err(StateError::Credentials { .. })),
        "{refused:?}"
    );
    assert_eq!(store.binding("b-1").await.expect("readable"), None);
    assert!(history(&store, "b-1").await.is_empty());
}

async fn rotation_reencrypts_everything_and_resumes(scratch: &Scratch) {
    let (old, new) = (new_key(), new_key());
    let store = open_with_key(scratch, Some(&old)).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    let total = usize::try_from(ROTATION_BATCH).expect("small") * 2 + 5;
    let mut expected = Vec::new();
    for n in 0..total {
        let record = binding_record(&format!("b-{n:03}"), "i-1", ResourceStatus::Ready, None);
        put_binding(&store, record.clone()).await;
        expected.push(record);
    }
    let mut without_credentials = binding_record("b-none", "i-1", ResourceStatus::Failed, None);
    without_credentials.result = None;
    put_binding(&store, without_credentials).await;
    // A rotation cut short: one row already has the new key.
    let halfway = StateStore::open_with_keys(
        &scratch.config(Some(&old)),
        Keyring::from_config(&scratch.config(Some(&old)))
            .expect("keys")
            .rotating_to(encryption_key(&new)),
    )
    .await
    .expect("opens");
    put_binding(&halfway, expected[0].clone()).await;
    halfway.close().await;
    store.close().await;

    let rotated =
        StateStore::rotate_encryption_key(&scratch.config(Some(&old)), encryption_key(&new))
            .await
            .expect("rotated");
    assert_eq!(rotated, total as u64 - 1);

    let store = open_with_key(scratch, Some(&new)).await;
    for (_, sealed) in raw_results(&store).await {
        assert_encrypted(&store, &sealed);
    }
    for record in &expected {
        assert_eq!(
            store
                .binding(&record.binding.id)
                .await
                .expect("readable")
                .as_ref(),
            Some(record)
        );
    }
    store.close().await;
    assert!(matches!(
        StateStore::open(&scratch.config(Some(&old))).await,
        Err(StateError::CredentialsUnreadable { .. })
    ));
    let again =
        StateStore::rotate_encryption_key(&scratch.config(Some(&new)), encryption_key(&new))
            .await
            .expect("nothing left to rotate");
    assert_eq!(again, 0);
}

on_both_backends!(
    binding_round_trips_with_credentials_in_their_own_column,
    credentials_moved_to_another_binding_do_not_decrypt,
    a_store_with_credentials_needs_their_key_to_open,
    without_a_key_a_store_opens_empty_but_creates_no_binding,
    rotation_reencrypts_everything_and_resumes,
);
