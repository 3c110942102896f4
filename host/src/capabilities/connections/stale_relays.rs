//! Directories of relays whose broker died without removing them. A relay
//! removes its directory when its pool goes, but a broker killed with -9
//! (or a crash) leaves one per PostgreSQL pool in the temp directory. The
//! first relay a process starts removes those no one listens on any more.

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// The prefix of every relay directory's name.
pub(super) const PREFIX: &str = "wasm-broker-pg-";

/// Younger than this, a directory may be another broker's relay between
/// its creation and its `bind`: left alone.
const GRACE: Duration = Duration::from_secs(60);

/// Sweeps the temp directory once per process.
pub(super) fn sweep_once() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let removed = sweep(&std::env::temp_dir(), GRACE);
        if removed > 0 {
            tracing::info!(
                removed,
                "removed relay directories left by brokers that died"
            );
        }
    });
}

/// Removes the relay directories in `parent` older than `grace` whose
/// sockets answer no connection; how many it removed. Best effort: what it
/// cannot read or remove, it leaves.
fn sweep(parent: &Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let is_relay = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(PREFIX));
        let old_enough = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= grace);
        if !is_relay || !old_enough || is_listening(&entry.path()) {
            continue;
        }
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a socket in `directory` still accepts connections.
fn is_listening(directory: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return true;
    };
    entries
        .filter_map(Result::ok)
        .any(|entry| std::os::unix::net::UnixStream::connect(entry.path()).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_relays_are_removed() {
        let parent = tempfile::tempdir().expect("parent");
        let dead = parent.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&dead).expect("dead");
        // A socket bound, then its listener gone: what a killed broker leaves.
        drop(std::os::unix::net::UnixListener::bind(dead.join(".s.PGSQL.5432")).expect("bind"));
        let live = parent.path().join(format!("{PREFIX}live"));
        std::fs::create_dir(&live).expect("live");
        let _listener =
            std::os::unix::net::UnixListener::bind(live.join(".s.PGSQL.5432")).expect("bind");
        let other = parent.path().join("something-else");
        std::fs::create_dir(&other).expect("other");

        // Within the grace period nothing goes.
        assert_eq!(sweep(parent.path(), Duration::from_secs(3600)), 0);
        assert_eq!(sweep(parent.path(), Duration::ZERO), 1);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }
}
