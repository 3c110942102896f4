use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sqlx::Connection as _;
use tokio::task::JoinSet;

use secrecy::{ExposeSecret as _, SecretString};

use super::*;
use crate::lifecycle::{OperationPhase, OperationRecord, ResourceStatus, StoredChanges};
use crate::model::OperationKind;
use crate::model::{BindingMetadata, Endpoint, EndpointProtocol};
use crate::secrets::generate_key;
use crate::state::inventory::{InstanceFilter, PURGE_KIND, PurgeOutcome, StatusFilter};

/// The PostgreSQL server the tests make their databases on, as a user that
/// may create databases; `WASM_BROKER_TEST_POSTGRES_URL` overrides it.
const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn postgres_admin_url() -> String {
    std::env::var("WASM_BROKER_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned())
}

/// Where a test's store lives: a temporary directory, or a database of its
/// own on the PostgreSQL server, dropped when the test ends.
enum Scratch {
    Sqlite(tempfile::TempDir),
    Postgres(ScratchDatabase),
}

struct ScratchDatabase {
    name: String,
    url: String,
}

impl Scratch {
    /// `None` (after saying why) when PostgreSQL is unreachable outside CI.
    async fn new(backend: StateBackend) -> Option<Self> {
        match backend {
            StateBackend::Sqlite => Some(Scratch::Sqlite(tempfile::tempdir().expect("tempdir"))),
            StateBackend::Postgres => ScratchDatabase::create().await.map(Scratch::Postgres),
        }
    }

    fn backend(&self) -> StateBackend {
        match self {
            Scratch::Sqlite(_) => StateBackend::Sqlite,
            Scratch::Postgres(_) => StateBackend::Postgres,
        }
    }

    /// The store here with `key` as its current encryption key, or none.
    fn config(&self, key: Option<&SecretString>) -> StateConfig {
        let mut config = StateConfig {
            backend: self.backend(),
            encryption_key: key.cloned(),
            ..StateConfig::default()
        };
        match self {
            Scratch::Sqlite(dir) => config.path = dir.path().join("not/yet/there/broker.db"),
            Scratch::Postgres(database) => config.url = Some(database.url.clone().into()),
        }
        config
    }
}

impl ScratchDatabase {
    async fn create() -> Option<Self> {
        let admin_url = postgres_admin_url();
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(connection) => connection,
            Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL is not reachable at {admin_url}: {error}")
            }
            Err(error) => {
                eprintln!("skipping: PostgreSQL is not reachable at {admin_url}: {error}");
                return None;
            }
        };
        let nonce: [u8; 8] = rand::random();
        let name = format!("wb_test_{}", hex::encode(nonce));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("scratch database created");
        let mut url = url::Url::parse(&admin_url).expect("admin URL");
        url.set_path(&name);
        Some(Self {
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for ScratchDatabase {
    /// On a thread of its own: drop cannot wait for the test's runtime.
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
                admin.execute(statement.as_str()).await.map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop scratch database {}: {dropped:?}", self.name);
        }
    }
}

/// Runs `test` on a fresh store of `backend`, unless PostgreSQL is unreachable outside CI.
async fn run(backend: StateBackend, test: impl AsyncFnOnce(&Scratch)) {
    if let Some(scratch) = Scratch::new(backend).await {
        test(&scratch).await;
    }
}

/// One test per backend for each test function taking a `&Scratch`:
/// `state::tests::sqlite::<name>` and `state::tests::postgres::<name>`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::run(crate::config::StateBackend::Sqlite, super::$test).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::run(crate::config::StateBackend::Postgres, super::$test).await;
                }
            )*
        }
    };
}

fn new_key() -> SecretString {
    generate_key().expect("random key")
}

async fn open(scratch: &Scratch) -> StateStore {
    open_with_key(scratch, Some(&new_key())).await
}

async fn open_with_key(scratch: &Scratch, key: Option<&SecretString>) -> StateStore {
    StateStore::open(&scratch.config(key))
        .await
        .expect("store opens")
}

fn encryption_key(text: &SecretString) -> EncryptionKey {
    EncryptionKey::from_base64(text, "test key").expect("valid key")
}

fn instance(id: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        service_id: "svc-mysql".to_owned(),
        plan_id: "plan-small".to_owned(),
        parameters: Some(json!({"charset": "utf8mb4", "nested": {"list": [1, 2, 3]}})),
        context: Some(json!({"platform": "cloudfoundry", "space_guid": "space-1"})),
        organization_guid: Some("org-1".to_owned()),
        space_guid: Some("space-1".to_owned()),
        maintenance_version: Some("1.2.0".to_owned()),
        plugin_version: "0.3.1".to_owned(),
    }
}

fn operation(id: &str, kind: OperationKind, phase: OperationPhase) -> OperationRecord {
    OperationRecord {
        id: id.to_owned(),
        kind,
        phase,
        plugin_operation: None,
        description: None,
        instance_usable: None,
        update_repeatable: None,
        changes: None,
        request_fingerprint: format!("fingerprint-of-{id}"),
    }
}

fn instance_record(
    id: &str,
    status: ResourceStatus,
    operation: Option<OperationRecord>,
) -> InstanceRecord {
    InstanceRecord {
        instance: instance(id),
        status,
        dashboard_url: None,
        metadata: None,
        operation,
    }
}

fn binding_record(
    id: &str,
    instance_id: &str,
    status: ResourceStatus,
    operation: Option<OperationRecord>,
) -> BindingRecord {
    BindingRecord {
        binding: Binding {
            id: id.to_owned(),
            instance_id: instance_id.to_owned(),
            service_id: "svc-mysql".to_owned(),
            plan_id: "plan-small".to_owned(),
            app_guid: Some("app-1".to_owned()),
            bind_resource: Some(json!({"app_guid": "app-1"})),
            context: None,
            parameters: None,
            predecessor_binding_id: None,
        },
        status,
        result: Some(BindingResult {
            credentials: Some(json!({"username": "u-1", "password": "s3cret-password"})),
            ..BindingResult::default()
        }),
        operation,
    }
}

async fn put_instance(store: &StateStore, record: InstanceRecord) {
    let id = record.instance.id.clone();
    store
        .transition_instance(&id, |_| Transition::Write(record, ()))
        .await
        .expect("instance written");
}

async fn put_binding(store: &StateStore, record: BindingRecord) {
    let (id, instance_id) = (
        record.binding.id.clone(),
        record.binding.instance_id.clone(),
    );
    store
        .transition_binding(&id, &instance_id, |_, _| Transition::Write(record, ()))
        .await
        .expect("binding written");
}

/// (operation id, kind, phase, description) of a resource, oldest first.
async fn history(
    store: &StateStore,
    resource_id: &str,
) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT operation_id, kind, phase, description FROM operations WHERE resource_id = $1 ORDER BY seq",
    )
    .bind(resource_id)
    .fetch_all(&store.pool)
    .await
    .expect("history readable")
}

fn assert_corrupt(result: Result<impl std::fmt::Debug, StateError>, expected_id: &str) {
    match result {
        Err(StateError::Corrupt { id, cause }) => {
            assert_eq!(id, expected_id, "cause: {cause}");
            assert!(!cause.is_empty());
        }
        other => panic!("expected Corrupt for {expected_id}, got {other:?}"),
    }
}

async fn instance_round_trips_every_field(scratch: &Scratch) {
    let store = open(scratch).await;
    let mut update = operation("op-1", OperationKind::Update, OperationPhase::InProgress);
    update.plugin_operation = Some("plugin-token".to_owned());
    update.description = Some("resizing".to_owned());
    update.instance_usable = Some(true);
    update.update_repeatable = Some(false);
    update.changes = Some(StoredChanges {
        plan_id: Some("plan-large".to_owned()),
        parameters: Some(json!({"size": 10})),
        context: None,
        maintenance_version: Some("1.3.0".to_owned()),
    });
    let record = InstanceRecord {
        instance: instance("i-1"),
        status: ResourceStatus::Ready,
        dashboard_url: Some("https://dashboard.example/i-1".to_owned()),
        metadata: Some(json!({"labels": {"team": "a"}})),
        operation: Some(update),
    };
    put_instance(&store, record.clone()).await;

    assert_eq!(store.instance("i-1").await.expect("readable"), Some(record));
    assert_eq!(store.instance("i-2").await.expect("readable"), None);
    store.ping().await.expect("ping");
}

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
        .kv_set("mysql", "k", b"v")
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

async fn binding_transition_sees_its_instance_and_needs_it(scratch: &Scratch) {
    let store = open(scratch).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;

    let seen = store
        .transition_binding("b-1", "i-1", |instance, binding| {
            Transition::Keep((instance.map(|r| r.instance.id), binding.is_some()))
        })
        .await
        .expect("transition");
    assert_eq!(seen, (Some("i-1".to_owned()), false));

    // Instances are never deleted, only tombstoned, so a binding of an
    // unknown instance is a bug in the caller, refused by the foreign key.
    let orphan = binding_record("b-2", "i-unknown", ResourceStatus::Creating, None);
    let refused = store
        .transition_binding("b-2", "i-unknown", |_, _| Transition::Write(orphan, ()))
        .await;
    assert!(
        matches!(refused, Err(StateError::Database(_))),
        "{refused:?}"
    );
    assert_eq!(store.binding("b-2").await.expect("readable"), None);
}

async fn keep_writes_nothing_and_write_replaces(scratch: &Scratch) {
    let store = open(scratch).await;

    let answer = store
        .transition_instance("i-1", |existing| Transition::Keep(existing.is_none()))
        .await;
    assert!(answer.expect("transition"));
    assert_eq!(store.instance("i-1").await.expect("readable"), None);

    let creating = instance_record("i-1", ResourceStatus::Creating, None);
    put_instance(&store, creating.clone()).await;
    let seen = store
        .transition_instance("i-1", Transition::Keep)
        .await
        .expect("transition");
    assert_eq!(seen.as_ref(), Some(&creating));
    assert_eq!(
        store.instance("i-1").await.expect("readable"),
        Some(creating.clone())
    );

    let mut ready = creating;
    ready.status = ResourceStatus::Ready;
    ready.instance.plan_id = "plan-large".to_owned();
    ready.dashboard_url = Some("https://dashboard.example".to_owned());
    put_instance(&store, ready.clone()).await;
    assert_eq!(store.instance("i-1").await.expect("readable"), Some(ready));
    let plan: String = sqlx::query_scalar("SELECT plan_id FROM instances WHERE id = 'i-1'")
        .fetch_one(&store.pool)
        .await
        .expect("row");
    assert_eq!(plan, "plan-large");
}

async fn history_grows_only_when_the_operation_moves(scratch: &Scratch) {
    let store = open(scratch).await;
    let mut record = instance_record(
        "i-1",
        ResourceStatus::Creating,
        Some(operation(
            "op-1",
            OperationKind::Provision,
            OperationPhase::Calling,
        )),
    );
    put_instance(&store, record.clone()).await;
    assert_eq!(history(&store, "i-1").await.len(), 1);

    // Same id and phase: a detail, not a step.
    record.operation.as_mut().expect("op").plugin_operation = Some("token".to_owned());
    put_instance(&store, record.clone()).await;
    assert_eq!(history(&store, "i-1").await.len(), 1);

    let op = record.operation.as_mut().expect("op");
    op.phase = OperationPhase::Succeeded;
    op.description = Some("done".to_owned());
    record.status = ResourceStatus::Ready;
    put_instance(&store, record.clone()).await;

    record.operation = Some(operation(
        "op-2",
        OperationKind::Update,
        OperationPhase::InProgress,
    ));
    put_instance(&store, record.clone()).await;

    record.operation = None;
    put_instance(&store, record).await;

    let expected = vec![
        (
            "op-1".to_owned(),
            "provision".to_owned(),
            "calling".to_owned(),
            None,
        ),
        (
            "op-1".to_owned(),
            "provision".to_owned(),
            "succeeded".to_owned(),
            Some("done".to_owned()),
        ),
        (
            "op-2".to_owned(),
            "update".to_owned(),
            "in_progress".to_owned(),
            None,
        ),
    ];
    assert_eq!(history(&store, "i-1").await, expected);

    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    put_binding(
        &store,
        binding_record(
            "b-1",
            "i-1",
            ResourceStatus::Creating,
            Some(operation(
                "op-3",
                OperationKind::Bind,
                OperationPhase::Calling,
            )),
        ),
    )
    .await;
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT resource_kind FROM operations WHERE resource_id = 'b-1'")
            .fetch_all(&store.pool)
            .await
            .expect("rows");
    assert_eq!(kinds, ["binding"]);
}

async fn recreating_a_deleted_id_restarts_its_creation_time(scratch: &Scratch) {
    let store = open(scratch).await;
    let created_at = async || -> String {
        sqlx::query_scalar("SELECT created_at FROM instances WHERE id = 'i-1'")
            .fetch_one(&store.pool)
            .await
            .expect("row")
    };
    put_instance(
        &store,
        instance_record("i-1", ResourceStatus::Creating, None),
    )
    .await;
    let first = created_at().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    assert_eq!(created_at().await, first, "an update is not a new creation");
    put_instance(
        &store,
        instance_record("i-1", ResourceStatus::Deleted, None),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    put_instance(
        &store,
        instance_record("i-1", ResourceStatus::Creating, None),
    )
    .await;
    assert!(created_at().await > first);
}

async fn concurrent_creates_of_one_id_insert_exactly_once(scratch: &Scratch) {
    // Two stores on one database, as two processes would have: besides this
    // process's write queue, the store's own lock (SQLite's BEGIN IMMEDIATE,
    // PostgreSQL's advisory lock) must keep writers of other pools apart.
    let stores = [open(scratch).await, open(scratch).await];
    let mut tasks = JoinSet::new();
    for contender in 0..32_usize {
        let store = stores[contender % 2].clone();
        tasks.spawn(async move {
            store
                .transition_instance("i-race", move |existing| match existing {
                    Some(_) => Transition::Keep(None),
                    None => {
                        let mut record = instance_record("i-race", ResourceStatus::Creating, None);
                        record.instance.plugin_version = format!("contender-{contender}");
                        Transition::Write(record, Some(contender))
                    }
                })
                .await
                .expect("transition")
        });
    }
    let winners: Vec<usize> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored = stores[0]
        .instance("i-race")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(
        stored.instance.plugin_version,
        format!("contender-{}", winners[0])
    );
}

async fn reopening_keeps_everything(scratch: &Scratch) {
    let key = new_key();
    let store = open_with_key(scratch, Some(&key)).await;
    let instance = instance_record(
        "i-1",
        ResourceStatus::Creating,
        Some(operation(
            "op-1",
            OperationKind::Provision,
            OperationPhase::InProgress,
        )),
    );
    let binding = binding_record("b-1", "i-1", ResourceStatus::Ready, None);
    put_instance(&store, instance.clone()).await;
    put_binding(&store, binding.clone()).await;
    store.kv_set("mysql", "k", b"v").await.expect("kv set");
    // No close(): the process may die without one.
    drop(store);

    let store = open_with_key(scratch, Some(&key)).await;
    assert_eq!(
        store.instance("i-1").await.expect("readable"),
        Some(instance)
    );
    assert_eq!(store.binding("b-1").await.expect("readable"), Some(binding));
    assert_eq!(
        store.kv_get("mysql", "k").await.expect("kv get"),
        Some(b"v".to_vec())
    );
    assert_eq!(history(&store, "i-1").await.len(), 1);
    store.close().await;
}

#[tokio::test]
async fn interrupted_calls_fail_at_startup() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    let calling = |id: &str, kind| Some(operation(id, kind, OperationPhase::Calling));
    put_instance(
        &store,
        instance_record(
            "i-provision",
            ResourceStatus::Creating,
            calling("op-1", OperationKind::Provision),
        ),
    )
    .await;
    put_instance(
        &store,
        instance_record(
            "i-update",
            ResourceStatus::Ready,
            calling("op-2", OperationKind::Update),
        ),
    )
    .await;
    let polling = Some(operation(
        "op-3",
        OperationKind::Provision,
        OperationPhase::InProgress,
    ));
    let in_progress = instance_record("i-async", ResourceStatus::Creating, polling);
    put_instance(&store, in_progress.clone()).await;
    put_binding(
        &store,
        binding_record(
            "b-bind",
            "i-update",
            ResourceStatus::Creating,
            calling("op-4", OperationKind::Bind),
        ),
    )
    .await;
    put_binding(
        &store,
        binding_record(
            "b-unbind",
            "i-update",
            ResourceStatus::Ready,
            calling("op-5", OperationKind::Unbind),
        ),
    )
    .await;

    let marked = store
        .fail_interrupted_operations("the broker restarted during the call")
        .await
        .expect("marked");
    assert_eq!(marked, 4);

    let expect_failed = |operation: Option<&OperationRecord>| {
        let operation = operation.expect("operation kept");
        assert_eq!(operation.phase, OperationPhase::Failed);
        assert_eq!(
            operation.description.as_deref(),
            Some("the broker restarted during the call")
        );
    };
    let provision = store
        .instance("i-provision")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(provision.status, ResourceStatus::Failed);
    expect_failed(provision.operation.as_ref());
    let update = store
        .instance("i-update")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(update.status, ResourceStatus::Ready);
    expect_failed(update.operation.as_ref());
    let bind = store
        .binding("b-bind")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(bind.status, ResourceStatus::Failed);
    expect_failed(bind.operation.as_ref());
    let unbind = store
        .binding("b-unbind")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(unbind.status, ResourceStatus::Ready);
    expect_failed(unbind.operation.as_ref());
    assert_eq!(
        store.instance("i-async").await.expect("readable"),
        Some(in_progress)
    );
    assert_eq!(
        history(&store, "i-provision")
            .await
            .last()
            .map(|step| step.2.as_str()),
        Some("failed")
    );

    assert_eq!(
        store
            .fail_interrupted_operations("again")
            .await
            .expect("marked"),
        0
    );
}

async fn corrupt_rows_are_reported_not_panicked_on(scratch: &Scratch) {
    let store = open(scratch).await;
    for id in ["i-record", "i-status", "i-operation", "i-other-id"] {
        let calling = Some(operation(
            "op",
            OperationKind::Provision,
            OperationPhase::Calling,
        ));
        put_instance(
            &store,
            instance_record(id, ResourceStatus::Creating, calling),
        )
        .await;
    }
    put_binding(
        &store,
        binding_record("b-result", "i-record", ResourceStatus::Ready, None),
    )
    .await;
    for damage in [
        "UPDATE instances SET record = '{\"instance\": {\"id\": ' WHERE id = 'i-record'",
        "UPDATE instances SET status = 'exploded' WHERE id = 'i-status'",
        "UPDATE instances SET operation = '[]' WHERE id = 'i-operation'",
        "UPDATE instances SET id = 'i-moved' WHERE id = 'i-other-id'",
    ] {
        sqlx::query(damage)
            .execute(&store.pool)
            .await
            .expect("damage done");
    }
    sqlx::query("UPDATE bindings SET result = $1 WHERE id = 'b-result'")
        .bind(vec![0_u8, 255])
        .execute(&store.pool)
        .await
        .expect("damage done");

    assert_corrupt(store.instance("i-record").await, "i-record");
    assert_corrupt(store.instance("i-status").await, "i-status");
    assert_corrupt(store.instance("i-operation").await, "i-operation");
    assert_corrupt(store.instance("i-moved").await, "i-moved");
    let decided = store
        .transition_instance("i-record", |_| -> Transition<InstanceRecord, ()> {
            panic!("decide saw a corrupt row")
        })
        .await;
    assert_corrupt(decided, "i-record");
    assert_corrupt(store.binding("b-result").await, "b-result");
    assert_corrupt(store.live_bindings("i-record").await, "b-result");
    // On PostgreSQL these calls are this live replica's own, so not failed.
    if scratch.backend() == StateBackend::Sqlite {
        assert!(matches!(
            store.fail_interrupted_operations("restart").await,
            Err(StateError::Corrupt { .. })
        ));
    }
}

async fn live_bindings_skip_deleted_and_other_instances(scratch: &Scratch) {
    let store = open(scratch).await;
    put_instance(&store, instance_record("i-1", ResourceStatus::Ready, None)).await;
    put_instance(&store, instance_record("i-2", ResourceStatus::Ready, None)).await;
    for (id, instance_id, status) in [
        ("b-ready", "i-1", ResourceStatus::Ready),
        ("b-deleted", "i-1", ResourceStatus::Deleted),
        ("b-creating", "i-1", ResourceStatus::Creating),
        ("b-failed", "i-1", ResourceStatus::Failed),
        ("b-elsewhere", "i-2", ResourceStatus::Ready),
    ] {
        put_binding(&store, binding_record(id, instance_id, status, None)).await;
    }

    let live = store.live_bindings("i-1").await.expect("readable");
    let ids: Vec<&str> = live
        .iter()
        .map(|record| record.binding.id.as_str())
        .collect();
    assert_eq!(ids, ["b-ready", "b-creating", "b-failed"]);
    assert!(
        store
            .live_bindings("i-none")
            .await
            .expect("readable")
            .is_empty()
    );
}

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

#[tokio::test]
async fn lookups_use_indexes() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    for (statement, parameters) in [
        (tables::SELECT_INSTANCE, 1),
        (tables::SELECT_INSTANCES_IN_PHASE, 1),
        (tables::SELECT_BINDING, 1),
        (tables::SELECT_LIVE_BINDINGS, 2),
        (tables::SELECT_BINDINGS_IN_PHASE, 1),
        (tables::KV_KEYS_IN_RANGE, 3),
        (tables::KV_KEYS_FROM, 2),
    ] {
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for _ in 0..parameters {
            query = query.bind("x");
        }
        let plan = query.fetch_all(&store.pool).await.expect("plan");
        let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert!(
            details.iter().all(|detail| !detail.starts_with("SCAN")),
            "{statement}: {details:?}"
        );
    }
}

/// The settings the `Any` driver's URL cannot carry reach every SQLite
/// connection: WAL, and a sync of the WAL at every commit.
#[tokio::test]
async fn sqlite_connections_use_the_wal_and_sync_every_commit() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut connection = store.pool.acquire().await.expect("connection");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *connection)
            .await
            .expect("journal mode");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *connection)
            .await
            .expect("synchronous");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *connection)
            .await
            .expect("foreign keys");
        assert_eq!((journal.as_str(), synchronous, foreign_keys), ("wal", 2, 1));
        // Held, so the next round gets another connection.
        connections.push(connection);
    }
}

/// A store written before `calling_replica` existed (only the first
/// migration applied, as the broker released with it left it) migrates on
/// open, and its interrupted calls still fail.
#[tokio::test]
async fn a_store_from_before_replicas_migrates_and_recovers() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let config = scratch.config(Some(&new_key()));
    let first_only = tempfile::tempdir().expect("tempdir");
    let first = "0001_state.sql";
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/sqlite")
            .join(first),
        first_only.path().join(first),
    )
    .expect("first migration copied");
    {
        let directory = config.path.parent().expect("a parent");
        std::fs::create_dir_all(directory).expect("directory");
        let old = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&config.path)
                .create_if_missing(true),
        )
        .await
        .expect("old store");
        Migrator::new(first_only.path())
            .await
            .expect("first migration")
            .run(&old)
            .await
            .expect("old schema");
        let record = instance_record(
            "i-old",
            ResourceStatus::Creating,
            Some(operation(
                "op-1",
                OperationKind::Provision,
                OperationPhase::Calling,
            )),
        );
        let document = serde_json::json!({"instance": record.instance, "dashboard_url": null, "metadata": null});
        sqlx::query(
            "INSERT INTO instances (id, service_id, plan_id, status, record, operation, operation_phase) \
             VALUES ('i-old', 'svc-mysql', 'plan-small', 'creating', ?1, ?2, 'calling')",
        )
        .bind(document.to_string())
        .bind(serde_json::to_string(&record.operation).expect("json"))
        .execute(&old)
        .await
        .expect("old row");
        old.close().await;
    }

    let store = StateStore::open(&config)
        .await
        .expect("migrated store opens");
    assert_eq!(
        store.start_serving("restarted").await.expect("recovered"),
        1
    );
    let record = store
        .instance("i-old")
        .await
        .expect("readable")
        .expect("kept");
    assert_eq!(record.status, ResourceStatus::Failed);
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&store.pool)
            .await
            .expect("versions");
    let expected: Vec<i64> = SQLITE_MIGRATIONS
        .iter()
        .map(|migration| migration.version)
        .collect();
    assert_eq!(versions, expected);
}

/// Managed PostgreSQL services require TLS: a store URL asking for it gets
/// an encrypted connection (the local server has a self-signed certificate,
/// which `sslmode=require` encrypts to without verifying).
#[tokio::test]
async fn a_postgres_store_connects_over_tls_when_the_url_asks() {
    let Some(scratch) = Scratch::new(StateBackend::Postgres).await else {
        return;
    };
    let mut config = scratch.config(Some(&new_key()));
    let Some(url) = config.url.as_ref() else {
        panic!("a postgres scratch store has a URL");
    };
    config.url = Some(format!("{}?sslmode=require", url.expose_secret()).into());
    let store = StateStore::open(&config)
        .await
        .expect("store opens over TLS");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&store.pool)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the store's connection is not encrypted");
    store.close().await;
}

/// Replicas sharing a PostgreSQL store fail each other's `Calling`
/// operations only once the caller's lease ran out, never a live one's,
/// and never their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_of_a_replica_whose_lease_ran_out_fail() {
    let Some(scratch) = Scratch::new(StateBackend::Postgres).await else {
        return;
    };
    let key = new_key();
    let description = "its replica stopped during the call";
    let (dead, live) = (
        open_with_key(&scratch, Some(&key)).await,
        open_with_key(&scratch, Some(&key)).await,
    );
    assert_eq!(dead.start_serving(description).await.expect("serving"), 0);
    assert_eq!(live.start_serving(description).await.expect("serving"), 0);
    let calling = |id: &str, kind| Some(operation(id, kind, OperationPhase::Calling));
    put_instance(
        &dead,
        instance_record(
            "i-dead",
            ResourceStatus::Creating,
            calling("op-1", OperationKind::Provision),
        ),
    )
    .await;
    put_binding(
        &dead,
        binding_record(
            "b-dead",
            "i-dead",
            ResourceStatus::Ready,
            calling("op-2", OperationKind::Unbind),
        ),
    )
    .await;
    let live_call = instance_record(
        "i-live",
        ResourceStatus::Ready,
        calling("op-3", OperationKind::Update),
    );
    put_instance(&live, live_call.clone()).await;

    // A replica starting while both are alive fails nothing.
    let newcomer = open_with_key(&scratch, Some(&key)).await;
    assert_eq!(
        newcomer.start_serving(description).await.expect("serving"),
        0
    );
    assert_eq!(
        live.fail_interrupted_operations(description)
            .await
            .expect("swept"),
        0
    );

    // `dead` stops renewing its lease, which then ran out an hour ago.
    dead.close().await;
    sqlx::query(
        "UPDATE replicas SET heartbeat_at = heartbeat_at - interval '1 hour' WHERE id = $1",
    )
    .bind(&*dead.replica)
    .execute(&live.pool)
    .await
    .expect("lease backdated");
    assert_eq!(
        live.fail_interrupted_operations(description)
            .await
            .expect("swept"),
        2
    );

    let instance = live
        .instance("i-dead")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(instance.status, ResourceStatus::Failed);
    let operation = instance.operation.expect("operation kept");
    assert_eq!(
        (operation.phase, operation.description.as_deref()),
        (OperationPhase::Failed, Some(description))
    );
    let binding = live
        .binding("b-dead")
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(
        binding.status,
        ResourceStatus::Ready,
        "an unbind leaves the binding as it was"
    );
    assert_eq!(
        binding.operation.map(|op| op.phase),
        Some(OperationPhase::Failed)
    );
    assert_eq!(
        live.instance("i-live").await.expect("readable"),
        Some(live_call),
        "a live replica's call is left alone"
    );
    let replicas: Vec<String> = sqlx::query_scalar("SELECT id FROM replicas ORDER BY id")
        .fetch_all(&live.pool)
        .await
        .expect("replicas");
    let mut expected = vec![live.replica.to_string(), newcomer.replica.to_string()];
    expected.sort();
    assert_eq!(replicas, expected, "the dead replica is forgotten");
    assert_eq!(
        newcomer
            .fail_interrupted_operations(description)
            .await
            .expect("swept"),
        0
    );
}

async fn purge_removes_only_what_the_operator_confirmed(scratch: &Scratch) {
    let store = open(scratch).await;
    let provisioned = operation("op-1", OperationKind::Provision, OperationPhase::Succeeded);
    put_instance(
        &store,
        instance_record("stuck", ResourceStatus::Ready, Some(provisioned.clone())),
    )
    .await;
    put_binding(
        &store,
        binding_record(
            "bound",
            "stuck",
            ResourceStatus::Ready,
            Some(operation(
                "op-bound",
                OperationKind::Bind,
                OperationPhase::Succeeded,
            )),
        ),
    )
    .await;
    put_instance(
        &store,
        instance_record("other", ResourceStatus::Ready, Some(provisioned)),
    )
    .await;

    let seen = store
        .purge_preview("stuck")
        .await
        .expect("preview")
        .expect("exists");
    assert_eq!(seen.bindings.len(), 1);
    // A broker serving meanwhile starts an update: the confirmation no
    // longer describes the store.
    let update = operation("op-2", OperationKind::Update, OperationPhase::InProgress);
    put_instance(
        &store,
        instance_record("stuck", ResourceStatus::Ready, Some(update)),
    )
    .await;
    assert_eq!(
        store
            .purge_instance(&seen, "first try")
            .await
            .expect("purge"),
        PurgeOutcome::Changed
    );
    assert!(store.instance("stuck").await.expect("read").is_some());

    let seen = store
        .purge_preview("stuck")
        .await
        .expect("preview")
        .expect("exists");
    assert_eq!(
        store
            .purge_instance(&seen, "second try")
            .await
            .expect("purge"),
        PurgeOutcome::Purged {
            binding_ids: vec!["bound".to_owned()]
        }
    );
    assert!(store.instance("stuck").await.expect("read").is_none());
    assert!(store.binding("bound").await.expect("read").is_none());
    assert!(store.instance("other").await.expect("read").is_some());
    assert_eq!(
        store.purge_instance(&seen, "again").await.expect("purge"),
        PurgeOutcome::Gone
    );
    let history = store.instance_history("stuck").await.expect("history");
    let last = history.last().expect("history kept");
    assert_eq!(
        (last.kind.as_str(), last.phase.as_str()),
        (PURGE_KIND, "succeeded")
    );
    assert_eq!(last.description.as_deref(), Some("second try"));
    assert!(
        store
            .purge_preview("stuck")
            .await
            .expect("preview")
            .is_none()
    );
}

async fn listing_pages_filters_and_counts_running_operations(scratch: &Scratch) {
    let store = open(scratch).await;
    let done = operation("op", OperationKind::Provision, OperationPhase::Succeeded);
    for id in ["a", "b", "c"] {
        put_instance(
            &store,
            instance_record(id, ResourceStatus::Ready, Some(done.clone())),
        )
        .await;
    }
    let running = operation("op-d", OperationKind::Provision, OperationPhase::InProgress);
    put_instance(
        &store,
        instance_record("d", ResourceStatus::Creating, Some(running)),
    )
    .await;
    put_instance(
        &store,
        instance_record("gone", ResourceStatus::Deleted, Some(done)),
    )
    .await;

    let page = store
        .list_instances(&InstanceFilter {
            limit: Some(2),
            ..InstanceFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.instances.len(), 2);
    assert!(page.more);
    let all = store
        .list_instances(&InstanceFilter::default())
        .await
        .expect("list");
    let ids: Vec<&str> = all.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "deleted ones are hidden: {ids:?}");
    assert!(!ids.contains(&"gone") && !all.more);
    let creating = store
        .list_instances(&InstanceFilter {
            status: StatusFilter::Only(ResourceStatus::Creating),
            service_id: Some("svc-mysql".to_owned()),
            limit: None,
        })
        .await
        .expect("list");
    assert_eq!(creating.instances.len(), 1);
    assert_eq!(creating.instances[0].id, "d");
    let every = InstanceFilter {
        status: StatusFilter::Any,
        ..InstanceFilter::default()
    };
    assert_eq!(
        store
            .list_instances(&every)
            .await
            .expect("list")
            .instances
            .len(),
        5
    );

    let counts = store.count_running_operations().await.expect("counts");
    let count = |resource: &str, phase| {
        counts
            .iter()
            .find(|c| c.resource == resource && c.phase == phase)
            .map(|c| c.count)
    };
    assert_eq!(count("instance", OperationPhase::InProgress), Some(1));
    assert_eq!(count("instance", OperationPhase::Calling), Some(0));
    assert_eq!(count("binding", OperationPhase::InProgress), Some(0));
}

on_both_backends!(
    instance_round_trips_every_field,
    binding_round_trips_with_credentials_in_their_own_column,
    credentials_moved_to_another_binding_do_not_decrypt,
    a_store_with_credentials_needs_their_key_to_open,
    without_a_key_a_store_opens_empty_but_creates_no_binding,
    rotation_reencrypts_everything_and_resumes,
    binding_transition_sees_its_instance_and_needs_it,
    keep_writes_nothing_and_write_replaces,
    history_grows_only_when_the_operation_moves,
    recreating_a_deleted_id_restarts_its_creation_time,
    concurrent_creates_of_one_id_insert_exactly_once,
    reopening_keeps_everything,
    corrupt_rows_are_reported_not_panicked_on,
    live_bindings_skip_deleted_and_other_instances,
    kv_round_trip_and_prefix_listing,
    purge_removes_only_what_the_operator_confirmed,
    listing_pages_filters_and_counts_running_operations,
);
