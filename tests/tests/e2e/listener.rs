//! The listener holds against clients that never finish a request, and it
//! opens before the plugins load. The attacks: 3,000 half-sent requests
//! stayed open (no header timeout) until the file limit stopped `/healthz`;
//! three plugins whose catalog loops kept the broker from listening for
//! 3 x call_timeout_ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasm_broker_tests::faults::{ECHO, FAULT_LOOP, log_lines_with, offering, plain_logs};
use wasm_broker_tests::{BrokerSetup, TestBroker, assert_error_body, json};

const HALF_SENT: usize = 3_000;
/// The default `[server] header_read_timeout_ms` (the test keeps the
/// defaults, so it runs against a broker without the setting too).
const HEADER_TIMEOUT_MS: u64 = 10_000;

/// As many half-sent requests as this process may open beside what it
/// already has: `HALF_SENT`, or fewer under a low open-file limit (still
/// far more than the broker's connection cap).
fn half_sent_count() -> usize {
    let soft_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits
                .lines()
                .find(|line| line.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    soft_limit.map_or(HALF_SENT, |limit| HALF_SENT.min(limit.saturating_sub(512)))
}

/// Opens a connection and sends a request's first header lines, never the
/// blank line that ends them.
async fn half_sent(port: u16) -> Option<TcpStream> {
    let connect = TcpStream::connect(("127.0.0.1", port));
    let mut stream = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .ok()?
        .ok()?;
    stream
        .write_all(b"GET /v2/catalog HTTP/1.1\r\nHost: broker\r\nX-Broker-API-")
        .await
        .ok()?;
    Some(stream)
}

/// How long until the broker closes `stream` (reads EOF or a reset), if
/// within `patience`.
async fn closed_within(mut stream: TcpStream, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn half_sent_requests_are_closed_and_probes_answer_throughout() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;

    // Probes on fresh connections every 100 ms while the attack runs.
    let attacking = Arc::new(AtomicBool::new(true));
    let probes = tokio::spawn({
        let attacking = attacking.clone();
        let url = format!("{}/healthz", broker.base_url);
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut failures = Vec::new();
            let mut answered = 0;
            while attacking.load(Ordering::Acquire) {
                let started = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => answered += 1,
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(error) => failures.push(format!("after {:?}: {error}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (answered, failures)
        }
    });

    let port = broker.port();
    let count = half_sent_count();
    assert!(
        count > 1_000,
        "the open-file limit leaves room for {count} connections only"
    );
    let opening: Vec<_> = (0..count).map(|_| tokio::spawn(half_sent(port))).collect();
    let mut streams = Vec::new();
    for opened in opening {
        if let Some(stream) = opened.await.expect("connect task") {
            streams.push(stream);
        }
    }
    assert!(
        streams.len() > count / 2,
        "only {} of {count} connections opened",
        streams.len()
    );
    // Counted from when every connect returned, but a connection may reach
    // the broker much later: while the listen backlog is full the kernel
    // drops the handshake's last ACK, and the client, which thinks it is
    // connected, and the server, retrying its SYN-ACK, back off (1, 2, 4,
    // 8, 16 s) before the kernel queues it for the broker. A CI run saw 39
    // of 3,000 still open 30 s after the connects returned. Without a
    // header timeout they would stay open for ever: the bound still fails
    // that.
    let patience = Duration::from_millis(HEADER_TIMEOUT_MS) + Duration::from_secs(75);
    let waits: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(closed_within(stream, patience)))
        .collect();
    let mut still_open = 0;
    for wait in waits {
        if wait.await.expect("wait task").is_none() {
            still_open += 1;
        }
    }
    attacking.store(false, Ordering::Release);
    let (answered, failures) = probes.await.expect("probe task");

    assert_eq!(
        still_open, 0,
        "half-sent requests still open {patience:?} after they were sent"
    );
    assert!(
        failures.is_empty() && answered > 0,
        "/healthz must answer throughout: {answered} answered, failures {failures:?}"
    );
    // And the broker serves normally afterwards.
    let catalog = broker.catalog().await;
    assert!(offering(&catalog, ECHO.offering).is_some(), "{catalog}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        server: "idle_timeout_ms = 1500".to_owned(),
        ..BrokerSetup::default()
    })
    .await;
    let mut stream = TcpStream::connect(("127.0.0.1", broker.port()))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .expect("send");
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    let closed = closed_within(stream, Duration::from_secs(20)).await;
    let closed = closed.expect("the idle connection is closed");
    assert!(
        closed >= Duration::from_millis(1000),
        "closed after {closed:?}, before the idle timeout"
    );
}

#[tokio::test]
async fn the_listener_opens_before_plugins_whose_catalog_loops_are_loaded() {
    let _cpu = wasm_broker_tests::timed().await;
    let looping = ["loop_a", "loop_b", "loop_c"];
    let mut plugins = vec![ECHO.plugin()];
    let mut extra = String::new();
    for stem in looping {
        plugins.push((stem.to_owned(), FAULT_LOOP.plugin().1));
        extra.push_str(&format!(
            "\n[plugins.{stem}.config]\ncatalog_loops = true\n"
        ));
    }
    let mut broker = TestBroker::prepare(BrokerSetup {
        plugins,
        extra_config: extra,
        ..BrokerSetup::default()
    });
    let started = Instant::now();
    broker.spawn_listening().await;
    let listening = started.elapsed();
    assert!(
        listening < Duration::from_secs(5),
        "/healthz answered only after {listening:?}"
    );

    // The three catalogs take catalog_timeout_ms (2 s) each: still loading.
    let response = broker
        .raw(Method::GET, "/readyz")
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.text().await.unwrap_or_default(), "loading plugins");
    let (status, body) = json(
        broker
            .osb(Method::GET, "/v2/catalog")
            .send()
            .await
            .expect("GET /v2/catalog"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_error_body(&body, "catalog while loading");
    assert!(
        body["description"]
            .as_str()
            .is_some_and(|text| text.contains("loading")),
        "{body}"
    );

    // Loaded well before one call_timeout_ms (10 s) per looping plugin.
    broker.wait_loaded().await;
    let loaded = started.elapsed();
    assert!(
        loaded < Duration::from_secs(25),
        "plugins loaded only after {loaded:?}"
    );
    let catalog = broker.catalog().await;
    assert!(offering(&catalog, ECHO.offering).is_some(), "{catalog}");
    for stem in looping {
        assert!(
            !log_lines_with(&broker, &["compiling", stem, "KiB)"]).is_empty(),
            "no compile line for {stem}; log:\n{}",
            plain_logs(&broker)
        );
        assert!(
            !log_lines_with(&broker, &["plugin refused", stem, "catalog failed"]).is_empty(),
            "{stem} must be refused for its catalog; log:\n{}",
            plain_logs(&broker)
        );
    }
    assert!(
        !log_lines_with(&broker, &["echo compiled and checked in", "ms"]).is_empty(),
        "no load duration for echo; log:\n{}",
        plain_logs(&broker)
    );
}
