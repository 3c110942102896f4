//! The listener: accepts TCP connections (TLS on them if configured) and
//! serves the router over HTTP/1.1 or HTTP/2 with hyper-util's server
//! builder, under limits an unauthenticated client cannot outlast:
//!
//! - a new connection must finish its TLS handshake and send a request's
//!   headers within `header_read_timeout`, and so must a kept-alive one
//!   once it starts sending the next request;
//! - a kept-alive connection with no request under way is closed after
//!   `idle_timeout`;
//! - at most `max_connections` are open. At the cap, a new connection
//!   takes the place of the one idle longest (a half-sent request is idle:
//!   nothing is under way for it), once that one has had `EVICTABLE_AFTER`
//!   to send its request, so a flood of stalled connections cannot lock out
//!   the platform or the probes. If every connection is busy, a few more
//!   (`PROBE_RESERVE`) are taken that answer only `/healthz` and `/readyz`.
//!   Meanwhile new connections wait in the kernel's backlog: the process
//!   never holds more than that, so it never runs out of file descriptors.
//!
//! hyper's own header timer also runs while a kept-alive connection waits,
//! so it is set to the longer of the two timeouts, as a backstop; the
//! connection's watchdog here tells a new request from an idle wait.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::{ApiError, HEALTHZ, READYZ};

/// Connections taken beyond `max_connections` when every one is busy with
/// a request; they are answered only for the probes.
pub const PROBE_RESERVE: usize = 8;

/// A connection idle for less than this is not pushed out at the cap: a
/// client that has sent its request gets it read even on a busy machine.
/// Under a flood, connections are accepted at most this much faster than
/// the cap per this interval; the rest wait in the kernel's backlog.
const EVICTABLE_AFTER: Duration = Duration::from_millis(250);

/// `[server]` header_read_timeout_ms, idle_timeout_ms, max_connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and lets requests under way finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.max(limits.idle_timeout));
    let builder = Arc::new(builder);
    let tracker = Arc::new(Tracker::new(limits));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: try again shortly, without spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Until this one has a place, the next ones wait in the kernel's
        // backlog: the process holds at most the cap, the reserve and this.
        let state = loop {
            match tracker.admit() {
                Ok(state) => break Some(state),
                Err(wait) => tokio::select! {
                    () = &mut shutdown => break None,
                    () = tokio::time::sleep(wait) => {}
                },
            }
        };
        let Some(state) = state else { break };
        let connection = Connection {
            state,
            tracker: tracker.clone(),
            builder: builder.clone(),
            app: app.clone(),
            limits,
        };
        connections.spawn(connection.run(stream, tls.clone(), stopping.clone()));
        while connections.try_join_next().is_some() {}
    }
    // Ignored: no connection task left to tell.
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// `http_connections_closed_total{reason}`: connections the listener closed
/// itself, and why.
fn closed(reason: &'static str) {
    metrics::counter!("http_connections_closed_total", "reason" => reason).increment(1);
}

/// Milliseconds since the tracker started, as atomics hold them.
type Millis = u64;
const NEVER: Millis = u64::MAX;

/// What the listener knows of one connection.
#[derive(Debug)]
struct ConnState {
    id: u64,
    /// Taken beyond the cap: answers the probes only.
    probes_only: bool,
    accepted: Millis,
    /// Requests under way.
    in_flight: AtomicU32,
    /// No request has started yet.
    fresh: AtomicBool,
    /// When the last request ended.
    idle_since: AtomicU64,
    /// When bytes first came in while no request was under way: the next
    /// request (or TLS handshake) has begun. `NEVER` if none came.
    reading_since: AtomicU64,
    /// Notified when the connection must close (evicted at the cap).
    close: Notify,
    /// Notified when its deadline moves (a request starts or ends, bytes
    /// of a new one arrive), so the watchdog looks again.
    changed: Notify,
}

impl ConnState {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// When the connection expires if nothing changes: `None` while a
    /// request is under way.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Millis, &'static str)> {
        if !self.is_idle() {
            return None;
        }
        let header = millis(limits.header_read_timeout);
        if self.fresh.load(Ordering::Acquire) {
            return Some((self.accepted.saturating_add(header), "header_timeout"));
        }
        match self.reading_since.load(Ordering::Acquire) {
            NEVER => Some((
                self.idle_since
                    .load(Ordering::Acquire)
                    .saturating_add(millis(limits.idle_timeout)),
                "idle_timeout",
            )),
            since => Some((since.saturating_add(header), "header_timeout")),
        }
    }
}

fn millis(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(NEVER)
}

/// The open connections, for the cap.
struct Tracker {
    limits: ConnectionLimits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Tracker {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> Millis {
        millis(self.epoch.elapsed())
    }

    /// `time` as an instant; a day from now for one beyond any timer.
    fn at(&self, time: Millis) -> Instant {
        self.epoch
            .checked_add(Duration::from_millis(time))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))
    }

    /// A place for a new connection: a free one, one of the probe reserve
    /// (when every connection is busy), or the place of the connection idle
    /// longest, if it has been idle at least `EVICTABLE_AFTER` (told to
    /// close). Otherwise how long to wait before asking again.
    fn admit(&self) -> Result<Arc<ConnState>, Duration> {
        // Only this map's integrity is guarded: a panic elsewhere cannot
        // leave it half-changed.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.now();
        let regular = open.values().filter(|state| !state.probes_only).count();
        let longest_idle = open
            .values()
            .filter(|state| state.is_idle())
            .min_by_key(|state| (state.probes_only, state.idle_since.load(Ordering::Acquire)))
            .cloned();
        let probes_only = if regular < self.limits.max_connections {
            false
        } else if longest_idle.is_none() && open.len() - regular < PROBE_RESERVE {
            true
        } else {
            let Some(victim) = longest_idle else {
                // Everything busy: a request will end.
                return Err(Duration::from_millis(20));
            };
            let idle_for = now.saturating_sub(victim.idle_since.load(Ordering::Acquire));
            let evictable_after = millis(EVICTABLE_AFTER);
            if idle_for < evictable_after {
                // Just accepted: its request may be in its buffer, not yet
                // read. Let it be read before it can be pushed out.
                return Err(Duration::from_millis(evictable_after - idle_for));
            }
            open.remove(&victim.id);
            victim.close.notify_one();
            closed("evicted");
            victim.probes_only
        };
        let state = Arc::new(ConnState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            probes_only,
            accepted: now,
            in_flight: AtomicU32::new(0),
            fresh: AtomicBool::new(true),
            idle_since: AtomicU64::new(now),
            reading_since: AtomicU64::new(NEVER),
            close: Notify::new(),
            changed: Notify::new(),
        });
        open.insert(state.id, state.clone());
        metrics::gauge!("http_connections_open").set(open.len() as f64);
        Ok(state)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&id);
        metrics::gauge!("http_connections_open").set(open.len() as f64);
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    state: Arc<ConnState>,
    tracker: Arc<Tracker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    limits: ConnectionLimits,
}

impl Connection {
    async fn run(
        self,
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        stopping: watch::Receiver<bool>,
    ) {
        // Small answers on kept-alive connections: do not wait to fill a
        // segment. Failing only costs latency.
        let _ = stream.set_nodelay(true);
        let io = Watched {
            inner: stream,
            state: self.state.clone(),
            tracker: self.tracker.clone(),
        };
        match tls {
            None => self.drive(io, stopping).await,
            Some(acceptor) => {
                let handshake = tokio::select! {
                    done = tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(io)) => done,
                    () = self.state.close.notified() => return self.tracker.remove(self.state.id),
                };
                match handshake {
                    Ok(Ok(stream)) => self.drive(stream, stopping).await,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        self.tracker.remove(self.state.id);
                    }
                    Err(_elapsed) => {
                        closed("header_timeout");
                        self.tracker.remove(self.state.id);
                    }
                }
            }
        }
    }

    /// Serves HTTP on `io` until the client closes, a timeout passes, the
    /// connection is evicted, or the broker stops.
    async fn drive<S>(self, io: S, mut stopping: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (state, tracker, app) = (self.state.clone(), self.tracker.clone(), self.app.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = Busy::start(state.clone(), tracker.clone());
            let refused = busy.0.probes_only && !is_probe(request.uri().path());
            let app = app.clone();
            async move {
                let response = if refused {
                    too_busy()
                } else {
                    match app.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                };
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut shutting_down = false;
        loop {
            // While a request runs, look again after a header timeout.
            let (deadline, reason) = self.state.deadline(&self.limits).unwrap_or_else(|| {
                (
                    self.tracker
                        .now()
                        .saturating_add(millis(self.limits.header_read_timeout)),
                    "",
                )
            });
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                () = self.state.close.notified() => break,
                () = self.state.changed.notified() => {}
                changed = stopping.changed(), if !shutting_down => {
                    shutting_down = true;
                    if changed.is_ok() {
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = tokio::time::sleep_until(self.tracker.at(deadline)) => {
                    let expired = self.state.deadline(&self.limits)
                        .is_some_and(|(now_due, _)| now_due <= self.tracker.now());
                    if expired {
                        closed(reason);
                        break;
                    }
                }
            }
        }
        self.tracker.remove(self.state.id);
    }
}

fn is_probe(path: &str) -> bool {
    path == HEALTHZ || path == READYZ
}

/// What a connection of the probe reserve answers to anything but a probe.
fn too_busy() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the broker has as many connections busy as it serves at once; retry shortly",
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A request under way on a connection, for as long as it lives.
struct Busy(Arc<ConnState>, Arc<Tracker>);

impl Busy {
    fn start(state: Arc<ConnState>, tracker: Arc<Tracker>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.fresh.store(false, Ordering::Release);
        state.reading_since.store(NEVER, Ordering::Release);
        state.changed.notify_one();
        Self(state, tracker)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.1.now(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The connection's byte stream, noting when a new request begins to
/// arrive on an idle connection (the header timeout starts then).
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    tracker: Arc<Tracker>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.state.is_idle() {
            let now = self.tracker.now();
            // Only the first bytes of a request set it.
            let started = self.state.reading_since.compare_exchange(
                NEVER,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if started.is_ok() {
                self.state.changed.notify_one();
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
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
}
