//! Malformed requests that parse as JSON but are not OSB bodies: each gets a
//! 400 (or 412 for a malformed version) and changes nothing. Found by
//! schemathesis; checked here with exact requests. Uses the echo fixture,
//! which needs no backend.

use reqwest::Method;
use serde_json::json;
use wasm_broker_tests::faults::ECHO;
use wasm_broker_tests::{
    BrokerSetup, TestBroker, assert_error_body, binding_path, instance_path, send, unique_id,
};

async fn echo_broker() -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await
}

#[tokio::test]
async fn json_arrays_are_not_request_bodies() {
    let broker = echo_broker().await;
    let id = unique_id("array");
    let body = json!([
        ECHO.service_id,
        ECHO.plan_id,
        "org",
        "space",
        null,
        null,
        null
    ]);
    let (status, error) = send(broker.osb(Method::PUT, &instance_path(&id)).json(&body)).await;
    assert_eq!(status, 400, "{error}");
    assert_error_body(&error, "array provision body");
    let (status, _) = broker.get(&instance_path(&id)).await;
    assert_eq!(status, 404, "nothing may have been created");
}

#[tokio::test]
async fn wrongly_typed_nested_fields_are_refused() {
    let broker = echo_broker().await;
    let plan = ECHO.plan();
    let id = unique_id("typed");
    let (status, body) = broker.provision(&id, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    let update = json!({"service_id": ECHO.service_id, "previous_values": [null, null]});
    let (status, error) = broker.update(&id, &update).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["description"]
            .as_str()
            .unwrap_or_default()
            .contains("previous_values"),
        "{error}"
    );

    let bind = json!({
        "service_id": ECHO.service_id,
        "plan_id": ECHO.plan_id,
        "bind_resource": {"app_guid": 5}
    });
    let binding = unique_id("typed-binding");
    let (status, error) = broker.put_binding(&id, &binding, &bind).await;
    assert_eq!(status, 400, "{error}");
    let (status, _) = broker.get(&binding_path(&id, &binding)).await;
    assert_eq!(status, 404, "the refused binding must not exist");
}

#[tokio::test]
async fn loosely_written_versions_are_not_accepted() {
    let broker = echo_broker().await;
    for version in ["2.+17", "+2.17", "2.17.0"] {
        let response = broker
            .raw(Method::GET, "/v2/catalog")
            .basic_auth(
                wasm_broker_tests::USERNAME,
                Some(wasm_broker_tests::PASSWORD),
            )
            .header("X-Broker-API-Version", version)
            .send()
            .await
            .expect("catalog request");
        assert_eq!(response.status().as_u16(), 412, "version {version:?}");
    }
}
