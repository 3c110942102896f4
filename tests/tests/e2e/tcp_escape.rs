//! The tcp capability's door holds: a plugin granted one tcp connection
//! reaches that endpoint through the host's stream and nothing else (no
//! other address or port, no `wasi:sockets` of its own, no UDP, no name
//! lookup, no listening socket, no ungranted or non-tcp alias); it never
//! sees the admin secret (the peer gets the secret, the plugin only the
//! token, also in what the peer echoes); and a read blocked on a silent
//! peer is stopped at the call's deadline while other plugins serve.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wasm_broker_tests::faults::{ECHO, Fixture, TCP_ESCAPE, assert_echo_serves};
use wasm_broker_tests::{BrokerSetup, CONNECTIONS, TestBroker, unique_id};

const SECRET: &str = "tcp-admin-secret-0123456789";
const DEADLINE_MS: u64 = 2000;

/// A loopback server: every byte received goes to the test, and back to
/// the client if `echo`; a silent one reads and never answers.
async fn server(echo: bool) -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (sent, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                while let Ok(count) = socket.read(&mut buffer).await {
                    if count == 0 {
                        break;
                    }
                    let _ = sent.send(buffer[..count].to_vec());
                    if echo && socket.write_all(&buffer[..count]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, received)
}

async fn tcp_broker(echo_port: u16, silent_port: u16) -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: [TCP_ESCAPE, ECHO].iter().map(Fixture::plugin).collect(),
        extra_config: format!(
            r#"{CONNECTIONS}
[connections.echo-server]
kind = "tcp"
url = "tcp://admin:{SECRET}@127.0.0.1:{echo_port}"

[connections.silent-server]
kind = "tcp"
url = "tcp://127.0.0.1:{silent_port}"

[plugins.tcp_escape]
call_timeout_ms = {DEADLINE_MS}

[plugins.tcp_escape.connections]
echo = "echo-server"
silent = "silent-server"
db = "mariadb"
"#
        ),
        ..BrokerSetup::default()
    })
    .await
}

#[tokio::test]
async fn a_tcp_grant_opens_its_endpoint_and_nothing_else() {
    let _cpu = wasm_broker_tests::timed().await;
    let (echo_port, mut at_peer) = server(true).await;
    let (silent_port, _) = server(false).await;
    let broker = tcp_broker(echo_port, silent_port).await;
    let plan = TCP_ESCAPE.plan();
    let (status, body) = broker
        .provision(&unique_id("tcp-escape"), &plan, None)
        .await;
    assert_eq!(status, 201, "{body}");
    let report: Value = body["metadata"].clone();

    let attempts = report["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts in {report}"));
    assert_eq!(attempts.len(), 11, "{report}");
    for attempt in attempts {
        let result = attempt["result"].as_str().unwrap_or_default();
        assert!(
            !result.is_empty() && !result.starts_with("OK"),
            "{} escaped: {result}",
            attempt["what"]
        );
    }
    for alias in ["admin", "db"] {
        let refused = attempts
            .iter()
            .find(|attempt| attempt["what"] == format!("stream to {alias}"))
            .and_then(|attempt| attempt["result"].as_str())
            .unwrap_or_default();
        assert!(refused.starts_with("not-granted"), "{alias}: {refused}");
    }

    // The plugin holds a token as long as the secret, never the secret.
    let token = report["credentials"]["password"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {report}"));
    assert_eq!(report["credentials"]["revealed"], false);
    assert_eq!(token.len(), SECRET.len());
    assert_ne!(token, SECRET);
    assert!(!report.to_string().contains(SECRET), "{report}");
    // The peer got the secret in place of the first token only; what it
    // echoed reached the plugin with the token in place of the secret.
    let mut received = Vec::new();
    let expected = format!("PASS {SECRET}\nPASS {token}\n");
    while received.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(5), at_peer.recv()).await {
            Ok(Some(bytes)) => received.extend(bytes),
            _ => break,
        }
    }
    assert_eq!(String::from_utf8_lossy(&received), expected);
    assert_eq!(
        report["echoed"].as_str(),
        Some(format!("PASS {token}\nPASS {token}\n").as_str()),
        "{report}"
    );
    assert!(
        !broker.logs().contains(SECRET),
        "the secret reached the broker's log"
    );
}

#[tokio::test]
async fn a_read_blocked_on_a_silent_peer_is_stopped_at_the_deadline() {
    let _cpu = wasm_broker_tests::timed().await;
    let (echo_port, _) = server(true).await;
    let (silent_port, _) = server(false).await;
    let broker = tcp_broker(echo_port, silent_port).await;
    let plan = TCP_ESCAPE.plan();
    let instance_id = unique_id("tcp-blocked");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    let started = Instant::now();
    let (status, body) = broker
        .bind(&instance_id, &unique_id("tcp-blocked-binding"), &plan, None)
        .await;
    let took = started.elapsed();
    assert_eq!(status, 500, "{body}");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("tcp_escape") && description.contains("deadline"),
        "{body}"
    );
    assert!(
        took < Duration::from_millis(DEADLINE_MS + 1500),
        "the blocked read held the call for {took:?}"
    );
    assert_echo_serves(&broker, "after a blocked tcp read").await;
}
