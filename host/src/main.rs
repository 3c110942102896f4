//! `wasm-broker`: the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use wasm_broker::broker::Broker;
use wasm_broker::config::{Config, parse_api_version};
use wasm_broker::osb::{self, GuardConfig};
use wasm_broker::runtime::PluginRuntime;
use wasm_broker::state::StateStore;

/// An Open Service Broker API v2.17 host whose services are WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The broker configuration file.
    #[arg(long, short, global = true, env = "WASM_BROKER_CONFIG", default_value = "broker.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OSB API (and load, and watch, the plugin directory).
    Serve {
        /// Listen address, overriding [server] listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let config = Config::load(&cli.config).with_context(|| format!("loading {}", cli.config.display()))?;
    match cli.command {
        Command::Serve { listen } => serve(config, listen).await,
    }
}

async fn serve(config: Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let store = StateStore::open(&config.state).await.context("opening the state store")?;
    let interrupted = store
        .fail_interrupted_operations("the broker stopped while this operation was running; it did not finish")
        .await
        .context("recovering operations interrupted by the last shutdown")?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "marked operations cut short by the last shutdown as failed");
    }
    let runtime = PluginRuntime::start(&config, store.clone()).await.context("starting the plugin runtime")?;
    let broker = Arc::new(Broker::new(runtime, store));

    let min_version = parse_api_version(&config.server.min_api_version).context("[server] min_api_version")?;
    let guard = GuardConfig::new(
        &config.auth.username,
        &config.auth.password,
        min_version,
        config.server.missing_version_status,
    );
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let app = osb::router(broker, guard, config.server.max_body_bytes, Some(metrics));
    let address = listen.unwrap_or(config.server.listen);
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving the Open Service Broker API v2.17");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")?;
    Ok(())
}

/// Stops accepting on Ctrl-C or SIGTERM and lets requests in flight finish.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
