//! The load generator: a closed loop over keep-alive HTTP/1.1 connections,
//! each connection one task that sends its next request when the previous
//! answer is read, timing every request.
//!
//! In-process rather than `wrk` or `oha`: the provision and bind scenarios
//! need a fresh id in every request and a sequence of dependent requests
//! (provision, then deprovision of that id), which `wrk` only does through
//! Lua scripts and `oha` not at all; and one generator for every scenario
//! keeps the broker and the baseline measured by the very same client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The OSB version the generator announces.
const API_VERSION: &str = "2.17";

/// Where requests go, and the credentials they carry (the baseline ignores
/// them, so both servers get byte-identical requests).
pub struct Endpoint {
    pub address: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
}

impl Endpoint {
    pub fn new(address: SocketAddr, username: &str, password: &str) -> anyhow::Result<Arc<Self>> {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        Ok(Arc::new(Self {
            address,
            host: HeaderValue::from_str(&address.to_string())?,
            authorization: HeaderValue::from_str(&format!("Basic {credentials}"))?,
        }))
    }
}

/// One keep-alive connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    endpoint: Arc<Endpoint>,
}

impl Connection {
    pub async fn open(endpoint: &Arc<Endpoint>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(endpoint.address)
            .await
            .with_context(|| format!("connecting to {}", endpoint.address))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Ends with an error when the server closes the connection; the next
        // request on it then fails and reports that.
        tokio::spawn(connection);
        Ok(Self {
            sender,
            endpoint: endpoint.clone(),
        })
    }

    /// Sends one OSB request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.host.clone())
            .header(AUTHORIZATION, self.endpoint.authorization.clone())
            .header("X-Broker-API-Version", API_VERSION);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        self.sender
            .ready()
            .await
            .context("the server closed the connection")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// When a phase warms up and when it measures.
#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after_warmup(warmup: Duration, measured: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + measured,
        }
    }
}

/// What one connection saw in the measured window.
#[derive(Default)]
pub struct Recorder {
    latencies_ns: Vec<u64>,
    /// Latencies of the requests a step marks (`call_marked`): one kind of
    /// request among the step's several.
    marked_ns: Vec<u64>,
    unexpected: u64,
    first_unexpected: Option<String>,
}

impl Recorder {
    /// Sends a request, and records it if it finished inside the window
    /// (whenever it started: dropping requests that began earlier would
    /// drop exactly the slowest ones). An unexpected status is counted, not
    /// fatal: the table shows it next to the figures it spoils.
    pub async fn call(
        &mut self,
        window: &Window,
        connection: &mut Connection,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        expected: StatusCode,
    ) -> anyhow::Result<Bytes> {
        let started = Instant::now();
        let (status, answer) = connection.send(method.clone(), path, body).await?;
        let finished = Instant::now();
        if finished >= window.start && finished <= window.end {
            self.latencies_ns
                .push(nanos(finished.duration_since(started)));
            if status != expected {
                self.unexpected += 1;
            }
        }
        if status != expected && self.first_unexpected.is_none() {
            self.first_unexpected = Some(format!(
                "{method} {path}: {status} (expected {expected}): {}",
                String::from_utf8_lossy(&answer)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        Ok(answer)
    }

    /// `call`, and its latency also counted among the marked ones.
    pub async fn call_marked(
        &mut self,
        window: &Window,
        connection: &mut Connection,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        expected: StatusCode,
    ) -> anyhow::Result<Bytes> {
        let recorded = self.latencies_ns.len();
        let answer = self
            .call(window, connection, method, path, body, expected)
            .await?;
        if let Some(latency) = self.latencies_ns.get(recorded) {
            self.marked_ns.push(*latency);
        }
        Ok(answer)
    }
}

pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Requests per second and latency of one phase.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub requests: u64,
    pub seconds: f64,
    /// Sorted, in nanoseconds.
    latencies_ns: Vec<u64>,
    /// The marked requests' latencies, sorted.
    marked_ns: Vec<u64>,
    pub unexpected: u64,
    pub first_unexpected: Option<String>,
    /// CPU time the server process used in the window, per request.
    pub server_cpu_us: Option<f64>,
}

impl Measurement {
    pub fn merge(recorders: Vec<Recorder>, window: &Window) -> Self {
        let mut latencies_ns: Vec<u64> = Vec::new();
        let mut marked_ns: Vec<u64> = Vec::new();
        let mut unexpected = 0;
        let mut first_unexpected = None;
        for recorder in recorders {
            latencies_ns.extend(recorder.latencies_ns);
            marked_ns.extend(recorder.marked_ns);
            unexpected += recorder.unexpected;
            first_unexpected = first_unexpected.or(recorder.first_unexpected);
        }
        latencies_ns.sort_unstable();
        marked_ns.sort_unstable();
        Self {
            requests: latencies_ns.len() as u64,
            seconds: window.end.duration_since(window.start).as_secs_f64(),
            latencies_ns,
            marked_ns,
            unexpected,
            first_unexpected,
            server_cpu_us: None,
        }
    }

    /// From latencies timed one by one, outside a load phase.
    pub fn from_latencies(mut latencies_ns: Vec<u64>, seconds: f64) -> Self {
        latencies_ns.sort_unstable();
        Self {
            requests: latencies_ns.len() as u64,
            seconds,
            latencies_ns,
            marked_ns: Vec::new(),
            unexpected: 0,
            first_unexpected: None,
            server_cpu_us: None,
        }
    }

    pub fn with_server_cpu(mut self, cpu: Option<Duration>) -> Self {
        self.server_cpu_us = cpu
            .filter(|_| self.requests > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / self.requests as f64);
        self
    }

    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The `quantile` (0..=1) latency in microseconds (nearest rank).
    pub fn percentile_us(&self, quantile: f64) -> f64 {
        percentile_us(&self.latencies_ns, quantile)
    }

    pub fn marked_p50_us(&self) -> f64 {
        percentile_us(&self.marked_ns, 0.50)
    }

    pub fn marked_p99_us(&self) -> f64 {
        percentile_us(&self.marked_ns, 0.99)
    }

    pub fn p50_us(&self) -> f64 {
        self.percentile_us(0.50)
    }

    pub fn p99_us(&self) -> f64 {
        self.percentile_us(0.99)
    }

    /// The better of two runs of the same phase: other processes on a
    /// shared machine only ever make a run slower.
    pub fn best(self, other: Self) -> Self {
        if other.per_second() > self.per_second() {
            other
        } else {
            self
        }
    }
}

/// The `quantile` (0..=1) of sorted nanoseconds, in microseconds (nearest rank).
fn percentile_us(sorted_ns: &[u64], quantile: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = (quantile * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1000.0
}

/// What one connection does, again and again, during a phase: one request
/// or a dependent sequence of them, each timed through the recorder.
pub trait Step: Send + 'static {
    fn step(
        &mut self,
        connection: &mut Connection,
        recorder: &mut Recorder,
        window: &Window,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs `connections` closed loops, each with the step `make` builds for
/// its index, until `window` ends. Only requests inside the window count:
/// the time before it warms up both sides (and lets a step set itself up).
pub async fn run<S: Step>(
    endpoint: &Arc<Endpoint>,
    connections: usize,
    window: Window,
    make: impl Fn(usize) -> S,
) -> anyhow::Result<Measurement> {
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let endpoint = endpoint.clone();
        let mut step = make(index);
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&endpoint).await?;
            let mut recorder = Recorder::default();
            while Instant::now() < window.end {
                step.step(&mut connection, &mut recorder, &window).await?;
            }
            anyhow::Ok(recorder)
        }));
    }
    let mut recorders = Vec::with_capacity(connections);
    for task in tasks {
        recorders.push(task.await??);
    }
    Ok(Measurement::merge(recorders, &window))
}
