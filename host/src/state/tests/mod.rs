//! The state store's tests, on SQLite and on PostgreSQL: the scratch stores
//! they run on and the records they write are here, the tests in the
//! modules below, grouped as `state` groups the code they test.

use super::*;
use crate::lifecycle::{OperationPhase, OperationRecord, ResourceStatus, StoredChanges};
use crate::model::OperationKind;
use crate::model::{BindingMetadata, Endpoint, EndpointProtocol};
use crate::secrets::{EncryptionKey, generate_key};
use crate::state::inventory::{InstanceFilter, PURGE_KIND, PurgeOutcome, StatusFilter};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sqlx::Connection as _;
use std::path::Path;
use std::time::Duration;
use tokio::task::JoinSet;

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
/// `state::tests::<group>::sqlite::<name>` and
/// `state::tests::<group>::postgres::<name>`.
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

/// No kv quota: the tests of the store itself.
const KV_UNLIMITED: KvQuota = KvQuota {
    max_keys: u64::MAX,
    max_bytes: u64::MAX,
};

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

// Declared after `on_both_backends!`, which they use.
mod backends;
mod batch;
mod credentials;
mod inventory;
mod kv;
mod owners;
mod records;
mod replicas;
mod served;
mod writer;
