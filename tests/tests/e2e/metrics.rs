//! `/metrics` counts the operations under way (plugin calls this process
//! runs, and asynchronous operations the store holds open), and the
//! unauthenticated endpoints give away no secret.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use wasm_broker_tests::faults::{
    FAULT_LOOP, SLOW_ASYNC, bind_async, binding_poll_path, eventually, instance_poll_path,
    poll_until_done, provision_async,
};
use wasm_broker_tests::{
    BrokerSetup, ENCRYPTION_KEY, PASSWORD, TestBroker, metric_sample, unique_id,
};

/// A connection with a password no plugin is granted: it must not surface.
const DECOY_PASSWORD: &str = "decoy-password-5b2c";

async fn start() -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![SLOW_ASYNC.plugin(), FAULT_LOOP.plugin()],
        extra_config: format!(
            "[plugins.fault_loop]\ncall_timeout_ms = 10000\n\n\
             [connections.decoy]\nkind = \"http\"\nurl = \"http://127.0.0.1:9\"\n\
             username = \"decoy\"\npassword = \"{DECOY_PASSWORD}\"\n"
        ),
        ..BrokerSetup::default()
    })
    .await
}

fn store_gauge(metrics: &str, resource: &str, phase: &str) -> Option<f64> {
    metric_sample(
        metrics,
        "osb_operations_in_progress",
        &[("resource", resource), ("phase", phase)],
    )
}

#[tokio::test]
async fn asynchronous_operations_awaiting_completion_are_counted() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = start().await;
    let plan = SLOW_ASYNC.plan();
    let metrics = broker.metrics().await;
    for resource in ["instance", "binding"] {
        for phase in ["calling", "in_progress"] {
            assert_eq!(
                store_gauge(&metrics, resource, phase),
                Some(0.0),
                "{resource} {phase} before anything started:\n{metrics}"
            );
        }
    }

    // One instance finished, one left in progress, and a binding of the
    // finished one left in progress.
    let ready = unique_id("metrics-ready");
    let (status, body) = provision_async(&broker, &ready, &plan, Some(json!({"polls": 0}))).await;
    assert_eq!(status, 202, "{body}");
    poll_until_done(&broker, &instance_poll_path(&ready), 5).await;
    let slow = unique_id("metrics-slow");
    let (status, body) = provision_async(&broker, &slow, &plan, Some(json!({"polls": 1000}))).await;
    assert_eq!(status, 202, "{body}");
    let binding = unique_id("metrics-binding");
    let (status, body) = bind_async(
        &broker,
        &ready,
        &binding,
        &plan,
        Some(json!({"polls": 1000})),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let metrics = broker.metrics().await;
    assert_eq!(
        store_gauge(&metrics, "instance", "in_progress"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        store_gauge(&metrics, "binding", "in_progress"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        store_gauge(&metrics, "instance", "calling"),
        Some(0.0),
        "{metrics}"
    );
    for secret in [&ready, &slow, &binding] {
        assert!(
            !metrics.contains(secret.as_str()),
            "{secret} in /metrics:\n{metrics}"
        );
    }

    // An operation leaves the count when a poll finds it finished.
    let quick = unique_id("metrics-quick");
    let (status, body) =
        bind_async(&broker, &ready, &quick, &plan, Some(json!({"polls": 0}))).await;
    assert_eq!(status, 202, "{body}");
    let metrics = broker.metrics().await;
    assert_eq!(
        store_gauge(&metrics, "binding", "in_progress"),
        Some(2.0),
        "{metrics}"
    );
    let (finished, _) = poll_until_done(&broker, &binding_poll_path(&ready, &quick), 5).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let metrics = broker.metrics().await;
    assert_eq!(
        store_gauge(&metrics, "binding", "in_progress"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn plugin_calls_running_now_are_counted() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = start().await;
    let labels = [("plugin", "fault_loop"), ("operation", "provision")];
    let instance = unique_id("metrics-loop");
    // Spins until its 10 s deadline: the gauge and the store's `calling`
    // count show it while the request is outstanding.
    let request = {
        let request = broker
            .osb(Method::PUT, &wasm_broker_tests::instance_path(&instance))
            .json(&wasm_broker_tests::provision_body(&FAULT_LOOP.plan(), None));
        tokio::spawn(async move { wasm_broker_tests::send(request).await })
    };
    eventually(
        "the looping call to show in /metrics",
        Duration::from_secs(9),
        || async {
            let metrics = broker.metrics().await;
            (metric_sample(&metrics, "plugin_calls_in_progress", &labels) == Some(1.0)
                && store_gauge(&metrics, "instance", "calling") == Some(1.0))
            .then_some(())
        },
    )
    .await;
    let (status, body) = request.await.expect("provision task");
    assert_eq!(status, 500, "{body}");
    let metrics = broker.metrics().await;
    assert_eq!(
        metric_sample(&metrics, "plugin_calls_in_progress", &labels),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        store_gauge(&metrics, "instance", "calling"),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn unauthenticated_endpoints_expose_no_secrets() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = start().await;
    let plan = SLOW_ASYNC.plan();
    let instance = unique_id("metrics-secret-instance");
    let (status, body) =
        provision_async(&broker, &instance, &plan, Some(json!({"polls": 0}))).await;
    assert_eq!(status, 202, "{body}");
    poll_until_done(&broker, &instance_poll_path(&instance), 5).await;
    let binding = unique_id("metrics-secret-binding");
    let (status, body) = bind_async(
        &broker,
        &instance,
        &binding,
        &plan,
        Some(json!({"polls": 0})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    poll_until_done(&broker, &binding_poll_path(&instance, &binding), 5).await;
    // slow_async's credentials are {"token": "<binding id>"}: fetched once,
    // so they have passed through the broker.
    let (status, fetched) = broker
        .get(&wasm_broker_tests::binding_path(&instance, &binding))
        .await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"]["token"], binding.as_str());

    let secrets = [
        instance.as_str(),
        binding.as_str(),
        PASSWORD,
        ENCRYPTION_KEY,
        DECOY_PASSWORD,
    ];
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = broker
            .raw(Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: {error}"));
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        let text = response.text().await.expect("body");
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "GET {path} shows {secret:?}:\n{text}"
            );
        }
    }
}
