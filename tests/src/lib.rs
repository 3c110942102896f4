//! Harness for the end-to-end tests: starts the real `wasm-broker serve`
//! binary on a free port with a temporary config and plugin directory, and
//! talks OSB to it over HTTP.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

pub const USERNAME: &str = "platform";
pub const PASSWORD: &str = "platform-secret-3c1f";
pub const API_VERSION: &str = "2.17";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The `wasm-broker` binary cargo built for this test run (the host package's
/// own integration tests make `cargo test --workspace` build it), or
/// `WASM_BROKER_BIN`.
pub fn broker_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WASM_BROKER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let binary = profile_dir.join("wasm-broker");
    assert!(binary.exists(), "{} is missing: run `cargo build -p wasm-broker` (or `cargo xtask test`)", binary.display());
    binary
}

/// A built plugin or test fixture (`cargo xtask test` builds both).
pub fn wasm(name: &str) -> PathBuf {
    let path = repo_root().join(format!("target/wasm/wasm32-wasip2/release/{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `cargo xtask build-plugins` (or `cargo xtask test`)", path.display());
    path
}

/// Whether a backing service answers on `address`. Outside CI a missing
/// service skips the test with a message; under CI=true it fails it.
pub fn service_available(name: &str, address: &str) -> bool {
    let reachable = address
        .parse()
        .ok()
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is not reachable at {address}; CI must start it (.ci/run)");
        }
        eprintln!("skipping: {name} is not reachable at {address} (start it, or run .ci/run)");
    }
    reachable
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).map(|addr| addr.port()).expect("a free port")
}

/// The connections and grants of the shipped broker.toml, for test configs.
pub const CONNECTIONS: &str = r#"
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
"#;

/// How to start a test broker.
pub struct BrokerSetup {
    /// (file stem in the plugin directory, built .wasm to copy there).
    pub plugins: Vec<(String, PathBuf)>,
    /// More broker.toml, appended (plugin sections, limits, connections).
    pub extra_config: String,
    /// Replaces the default `[runtime]` limits line.
    pub runtime: String,
}

impl BrokerSetup {
    /// The shipped plugins named, with the grants of the shipped broker.toml.
    pub fn shipped(names: &[&str]) -> Self {
        let mut extra = String::from(CONNECTIONS);
        for name in names {
            let connection = match *name {
                "mysql" => "mariadb",
                "postgres" => "postgres",
                "redis" => "redis",
                "rabbitmq" => "rabbitmq-management",
                other => panic!("no shipped plugin {other}"),
            };
            extra.push_str(&format!("\n[plugins.{name}.connections]\nadmin = \"{connection}\"\n"));
        }
        if names.contains(&"rabbitmq") {
            extra.push_str("\n[plugins.rabbitmq.config]\namqp_host = \"127.0.0.1\"\namqp_port = 5672\n");
        }
        Self {
            plugins: names.iter().map(|name| (name.to_string(), wasm(name))).collect(),
            extra_config: extra,
            runtime: String::new(),
        }
    }
}

/// A running `wasm-broker serve`; killed when dropped.
pub struct TestBroker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub base_url: String,
    port: u16,
    client: reqwest::Client,
}

impl TestBroker {
    pub async fn start(setup: BrokerSetup) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        for (stem, source) in &setup.plugins {
            std::fs::copy(source, plugin_dir.join(format!("{stem}.wasm"))).expect("copy plugin");
        }
        let port = free_port();
        // One compile cache for all tests: plugins compile once per run.
        let cache = repo_root().join("target/test-compile-cache");
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[auth]
username = "{USERNAME}"
password = "{PASSWORD}"

[state]
path = "state/broker.db"

[runtime]
plugin_dir = "plugins"
cache_dir = "{cache}"
{runtime}
{extra}
"#,
            cache = cache.display(),
            runtime = setup.runtime,
            extra = setup.extra_config,
        );
        std::fs::write(dir.path().join("broker.toml"), config).expect("write broker.toml");
        let mut broker = Self {
            child: None,
            dir,
            base_url: format!("http://127.0.0.1:{port}"),
            port,
            client: reqwest::Client::new(),
        };
        broker.spawn().await;
        broker
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
    /// until it serves.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(broker_binary())
            .args(["serve", "--config"])
            .arg(self.dir.path().join("broker.toml"))
            .env("RUST_LOG", "info,wasm_broker=debug")
            .env_remove("WASM_BROKER_USERNAME")
            .env_remove("WASM_BROKER_PASSWORD")
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start wasm-broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("wasm-broker exited with {status} before serving:\n{}", self.logs());
            }
            let ready = self.client.get(format!("{}/healthz", self.base_url)).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "wasm-broker did not serve within 120 s:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no graceful shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Appends a line to the log (to mark test phases).
    pub fn note(&self, text: &str) {
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(self.log_path()) {
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
        self.client.request(method, format!("{}{path}", self.base_url))
    }

    pub async fn catalog(&self) -> Value {
        json(self.osb(Method::GET, "/v2/catalog").send().await.expect("catalog request")).await.1
    }
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
    let offering = services.iter().find(|s| s["name"] == service_name).unwrap_or_else(|| {
        panic!("no offering {service_name} in {catalog}");
    });
    let plans = offering["plans"].as_array().expect("plans array");
    let plan = plans.iter().find(|p| p["name"] == plan).unwrap_or_else(|| panic!("no plan {plan} in {offering}"));
    (offering["id"].as_str().expect("id").to_owned(), plan["id"].as_str().expect("plan id").to_owned())
}

/// A fresh id, unique per test run.
pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{nanos:x}-{}", std::process::id())
}
