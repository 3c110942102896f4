//! Harness for the end-to-end tests: starts the real `wasm-broker serve`
//! binary on a free port with a temporary config and plugin directory, and
//! talks OSB to it over HTTP.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

pub mod faults;

pub const USERNAME: &str = "platform";
pub const PASSWORD: &str = "platform-secret-3c1f";
pub const API_VERSION: &str = "2.17";
/// The key test brokers seal binding credentials with (32 bytes, base64).
pub const ENCRYPTION_KEY: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `wasm-broker` binary cargo built for this test run (the host package's
/// own integration tests make `cargo test --workspace` build it), or
/// `WASM_BROKER_BIN`.
pub fn broker_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WASM_BROKER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let binary = profile_dir.join("wasm-broker");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p wasm-broker` (or `cargo xtask test`)",
        binary.display()
    );
    binary
}

/// A built plugin or test fixture (`cargo xtask test` builds both), from
/// `WASM_BROKER_WASM_DIR` if set (to test plugins built elsewhere).
pub fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASM_BROKER_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build-plugins` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// Whether a backing service answers on `address`. Outside CI a missing
/// service skips the test with a message; under CI=true it fails it.
pub fn service_available(name: &str, address: &str) -> bool {
    let reachable = address.parse().ok().is_some_and(|addr| {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    });
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is not reachable at {address}; CI must start it (.ci/run)");
        }
        eprintln!("skipping: {name} is not reachable at {address} (start it, or run .ci/run)");
    }
    reachable
}

/// A port no broker of this process was given before. The tests share one
/// process and run in parallel: the port is free when asked for, but only
/// bound when the broker starts (or restarts, after a kill), so the kernel
/// could hand it to another test meanwhile; remembering every port given
/// out keeps each broker's port its own.
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        if given.insert(port) {
            return port;
        }
    }
}

/// At most this many [`timed`] tests run at once, and a [`saturating`] one
/// only alone among them.
const CPU_SHARES: u32 = 2;
static CPU: Semaphore = Semaphore::const_new(CPU_SHARES as usize);

/// For a test whose assertions measure time (a deadline, a reload within
/// seconds, a lease): hold it for the whole test. The tests share one
/// process and run in parallel threads; this keeps the ones that keep every
/// core busy ([`saturating`]) out of its way, and at most
/// [`CPU_SHARES`] of them at once, so a slow neighbour does not make it
/// miss its deadline.
pub async fn timed() -> SemaphorePermit<'static> {
    CPU.acquire()
        .await
        .expect("the CPU semaphore is never closed")
}

/// For a test that keeps every core busy on purpose (plugins looping on
/// every executor thread, a fuzzer): hold it for the whole test; no
/// [`timed`] test runs meanwhile.
pub async fn saturating() -> SemaphorePermit<'static> {
    CPU.acquire_many(CPU_SHARES)
        .await
        .expect("the CPU semaphore is never closed")
}

/// The connections of the shipped broker.toml, for test configs: each logs
/// in as the least-privilege account tests/services/roles.sh makes for its
/// plugin. Checks of what a plugin did use the administrators instead
/// ([`MARIADB_ROOT_URL`], [`POSTGRES_ADMIN_URL`], ...).
pub const CONNECTIONS: &str = r#"
[connections.mariadb]
kind = "mysql"
url = "mysql://wasm_broker_mysql:wasm-broker-mysql-dev@127.0.0.1:3306"

[connections.postgres]
kind = "postgres"
url = "postgres://wasm_broker_postgres:wasm-broker-postgres-dev@127.0.0.1:5432/postgres"

[connections.redis]
kind = "redis"
url = "redis://wasm_broker_redis:wasm-broker-redis-dev@127.0.0.1:6379"

[connections.rabbitmq-management]
kind = "http"
url = "http://127.0.0.1:15672"
username = "wasm_broker_rabbitmq"
password = "wasm-broker-rabbitmq-dev"

[connections.mosquitto]
kind = "tcp"
url = "tcp://wasm-broker-plugin:wasm-broker-plugin-dev@127.0.0.1:1884"
"#;

/// The same connections as the backends' administrators (root, the
/// PostgreSQL superuser, the default Redis user, RabbitMQ's guest,
/// Mosquitto's dynamic security admin): what broker.toml granted before it
/// shipped least-privilege accounts, for tests that show what such a grant
/// allows.
pub const ADMIN_CONNECTIONS: &str = r#"
[connections.mariadb]
kind = "mysql"
url = "mysql://root@127.0.0.1:3306"

[connections.postgres]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5432/postgres"

[connections.redis]
kind = "redis"
url = "redis://127.0.0.1:6379"

[connections.rabbitmq-management]
kind = "http"
url = "http://127.0.0.1:15672"
username = "guest"
password = "guest"

[connections.mosquitto]
kind = "tcp"
url = "tcp://wasm-broker-admin:wasm-broker-admin-secret@127.0.0.1:1884"
"#;

/// How to start a test broker. `Default` is no plugins and no connections.
#[derive(Default)]
pub struct BrokerSetup {
    /// (file stem in the plugin directory, built .wasm to copy there).
    pub plugins: Vec<(String, PathBuf)>,
    /// More broker.toml, appended (plugin sections, limits, connections).
    pub extra_config: String,
    /// Replaces the default `[runtime]` limits line.
    pub runtime: String,
    /// More `[server]` lines (e.g. `max_body_bytes = 4096`): the harness
    /// writes that table itself, so it cannot go into `extra_config`.
    pub server: String,
    /// PEM of the certificate a `[server.tls]` table (in `server`) makes the
    /// broker present: the harness then talks HTTPS, trusting only it.
    pub tls_certificate: Option<String>,
    /// The `[state]` lines; empty for a SQLite store in the broker's
    /// directory. [`ScratchDatabase::state_config`] shares a PostgreSQL one.
    pub state: String,
    /// A compile cache of the broker's own, empty at start, instead of the
    /// one all tests share: for a test of what compiling costs.
    pub own_compile_cache: bool,
}

impl BrokerSetup {
    /// The shipped plugins named, with the grants of the shipped broker.toml.
    pub fn shipped(names: &[&str]) -> Self {
        let mut extra = String::from(CONNECTIONS);
        for name in names {
            extra.push_str(&format!(
                "\n[plugins.{name}.connections]\n{}\n",
                shipped_grants(name)
            ));
        }
        if names.contains(&"rabbitmq") {
            extra.push_str(
                "\n[plugins.rabbitmq.config]\namqp_host = \"127.0.0.1\"\namqp_port = 5672\n",
            );
        }
        Self {
            plugins: names
                .iter()
                .map(|name| (name.to_string(), wasm(name)))
                .collect(),
            extra_config: extra,
            runtime: String::new(),
            server: String::new(),
            tls_certificate: None,
            state: String::new(),
            own_compile_cache: false,
        }
    }
}

/// The grants (with their policies) of `[plugins.<name>.connections]` in
/// the shipped broker.toml, as TOML lines: the tests run the shipped
/// plugins with exactly what the shipped configuration allows them.
pub fn shipped_grants(name: &str) -> String {
    let path = repo_root().join("broker.toml");
    let text = std::fs::read_to_string(&path).expect("the shipped broker.toml");
    let header = format!("[plugins.{name}.connections]");
    let mut lines = text.lines().skip_while(|line| line.trim() != header);
    assert!(lines.next().is_some(), "broker.toml has no {header}");
    let grants: Vec<&str> = lines
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    grants.join("\n")
}

/// A running `wasm-broker serve`; killed when dropped.
pub struct TestBroker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub base_url: String,
    port: u16,
    client: reqwest::Client,
    /// What the next `spawn` sets WASM_BROKER_ENCRYPTION_KEY to (`None`:
    /// unset); [`ENCRYPTION_KEY`] unless a test changes it.
    pub encryption_key: Option<String>,
}

impl TestBroker {
    pub async fn start(setup: BrokerSetup) -> Self {
        let mut broker = Self::prepare(setup);
        broker.spawn().await;
        broker
    }

    /// Writes the broker's directory and broker.toml without starting it
    /// (then [`Self::spawn`] or [`Self::spawn_listening`]).
    pub fn prepare(setup: BrokerSetup) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        for (stem, source) in &setup.plugins {
            std::fs::copy(source, plugin_dir.join(format!("{stem}.wasm"))).expect("copy plugin");
        }
        let port = free_port();
        // One compile cache for all tests: plugins compile once per run.
        let cache = if setup.own_compile_cache {
            dir.path().join("compiled")
        } else {
            repo_root().join("target/test-compile-cache")
        };
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
{server}

[auth]
username = "{USERNAME}"
password = "{PASSWORD}"

[state]
{state}

[runtime]
plugin_dir = "plugins"
cache_dir = "{cache}"
{runtime}
{extra}
"#,
            cache = cache.display(),
            runtime = setup.runtime,
            server = setup.server,
            extra = setup.extra_config,
            state = if setup.state.is_empty() {
                "path = \"state/broker.db\""
            } else {
                &setup.state
            },
        );
        std::fs::write(dir.path().join("broker.toml"), config).expect("write broker.toml");
        let (scheme, client) = match &setup.tls_certificate {
            Some(certificate) => ("https", https_client(certificate)),
            None => ("http", reqwest::Client::new()),
        };
        Self {
            child: None,
            dir,
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            client,
            encryption_key: Some(ENCRYPTION_KEY.to_owned()),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Everything the broker logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process (again) on the same directory and port, and waits
    /// until it serves with its plugins loaded.
    pub async fn spawn(&mut self) {
        self.spawn_listening().await;
        self.wait_loaded().await;
    }

    /// Waits until `/readyz` no longer says the plugins are loading.
    pub async fn wait_loaded(&mut self) {
        self.wait_for("/readyz", "load its plugins", |_, body| {
            body != "loading plugins"
        })
        .await;
    }

    /// Polls `path` until `done(status, body)`, failing with the log if the
    /// process exits or 120 s pass first (`goal` says what it was to do).
    async fn wait_for(&mut self, path: &str, goal: &str, done: fn(u16, &str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "wasm-broker exited with {status} before it could {goal}:\n{}",
                    self.logs()
                );
            }
            if let Ok(response) = self
                .client
                .get(format!("{}{path}", self.base_url))
                .send()
                .await
            {
                let status = response.status().as_u16();
                if response.text().await.is_ok_and(|body| done(status, &body)) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "wasm-broker did not {goal} within 120 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the process (again) on the same directory and port, and waits
    /// until `/healthz` answers (the plugins may still be loading).
    pub async fn spawn_listening(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(broker_binary())
            .args(["serve", "--config"])
            .arg(self.dir.path().join("broker.toml"))
            .env("RUST_LOG", "info,wasm_broker=debug")
            .env_remove("WASM_BROKER_USERNAME")
            .env_remove("WASM_BROKER_PASSWORD")
            .env_remove("WASM_BROKER_ENCRYPTION_KEY")
            .envs(
                self.encryption_key
                    .as_deref()
                    .map(|key| ("WASM_BROKER_ENCRYPTION_KEY", key)),
            )
            .env_remove("WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS")
            .env_remove("WASM_BROKER_STATE_URL")
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start wasm-broker");
        self.child = Some(child);
        self.wait_for("/healthz", "serve", |status, _| {
            (200..300).contains(&status)
        })
        .await;
    }

    /// The broker process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .expect("the broker is running");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// SIGKILL: no graceful shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The broker.toml the broker was started with (and keeps watching).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("broker.toml")
    }

    /// SIGHUP: the broker applies its broker.toml again.
    pub fn hang_up(&self) {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .expect("the broker is running");
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {pid}: {status}");
    }

    /// `wasm-broker <args> --config <this broker's broker.toml>` with the
    /// broker's environment: whether it succeeded, and its stdout followed
    /// by its stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(broker_binary())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "warn")
            .env_remove("WASM_BROKER_USERNAME")
            .env_remove("WASM_BROKER_PASSWORD")
            .env_remove("WASM_BROKER_ENCRYPTION_KEY")
            .envs(
                self.encryption_key
                    .as_deref()
                    .map(|key| ("WASM_BROKER_ENCRYPTION_KEY", key)),
            )
            .env_remove("WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS")
            .env_remove("WASM_BROKER_STATE_URL")
            .output()
            .expect("run wasm-broker");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        (output.status.success(), format!("{stdout}{stderr}"))
    }

    /// Appends a line to the log (to mark test phases).
    pub fn note(&self, text: &str) {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())
        {
            let _ = writeln!(file, "---- test: {text}");
        }
    }

    /// An authenticated OSB request with the API version header.
    pub fn osb(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .basic_auth(USERNAME, Some(PASSWORD))
            .header("X-Broker-API-Version", API_VERSION)
    }

    /// A request with nothing added (for auth and header tests).
    pub fn raw(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
    }

    /// An authenticated request without the API version header.
    pub fn authed(&self, method: Method, path: &str) -> RequestBuilder {
        self.raw(method, path).basic_auth(USERNAME, Some(PASSWORD))
    }

    /// The ids of offering `service` and its plan `plan`, from the catalog.
    pub async fn plan(&self, service: &str, plan: &str) -> PlanIds {
        let (service_id, plan_id) = offering_plan(&self.catalog().await, service, plan);
        PlanIds {
            service_id,
            plan_id,
        }
    }

    /// `GET path`: status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.osb(Method::GET, path)).await
    }

    /// `/admin/plugins`' entry for plugin `name` (its file stem).
    pub async fn admin_plugin(&self, name: &str) -> Value {
        let (status, report) = self.get("/admin/plugins").await;
        assert_eq!(status, 200, "{report}");
        report["plugins"]
            .as_array()
            .and_then(|plugins| plugins.iter().find(|plugin| plugin["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    }

    /// `PUT` an instance with any body (`query` is `""` or `?...`).
    pub async fn put_instance(&self, instance_id: &str, query: &str, body: &Value) -> (u16, Value) {
        send(
            self.osb(
                Method::PUT,
                &format!("{}{query}", instance_path(instance_id)),
            )
            .json(body),
        )
        .await
    }

    /// A synchronous provision with the mandatory fields.
    pub async fn provision(
        &self,
        instance_id: &str,
        plan: &PlanIds,
        parameters: Option<Value>,
    ) -> (u16, Value) {
        self.put_instance(instance_id, "", &provision_body(plan, parameters))
            .await
    }

    /// `PATCH` an instance.
    pub async fn update(&self, instance_id: &str, body: &Value) -> (u16, Value) {
        send(
            self.osb(Method::PATCH, &instance_path(instance_id))
                .json(body),
        )
        .await
    }

    /// A synchronous deprovision.
    pub async fn deprovision(&self, instance_id: &str, plan: &PlanIds) -> (u16, Value) {
        let path = format!("{}?{}", instance_path(instance_id), plan.query());
        send(self.osb(Method::DELETE, &path)).await
    }

    /// `PUT` a binding with any body.
    pub async fn put_binding(
        &self,
        instance_id: &str,
        binding_id: &str,
        body: &Value,
    ) -> (u16, Value) {
        send(
            self.osb(Method::PUT, &binding_path(instance_id, binding_id))
                .json(body),
        )
        .await
    }

    /// A synchronous bind with the mandatory fields.
    pub async fn bind(
        &self,
        instance_id: &str,
        binding_id: &str,
        plan: &PlanIds,
        parameters: Option<Value>,
    ) -> (u16, Value) {
        self.put_binding(instance_id, binding_id, &bind_body(plan, parameters))
            .await
    }

    /// A synchronous unbind.
    pub async fn unbind(
        &self,
        instance_id: &str,
        binding_id: &str,
        plan: &PlanIds,
    ) -> (u16, Value) {
        let path = format!("{}?{}", binding_path(instance_id, binding_id), plan.query());
        send(self.osb(Method::DELETE, &path)).await
    }

    /// Unbinds `binding_ids` and deprovisions the instance, each synchronously,
    /// asserting every answer is 200 `{}`.
    pub async fn unbind_all_and_deprovision(
        &self,
        instance_id: &str,
        binding_ids: &[&str],
        plan: &PlanIds,
    ) {
        for binding_id in binding_ids {
            let (status, body) = self.unbind(instance_id, binding_id, plan).await;
            assert_eq!((status, body), (200, json!({})), "unbind {binding_id}");
        }
        let (status, body) = self.deprovision(instance_id, plan).await;
        assert_eq!(
            (status, body),
            (200, json!({})),
            "deprovision {instance_id}"
        );
    }

    pub async fn catalog(&self) -> Value {
        json(
            self.osb(Method::GET, "/v2/catalog")
                .send()
                .await
                .expect("catalog request"),
        )
        .await
        .1
    }

    /// The unauthenticated `/metrics` body.
    pub async fn metrics(&self) -> String {
        let response = self
            .raw(Method::GET, "/metrics")
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.expect("metrics body")
    }
}

/// The value of the sample of `name` (in a `/metrics` body) whose labels
/// include all of `labels`; with no labels asked, also a sample without any.
pub fn metric_sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if labels.is_empty()
            && let Some(value) = rest.strip_prefix(' ')
        {
            return value.trim().parse().ok();
        }
        let (label_text, value) = rest.strip_prefix('{')?.split_once("} ")?;
        labels
            .iter()
            .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status and JSON body of a response (Null if the body is not JSON).
pub async fn json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The first offering and its plan named `plan` in a catalog.
pub fn offering_plan(catalog: &Value, service_name: &str, plan: &str) -> (String, String) {
    let services = catalog["services"].as_array().expect("services array");
    let offering = services
        .iter()
        .find(|s| s["name"] == service_name)
        .unwrap_or_else(|| {
            panic!("no offering {service_name} in {catalog}");
        });
    let plans = offering["plans"].as_array().expect("plans array");
    let plan = plans
        .iter()
        .find(|p| p["name"] == plan)
        .unwrap_or_else(|| panic!("no plan {plan} in {offering}"));
    (
        offering["id"].as_str().expect("id").to_owned(),
        plan["id"].as_str().expect("plan id").to_owned(),
    )
}

/// A fresh id, unique per test run. The counter keeps two ids apart that
/// parallel tests of one process ask for in the same clock tick: the
/// backing services are shared, and the plugins name what they create
/// after these ids.
pub fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos:x}-{}-{count}", std::process::id())
}

/// The ids a request names an offering's plan by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanIds {
    pub service_id: String,
    pub plan_id: String,
}

impl PlanIds {
    /// `service_id=..&plan_id=..`, as deletes carry them.
    pub fn query(&self) -> String {
        format!(
            "service_id={}&plan_id={}",
            encode_id(&self.service_id),
            encode_id(&self.plan_id)
        )
    }
}

/// Sends a request and returns its status and JSON body.
pub async fn send(request: RequestBuilder) -> (u16, Value) {
    json(request.send().await.expect("request reaches the broker")).await
}

/// A provision body with every mandatory field.
pub fn provision_body(plan: &PlanIds, parameters: Option<Value>) -> Value {
    let mut body = serde_json::json!({
        "service_id": plan.service_id,
        "plan_id": plan.plan_id,
        "organization_guid": "org-guid-e2e",
        "space_guid": "space-guid-e2e",
    });
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    body
}

/// A bind body with the mandatory fields (and `bind_resource: {}`, as the
/// conformance suites send it).
pub fn bind_body(plan: &PlanIds, parameters: Option<Value>) -> Value {
    let mut body = serde_json::json!({
        "service_id": plan.service_id,
        "plan_id": plan.plan_id,
        "bind_resource": {},
    });
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    body
}

/// RFC 3986 unreserved characters stay, everything else is percent-encoded
/// (OSB ids may hold any character).
const ID_ENCODE_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An id as one URL path segment or query value.
pub fn encode_id(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, ID_ENCODE_SET).to_string()
}

pub fn instance_path(instance_id: &str) -> String {
    format!("/v2/service_instances/{}", encode_id(instance_id))
}

pub fn binding_path(instance_id: &str, binding_id: &str) -> String {
    format!(
        "{}/service_bindings/{}",
        instance_path(instance_id),
        encode_id(binding_id)
    )
}

/// Fails unless `body` is an OSB error body: `error` and `description`
/// non-empty strings.
#[track_caller]
pub fn assert_error_body(body: &Value, context: &str) {
    for field in ["error", "description"] {
        let value = body[field].as_str().unwrap_or_default();
        assert!(
            !value.is_empty(),
            "{context}: `{field}` must be a non-empty string in {body}"
        );
    }
}

/// Binds once with each binding lifetime a plugin must refuse (over before it
/// starts, too long, not a whole number of days), checks each answer is a 400
/// naming `expires_in_days`, and returns the binding ids tried, so the caller
/// can check nothing was created for them.
pub async fn bind_refused_lifetimes(
    broker: &TestBroker,
    instance_id: &str,
    plan: &PlanIds,
    id_prefix: &str,
) -> Vec<String> {
    let mut tried = Vec::new();
    for parameters in [
        json!({"expires_in_days": 0}),
        json!({"expires_in_days": -1}),
        json!({"expires_in_days": 3651}),
        json!({"expires_in_days": "30"}),
        json!({"expires_in_days": 1.5}),
    ] {
        let binding_id = unique_id(id_prefix);
        let (status, body) = broker
            .bind(instance_id, &binding_id, plan, Some(parameters.clone()))
            .await;
        assert_eq!(status, 400, "{parameters}: {body}");
        assert!(
            body["description"]
                .as_str()
                .unwrap_or_default()
                .contains("expires_in_days"),
            "{parameters}: {body}"
        );
        tried.push(binding_id);
    }
    tried
}

/// `yyyy-mm-ddThh:mm:ss.sZ`, the binding metadata format OSB fixes.
#[track_caller]
pub fn assert_osb_timestamp(text: &str) {
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dZ", "{text}");
}

/// The `metadata` of a bind or fetch-binding body: (`expires_at`,
/// `renew_before`), each checked to be an OSB timestamp.
#[track_caller]
pub fn binding_metadata(body: &Value) -> (String, String) {
    let field = |name: &str| {
        body["metadata"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no metadata.{name} in {body}"))
            .to_owned()
    };
    let (expires_at, renew_before) = (field("expires_at"), field("renew_before"));
    assert_osb_timestamp(&expires_at);
    assert_osb_timestamp(&renew_before);
    (expires_at, renew_before)
}

/// The `credentials` object of a bind or fetch-binding body.
#[track_caller]
pub fn credentials(body: &Value) -> &serde_json::Map<String, Value> {
    body["credentials"]
        .as_object()
        .unwrap_or_else(|| panic!("no credentials object in {body}"))
}

/// A string field of a credentials object.
#[track_caller]
pub fn credential<'a>(credentials: &'a serde_json::Map<String, Value>, field: &str) -> &'a str {
    credentials
        .get(field)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| panic!("credential {field} missing or empty in {credentials:?}"))
}

/// The backend name the shipped plugins derive from a platform id (the
/// SDK's `names::derive_name`): `prefix` and the first 16 hex digits of the
/// id's SHA-256. Lets a test find what a plugin created for an id.
pub fn derived_name(prefix: &str, id: &str, max_len: usize) -> String {
    use sha2::Digest as _;
    let hash: String = sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let hash_len = 16.min(max_len);
    let mut name: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .take(max_len - hash_len)
        .collect();
    name.push_str(&hash[..hash_len]);
    name
}

/// The MariaDB server the shipped broker.toml grants, as root.
pub const MARIADB_ROOT_URL: &str = "mysql://root@127.0.0.1:3306";
/// The PostgreSQL server the shipped broker.toml grants, as its superuser.
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A direct root connection to MariaDB, to check what plugins did.
pub async fn mariadb_root() -> sqlx::MySqlConnection {
    use sqlx::Connection as _;
    sqlx::MySqlConnection::connect(MARIADB_ROOT_URL)
        .await
        .expect("root connection to MariaDB")
}

/// Whether MariaDB has a database (schema) named `name`.
pub async fn mariadb_has_database(name: &str) -> bool {
    let mut root = mariadb_root().await;
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(name)
    .fetch_optional(&mut root)
    .await
    .expect("query information_schema.SCHEMATA");
    found.is_some()
}

/// A direct superuser connection to PostgreSQL, to check what plugins did.
pub async fn postgres_admin() -> sqlx::PgConnection {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(POSTGRES_ADMIN_URL)
        .await
        .expect("admin connection to PostgreSQL")
}

/// A database of its own on the PostgreSQL server, for brokers sharing a
/// state store; dropped (with whatever still uses it) when this is.
pub struct ScratchDatabase {
    pub name: String,
    pub url: String,
}

impl ScratchDatabase {
    /// `None` when PostgreSQL is unreachable outside CI (see
    /// [`service_available`]).
    pub async fn create() -> Option<Self> {
        use sqlx::Executor as _;
        if !service_available("PostgreSQL", "127.0.0.1:5432") {
            return None;
        }
        let name = format!(
            "wb_ha_{}",
            unique_id("").trim_start_matches('-').replace('-', "_")
        );
        postgres_admin()
            .await
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("scratch database created");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Some(Self { name, url })
    }

    /// `[state]` lines (see [`BrokerSetup::state`]) for a broker replica on
    /// this database, taking a dead replica's calls over after
    /// `lease_seconds`.
    pub fn state_config(&self, lease_seconds: u64) -> String {
        format!(
            "backend = \"postgres\"\nurl = \"{}\"\nreplica_lease_seconds = {lease_seconds}\n",
            self.url
        )
    }

    /// A direct connection, to look at what the brokers stored.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connection to the scratch database")
    }
}

impl Drop for ScratchDatabase {
    /// On a thread of its own: drop cannot wait for the test's runtime.
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::{Connection as _, Executor as _};
                let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await?;
                admin.execute(statement.as_str()).await.map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop scratch database {}: {dropped:?}", self.name);
        }
    }
}

/// A client that trusts only `certificate_pem` (a self-signed test
/// certificate) for HTTPS.
pub fn https_client(certificate_pem: &str) -> reqwest::Client {
    let certificate =
        reqwest::Certificate::from_pem(certificate_pem.as_bytes()).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .build()
        .expect("HTTPS client")
}
