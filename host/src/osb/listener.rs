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
//! The connection's watchdog here tells a new request from an idle wait, so
//! hyper's own header timer is off: it would arm and cancel a timer around
//! every request. The watchdog is lazy for the same reason: requests
//! starting and ending only move atomics; its one timer is reset when it
//! fires, and it is woken early only when a deadline moves before the
//! instant its timer is set for (the first bytes of a request on a
//! connection that was idle), so on a busy kept-alive connection it looks
//! about once per header timeout, not around every request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
    // The watchdog times the headers (hyper's timer would need a timer per
    // request, and cannot tell an idle wait from a slow request).
    builder.http1().header_read_timeout(None);
    let builder = Arc::new(builder);
    let tracker = Arc::new(Tracker::new(limits));
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
        connections.spawn(connection.run(stream, tls.clone()));
        while connections.try_join_next().is_some() {}
    }
    // Every connection accepted is in the tracker until it ends.
    tracker.stop_all();
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
    /// When the watchdog's timer is set to look next. A deadline moving
    /// before it wakes the watchdog (`EARLIER`); one moving later does
    /// not: the watchdog finds it when its timer fires.
    armed: AtomicU64,
    /// `EVICTED`, `STOPPING`, `EARLIER`: what the watchdog is woken for.
    signals: AtomicU8,
    /// The connection's task, waiting.
    waker: AtomicWaker,
}

/// Signals to a connection's task: evicted at the cap (close now).
const EVICTED: u8 = 1;
/// The broker stops: finish the request under way, then close.
const STOPPING: u8 = 2;
/// A deadline moved before the watchdog's timer.
const EARLIER: u8 = 4;

impl ConnState {
    fn signal(&self, what: u8) {
        self.signals.fetch_or(what, Ordering::SeqCst);
        self.waker.wake();
    }

    /// The connection's deadline is now `due` (or later): the watchdog is
    /// woken only if its timer is set after that.
    fn deadline_moved(&self, due: Millis) {
        if due < self.armed.load(Ordering::SeqCst) {
            self.signal(EARLIER);
        }
    }

    /// When the watchdog should look next, or why the connection expired:
    /// the deadline, or a header timeout from `now` while a request runs.
    fn next_look(&self, limits: &ConnectionLimits, now: Millis) -> Result<Millis, &'static str> {
        match self.deadline(limits) {
            None => Ok(now.saturating_add(millis(limits.header_read_timeout))),
            Some((due, reason)) if due <= now => Err(reason),
            Some((due, _)) => Ok(due),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// When the connection expires if nothing changes: `None` while a
    /// request is under way.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Millis, &'static str)> {
        if !self.is_idle() {
            return None;
        }
        let header = millis(limits.header_read_timeout);
        if self.fresh.load(Ordering::SeqCst) {
            return Some((self.accepted.saturating_add(header), "header_timeout"));
        }
        match self.reading_since.load(Ordering::SeqCst) {
            NEVER => Some((
                self.idle_since
                    .load(Ordering::SeqCst)
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
            victim.signal(EVICTED);
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
            armed: AtomicU64::new(now.saturating_add(millis(self.limits.header_read_timeout))),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
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

    /// Tells every open connection the broker stops.
    fn stop_all(&self) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for state in open.values() {
            state.signal(STOPPING);
        }
    }
}

/// Why a connection's drive loop ended.
enum End {
    /// The client closed, or hyper ended the connection.
    Served,
    Evicted,
    Expired(&'static str),
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
    async fn run(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        // Small answers on kept-alive connections: do not wait to fill a
        // segment. Failing only costs latency.
        let _ = stream.set_nodelay(true);
        let io = Watched {
            inner: stream,
            state: self.state.clone(),
            tracker: self.tracker.clone(),
        };
        match tls {
            None => self.drive(io).await,
            Some(acceptor) => {
                let evicted = std::future::poll_fn(|cx| {
                    self.state.waker.register(cx.waker());
                    if self.state.signals.load(Ordering::SeqCst) & EVICTED != 0 {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                });
                let handshake = tokio::select! {
                    done = tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(io)) => done,
                    () = evicted => return self.tracker.remove(self.state.id),
                };
                match handshake {
                    Ok(Ok(stream)) => self.drive(stream).await,
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
    async fn drive<S>(self, io: S)
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
        let (state, tracker, limits) = (&self.state, &self.tracker, &self.limits);
        let watchdog = tokio::time::sleep_until(tracker.at(state.armed.load(Ordering::SeqCst)));
        tokio::pin!(watchdog);
        let mut shutting_down = false;
        // One future for the connection and its watchdog: polled when hyper
        // has work, when the timer fires, or when signalled; checking the
        // watchdog on a poll is a few atomic operations.
        let end = std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(served) = connection.as_mut().poll(cx) {
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return Poll::Ready(End::Served);
                }
                state.waker.register(cx.waker());
                let signals = match state.signals.load(Ordering::SeqCst) {
                    0 => 0,
                    _ => state.signals.swap(0, Ordering::SeqCst),
                };
                if signals & EVICTED != 0 {
                    return Poll::Ready(End::Evicted);
                }
                // The connection is polled again after a graceful shutdown
                // begins (it may be done) or a timer set in the past.
                let mut again = false;
                if signals & STOPPING != 0 && !shutting_down {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                    again = true;
                }
                if signals & EARLIER != 0 || watchdog.as_mut().poll(cx).is_ready() {
                    match rearm(state, limits, tracker) {
                        Err(reason) => return Poll::Ready(End::Expired(reason)),
                        Ok(look) => {
                            watchdog.as_mut().reset(tracker.at(look));
                            // Registers the timer (normally not due yet).
                            again |= watchdog.as_mut().poll(cx).is_ready();
                        }
                    }
                }
                if !again {
                    return Poll::Pending;
                }
            }
        });
        match end.await {
            End::Served | End::Evicted => {}
            End::Expired(reason) => closed(reason),
        }
        self.tracker.remove(self.state.id);
    }
}

/// Sets when the watchdog looks next (`armed`), or says why the connection
/// expired. `armed` is stored before the state is read again, so a
/// deadline that moved meanwhile is either seen here or signalled
/// (`deadline_moved` reads `armed` after changing the state).
fn rearm(
    state: &ConnState,
    limits: &ConnectionLimits,
    tracker: &Tracker,
) -> Result<Millis, &'static str> {
    loop {
        let deadline = state.deadline(limits);
        let look = state.next_look(limits, tracker.now())?;
        state.armed.store(look, Ordering::SeqCst);
        if state.deadline(limits) == deadline {
            return Ok(look);
        }
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
    /// A request starts: no deadline while it runs. The watchdog is not
    /// woken: a later deadline is found when its timer fires.
    fn start(state: Arc<ConnState>, tracker: Arc<Tracker>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.fresh.store(false, Ordering::SeqCst);
        state.reading_since.store(NEVER, Ordering::SeqCst);
        Self(state, tracker)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.1.now();
        self.0.idle_since.store(now, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        // The idle timeout from now: earlier than the watchdog's timer
        // only if idle_timeout_ms is below header_read_timeout_ms.
        self.0
            .deadline_moved(now.saturating_add(millis(self.1.limits.idle_timeout)));
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
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            if started.is_ok() {
                let due = now.saturating_add(millis(self.tracker.limits.header_read_timeout));
                self.state.deadline_moved(due);
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
#[path = "listener_tests.rs"]
mod tests;
