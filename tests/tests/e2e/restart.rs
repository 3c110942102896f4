//! A crash (SIGKILL) loses nothing: asynchronous operations in flight are
//! resumed after the restart, and synchronous ones the crash cut short are
//! reported as failed and can be cleaned up.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use wasm_broker_tests::faults::{
    FAULT_LOOP, SLOW_ASYNC, bind_async, binding_last_operation, binding_poll_path,
    deprovision_async, eventually, instance_last_operation, instance_poll_path, poll_until_done,
    provision_async, unbind_async,
};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, binding_path, instance_path, provision_body, unique_id,
};

async fn slow_async_broker() -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![SLOW_ASYNC.plugin()],
        ..BrokerSetup::default()
    })
    .await
}

/// SIGKILL, then the same binary on the same directory, config and port.
async fn crash_and_restart(broker: &mut TestBroker, why: &str) {
    broker.note(&format!("kill -9: {why}"));
    broker.kill();
    broker.spawn().await;
    broker.note("restarted");
}

#[tokio::test]
async fn an_async_provision_survives_a_crash() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = slow_async_broker().await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("restart-provision");
    let parameters = Some(json!({"polls": 3}));
    let (status, body) = provision_async(&broker, &instance_id, &plan, parameters.clone()).await;
    assert_eq!(status, 202, "{body}");
    let operation = body["operation"]
        .as_str()
        .unwrap_or_else(|| panic!("no operation in {body}"))
        .to_owned();
    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "before the crash: {body}"
    );

    crash_and_restart(&mut broker, "async provision in progress").await;

    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "after the restart: {body}"
    );
    let (status, body) = provision_async(&broker, &instance_id, &plan, parameters.clone()).await;
    assert_eq!(status, 202, "an identical PUT while in progress: {body}");
    assert_eq!(
        body["operation"],
        operation.as_str(),
        "the same operation, not a new one: {body}"
    );

    let (body, in_progress) = poll_until_done(&broker, &instance_poll_path(&instance_id), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    assert!(
        in_progress >= 1,
        "slow_async needed 3 in-progress polls in all; only the restart can skip them"
    );

    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(
        status, 200,
        "the provisioned instance can be fetched: {body}"
    );
    assert_eq!(
        (body["service_id"].as_str(), body["plan_id"].as_str()),
        (Some(SLOW_ASYNC.service_id), Some(SLOW_ASYNC.plan_id))
    );
    let (status, body) = provision_async(&broker, &instance_id, &plan, parameters).await;
    assert_eq!(status, 200, "an identical PUT after completion: {body}");

    let (status, body) = deprovision_async(&broker, &instance_id, &plan).await;
    assert_eq!(status, 202, "{body}");
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&instance_id), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");
}

#[tokio::test]
async fn an_async_bind_survives_a_crash() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = slow_async_broker().await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("restart-bind-instance");
    let (status, body) =
        provision_async(&broker, &instance_id, &plan, Some(json!({"polls": 0}))).await;
    assert_eq!(status, 202, "{body}");
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&instance_id), 5).await;
    assert_eq!(body["state"], "succeeded", "{body}");

    let binding_id = unique_id("restart-binding");
    let parameters = Some(json!({"polls": 2}));
    let (status, body) = bind_async(
        &broker,
        &instance_id,
        &binding_id,
        &plan,
        parameters.clone(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let operation = body["operation"]
        .as_str()
        .unwrap_or_else(|| panic!("no operation in {body}"))
        .to_owned();

    crash_and_restart(&mut broker, "async bind in progress").await;

    let (status, body) = binding_last_operation(&broker, &instance_id, &binding_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "after the restart: {body}"
    );
    let (status, body) = bind_async(
        &broker,
        &instance_id,
        &binding_id,
        &plan,
        parameters.clone(),
    )
    .await;
    assert_eq!(
        (status, &body["operation"]),
        (202, &json!(operation)),
        "an identical PUT while in progress: {body}"
    );
    let (status, body) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(
        status, 404,
        "a binding still being created cannot be fetched: {body}"
    );

    let (body, _) =
        poll_until_done(&broker, &binding_poll_path(&instance_id, &binding_id), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    let (status, body) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"], json!({"token": binding_id}), "{body}");
    let (status, body) = bind_async(&broker, &instance_id, &binding_id, &plan, parameters).await;
    assert_eq!(
        (status, &body["credentials"]),
        (200, &json!({"token": binding_id})),
        "identical PUT after completion: {body}"
    );

    let (status, body) = unbind_async(&broker, &instance_id, &binding_id, &plan).await;
    assert_eq!(status, 202, "{body}");
    let (body, _) =
        poll_until_done(&broker, &binding_poll_path(&instance_id, &binding_id), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");
}

#[tokio::test]
async fn a_sync_provision_cut_short_by_a_crash_is_reported_failed() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_LOOP.plugin()],
        // Long enough that only the crash ends the call.
        extra_config: "[plugins.fault_loop]\ncall_timeout_ms = 60000\n".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let plan = FAULT_LOOP.plan();
    let instance_id = unique_id("restart-sync");
    let body = provision_body(&plan, None);
    let request = broker
        .osb(Method::PUT, &instance_path(&instance_id))
        .json(&body);
    // The crash drops the connection: this request never gets an answer.
    let pending = tokio::spawn(async move {
        request
            .send()
            .await
            .map(|response| response.status().as_u16())
    });
    let (broker_ref, id) = (&broker, instance_id.as_str());
    eventually(
        "the provision is running in the plugin",
        Duration::from_secs(5),
        || async move {
            let (status, body) = instance_last_operation(broker_ref, id).await;
            (status == 200 && body["state"] == "in progress").then_some(())
        },
    )
    .await;

    crash_and_restart(&mut broker, "sync provision running").await;
    let answered = pending.await.expect("request task");
    assert!(
        answered.is_err(),
        "the killed broker cannot have answered: {answered:?}"
    );

    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("failed")),
        "{body}"
    );
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("broker stopped"),
        "the description says why: {body}"
    );
    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 404, "a failed provision is no instance: {body}");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(
        status, 409,
        "the failed instance must be deleted before the id is reused: {body}"
    );

    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(
        status, 200,
        "orphan-mitigation DELETE after the crash: {body}"
    );
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 410, "{body}");
}

/// Several operations of different kinds in flight at once all come back.
#[tokio::test]
async fn every_operation_in_flight_comes_back() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = slow_async_broker().await;
    let plan = SLOW_ASYNC.plan();
    let ids: Vec<String> = (0..4)
        .map(|n| unique_id(&format!("restart-many-{n}")))
        .collect();
    for id in &ids {
        let (status, body) = provision_async(&broker, id, &plan, Some(json!({"polls": 1}))).await;
        assert_eq!(status, 202, "{body}");
    }
    crash_and_restart(&mut broker, "four provisions in progress").await;
    for id in &ids {
        let (body, _) = poll_until_done(&broker, &instance_poll_path(id), 10).await;
        assert_eq!(body["state"], "succeeded", "{id}: {body}");
        let (status, body) = broker.get(&instance_path(id)).await;
        assert_eq!(status, 200, "{id}: {body}");
    }
}

/// An update's changes live in its operation record until it succeeds: a
/// crash in between must not lose them.
#[tokio::test]
async fn an_async_update_survives_a_crash_with_its_changes() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = slow_async_broker().await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("restart-update");
    let (status, body) =
        provision_async(&broker, &instance_id, &plan, Some(json!({"polls": 0}))).await;
    assert_eq!(status, 202, "{body}");
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&instance_id), 5).await;
    assert_eq!(body["state"], "succeeded", "{body}");

    let update =
        json!({"service_id": plan.service_id, "parameters": {"polls": 2, "size": "large"}});
    let path = format!("{}?accepts_incomplete=true", instance_path(&instance_id));
    let (status, body) =
        wasm_broker_tests::send(broker.osb(Method::PATCH, &path).json(&update)).await;
    assert_eq!(status, 202, "{body}");

    crash_and_restart(&mut broker, "async update in progress").await;

    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("ConcurrencyError")),
        "fetch during an update: {body}"
    );
    let (body, in_progress) = poll_until_done(&broker, &instance_poll_path(&instance_id), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    assert!(
        in_progress >= 1,
        "the update still had polls to go after the restart"
    );
    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["parameters"],
        json!({"polls": 2, "size": "large"}),
        "the update's changes were applied: {body}"
    );
}

#[tokio::test]
async fn an_async_deprovision_survives_a_crash() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = slow_async_broker().await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("restart-deprovision");
    let (status, body) =
        provision_async(&broker, &instance_id, &plan, Some(json!({"polls": 0}))).await;
    assert_eq!(status, 202, "{body}");
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&instance_id), 5).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    // slow_async's deprovision reads `polls` from the instance's parameters.
    let (status, body) = deprovision_async(&broker, &instance_id, &plan).await;
    assert_eq!(status, 202, "{body}");
    let operation = body["operation"].clone();

    crash_and_restart(&mut broker, "async deprovision in progress").await;

    let (status, body) = deprovision_async(&broker, &instance_id, &plan).await;
    assert_eq!(
        (status, &body["operation"]),
        (202, &operation),
        "a repeated DELETE names the running operation: {body}"
    );
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&instance_id), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = deprovision_async(&broker, &instance_id, &plan).await;
    assert_eq!(status, 410, "{body}");
}
