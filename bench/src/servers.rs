//! The two servers under load, each its own process: the real
//! `wasm-broker serve` with a generated broker.toml, and the baseline (this
//! binary again, see [`crate::baseline`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use hyper::{Method, StatusCode};

use crate::load::{Connection, Endpoint};
use crate::scenarios::Plan;

pub const USERNAME: &str = "bench";
pub const PASSWORD: &str = "bench-secret";

/// How long a server may take to be ready (`/readyz`).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The key binding credentials are sealed with, in both servers.
pub fn encryption_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(b"benchmark-key-not-secret-32bytes")
}

pub fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A copy of the no-op plugin (tests/fixtures/bench_noop) under its own
/// file name, with its own catalog ids set through its config table.
#[derive(Debug, Clone)]
pub struct NoopCopy {
    pub stem: String,
    pub offering_name: String,
    pub plan: Plan,
}

impl NoopCopy {
    pub fn numbered(number: usize) -> Self {
        Self {
            stem: format!("noop-{number:02}"),
            offering_name: format!("bench-noop-{number:02}"),
            plan: Plan {
                service_id: format!("5e7a1c00-0000-4000-8000-{number:012}"),
                plan_id: format!("5e7a1c00-0000-4000-9000-{number:012}"),
            },
        }
    }

    fn config_section(&self) -> String {
        format!(
            "\n[plugins.{stem}.config]\nservice_id = \"{service}\"\nplan_id = \"{plan}\"\noffering_name = \"{name}\"\n",
            stem = self.stem,
            service = self.plan.service_id,
            plan = self.plan.plan_id,
            name = self.offering_name,
        )
    }
}

/// Writes `dir/broker.toml` serving the plugins in `dir/plugins` (to be
/// filled by the caller), state in `dir/state`, compiled code in `cache_dir`.
pub fn write_broker_config(
    dir: &Path,
    address: SocketAddr,
    cache_dir: &Path,
    copies: &[NoopCopy],
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("plugins"))?;
    let mut config = format!(
        r#"
[server]
listen = "{address}"

[auth]
username = "{USERNAME}"
password = "{PASSWORD}"

[state]
path = "state/broker.db"
encryption_key = "{key}"

[runtime]
plugin_dir = "plugins"
cache_dir = "{cache}"
"#,
        key = encryption_key(),
        cache = cache_dir.display(),
    );
    for copy in copies {
        config.push_str(&copy.config_section());
    }
    let path = dir.join("broker.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// `wasm-broker serve` for `config`, with no logging or key settings from
/// the caller's environment: the defaults an operator gets.
pub fn broker_command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command.args(["serve", "--config"]).arg(config);
    for variable in [
        "RUST_LOG",
        "WASM_BROKER_USERNAME",
        "WASM_BROKER_PASSWORD",
        "WASM_BROKER_ENCRYPTION_KEY",
        "WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS",
        "WASM_BROKER_CONFIG",
    ] {
        command.env_remove(variable);
    }
    command
}

/// A server process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub endpoint: std::sync::Arc<Endpoint>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `command` (which must serve `/readyz` on `address`), logging
    /// to `log`, and waits until it is ready. Returns the process and how
    /// long it took from spawn to ready. Ready, not only answering: the
    /// broker listens before it loads its plugins, and `/healthz` answers
    /// long before the catalog does.
    pub async fn start(
        mut command: Command,
        address: SocketAddr,
        log: PathBuf,
    ) -> anyhow::Result<(Self, Duration)> {
        let output =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdout(Stdio::from(output.try_clone()?))
            .stderr(Stdio::from(output))
            .stdin(Stdio::null());
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut server = Self {
            child,
            endpoint: Endpoint::new(address, USERNAME, PASSWORD)?,
            log,
        };
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{command:?} exited with {status} before serving:\n{}",
                    server.log_tail()
                );
            }
            if server.is_ready().await {
                return Ok((server, started.elapsed()));
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{command:?} did not serve within {START_TIMEOUT:?}:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn is_ready(&self) -> bool {
        let Ok(mut connection) = Connection::open(&self.endpoint).await else {
            return false;
        };
        matches!(
            connection.send(Method::GET, "/readyz", None).await,
            Ok((StatusCode::OK, _))
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the server's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Best effort: the process may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
