//! CPU deadlines hold even when looping plugins occupy every executor
//! thread: the epoch that interrupts them must not depend on those threads.

use std::time::Duration;

use reqwest::Method;
use wasm_broker_tests::faults::FAULT_LOOP;
use wasm_broker_tests::{BrokerSetup, TestBroker, instance_path, json, provision_body, unique_id};

#[tokio::test]
async fn looping_calls_on_every_core_are_all_interrupted() {
    let _cpu = wasm_broker_tests::saturating().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_LOOP.plugin()],
        runtime: "call_timeout_ms = 1000".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let plan = FAULT_LOOP.plan();
    let loops = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        * 2;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..loops {
        let request = broker
            .osb(Method::PUT, &instance_path(&unique_id("loop")))
            .json(&provision_body(&plan, None))
            // Far beyond the deadline: only a broker that never interrupts
            // the plugins lets this expire.
            .timeout(Duration::from_secs(30));
        calls.spawn(async move {
            json(request.send().await.expect("the broker answers in time")).await
        });
    }
    for (status, body) in calls.join_all().await {
        assert_eq!(status, 500, "{body}");
        let description = body["description"].as_str().unwrap_or_default();
        assert!(description.contains("CPU deadline of 1000 ms"), "{body}");
    }
}
