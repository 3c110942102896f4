//! A reply larger than `max_host_call_bytes` is abandoned while it is read,
//! not after the host has buffered it: four parallel `GET`s of a 160 MiB
//! Redis value, or four `SELECT repeat('a', 200000000)` on PostgreSQL (one
//! 200 MB value each), leave the broker's peak memory near where it was,
//! and `/healthz` answers meanwhile.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use wasm_broker_tests::faults::GRANT_ABUSE;
use wasm_broker_tests::{
    ADMIN_CONNECTIONS, BrokerSetup, TestBroker, instance_path, provision_body, service_available,
    unique_id,
};

const CHUNK: usize = 8 * 1024 * 1024;
const CHUNKS: usize = 20;

#[tokio::test]
async fn huge_redis_replies_are_abandoned_while_read() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let _timing = wasm_broker_tests::timed().await;
    let key = format!("wb_test_{}:big", unique_id("big"));
    let client = redis::Client::open("redis://127.0.0.1:6379/").expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let chunk = vec![b'a'; CHUNK];
    for _ in 0..CHUNKS {
        redis::cmd("APPEND")
            .arg(&key)
            .arg(&chunk)
            .query_async::<i64>(&mut redis)
            .await
            .expect("APPEND");
    }
    let outcome = four_at_once("redis", json!([{"redis": ["GET", key]}])).await;
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<i64>(&mut redis)
        .await
        .expect("DEL");
    outcome.assert_bounded();
}

#[tokio::test]
async fn huge_postgres_values_are_abandoned_while_read() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let _timing = wasm_broker_tests::timed().await;
    four_at_once(
        "postgres",
        json!([{"sql": "SELECT repeat('a', 200000000)"}]),
    )
    .await
    .assert_bounded();
}

struct Outcome {
    bodies: Vec<String>,
    grown_mib: u64,
    slowest_health: Duration,
}

impl Outcome {
    fn assert_bounded(self) {
        for body in &self.bodies {
            assert!(
                body.contains("limit-exceeded: ") && body.contains("abandoned while read"),
                "{body}"
            );
        }
        let Self {
            grown_mib,
            slowest_health,
            ..
        } = self;
        // Buffered whole, each answer would cost the value at least twice
        // over (about 1.3 GiB for four); bounded, a few times the 4 MiB limit
        // each.
        assert!(grown_mib < 128, "the peak grew by {grown_mib} MiB");
        assert!(
            slowest_health < Duration::from_secs(1),
            "/healthz took {slowest_health:?}"
        );
    }
}

/// Four provisions of grant_abuse, granted the administrator's `connection`,
/// each running `calls` at once, with `/healthz` asked meanwhile.
async fn four_at_once(connection: &str, calls: Value) -> Outcome {
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![GRANT_ABUSE.plugin()],
        extra_config: format!(
            "{ADMIN_CONNECTIONS}\n[plugins.grant_abuse.connections]\nadmin = \"{connection}\"\n"
        ),
        ..BrokerSetup::default()
    })
    .await;
    // One call first, so what loading and the first call cost is in the
    // peak before the large answers.
    let (status, body) = broker
        .provision(&unique_id("warm"), &GRANT_ABUSE.plan(), None)
        .await;
    assert_eq!(status, 201, "{body}");
    let before = broker.peak_rss_kib();

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let request = broker
            .osb(Method::PUT, &instance_path(&unique_id("big-read")))
            .json(&provision_body(
                &GRANT_ABUSE.plan(),
                Some(json!({ "calls": calls.clone() })),
            ))
            .timeout(Duration::from_secs(60));
        requests.spawn(async move {
            let response = request.send().await.expect("answered");
            response.text().await.unwrap_or_default()
        });
    }
    let mut slowest_health = Duration::ZERO;
    let mut bodies = Vec::new();
    while !requests.is_empty() {
        let started = Instant::now();
        let health = broker.raw(Method::GET, "/healthz").send().await;
        let healthy = health.is_ok_and(|response| response.status().is_success());
        slowest_health = slowest_health.max(started.elapsed());
        if !healthy {
            slowest_health = Duration::MAX;
        }
        while let Some(body) = requests.try_join_next() {
            bodies.push(body.expect("joined"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = broker.peak_rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "{connection}: peak RSS {before} KiB -> {after} KiB (+{grown_mib} MiB); slowest /healthz {slowest_health:?}"
    );
    Outcome {
        bodies,
        grown_mib,
        slowest_health,
    }
}
