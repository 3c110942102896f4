//! SQLite's batch writer on its own: a batch SQLite rolled back behind the
//! steps' backs (as it does itself after a full disk or an I/O error) is
//! never committed, not even in part, and the writer goes on after it.

use super::*;
use crate::state::writer::{CommitOn, Writer, WriterSource};

/// `writer` in a new batch.
async fn begun(writer: Writer) -> Writer {
    let (writer, begun) = writer.begin().await;
    begun.expect("BEGIN IMMEDIATE");
    writer.expect("the writer comes back")
}

fn write_step(writer: &mut Writer, id: &str) -> Result<(), StateError> {
    let mut step = writer.step()?;
    step.write_instance("replica", &instance_record(id, ResourceStatus::Ready, None))?;
    step.done()
}

/// On a multi-thread runtime, as in the broker: the last commit waits for
/// its fsync on this thread (`block_in_place`), the first on the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rolled_back_under_it_is_refused_whole_and_the_writer_goes_on() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    let source = WriterSource::new(&scratch.config(None).path);
    let mut writer = begun(source.open().expect("a writer")).await;
    write_step(&mut writer, "i-lost").expect("first step");
    writer.execute_raw("ROLLBACK").expect("rolled back");

    // A later step must not write outside the batch (a savepoint with no
    // transaction open would commit on its own at its release).
    let refused = write_step(&mut writer, "i-outside");
    assert!(
        matches!(refused, Err(StateError::BatchPoisoned)),
        "{refused:?}"
    );
    let (writer, committed) = writer.commit(CommitOn::BlockingPool).await;
    assert!(
        matches!(committed, Err(StateError::BatchPoisoned)),
        "{committed:?}"
    );

    let mut writer = begun(writer.expect("the writer is kept")).await;
    write_step(&mut writer, "i-next").expect("a step of the next batch");
    let (_, committed) = writer.commit(CommitOn::ThisThread).await;
    committed.expect("the next batch commits");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM instances ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .expect("instances readable");
    assert_eq!(ids, ["i-next"]);
}

/// Another process holding SQLite's write lock (an operator's shell, a
/// backup) delays a transition; it does not fail it.
#[tokio::test]
async fn a_transition_waits_for_a_lock_held_outside_the_broker() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    let outsider = rusqlite::Connection::open(&scratch.config(None).path).expect("outsider");
    outsider
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the outsider takes the lock");
    let held = Duration::from_millis(300);
    let release = std::thread::spawn(move || {
        std::thread::sleep(held);
        outsider.execute_batch("COMMIT").expect("released");
    });
    let started = std::time::Instant::now();
    put_instance(
        &store,
        instance_record("i-after", ResourceStatus::Ready, None),
    )
    .await;
    assert!(started.elapsed() >= held / 2, "{:?}", started.elapsed());
    release.join().expect("outsider thread");
    assert!(store.instance("i-after").await.expect("readable").is_some());
}
