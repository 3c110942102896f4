//! Operations a stopped broker left under way: failed at startup (SQLite),
//! or once the lease of the replica calling them runs out (PostgreSQL).

use super::*;

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
