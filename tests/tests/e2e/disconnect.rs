//! A platform that hangs up mid-request (its own timeout) must not leave
//! the resource locked: the broker finishes the operation and records the
//! outcome, so the platform's follow-up delete is served.

use std::time::Duration;

use reqwest::Method;
use wasm_broker_tests::faults::FAULT_LOOP;
use wasm_broker_tests::{BrokerSetup, TestBroker, instance_path, provision_body, unique_id};

#[tokio::test]
async fn an_operation_outlives_the_client_that_gave_up() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_LOOP.plugin()],
        runtime: "call_timeout_ms = 1500".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let id = unique_id("hangup");
    let plan = FAULT_LOOP.plan();
    let gave_up = broker
        .osb(Method::PUT, &instance_path(&id))
        .json(&provision_body(&plan, None))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the client should have timed out while the plugin loops"
    );

    // The plugin call ends at its deadline; afterwards the instance is a
    // failed provision the platform may delete, not a stuck "in progress".
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = broker
        .get(&format!("{}/last_operation", instance_path(&id)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "failed", "{body}");
    let (status, body) = broker.deprovision(&id, &plan).await;
    assert_eq!(status, 200, "orphan mitigation must be served: {body}");
}
