//! Concurrent `last_operation` polls of one operation make one plugin call
//! (`single_flight.rs`), for instances and bindings, over the fakes.

use std::sync::Arc;

use super::tests::{TestBroker, bind, broker, info, poll, provision, succeeded};
use super::*;
use crate::lifecycle::ResourceStatus;
use crate::model::OperationState;

use super::fakes::{SMALL, Script};

const POLLS: usize = 16;

/// Waits until the fake plugin has been asked `call` at least once, then a
/// little longer, so every poll started has had its chance to ask too.
async fn asked(broker: &TestBroker, call: &str) {
    while broker.plugins().count(call) == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn concurrent_polls_of_one_instance_operation_make_one_plugin_call() {
    let (broker, records) = broker();
    let broker = Arc::new(broker);
    broker
        .plugins()
        .script("provision", [Script::Accepted("op")]);
    let mut request = provision("i", SMALL, None);
    request.info = info(true);
    broker.provision(request).await.expect("accepted");
    broker.plugins().script_polls([Ok(succeeded())]);
    let gate = broker.plugins().hold_polls();
    let polls: Vec<_> = (0..POLLS)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.instance_last_operation(poll("i", None)).await })
        })
        .collect();
    asked(&broker, "last_operation").await;
    assert_eq!(
        broker.plugins().count("last_operation"),
        1,
        "one call in flight"
    );
    gate.add_permits(POLLS);
    for answered in polls {
        let status = answered.await.expect("joined").expect("polled");
        assert_eq!(status.state, OperationState::Succeeded);
    }
    assert_eq!(broker.plugins().count("last_operation"), 1);
    assert_eq!(
        records.instance_now("i").map(|r| r.status),
        Some(ResourceStatus::Ready)
    );
    // Finished: answered from the record, still no second call.
    let status = broker
        .instance_last_operation(poll("i", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);
    assert_eq!(broker.plugins().count("last_operation"), 1);
}

#[tokio::test]
async fn concurrent_polls_of_one_binding_operation_make_one_plugin_call() {
    let (broker, records) = broker();
    let broker = Arc::new(broker);
    broker
        .provision(provision("i", SMALL, None))
        .await
        .expect("provisioned");
    broker.plugins().script("bind", [Script::Accepted("b-op")]);
    let mut request = bind("i", "b", SMALL);
    request.info = info(true);
    broker.bind(request).await.expect("accepted");
    let running = OperationStatus {
        state: OperationState::InProgress,
        ..succeeded()
    };
    broker
        .plugins()
        .script_polls([Ok(running), Ok(succeeded())]);
    let gate = broker.plugins().hold_polls();
    let round = |expected: OperationState| {
        let broker = broker.clone();
        let gate = gate.clone();
        async move {
            let calls_before = broker.plugins().count("last_binding_operation");
            let polls: Vec<_> = (0..POLLS)
                .map(|_| {
                    let broker = broker.clone();
                    tokio::spawn(async move {
                        broker.binding_last_operation(poll("i", Some("b"))).await
                    })
                })
                .collect();
            while broker.plugins().count("last_binding_operation") == calls_before {
                tokio::task::yield_now().await;
            }
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            let in_flight = broker.plugins().count("last_binding_operation") - calls_before;
            // Enough for every poll, should each call the plugin; the rest
            // is taken back so the next round is held again.
            gate.add_permits(POLLS);
            for answered in polls {
                let status = answered.await.expect("joined").expect("polled");
                assert_eq!(status.state, expected);
            }
            gate.forget_permits(POLLS);
            (
                in_flight,
                broker.plugins().count("last_binding_operation") - calls_before,
            )
        }
    };
    // Still running: the next round asks the plugin again, once.
    assert_eq!(round(OperationState::InProgress).await, (1, 1));
    assert_eq!(round(OperationState::Succeeded).await, (1, 1));
    assert_eq!(
        broker.plugins().count("get_binding"),
        1,
        "credentials fetched once"
    );
    assert_eq!(
        records.binding_now("b").map(|r| r.status),
        Some(ResourceStatus::Ready)
    );
}
