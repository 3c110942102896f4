//! High availability: two `wasm-broker serve` processes on different ports
//! sharing one PostgreSQL state store behave as one broker. Idempotency and
//! `ConcurrencyError` hold across them, an operation started on one is
//! answered and finished by the other, credentials sealed by one are read
//! by the other, and a replica killed mid-call has its call failed by the
//! survivor once its lease runs out, while a live replica's calls are left
//! alone.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wasm_broker_tests::faults::{
    ECHO, FAULT_LOOP, Fixture, SLOW_ASYNC, assert_concurrency_error, eventually,
    instance_last_operation, instance_poll_path, poll_until_done, provision_async,
};
use wasm_broker_tests::{
    BrokerSetup, ENCRYPTION_KEY, ScratchDatabase, TestBroker, binding_path, broker_binary,
    credentials, instance_path, provision_body, unique_id,
};

/// Short, so the kill test waits seconds, not the default half minute.
const LEASE_SECONDS: u64 = 3;

/// Two replicas serving `fixtures` from one fresh database, started at
/// once (so they also migrate it at once); `None` when PostgreSQL is not
/// there outside CI.
async fn replicas(
    fixtures: &[Fixture],
    extra_config: &str,
) -> Option<(ScratchDatabase, TestBroker, TestBroker)> {
    let database = ScratchDatabase::create().await?;
    let setup = || BrokerSetup {
        plugins: fixtures.iter().map(Fixture::plugin).collect(),
        extra_config: extra_config.to_owned(),
        state: database.state_config(LEASE_SECONDS),
        ..BrokerSetup::default()
    };
    let (a, b) = tokio::join!(TestBroker::start(setup()), TestBroker::start(setup()));
    assert_ne!(a.port(), b.port());
    Some((database, a, b))
}

#[tokio::test]
async fn idempotency_and_conflicts_hold_across_replicas() {
    let _cpu = wasm_broker_tests::timed().await;
    let Some((_database, a, b)) = replicas(&[ECHO], "").await else {
        return;
    };
    let plan = ECHO.plan();
    let instance_id = unique_id("ha-idempotent");
    let parameters = Some(json!({"size": "small"}));

    let (status, body) = a.provision(&instance_id, &plan, parameters.clone()).await;
    assert_eq!(status, 201, "provision on A: {body}");
    let (status, body) = b.provision(&instance_id, &plan, parameters.clone()).await;
    assert_eq!(
        status, 200,
        "the identical PUT on B finds A's instance: {body}"
    );
    let (status, body) = b
        .provision(&instance_id, &plan, Some(json!({"size": "large"})))
        .await;
    assert_eq!(
        status, 409,
        "a different PUT on B conflicts with A's instance: {body}"
    );

    let binding_id = unique_id("ha-idempotent-binding");
    let (status, first) = b.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "bind on B: {first}");
    let (status, again) = a.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 200, "the identical bind on A: {again}");
    assert_eq!(again["credentials"], first["credentials"]);

    let (status, body) = a.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 200, "unbind on A: {body}");
    let (status, body) = b.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 410, "B sees A's unbind: {body}");
    let (status, body) = b.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 200, "deprovision on B: {body}");
    let (status, body) = a.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 410, "A sees B's deprovision: {body}");
}

/// `count` requests made by `request`, alternately to A and B, leaving
/// together; their answers in request order.
async fn race<F, Fut>(
    a: &Arc<TestBroker>,
    b: &Arc<TestBroker>,
    count: usize,
    request: F,
) -> Vec<(u16, Value)>
where
    F: Fn(Arc<TestBroker>, usize) -> Fut,
    Fut: Future<Output = (u16, Value)> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let replica = if index % 2 == 0 { a } else { b };
        let request = request(replica.clone(), index);
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            (index, request.await)
        });
    }
    let mut answers = vec![(0, Value::Null); count];
    while let Some(joined) = tasks.join_next().await {
        let (index, answer) = joined.expect("request task");
        answers[index] = answer;
    }
    answers
}

/// Exactly one 201 among `answers`.
#[track_caller]
fn assert_one_created(answers: &[(u16, Value)]) {
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    let created = statuses.iter().filter(|status| **status == 201).count();
    assert_eq!(
        created, 1,
        "exactly one 201 across both replicas: {statuses:?}"
    );
}

#[tokio::test]
async fn racing_creates_on_both_replicas_make_one_resource() {
    let _cpu = wasm_broker_tests::timed().await;
    let Some((_database, a, b)) = replicas(&[ECHO], "").await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let plan = ECHO.plan();

    let instance_id = unique_id("ha-race-same");
    let body = provision_body(&plan, Some(json!({"race": "same"})));
    let answers = race(&a, &b, 32, |replica, _| {
        let (instance_id, body) = (instance_id.clone(), body.clone());
        async move { replica.put_instance(&instance_id, "", &body).await }
    })
    .await;
    assert_one_created(&answers);
    for (status, body) in &answers {
        match status {
            200 | 201 => assert!(body.is_object(), "{status}: {body}"),
            _ => assert_concurrency_error(*status, body, "identical racing provision"),
        }
    }

    let instance_id = unique_id("ha-race-different");
    let answers = race(&a, &b, 32, |replica, index| {
        let instance_id = instance_id.clone();
        let body = provision_body(&plan, Some(json!({"contender": index})));
        async move { replica.put_instance(&instance_id, "", &body).await }
    })
    .await;
    assert_one_created(&answers);
    for (status, body) in &answers {
        match status {
            201 | 409 => {}
            _ => assert_concurrency_error(*status, body, "different racing provision"),
        }
    }
    let winner = answers
        .iter()
        .position(|(status, _)| *status == 201)
        .expect("a winner");
    let (status, body) = b.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["parameters"],
        json!({"contender": winner}),
        "the stored instance is the winner's: {body}"
    );
}

#[tokio::test]
async fn racing_async_provisions_on_both_replicas_share_one_operation() {
    let _cpu = wasm_broker_tests::timed().await;
    let Some((_database, a, b)) = replicas(&[SLOW_ASYNC], "").await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("ha-race-async");
    // Enough polls that the operation stays in progress for the whole test.
    let parameters = Some(json!({"polls": 1000}));
    let answers = race(&a, &b, 16, |replica, _| {
        let (instance_id, plan, parameters) =
            (instance_id.clone(), plan.clone(), parameters.clone());
        async move { provision_async(&replica, &instance_id, &plan, parameters).await }
    })
    .await;
    let mut operations = std::collections::BTreeSet::new();
    for (status, body) in &answers {
        match status {
            202 => {
                operations.insert(body["operation"].to_string());
            }
            _ => assert_concurrency_error(*status, body, "async provision racing the first call"),
        }
    }
    assert_eq!(
        operations.len(),
        1,
        "every 202, from either replica, names the same operation: {operations:?}"
    );
    let operation = operations.pop_first().expect("one operation");
    for replica in [&a, &b] {
        let (status, body) =
            provision_async(replica, &instance_id, &plan, parameters.clone()).await;
        assert_eq!(
            (status, body["operation"].to_string()),
            (202, operation.clone()),
            "after the race: {body}"
        );
    }
}

#[tokio::test]
async fn an_operation_started_on_one_replica_finishes_on_the_other() {
    let _cpu = wasm_broker_tests::timed().await;
    let Some((_database, a, b)) = replicas(&[SLOW_ASYNC], "").await else {
        return;
    };
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("ha-async");
    let parameters = Some(json!({"polls": 3}));

    let (status, body) = provision_async(&a, &instance_id, &plan, parameters.clone()).await;
    assert_eq!(status, 202, "async provision on A: {body}");
    let operation = body["operation"].clone();
    let (status, body) = provision_async(&b, &instance_id, &plan, parameters.clone()).await;
    assert_eq!(
        (status, &body["operation"]),
        (202, &operation),
        "the identical PUT on B answers A's operation: {body}"
    );
    let (status, body) = b
        .put_instance(&instance_id, "", &provision_body(&plan, parameters.clone()))
        .await;
    assert_concurrency_error(
        status,
        &body,
        "a synchronous PUT on B while A's provision runs",
    );

    let (body, in_progress) = poll_until_done(&b, &instance_poll_path(&instance_id), 10).await;
    assert_eq!(body["state"], "succeeded", "polled on B: {body}");
    assert!(in_progress >= 1, "B polled the plugin before it finished");
    let (status, body) = a.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 200, "A sees the provision B completed: {body}");

    let path = format!(
        "{}?{}&accepts_incomplete=true",
        instance_path(&instance_id),
        plan.query()
    );
    let (status, body) = wasm_broker_tests::send(b.osb(Method::DELETE, &path)).await;
    assert_eq!(status, 202, "async deprovision on B: {body}");
    let (body, _) = poll_until_done(&a, &instance_poll_path(&instance_id), 10).await;
    assert_eq!(body["state"], "succeeded", "polled on A: {body}");
    let (status, body) = b.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 404, "deprovisioned: {body}");
}

#[tokio::test]
async fn credentials_sealed_by_one_replica_are_read_by_the_other() {
    let _cpu = wasm_broker_tests::timed().await;
    let Some((database, a, b)) = replicas(&[ECHO], "").await else {
        return;
    };
    let plan = ECHO.plan();
    let instance_id = unique_id("ha-credentials");
    let binding_id = unique_id("ha-credentials-binding");
    let (status, body) = a.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, bound) = a.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "bind on A: {bound}");

    let (status, fetched) = b.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(status, 200, "fetch on B: {fetched}");
    assert_eq!(credentials(&fetched), credentials(&bound));

    let mut connection = database.connect().await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT result FROM bindings WHERE id = $1")
        .bind(&binding_id)
        .fetch_one(&mut connection)
        .await
        .expect("the binding's row");
    let plain = binding_id.as_bytes();
    assert!(
        !sealed.windows(plain.len()).any(|window| window == plain),
        "the credentials (which name the binding) are stored encrypted"
    );
}

/// A killed replica's synchronous call is failed by the other once the
/// killed one's lease has run out; the survivor's own call, and the
/// restarted replica's startup, leave the survivor's call alone.
#[tokio::test]
async fn a_dead_replicas_call_fails_after_its_lease_and_a_live_ones_does_not() {
    let _cpu = wasm_broker_tests::timed().await;
    // Long enough that only the kill ends A's call, and B's outlives the test.
    let Some((_database, mut a, b)) = replicas(
        &[FAULT_LOOP],
        "[plugins.fault_loop]\ncall_timeout_ms = 120000\n",
    )
    .await
    else {
        return;
    };
    let plan = FAULT_LOOP.plan();
    let on_a = unique_id("ha-dead-call");
    let on_b = unique_id("ha-live-call");
    // Neither request is ever answered while the test runs.
    let pending = |replica: &TestBroker, id: &str| {
        let request = replica
            .osb(Method::PUT, &instance_path(id))
            .json(&provision_body(&plan, None));
        tokio::spawn(async move { request.send().await.map(|response| response.status()) })
    };
    let _call_on_a = pending(&a, &on_a);
    let call_on_b = pending(&b, &on_b);
    for (asked, id) in [(&b, &on_a), (&a, &on_b)] {
        eventually(
            "each replica's call is running, seen from the other replica",
            Duration::from_secs(10),
            || async move {
                let (status, body) = instance_last_operation(asked, id).await;
                (status == 200 && body["state"] == "in progress").then_some(())
            },
        )
        .await;
    }

    a.note("kill -9 with a provision running");
    a.kill();
    let failed = eventually(
        "B fails the call of the killed replica A once A's lease ran out",
        Duration::from_secs(LEASE_SECONDS * 10),
        || {
            let (b, on_a) = (&b, &on_a);
            async move {
                let (status, body) = instance_last_operation(b, on_a).await;
                (status == 200 && body["state"] == "failed").then_some(body)
            }
        },
    )
    .await;
    let description = failed["description"].as_str().unwrap_or_default();
    assert!(description.contains("broker stopped"), "says why: {failed}");
    let (status, body) = instance_last_operation(&b, &on_b).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "B's own call is still running: {body}"
    );

    a.spawn().await;
    a.note("restarted");
    let (status, body) = instance_last_operation(&a, &on_b).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "a replica starting leaves a live replica's call alone: {body}"
    );
    assert!(!call_on_b.is_finished(), "B's call was not answered");

    let (status, body) = a.deprovision(&on_a, &plan).await;
    assert_eq!(
        status, 200,
        "orphan-mitigation DELETE of the failed provision: {body}"
    );
}

/// `wasm-broker <args>` with `broker`'s configuration and `key` as the
/// encryption key: stdout, after checking it succeeded.
fn command(broker: &TestBroker, key: &str, args: &[&str], extra_env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(broker_binary())
        .args(args)
        .arg("--config")
        .arg(broker.dir.path().join("broker.toml"))
        .env_remove("WASM_BROKER_STATE_URL")
        .env_remove("WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS")
        .env("WASM_BROKER_ENCRYPTION_KEY", key)
        .envs(extra_env.iter().copied())
        .output()
        .expect("wasm-broker runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wasm-broker {args:?}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The operator commands work on the shared store named in broker.toml: a
/// key rotation run beside the replicas re-encrypts what they stored, and a
/// replica restarted with the new key reads it.
#[tokio::test]
async fn operator_commands_work_on_the_shared_store() {
    let _cpu = wasm_broker_tests::timed().await;
    let Some((_database, a, mut b)) = replicas(&[ECHO], "").await else {
        return;
    };
    let plan = ECHO.plan();
    let instance_id = unique_id("ha-operator");
    let binding_id = unique_id("ha-operator-binding");
    let (status, body) = a.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, bound) = a.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "{bound}");

    let new_key = command(&a, ENCRYPTION_KEY, &["generate-key"], &[]);
    let new_key = new_key.trim();
    let rotated = command(
        &a,
        ENCRYPTION_KEY,
        &["rotate-key"],
        &[("WASM_BROKER_NEW_ENCRYPTION_KEY", new_key)],
    );
    assert!(
        rotated.contains("re-encrypted the credentials of 1 service binding(s)"),
        "{rotated}"
    );

    b.kill();
    b.encryption_key = Some(new_key.to_owned());
    b.spawn().await;
    let (status, fetched) = b.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(status, 200, "B, restarted with the new key: {fetched}");
    assert_eq!(credentials(&fetched), credentials(&bound));

    let listed = command(&b, new_key, &["instances", "list", "--json"], &[]);
    assert!(listed.contains(&instance_id), "{listed}");
}
