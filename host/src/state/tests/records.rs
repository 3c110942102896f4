//! Instances and bindings as the OSB flow writes them: every field round
//! trips, transitions decide under the write lock, the history records each
//! step, and damaged rows are reported.

use super::*;

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
        matches!(
            refused,
            Err(StateError::Database(_) | StateError::Writer(_))
        ),
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
    store
        .kv_set("mysql", "k", b"v", KV_UNLIMITED)
        .await
        .expect("kv set");
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
    // The damaged binding's instance is sound: its live-bindings read is
    // what finds the damage.
    put_instance(
        &store,
        instance_record("i-sound", ResourceStatus::Ready, None),
    )
    .await;
    put_binding(
        &store,
        binding_record("b-result", "i-sound", ResourceStatus::Ready, None),
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
    let revoked = store
        .transition_instance_and_bindings("i-sound", |_, _| -> Transition<InstanceRecord, ()> {
            panic!("decide saw a corrupt binding")
        })
        .await;
    assert_corrupt(revoked, "b-result");
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
        // Creation times have millisecond resolution (ties go by id), and a
        // write takes less than that now: apart, so "oldest first" shows.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // Read in a transition's step (on SQLite through the batch writer);
    // a Keep writes nothing.
    let seen = store
        .transition_instance_and_bindings("i-1", |instance, live| {
            let ids: Vec<String> = live.into_iter().map(|record| record.binding.id).collect();
            Transition::Keep((instance.map(|record| record.instance.id), ids))
        })
        .await
        .expect("transition");
    assert_eq!(
        seen,
        (
            Some("i-1".to_owned()),
            vec![
                "b-ready".to_owned(),
                "b-creating".to_owned(),
                "b-failed".to_owned()
            ]
        )
    );
    let none = store
        .transition_instance_and_bindings("i-none", |instance, live| {
            Transition::Keep((instance.is_none(), live.len()))
        })
        .await
        .expect("transition");
    assert_eq!(none, (true, 0));
}

on_both_backends!(
    instance_round_trips_every_field,
    binding_transition_sees_its_instance_and_needs_it,
    keep_writes_nothing_and_write_replaces,
    history_grows_only_when_the_operation_moves,
    recreating_a_deleted_id_restarts_its_creation_time,
    concurrent_creates_of_one_id_insert_exactly_once,
    reopening_keeps_everything,
    corrupt_rows_are_reported_not_panicked_on,
    live_bindings_skip_deleted_and_other_instances,
);
