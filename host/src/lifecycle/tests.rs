//! Table-driven tests of the lifecycle rules: every (stored status, phase,
//! request) combination the OSB checklist names, for instances and
//! bindings, in milliseconds.

use serde_json::json;

use super::*;
use crate::model::{
    Accepted, InstanceResult, OperationKind as Kind, OperationState, OperationStatus, Refusal,
};

use OperationPhase::{Calling, Failed as OpFailed, InProgress, Succeeded};
use ResourceStatus::{Creating, Deleted, Failed, Ready};

fn operation(kind: Kind, phase: OperationPhase, attributes: &serde_json::Value) -> OperationRecord {
    OperationRecord {
        phase,
        ..start(kind, attributes)
    }
}

/// The admission as a short word, for tables.
fn word(admission: &Admission) -> String {
    match admission {
        Admission::Start(op) => {
            assert_eq!(op.phase, Calling, "a started operation is Calling");
            "start".to_owned()
        }
        Admission::Existing => "200".to_owned(),
        Admission::Running { .. } => "202".to_owned(),
        Admission::Refuse(refusal) => format!("{refusal:?}")
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// A row: the request's kind, what is stored (status and latest operation),
/// whether the request differs from it, accepts_incomplete, the answer.
type Row = (
    Kind,
    Option<(ResourceStatus, Option<(Kind, OperationPhase)>)>,
    bool,
    bool,
    &'static str,
);

const ROWS: &[Row] = &[
    // Creations of an unknown (or deleted) id start.
    (Kind::Provision, None, false, false, "start"),
    (
        Kind::Provision,
        Some((Deleted, Some((Kind::Deprovision, Succeeded)))),
        true,
        false,
        "start",
    ),
    (Kind::Bind, None, false, true, "start"),
    // The same creation again: 200 once ready, 202 while async, 422 else.
    (
        Kind::Provision,
        Some((Ready, Some((Kind::Provision, Succeeded)))),
        false,
        false,
        "200",
    ),
    (
        Kind::Provision,
        Some((Ready, Some((Kind::Update, OpFailed)))),
        false,
        true,
        "200",
    ),
    (
        Kind::Provision,
        Some((Ready, Some((Kind::Update, InProgress)))),
        false,
        true,
        "ConcurrencyError",
    ),
    (
        Kind::Provision,
        Some((Creating, Some((Kind::Provision, InProgress)))),
        false,
        true,
        "202",
    ),
    (
        Kind::Provision,
        Some((Creating, Some((Kind::Provision, InProgress)))),
        false,
        false,
        "ConcurrencyError",
    ),
    (
        Kind::Provision,
        Some((Creating, Some((Kind::Provision, Calling)))),
        false,
        true,
        "ConcurrencyError",
    ),
    (
        Kind::Bind,
        Some((Ready, Some((Kind::Bind, Succeeded)))),
        false,
        false,
        "200",
    ),
    (
        Kind::Bind,
        Some((Creating, Some((Kind::Bind, InProgress)))),
        false,
        true,
        "202",
    ),
    (
        Kind::Bind,
        Some((Ready, Some((Kind::Unbind, InProgress)))),
        false,
        true,
        "ConcurrencyError",
    ),
    // A different creation of a known id: 409, whatever its state.
    (
        Kind::Provision,
        Some((Ready, Some((Kind::Provision, Succeeded)))),
        true,
        false,
        "Conflict",
    ),
    (
        Kind::Provision,
        Some((Creating, Some((Kind::Provision, InProgress)))),
        true,
        true,
        "Conflict",
    ),
    (Kind::Bind, Some((Ready, None)), true, false, "Conflict"),
    // After a failed creation: 409 until deleted.
    (
        Kind::Provision,
        Some((Failed, Some((Kind::Provision, OpFailed)))),
        false,
        false,
        "Conflict",
    ),
    (
        Kind::Bind,
        Some((Failed, Some((Kind::Bind, OpFailed)))),
        false,
        true,
        "Conflict",
    ),
    // Updates.
    (Kind::Update, None, false, false, "NotFound"),
    (
        Kind::Update,
        Some((Deleted, None)),
        false,
        false,
        "NotFound",
    ),
    (
        Kind::Update,
        Some((Ready, Some((Kind::Provision, Succeeded)))),
        false,
        false,
        "start",
    ),
    (
        Kind::Update,
        Some((Ready, Some((Kind::Provision, Succeeded)))),
        true,
        false,
        "BadRequest",
    ),
    (
        Kind::Update,
        Some((Failed, Some((Kind::Provision, OpFailed)))),
        false,
        false,
        "Unprocessable",
    ),
    (
        Kind::Update,
        Some((Creating, Some((Kind::Provision, InProgress)))),
        false,
        true,
        "ConcurrencyError",
    ),
    (
        Kind::Update,
        Some((Ready, Some((Kind::Update, InProgress)))),
        false,
        true,
        "202",
    ),
    (
        Kind::Update,
        Some((Ready, Some((Kind::Update, InProgress)))),
        false,
        false,
        "ConcurrencyError",
    ),
    (
        Kind::Update,
        Some((Ready, Some((Kind::Update, Calling)))),
        false,
        true,
        "ConcurrencyError",
    ),
    // Deletions.
    (Kind::Deprovision, None, false, false, "Gone"),
    (
        Kind::Deprovision,
        Some((Deleted, Some((Kind::Deprovision, Succeeded)))),
        false,
        false,
        "Gone",
    ),
    (
        Kind::Deprovision,
        Some((Ready, None)),
        false,
        false,
        "start",
    ),
    (
        Kind::Deprovision,
        Some((Ready, None)),
        true,
        false,
        "BadRequest",
    ),
    // Orphan mitigation: a failed creation can be deleted.
    (
        Kind::Deprovision,
        Some((Failed, Some((Kind::Provision, OpFailed)))),
        false,
        false,
        "start",
    ),
    (
        Kind::Deprovision,
        Some((Creating, Some((Kind::Provision, InProgress)))),
        false,
        true,
        "ConcurrencyError",
    ),
    (
        Kind::Deprovision,
        Some((Ready, Some((Kind::Deprovision, InProgress)))),
        false,
        true,
        "202",
    ),
    (
        Kind::Deprovision,
        Some((Ready, Some((Kind::Deprovision, InProgress)))),
        false,
        false,
        "ConcurrencyError",
    ),
    (
        Kind::Deprovision,
        Some((Ready, Some((Kind::Deprovision, Calling)))),
        false,
        true,
        "ConcurrencyError",
    ),
    (
        Kind::Deprovision,
        Some((Ready, Some((Kind::Update, InProgress)))),
        false,
        true,
        "ConcurrencyError",
    ),
    (
        Kind::Unbind,
        Some((Ready, Some((Kind::Bind, Succeeded)))),
        false,
        false,
        "start",
    ),
    (
        Kind::Unbind,
        Some((Failed, Some((Kind::Bind, OpFailed)))),
        false,
        false,
        "start",
    ),
    (
        Kind::Unbind,
        Some((Ready, Some((Kind::Unbind, InProgress)))),
        false,
        true,
        "202",
    ),
    (
        Kind::Unbind,
        Some((Creating, Some((Kind::Bind, InProgress)))),
        false,
        true,
        "ConcurrencyError",
    ),
];

#[test]
fn admission_table() {
    let attributes = json!({"plan_id": "p", "parameters": {"a": 1}});
    for (row, &(kind, stored, differs, accepts_incomplete, expected)) in ROWS.iter().enumerate() {
        let resource = if matches!(kind, Kind::Bind | Kind::Unbind) {
            Resource::Binding
        } else {
            Resource::Instance
        };
        let request = Request {
            resource,
            kind,
            id: "r-1",
            attributes: &attributes,
            accepts_incomplete,
        };
        let stored_operation = stored
            .and_then(|(_, op)| op)
            .map(|(kind, phase)| operation(kind, phase, &attributes));
        let found = stored.map(|(status, _)| Found {
            status,
            operation: stored_operation.as_ref(),
            differs: differs.then_some("it differs"),
        });
        let answer = admit(&request, found);
        assert_eq!(
            word(&answer),
            expected,
            "row {row}: {kind:?} on {stored:?}, differs {differs}, accepts_incomplete {accepts_incomplete}: {answer:?}"
        );
        if let Admission::Running { operation } = &answer {
            assert_eq!(
                Some(operation),
                stored_operation.as_ref().map(|op| &op.id),
                "row {row}: a 202 repeats the running operation"
            );
        }
    }
}

#[test]
fn a_resent_update_must_be_identical() {
    let sent = json!({"plan_id": "large", "parameters": {"a": 1, "b": 2}});
    let reordered = json!({"parameters": {"b": 2, "a": 1}, "plan_id": "large"});
    let other = json!({"plan_id": "small"});
    let running = operation(Kind::Update, InProgress, &sent);
    let found = Found {
        status: Ready,
        operation: Some(&running),
        differs: None,
    };
    for (attributes, expected) in [(&reordered, "202"), (&other, "ConcurrencyError")] {
        let request = Request {
            resource: Resource::Instance,
            kind: Kind::Update,
            id: "i",
            attributes,
            accepts_incomplete: true,
        };
        assert_eq!(
            word(&admit(&request, Some(found))),
            expected,
            "{attributes}"
        );
    }
}

#[test]
fn binding_admission_looks_at_the_instance_first() {
    let attributes = json!({});
    let bind = Request {
        resource: Resource::Binding,
        kind: Kind::Bind,
        id: "b",
        attributes: &attributes,
        accepts_incomplete: false,
    };
    let unbind = Request {
        kind: Kind::Unbind,
        ..bind
    };
    let provisioning = operation(Kind::Provision, InProgress, &attributes);
    let updating = operation(Kind::Update, InProgress, &attributes);
    let instance = |status, operation, differs| Found {
        status,
        operation,
        differs,
    };
    let ready = instance(Ready, None, None);
    let bound = Found {
        status: Ready,
        operation: None,
        differs: None,
    };
    let cases: &[(&Request<'_>, Option<Found<'_>>, Option<Found<'_>>, &str)] = &[
        (&bind, None, None, "NotFound"),
        (&bind, Some(instance(Deleted, None, None)), None, "NotFound"),
        (
            &bind,
            Some(instance(Ready, None, Some("plan"))),
            None,
            "BadRequest",
        ),
        (
            &bind,
            Some(instance(Failed, None, None)),
            None,
            "Unprocessable",
        ),
        (
            &bind,
            Some(instance(Creating, Some(&provisioning), None)),
            None,
            "ConcurrencyError",
        ),
        (
            &bind,
            Some(instance(Ready, Some(&updating), None)),
            None,
            "ConcurrencyError",
        ),
        (&bind, Some(ready), None, "start"),
        // An existing binding answers for itself, even while its instance updates.
        (
            &bind,
            Some(instance(Ready, Some(&updating), None)),
            Some(bound),
            "200",
        ),
        (&unbind, Some(ready), None, "Gone"),
        (&unbind, None, Some(bound), "Gone"),
        (&unbind, Some(ready), Some(bound), "start"),
        (
            &unbind,
            Some(instance(Failed, None, None)),
            Some(bound),
            "start",
        ),
    ];
    for (row, (request, instance, binding, expected)) in cases.iter().enumerate() {
        let answer = admit_binding(request, "i", *instance, *binding);
        assert_eq!(word(&answer), *expected, "row {row}: {answer:?}");
    }
}

#[test]
fn fetch_rules() {
    let attributes = json!({});
    let updating = operation(Kind::Update, InProgress, &attributes);
    let provisioned = operation(Kind::Provision, Succeeded, &attributes);
    assert!(fetchable_instance("i", Ready, Some(&provisioned)).is_ok());
    assert!(matches!(
        fetchable_instance("i", Creating, None),
        Err(Refusal::NotFound(_))
    ));
    assert!(matches!(
        fetchable_instance("i", Failed, None),
        Err(Refusal::NotFound(_))
    ));
    assert!(matches!(
        fetchable_instance("i", Ready, Some(&updating)),
        Err(Refusal::ConcurrencyError(_))
    ));
}

/// Settles `answer` for `kind` and returns (new status, phase, verdict word).
fn settled(
    kind: Kind,
    accepts_incomplete: bool,
    answer: Answer<InstanceResult, String>,
) -> (Option<ResourceStatus>, OperationPhase, String) {
    let settlement = settle(kind, accepts_incomplete, answer);
    let mut status = Creating;
    let mut operation = operation(kind, Calling, &json!({}));
    settlement.apply(&mut status, &mut operation);
    let verdict = match settlement.verdict {
        Verdict::Done(_) => "done".to_owned(),
        Verdict::Accepted { .. } => "202".to_owned(),
        Verdict::Refused(refusal) => format!("{refusal:?}")
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned(),
        Verdict::Failed(_) => "fault".to_owned(),
        Verdict::BrokenContract(_) => "contract".to_owned(),
    };
    (settlement.status, operation.phase, verdict)
}

/// What a settlement leaves: the new status, the operation's phase, the verdict.
type Settled = (Option<ResourceStatus>, OperationPhase, &'static str);

#[test]
fn settlement_table() {
    let done = || Answer::Done(InstanceResult::default());
    let accepted = || Answer::Accepted(Accepted::default());
    let refused = |refusal: Refusal| Answer::<InstanceResult, String>::Refused(refusal);
    let fault = || Answer::Fault("trap".to_owned());
    let bad = || Refusal::BadRequest("no".to_owned());
    let gone = || Refusal::Gone("gone".to_owned());
    let internal = || Refusal::Internal("oops".to_owned());
    let rows: Vec<(Kind, bool, Answer<InstanceResult, String>, Settled)> = vec![
        (
            Kind::Provision,
            false,
            done(),
            (Some(Ready), Succeeded, "done"),
        ),
        (Kind::Bind, false, done(), (Some(Ready), Succeeded, "done")),
        (Kind::Update, false, done(), (None, Succeeded, "done")),
        (
            Kind::Deprovision,
            false,
            done(),
            (Some(Deleted), Succeeded, "done"),
        ),
        (
            Kind::Unbind,
            false,
            done(),
            (Some(Deleted), Succeeded, "done"),
        ),
        (Kind::Provision, true, accepted(), (None, InProgress, "202")),
        (
            Kind::Deprovision,
            true,
            accepted(),
            (None, InProgress, "202"),
        ),
        (
            Kind::Provision,
            false,
            accepted(),
            (Some(Failed), OpFailed, "contract"),
        ),
        (
            Kind::Update,
            false,
            accepted(),
            (None, OpFailed, "contract"),
        ),
        (
            Kind::Unbind,
            false,
            accepted(),
            (None, OpFailed, "contract"),
        ),
        // A 4xx creation leaves nothing; a 500 or a fault keeps it for
        // orphan mitigation; a failed update or delete changes nothing.
        (
            Kind::Provision,
            false,
            refused(bad()),
            (Some(Deleted), OpFailed, "BadRequest"),
        ),
        (
            Kind::Bind,
            false,
            refused(bad()),
            (Some(Deleted), OpFailed, "BadRequest"),
        ),
        (
            Kind::Provision,
            false,
            refused(internal()),
            (Some(Failed), OpFailed, "Internal"),
        ),
        (
            Kind::Bind,
            false,
            fault(),
            (Some(Failed), OpFailed, "fault"),
        ),
        (
            Kind::Update,
            false,
            refused(bad()),
            (None, OpFailed, "BadRequest"),
        ),
        (Kind::Update, false, fault(), (None, OpFailed, "fault")),
        (Kind::Deprovision, false, fault(), (None, OpFailed, "fault")),
        // `gone` on a deletion is success; on anything else a refusal.
        (
            Kind::Deprovision,
            false,
            refused(gone()),
            (Some(Deleted), Succeeded, "done"),
        ),
        (
            Kind::Unbind,
            true,
            refused(gone()),
            (Some(Deleted), Succeeded, "done"),
        ),
        (
            Kind::Update,
            false,
            refused(gone()),
            (None, OpFailed, "Gone"),
        ),
    ];
    for (row, (kind, accepts_incomplete, answer, expected)) in rows.into_iter().enumerate() {
        let (status, phase, verdict) = settled(kind, accepts_incomplete, answer);
        assert_eq!(
            (status, phase, verdict.as_str()),
            expected,
            "row {row}: {kind:?}, accepts_incomplete {accepts_incomplete}"
        );
    }
}

#[test]
fn a_dashboard_url_is_answered_for_provisions_and_updates_only() {
    for (kind, shown) in [
        (Kind::Provision, true),
        (Kind::Update, true),
        (Kind::Deprovision, false),
        (Kind::Bind, false),
    ] {
        let answer: Answer<InstanceResult, String> = Answer::Accepted(Accepted {
            operation: Some("op".to_owned()),
            dashboard_url: Some("https://d".to_owned()),
        });
        let settlement = settle(kind, true, answer);
        assert_eq!(settlement.step, Step::Accept(Some("op".to_owned())));
        let Verdict::Accepted { dashboard_url } = settlement.verdict else {
            panic!("{kind:?}: expected 202");
        };
        assert_eq!(dashboard_url.is_some(), shown, "{kind:?}");
    }
}

#[test]
fn poll_rules() {
    let attributes = json!({});
    let provisioning = operation(Kind::Provision, InProgress, &attributes);
    let refused = operation(Kind::Provision, OpFailed, &attributes);
    let deleted = operation(Kind::Deprovision, Succeeded, &attributes);
    let calling = operation(Kind::Bind, Calling, &attributes);
    assert_eq!(poll_step(Ready, None), PollStep::NotFound);
    assert_eq!(
        poll_step(Creating, Some(&provisioning)),
        PollStep::AskPlugin
    );
    assert_eq!(poll_step(Deleted, Some(&refused)), PollStep::NotFound);
    let PollStep::Stored(status) = poll_step(Deleted, Some(&deleted)) else {
        panic!("a finished deletion is reported from the record");
    };
    assert_eq!(status.state, OperationState::Succeeded);
    let PollStep::Stored(status) = poll_step(Creating, Some(&calling)) else {
        panic!("a synchronous call under way is reported in progress");
    };
    assert_eq!(status.state, OperationState::InProgress);

    let reported = |state| OperationStatus {
        state,
        description: None,
        instance_usable: None,
        update_repeatable: None,
    };
    let gone = |_: &()| true;
    let cases = [
        (
            Kind::Provision,
            Ok(reported(OperationState::InProgress)),
            None,
        ),
        (
            Kind::Provision,
            Ok(reported(OperationState::Succeeded)),
            Some(Some(Ready)),
        ),
        (
            Kind::Bind,
            Ok(reported(OperationState::Failed)),
            Some(Some(Failed)),
        ),
        (
            Kind::Update,
            Ok(reported(OperationState::Succeeded)),
            Some(None),
        ),
        (
            Kind::Update,
            Ok(reported(OperationState::Failed)),
            Some(None),
        ),
        (
            Kind::Deprovision,
            Ok(reported(OperationState::Succeeded)),
            Some(Some(Deleted)),
        ),
        (
            Kind::Deprovision,
            Ok(reported(OperationState::Failed)),
            Some(None),
        ),
        (Kind::Unbind, Err(()), Some(Some(Deleted))),
    ];
    for (kind, polled, expected) in cases {
        let finished = match settle_poll(kind, polled, gone) {
            Ok(Polled::Running(_)) => None,
            Ok(Polled::Finished { status, .. }) => Some(status),
            Err(()) => panic!("{kind:?}: gone on a deletion is done"),
        };
        assert_eq!(finished, expected, "{kind:?}");
    }
    assert_eq!(
        settle_poll(Kind::Provision, Err(()), gone),
        Err(()),
        "gone on a creation"
    );
}

#[test]
fn interrupted_creations_fail_and_other_operations_leave_the_resource() {
    for (kind, before, after) in [
        (Kind::Provision, Creating, Failed),
        (Kind::Bind, Creating, Failed),
        (Kind::Update, Ready, Ready),
        (Kind::Deprovision, Ready, Ready),
    ] {
        let mut status = before;
        let mut operation = operation(kind, Calling, &json!({}));
        fail_interrupted(&mut operation, &mut status, "the broker stopped");
        assert_eq!((status, operation.phase), (after, OpFailed), "{kind:?}");
        assert_eq!(operation.description.as_deref(), Some("the broker stopped"));
    }
}

#[test]
fn fingerprints_ignore_key_order() {
    let stored = fingerprint(&json!({"a": 1, "b": {"x": 1, "y": 2}}));
    assert!(same_fingerprint(
        &stored,
        &json!({"b": {"y": 2, "x": 1}, "a": 1})
    ));
    assert!(!same_fingerprint(
        &stored,
        &json!({"a": 2, "b": {"x": 1, "y": 2}})
    ));
}

#[test]
fn operation_ids_are_unique() {
    let attributes = json!({});
    assert_ne!(
        start(Kind::Provision, &attributes).id,
        start(Kind::Provision, &attributes).id
    );
}
