//! Hot reload: the plugin directory is watched, and after a burst of changes
//! settles the directory is scanned again and the new plugin set swapped in.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::loader::Loader;
use super::plugin_set::PluginSet;

/// Copying a plugin into place produces several events; waiting for this
/// much quiet loads the finished file once instead of half-written ones.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the directory until the returned watcher is dropped.
pub fn watch(
    loader: Arc<Loader>,
    plugins: Arc<ArcSwap<PluginSet>>,
) -> notify::Result<(notify::RecommendedWatcher, tokio::task::JoinHandle<()>)> {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // Fails only once the runtime is gone; then nobody needs the event.
        let _ = events.send(event);
    })?;
    watcher.watch(loader.plugin_dir(), RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while let Some(first) = received.recv().await {
            if !is_relevant(&first) {
                continue;
            }
            // Only changes push the deadline: reads of the directory (a
            // backup, a scanner) must not postpone the reload forever.
            let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
            loop {
                match tokio::time::timeout_at(quiet_at, received.recv()).await {
                    Ok(Some(event)) if is_relevant(&event) => {
                        quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                    }
                    Ok(Some(_read)) => {}
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            reload(&loader, &plugins).await;
        }
    });
    Ok((watcher, task))
}

/// Scans the directory and swaps in the result; calls in flight keep the
/// set they started with. Also what releases retired plugins whose
/// instances are gone (`retired`).
pub async fn reload(loader: &Loader, plugins: &ArcSwap<PluginSet>) {
    let _turn = loader.reload_turn().await;
    let current = plugins.load_full();
    match loader.scan(&current).await {
        Ok(next) => plugins.store(Arc::new(next)),
        Err(error) => {
            tracing::error!(%error, "cannot rescan the plugin directory; plugins stay as they are")
        }
    }
}

/// Only changes to `.wasm` files matter; reading them (as the scan itself
/// does) must not trigger another scan.
fn is_relevant(event: &notify::Result<Event>) -> bool {
    let Ok(event) = event else {
        // The watcher lost track (e.g. an overflowing queue): scan to be sure.
        return true;
    };
    if event.need_rescan() {
        return true;
    }
    // Any change in the directory counts, not only to `*.wasm` paths: a
    // Kubernetes volume update swaps a `..data` symlink and never touches a
    // `.wasm` name. A needless scan costs a hash per file (unchanged files
    // are kept); reads are ignored so the scan cannot trigger itself.
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind};

    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(path.into()))
    }

    #[test]
    fn changes_trigger_a_scan_and_reads_do_not() {
        assert!(is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/p/mysql.wasm"
        )));
        assert!(is_relevant(&event(
            EventKind::Modify(ModifyKind::Any),
            "/p/mysql.wasm"
        )));
        assert!(is_relevant(&event(
            EventKind::Remove(RemoveKind::File),
            "/p/mysql.wasm"
        )));
        assert!(is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/p/mysql.wasm"
        )));
        assert!(!is_relevant(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            "/p/mysql.wasm"
        )));
        assert!(is_relevant(&event(
            EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To)),
            "/p/..data"
        )));
        assert!(is_relevant(&Err(notify::Error::generic("queue overflow"))));
    }
}
