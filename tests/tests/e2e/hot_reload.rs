//! The plugin directory is watched: replacing, adding or removing a `.wasm`
//! takes effect without a restart, a broken replacement leaves the old
//! version serving, and calls in flight are not disturbed by a swap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasm_broker_tests::faults::{
    ECHO, FAULT_LOOP, SLOW_ASYNC, assert_echo_serves, escape_http_results, eventually,
    instance_last_operation, offering, plan_maintenance_version, provision_async,
    replace_atomically, wait_for_log, write_garbage,
};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, assert_error_body, metric_sample, unique_id, wasm,
};

/// How long a change of the plugin directory may take to show.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);

async fn echo_broker() -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// Waits until both echo plans show maintenance_info `version`.
async fn wait_for_echo_version(broker: &TestBroker, version: &str) {
    eventually(
        &format!("catalog shows echo {version}"),
        RELOAD_WITHIN,
        || async {
            let catalog = broker.catalog().await;
            let versions =
                ["default", "other"].map(|plan| plan_maintenance_version(&catalog, "echo", plan));
            versions
                .iter()
                .all(|v| v.as_deref() == Some(version))
                .then_some(())
        },
    )
    .await;
}

/// The plugin version echo reports serving a provision.
async fn echo_served_by(broker: &TestBroker) -> String {
    let (status, body) = broker
        .provision(&unique_id("echo-version"), &ECHO.plan(), None)
        .await;
    assert_eq!(status, 201, "{body}");
    body["metadata"]["attributes"]["served_by"]
        .as_str()
        .unwrap_or_else(|| panic!("no served_by in {body}"))
        .to_owned()
}

#[tokio::test]
async fn replacing_a_plugin_file_swaps_its_version_without_a_restart() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = echo_broker().await;
    let echo_file = broker.plugin_dir().join("echo.wasm");
    wait_for_echo_version(&broker, "1.0.0").await;
    let old_instance = unique_id("echo-v1");
    let (status, body) = broker.provision(&old_instance, &ECHO.plan(), None).await;
    assert_eq!(
        (status, &body["metadata"]["attributes"]["served_by"]),
        (201, &json!("1.0.0")),
        "{body}"
    );

    broker.note("rename version_two over echo.wasm");
    replace_atomically(&echo_file, &read(&wasm("version_two")));
    wait_for_echo_version(&broker, "2.0.0").await;
    assert_eq!(echo_served_by(&broker).await, "2.0.0");
    wait_for_log(&broker, &["plugin loaded", "echo", "2.0.0"], RELOAD_WITHIN).await;

    // The instance made by 1.0.0 is now served by 2.0.0, and can be
    // brought to the plan's new maintenance version.
    let (status, body) = broker
        .bind(
            &old_instance,
            &unique_id("echo-v1-binding"),
            &ECHO.plan(),
            None,
        )
        .await;
    assert_eq!(
        (status, &body["credentials"]["served_by"]),
        (201, &json!("2.0.0")),
        "{body}"
    );
    let upgrade = json!({"service_id": ECHO.service_id, "maintenance_info": {"version": "2.0.0"}});
    let (status, body) = broker.update(&old_instance, &upgrade).await;
    assert_eq!(status, 200, "maintenance update to 2.0.0: {body}");
    assert_eq!(
        body["metadata"]["attributes"]["changes"]["maintenance_version"], "2.0.0",
        "{body}"
    );
    let (status, body) = broker
        .get(&wasm_broker_tests::instance_path(&old_instance))
        .await;
    assert_eq!(
        (status, &body["maintenance_info"]["version"]),
        (200, &json!("2.0.0")),
        "{body}"
    );

    broker.note("plain overwrite of echo.wasm with 1.0.0");
    std::fs::write(&echo_file, read(&wasm("echo"))).expect("overwrite echo.wasm");
    wait_for_echo_version(&broker, "1.0.0").await;
    assert_eq!(echo_served_by(&broker).await, "1.0.0");
    assert_echo_serves(&broker, "after two swaps").await;
}

#[tokio::test]
async fn added_plugins_serve_and_removed_ones_stop() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = echo_broker().await;
    let added = broker.plugin_dir().join("slow_async.wasm");
    assert!(offering(&broker.catalog().await, SLOW_ASYNC.offering).is_none());

    broker.note("add slow_async.wasm");
    replace_atomically(&added, &read(&wasm("slow_async")));
    eventually(
        "slow-async appears in the catalog",
        RELOAD_WITHIN,
        || async { offering(&broker.catalog().await, SLOW_ASYNC.offering).map(|_| ()) },
    )
    .await;
    let instance_id = unique_id("added");
    let (status, body) = provision_async(
        &broker,
        &instance_id,
        &SLOW_ASYNC.plan(),
        Some(json!({"polls": 5})),
    )
    .await;
    assert_eq!(status, 202, "the added plugin serves: {body}");

    broker.note("remove slow_async.wasm");
    std::fs::remove_file(&added).expect("remove slow_async.wasm");
    eventually("slow-async leaves the catalog", RELOAD_WITHIN, || async {
        offering(&broker.catalog().await, SLOW_ASYNC.offering)
            .is_none()
            .then_some(())
    })
    .await;
    wait_for_log(
        &broker,
        &["plugin retired", "slow_async", "removed"],
        RELOAD_WITHIN,
    )
    .await;

    let (status, body) =
        provision_async(&broker, &unique_id("removed"), &SLOW_ASYNC.plan(), None).await;
    assert_eq!(
        status, 400,
        "a removed plugin's offering is unknown: {body}"
    );
    assert_error_body(&body, "provision of a removed offering");
    assert!(
        body["description"]
            .as_str()
            .unwrap_or_default()
            .contains(SLOW_ASYNC.service_id),
        "{body}"
    );
    // The instance it left behind is still polled through it: the removed
    // plugin is retired, not forgotten (more in `retired.rs`).
    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("in progress")),
        "last_operation of an instance whose plugin file is gone: {body}"
    );

    assert_echo_serves(&broker, "after adding and removing a plugin").await;
}

#[tokio::test]
async fn a_broken_replacement_leaves_the_old_version_serving() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = echo_broker().await;
    let echo_file = broker.plugin_dir().join("echo.wasm");

    broker.note("rename garbage over echo.wasm");
    let garbage = broker.dir.path().join("garbage.bin");
    write_garbage(&garbage, 8192);
    replace_atomically(&echo_file, &read(&garbage));
    let line = wait_for_log(
        &broker,
        &["refused", "echo.wasm", "still serving version 1.0.0"],
        RELOAD_WITHIN,
    )
    .await;
    assert!(
        line.contains("component"),
        "the log says why the file was refused: {line}"
    );
    let catalog = broker.catalog().await;
    assert_eq!(
        plan_maintenance_version(&catalog, "echo", "default").as_deref(),
        Some("1.0.0"),
        "{catalog}"
    );
    assert_eq!(echo_served_by(&broker).await, "1.0.0");
    assert_echo_serves(&broker, "after a broken replacement").await;
    // The running broker says which version serves (the directory holds
    // the refused file): in /metrics, in /admin/plugins, and so in
    // `plugins list`.
    assert_eq!(serving_gauge(&broker, "1.0.0").await, Some(1.0));
    assert_eq!(
        info_gauge(&broker, "echo", "1.0.0", "serving").await,
        Some(1.0)
    );
    let anonymous = broker
        .raw(reqwest::Method::GET, "/admin/plugins")
        .send()
        .await
        .expect("GET /admin/plugins");
    assert_eq!(
        anonymous.status(),
        401,
        "the admin view needs the credentials"
    );
    let echo = broker.admin_plugin("echo").await;
    assert_eq!(
        (&echo["state"], &echo["version"]),
        (&json!("serving"), &json!("1.0.0")),
        "{echo}"
    );
    // `assert_echo_serves` provisioned before the replacement.
    assert!(echo["instances"].as_u64() >= Some(1), "{echo}");
    assert!(
        echo["error"]
            .as_str()
            .is_some_and(|error| error.contains("still serving version 1.0.0")),
        "{echo}"
    );
    let (success, listed) = broker.cli(&["plugins", "list"]);
    assert!(success, "{listed}");
    assert!(listed.contains("the running broker at"), "{listed}");
    let line = listed
        .lines()
        .find(|line| line.starts_with("echo "))
        .unwrap_or_else(|| panic!("no echo line:\n{listed}"));
    assert!(
        line.contains("1.0.0") && line.contains("serving") && line.contains("replacement refused"),
        "{line}"
    );

    // The watcher keeps going: a good file after the bad one is taken.
    broker.note("rename version_two over the broken echo.wasm");
    replace_atomically(&echo_file, &read(&wasm("version_two")));
    wait_for_echo_version(&broker, "2.0.0").await;
    assert_eq!(echo_served_by(&broker).await, "2.0.0");
    assert_eq!(serving_gauge(&broker, "2.0.0").await, Some(1.0));
    assert_eq!(serving_gauge(&broker, "1.0.0").await, Some(0.0));
    assert_eq!(
        info_gauge(&broker, "echo", "2.0.0", "serving").await,
        Some(1.0)
    );
    assert_eq!(
        info_gauge(&broker, "echo", "1.0.0", "serving").await,
        Some(0.0)
    );
    let echo = broker.admin_plugin("echo").await;
    assert_eq!(
        (&echo["state"], &echo["version"], &echo["error"]),
        (&json!("serving"), &json!("2.0.0"), &Value::Null),
        "{echo}"
    );
}

/// `plugin_info{plugin,version,state}` in `/metrics`.
async fn info_gauge(broker: &TestBroker, plugin: &str, version: &str, state: &str) -> Option<f64> {
    let labels = [("plugin", plugin), ("version", version), ("state", state)];
    metric_sample(&broker.metrics().await, "plugin_info", &labels)
}

/// `plugin_serving{plugin="echo",version=...}` in `/metrics`.
async fn serving_gauge(broker: &TestBroker, version: &str) -> Option<f64> {
    let labels = [("plugin", "echo"), ("version", version)];
    metric_sample(&broker.metrics().await, "plugin_serving", &labels)
}

/// No fixture has a slow call that succeeds, so this shows the swap side:
/// a call in flight when its plugin file is replaced keeps running the
/// code it started with, to its own end (here the loop's 3 s deadline),
/// while the new file serves new requests at once.
#[tokio::test]
async fn a_swap_does_not_disturb_calls_in_flight() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = Arc::new(
        TestBroker::start(BrokerSetup {
            plugins: vec![FAULT_LOOP.plugin()],
            extra_config: "[plugins.fault_loop]\ncall_timeout_ms = 3000\n".to_owned(),
            ..BrokerSetup::default()
        })
        .await,
    );
    let loop_id = unique_id("in-flight");
    let in_flight = {
        let broker = broker.clone();
        let loop_id = loop_id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = broker.provision(&loop_id, &FAULT_LOOP.plan(), None).await;
            (answer, started.elapsed())
        })
    };
    eventually(
        "the looping provision is recorded",
        Duration::from_secs(5),
        || async { (instance_last_operation(&broker, &loop_id).await.0 == 200).then_some(()) },
    )
    .await;

    broker.note("rename echo's code over fault_loop.wasm while a call runs");
    replace_atomically(
        &broker.plugin_dir().join("fault_loop.wasm"),
        &read(&wasm("echo")),
    );
    eventually("fault_loop.wasm now serves echo", RELOAD_WITHIN, || async {
        let catalog = broker.catalog().await;
        (offering(&catalog, "echo").is_some() && offering(&catalog, FAULT_LOOP.offering).is_none())
            .then_some(())
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the swap must not wait for, nor end, the call in flight"
    );
    let (status, body) = broker
        .provision(&unique_id("after-swap"), &ECHO.plan(), None)
        .await;
    assert_eq!(status, 201, "the new code serves at once: {body}");
    assert!(
        !in_flight.is_finished(),
        "the old call still runs its old code"
    );

    let ((status, body), elapsed): ((u16, Value), Duration) =
        in_flight.await.expect("in-flight request task");
    assert_eq!(status, 500, "{body}");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("fault_loop") && description.contains("CPU deadline of 3000 ms"),
        "the old call ends as the old code does, at its own deadline: {body}"
    );
    assert!(
        elapsed >= Duration::from_millis(2900),
        "the call was cut short by the swap after {elapsed:?}"
    );
    let (status, body) = broker
        .provision(&unique_id("old-offering"), &FAULT_LOOP.plan(), None)
        .await;
    assert_eq!(status, 400, "the replaced offering is gone: {body}");
}

/// Requests keep succeeding while the file is swapped under them: each is
/// served whole by one version or the other.
#[tokio::test]
async fn a_swap_under_load_fails_no_request() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = Arc::new(echo_broker().await);
    let swapping = {
        let broker = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            broker.note("rename version_two over echo.wasm under load");
            replace_atomically(
                &broker.plugin_dir().join("echo.wasm"),
                &read(&wasm("version_two")),
            );
        })
    };
    let mut served_by = std::collections::BTreeSet::new();
    let until = Instant::now() + RELOAD_WITHIN;
    while Instant::now() < until && !served_by.contains("2.0.0") {
        let answers = wasm_broker_tests::faults::all_at_once(&broker, 8, |broker, _| async move {
            broker
                .provision(&unique_id("under-load"), &ECHO.plan(), None)
                .await
        })
        .await;
        for (status, body) in answers {
            assert_eq!(status, 201, "a provision during the swap: {body}");
            let version = body["metadata"]["attributes"]["served_by"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(version == "1.0.0" || version == "2.0.0", "{body}");
            served_by.insert(version);
        }
    }
    swapping.await.expect("swap task");
    assert!(
        served_by.contains("2.0.0"),
        "the swap never took effect under load: {served_by:?}"
    );
}

/// Removing a plugin does not forget its instances: its retired version
/// serves them meanwhile, and put back, the file serves them again, their
/// operations included.
#[tokio::test]
async fn a_plugin_put_back_serves_its_instances_again() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![SLOW_ASYNC.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("put-back");
    let (status, body) =
        provision_async(&broker, &instance_id, &plan, Some(json!({"polls": 1}))).await;
    assert_eq!(status, 202, "{body}");
    let file = broker.plugin_dir().join("slow_async.wasm");

    broker.note("remove slow_async.wasm with an operation in progress");
    std::fs::remove_file(&file).expect("remove slow_async.wasm");
    eventually("slow-async leaves the catalog", RELOAD_WITHIN, || async {
        offering(&broker.catalog().await, SLOW_ASYNC.offering)
            .is_none()
            .then_some(())
    })
    .await;
    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(status, 200, "polled through the retired version: {body}");

    broker.note("put slow_async.wasm back");
    replace_atomically(&file, &read(&wasm("slow_async")));
    eventually(
        "slow-async is back in the catalog",
        RELOAD_WITHIN,
        || async { offering(&broker.catalog().await, SLOW_ASYNC.offering).map(|_| ()) },
    )
    .await;
    let (body, _) = wasm_broker_tests::faults::poll_until_done(
        &broker,
        &wasm_broker_tests::faults::instance_poll_path(&instance_id),
        5,
    )
    .await;
    assert_eq!(
        body["state"], "succeeded",
        "the operation resumes with its plugin: {body}"
    );
    let (status, body) = broker
        .get(&wasm_broker_tests::instance_path(&instance_id))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A plugin added while the broker runs gets its `[plugins.<name>]`
/// section like one present at start: its grants and its limits.
#[tokio::test]
async fn an_added_plugin_gets_its_grants_and_limits() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        extra_config: format!(
            "{}\n[plugins.escape.connections]\napi = \"rabbitmq-management\"\n\n[plugins.fault_loop]\ncall_timeout_ms = 500\n",
            wasm_broker_tests::CONNECTIONS
        ),
        runtime: "call_timeout_ms = 5000".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    broker.note("add escape.wasm and fault_loop.wasm");
    replace_atomically(
        &broker.plugin_dir().join("escape.wasm"),
        &read(&wasm("escape")),
    );
    replace_atomically(
        &broker.plugin_dir().join("fault_loop.wasm"),
        &read(&wasm("fault_loop")),
    );
    eventually("escape and fault-loop appear", RELOAD_WITHIN, || async {
        let catalog = broker.catalog().await;
        (offering(&catalog, "escape").is_some()
            && offering(&catalog, FAULT_LOOP.offering).is_some())
        .then_some(())
    })
    .await;

    for result in escape_http_results(&broker).await {
        assert!(
            result.starts_with("denied"),
            "the grant of `api` applies to the added plugin: {result}"
        );
    }

    let started = Instant::now();
    let (status, body) = broker
        .provision(&unique_id("added-loop"), &FAULT_LOOP.plan(), None)
        .await;
    assert_eq!(status, 500, "{body}");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("500 ms"),
        "the added plugin's own deadline applies: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        started.elapsed()
    );
}

/// Platforms cache the catalog by ETag: a swap must change it.
#[tokio::test]
async fn a_swap_changes_the_catalog_etag() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = echo_broker().await;
    let etag = |response: &reqwest::Response| {
        response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let response = broker
        .osb(reqwest::Method::GET, "/v2/catalog")
        .send()
        .await
        .expect("catalog");
    let before = etag(&response).unwrap_or_else(|| panic!("no ETag on the catalog"));

    replace_atomically(
        &broker.plugin_dir().join("echo.wasm"),
        &read(&wasm("version_two")),
    );
    wait_for_echo_version(&broker, "2.0.0").await;
    let response = broker
        .osb(reqwest::Method::GET, "/v2/catalog")
        .header(reqwest::header::IF_NONE_MATCH, &before)
        .send()
        .await
        .expect("catalog");
    assert_eq!(
        response.status().as_u16(),
        200,
        "the cached catalog is stale after a swap"
    );
    let after = etag(&response);
    assert!(
        after.is_some() && after.as_deref() != Some(before.as_str()),
        "ETag {before} unchanged: {after:?}"
    );
}

/// A file copied slowly is seen half-written: the half is refused and the
/// old version serves on, then the whole file is taken.
#[tokio::test]
async fn a_slowly_written_file_is_taken_once_complete() {
    let _cpu = wasm_broker_tests::timed().await;
    use std::io::Write as _;
    let broker = echo_broker().await;
    let new_code = read(&wasm("version_two"));
    let (first, rest) = new_code.split_at(new_code.len() / 2);

    broker.note("write the first half of version_two over echo.wasm");
    let mut file =
        std::fs::File::create(broker.plugin_dir().join("echo.wasm")).expect("truncate echo.wasm");
    file.write_all(first).expect("write first half");
    file.flush().expect("flush");
    wait_for_log(
        &broker,
        &["refused", "echo.wasm", "still serving version 1.0.0"],
        RELOAD_WITHIN,
    )
    .await;
    assert_eq!(
        echo_served_by(&broker).await,
        "1.0.0",
        "the old version serves while the file is incomplete"
    );

    broker.note("write the rest");
    file.write_all(rest).expect("write the rest");
    drop(file);
    wait_for_echo_version(&broker, "2.0.0").await;
    assert_eq!(echo_served_by(&broker).await, "2.0.0");
}

/// Kubernetes updates a mounted ConfigMap or Secret volume by swapping a
/// `..data` symlink to a new directory; the `.wasm` names in the mount are
/// symlinks through `..data` and never change themselves.
#[tokio::test]
async fn a_volume_updated_the_kubernetes_way_is_reloaded() {
    let _cpu = wasm_broker_tests::timed().await;
    use std::os::unix::fs::symlink;
    let broker = echo_broker().await;
    let dir = broker.plugin_dir();
    std::fs::remove_file(dir.join("echo.wasm")).expect("remove the plain file");
    // Let the removal settle, so the symlinked echo is a fresh load.
    eventually("echo leaves the catalog", RELOAD_WITHIN, || async {
        offering(&broker.catalog().await, "echo")
            .is_none()
            .then_some(())
    })
    .await;

    broker.note("mount echo 1.0.0 as ..data/echo.wasm");
    std::fs::create_dir(dir.join("..v1")).expect("..v1");
    std::fs::write(dir.join("..v1/echo.wasm"), read(&wasm("echo"))).expect("v1 echo");
    symlink("..v1", dir.join("..data")).expect("..data -> ..v1");
    symlink("..data/echo.wasm", dir.join("echo.wasm")).expect("echo.wasm -> ..data/echo.wasm");
    wait_for_echo_version(&broker, "1.0.0").await;

    broker.note("kubelet-style update: ..data -> ..v2");
    std::fs::create_dir(dir.join("..v2")).expect("..v2");
    std::fs::write(dir.join("..v2/echo.wasm"), read(&wasm("version_two"))).expect("v2 echo");
    symlink("..v2", dir.join("..data_tmp")).expect("..data_tmp -> ..v2");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.join("..v1")).expect("remove ..v1");
    wait_for_echo_version(&broker, "2.0.0").await;
    assert_eq!(echo_served_by(&broker).await, "2.0.0");
}
