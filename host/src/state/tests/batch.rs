//! Group commit: concurrent transitions share one commit, each answered
//! only once it is durable, and a step that fails (or whose request is
//! dropped) leaves only its own changes out of the batch.

use super::*;

/// The instance ids of `store`, sorted.
async fn stored_ids(store: &StateStore) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM instances ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .expect("instances readable")
}

/// A turn at `store`'s write gate.
async fn gate_turn(store: &StateStore) -> crate::state::batch::StepTurn {
    store.write_gate.step().await.expect("a turn at the gate")
}

/// The step of `turn`, having written instance `id`.
async fn write_in<'t>(
    turn: &'t mut crate::state::batch::StepTurn,
    store: &StateStore,
    id: &str,
) -> crate::state::step::Step<'t> {
    let mut step = turn.begin_step().await.expect("step");
    let record = instance_record(id, ResourceStatus::Ready, None);
    step.write_instance(&store.replica, &record)
        .await
        .expect("written");
    step
}

async fn concurrent_changes_share_commits_and_all_last(scratch: &Scratch) {
    const CHANGES: usize = 64;
    let store = open(scratch).await;
    let mut tasks = JoinSet::new();
    for n in 0..CHANGES {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("i-{n:02}");
            let record = instance_record(&id, ResourceStatus::Ready, None);
            store
                .transition_instance(&id, |existing| match existing {
                    None => Transition::Write(record, true),
                    Some(_) => Transition::Keep(false),
                })
                .await
                .expect("transition")
        });
    }
    let written = tasks.join_all().await;
    assert!(written.iter().all(|created| *created), "{written:?}");
    let (batches, steps) = store.write_gate.committed().await;
    assert_eq!(steps, CHANGES as u64, "every change was committed once");
    assert!(
        batches < steps,
        "{CHANGES} changes arriving together must share commits: {batches} commits"
    );
    store.close().await;

    // Another store on the same database (a restart) finds every one.
    let reopened = open_with_key(scratch, None).await;
    let expected: Vec<String> = (0..CHANGES).map(|n| format!("i-{n:02}")).collect();
    assert_eq!(stored_ids(&reopened).await, expected);
}

/// Two steps in one batch, the second abandoned half way (its savepoint
/// dropped, as a failing or cancelled transition leaves it): the commit
/// keeps the first step and nothing of the second. On a current-thread
/// runtime the steps run in a known order: the second transition waits at
/// the gate while the first holds it, so the first shares its commit.
async fn an_abandoned_step_leaves_the_rest_of_its_batch(scratch: &Scratch) {
    let store = open(scratch).await;
    let mut first = gate_turn(&store).await;
    let step = write_in(&mut first, &store, "i-kept").await;
    step.done().await.expect("step done");

    let second = tokio::spawn({
        let store = store.clone();
        async move {
            let mut second = gate_turn(&store).await;
            let _step = write_in(&mut second, &store, "i-abandoned").await;
            // Dropped unfinished, as a failing or cancelled transition is.
        }
    });
    // The second transition now waits at the gate.
    tokio::task::yield_now().await;
    first.durable().await.expect("the batch commits");
    second.await.expect("second transition");
    assert_eq!(store.write_gate.committed().await, (1, 2), "one commit");
    assert_eq!(stored_ids(&store).await, ["i-kept"]);
    // The store writes on: the batch left no savepoint or lock behind.
    put_instance(
        &store,
        instance_record("i-next", ResourceStatus::Ready, None),
    )
    .await;
    assert_eq!(stored_ids(&store).await, ["i-kept", "i-next"]);
}

/// The step that opens a batch runs without a savepoint: if it fails half
/// way, the batch (holding nothing else) is rolled back whole.
async fn a_failed_opening_step_rolls_back_its_batch(scratch: &Scratch) {
    let store = open(scratch).await;
    let mut turn = gate_turn(&store).await;
    let step = write_in(&mut turn, &store, "i-abandoned").await;
    drop(step);
    drop(turn);
    put_instance(
        &store,
        instance_record("i-next", ResourceStatus::Ready, None),
    )
    .await;
    assert_eq!(stored_ids(&store).await, ["i-next"]);
    assert_eq!(store.write_gate.committed().await, (1, 1));
}

/// A transition whose decision panics (as a cancelled request drops its
/// step) is left out; the others answer and are stored.
async fn a_panicking_decision_is_left_out_of_its_batch(scratch: &Scratch) {
    let store = open(scratch).await;
    let mut tasks = JoinSet::new();
    for n in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("i-{n:02}");
            let record = instance_record(&id, ResourceStatus::Ready, None);
            store
                .transition_instance(&id, move |_| {
                    assert!(n != 7, "decision {n} fails");
                    Transition::Write(record, ())
                })
                .await
        });
    }
    let (mut panicked, mut stored) = (0, 0);
    while let Some(outcome) = tasks.join_next().await {
        match outcome {
            Ok(transition) => {
                transition.expect("every other transition is stored");
                stored += 1;
            }
            Err(error) => {
                assert!(error.is_panic(), "{error}");
                panicked += 1;
            }
        }
    }
    assert_eq!(
        (panicked, stored),
        (1, 15),
        "only the failing decision panics"
    );
    let ids = stored_ids(&store).await;
    assert_eq!(ids.len(), 15, "{ids:?}");
    assert!(!ids.contains(&"i-07".to_owned()), "{ids:?}");
}

/// Writes outside the transitions (kv here) wait at the gate for the
/// open batch's commit: they neither wait for SQLite's busy timeout nor
/// deadlock on the batch's write lock.
async fn a_kv_write_meanwhile_waits_for_the_batch(scratch: &Scratch) {
    let store = open(scratch).await;
    let mut turn = gate_turn(&store).await;
    let step = write_in(&mut turn, &store, "i-batched").await;
    step.done().await.expect("step done");
    let started = std::time::Instant::now();
    let kv = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .kv_set("plugin", "key", b"value", KV_UNLIMITED)
                .await
                .expect("kv write")
        }
    });
    tokio::task::yield_now().await;
    turn.durable().await.expect("committed");
    kv.await.expect("kv task");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the kv write waited {:?}",
        started.elapsed()
    );
    assert_eq!(stored_ids(&store).await, ["i-batched"]);
    assert_eq!(
        store.kv_get("plugin", "key").await.expect("kv read"),
        Some(b"value".to_vec())
    );
}

on_both_backends!(
    concurrent_changes_share_commits_and_all_last,
    a_panicking_decision_is_left_out_of_its_batch,
    a_kv_write_meanwhile_waits_for_the_batch,
    a_failed_opening_step_rolls_back_its_batch,
);

mod current_thread {
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite_an_abandoned_step_leaves_the_rest_of_its_batch() {
        super::run(
            crate::config::StateBackend::Sqlite,
            super::an_abandoned_step_leaves_the_rest_of_its_batch,
        )
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn postgres_an_abandoned_step_leaves_the_rest_of_its_batch() {
        super::run(
            crate::config::StateBackend::Postgres,
            super::an_abandoned_step_leaves_the_rest_of_its_batch,
        )
        .await;
    }
}
