//! `serve`: the OSB API over HTTP or HTTPS, from the state store and the
//! plugin directory the configuration names, until Ctrl-C or SIGTERM. The
//! listener opens before the plugins load (`osb::listener` holds the
//! connection limits of `[server]`).
//! broker.toml stays live: a change of the file, or SIGHUP, applies its
//! connections, plugin sections and call limits without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use wasm_broker::broker::Broker;
use wasm_broker::capabilities::probe;
use wasm_broker::config::{Config, TlsConfig, parse_api_version};
use wasm_broker::osb::listener::{self, ConnectionLimits};
use wasm_broker::osb::{self, GuardConfig};
use wasm_broker::runtime::{PluginRuntime, RuntimeError};
use wasm_broker::state::StateStore;

/// `config` was loaded from `config_path`, which is watched from now on.
pub async fn serve(
    config: Config,
    config_path: PathBuf,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
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
    for plugin in config.plugins.keys() {
        let revealed = config.revealed_to(plugin);
        if !revealed.is_empty() {
            tracing::warn!(
                plugin = %plugin,
                connections = %revealed.join(", "),
                "THIS PLUGIN HOLDS ADMIN CREDENTIALS: its grants set reveal_credentials = true"
            );
        }
    }
    // The plugins load after the listener opens: /healthz answers at once,
    // /readyz and the OSB calls say "loading" until they are loaded.
    let runtime =
        PluginRuntime::new(&config, store.clone()).context("starting the plugin runtime")?;
    let broker = Arc::new(Broker::new(runtime.clone(), store));

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
    let tls = match &config.server.tls {
        Some(tls) => Some(tls_acceptor(tls).await?),
        None => None,
    };
    let address = listen.unwrap_or(config.server.listen);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let over = if tls.is_some() { "HTTPS" } else { "HTTP" };
    tracing::info!(
        address = %listener.local_addr()?,
        "serving the Open Service Broker API v2.17 over {over}"
    );

    // Work that starts once the listener is open. The grants' probe runs in
    // the background: a backend slow to answer delays no request.
    tokio::spawn(probe_grants(config.clone()));
    let loading = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.load().await }
    });
    // Kept until serving ends: dropping it stops applying broker.toml.
    let _config_watch = runtime.watch_config(config_path);

    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
        max_connections: config.server.max_connections,
    };
    tokio::select! {
        () = listener::serve(listener, app, tls, limits, shutdown_signal()) => Ok(()),
        failed = loading_failed(loading) => failed,
    }
}

/// Completes only if loading the plugins fails (the plugin directory cannot
/// be read): then the broker stops, as it would have before listening.
async fn loading_failed(
    loading: tokio::task::JoinHandle<Result<(), RuntimeError>>,
) -> anyhow::Result<()> {
    match loading.await {
        Ok(Ok(())) => std::future::pending().await,
        Ok(Err(error)) => Err(error).context("loading the plugins"),
        Err(error) => Err(anyhow::anyhow!(
            "loading the plugins did not complete: {error}"
        )),
    }
}

/// Warns about every grant of an account with rights no plugin needs
/// (root, a superuser, FILE, SUPER, Redis CONFIG ...).
async fn probe_grants(config: Config) {
    match probe::probe_config(&config, None).await {
        Ok(reports) => probe::log_reports(&reports),
        Err(error) => tracing::info!(%error, "could not check the rights of the granted accounts"),
    }
}

/// `[server.tls]`: HTTPS only (rustls); plain HTTP to the port fails the handshake.
async fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .with_context(|| {
            format!(
                "loading the TLS certificate {} and key {}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(rustls.get_inner()))
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
