//! Plugin versions and maintenance_info, through the real binary: an
//! instance keeps the version of the plugin that created it, the catalog's
//! maintenance_info follows the plugin build, and only an update naming the
//! plan's current maintenance_info reaches the plugin's upgrade path.
//!
//! The echo fixture (1.0.0) is replaced by version_two (2.0.0, the same
//! source built as 2.0.0); both report the instance record the host hands
//! them, so the test sees what the host recorded.

use std::time::Duration;

use serde_json::{Value, json};
use wasm_broker_tests::faults::{
    ECHO, ECHO_OTHER_PLAN_ID, eventually, plan_maintenance_version, replace_atomically,
};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, assert_error_body, instance_path, unique_id, wasm,
};

const RELOAD_WITHIN: Duration = Duration::from_secs(10);

async fn wait_for_echo_version(broker: &TestBroker, version: &str) {
    eventually(
        &format!("catalog shows echo {version}"),
        RELOAD_WITHIN,
        || async {
            let catalog = broker.catalog().await;
            ["default", "other"]
                .iter()
                .all(|plan| {
                    plan_maintenance_version(&catalog, "echo", plan).as_deref() == Some(version)
                })
                .then_some(())
        },
    )
    .await;
}

/// `GET` of an echo instance: (the plugin version the host recorded for
/// it, its maintenance_info version, the plugin build that answered).
async fn echo_instance(broker: &TestBroker, instance_id: &str) -> (String, String, String) {
    let (status, body) = broker.get(&instance_path(instance_id)).await;
    assert_eq!(status, 200, "{body}");
    let text = |value: &Value| {
        value
            .as_str()
            .unwrap_or_else(|| panic!("missing field in {body}"))
            .to_owned()
    };
    let attributes = &body["metadata"]["attributes"];
    (
        text(&attributes["instance"]["plugin_version"]),
        text(&body["maintenance_info"]["version"]),
        text(&attributes["served_by"]),
    )
}

fn maintenance_update(version: &str) -> Value {
    json!({"service_id": ECHO.service_id, "maintenance_info": {"version": version}})
}

#[tokio::test]
async fn instances_keep_their_creators_version_and_upgrade_only_to_the_plans() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    wait_for_echo_version(&broker, "1.0.0").await;
    let old = unique_id("upgrade-old");
    let (status, body) = broker.provision(&old, &ECHO.plan(), None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        echo_instance(&broker, &old).await,
        ("1.0.0".to_owned(), "1.0.0".to_owned(), "1.0.0".to_owned()),
        "the plugin version and the plan's maintenance_info are the build's"
    );

    replace_atomically(
        &broker.plugin_dir().join("echo.wasm"),
        &std::fs::read(wasm("version_two")).expect("read version_two.wasm"),
    );
    wait_for_echo_version(&broker, "2.0.0").await;
    assert_eq!(
        echo_instance(&broker, &old).await,
        ("1.0.0".to_owned(), "1.0.0".to_owned(), "2.0.0".to_owned()),
        "served by 2.0.0, the instance still records its creator and runs 1.0.0"
    );
    let new = unique_id("upgrade-new");
    let (status, body) = broker.provision(&new, &ECHO.plan(), None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        echo_instance(&broker, &new).await,
        ("2.0.0".to_owned(), "2.0.0".to_owned(), "2.0.0".to_owned())
    );

    // A version that is not the plan's, newer or older, is refused before
    // the plugin is called, and changes nothing.
    for version in ["3.0.0", "1.0.0"] {
        let (status, body) = broker.update(&old, &maintenance_update(version)).await;
        assert_eq!(status, 422, "update to {version}: {body}");
        assert_eq!(body["error"], "MaintenanceInfoConflict", "{body}");
        assert_error_body(&body, "maintenance conflict");
    }
    // Also when the update changes the plan: the target plan's version counts.
    let mut to_other = maintenance_update("3.0.0");
    to_other["plan_id"] = json!(ECHO_OTHER_PLAN_ID);
    let (status, body) = broker.update(&old, &to_other).await;
    assert_eq!(
        (status, &body["error"]),
        (422, &json!("MaintenanceInfoConflict")),
        "{body}"
    );
    let (status, body) = broker.get(&instance_path(&old)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["plan_id"], ECHO.plan_id,
        "a refused update moved the plan"
    );
    assert_eq!(body["maintenance_info"]["version"], "1.0.0", "{body}");

    // The plan's version is the upgrade: the plugin's update gets it.
    let (status, body) = broker.update(&old, &maintenance_update("2.0.0")).await;
    assert_eq!(status, 200, "{body}");
    let attributes = &body["metadata"]["attributes"];
    assert_eq!(
        (
            &attributes["served_by"],
            &attributes["changes"]["maintenance_version"],
            &attributes["instance"]["maintenance_version"],
        ),
        (&json!("2.0.0"), &json!("2.0.0"), &json!("1.0.0")),
        "the 2.0.0 plugin upgrades an instance at 1.0.0: {body}"
    );
    assert_eq!(
        echo_instance(&broker, &old).await,
        ("1.0.0".to_owned(), "2.0.0".to_owned(), "2.0.0".to_owned()),
        "upgraded, and still recorded as created by 1.0.0"
    );

    for instance in [&old, &new] {
        let (status, body) = broker.deprovision(instance, &ECHO.plan()).await;
        assert_eq!((status, body), (200, json!({})));
    }
}
