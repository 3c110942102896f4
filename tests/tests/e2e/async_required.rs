//! A plugin that can only work asynchronously answers 422 AsyncRequired to
//! a request without `accepts_incomplete=true`, and nothing is recorded.

use reqwest::Method;
use wasm_broker_tests::faults::SLOW_ASYNC;
use wasm_broker_tests::{BrokerSetup, TestBroker, instance_path, provision_body, send, unique_id};

#[tokio::test]
async fn asynchronous_only_plugins_require_accepts_incomplete() {
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![SLOW_ASYNC.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    let plan = SLOW_ASYNC.plan();
    let id = unique_id("sync-request");
    for query in ["", "?accepts_incomplete=false"] {
        let path = format!("{}{query}", instance_path(&id));
        let (status, body) = send(
            broker
                .osb(Method::PUT, &path)
                .json(&provision_body(&plan, None)),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"], "AsyncRequired", "{body}");
    }
    let (status, _) = broker
        .get(&format!("{}/last_operation", instance_path(&id)))
        .await;
    assert_eq!(status, 404, "a refused provision leaves no instance behind");
    let path = format!("{}?accepts_incomplete=true", instance_path(&id));
    let (status, body) = send(
        broker
            .osb(Method::PUT, &path)
            .json(&provision_body(&plan, None)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["operation"].as_str().is_some_and(|op| !op.is_empty()),
        "{body}"
    );
}
