//! broker.toml is live: a grant or a call limit changed in the file (or
//! applied with SIGHUP) serves the next call without a restart; an invalid
//! file is not applied, and the broker keeps serving its previous
//! configuration.

use std::time::{Duration, Instant};

use wasm_broker_tests::faults::{
    ESCAPE, FAULT_LOOP, escape_http_results, eventually, plain_logs, replace_atomically,
    wait_for_log,
};
use wasm_broker_tests::{BrokerSetup, CONNECTIONS, TestBroker, unique_id};

/// How long a saved change may take to apply (the bench measures the real
/// figure; the target is under 1 s).
const APPLY_WITHIN: Duration = Duration::from_secs(10);

/// A grant of the escape fixture's alias `api`: its path escapes then reach
/// the host's path check and come back `denied` instead of `not-granted`.
const ESCAPE_GRANT: &str = "\n[plugins.escape.connections]\napi = \"rabbitmq-management\"\n";

async fn escape_broker() -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![ESCAPE.plugin()],
        extra_config: CONNECTIONS.to_owned(),
        ..BrokerSetup::default()
    })
    .await
}

fn all_start_with(results: &[String], prefix: &str) -> bool {
    results.iter().all(|result| result.starts_with(prefix))
}

fn read_config(broker: &TestBroker) -> String {
    std::fs::read_to_string(broker.config_path()).expect("read broker.toml")
}

/// Saves broker.toml the way editors do: a new file renamed over the old.
fn save_config(broker: &TestBroker, text: &str) {
    let temporary = broker.dir.path().join(".broker.toml.swp");
    std::fs::write(&temporary, text).expect("write the new broker.toml");
    std::fs::rename(&temporary, broker.config_path()).expect("rename it over broker.toml");
}

#[tokio::test]
async fn a_grant_saved_in_broker_toml_serves_the_next_call() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = escape_broker().await;
    let original = read_config(&broker);
    let results = escape_http_results(&broker).await;
    assert!(
        all_start_with(&results, "not-granted"),
        "no [plugins.escape] section yet: {results:?}"
    );

    broker.note("save a grant of a connection that does not exist");
    save_config(
        &broker,
        &format!("{original}\n[plugins.escape.connections]\napi = \"no-such-connection\"\n"),
    );
    let line = wait_for_log(
        &broker,
        &["broker.toml not applied", "no-such-connection"],
        APPLY_WITHIN,
    )
    .await;
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    let results = escape_http_results(&broker).await;
    assert!(
        all_start_with(&results, "not-granted"),
        "the invalid file changed nothing: {results:?}"
    );

    broker.note("save a file that is not TOML, with a password in it");
    save_config(
        &broker,
        &format!(
            "{original}\n[connections.leaky]\nkind = \"mysql\"\nurl = \"mysql://root:leaky-secret-7f3a@127.0.0.1\n"
        ),
    );
    wait_for_log(
        &broker,
        &["broker.toml not applied", "not valid broker.toml"],
        APPLY_WITHIN,
    )
    .await;
    assert!(
        !plain_logs(&broker).contains("leaky-secret-7f3a"),
        "the log quotes a password from the invalid file"
    );
    let results = escape_http_results(&broker).await;
    assert!(all_start_with(&results, "not-granted"), "{results:?}");

    broker.note("save the grant of rabbitmq-management");
    let saved = Instant::now();
    save_config(&broker, &format!("{original}{ESCAPE_GRANT}"));
    eventually("the new grant serves a call", APPLY_WITHIN, || async {
        all_start_with(&escape_http_results(&broker).await, "denied").then_some(())
    })
    .await;
    eprintln!(
        "grant saved -> first call served with it: {:?}",
        saved.elapsed()
    );
    let line = wait_for_log(
        &broker,
        &["broker.toml applied", "file changed"],
        APPLY_WITHIN,
    )
    .await;
    assert!(line.contains("plugins loaded again"), "{line}");

    broker.note("remove the grant again");
    save_config(&broker, &original);
    eventually("the grant is gone", APPLY_WITHIN, || async {
        all_start_with(&escape_http_results(&broker).await, "not-granted").then_some(())
    })
    .await;
}

/// broker.toml is a symlink to a file in another directory: editing that
/// file makes no event where the broker watches, so only SIGHUP applies it.
#[tokio::test]
async fn sighup_applies_a_change_the_watcher_cannot_see() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = escape_broker().await;
    let original = read_config(&broker);
    let elsewhere = broker.dir.path().join("conf");
    std::fs::create_dir(&elsewhere).expect("conf dir");
    let target = elsewhere.join("broker.toml");
    std::fs::write(&target, &original).expect("copy broker.toml");
    let link = broker.dir.path().join("broker.toml.link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    std::fs::rename(&link, broker.config_path()).expect("broker.toml -> conf/broker.toml");
    // The swap itself is an event: let the broker read the (same) file
    // through the link before the target changes.
    wait_for_log(
        &broker,
        &["broker.toml changed nothing that applies live"],
        APPLY_WITHIN,
    )
    .await;

    broker.note("edit conf/broker.toml in place: a grant");
    std::fs::write(&target, format!("{original}{ESCAPE_GRANT}")).expect("edit the target");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = escape_http_results(&broker).await;
    assert!(
        all_start_with(&results, "not-granted"),
        "applied without SIGHUP, so this test proves nothing: {results:?}"
    );

    broker.note("SIGHUP");
    broker.hang_up();
    wait_for_log(&broker, &["broker.toml applied", "SIGHUP"], APPLY_WITHIN).await;
    let results = escape_http_results(&broker).await;
    assert!(
        all_start_with(&results, "denied"),
        "the first call after the reload has the grant: {results:?}"
    );

    broker.note("SIGHUP with an invalid file");
    std::fs::write(&target, "[runtime\n").expect("break the target");
    broker.hang_up();
    wait_for_log(
        &broker,
        &["broker.toml not applied", "SIGHUP"],
        APPLY_WITHIN,
    )
    .await;
    let results = escape_http_results(&broker).await;
    assert!(
        all_start_with(&results, "denied"),
        "the old config still serves: {results:?}"
    );
}

#[tokio::test]
async fn a_call_deadline_saved_in_broker_toml_applies() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![FAULT_LOOP.plugin()],
        extra_config: "[plugins.fault_loop]\ncall_timeout_ms = 5000\n".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let original = read_config(&broker);
    broker.note("lower fault_loop's deadline to 300 ms");
    replace_atomically(
        &broker.config_path(),
        original
            .replace("call_timeout_ms = 5000", "call_timeout_ms = 300")
            .as_bytes(),
    );
    wait_for_log(&broker, &["broker.toml applied"], APPLY_WITHIN).await;
    let started = Instant::now();
    let (status, body) = broker
        .provision(&unique_id("live-deadline"), &FAULT_LOOP.plan(), None)
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap_or_default()
            .contains("300 ms"),
        "the new deadline applies: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        started.elapsed()
    );

    broker.note("a setting that needs a restart");
    replace_atomically(
        &broker.config_path(),
        format!("{original}\n")
            .replace("[runtime]", "[runtime]\nmax_concurrent_instances = 7")
            .as_bytes(),
    );
    wait_for_log(
        &broker,
        &[
            "apply only after a restart",
            "[runtime] max_concurrent_instances",
        ],
        APPLY_WITHIN,
    )
    .await;
}
