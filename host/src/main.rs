//! `wasm-broker`: the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;

use wasm_broker::admin;
use wasm_broker::broker::Broker;
use wasm_broker::config::{Config, StateBackend, TlsConfig, parse_api_version};
use wasm_broker::osb::{self, GuardConfig};
use wasm_broker::runtime::PluginRuntime;
use wasm_broker::secrets::{EncryptionKey, generate_key};
use wasm_broker::state::StateStore;

/// Where `rotate-key` reads the new key when no file is given: an argument
/// would show in `ps`.
const NEW_KEY_ENV: &str = "WASM_BROKER_NEW_ENCRYPTION_KEY";

/// An Open Service Broker API v2.17 host whose services are WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The broker configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "WASM_BROKER_CONFIG",
        default_value = "broker.toml"
    )]
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
    /// Print the merged catalog the plugin directory yields, as `GET /v2/catalog` would serve it.
    Catalog,
    /// Inspect plugins without serving them.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print a new random encryption key (base64) for WASM_BROKER_ENCRYPTION_KEY or [state] encryption_key.
    GenerateKey,
    /// Re-encrypt every stored credential with a new key, read from WASM_BROKER_NEW_ENCRYPTION_KEY or
    /// --new-key-file, decrypting with the configured keys. Then start the broker with the new key.
    RotateKey {
        /// File holding the new key in base64.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// One line per file in the plugin directory: name, version, WIT version, services, and why a plugin was refused.
    List,
    /// Validate a .wasm against the WIT contract and the catalog rules; exits non-zero if the broker would refuse it.
    Check {
        /// The plugin file.
        file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        // Logs on stderr, so commands that print results keep stdout clean.
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config =
        || Config::load(&cli.config).with_context(|| format!("loading {}", cli.config.display()));
    match cli.command {
        Command::Serve { listen } => serve(config()?, listen).await,
        Command::Catalog => {
            let config = config()?;
            let runtime = admin::load_plugins(&config, &config.runtime.plugin_dir).await?;
            let catalog: serde_json::Value = serde_json::from_slice(&runtime.catalog().json)?;
            println!("{}", serde_json::to_string_pretty(&catalog)?);
            Ok(())
        }
        Command::Plugins(PluginsCommand::List) => {
            let config = config()?;
            let runtime = admin::load_plugins(&config, &config.runtime.plugin_dir).await?;
            for status in runtime.plugins() {
                println!("{}", admin::describe_status(&status));
            }
            Ok(())
        }
        Command::Plugins(PluginsCommand::Check { file }) => {
            let status = admin::check_plugin(&config()?, &file).await?;
            println!("{}", admin::describe_status(&status));
            match status.error {
                Some(reason) => anyhow::bail!("{} would be refused: {reason}", file.display()),
                None => Ok(()),
            }
        }
        Command::GenerateKey => {
            println!("{}", generate_key()?.expose_secret());
            Ok(())
        }
        Command::RotateKey { new_key_file } => rotate_key(config()?, new_key_file.as_deref()).await,
    }
}

async fn rotate_key(config: Config, new_key_file: Option<&Path>) -> anyhow::Result<()> {
    let (text, source) = match new_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (SecretString::from(text), path.display().to_string())
        }
        None => {
            let text = std::env::var(NEW_KEY_ENV).with_context(|| {
                format!("the new key goes in {NEW_KEY_ENV} or a file named by --new-key-file")
            })?;
            (SecretString::from(text), NEW_KEY_ENV.to_owned())
        }
    };
    let new_key = EncryptionKey::from_base64(&text, &source)?;
    let path = &config.state.path;
    anyhow::ensure!(
        config.state.backend != StateBackend::Sqlite || path.exists(),
        "there is no state store at {}: is --config right?",
        path.display()
    );
    let key_id = new_key.id();
    let rotated = StateStore::rotate_encryption_key(&config.state, new_key)
        .await
        .context("re-encrypting the stored credentials")?;
    println!("re-encrypted the credentials of {rotated} service binding(s) with key {key_id}");
    Ok(())
}

async fn serve(config: Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let store = StateStore::open(&config.state)
        .await
        .context("opening the state store")?;
    let interrupted = store
        .start_serving("the broker stopped while this operation was running; it did not finish")
        .await
        .context("recovering operations interrupted by a broker that stopped")?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "marked operations cut short by a broker that stopped as failed"
        );
    }
    let runtime = PluginRuntime::start(&config, store.clone())
        .await
        .context("starting the plugin runtime")?;
    let broker = Arc::new(Broker::new(runtime, store));

    let min_version =
        parse_api_version(&config.server.min_api_version).context("[server] min_api_version")?;
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
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    if let Some(tls) = &config.server.tls {
        return serve_https(listener, app, tls).await;
    }
    tracing::info!(address = %listener.local_addr()?, "serving the Open Service Broker API v2.17");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    Ok(())
}

/// `[server.tls]`: HTTPS only (rustls); plain HTTP to the port fails the handshake.
async fn serve_https(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: &TlsConfig,
) -> anyhow::Result<()> {
    let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .with_context(|| {
            format!(
                "loading the TLS certificate {} and key {}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    let address = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.graceful_shutdown(None);
    });
    tracing::info!(%address, "serving the Open Service Broker API v2.17 over HTTPS");
    axum_server::from_tcp_rustls(listener.into_std()?, rustls)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .context("serving HTTPS")
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
