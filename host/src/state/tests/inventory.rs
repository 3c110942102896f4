//! The operator's view of the store: listing, and purging a stuck instance.

use super::*;

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
    purge_removes_only_what_the_operator_confirmed,
    listing_pages_filters_and_counts_running_operations,
);
