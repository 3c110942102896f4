//! A removed or refused plugin retires; it does not strand its instances:
//! the catalog stops offering its services, but what it made can still be
//! fetched, polled, unbound and deprovisioned (also after a restart), until
//! none is left and the retired plugin is released.

use std::time::Duration;

use serde_json::{Value, json};
use wasm_broker_tests::faults::{
    ECHO, SLOW_ASYNC, deprovision_async, eventually, instance_poll_path, offering, poll_until_done,
    provision_async, replace_atomically, wait_for_log, write_garbage,
};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, assert_error_body, binding_path, instance_path, unique_id,
};

const RELOAD_WITHIN: Duration = Duration::from_secs(10);

async fn wait_until_not_offered(broker: &TestBroker, name: &str) {
    eventually(
        &format!("{name} leaves the catalog"),
        RELOAD_WITHIN,
        || async {
            offering(&broker.catalog().await, name)
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// The maintenance_info version a fetch of the instance reports: it comes
/// from the plan in the catalog, so it shows the retired offering still
/// describes the instance the catalog no longer offers.
async fn fetched_version(broker: &TestBroker, instance_id: &str) -> Value {
    let (status, body) = broker.get(&instance_path(instance_id)).await;
    assert_eq!(status, 200, "fetch {instance_id}: {body}");
    body["maintenance_info"]["version"].clone()
}

fn description(body: &Value) -> &str {
    body["description"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_removed_plugin_serves_its_instances_until_they_are_gone() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin(), SLOW_ASYNC.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    let (echo, slow) = (ECHO.plan(), SLOW_ASYNC.plan());
    let instance = unique_id("retired-echo");
    let binding = unique_id("retired-echo-binding");
    let (status, body) = broker.provision(&instance, &echo, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = broker.bind(&instance, &binding, &echo, None).await;
    assert_eq!(status, 201, "{body}");
    let pending = unique_id("retired-slow");
    let (status, body) = provision_async(&broker, &pending, &slow, Some(json!({"polls": 3}))).await;
    assert_eq!(status, 202, "{body}");

    broker.note("remove echo.wasm and slow_async.wasm");
    std::fs::remove_file(broker.plugin_dir().join("echo.wasm")).expect("remove echo.wasm");
    std::fs::remove_file(broker.plugin_dir().join("slow_async.wasm"))
        .expect("remove slow_async.wasm");
    wait_until_not_offered(&broker, ECHO.offering).await;
    wait_until_not_offered(&broker, SLOW_ASYNC.offering).await;
    let line = wait_for_log(&broker, &["plugin retired", "echo"], RELOAD_WITHIN).await;
    assert!(line.contains("instances=1"), "{line}");

    // Still ready: taken out of service, it could not deprovision them.
    let readiness = broker
        .raw(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(
        readiness.status().as_u16(),
        200,
        "/readyz with only retired plugins"
    );

    // What exists is served by the retired versions...
    assert_eq!(fetched_version(&broker, &instance).await, json!("1.0.0"));
    let (status, body) = broker.get(&binding_path(&instance, &binding)).await;
    assert_eq!(status, 200, "fetch the binding: {body}");
    let (status, body) = broker.get(&instance_poll_path(&pending)).await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("in progress")),
        "poll through the retired slow_async: {body}"
    );
    // ... and nothing new is made from them.
    let (status, body) = broker
        .provision(&unique_id("retired-new"), &echo, None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error_body(&body, "provision of a retired service");
    assert!(description(&body).contains("retired"), "{body}");
    let (status, body) = broker
        .bind(&instance, &unique_id("retired-new-binding"), &echo, None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(description(&body).contains("retired"), "{body}");

    let (success, listed) = broker.cli(&["plugins", "list"]);
    assert!(success, "{listed}");
    let echo_line = listed
        .lines()
        .find(|line| line.starts_with("echo ") && line.contains("RETIRED"))
        .unwrap_or_else(|| panic!("plugins list shows no retired echo:\n{listed}"));
    assert!(echo_line.contains("1 instance left"), "{echo_line}");

    broker.note("restart with the files still gone");
    broker.kill();
    broker.spawn().await;
    assert!(offering(&broker.catalog().await, ECHO.offering).is_none());
    assert_eq!(
        fetched_version(&broker, &instance).await,
        json!("1.0.0"),
        "after a restart the retired echo is loaded again from the compile cache"
    );
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&pending), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");

    broker.note("wind down what the retired plugins left");
    broker
        .unbind_all_and_deprovision(&instance, &[&binding], &echo)
        .await;
    let (status, body) = deprovision_async(&broker, &pending, &slow).await;
    assert_eq!(status, 202, "{body}");
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&pending), 10).await;
    assert_eq!(body["state"], "succeeded", "{body}");

    // Any change of the plugin directory counts the instances again (so
    // does a timer): nothing is left, so both are released.
    std::fs::write(broker.plugin_dir().join("README"), "not a plugin").expect("touch the dir");
    wait_for_log(&broker, &["retired plugin released", "echo"], RELOAD_WITHIN).await;
    wait_for_log(
        &broker,
        &["retired plugin released", "slow_async"],
        RELOAD_WITHIN,
    )
    .await;
    let (success, listed) = broker.cli(&["plugins", "list"]);
    assert!(success && !listed.contains("RETIRED"), "{listed}");
}

/// A plugin whose file is refused when the broker starts (here: damaged
/// while the broker was down) has no version serving; the one that served
/// its instances last is loaded from the compile cache, retired.
#[tokio::test]
async fn a_plugin_refused_at_startup_leaves_its_instances_served() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    let plan = ECHO.plan();
    let instance = unique_id("refused-echo");
    let binding = unique_id("refused-echo-binding");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = broker.bind(&instance, &binding, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    broker.note("stop, damage echo.wasm, start");
    broker.kill();
    let garbage = broker.dir.path().join("garbage.bin");
    write_garbage(&garbage, 8192);
    replace_atomically(
        &broker.plugin_dir().join("echo.wasm"),
        &std::fs::read(&garbage).expect("read garbage"),
    );
    broker.spawn().await;
    assert!(offering(&broker.catalog().await, ECHO.offering).is_none());
    wait_for_log(&broker, &["plugin refused", "echo"], RELOAD_WITHIN).await;
    assert_eq!(fetched_version(&broker, &instance).await, json!("1.0.0"));
    broker
        .unbind_all_and_deprovision(&instance, &[&binding], &plan)
        .await;
}
