//! Ownership of offering ids and names is sticky: the plugin that served an
//! id or name first keeps it, whatever the file names, across restarts,
//! until the operator releases it. The attack: a plugin named to sort
//! first, declaring the mysql offering's id, dropped beside mysql.wasm and
//! the broker restarted, took over mysql's existing instances.

use reqwest::Method;
use serde_json::Value;
use wasm_broker_tests::faults::{
    CLASH, ECHO, log_lines_with, offering, offerings_with_id, plain_logs,
};
use wasm_broker_tests::{BrokerSetup, TestBroker, credentials, service_available, unique_id};

async fn readiness(broker: &TestBroker) -> (u16, String) {
    let response = broker
        .raw(Method::GET, "/readyz")
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn metrics(broker: &TestBroker) -> String {
    broker
        .raw(Method::GET, "/metrics")
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap_or_default()
}

fn offered_names(catalog: &Value) -> Vec<String> {
    catalog["services"]
        .as_array()
        .map(|services| {
            services
                .iter()
                .filter_map(|service| service["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_squatter_sorting_first_does_not_take_over_after_a_restart() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let mut broker = TestBroker::start(BrokerSetup::shipped(&["mysql"])).await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("owned-mysql");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    broker.note("restart with aaa.wasm (declaring mysql's offering id) beside mysql.wasm");
    broker.kill();
    std::fs::copy(CLASH.plugin().1, broker.plugin_dir().join("aaa.wasm")).expect("copy aaa.wasm");
    broker.spawn().await;

    let catalog = broker.catalog().await;
    assert_eq!(
        offerings_with_id(&catalog, CLASH.service_id),
        1,
        "{catalog}"
    );
    assert!(
        offering(&catalog, "mysql").is_some() && offering(&catalog, "clash").is_none(),
        "mysql keeps its offering: {:?}",
        offered_names(&catalog)
    );
    let refusals = log_lines_with(&broker, &["plugin refused", "aaa", "plugin mysql owns"]);
    assert!(
        refusals.iter().any(|line| line.contains(CLASH.service_id)),
        "the refusal names the owner and the id; log:\n{}",
        plain_logs(&broker)
    );
    let (status, body) = readiness(&broker).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("degraded") && body.contains("aaa"),
        "/readyz: {body}"
    );
    assert!(
        metrics(&broker)
            .await
            .contains("plugin_refused{plugin=\"aaa\"} 1"),
        "the metric names the refused plugin"
    );

    // The existing instance is still mysql's: a bind gets a real MariaDB
    // user, not the squatter's fixed credentials.
    let binding = unique_id("owned-mysql-binding");
    let (status, body) = broker.bind(&instance, &binding, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    assert_ne!(
        credentials(&body).get("username").and_then(Value::as_str),
        Some("fixture"),
        "bound by the squatter: {body}"
    );
    broker
        .unbind_all_and_deprovision(&instance, &[binding.as_str()], &plan)
        .await;

    broker.note("release mysql, remove mysql.wasm, restart");
    broker.kill();
    std::fs::remove_file(broker.plugin_dir().join("mysql.wasm")).expect("remove mysql.wasm");
    let (released, output) = broker.cli(&["plugins", "release", "mysql"]);
    assert!(released, "{output}");
    assert!(
        output.contains(&format!("offering id \"{}\"", CLASH.service_id)),
        "{output}"
    );
    broker.spawn().await;
    let catalog = broker.catalog().await;
    assert!(
        offering(&catalog, "clash").is_some_and(|clash| clash["id"] == CLASH.service_id),
        "after the release the new claimant serves the id: {:?}",
        offered_names(&catalog)
    );
    let (status, body) = readiness(&broker).await;
    assert_eq!((status, body.as_str()), (200, "ready"));
}

#[tokio::test]
async fn an_owner_keeps_its_ids_while_its_file_is_gone() {
    // echo.wasm renamed aaa.wasm: the same id and name under another file
    // name. echo owns them, so after a restart aaa is refused.
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    broker.kill();
    let echo = broker.plugin_dir().join("echo.wasm");
    std::fs::rename(&echo, broker.plugin_dir().join("aaa.wasm")).expect("rename echo.wasm");
    broker.spawn().await;
    let catalog = broker.catalog().await;
    assert!(offering(&catalog, "echo").is_none(), "{catalog}");
    let lines = log_lines_with(&broker, &["plugin refused", "aaa", "plugin echo owns"]);
    assert!(!lines.is_empty(), "log:\n{}", plain_logs(&broker));
    // No plugin serves: not ready, and saying why is the log's job.
    let (status, _) = readiness(&broker).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_replica_with_a_squatter_cannot_take_what_another_replica_serves() {
    // Replica A serves echo first; replica B, on the same PostgreSQL store,
    // has echo's file under the name aaa.wasm: it sorts first there, and
    // nothing else claims echo's id on B, but A owns it.
    let Some(database) = wasm_broker_tests::ScratchDatabase::create().await else {
        return;
    };
    let state = database.state_config(30);
    let a = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        state: state.clone(),
        ..BrokerSetup::default()
    })
    .await;
    let b = TestBroker::start(BrokerSetup {
        plugins: vec![("aaa".to_owned(), ECHO.plugin().1)],
        state,
        ..BrokerSetup::default()
    })
    .await;
    assert!(offering(&a.catalog().await, ECHO.offering).is_some());
    assert!(
        offering(&b.catalog().await, ECHO.offering).is_none(),
        "replica B must refuse aaa"
    );
    let lines = log_lines_with(&b, &["plugin refused", "aaa", "plugin echo owns"]);
    assert!(!lines.is_empty(), "log of B:\n{}", plain_logs(&b));
}
