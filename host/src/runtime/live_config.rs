//! broker.toml is live: `[connections.*]`, `[plugins.*]` and the per-call
//! limits of `[runtime]` apply without a restart, when the file changes and
//! on SIGHUP. The new file is validated whole (parsed, checked as `serve`
//! checks it at start, its connections built); if anything is wrong the
//! broker keeps its previous configuration and logs why. Otherwise every
//! plugin is loaded again with its new grants, limits and settings (its
//! compiled code is reused) and the new set swapped in at once; calls under
//! way finish with the plugin, and so the grants and connections, they
//! started with. Unchanged connections keep their pools.
//!
//! What cannot change while the broker runs (listen address, TLS files,
//! auth, the state store, the plugin and cache directories, the instance
//! pool) is named in a warning when the file differs from what the broker
//! started with, and takes effect at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

use super::engine::{MIB, largest_memory_limit};
use super::loader::Loader;
use super::plugin_set::PluginSet;
use crate::capabilities::connections::{ConnectionChanges, Connections};
use crate::capabilities::probe;
use crate::config::{Config, ConfigError};

/// An editor's save is several events (write a temporary file, rename it
/// over the old one, change its mode); waiting for this much quiet reads
/// the finished file once.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The configuration plugins are loaded with now.
pub struct LiveSettings {
    pub config: Config,
    /// The connections of `config`, shared by the plugins loaded with it.
    pub connections: Arc<Connections>,
    /// Counts the changes applied since start: a plugin loaded under an
    /// older one is loaded again.
    pub generation: u64,
}

/// Why a changed broker.toml was not applied. Never holds a URL or secret.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot rescan the plugin directory: {0}")]
    Scan(String),
}

/// What applying broker.toml did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing that can change live differs from the running configuration.
    Unchanged,
    /// Plugins were loaded again with the new configuration.
    Reloaded(ConnectionChanges),
}

/// Why a reload runs, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    FileChanged,
    Hangup,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Self::FileChanged => "file changed",
            Self::Hangup => "SIGHUP",
        }
    }
}

/// Reads, validates and applies the configuration file at `path`. An
/// unchanged file reloads nothing unless `trigger` is SIGHUP (which also
/// retries plugins that failed to load again).
pub async fn apply(
    loader: &Loader,
    plugins: &ArcSwap<PluginSet>,
    path: &Path,
    trigger: Trigger,
) -> Result<Applied, ReloadError> {
    let started = Instant::now();
    let config = Config::load(path).map_err(|error| ReloadError::Invalid(redacted(&error)))?;
    let _turn = loader.reload_turn().await;
    let previous = loader.live();
    if matches!(trigger, Trigger::FileChanged) && !live_part_differs(&previous.config, &config) {
        warn_fixed(loader, &config);
        return Ok(Applied::Unchanged);
    }
    let (connections, changes) = previous
        .connections
        .reconfigured(&config.connections)
        .map_err(|error| ReloadError::Invalid(error.to_string()))?;
    warn_fixed(loader, &config);
    loader.set_live(Arc::new(LiveSettings {
        config,
        connections: Arc::new(connections),
        generation: previous.generation + 1,
    }));
    let current = plugins.load_full();
    match loader.scan(&current).await {
        Ok(next) => plugins.store(Arc::new(next)),
        Err(error) => {
            loader.set_live(previous);
            return Err(ReloadError::Scan(error.to_string()));
        }
    }
    warn_revealed(&previous.config, &loader.live().config);
    tokio::spawn({
        let config = loader.live().config.clone();
        async move {
            if let Ok(reports) = probe::probe_config(&config, None).await {
                probe::log_reports(&reports);
            }
        }
    });
    tracing::info!(
        trigger = trigger.label(),
        connections_added = %changes.added.join(", "),
        connections_changed = %changes.changed.join(", "),
        connections_removed = %changes.removed.join(", "),
        elapsed_ms = started.elapsed().as_millis(),
        "broker.toml applied: plugins loaded again with their new grants, limits and settings"
    );
    Ok(Applied::Reloaded(changes))
}

/// Logs the settings of `config` that differ from the ones the broker
/// started with and cannot change while it runs.
fn warn_fixed(loader: &Loader, config: &Config) {
    let pool_bytes = largest_memory_limit(loader.started());
    let fixed = fixed_changes(loader.started(), config, pool_bytes);
    if !fixed.is_empty() {
        tracing::warn!(
            settings = %fixed.join("; "),
            "broker.toml changes settings that apply only after a restart; the broker keeps running with the values it started with"
        );
    }
}

/// Says as loudly as `serve` does at start when a change makes a plugin
/// hold admin credentials (`reveal_credentials = true` on a connection it
/// is granted) that it did not hold before.
fn warn_revealed(previous: &Config, now: &Config) {
    for plugin in now.plugins.keys() {
        let revealed = now.revealed_to(plugin);
        if !revealed.is_empty() && revealed != previous.revealed_to(plugin) {
            tracing::warn!(
                plugin = %plugin,
                connections = %revealed.join(", "),
                "THIS PLUGIN HOLDS ADMIN CREDENTIALS: its grants set reveal_credentials = true"
            );
        }
    }
}

/// Whether anything that applies live differs: connections, plugin
/// sections, and the per-call limits of `[runtime]`.
pub fn live_part_differs(old: &Config, new: &Config) -> bool {
    let limits = |config: &Config| {
        (
            config.runtime.memory_limit_mb,
            config.runtime.call_timeout_ms,
            config.runtime.max_host_call_bytes,
            config.runtime.catalog_timeout_ms,
        )
    };
    old.connections != new.connections || old.plugins != new.plugins || limits(old) != limits(new)
}

/// The settings that `new` changes but a running broker cannot, by name
/// (never their values: some are secrets). `pool_bytes` is the memory each
/// instance slot was sized for at start: a larger limit cannot take effect.
pub fn fixed_changes(started: &Config, new: &Config, pool_bytes: u64) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    let (old_server, new_server) = (&started.server, &new.server);
    check("[server] listen", old_server.listen != new_server.listen);
    check(
        "[server] min_api_version",
        old_server.min_api_version != new_server.min_api_version,
    );
    check(
        "[server] missing_version_status",
        old_server.missing_version_status != new_server.missing_version_status,
    );
    check(
        "[server] max_body_bytes",
        old_server.max_body_bytes != new_server.max_body_bytes,
    );
    check("[server.tls]", old_server.tls != new_server.tls);
    let limits = |s: &crate::config::ServerConfig| {
        (
            s.header_read_timeout_ms,
            s.idle_timeout_ms,
            s.max_connections,
        )
    };
    check(
        "[server] connection limits",
        limits(old_server) != limits(new_server),
    );
    check(
        "[auth] username",
        started.auth.username != new.auth.username,
    );
    check(
        "[auth] password",
        started.auth.password != new.auth.password,
    );

    let (old_state, new_state) = (&started.state, &new.state);
    check("[state] backend", old_state.backend != new_state.backend);
    check("[state] path", old_state.path != new_state.path);
    check("[state] url", !same_secret(&old_state.url, &new_state.url));
    check("[state] url_env", old_state.url_env != new_state.url_env);
    check(
        "[state] replica_lease_seconds",
        old_state.replica_lease_seconds != new_state.replica_lease_seconds,
    );
    check(
        "[state] encryption_key",
        !same_secret(&old_state.encryption_key, &new_state.encryption_key),
    );
    check(
        "[state] encryption_key_env",
        old_state.encryption_key_env != new_state.encryption_key_env,
    );
    let keys = |state: &crate::config::StateConfig| {
        state
            .previous_encryption_keys
            .iter()
            .map(|key| key.expose_secret().to_owned())
            .collect::<Vec<_>>()
    };
    check(
        "[state] previous_encryption_keys",
        keys(old_state) != keys(new_state),
    );
    check(
        "[state] previous_encryption_keys_env",
        old_state.previous_encryption_keys_env != new_state.previous_encryption_keys_env,
    );

    let (old_runtime, new_runtime) = (&started.runtime, &new.runtime);
    check(
        "[runtime] plugin_dir",
        old_runtime.plugin_dir != new_runtime.plugin_dir,
    );
    check(
        "[runtime] cache_dir",
        old_runtime.cache_dir != new_runtime.cache_dir,
    );
    check(
        "[runtime] max_concurrent_instances",
        old_runtime.max_concurrent_instances != new_runtime.max_concurrent_instances,
    );
    check(
        "[runtime] max_total_memory_mb",
        old_runtime.max_total_memory_mb != new_runtime.max_total_memory_mb,
    );
    check(
        "[runtime] compiler",
        old_runtime.compiler != new_runtime.compiler,
    );
    check(
        "[runtime] compile_memory_mb",
        old_runtime.compile_memory_mb != new_runtime.compile_memory_mb,
    );
    if largest_memory_limit(new) > pool_bytes {
        let pool_mb = pool_bytes / MIB;
        let above = |limit_mb: u64| limit_mb.saturating_mul(MIB) > pool_bytes;
        if above(new_runtime.memory_limit_mb) {
            changed.push(format!(
                "[runtime] memory_limit_mb above the {pool_mb} MiB the instance pool was sized for at start"
            ));
        }
        for (plugin, section) in &new.plugins {
            if section.limits.memory_limit_mb.is_some_and(above) {
                changed.push(format!(
                    "[plugins.{plugin}] memory_limit_mb above the {pool_mb} MiB the instance pool was sized for at start"
                ));
            }
        }
    }
    changed
}

fn same_secret(old: &Option<SecretString>, new: &Option<SecretString>) -> bool {
    old.as_ref().map(ExposeSecret::expose_secret) == new.as_ref().map(ExposeSecret::expose_secret)
}

/// A configuration error for the log, without the text of the file: a
/// TOML error quotes the offending line, which may hold a password.
pub fn redacted(error: &ConfigError) -> String {
    match error {
        ConfigError::Parse { path, source } => {
            let at = source
                .span()
                .map(|span| format!(" at byte {}", span.start))
                .unwrap_or_default();
            format!(
                "{} is not valid broker.toml{at}: {}",
                path.display(),
                without_quoted(source.message())
            )
        }
        other => other.to_string(),
    }
}

/// `text` with what it quotes ("...") left out: serde quotes the values it
/// cannot use, and a value may be a secret.
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for character in text.chars() {
        match (character, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (_, false) => out.push(character),
            (_, true) => {}
        }
    }
    out
}

/// Stops watching when dropped.
pub struct ConfigWatch {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies `path` whenever it changes or the process gets SIGHUP, until
/// the returned watch is dropped. Editors and Kubernetes replace a file
/// (rename over it, or swap a `..data` symlink) rather than write it, so
/// the directory is watched and its events filtered for the file.
pub fn watch(loader: Arc<Loader>, plugins: Arc<ArcSwap<PluginSet>>, path: PathBuf) -> ConfigWatch {
    let (events, mut received) = mpsc::unbounded_channel();
    let watcher = watch_directory(&path, events)
        .inspect_err(|error| {
            tracing::error!(
                file = %path.display(),
                %error,
                "cannot watch broker.toml; send SIGHUP to apply a change"
            );
        })
        .ok();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; broker.toml changes apply only when the file changes");
            None
        }
    };
    let file_name = path.file_name().map(ToOwned::to_owned);
    let mut watching = watcher.is_some();
    let task = tokio::spawn(async move {
        loop {
            let trigger = tokio::select! {
                first = received.recv(), if watching => match first {
                    // Only when the watcher could not be set up: SIGHUP
                    // still works.
                    None => {
                        watching = false;
                        continue;
                    }
                    Some(first) => {
                        if !concerns(&first, file_name.as_deref()) {
                            continue;
                        }
                        // Only events on the file push the deadline: the
                        // directory may see other traffic all the time (a
                        // log file written or read next to broker.toml).
                        let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                        while let Ok(Some(event)) =
                            tokio::time::timeout_at(quiet_at, received.recv()).await
                        {
                            if concerns(&event, file_name.as_deref()) {
                                quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                            }
                        }
                        Trigger::FileChanged
                    }
                },
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(hangup) => hangup.recv().await,
                        None => std::future::pending().await,
                    }
                } => Trigger::Hangup,
                else => return,
            };
            match apply(&loader, &plugins, &path, trigger).await {
                Ok(Applied::Unchanged) => {
                    tracing::debug!(file = %path.display(), "broker.toml changed nothing that applies live")
                }
                Ok(Applied::Reloaded(_)) => {}
                Err(error) => tracing::error!(
                    file = %path.display(),
                    trigger = trigger.label(),
                    reason = %error,
                    "broker.toml not applied: the broker keeps serving its previous configuration"
                ),
            }
        }
    });
    ConfigWatch {
        _watcher: watcher,
        task,
    }
}

fn watch_directory(
    path: &Path,
    events: mpsc::UnboundedSender<notify::Result<Event>>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // Fails only once the runtime is gone; then nobody needs the event.
        let _ = events.send(event);
    })?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    watcher.watch(directory, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether a directory event may have changed the file named `file_name`:
/// an event on it, or on a Kubernetes `..data` symlink it resolves
/// through. Reads are ignored, so reading the file cannot trigger itself.
fn concerns(event: &notify::Result<Event>, file_name: Option<&std::ffi::OsStr>) -> bool {
    let Ok(event) = event else {
        // The watcher lost track (e.g. an overflowing queue): read to be sure.
        return true;
    };
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    event.paths.iter().any(|changed| {
        let name = changed.file_name();
        name.is_some() && (name == file_name || name == Some(std::ffi::OsStr::new("..data")))
    })
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn config(text: &str) -> Config {
        let config: Config = toml::from_str(text).expect("parses");
        config
    }

    const BASE: &str = r#"
[auth]
username = "u"
password = "p"
[connections.db]
kind = "mysql"
url = "mysql://root@127.0.0.1:3306"
[plugins.mysql.connections]
admin = "db"
"#;

    #[test]
    fn grants_connections_and_limits_apply_live() {
        let base = config(BASE);
        assert!(!live_part_differs(&base, &config(BASE)));
        for changed in [
            format!("{BASE}[plugins.redis.connections]\ncache = \"db\"\n"),
            BASE.replace("3306", "3307"),
            format!("{BASE}[plugins.mysql.config]\nx = 1\n"),
            format!("{BASE}[runtime]\ncall_timeout_ms = 1234\n"),
            format!("{BASE}[runtime]\nmax_host_call_bytes = 99\n"),
            format!("{BASE}[runtime]\nmemory_limit_mb = 32\n"),
        ] {
            assert!(
                live_part_differs(&base, &config(&changed)),
                "not seen as a live change: {changed}"
            );
        }
        // Settings that need a restart are not a live change.
        let restart_only = BASE.replace("password = \"p\"", "password = \"q\"");
        assert!(!live_part_differs(&base, &config(&restart_only)));
    }

    #[test]
    fn settings_that_need_a_restart_are_named_without_their_values() {
        let base = config(BASE);
        let pool = 64 * MIB;
        assert!(fixed_changes(&base, &config(BASE), pool).is_empty());
        let changed = config(&format!(
            "{}\n[server]\nlisten = \"127.0.0.1:9999\"\n[state]\npath = \"elsewhere.db\"\nencryption_key = \"new-secret-key\"\n\
             [runtime]\nplugin_dir = \"other\"\nmax_concurrent_instances = 3\ncall_timeout_ms = 5\n\
             compiler = \"cranelift\"\ncompile_memory_mb = 512\n",
            BASE.replace("password = \"p\"", "password = \"hunter2\"")
        ));
        let named = fixed_changes(&base, &changed, pool);
        assert_eq!(
            named,
            [
                "[server] listen",
                "[auth] password",
                "[state] path",
                "[state] encryption_key",
                "[runtime] plugin_dir",
                "[runtime] max_concurrent_instances",
                "[runtime] compiler",
                "[runtime] compile_memory_mb",
            ]
        );
        let text = named.join(" ");
        assert!(
            !text.contains("hunter2") && !text.contains("new-secret-key"),
            "{text}"
        );
    }

    #[test]
    fn a_memory_limit_beyond_the_pool_slots_is_named() {
        let base = config(BASE);
        let pool = largest_memory_limit(&base);
        let within = config(&format!("{BASE}[plugins.mysql]\nmemory_limit_mb = 32\n"));
        assert!(fixed_changes(&base, &within, pool).is_empty());
        let beyond = config(&format!(
            "{BASE}[plugins.mysql]\nmemory_limit_mb = 256\n[runtime]\nmemory_limit_mb = 128\n"
        ));
        assert_eq!(
            fixed_changes(&base, &beyond, pool),
            [
                "[runtime] memory_limit_mb above the 64 MiB the instance pool was sized for at start",
                "[plugins.mysql] memory_limit_mb above the 64 MiB the instance pool was sized for at start",
            ]
        );
    }

    #[test]
    fn parse_errors_do_not_quote_the_file() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("broker.toml");
        for text in [
            "[connections.db]\nkind = \"mysql\"\nurl = \"mysql://root:hunter2@db\n",
            "[connections.db]\nkind = \"mysql\"\nurl = \"mysql://db\"\nmax_connections = \"hunter2\"\n",
        ] {
            std::fs::write(&path, text).expect("write");
            let error = Config::load(&path).expect_err("invalid");
            let shown = redacted(&error);
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("not valid broker.toml"), "{shown}");
        }
    }

    #[test]
    fn only_events_on_the_file_or_a_kubernetes_swap_count() {
        let name = Some(std::ffi::OsStr::new("broker.toml"));
        let event = |kind: EventKind, path: &str| -> notify::Result<Event> {
            Ok(Event::new(kind).add_path(path.into()))
        };
        assert!(concerns(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/b/broker.toml"
            ),
            name
        ));
        assert!(concerns(
            &event(EventKind::Create(CreateKind::File), "/etc/b/..data"),
            name
        ));
        assert!(concerns(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/b/broker.toml"
            ),
            name
        ));
        assert!(!concerns(
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Read)),
                "/etc/b/broker.toml"
            ),
            name
        ));
        assert!(!concerns(
            &event(EventKind::Modify(ModifyKind::Any), "/etc/b/broker.db-wal"),
            name
        ));
        assert!(!concerns(
            &event(
                EventKind::Create(CreateKind::File),
                "/etc/b/.broker.toml.swp"
            ),
            name
        ));
        assert!(concerns(
            &Err(notify::Error::generic("queue overflow")),
            name
        ));
    }
}
