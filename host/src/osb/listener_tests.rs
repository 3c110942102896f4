//! The listener's connection cap and deadlines, and its watchdog on real
//! connections with short timeouts.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn limits(max_connections: usize) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_connections,
    }
}

/// A tracker whose clock has run ten seconds, so connections can be aged.
fn tracker(max_connections: usize) -> Arc<Tracker> {
    let mut tracker = Tracker::new(limits(max_connections));
    tracker.epoch = Instant::now() - Duration::from_secs(10);
    Arc::new(tracker)
}

fn age(tracker: &Tracker, state: &ConnState) {
    state
        .idle_since
        .store(tracker.now() - 1_000, Ordering::Release);
}

#[test]
fn at_the_cap_the_longest_idle_connection_makes_room() {
    let tracker = tracker(2);
    let first = tracker.admit().expect("free");
    let second = tracker.admit().expect("free");
    let _busy = Busy::start(second.clone(), tracker.clone());
    let wait = tracker.admit().expect_err("the idle one just arrived");
    assert!(wait <= EVICTABLE_AFTER, "{wait:?}");
    age(&tracker, &first);
    let third = tracker.admit().expect("takes the idle one's place");
    assert!(!third.probes_only);
    let open = tracker.open.lock().expect("lock");
    assert!(!open.contains_key(&first.id), "the idle one is evicted");
    assert!(open.contains_key(&second.id), "the busy one stays");
    assert!(open.contains_key(&third.id));
}

#[test]
fn when_every_connection_is_busy_only_probes_get_a_few_more() {
    let tracker = tracker(1);
    let mut held = vec![Busy::start(tracker.admit().expect("free"), tracker.clone())];
    for _ in 0..PROBE_RESERVE {
        let state = tracker.admit().expect("reserve");
        assert!(state.probes_only);
        held.push(Busy::start(state, tracker.clone()));
    }
    tracker
        .admit()
        .expect_err("all busy and the reserve taken: wait");
    // A reserve connection goes idle: once it had its chance, a new one
    // takes its place, and stays probes-only.
    let idle = held.pop().expect("held").0.clone();
    tracker.admit().expect_err("it just went idle");
    age(&tracker, &idle);
    let next = tracker
        .admit()
        .expect("replaces the idle reserve connection");
    assert!(next.probes_only);
}

#[test]
fn deadlines_follow_the_connection() {
    let limits = limits(4);
    let tracker = Arc::new(Tracker::new(limits));
    let state = tracker.admit().expect("free");
    let (due, reason) = state.deadline(&limits).expect("idle");
    assert_eq!((due, reason), (state.accepted + 10_000, "header_timeout"));
    let busy = Busy::start(state.clone(), tracker.clone());
    assert_eq!(state.deadline(&limits), None, "no timeout while busy");
    drop(busy);
    let idle_since = state.idle_since.load(Ordering::Acquire);
    assert_eq!(
        state.deadline(&limits),
        Some((idle_since + 120_000, "idle_timeout"))
    );
    state.reading_since.store(idle_since + 5, Ordering::Release);
    assert_eq!(
        state.deadline(&limits),
        Some((idle_since + 5 + 10_000, "header_timeout"))
    );
}

/// A deadline moving later never wakes the watchdog; one moving before its
/// timer does, once.
#[test]
fn only_an_earlier_deadline_wakes_the_watchdog() {
    let tracker = Arc::new(Tracker::new(limits(4)));
    let state = tracker.admit().expect("free");
    let armed = state.armed.load(Ordering::SeqCst);
    assert_eq!(
        armed,
        state.accepted + 10_000,
        "armed for the header timeout"
    );
    drop(Busy::start(state.clone(), tracker.clone()));
    assert_eq!(
        state.signals.load(Ordering::SeqCst),
        0,
        "a request starting and ending (idle timeout later) wakes nothing"
    );
    state.armed.store(armed + 120_000, Ordering::SeqCst);
    state.deadline_moved(armed + 10);
    assert_eq!(state.signals.load(Ordering::SeqCst), EARLIER);
}

/// A listener with a 400 ms header timeout and a 3 s idle timeout, serving
/// `/` with "ok".
async fn short_timeouts() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_secs(3),
        max_connections: 16,
    };
    tokio::spawn(serve(listener, app, None, limits, std::future::pending()));
    address
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// Sends a request and reads its answer (small: one read).
async fn ask(stream: &mut TcpStream) {
    stream.write_all(REQUEST).await.expect("send");
    let mut answer = [0u8; 1024];
    let read = stream.read(&mut answer).await.expect("answer");
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
}

/// How long until the server closes `stream`.
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn requests_keep_a_connection_open_past_the_header_timeout() {
    let address = short_timeouts().await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let started = Instant::now();
    // Past the timer set at accept (400 ms), and past the next one.
    while started.elapsed() < Duration::from_millis(1_200) {
        ask(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ask(&mut stream).await;
}

#[tokio::test]
async fn a_request_begun_on_an_idle_connection_gets_the_header_timeout_not_the_idle_one() {
    let address = short_timeouts().await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    ask(&mut stream).await;
    // Idle past the watchdog's first timer: it is now set for the idle
    // timeout (3 s), and the first bytes of a request must bring it forward.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .expect("half a request");
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_after(&mut stream))
        .await
        .expect("closed at all");
    assert!(
        closed >= Duration::from_millis(300) && closed < Duration::from_millis(1_500),
        "closed {closed:?} after the first bytes: the header timeout is 400 ms"
    );
}

#[tokio::test]
async fn a_fresh_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let address = short_timeouts().await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_after(&mut stream))
        .await
        .expect("closed at all");
    assert!(closed < Duration::from_millis(1_500), "{closed:?}");
}
