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
use wasm_broker::state::inventory::{InstanceFilter, PurgeOutcome, StatusFilter};
use wasm_broker::lifecycle::ResourceStatus;
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
    /// Read the service instances in the state store (safe while the broker serves).
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// Forget a stuck service instance and its bindings, WITHOUT calling the plugin: its backend
    /// resources (databases, users, ...) are NOT deleted.
    #[command(long_about = PURGE_HELP)]
    Purge {
        /// The instance id, as the platform sent it.
        id: String,
        /// Do not ask for confirmation (for scripts). Without it, purge needs a terminal.
        #[arg(long)]
        yes: bool,
        /// Why, recorded in the instance's operation history with the purge.
        #[arg(long)]
        reason: Option<String>,
    },
}

const PURGE_HELP: &str = "\
Forget a stuck service instance: remove its record and the records of its bindings from the state
store, without calling the plugin. Use it when the platform and the broker disagree for good, for
example when an operation can never finish or the plugin that served the instance is gone.

What is NOT deleted: everything the instance has in its backend (databases, users, queues, ...) and
the credentials its bindings handed out, which stay valid. Remove those by hand.

Afterwards the broker answers for the id as for one it never saw: fetch and last_operation 404,
deprovision 410 Gone, and the platform can provision the same id again. A `purge` entry is appended
to the instance's operation history (`wasm-broker instances show ID`), with --reason if given.

purge lists what it will remove and asks you to type the instance id; --yes skips that, and
without a terminal (a script, a pipe) purge refuses to run unless --yes is given.

A broker may keep serving from the same store meanwhile: the purge is one transaction, and it goes
ahead only if the instance and its bindings are still exactly as listed when you confirmed. An
operation the broker is running on the instance at that moment finishes without a record to write
to, so what it creates is not recorded: prefer to purge when nothing is under way.";

#[derive(Subcommand)]
enum InstancesCommand {
    /// A table of instances, newest first: id, service, plan, status, last operation, times.
    List {
        /// Only instances of this service (its catalog name, or its id).
        #[arg(long)]
        service: Option<String>,
        /// Only instances in this status (deleted ones are hidden unless asked for).
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Include the records of deleted instances, kept so last_operation can report the deletion.
        #[arg(long, conflicts_with = "status")]
        all: bool,
        /// Show at most this many (0: all of them).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One instance: its record, its bindings (never their credentials) and its operation history.
    Show {
        /// The instance id, as the platform sent it.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    Creating,
    Ready,
    Failed,
    Deleted,
}

impl From<StatusArg> for ResourceStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Creating => ResourceStatus::Creating,
            StatusArg::Ready => ResourceStatus::Ready,
            StatusArg::Failed => ResourceStatus::Failed,
            StatusArg::Deleted => ResourceStatus::Deleted,
        }
    }
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
    // The store commands talk to the operator on stderr: only what goes
    // wrong belongs between their lines.
    let default_level = match cli.command {
        Command::Instances(_) | Command::Purge { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        // Logs on stderr, so commands that print results keep stdout clean.
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or journal
        // would keep the escape codes, and styling every span field was a
        // sixth of the cost of serving the catalog.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
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
        Command::Instances(InstancesCommand::List {
            service,
            status,
            all,
            limit,
            json,
        }) => {
            let status = match (status, all) {
                (Some(status), _) => StatusFilter::Only(status.into()),
                (None, true) => StatusFilter::Any,
                (None, false) => StatusFilter::NotDeleted,
            };
            list_instances(config()?, service.as_deref(), status, limit, json).await
        }
        Command::Instances(InstancesCommand::Show { id, json }) => {
            show_instance(config()?, &id, json).await
        }
        Command::Purge { id, yes, reason } => purge(config()?, &id, yes, reason.as_deref()).await,
    }
}

/// The store `instances` and `purge` work on: the one `serve` uses.
async fn open_store(config: &Config) -> anyhow::Result<StateStore> {
    admin::require_store(config)?;
    StateStore::open(&config.state)
        .await
        .context("opening the state store")
}

async fn list_instances(
    config: Config,
    service: Option<&str>,
    status: StatusFilter,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let catalog = admin::catalog_for_names(&config).await;
    let filter = InstanceFilter {
        service_id: service.map(|service| admin::service_id_of(&catalog, service)),
        status,
        limit: (limit > 0).then_some(limit),
    };
    let page = store
        .list_instances(&filter)
        .await
        .context("listing instances")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page)?);
    } else {
        print!("{}", admin::instances_table(&page, &catalog));
    }
    Ok(())
}

async fn show_instance(config: Config, id: &str, json: bool) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let Some(report) = admin::InstanceReport::load(&store, id).await? else {
        anyhow::bail!("{}", unknown_instance(&store, id).await?);
    };
    let catalog = admin::catalog_for_names(&config).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&catalog))?
        );
    } else {
        print!("{}", report.to_text(&catalog));
    }
    Ok(())
}

/// Why there is no instance `id`, with what its history still tells (a
/// purge leaves its trace there).
async fn unknown_instance(store: &StateStore, id: &str) -> anyhow::Result<String> {
    let history = store.instance_history(id).await?;
    Ok(match history.last() {
        Some(last) => format!(
            "there is no service instance {id:?} in the state store; its history ends with {} {} at {}",
            last.kind, last.phase, last.at
        ),
        None => format!(
            "there is no service instance {id:?} in the state store (`wasm-broker instances list` shows the ids)"
        ),
    })
}

async fn purge(config: Config, id: &str, yes: bool, reason: Option<&str>) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let Some(preview) = store.purge_preview(id).await? else {
        anyhow::bail!("{}", unknown_instance(&store, id).await?);
    };
    let catalog = admin::catalog_for_names(&config).await;
    eprint!("{}", admin::purge_warning(&preview, &catalog));
    if !yes {
        confirm_purge(id)?;
    }
    let description = admin::purge_description(&preview, reason);
    match store.purge_instance(&preview, &description).await? {
        PurgeOutcome::Purged { binding_ids } => {
            println!(
                "purged service instance {id} and {} binding record(s){}",
                binding_ids.len(),
                if binding_ids.is_empty() {
                    String::new()
                } else {
                    format!(": {}", binding_ids.join(", "))
                }
            );
            println!(
                "the plugin was not called: remove the instance's backend resources by hand; \
                 the purge is recorded in the operation history of {id}"
            );
            Ok(())
        }
        PurgeOutcome::Gone => anyhow::bail!("service instance {id} was purged meanwhile"),
        PurgeOutcome::Changed => anyhow::bail!(
            "service instance {id} or its bindings changed while you confirmed (a broker is working \
             on it): nothing was purged; run purge again to see the current state"
        ),
    }
}

/// Asks the operator to type the instance id. Refuses without a terminal:
/// a script must say --yes.
fn confirm_purge(id: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "refusing to purge without confirmation: there is no terminal to ask on. \
         Pass --yes to purge from a script."
    );
    eprint!("Type the instance id to purge it: ");
    std::io::stderr().flush()?;
    let mut typed = String::new();
    std::io::stdin().lock().read_line(&mut typed)?;
    anyhow::ensure!(
        typed.trim() == id,
        "nothing was purged: what you typed is not the instance id"
    );
    Ok(())
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
