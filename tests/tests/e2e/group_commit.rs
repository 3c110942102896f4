//! Group commit under a crash: concurrent provisions share commits (one
//! fsync for many state changes), yet a kill -9 in the middle of them
//! loses no change the broker acknowledged, and leaves no unacknowledged
//! one half there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasm_broker_tests::faults::{ECHO, instance_last_operation};
use wasm_broker_tests::{
    API_VERSION, BrokerSetup, PASSWORD, TestBroker, USERNAME, encode_id, instance_path,
    metric_sample, provision_body, unique_id,
};

const CLIENTS: usize = 64;
/// Provisions acknowledged before the kill: enough that many batches
/// committed, and the kill lands while others are open.
const ACKNOWLEDGED_BEFORE_KILL: usize = 300;

#[derive(Default)]
struct Outcomes {
    /// Answered 201: committed, so must survive.
    acknowledged: Vec<String>,
    /// Never answered: sent when the kill cut them, or refused after it.
    unanswered: Vec<String>,
}

#[tokio::test]
async fn a_crash_during_batched_provisions_loses_nothing_acknowledged() {
    let _cpu = wasm_broker_tests::timed().await;
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    let plan = ECHO.plan();
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let url = format!("{}/v2/service_instances/", broker.base_url);
        let outcomes = outcomes.clone();
        let body = provision_body(&plan, None);
        clients.push(tokio::spawn(async move {
            // A client (and so a connection) of its own.
            let http = reqwest::Client::new();
            for n in 0.. {
                let id = unique_id(&format!("batch-{client}-{n}"));
                let sent = http
                    .put(format!("{url}{}", encode_id(&id)))
                    .basic_auth(USERNAME, Some(PASSWORD))
                    .header("X-Broker-API-Version", API_VERSION)
                    .json(&body)
                    .send()
                    .await;
                let mut outcomes = outcomes.lock().expect("outcomes");
                match sent {
                    Ok(response) if response.status().as_u16() == 201 => {
                        outcomes.acknowledged.push(id);
                    }
                    Ok(response) => panic!("provision {id}: status {}", response.status()),
                    Err(_) => {
                        // The broker is gone: this one was never answered.
                        outcomes.unanswered.push(id);
                        return;
                    }
                }
            }
        }));
    }

    // Kill once enough are acknowledged, with the clients still sending.
    let started = std::time::Instant::now();
    loop {
        let acknowledged = outcomes.lock().expect("outcomes").acknowledged.len();
        if acknowledged >= ACKNOWLEDGED_BEFORE_KILL {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {acknowledged} provisions answered in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let metrics = broker.metrics().await;
    broker.note("kill -9 with 64 provisions in flight");
    broker.kill();
    for client in clients {
        client.await.expect("client task");
    }

    // The broker shared commits: fewer commits than state changes.
    let commits = metric_sample(&metrics, "state_commits_total", &[]).expect("commits counted");
    let changes = metric_sample(&metrics, "state_changes_total", &[]).expect("changes counted");
    assert!(
        commits < changes / 2.0,
        "64 clients at once must share commits: {commits} commits for {changes} changes"
    );

    broker.spawn().await;
    broker.note("restarted");
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    assert_eq!(
        outcomes.unanswered.len(),
        CLIENTS,
        "each client was cut once"
    );
    for id in &outcomes.acknowledged {
        let (status, body) = broker.get(&instance_path(id)).await;
        assert_eq!(
            status, 200,
            "acknowledged {id} lost after the crash: {body}"
        );
    }
    // Unanswered: stored whole (committed before the kill, the answer lost)
    // or absent, or failed by the restart (its first change committed, the
    // plugin call cut): never an instance left in progress.
    let (mut whole, mut absent, mut failed) = (0, 0, 0);
    for id in &outcomes.unanswered {
        let (status, body) = broker.get(&instance_path(id)).await;
        let (poll_status, poll) = instance_last_operation(&broker, id).await;
        match (status, poll_status, poll["state"].as_str()) {
            (200, _, _) => whole += 1,
            (404, 404 | 410, _) => absent += 1,
            (404, 200, Some("failed")) => failed += 1,
            other => panic!("unanswered {id} is half there: {other:?} {body} {poll}"),
        }
    }
    broker.note(&format!(
        "{} acknowledged, all present; unanswered: {whole} whole, {absent} absent, {failed} failed",
        outcomes.acknowledged.len()
    ));
}
