//! Which plugin version served each service, and the instances left per
//! service: what keeps a retired plugin, across restarts too.

use super::*;
use crate::state::served::ServedService;

fn served(service_id: &str, digest: &str) -> ServedService {
    ServedService {
        service_id: service_id.to_owned(),
        service_name: format!("{service_id}-name"),
        plugin: "mysql".to_owned(),
        digest: digest.to_owned(),
        version: "1.0.0".to_owned(),
    }
}

async fn served_services_are_recorded_replaced_and_forgotten(scratch: &Scratch) {
    let store = open(scratch).await;
    assert!(store.served_services().await.expect("read").is_empty());
    store
        .record_served(&[served("svc-b", "d1"), served("svc-a", "d1")])
        .await
        .expect("recorded");
    store
        .record_served(&[served("svc-b", "d2")])
        .await
        .expect("replaced");
    assert_eq!(
        store.served_services().await.expect("read"),
        [served("svc-a", "d1"), served("svc-b", "d2")]
    );
    store
        .forget_served(&["svc-a".to_owned(), "svc-unknown".to_owned()])
        .await
        .expect("forgotten");
    assert_eq!(
        store.served_services().await.expect("read"),
        [served("svc-b", "d2")]
    );
}

async fn instances_are_counted_per_service_until_deleted(scratch: &Scratch) {
    let store = open(scratch).await;
    let provisioned = operation("op-1", OperationKind::Provision, OperationPhase::Succeeded);
    for (id, status) in [
        ("ready", ResourceStatus::Ready),
        ("failed", ResourceStatus::Failed),
        ("creating", ResourceStatus::Creating),
        ("deleted", ResourceStatus::Deleted),
    ] {
        put_instance(
            &store,
            instance_record(id, status, Some(provisioned.clone())),
        )
        .await;
    }
    let mut other = instance_record("other", ResourceStatus::Ready, Some(provisioned));
    other.instance.service_id = "svc-other".to_owned();
    put_instance(&store, other).await;

    let counts = store.live_instances_by_service().await.expect("counted");
    assert_eq!(
        counts,
        std::collections::BTreeMap::from([
            ("svc-mysql".to_owned(), 3),
            ("svc-other".to_owned(), 1)
        ]),
        "every instance not deleted still needs its plugin"
    );
}

on_both_backends!(
    served_services_are_recorded_replaced_and_forgotten,
    instances_are_counted_per_service_until_deleted,
);
