//! Requests racing for one resource: exactly one creates it, the others get
//! the idempotent answer, a conflict, or a `ConcurrencyError`, never a 5xx
//! or a second resource; operations on an instance in progress are refused
//! with 422 `ConcurrencyError`.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};
use wasm_broker_tests::faults::{
    ECHO, ECHO_OTHER_PLAN_ID, SLOW_ASYNC, all_at_once, assert_concurrency_error, bind_async,
    instance_last_operation, instance_poll_path, poll_until_done, provision_async,
};
use wasm_broker_tests::{
    BrokerSetup, PlanIds, TestBroker, binding_path, instance_path, metric_sample, provision_body,
    send, unique_id,
};

async fn broker_with(plugins: &[wasm_broker_tests::faults::Fixture]) -> Arc<TestBroker> {
    let plugins = plugins.iter().map(|fixture| fixture.plugin()).collect();
    Arc::new(
        TestBroker::start(BrokerSetup {
            plugins,
            ..BrokerSetup::default()
        })
        .await,
    )
}

/// Answers grouped by status, for assertion messages.
fn tally(answers: &[(u16, Value)]) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (status, _) in answers {
        *counts.entry(*status).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn identical_provisions_racing_create_one_instance() {
    let broker = broker_with(&[ECHO]).await;
    let instance_id = unique_id("race-same");
    let request = provision_body(&ECHO.plan(), Some(json!({"race": "same"})));
    let answers = all_at_once(&broker, 32, |broker, _| {
        let (instance_id, body) = (instance_id.clone(), request.clone());
        async move { broker.put_instance(&instance_id, "", &body).await }
    })
    .await;
    let counts = tally(&answers);
    assert_eq!(counts.get(&201), Some(&1), "exactly one 201: {counts:?}");
    for (status, body) in &answers {
        match status {
            201 | 200 => assert!(body.is_object(), "{status}: {body}"),
            422 => assert_concurrency_error(*status, body, "identical racing provision"),
            _ => panic!(
                "identical racing provisions answer 201, 200 or 422, not {status}: {body} ({counts:?})"
            ),
        }
    }

    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.put_instance(&instance_id, "", &request).await;
    assert_eq!(
        status, 200,
        "after the race, an identical PUT is answered from the record: {body}"
    );
    let (status, body) = broker.deprovision(&instance_id, &ECHO.plan()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.deprovision(&instance_id, &ECHO.plan()).await;
    assert_eq!(status, 410, "one instance, deleted once: {body}");
}

#[tokio::test]
async fn different_provisions_racing_create_one_instance() {
    let broker = broker_with(&[ECHO]).await;
    let instance_id = unique_id("race-different");
    // Every request differs: plans alternate, parameters all differ.
    let request = |index: usize| {
        let plan_id = if index.is_multiple_of(2) {
            ECHO.plan_id
        } else {
            ECHO_OTHER_PLAN_ID
        };
        let plan = PlanIds {
            service_id: ECHO.service_id.to_owned(),
            plan_id: plan_id.to_owned(),
        };
        provision_body(&plan, Some(json!({"contender": index})))
    };
    let answers = all_at_once(&broker, 16, |broker, index| {
        let (instance_id, body) = (instance_id.clone(), request(index));
        async move { broker.put_instance(&instance_id, "", &body).await }
    })
    .await;
    let counts = tally(&answers);
    assert_eq!(counts.get(&201), Some(&1), "exactly one 201: {counts:?}");
    let winner = answers
        .iter()
        .position(|(status, _)| *status == 201)
        .expect("a winner");
    for (status, body) in &answers {
        match status {
            201 | 409 => {}
            422 => assert_concurrency_error(*status, body, "different racing provision"),
            _ => panic!(
                "different racing provisions answer 201, 409 or 422, not {status}: {body} ({counts:?})"
            ),
        }
    }

    // The instance is the winner's, whole: its plan and its parameters.
    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 200, "{body}");
    let expected = request(winner);
    assert_eq!(body["plan_id"], expected["plan_id"], "{body}");
    assert_eq!(body["parameters"], expected["parameters"], "{body}");
    let (status, body) = broker.put_instance(&instance_id, "", &expected).await;
    assert_eq!(status, 200, "the winner's request repeated: {body}");
}

#[tokio::test]
async fn identical_async_provisions_racing_share_one_operation() {
    let broker = broker_with(&[SLOW_ASYNC]).await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("race-async");
    // Enough polls that the operation stays in progress for the whole test.
    let parameters = json!({"polls": 1000});
    let answers = all_at_once(&broker, 16, |broker, _| {
        let (instance_id, plan, parameters) =
            (instance_id.clone(), plan.clone(), parameters.clone());
        async move { provision_async(&broker, &instance_id, &plan, Some(parameters)).await }
    })
    .await;
    let counts = tally(&answers);
    let mut operations = BTreeSet::new();
    for (status, body) in &answers {
        match status {
            202 => {
                operations.insert(
                    body["operation"]
                        .as_str()
                        .unwrap_or_else(|| panic!("202 without operation: {body}")),
                );
            }
            422 => assert_concurrency_error(*status, body, "async provision racing the first call"),
            _ => panic!(
                "identical async provisions answer 202 or 422, not {status}: {body} ({counts:?})"
            ),
        }
    }
    assert_eq!(
        operations.len(),
        1,
        "every 202 names the same operation: {operations:?} ({counts:?})"
    );
    let operation = operations
        .into_iter()
        .next()
        .expect("one operation")
        .to_owned();
    let (status, body) = provision_async(&broker, &instance_id, &plan, Some(parameters)).await;
    assert_eq!(
        (status, body["operation"].as_str()),
        (202, Some(operation.as_str())),
        "after the race: {body}"
    );

    // While it is in progress, nothing else may start on the instance.
    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "{body}"
    );
    let delete = format!(
        "{}?{}&accepts_incomplete=true",
        instance_path(&instance_id),
        plan.query()
    );
    let (status, body) = send(broker.osb(Method::DELETE, &delete)).await;
    assert_concurrency_error(status, &body, "DELETE during the provision");
    let patch = format!("{}?accepts_incomplete=true", instance_path(&instance_id));
    let update = json!({"service_id": plan.service_id, "parameters": {"polls": 1}});
    let (status, body) = send(broker.osb(Method::PATCH, &patch).json(&update)).await;
    assert_concurrency_error(status, &body, "PATCH during the provision");
    let (status, body) = bind_async(
        &broker,
        &instance_id,
        &unique_id("race-async-binding"),
        &plan,
        None,
    )
    .await;
    assert_concurrency_error(status, &body, "bind during the provision");
    let (status, body) =
        provision_async(&broker, &instance_id, &plan, Some(json!({"polls": 1}))).await;
    assert_eq!(
        status, 409,
        "a different PUT during the provision conflicts: {body}"
    );

    let (status, body) = instance_last_operation(&broker, &instance_id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("in progress")),
        "the refusals changed nothing: {body}"
    );
}

#[tokio::test]
async fn concurrent_binds_on_one_instance_all_succeed() {
    let broker = broker_with(&[ECHO]).await;
    let plan = ECHO.plan();
    let instance_id = unique_id("race-binds");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    let binding_ids: Vec<String> = (0..16)
        .map(|n| unique_id(&format!("race-binding-{n}")))
        .collect();
    let answers = all_at_once(&broker, binding_ids.len(), |broker, index| {
        let (instance_id, binding_id, plan) = (
            instance_id.clone(),
            binding_ids[index].clone(),
            plan.clone(),
        );
        async move {
            broker
                .bind(
                    &instance_id,
                    &binding_id,
                    &plan,
                    Some(json!({"index": index})),
                )
                .await
        }
    })
    .await;
    for ((status, body), binding_id) in answers.iter().zip(&binding_ids) {
        assert_eq!(
            *status,
            201,
            "bind {binding_id}: {body} ({:?})",
            tally(&answers)
        );
        assert_eq!(
            body["credentials"]["binding"]["id"],
            binding_id.as_str(),
            "{body}"
        );
    }
    for (index, binding_id) in binding_ids.iter().enumerate() {
        let (status, body) = broker.get(&binding_path(&instance_id, binding_id)).await;
        assert_eq!(status, 200, "fetch {binding_id}: {body}");
        assert_eq!(
            body["credentials"]["binding"]["id"],
            binding_id.as_str(),
            "each binding keeps its own: {body}"
        );
        assert_eq!(body["parameters"], json!({"index": index}), "{body}");
    }

    // Deleting the instance revokes each binding exactly once.
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 200, "{body}");
    for binding_id in &binding_ids {
        let (status, body) = broker.get(&binding_path(&instance_id, binding_id)).await;
        assert_eq!(
            status, 404,
            "binding {binding_id} outlived its instance: {body}"
        );
    }
}

#[tokio::test]
async fn identical_binds_racing_create_one_binding() {
    let broker = broker_with(&[ECHO]).await;
    let plan = ECHO.plan();
    let instance_id = unique_id("race-same-binding-instance");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding_id = unique_id("race-same-binding");
    let answers = all_at_once(&broker, 16, |broker, _| {
        let (instance_id, binding_id, plan) =
            (instance_id.clone(), binding_id.clone(), plan.clone());
        async move {
            broker
                .bind(
                    &instance_id,
                    &binding_id,
                    &plan,
                    Some(json!({"same": true})),
                )
                .await
        }
    })
    .await;
    let counts = tally(&answers);
    assert_eq!(counts.get(&201), Some(&1), "exactly one 201: {counts:?}");
    let created = answers
        .iter()
        .find(|(status, _)| *status == 201)
        .map(|(_, body)| body["credentials"].clone());
    for (status, body) in &answers {
        match status {
            201 => {}
            200 => assert_eq!(
                Some(&body["credentials"]),
                created.as_ref(),
                "a 200 repeats the created binding"
            ),
            422 => assert_concurrency_error(*status, body, "identical racing bind"),
            _ => panic!(
                "identical racing binds answer 201, 200 or 422, not {status}: {body} ({counts:?})"
            ),
        }
    }
    let (status, body) = broker.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 410, "one binding, deleted once: {body}");
}

#[tokio::test]
async fn racing_deletes_delete_once() {
    let broker = broker_with(&[ECHO]).await;
    let plan = ECHO.plan();
    let instance_id = unique_id("race-delete");
    let binding_id = unique_id("race-unbind");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    let unbinds = all_at_once(&broker, 16, |broker, _| {
        let (instance_id, binding_id, plan) =
            (instance_id.clone(), binding_id.clone(), plan.clone());
        async move { broker.unbind(&instance_id, &binding_id, &plan).await }
    })
    .await;
    assert_one_deletion(&unbinds, "unbind");

    let deletes = all_at_once(&broker, 16, |broker, _| {
        let (instance_id, plan) = (instance_id.clone(), plan.clone());
        async move { broker.deprovision(&instance_id, &plan).await }
    })
    .await;
    assert_one_deletion(&deletes, "deprovision");
    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(status, 404, "{body}");
}

#[track_caller]
fn assert_one_deletion(answers: &[(u16, Value)], what: &str) {
    let counts = tally(answers);
    assert_eq!(
        counts.get(&200),
        Some(&1),
        "exactly one {what} answers 200: {counts:?}"
    );
    for (status, body) in answers {
        match status {
            200 | 410 => {}
            422 => assert_concurrency_error(*status, body, what),
            _ => panic!("racing {what}s answer 200, 410 or 422, not {status}: {body} ({counts:?})"),
        }
    }
}

/// Binds racing the deletion of their instance: whichever wins, no binding
/// outlives the instance and none that was answered 201 is lost.
#[tokio::test]
async fn binds_racing_a_deprovision_leave_no_orphan() {
    let broker = broker_with(&[ECHO]).await;
    let plan = ECHO.plan();
    let instance_id = unique_id("race-bind-delete");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding_ids: Vec<String> = (0..8)
        .map(|n| unique_id(&format!("race-bind-delete-{n}")))
        .collect();
    // Request 0 is the deprovision, the others bind.
    let answers = all_at_once(&broker, binding_ids.len() + 1, |broker, index| {
        let (instance_id, plan) = (instance_id.clone(), plan.clone());
        let binding_id = index.checked_sub(1).map(|n| binding_ids[n].clone());
        async move {
            match binding_id {
                None => broker.deprovision(&instance_id, &plan).await,
                Some(binding_id) => broker.bind(&instance_id, &binding_id, &plan, None).await,
            }
        }
    })
    .await;
    let (delete_status, delete_body) = &answers[0];
    for ((status, body), binding_id) in answers[1..].iter().zip(&binding_ids) {
        assert!(
            matches!(status, 201 | 404 | 422),
            "bind {binding_id} racing a deprovision: {status} {body}"
        );
        let (fetched, fetched_body) = broker.get(&binding_path(&instance_id, binding_id)).await;
        match delete_status {
            200 => assert_eq!(
                fetched, 404,
                "binding {binding_id} outlived its deleted instance: {fetched_body}"
            ),
            422 if *status == 201 => assert_eq!(
                fetched, 200,
                "binding {binding_id} answered 201 but is gone: {fetched_body}"
            ),
            422 => assert_eq!(
                fetched, 404,
                "binding {binding_id} was refused but exists: {fetched_body}"
            ),
            _ => panic!(
                "a deprovision racing binds answers 200 or 422, not {delete_status}: {delete_body}"
            ),
        }
    }
    let (status, body) = broker.get(&instance_path(&instance_id)).await;
    assert_eq!(
        status,
        if *delete_status == 200 { 404 } else { 200 },
        "{body}"
    );
}

/// Polls racing each other on one operation: every answer is a valid
/// state, none a 5xx, and the operation still ends, with its credentials.
#[tokio::test]
async fn racing_polls_leave_an_operation_consistent() {
    let broker = broker_with(&[SLOW_ASYNC]).await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("race-polls");
    let (status, body) =
        provision_async(&broker, &instance_id, &plan, Some(json!({"polls": 3}))).await;
    assert_eq!(status, 202, "{body}");
    let answers = all_at_once(&broker, 16, |broker, _| {
        let instance_id = instance_id.clone();
        async move { instance_last_operation(&broker, &instance_id).await }
    })
    .await;
    for (status, body) in &answers {
        assert_eq!(status, &200, "a racing poll: {body}");
        assert!(
            matches!(body["state"].as_str(), Some("in progress" | "succeeded")),
            "{body}"
        );
    }
    // slow_async counts polls in its kv store without a transaction, so
    // racing polls may count as one: poll on until it is done.
    let (body, _) = poll_until_done(&broker, &instance_poll_path(&instance_id), 5).await;
    assert_eq!(body["state"], "succeeded", "{body}");

    let binding_id = unique_id("race-polls-binding");
    let (status, body) = bind_async(
        &broker,
        &instance_id,
        &binding_id,
        &plan,
        Some(json!({"polls": 3})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let path = format!("{}/last_operation", binding_path(&instance_id, &binding_id));
    let answers = all_at_once(&broker, 16, |broker, _| {
        let path = path.clone();
        async move { broker.get(&path).await }
    })
    .await;
    for (status, body) in &answers {
        assert_eq!(status, &200, "a racing binding poll: {body}");
        assert!(
            matches!(body["state"].as_str(), Some("in progress" | "succeeded")),
            "{body}"
        );
    }
    let (body, _) = poll_until_done(&broker, &path, 5).await;
    assert_eq!(body["state"], "succeeded", "{body}");
    let (status, body) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(
        (status, &body["credentials"]),
        (200, &json!({"token": binding_id})),
        "{body}"
    );
}

/// Concurrent polls of one operation share one plugin call (single flight),
/// counted by the plugin's call metric. Each poll of slow_async spins for a
/// while first, so the 16 polls, sent together, all arrive while the first
/// one's call runs: without single flight they make 16 calls.
#[tokio::test]
async fn concurrent_polls_of_one_operation_share_one_plugin_call() {
    let _cpu = wasm_broker_tests::timed().await;
    let broker = broker_with(&[SLOW_ASYNC]).await;
    let plan = SLOW_ASYNC.plan();
    let instance_id = unique_id("single-flight");
    let parameters = json!({"polls": 100, "spin": 100_000_000_u64});
    let (status, body) = provision_async(&broker, &instance_id, &plan, Some(parameters)).await;
    assert_eq!(status, 202, "{body}");
    let calls = |metrics: &str| {
        let labels = [("plugin", "slow_async"), ("operation", "last_operation")];
        metric_sample(metrics, "plugin_call_duration_seconds_count", &labels).unwrap_or(0.0)
    };
    let before = calls(&broker.metrics().await);
    let answers = all_at_once(&broker, 16, |broker, _| {
        let instance_id = instance_id.clone();
        async move { instance_last_operation(&broker, &instance_id).await }
    })
    .await;
    for (status, body) in &answers {
        assert_eq!(
            (*status, body["state"].as_str()),
            (200, Some("in progress")),
            "{body}"
        );
    }
    let made = calls(&broker.metrics().await) - before;
    assert!(
        (1.0..=2.0).contains(&made),
        "16 concurrent polls made {made} plugin calls"
    );
}
