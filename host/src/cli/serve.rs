//! `serve`: the OSB API over HTTP or HTTPS, from the state store and the
//! plugin directory the configuration names, until Ctrl-C or SIGTERM.
//! broker.toml stays live: a change of the file, or SIGHUP, applies its
//! connections, plugin sections and call limits without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use wasm_broker::broker::Broker;
use wasm_broker::capabilities::probe;
use wasm_broker::config::{Config, TlsConfig, parse_api_version};
use wasm_broker::osb::{self, GuardConfig};
use wasm_broker::runtime::PluginRuntime;
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
    let runtime = PluginRuntime::start(&config, store.clone())
        .await
        .context("starting the plugin runtime")?;
    // Kept until serving ends: dropping it stops applying broker.toml.
    let _config_watch = runtime.watch_config(config_path);
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
    // In the background: a backend slow to answer delays no request.
    tokio::spawn(probe_grants(config.clone()));
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

/// Warns about every grant of an account with rights no plugin needs
/// (root, a superuser, FILE, SUPER, Redis CONFIG ...).
async fn probe_grants(config: Config) {
    match probe::probe_config(&config, None).await {
        Ok(reports) => probe::log_reports(&reports),
        Err(error) => tracing::info!(%error, "could not check the rights of the granted accounts"),
    }
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
