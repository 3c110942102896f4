//! Per-grant policy and the deadline during host calls, attacked through
//! the grant_abuse fixture: the host refuses what a grant's policy does not
//! allow (`denied: ...`, counted in `/metrics`), and a host call still
//! waiting at the call's deadline ends there, its connection closed rather
//! than handed to the next call.
//!
//! Never run against the shared Redis what would hurt it if the policy
//! failed: administration commands are probed with harmless forms
//! (`CONFIG GET`, `DEBUG SLEEP 0`, `FLUSHDB` of an empty database), and
//! `FLUSHALL` only once those were refused.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use wasm_broker_tests::faults::{GRANT_ABUSE, assert_denied, grant_abuse_report};
use wasm_broker_tests::{
    ADMIN_CONNECTIONS, BrokerSetup, CONNECTIONS, TestBroker, instance_path, mariadb_has_database,
    mariadb_root, postgres_admin, provision_body, service_available, shipped_grants, unique_id,
};

/// A broker serving grant_abuse with `grants` (lines of its
/// `[plugins.grant_abuse.connections]`) and `plugin` (lines of its
/// `[plugins.grant_abuse]`), on the administrator accounts: the host's
/// policy must refuse whatever the account itself would allow.
async fn broker(grants: &str, plugin: &str) -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![GRANT_ABUSE.plugin()],
        extra_config: format!(
            "{ADMIN_CONNECTIONS}\n[plugins.grant_abuse]\n{plugin}\n[plugins.grant_abuse.connections]\n{grants}\n"
        ),
        ..BrokerSetup::default()
    })
    .await
}

/// `plugin_host_calls_denied_total` of grant_abuse for `capability`.
async fn denied_count(broker: &TestBroker, capability: &str) -> f64 {
    let response = broker
        .raw(Method::GET, "/metrics")
        .send()
        .await
        .expect("GET /metrics");
    let text = response.text().await.expect("metrics body");
    text.lines()
        .filter(|line| line.starts_with("plugin_host_calls_denied_total{"))
        .filter(|line| {
            line.contains("plugin=\"grant_abuse\"")
                && line.contains(&format!("capability=\"{capability}\""))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_default_redis_policy_refuses_server_administration() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let broker = broker("admin = \"redis\"", "").await;
    // A database index no test uses: FLUSHDB there would flush nothing.
    let report = grant_abuse_report(
        &broker,
        json!([
            {"redis": ["CONFIG", "GET", "requirepass"]},
            {"redis": ["config", "set", "slowlog-max-len", "128"]},
            {"redis": ["DEBUG", "SLEEP", "0"]},
            {"redis": ["SELECT", "13"]},
            {"redis": ["DBSIZE"]},
            {"redis": ["EVAL", "return redis.call('CONFIG', 'GET', 'requirepass')", "0"]},
            {"redis": ["ACL", "LIST"]},
            {"redis": ["PING"]},
            // No rules: a no-op, were it not refused.
            {"redis": ["ACL", "SETUSER", "default"]},
        ]),
    )
    .await;
    assert_denied(&report[0], "CONFIG GET requirepass");
    assert_denied(&report[1], "CONFIG SET");
    assert_denied(&report[2], "DEBUG SLEEP 0");
    assert_eq!(report[3], "OK: OK");
    assert_eq!(
        report[4], "OK: 0",
        "database 13 of the shared Redis is in use"
    );
    assert_denied(&report[5], "EVAL");
    assert_denied(&report[6], "ACL LIST");
    assert_eq!(report[7], "OK: PONG", "an ordinary command is refused");
    assert_denied(&report[8], "ACL SETUSER default");
    assert!(report[0].contains("CONFIG GET"), "{}", report[0]);

    // CONFIG is refused: the policy works, so the wiping commands can be
    // tried, FLUSHDB on the empty database 13 first, then FLUSHALL. (SHUTDOWN
    // is left to the unit tests: nothing here may stop the shared server.)
    let report = grant_abuse_report(
        &broker,
        json!([{"redis": ["SELECT", "13"]}, {"redis": ["FLUSHDB"]}]),
    )
    .await;
    assert_denied(&report[1], "FLUSHDB");
    let report = grant_abuse_report(&broker, json!([{"redis": ["FLUSHALL"]}])).await;
    assert_denied(&report[0], "FLUSHALL");
    assert_eq!(denied_count(&broker, "redis").await, 8.0);
}

#[tokio::test]
async fn a_redis_command_list_allows_only_its_commands() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let broker = broker(
        "admin = { connection = \"redis\", commands = [\"PING\", \"ACL WHOAMI\"] }",
        "",
    )
    .await;
    let report = grant_abuse_report(
        &broker,
        json!([
            {"redis": ["PING"]},
            {"redis": ["acl", "whoami"]},
            {"redis": ["ACL", "USERS"]},
            {"redis": ["GET", "x"]},
        ]),
    )
    .await;
    assert_eq!(report[0], "OK: PONG");
    assert!(report[1].starts_with("OK: "), "{}", report[1]);
    assert_denied(&report[2], "ACL USERS");
    assert_denied(&report[3], "GET");
}

#[tokio::test]
async fn the_shipped_rabbitmq_policy_refuses_reading_users_and_other_admin_paths() {
    if !service_available("RabbitMQ management API", "127.0.0.1:15672") {
        return;
    }
    let grants = shipped_grants("rabbitmq");
    assert!(
        grants.contains("paths"),
        "the shipped grant has no policy: {grants}"
    );
    let broker = broker(&grants, "").await;
    let absent = format!("/api/vhosts/{}", unique_id("absent"));
    let report = grant_abuse_report(
        &broker,
        json!([
            {"http": "GET", "path": "/api/users"},
            {"http": "GET", "path": "/api/users/guest"},
            {"http": "PUT", "path": "/api/users"},
            {"http": "GET", "path": "/api/overview"},
            {"http": "PUT", "path": "/api/definitions"},
            {"http": "DELETE", "path": "/api/users-evil/x"},
            {"http": "DELETE", "path": "/api/%2e/users/x/../../definitions"},
            {"http": "DELETE", "path": absent},
        ]),
    )
    .await;
    for (line, what) in report.iter().zip([
        "GET /api/users",
        "GET /api/users/guest",
        "PUT /api/users",
        "GET /api/overview",
        "PUT /api/definitions",
        "DELETE /api/users-evil/x",
        "a path with dot segments",
    ]) {
        assert_denied(line, what);
    }
    assert_eq!(report[7], "OK: HTTP 404", "an allowed request is refused");
    assert_eq!(denied_count(&broker, "http").await, 6.0);
}

/// A read-only grant with a row cap: writes are `denied`, also behind a
/// `COMMIT`, and more rows than allowed `limit-exceeded`.
async fn read_only_refuses_writes(connection: &str, create: &str, many_rows: &str) -> TestBroker {
    let broker = broker(
        &format!("admin = {{ connection = \"{connection}\", read_only = true, max_rows = 5 }}"),
        "",
    )
    .await;
    let report = grant_abuse_report(
        &broker,
        json!([
            {"sql": create},
            {"sql": format!("COMMIT; {create}")},
            {"sql": "SELECT 1"},
            {"sql": many_rows},
        ]),
    )
    .await;
    assert_denied(&report[0], create);
    assert!(
        !report[1].starts_with("OK"),
        "COMMIT; {create}: {}",
        report[1]
    );
    assert_eq!(report[2], "OK: 1 rows; 1");
    assert!(
        report[3].starts_with("limit-exceeded: ") && report[3].contains("max_rows"),
        "{}",
        report[3]
    );
    assert!(denied_count(&broker, "sql").await >= 1.0);
    broker
}

#[tokio::test]
async fn a_read_only_postgres_grant_refuses_writes() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let table = unique_id("wb_ro").replace('-', "_");
    let _broker = read_only_refuses_writes(
        "postgres",
        &format!("CREATE TABLE {table} (a int)"),
        "SELECT generate_series(1, 10)",
    )
    .await;
    let created = sqlx::query("SELECT 1 FROM pg_tables WHERE tablename = $1")
        .bind(&table)
        .fetch_optional(&mut postgres_admin().await)
        .await
        .expect("pg_tables");
    if created.is_some() {
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&mut postgres_admin().await)
            .await
            .expect("drop");
        panic!("a read-only grant created table {table}");
    }
}

#[tokio::test]
async fn a_read_only_mariadb_grant_refuses_writes() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let database = unique_id("wb_ro").replace('-', "_");
    let _broker = read_only_refuses_writes(
        "mariadb",
        &format!("CREATE DATABASE {database}"),
        "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6",
    )
    .await;
    assert!(
        !mariadb_has_database(&database).await,
        "a read-only grant created database {database}"
    );
}

/// Four statements running far past a 2 s deadline: each call fails at
/// the deadline, and the connections they held are closed, not queued for
/// reuse behind the statement, so the next call is served at once; and the
/// server stops the statements too, rather than keep four of its connections
/// (a plugin doing this in every call would use up `max_connections` for
/// every other plugin and tenant of the server).
///
/// `accounts` is the `[connections]` the broker holds: the administrators'
/// (`ADMIN_CONNECTIONS`) or the least-privilege accounts of the shipped
/// broker.toml (`CONNECTIONS`), which may end only their own sessions.
async fn long_statements_end_at_the_deadline(accounts: &str, connection: &str, statement: &str) {
    let _timing = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![GRANT_ABUSE.plugin()],
        extra_config: format!(
            "{accounts}\n[plugins.grant_abuse]\ncall_timeout_ms = 2000\n\
             [plugins.grant_abuse.connections]\nadmin = \"{connection}\"\n"
        ),
        ..BrokerSetup::default()
    })
    .await;
    // The tag finds these statements among the server's sessions.
    let tag = unique_id("long").replace('-', "_");
    let statement = format!("{statement} /* {tag} */");
    let statement = statement.as_str();
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    // The connection's pool has 4 connections: all of them are busy.
    for _ in 0..4 {
        let request = broker
            .osb(Method::PUT, &instance_path(&unique_id("long")))
            .json(&provision_body(
                &GRANT_ABUSE.plan(),
                Some(json!({"calls": [{"sql": statement}]})),
            ))
            .timeout(Duration::from_secs(30));
        calls.spawn(async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        });
    }
    for (status, body) in calls.join_all().await {
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("deadline of 2000 ms"), "{body}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(12),
        "the calls took {elapsed:?} with a 2 s deadline"
    );
    let started = Instant::now();
    let report = grant_abuse_report(&broker, json!([{"sql": "SELECT 1"}])).await;
    assert_eq!(report, ["OK: 1 rows; 1"], "the next call was not served");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the next call waited {:?} for a connection",
        started.elapsed()
    );

    let mut running = sessions_running(connection, &tag).await;
    while running > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        running = sessions_running(connection, &tag).await;
    }
    assert_eq!(
        running,
        0,
        "the server still runs {running} abandoned statement(s) {:?} after the deadline",
        started.elapsed()
    );
    // The operator is told, once per statement (logged once the ending
    // connection is closed, a moment after the session is gone).
    let told = || {
        broker
            .logs()
            .matches("its session was ended on the server")
            .count()
    };
    while told() < 4 && started.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(told(), 4, "{}", broker.logs());
}

/// Sessions of the `connection` server running a statement that holds
/// `tag`, seen from an administrator's connection of the test's own.
async fn sessions_running(connection: &str, tag: &str) -> i64 {
    if connection == "postgres" {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND strpos(query, $1) > 0 AND pid <> pg_backend_pid()",
        )
        .bind(tag)
        .fetch_one(&mut postgres_admin().await)
        .await
        .expect("counted")
    } else {
        sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.processlist \
             WHERE command = 'Query' AND instr(info, ?) > 0 AND id <> CONNECTION_ID()",
        )
        .bind(tag)
        .fetch_one(&mut mariadb_root().await)
        .await
        .expect("counted")
    }
}

#[tokio::test]
async fn a_sleeping_postgres_statement_ends_at_the_deadline() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    long_statements_end_at_the_deadline(ADMIN_CONNECTIONS, "postgres", "SELECT pg_sleep(30)").await;
}

#[tokio::test]
async fn a_sleeping_postgres_statement_of_the_least_privilege_account_ends_at_the_deadline() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    long_statements_end_at_the_deadline(CONNECTIONS, "postgres", "SELECT pg_sleep(30)").await;
}

/// About 110 s of a server core if it were not ended. (MariaDB notices a
/// closed client during `SLEEP` within 5 s, but not during `BENCHMARK`.)
const BUSY_MARIADB_STATEMENT: &str = "SELECT BENCHMARK(300000000, MD5('wasm-broker'))";

#[tokio::test]
async fn a_busy_mariadb_statement_ends_at_the_deadline() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    long_statements_end_at_the_deadline(ADMIN_CONNECTIONS, "mariadb", BUSY_MARIADB_STATEMENT).await;
}

#[tokio::test]
async fn a_busy_mariadb_statement_of_the_least_privilege_account_ends_at_the_deadline() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    long_statements_end_at_the_deadline(CONNECTIONS, "mariadb", BUSY_MARIADB_STATEMENT).await;
}
