//! Large plugins: the Python example (componentize-py, about 18 MiB)
//! dropped into an empty compile cache, beside a Rust plugin doing the same
//! work (`plugins/redis`: both answer a provision with one Redis `PING`).
//! For each compiler: the time from `exec` of the broker to the Python
//! plugin's first provision answered; the broker's RSS once loaded against
//! a warm restart's (same compile cache); and the provision call p50 of
//! each plugin, from the broker's own `plugin_call_duration_seconds` (the
//! plugin call alone, without the state writes around it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::load::Connection;
use crate::scenarios::{Plan, instance_path, provision_body};
use crate::servers::{ServerProcess, broker_command, encryption_key, free_address};
use crate::system;

const PYTHON: &str = "python-redis";
const RUST: &str = "redis";
/// Provisions per plugin for the call p50.
const CALLS: usize = 200;
const REDIS: &str = "127.0.0.1:6379";

pub struct LargePlugin {
    pub compiler: &'static str,
    /// From `exec` to the Python plugin's first provision answered 201,
    /// with an empty compile cache.
    pub first_call: Duration,
    pub loaded_kib: u64,
    /// The same broker restarted on the filled cache, after its first call.
    pub warm_kib: u64,
    pub python_call_us: f64,
    pub rust_call_us: f64,
}

/// Where the plugins are, or why the section cannot run.
pub fn plugins(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let python = root.join("plugins/examples/dist/python-redis.wasm");
    let rust = root.join("plugins/dist/redis.wasm");
    for file in [&python, &rust] {
        if !file.is_file() {
            return Err(format!(
                "{} is missing (cargo xtask build-plugins builds it)",
                file.display()
            ));
        }
    }
    if std::net::TcpStream::connect(REDIS).is_err() {
        return Err(format!("no Redis answers on {REDIS}"));
    }
    Ok((python, rust))
}

pub async fn measure(
    broker: &Path,
    (python, rust): &(PathBuf, PathBuf),
    dir: &Path,
    compiler: &'static str,
) -> anyhow::Result<LargePlugin> {
    let run_dir = dir.join(compiler);
    std::fs::create_dir_all(run_dir.join("plugins"))?;
    std::fs::copy(
        python,
        run_dir.join("plugins").join(format!("{PYTHON}.wasm")),
    )?;
    std::fs::copy(rust, run_dir.join("plugins").join(format!("{RUST}.wasm")))?;
    let address = free_address()?;
    let config = run_dir.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "{address}"
[auth]
username = "{user}"
password = "{password}"
[state]
path = "state/broker.db"
encryption_key = "{key}"
[runtime]
plugin_dir = "plugins"
cache_dir = "compiled"
compiler = "{compiler}"
[connections.redis]
kind = "redis"
url = "redis://{REDIS}"
[plugins.{PYTHON}.connections]
admin = "redis"
[plugins.{RUST}.connections]
admin = "redis"
"#,
            user = crate::servers::USERNAME,
            password = crate::servers::PASSWORD,
            key = encryption_key(),
        ),
    )?;

    let start = async |log: &str| {
        ServerProcess::start(broker_command(broker, &config), address, run_dir.join(log)).await
    };
    // Empty cache: from exec to the first provision the Python plugin answers.
    let started = Instant::now();
    let (server, _) = start("cold.log").await?;
    let mut connection = Connection::open(&server.endpoint).await?;
    let plans = plans(&mut connection).await?;
    let python_plan = plan_of(&plans, PYTHON)?;
    provision(&mut connection, &python_plan, "first").await?;
    let first_call = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded_kib = system::resident_kib(server.pid()).context("reading the broker's RSS")?;
    drop(connection);
    drop(server);

    // Warm: the same broker, its code from the cache.
    let (server, _) = start("warm.log").await?;
    let mut connection = Connection::open(&server.endpoint).await?;
    provision(&mut connection, &python_plan, "warm").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warm_kib = system::resident_kib(server.pid()).context("reading the broker's RSS")?;
    let rust_plan = plan_of(&plans, RUST)?;
    for call in 0..CALLS {
        provision(&mut connection, &python_plan, &format!("py-{call}")).await?;
        provision(&mut connection, &rust_plan, &format!("rs-{call}")).await?;
    }
    let (status, metrics) = connection.send(Method::GET, "/metrics", None).await?;
    ensure!(status == StatusCode::OK, "/metrics answered {status}");
    let metrics = String::from_utf8_lossy(&metrics);
    Ok(LargePlugin {
        compiler,
        first_call,
        loaded_kib,
        warm_kib,
        python_call_us: provision_p50_us(&metrics, PYTHON)?,
        rust_call_us: provision_p50_us(&metrics, RUST)?,
    })
}

async fn plans(connection: &mut Connection) -> anyhow::Result<Value> {
    let (status, body) = connection.send(Method::GET, "/v2/catalog", None).await?;
    ensure!(status == StatusCode::OK, "the catalog answered {status}");
    Ok(serde_json::from_slice(&body)?)
}

/// The first plan of the offering named `name`.
fn plan_of(catalog: &Value, name: &str) -> anyhow::Result<Plan> {
    let services = catalog["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some(service) = services.iter().find(|service| service["name"] == name) else {
        bail!("no offering {name} in the catalog: {catalog}");
    };
    let (Some(service_id), Some(plan_id)) =
        (service["id"].as_str(), service["plans"][0]["id"].as_str())
    else {
        bail!("offering {name} without an id or a plan: {service}");
    };
    Ok(Plan {
        service_id: service_id.to_owned(),
        plan_id: plan_id.to_owned(),
    })
}

async fn provision(connection: &mut Connection, plan: &Plan, label: &str) -> anyhow::Result<()> {
    let id = format!("large-{label}-{}", uuid_like());
    let (status, body) = connection
        .send(Method::PUT, &instance_path(&id), Some(provision_body(plan)))
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "provision answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// Distinct across runs that share a state store (the warm restart).
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{nanos:x}")
}

/// `plugin_call_duration_seconds{plugin,operation="provision",quantile="0.5"}`.
fn provision_p50_us(metrics: &str, plugin: &str) -> anyhow::Result<f64> {
    let wanted = [
        format!("plugin=\"{plugin}\""),
        "operation=\"provision\"".to_owned(),
        "quantile=\"0.5\"".to_owned(),
    ];
    metrics
        .lines()
        .filter(|line| line.starts_with("plugin_call_duration_seconds{"))
        .find(|line| wanted.iter().all(|part| line.contains(part.as_str())))
        .and_then(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .map(|seconds| seconds * 1e6)
        .with_context(|| format!("no provision p50 of {plugin} in /metrics"))
}
