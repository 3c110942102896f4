//! The OSB rules of the broker core, against in-memory fakes (`fakes.rs`):
//! idempotency and conflicts, 404/410, catalog checks, concurrency, the
//! asynchronous answers and orphan mitigation. Milliseconds, no database and
//! no WebAssembly; the same rules are exercised end to end in `tests/`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::fakes::{
    LARGE, MAINTENANCE_VERSION, MemoryRecords, SERVICE, SMALL, Script, ScriptedPlugins,
    credentials_of,
};
use super::*;
use crate::lifecycle::{OperationPhase, ResourceStatus};
use crate::model::{InstanceResult, OperationState, OperationStatus, RequestInfo};
use crate::state::Transition;

pub(super) type TestBroker = Broker<ScriptedPlugins, MemoryRecords>;

pub(super) fn broker() -> (TestBroker, MemoryRecords) {
    let records = MemoryRecords::default();
    (
        Broker::new(Arc::new(ScriptedPlugins::new()), records.clone()),
        records,
    )
}

pub(super) fn info(accepts_incomplete: bool) -> RequestInfo {
    RequestInfo {
        originating_identity: None,
        request_identity: None,
        api_version: "2.17".to_owned(),
        accepts_incomplete,
    }
}

pub(super) fn provision(id: &str, plan: &str, parameters: Option<Value>) -> ProvisionRequest {
    ProvisionRequest {
        instance_id: id.to_owned(),
        service_id: SERVICE.to_owned(),
        plan_id: plan.to_owned(),
        organization_guid: Some("org".to_owned()),
        space_guid: Some("space".to_owned()),
        context: None,
        parameters,
        maintenance_version: None,
        info: info(false),
    }
}

pub(super) fn bind(instance: &str, binding: &str, plan: &str) -> BindRequest {
    BindRequest {
        instance_id: instance.to_owned(),
        binding_id: binding.to_owned(),
        service_id: SERVICE.to_owned(),
        plan_id: plan.to_owned(),
        app_guid: Some("app".to_owned()),
        bind_resource: Some(json!({"app_guid": "app"})),
        context: None,
        parameters: None,
        predecessor_binding_id: None,
        info: info(false),
    }
}

fn deprovision(id: &str, accepts_incomplete: bool) -> DeleteRequest {
    DeleteRequest {
        instance_id: id.to_owned(),
        service_id: SERVICE.to_owned(),
        plan_id: SMALL.to_owned(),
        info: info(accepts_incomplete),
    }
}

fn unbind(instance: &str, binding: &str) -> UnbindRequest {
    UnbindRequest {
        instance_id: instance.to_owned(),
        binding_id: binding.to_owned(),
        service_id: SERVICE.to_owned(),
        plan_id: SMALL.to_owned(),
        info: info(false),
    }
}

fn update(id: &str, plan: Option<&str>, parameters: Option<Value>) -> UpdateRequest {
    UpdateRequest {
        instance_id: id.to_owned(),
        service_id: SERVICE.to_owned(),
        plan_id: plan.map(str::to_owned),
        parameters,
        context: None,
        maintenance_version: None,
        info: info(false),
    }
}

pub(super) fn poll(instance: &str, binding: Option<&str>) -> PollRequest {
    PollRequest {
        instance_id: instance.to_owned(),
        binding_id: binding.map(str::to_owned),
    }
}

/// The OSB error code the HTTP layer would answer.
fn code<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> String {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(BrokerError::Refused(refusal)) => format!("{refusal:?}")
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned(),
        Err(other) => format!("500 {other}"),
    }
}

pub(super) fn succeeded() -> OperationStatus {
    OperationStatus {
        state: OperationState::Succeeded,
        description: None,
        instance_usable: None,
        update_repeatable: None,
    }
}

#[tokio::test]
async fn repeated_provisions_are_idempotent_or_conflict() {
    let (broker, _) = broker();
    let parameters = Some(json!({"charset": "latin1"}));
    let created = broker
        .provision(provision("i", SMALL, parameters.clone()))
        .await;
    assert!(matches!(created, Ok(Created::New(_))), "{created:?}");
    let again = broker
        .provision(provision("i", SMALL, parameters.clone()))
        .await;
    assert!(
        matches!(again, Ok(Created::Existing(_))),
        "identical re-PUT: {again:?}"
    );
    let mut incomplete = provision("i", SMALL, parameters.clone());
    incomplete.info = info(true);
    let again = broker.provision(incomplete).await;
    assert!(
        matches!(again, Ok(Created::Existing(_))),
        "with accepts_incomplete: {again:?}"
    );
    // Key order does not make a request different (the large plan has no
    // parameter schema).
    let reordered: Value = serde_json::from_str(r#"{"b": 2, "a": 1}"#).expect("json");
    broker
        .provision(provision("o", LARGE, Some(json!({"a": 1, "b": 2}))))
        .await
        .expect("created");
    let again = broker
        .provision(provision("o", LARGE, Some(reordered)))
        .await;
    assert!(
        matches!(again, Ok(Created::Existing(_))),
        "other key order: {again:?}"
    );

    assert_eq!(
        code(
            broker
                .provision(provision("i", LARGE, parameters.clone()))
                .await
        ),
        "Conflict"
    );
    assert_eq!(
        code(
            broker
                .provision(provision("i", SMALL, Some(json!({"charset": "utf8mb4"}))))
                .await
        ),
        "Conflict"
    );
    assert_eq!(
        code(broker.provision(provision("i", SMALL, None)).await),
        "Conflict"
    );
    let mut other_space = provision("i", SMALL, parameters.clone());
    other_space.space_guid = Some("another-space".to_owned());
    assert_eq!(code(broker.provision(other_space).await), "Conflict");

    let fetched = broker.fetch_instance("i").await.expect("fetched");
    assert_eq!(fetched.plan_id, SMALL, "a 409 must not change the plan");
    assert_eq!(fetched.parameters, parameters);
    let status = broker
        .instance_last_operation(poll("i", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);
    assert_eq!(
        broker.plugins().count("provision"),
        2,
        "repeats never reach the plugin (i and o)"
    );
}

#[tokio::test]
async fn repeated_binds_are_idempotent_or_conflict_and_belong_to_their_instance() {
    let (broker, _) = broker();
    broker
        .provision(provision("i", SMALL, None))
        .await
        .expect("provisioned");
    let bound = broker.bind(bind("i", "b", SMALL)).await;
    assert_eq!(bound.ok(), Some(Created::New(credentials_of("b"))));
    let again = broker.bind(bind("i", "b", SMALL)).await;
    assert_eq!(
        again.ok(),
        Some(Created::Existing(credentials_of("b"))),
        "same credentials"
    );
    let mut different = bind("i", "b", SMALL);
    different.parameters = Some(json!({"expires_in_days": 30}));
    assert_eq!(code(broker.bind(different).await), "Conflict");
    let mut other_app = bind("i", "b", SMALL);
    other_app.bind_resource = Some(json!({"app_guid": "another-app"}));
    assert_eq!(code(broker.bind(other_app).await), "Conflict");

    assert_eq!(
        code(broker.fetch_binding("elsewhere", "b").await),
        "NotFound"
    );
    assert_eq!(code(broker.unbind(unbind("elsewhere", "b")).await), "Gone");
    assert!(broker.fetch_binding("i", "b").await.is_ok(), "still there");
    assert_eq!(
        code(broker.bind(bind("i", "b2", LARGE)).await),
        "BadRequest",
        "another plan"
    );
    assert_eq!(
        code(broker.bind(bind("nowhere", "b3", SMALL)).await),
        "NotFound"
    );
    let status = broker
        .binding_last_operation(poll("i", Some("b")))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);

    assert_eq!(
        broker.unbind(unbind("i", "b")).await.ok(),
        Some(Changed::Done(()))
    );
    assert_eq!(
        code(broker.unbind(unbind("i", "b")).await),
        "Gone",
        "second unbind"
    );
    assert_eq!(
        broker.deprovision(deprovision("i", false)).await.ok(),
        Some(Changed::Done(()))
    );
    assert_eq!(
        code(broker.deprovision(deprovision("i", false)).await),
        "Gone"
    );
    assert_eq!(broker.plugins().count("bind"), 1);
}

#[tokio::test]
async fn unknown_resources_are_not_found_or_gone() {
    let (broker, _) = broker();
    assert_eq!(code(broker.fetch_instance("x").await), "NotFound");
    assert_eq!(
        code(broker.instance_last_operation(poll("x", None)).await),
        "NotFound"
    );
    assert_eq!(code(broker.fetch_binding("x", "y").await), "NotFound");
    assert_eq!(
        code(broker.binding_last_operation(poll("x", Some("y"))).await),
        "NotFound"
    );
    assert_eq!(
        code(broker.update(update("x", None, None)).await),
        "NotFound"
    );
    assert_eq!(
        code(broker.deprovision(deprovision("x", false)).await),
        "Gone"
    );
    assert_eq!(code(broker.unbind(unbind("x", "y")).await), "Gone");
    broker
        .provision(provision("i", SMALL, None))
        .await
        .expect("provisioned");
    assert_eq!(
        code(broker.unbind(unbind("i", "never-bound")).await),
        "Gone"
    );
    let mut wrong_service = deprovision("i", false);
    wrong_service.service_id = "another-service".to_owned();
    assert_eq!(code(broker.deprovision(wrong_service).await), "BadRequest");
    assert!(
        broker.fetch_instance("i").await.is_ok(),
        "a 400 deprovision leaves the instance"
    );
    assert!(
        broker
            .plugins()
            .calls()
            .iter()
            .all(|call| !call.starts_with("deprovision"))
    );
}

#[tokio::test]
async fn catalog_rules_refuse_before_anything_is_written() {
    let (broker, records) = broker();
    let mut conflicting = provision("m", SMALL, None);
    conflicting.maintenance_version = Some("99.0.0-not-this-one".to_owned());
    assert_eq!(
        code(broker.provision(conflicting).await),
        "MaintenanceInfoConflict"
    );
    assert!(
        records.instance_now("m").is_none(),
        "a 422 provision left a record"
    );
    let mut matching = provision("m", SMALL, None);
    matching.maintenance_version = Some(MAINTENANCE_VERSION.to_owned());
    broker
        .provision(matching)
        .await
        .expect("matching maintenance_info");
    let fetched = broker.fetch_instance("m").await.expect("fetched");
    assert_eq!(
        fetched.maintenance_info.map(|info| info.version).as_deref(),
        Some(MAINTENANCE_VERSION)
    );

    let refused = broker
        .provision(provision("p", SMALL, Some(json!({"charset": "klingon"}))))
        .await;
    match refused {
        Err(BrokerError::Refused(Refusal::BadRequest(text))) => {
            assert!(
                text.contains("parameters/charset"),
                "names the field: {text}"
            )
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(
        code(broker.provision(provision("p", "no-such-plan", None)).await),
        "BadRequest"
    );
    let mut unknown_service = provision("p", SMALL, None);
    unknown_service.service_id = "no-such-service".to_owned();
    assert_eq!(code(broker.provision(unknown_service).await), "BadRequest");
    assert!(records.instance_now("p").is_none());
    assert_eq!(broker.plugins().count("provision"), 1);
}

#[tokio::test]
async fn a_refused_creation_leaves_nothing_and_a_failed_one_awaits_its_delete() {
    let (broker, records) = broker();
    broker.plugins().script(
        "provision",
        [
            Script::Refuse(Refusal::BadRequest("no".to_owned())),
            Script::Fault,
        ],
    );
    assert_eq!(
        code(broker.provision(provision("r", SMALL, None)).await),
        "BadRequest"
    );
    assert_eq!(
        records.instance_now("r").map(|r| r.status),
        Some(ResourceStatus::Deleted)
    );
    assert_eq!(code(broker.fetch_instance("r").await), "NotFound");
    assert_eq!(
        code(broker.instance_last_operation(poll("r", None)).await),
        "NotFound"
    );

    // A fault keeps the record Failed: provisioning again is a conflict until
    // the platform's orphan-mitigation delete reached the plugin.
    let failed = broker.provision(provision("f", SMALL, None)).await;
    assert!(matches!(failed, Err(BrokerError::Plugin(_))), "{failed:?}");
    assert_eq!(
        records.instance_now("f").map(|r| r.status),
        Some(ResourceStatus::Failed)
    );
    assert_eq!(
        code(broker.provision(provision("f", SMALL, None)).await),
        "Conflict"
    );
    assert_eq!(
        code(broker.bind(bind("f", "b", SMALL)).await),
        "Unprocessable"
    );
    let status = broker
        .instance_last_operation(poll("f", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Failed);
    broker
        .deprovision(deprovision("f", false))
        .await
        .expect("orphan mitigation");
    assert_eq!(
        broker.plugins().count("deprovision"),
        1,
        "the delete reached the plugin"
    );
    broker
        .provision(provision("f", SMALL, None))
        .await
        .expect("the id can be used again");
}

#[tokio::test]
async fn an_asynchronous_answer_needs_accepts_incomplete() {
    let (broker, records) = broker();
    broker.plugins().script(
        "provision",
        [Script::Accepted("op-1"), Script::Accepted("op-2")],
    );
    let refused = broker.provision(provision("a", SMALL, None)).await;
    assert!(
        matches!(&refused, Err(BrokerError::PluginContract(text)) if text.contains("accepts_incomplete")),
        "{refused:?}"
    );
    assert_eq!(
        records.instance_now("a").map(|r| r.status),
        Some(ResourceStatus::Failed)
    );

    let mut request = provision("b", SMALL, None);
    request.info = info(true);
    let accepted = broker.provision(request.clone()).await;
    let Ok(Created::Accepted(reply)) = accepted else {
        panic!("expected 202, got {accepted:?}")
    };
    assert_eq!(
        reply.dashboard_url.as_deref(),
        Some("https://dashboard.example/async")
    );
    let again = broker.provision(request.clone()).await;
    assert_eq!(
        again.ok(),
        Some(Created::Accepted(reply.clone())),
        "same operation"
    );
    let mut without = request.clone();
    without.info = info(false);
    assert_eq!(code(broker.provision(without).await), "ConcurrencyError");
    assert_eq!(
        code(broker.bind(bind("b", "x", SMALL)).await),
        "ConcurrencyError"
    );
    assert_eq!(
        code(broker.deprovision(deprovision("b", true)).await),
        "ConcurrencyError"
    );

    let running = OperationStatus {
        state: OperationState::InProgress,
        ..succeeded()
    };
    broker
        .plugins()
        .script_polls([Ok(running), Ok(succeeded())]);
    let status = broker
        .instance_last_operation(poll("b", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::InProgress);
    assert_eq!(
        records.instance_now("b").map(|r| r.status),
        Some(ResourceStatus::Creating)
    );
    let status = broker
        .instance_last_operation(poll("b", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);
    assert_eq!(
        records.instance_now("b").map(|r| r.status),
        Some(ResourceStatus::Ready)
    );
    // Finished operations are answered from the record.
    let status = broker
        .instance_last_operation(poll("b", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);
    assert_eq!(broker.plugins().count("last_operation"), 2);
}

#[tokio::test]
async fn asynchronous_deletions_repeat_their_operation_and_gone_means_done() {
    let (broker, records) = broker();
    broker
        .provision(provision("d", SMALL, None))
        .await
        .expect("provisioned");
    broker
        .plugins()
        .script("deprovision", [Script::Accepted("del-1")]);
    let accepted = broker.deprovision(deprovision("d", true)).await;
    let Ok(Changed::Accepted(reply)) = accepted else {
        panic!("expected 202, got {accepted:?}")
    };
    assert_eq!(
        reply.dashboard_url, None,
        "a deprovision's 202 has no dashboard"
    );
    let again = broker.deprovision(deprovision("d", true)).await;
    assert_eq!(
        again.ok(),
        Some(Changed::Accepted(reply)),
        "a re-sent delete"
    );
    assert_eq!(
        code(broker.deprovision(deprovision("d", false)).await),
        "ConcurrencyError"
    );
    assert_eq!(
        code(broker.update(update("d", Some(LARGE), None)).await),
        "ConcurrencyError"
    );
    broker
        .plugins()
        .script_polls([Err(CallError::Refused(Refusal::Gone("gone".to_owned())))]);
    let status = broker
        .instance_last_operation(poll("d", None))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);
    assert_eq!(
        records.instance_now("d").map(|r| r.status),
        Some(ResourceStatus::Deleted)
    );
    assert_eq!(
        code(broker.deprovision(deprovision("d", false)).await),
        "Gone"
    );
}

#[tokio::test]
async fn updates_change_what_they_name_and_nothing_else() {
    let (broker, records) = broker();
    broker
        .provision(provision("u", SMALL, Some(json!({"charset": "latin1"}))))
        .await
        .expect("provisioned");
    let unchanged = broker.update(update("u", Some(SMALL), None)).await;
    assert_eq!(
        unchanged.ok(),
        Some(Changed::Done(InstanceResult::default()))
    );
    assert_eq!(
        broker.plugins().count("update"),
        0,
        "nothing to change, no call"
    );
    broker
        .update(update("u", Some(LARGE), None))
        .await
        .expect("plan change");
    let record = records.instance_now("u").expect("record");
    assert_eq!(record.instance.plan_id, LARGE);
    assert_eq!(
        record.instance.parameters,
        Some(json!({"charset": "latin1"}))
    );

    broker.plugins().script("update", [Script::Fault]);
    let failed = broker.update(update("u", Some(SMALL), None)).await;
    assert!(matches!(failed, Err(BrokerError::Plugin(_))), "{failed:?}");
    let record = records.instance_now("u").expect("record");
    assert_eq!(
        record.status,
        ResourceStatus::Ready,
        "a failed update leaves the instance"
    );
    assert_eq!(record.instance.plan_id, LARGE);
    assert_eq!(
        record.operation.map(|op| op.phase),
        Some(OperationPhase::Failed)
    );
}

#[tokio::test]
async fn deprovision_revokes_leftover_bindings_first() {
    let (broker, records) = broker();
    broker
        .provision(provision("l", SMALL, None))
        .await
        .expect("provisioned");
    broker.bind(bind("l", "left", SMALL)).await.expect("bound");
    broker
        .deprovision(deprovision("l", false))
        .await
        .expect("deprovisioned");
    let calls = broker.plugins().calls();
    let unbind_at = calls.iter().position(|c| c == "unbind left");
    let deprovision_at = calls.iter().position(|c| c == "deprovision l");
    assert!(
        unbind_at < deprovision_at && unbind_at.is_some(),
        "{calls:?}"
    );
    assert_eq!(
        records.binding_now("left").map(|r| r.status),
        Some(ResourceStatus::Deleted)
    );
    assert_eq!(records.binding_now("left").and_then(|r| r.result), None);
}

#[tokio::test]
async fn an_asynchronous_bind_fetches_its_credentials_when_done() {
    let (broker, records) = broker();
    broker
        .provision(provision("i", SMALL, None))
        .await
        .expect("provisioned");
    broker.plugins().script(
        "bind",
        [Script::Accepted("b-op"), Script::Accepted("b-op2")],
    );
    let mut request = bind("i", "ab", SMALL);
    request.info = info(true);
    assert!(matches!(
        broker.bind(request).await,
        Ok(Created::Accepted(_))
    ));
    broker.plugins().script_polls([Ok(succeeded())]);
    let status = broker
        .binding_last_operation(poll("i", Some("ab")))
        .await
        .expect("polled");
    assert_eq!(status.state, OperationState::Succeeded);
    let fetched = broker.fetch_binding("i", "ab").await.expect("fetched");
    assert_eq!(fetched.result, credentials_of("ab"));

    let mut request = bind("i", "cd", SMALL);
    request.info = info(true);
    assert!(matches!(
        broker.bind(request).await,
        Ok(Created::Accepted(_))
    ));
    broker.plugins().script("get_binding", [Script::Fault]);
    broker.plugins().script_polls([Ok(succeeded())]);
    let status = broker
        .binding_last_operation(poll("i", Some("cd")))
        .await
        .expect("polled");
    assert_eq!(
        status.state,
        OperationState::Failed,
        "credentials unreadable: {status:?}"
    );
    assert_eq!(
        records.binding_now("cd").map(|r| r.status),
        Some(ResourceStatus::Failed)
    );
}

/// A deprovision that finds a binding still being made refuses with 422 and
/// revokes none of the bindings it found (a bind answered 201 just before
/// keeps its credentials); it is refused before its operation is recorded
/// or its plugin called.
#[tokio::test]
async fn a_deprovision_refused_for_a_busy_binding_revokes_nothing() {
    let (broker, records) = broker();
    broker
        .provision(provision("busy", SMALL, None))
        .await
        .expect("provisioned");
    broker
        .bind(bind("busy", "done", SMALL))
        .await
        .expect("bound");
    // A bind admitted and still calling its plugin.
    let mut record = records.binding_now("done").expect("a bound binding");
    broker
        .records()
        .transition_binding("making", "busy", |_, _| {
            record.binding.id = "making".to_owned();
            record.status = ResourceStatus::Creating;
            record.result = None;
            if let Some(operation) = record.operation.as_mut() {
                operation.phase = OperationPhase::Calling;
            }
            Transition::Write(record, ())
        })
        .await
        .expect("written");
    let before = records.instance_now("busy");
    assert_eq!(
        code(broker.deprovision(deprovision("busy", false)).await),
        "ConcurrencyError"
    );
    assert_eq!(broker.plugins().count("unbind"), 0, "nothing revoked");
    assert_eq!(broker.plugins().count("deprovision"), 0, "nothing called");
    assert_eq!(records.instance_now("busy"), before, "nothing recorded");
    assert!(broker.fetch_binding("busy", "done").await.is_ok());
    assert_eq!(
        records.instance_now("busy").map(|r| r.status),
        Some(ResourceStatus::Ready)
    );
}
