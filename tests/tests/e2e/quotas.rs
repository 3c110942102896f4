//! Quotas between plugins: what one plugin does with the resources the host
//! shares (a connection's pool and its sessions, the log, the kv store)
//! must not reach another plugin or the host. Each test is the attack, run
//! through the `grant_abuse` fixture, and asserts it no longer works.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

use reqwest::Method;
use wasm_broker_tests::{
    BrokerSetup, CONNECTIONS, PlanIds, TestBroker, derived_name, instance_path, json as read_json,
    mariadb_root, provision_body, service_available, timed, unique_id, wasm,
};

/// `grant_abuse` (granted `admin` = MariaDB) and the shipped mysql plugin,
/// sharing `[connections.mariadb]`; `extra` is more broker.toml.
fn abuser_and_mysql(extra: &str) -> BrokerSetup {
    BrokerSetup {
        plugins: vec![
            ("grant_abuse".to_owned(), wasm("grant_abuse")),
            ("mysql".to_owned(), wasm("mysql")),
        ],
        extra_config: format!(
            "{CONNECTIONS}\n[plugins.grant_abuse.connections]\nadmin = \"mariadb\"\n\
             [plugins.mysql.connections]\nadmin = \"mariadb\"\n{extra}"
        ),
        ..BrokerSetup::default()
    }
}

/// Provisions a `grant_abuse` instance running `calls`; the report lines.
async fn abuse(broker: &TestBroker, plan: &PlanIds, calls: Value) -> Vec<String> {
    let instance = unique_id("abuse");
    let (status, body) = broker
        .provision(&instance, plan, Some(json!({ "calls": calls })))
        .await;
    assert_eq!(status, 201, "grant_abuse provision: {body}");
    report(&body)
}

/// The report lines of a `grant_abuse` provision answer.
fn report(body: &Value) -> Vec<String> {
    let metadata = match &body["metadata"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    metadata["report"]
        .as_array()
        .unwrap_or_else(|| panic!("no report in {body}"))
        .iter()
        .map(|line| line.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_plugin_holding_its_pool_does_not_stall_another_plugin() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    // max_connections = 4 (the default) on [connections.mariadb].
    let broker = TestBroker::start(abuser_and_mysql("")).await;
    let abuser = broker.plan("grant-abuse", "default").await;
    let mysql = broker.plan("mysql", "small").await;

    let sleep = || abuse(&broker, &abuser, json!([{ "sql": "SELECT SLEEP(8)" }]));
    let victim = async {
        // Let the four sleeps take every connection first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let instance = unique_id("victim");
        let answer = broker.provision(&instance, &mysql, None).await;
        (instance, answer)
    };
    let (a, b, c, d, (instance, (status, body))) =
        tokio::join!(sleep(), sleep(), sleep(), sleep(), victim);
    assert_eq!(
        status, 201,
        "the mysql plugin's provision waited for grant_abuse's connections: {body}"
    );
    for lines in [a, b, c, d] {
        assert!(lines[0].starts_with("OK: 1 rows"), "{lines:?}");
    }
    let (status, body) = broker.deprovision(&instance, &mysql).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn mysql_session_state_does_not_pass_to_the_next_call_or_plugin() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    // One connection: without a reset, the next statement anywhere gets the
    // session the attack left.
    let connection = "\n[connections.mariadb-one]\nkind = \"mysql\"\nurl = \"mysql://root@127.0.0.1:3306\"\nmax_connections = 1\n";
    let mut setup = abuser_and_mysql(connection);
    setup.extra_config = setup
        .extra_config
        .replace("admin = \"mariadb\"", "admin = \"mariadb-one\"");
    let broker = TestBroker::start(setup).await;
    let abuser = broker.plan("grant-abuse", "default").await;
    let mysql = broker.plan("mysql", "small").await;

    let planted = abuse(
        &broker,
        &abuser,
        json!([
            { "sql": "SET SESSION old_passwords = 1" },
            { "sql": "SET @planted = 'yes'" },
        ]),
    )
    .await;
    assert!(
        planted.iter().all(|line| line.starts_with("OK")),
        "{planted:?}"
    );

    // The same plugin's next call.
    let seen = abuse(
        &broker,
        &abuser,
        json!([{ "sql": "SELECT PASSWORD('x')" }, { "sql": "SELECT @planted" }]),
    )
    .await;
    assert!(
        seen[0].starts_with("OK: 1 rows; *"),
        "old_passwords reached the next call: {seen:?}"
    );
    assert_eq!(
        seen[1], "OK: 1 rows; NULL",
        "a user variable reached the next call"
    );

    // Another plugin: the mysql plugin's bind creates a user with a password.
    abuse(
        &broker,
        &abuser,
        json!([{ "sql": "SET SESSION old_passwords = 1" }]),
    )
    .await;
    let instance = unique_id("session");
    let binding = unique_id("session-bind");
    let (status, body) = broker.provision(&instance, &mysql, None).await;
    assert_eq!(status, 201, "{body}");
    abuse(
        &broker,
        &abuser,
        json!([{ "sql": "SET SESSION old_passwords = 1" }]),
    )
    .await;
    let (status, body) = broker.bind(&instance, &binding, &mysql, None).await;
    assert_eq!(status, 201, "{body}");
    let user = derived_name("u_", &binding, 32);
    let hash: String = sqlx::query_scalar(
        "SELECT CAST(authentication_string AS CHAR) FROM mysql.user WHERE User = ?",
    )
    .bind(&user)
    .fetch_one(&mut mariadb_root().await)
    .await
    .expect("the bound user exists");
    assert!(
        hash.starts_with('*') && hash.len() == 41,
        "the bind created {user} with a pre-4.1 password hash: {hash:?}"
    );
    broker
        .unbind_all_and_deprovision(&instance, &[&binding], &mysql)
        .await;
}

/// 100 MiB logged in one call.
const LOG_FLOOD: u64 = 100 * 1024 * 1024;

#[tokio::test]
async fn a_call_cannot_flood_the_log() {
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![("grant_abuse".to_owned(), wasm("grant_abuse"))],
        ..BrokerSetup::default()
    })
    .await;
    let abuser = broker.plan("grant-abuse", "default").await;
    let lines = abuse(&broker, &abuser, json!([{ "log_bytes": LOG_FLOOD }])).await;
    assert!(lines[0].starts_with("OK: logged"), "{lines:?}");

    let logs = broker.logs();
    // The fixture logs 8 KiB of 'x' per message.
    let flood_lines = logs
        .lines()
        .filter(|line| line.contains(&"x".repeat(1024)))
        .count();
    let budget_lines = (1024 * 1024) / (8 * 1024);
    assert!(
        flood_lines <= budget_lines,
        "{flood_lines} messages of 8 KiB reached the log (budget 1 MiB)"
    );
    assert!(
        logs.len() < 4 * 1024 * 1024,
        "the broker log grew to {} bytes",
        logs.len()
    );
    let notices = logs.matches("log budget of this call").count();
    assert_eq!(notices, 1, "one truncation notice, not {notices}");
}

/// 100 MiB stored in the kv store by one call.
const KV_FLOOD: u64 = 100 * 1024 * 1024;

#[tokio::test]
async fn a_plugin_cannot_fill_the_kv_store_and_its_values_are_sealed() {
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![("grant_abuse".to_owned(), wasm("grant_abuse"))],
        extra_config: "[plugins.grant_abuse]\nkv_max_bytes = 8388608\n".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let abuser = broker.plan("grant-abuse", "default").await;
    let lines = abuse(&broker, &abuser, json!([{ "kv_bytes": KV_FLOOD }])).await;
    assert!(
        lines[0].starts_with("limit-exceeded:") && lines[0].contains("kv"),
        "the kv store took the flood: {lines:?}"
    );

    // The fixture stores 1 MiB values of byte 7: none of it may be in the
    // file in clear (the WAL included).
    let state = broker.dir.path().join("state");
    let clear_run = vec![7u8; 4096];
    let mut stored = 0;
    for entry in std::fs::read_dir(&state).expect("state directory") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("state file");
        stored += bytes.len();
        assert!(
            !bytes
                .windows(clear_run.len())
                .any(|window| window == clear_run),
            "a kv value is stored in clear"
        );
    }
    assert!(
        stored < 64 * 1024 * 1024,
        "the state files hold {stored} bytes for an 8 MiB quota"
    );
}

#[tokio::test]
async fn a_flood_of_one_plugins_calls_does_not_delay_another_plugin() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let _cpu = timed().await;
    let broker = TestBroker::start(abuser_and_mysql("")).await;
    let abuser = broker.plan("grant-abuse", "default").await;
    let mysql = broker.plan("mysql", "small").await;

    // 270 slow calls: more than the 256 instance slots.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..270 {
        let body = provision_body(
            &abuser,
            Some(json!({ "calls": [{ "sql": "SELECT SLEEP(8)" }] })),
        );
        let request = broker
            .osb(Method::PUT, &instance_path(&unique_id("flood")))
            .json(&body);
        flood.spawn(async move {
            match request.send().await {
                Ok(response) => read_json(response).await,
                Err(error) => (0, json!(error.to_string())),
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let instance = unique_id("prompt");
    let started = Instant::now();
    let (status, body) = broker.provision(&instance, &mysql, None).await;
    let took = started.elapsed();
    assert_eq!(status, 201, "{body}");
    assert!(
        took < Duration::from_secs(3),
        "another plugin's provision took {took:?} behind the flood"
    );

    let mut refused = 0;
    while let Some(answer) = flood.join_next().await {
        let (status, body) = answer.expect("joined");
        if status == 422 {
            assert_eq!(body["error"], "ConcurrencyError", "{body}");
            assert!(
                body["description"]
                    .as_str()
                    .is_some_and(|text| text.contains("max_concurrent_calls")),
                "{body}"
            );
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "the flood past the plugin's cap was never refused"
    );
    let (status, body) = broker.deprovision(&instance, &mysql).await;
    assert_eq!(status, 200, "{body}");
}
