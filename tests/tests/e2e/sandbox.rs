//! The sandbox holds: plugins that loop, hoard memory, panic, answer
//! garbage or try to get out are stopped or refused with a clear 500, while
//! the broker and every other plugin keep serving; files that are not
//! plugins of this contract are refused at load with a clear log line.
//!
//! Every test starts its own broker with all the fixtures loaded together
//! (limits: 2 s CPU deadline, 32 MiB memory), so one plugin's fault has the
//! others as neighbours.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasm_broker_tests::faults::{
    CLASH, ECHO, ESCAPE, FAULT_GARBAGE, FAULT_LOOP, FAULT_MEMORY, FAULT_PANIC, Fixture, WRONG_WIT,
    assert_echo_serves, eventually, garbage_file, instance_last_operation, log_lines_with,
    offering, offerings_with_id, plain_logs, wait_for_log,
};
use wasm_broker_tests::{
    BrokerSetup, CONNECTIONS, PlanIds, TestBroker, assert_error_body, unique_id,
};

const CPU_DEADLINE_MS: u64 = 2000;

/// A broker serving every fixture together, with `not_a_component.wasm`
/// (arbitrary bytes) and `wrong_wit.wasm` in its plugin directory too.
async fn sandbox_broker() -> TestBroker {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut plugins: Vec<(String, std::path::PathBuf)> = [
        FAULT_LOOP,
        FAULT_MEMORY,
        FAULT_PANIC,
        FAULT_GARBAGE,
        ESCAPE,
        ECHO,
        WRONG_WIT,
    ]
    .iter()
    .map(Fixture::plugin)
    .collect();
    plugins.push((
        "not_a_component".to_owned(),
        garbage_file(scratch.path(), "not_a_component.wasm"),
    ));
    TestBroker::start(BrokerSetup {
        plugins,
        extra_config: format!(
            "{CONNECTIONS}\n[plugins.escape.connections]\napi = \"rabbitmq-management\"\n"
        ),
        runtime: format!("call_timeout_ms = {CPU_DEADLINE_MS}\nmemory_limit_mb = 32"),
        ..BrokerSetup::default()
    })
    .await
}

/// A 500 with an OSB error body whose description contains every one of
/// `needles`; returns the description.
#[track_caller]
fn assert_plugin_failure(status: u16, body: &Value, needles: &[&str], context: &str) -> String {
    assert_eq!(status, 500, "{context}: {body}");
    assert_error_body(body, context);
    let description = body["description"].as_str().unwrap_or_default().to_owned();
    for needle in needles {
        assert!(
            description.contains(needle),
            "{context}: description must mention {needle:?}: {body}"
        );
    }
    for leaked in ["metadata", "credentials", "dashboard_url", "operation"] {
        assert!(
            body.get(leaked).is_none(),
            "{context}: a failed call must not answer `{leaked}`: {body}"
        );
    }
    description
}

/// After a provision that failed in the plugin: `last_operation` says
/// failed, and the platform's orphan-mitigation DELETE answers 200 (the
/// plugin was asked to clean up), a second one 410.
async fn assert_faulted_instance_cleans_up(
    broker: &TestBroker,
    instance_id: &str,
    plan: &PlanIds,
    context: &str,
) {
    let (status, body) = instance_last_operation(broker, instance_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("failed")),
        "{context}: last_operation: {body}"
    );
    let (status, body) = broker.deprovision(instance_id, plan).await;
    assert_eq!(status, 200, "{context}: orphan-mitigation DELETE: {body}");
    let (status, body) = broker.deprovision(instance_id, plan).await;
    assert_eq!(status, 410, "{context}: second DELETE: {body}");
}

/// The fixture still serves after its fault: a provision asking it to
/// succeed answers 201, a bind 201 with the fixture's fixed credentials.
async fn assert_fixture_still_serves(broker: &TestBroker, fixture: Fixture) {
    let plan = fixture.plan();
    let instance_id = unique_id(&format!("{}-after", fixture.stem));
    let (status, body) = broker
        .provision(&instance_id, &plan, Some(json!({"succeed": true})))
        .await;
    assert_eq!(
        status, 201,
        "{} after its fault: provision: {body}",
        fixture.stem
    );
    let (status, body) = broker
        .bind(&instance_id, &unique_id("after-binding"), &plan, None)
        .await;
    assert_eq!(
        status, 201,
        "{} after its fault: bind: {body}",
        fixture.stem
    );
    assert_eq!(
        body["credentials"],
        json!({"username": "fixture", "password": "fixture"}),
        "{}",
        fixture.stem
    );
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(
        status, 200,
        "{} after its fault: deprovision: {body}",
        fixture.stem
    );
}

#[tokio::test]
async fn a_looping_plugin_is_cut_at_its_cpu_deadline_while_the_others_serve() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = Arc::new(sandbox_broker().await);
    let loop_id = unique_id("loop");
    let looping = {
        let broker = broker.clone();
        let loop_id = loop_id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = broker.provision(&loop_id, &FAULT_LOOP.plan(), None).await;
            (answer, started.elapsed())
        })
    };
    // The operation record exists once the broker has handed the call to
    // the plugin; from then on the plugin spins.
    eventually(
        "the looping provision is recorded",
        Duration::from_secs(5),
        || {
            let broker = broker.clone();
            let loop_id = loop_id.clone();
            async move { (instance_last_operation(&broker, &loop_id).await.0 == 200).then_some(()) }
        },
    )
    .await;

    let echo_started = Instant::now();
    let catalog = broker.catalog().await;
    assert!(offering(&catalog, "echo").is_some(), "{catalog}");
    let echo_id = unique_id("echo-beside-loop");
    let (status, body) = broker.provision(&echo_id, &ECHO.plan(), None).await;
    let echo_elapsed = echo_started.elapsed();
    assert_eq!(status, 201, "echo provision beside the loop: {body}");
    assert!(
        !looping.is_finished(),
        "the loop answered before echo did: the test proves nothing"
    );
    assert!(
        echo_elapsed < Duration::from_secs(1),
        "echo took {echo_elapsed:?} while a plugin was looping"
    );

    let ((status, body), elapsed) = looping.await.expect("loop request task");
    let description = assert_plugin_failure(
        status,
        &body,
        &["fault_loop", "CPU deadline"],
        "looping provision",
    );
    assert!(
        description.contains(&format!("{CPU_DEADLINE_MS} ms")),
        "the description names the deadline: {body}"
    );
    assert!(
        elapsed >= Duration::from_millis(CPU_DEADLINE_MS - 100) && elapsed < Duration::from_secs(6),
        "the loop must be cut at its {CPU_DEADLINE_MS} ms deadline, it answered after {elapsed:?}"
    );

    assert_faulted_instance_cleans_up(&broker, &loop_id, &FAULT_LOOP.plan(), "looping provision")
        .await;
    assert_fixture_still_serves(&broker, FAULT_LOOP).await;
    assert_echo_serves(&broker, "after the loop").await;
    let (status, body) = broker.deprovision(&echo_id, &ECHO.plan()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_plugin_hoarding_memory_is_stopped_at_its_limit() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = sandbox_broker().await;
    let instance_id = unique_id("memory");
    let started = Instant::now();
    let (status, body) = broker
        .provision(&instance_id, &FAULT_MEMORY.plan(), None)
        .await;
    let description = assert_plugin_failure(
        status,
        &body,
        &["fault_memory"],
        "memory-hoarding provision",
    );
    assert!(
        description.to_lowercase().contains("memory"),
        "the description must say memory ran out: {body}"
    );
    assert!(
        !description.contains("CPU deadline"),
        "stopped by the memory cap, not the clock: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(CPU_DEADLINE_MS / 1000),
        "{:?}",
        started.elapsed()
    );

    assert_faulted_instance_cleans_up(
        &broker,
        &instance_id,
        &FAULT_MEMORY.plan(),
        "memory-hoarding provision",
    )
    .await;
    assert_fixture_still_serves(&broker, FAULT_MEMORY).await;
    assert_echo_serves(&broker, "after the memory fault").await;
}

#[tokio::test]
async fn a_panicking_plugin_answers_500_with_its_panic_message() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = sandbox_broker().await;
    let instance_id = unique_id("panic");
    let (status, body) = broker
        .provision(&instance_id, &FAULT_PANIC.plan(), None)
        .await;
    assert_plugin_failure(
        status,
        &body,
        &["fault_panic", "fixture panic: provision exploded"],
        "panicking provision",
    );
    wait_for_log(
        &broker,
        &["fault_panic", "fixture panic: provision exploded"],
        Duration::from_secs(5),
    )
    .await;

    assert_faulted_instance_cleans_up(
        &broker,
        &instance_id,
        &FAULT_PANIC.plan(),
        "panicking provision",
    )
    .await;
    assert_fixture_still_serves(&broker, FAULT_PANIC).await;
    assert_echo_serves(&broker, "after the panic").await;
}

#[tokio::test]
async fn garbage_answers_never_reach_the_platform() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = sandbox_broker().await;
    let plan = FAULT_GARBAGE.plan();

    let instance_id = unique_id("garbage");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_plugin_failure(
        status,
        &body,
        &["fault_garbage"],
        "provision with metadata that is not JSON",
    );
    assert_faulted_instance_cleans_up(
        &broker,
        &instance_id,
        &plan,
        "provision with garbage metadata",
    )
    .await;

    let instance_id = unique_id("garbage-bindable");
    let (status, body) = broker
        .provision(&instance_id, &plan, Some(json!({"succeed": true})))
        .await;
    assert_eq!(status, 201, "{body}");
    let binding_id = unique_id("garbage-binding");
    let (status, body) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_plugin_failure(
        status,
        &body,
        &["fault_garbage"],
        "bind with credentials that are not an object",
    );
    let (status, body) = broker
        .get(&wasm_broker_tests::binding_path(&instance_id, &binding_id))
        .await;
    assert_eq!(status, 404, "a failed binding cannot be fetched: {body}");
    // Orphan mitigation for bindings: the unbind reaches the plugin.
    let (status, body) = broker.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(
        status, 200,
        "orphan-mitigation unbind after the failed bind: {body}"
    );
    let (status, body) = broker.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 410, "second unbind: {body}");
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 200, "{body}");

    assert_echo_serves(&broker, "after the garbage").await;
}

#[tokio::test]
async fn files_that_are_not_plugins_of_this_contract_are_refused_at_load() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = sandbox_broker().await;
    let catalog = broker.catalog().await;
    let mut names: Vec<&str> = catalog["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "echo",
            "escape",
            "fault-garbage",
            "fault-loop",
            "fault-memory",
            "fault-panic"
        ],
        "only the valid plugins serve"
    );
    assert_eq!(
        offerings_with_id(&catalog, WRONG_WIT.service_id),
        0,
        "{catalog}"
    );

    let not_a_component = log_lines_with(&broker, &["not_a_component.wasm", "refused"]);
    assert!(
        not_a_component.iter().any(|line| line
            .split("reason=")
            .nth(1)
            .is_some_and(|reason| reason.contains("component"))),
        "the refusal of not_a_component.wasm must say it is not a component; log:\n{}",
        plain_logs(&broker)
    );
    let wrong_wit = log_lines_with(
        &broker,
        &["wrong_wit.wasm", "refused", "broker@0.2.0", "0.1.x"],
    );
    assert!(
        !wrong_wit.is_empty(),
        "the refusal of wrong_wit.wasm must name the contract it exports and the one served; log:\n{}",
        plain_logs(&broker)
    );

    assert_echo_serves(&broker, "beside refused files").await;
    let (status, body) = broker
        .provision(&unique_id("wrong-wit"), &WRONG_WIT.plan(), None)
        .await;
    assert_eq!(
        status, 400,
        "a refused plugin's offering is unknown: {body}"
    );
}

#[tokio::test]
async fn clashing_offering_ids_are_served_once() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut setup = BrokerSetup::shipped(&["mysql"]);
    setup.plugins.push(CLASH.plugin());
    let broker = TestBroker::start(setup).await;
    let catalog = broker.catalog().await;
    assert_eq!(
        offerings_with_id(&catalog, CLASH.service_id),
        1,
        "exactly one offering with the id: {catalog}"
    );
    let served = offering(&catalog, "clash").is_some();
    let refused = if served { "mysql" } else { "clash" };
    assert!(
        offering(&catalog, refused).is_none(),
        "{refused} must be refused: {catalog}"
    );
    let lines = log_lines_with(&broker, &["refused", refused, CLASH.service_id]);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("clash") && line.contains("mysql")),
        "the refusal must name both plugins and the clashing id; log:\n{}",
        plain_logs(&broker)
    );
}

#[tokio::test]
async fn escape_attempts_are_all_denied() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = sandbox_broker().await;
    let plan = ESCAPE.plan();
    let instance_id = unique_id("escape");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    assert_report_denies_everything(&body["metadata"], "provision");

    let (status, body) = broker
        .bind(&instance_id, &unique_id("escape-binding"), &plan, None)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_report_denies_everything(&body["credentials"], "bind");
}

fn assert_report_denies_everything(report: &Value, context: &str) {
    for field in ["file", "socket", "env", "http_ungranted", "sql_ungranted"] {
        let result = report[field]
            .as_str()
            .unwrap_or_else(|| panic!("{context}: no `{field}` in {report}"));
        assert!(
            !result.starts_with("OK"),
            "{context}: `{field}` escaped: {result}"
        );
    }
    for field in ["http_ungranted", "sql_ungranted"] {
        let result = report[field].as_str().unwrap_or_default();
        assert!(
            result.starts_with("not-granted"),
            "{context}: `{field}` must be refused by the grant check: {result}"
        );
    }
    let attempts = report["http_escape"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: no http_escape in {report}"));
    assert_eq!(attempts.len(), 3, "{context}: {report}");
    for attempt in attempts {
        let result = attempt["result"].as_str().unwrap_or_default();
        // Granted alias: the attempt reaches, and must fail, the path check.
        assert!(
            result.starts_with("denied"),
            "{context}: {} was not denied by the path check: {result}",
            attempt["path"]
        );
    }
}

#[tokio::test]
async fn a_per_plugin_deadline_overrides_the_global_one() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_LOOP.plugin(), ECHO.plugin()],
        extra_config: "[plugins.fault_loop]\ncall_timeout_ms = 500\n".to_owned(),
        runtime: "call_timeout_ms = 5000".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let instance_id = unique_id("loop-override");
    let started = Instant::now();
    let (status, body) = broker
        .provision(&instance_id, &FAULT_LOOP.plan(), None)
        .await;
    let elapsed = started.elapsed();
    assert_plugin_failure(
        status,
        &body,
        &["fault_loop", "CPU deadline", "500 ms"],
        "loop with a 500 ms deadline",
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "cut after {elapsed:?}: the global 5 s deadline applied"
    );
    assert_faulted_instance_cleans_up(
        &broker,
        &instance_id,
        &FAULT_LOOP.plan(),
        "loop with its own deadline",
    )
    .await;
    assert_echo_serves(&broker, "beside a plugin with its own deadline").await;
}

#[tokio::test]
async fn a_per_plugin_memory_limit_may_exceed_the_global_one() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_MEMORY.plugin(), ECHO.plugin()],
        extra_config: "[plugins.fault_memory]\nmemory_limit_mb = 48\n".to_owned(),
        runtime: "memory_limit_mb = 16".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let instance_id = unique_id("memory-override");
    let (status, body) = broker
        .provision(&instance_id, &FAULT_MEMORY.plan(), None)
        .await;
    let description = assert_plugin_failure(
        status,
        &body,
        &["fault_memory"],
        "memory hoarding with its own limit",
    );
    assert!(
        description.to_lowercase().contains("memory") && description.contains("48 MiB"),
        "stopped at its own 48 MiB, not the global 16 MiB: {body}"
    );
    assert_faulted_instance_cleans_up(
        &broker,
        &instance_id,
        &FAULT_MEMORY.plan(),
        "memory with its own limit",
    )
    .await;
    assert_echo_serves(&broker, "beside a plugin with its own memory limit").await;
}

/// A faulted call gives its pooled instance slot back: with two slots, six
/// faults in a row and then a burst of echo calls all get one.
#[tokio::test]
async fn faulted_calls_free_their_instance_slots() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = Arc::new(
        TestBroker::start(BrokerSetup {
            plugins: [FAULT_MEMORY, FAULT_PANIC, FAULT_GARBAGE, ECHO]
                .iter()
                .map(Fixture::plugin)
                .collect(),
            runtime: "memory_limit_mb = 32\nmax_concurrent_instances = 2\ncall_timeout_ms = 5000"
                .to_owned(),
            ..BrokerSetup::default()
        })
        .await,
    );
    for fixture in [
        FAULT_MEMORY,
        FAULT_PANIC,
        FAULT_GARBAGE,
        FAULT_MEMORY,
        FAULT_PANIC,
        FAULT_GARBAGE,
    ] {
        let started = Instant::now();
        let (status, body) = broker
            .provision(&unique_id(fixture.stem), &fixture.plan(), None)
            .await;
        assert_plugin_failure(
            status,
            &body,
            &[fixture.stem],
            "fault with two instance slots",
        );
        assert!(
            !body["description"]
                .as_str()
                .unwrap_or_default()
                .contains("slot"),
            "a slot leaked: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{} waited {:?} for a slot",
            fixture.stem,
            started.elapsed()
        );
    }
    let answers = wasm_broker_tests::faults::all_at_once(&broker, 6, |broker, _| async move {
        broker
            .provision(&unique_id("echo-burst"), &ECHO.plan(), None)
            .await
    })
    .await;
    for (status, body) in answers {
        assert_eq!(status, 201, "echo after the faults, two slots: {body}");
    }
}

/// More looping calls at once than the broker has worker threads (one per
/// core): each must still be cut at its deadline, and the broker must
/// answer meanwhile. Every wait is bounded, so a broker that hangs fails
/// the test instead of hanging it.
#[tokio::test]
async fn more_looping_calls_than_cores_do_not_hang_the_broker() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = Arc::new(sandbox_broker().await);
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let loop_count = 2 * cores.max(2);
    let loops: Vec<_> = (0..loop_count)
        .map(|n| {
            let (broker, loop_id) = (broker.clone(), unique_id(&format!("loops-{n}")));
            tokio::spawn(async move {
                let started = Instant::now();
                let plan = FAULT_LOOP.plan();
                let answer = tokio::time::timeout(
                    Duration::from_secs(15),
                    broker.provision(&loop_id, &plan, None),
                )
                .await;
                (answer, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let echo_id = unique_id("echo-beside-loops");
    let echo = tokio::time::timeout(
        Duration::from_secs(10),
        broker.provision(&echo_id, &ECHO.plan(), None),
    )
    .await;
    let pending = loops.iter().filter(|task| !task.is_finished()).count();
    let (status, body) = echo.unwrap_or_else(|_| {
        panic!("the broker did not answer within 10 s while {loop_count} plugin calls looped")
    });
    assert_eq!(status, 201, "{body}");
    assert!(
        pending > 0,
        "echo was only answered once all {loop_count} looping calls had been cut"
    );
    for task in loops {
        let (answer, elapsed) = task.await.expect("loop task");
        let (status, body) =
            answer.unwrap_or_else(|_| panic!("a looping call was not cut within 15 s"));
        assert_plugin_failure(
            status,
            &body,
            &["fault_loop", "CPU deadline"],
            "one of several loops",
        );
        assert!(
            elapsed < Duration::from_secs(8),
            "a {CPU_DEADLINE_MS} ms deadline cut the loop after {elapsed:?}"
        );
    }
}

/// A platform that hangs up (its own timeout) while the plugin still works
/// must not leave the instance locked: the broker finishes the operation
/// anyway, so it is reported and can be cleaned up.
#[tokio::test]
async fn a_platform_hang_up_does_not_leave_the_instance_locked() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_LOOP.plugin()],
        extra_config: "[plugins.fault_loop]\ncall_timeout_ms = 1000\n".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let plan = FAULT_LOOP.plan();
    let instance_id = unique_id("hang-up");
    let hung_up = broker
        .osb(
            reqwest::Method::PUT,
            &wasm_broker_tests::instance_path(&instance_id),
        )
        .json(&wasm_broker_tests::provision_body(&plan, None))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        hung_up.is_err(),
        "the loop cannot have answered within 300 ms: {hung_up:?}"
    );

    let body = eventually(
        "the abandoned provision is finished",
        Duration::from_secs(10),
        || async {
            let (status, body) = instance_last_operation(&broker, &instance_id).await;
            (status == 200 && body["state"] == "failed").then_some(body)
        },
    )
    .await;
    let description = body["description"].as_str().unwrap_or_default();
    assert!(description.contains("CPU deadline"), "{body}");
    assert_faulted_instance_cleans_up(&broker, &instance_id, &plan, "after a hang-up").await;
}
