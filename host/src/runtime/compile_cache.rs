//! Compiled plugin code, cached on disk per file digest and engine
//! configuration, so a restart or a reload of an unchanged plugin does not
//! compile it again; and a copy of each plugin file loaded, by digest, so a
//! retired plugin (whose file is gone) can be loaded again after a restart,
//! by this or by a newer broker whose engine cannot use the old code.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where the copies of plugin files live, below the cache directory.
const SOURCES: &str = "sources";

use wasmtime::Engine;
use wasmtime::component::Component;

use super::compiler::{self, WorkerOutcome};
use super::engine::EngineSettings;

/// Compiles `wasm`, or loads the code compiled for it earlier by this same
/// engine configuration. `digest` is the sha256 of `wasm` in hex. Blocking:
/// compiling takes tens of milliseconds to seconds. Compiles in a worker
/// process when the command line set one up (`compiler.rs`), and keeps a
/// copy of the file (`keep_source`) either way.
pub fn compile_cached(
    engine: &Engine,
    settings: &EngineSettings,
    cache_dir: &Path,
    wasm: &[u8],
    digest: &str,
) -> Result<Component, String> {
    // The worker reads the kept copy. A file that does not compile is not
    // kept: copies are never pruned.
    let source = source_path(cache_dir, digest);
    let kept_before = source.is_file();
    keep_source(cache_dir, wasm, digest);
    let compiled = compile(engine, settings, cache_dir, wasm, digest, &source);
    if compiled.is_err() && !kept_before {
        let _ = std::fs::remove_file(&source);
    }
    compiled
}

fn compile(
    engine: &Engine,
    settings: &EngineSettings,
    cache_dir: &Path,
    wasm: &[u8],
    digest: &str,
    source: &Path,
) -> Result<Component, String> {
    let artifact = cache_dir.join(format!("{digest}-{}.cwasm", engine_tag(engine)));
    if artifact.is_file() {
        // SAFETY: the broker wrote this file itself (below) from
        // `precompile_component` of an engine with the same compatibility
        // hash; the cache directory belongs to the broker like its binary.
        // wasmtime still checks the header and refuses a mismatch.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => {
                mark_used(&artifact);
                return Ok(component);
            }
            Err(error) => {
                tracing::warn!(artifact = %artifact.display(), error = %format!("{error:#}"), "cannot use cached plugin code; recompiling")
            }
        }
    }
    if let Some(binary) = compiler::worker()
        && source.is_file()
    {
        let within = compiler::COMPILE_WITHIN;
        match compiler::compile_in_worker(binary, settings, source, &artifact, within) {
            WorkerOutcome::Written => {
                // SAFETY: the worker, this very binary, has just written the
                // file from `precompile_component` of an engine of the same
                // settings; wasmtime checks the header and refuses a mismatch.
                match unsafe { Component::deserialize_file(engine, &artifact) } {
                    Ok(component) => return Ok(component),
                    Err(error) => {
                        tracing::warn!(artifact = %artifact.display(), error = %format!("{error:#}"), "cannot use the compile worker's code; compiling in the broker")
                    }
                }
            }
            WorkerOutcome::Invalid(why) => return Err(format!("is not a valid component: {why}")),
            WorkerOutcome::Failed(why) => return Err(format!("compiling it failed: {why}")),
            WorkerOutcome::Unavailable(why) => {
                tracing::warn!(%why, "no compile worker; compiling in the broker")
            }
        }
    }
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|error| format!("is not a valid component: {error:#}"));
    let loaded = compiled.and_then(|compiled| {
        let written = write_atomically(cache_dir, &artifact, &compiled);
        // Loaded from the file, the code is mapped from the page cache, as
        // after a restart, instead of copied into anonymous memory (40 MiB
        // for the Python example).
        // SAFETY: the broker has just written the file from
        // `precompile_component` of this very engine (see above).
        let mapped = written
            .as_ref()
            .ok()
            .and_then(|()| unsafe { Component::deserialize_file(engine, &artifact) }.ok());
        match (mapped, written) {
            (Some(component), _) => Ok(component),
            (None, written) => {
                if let Err(error) = written {
                    tracing::warn!(cache_dir = %cache_dir.display(), %error, "cannot cache compiled plugin code; the next start compiles again");
                }
                // SAFETY: `compiled` was produced by `precompile_component`
                // of this very engine a moment ago.
                unsafe { Component::deserialize(engine, &compiled) }
                    .map_err(|error| format!("cannot load its compiled code: {error:#}"))
            }
        }
    });
    // Whether it compiled or not, what compiling allocated is free now.
    release_freed_memory();
    loaded
}

/// Hands the heap memory compiling freed back to the system, when the
/// broker compiles in process (no compile worker). Cranelift compiles on
/// every core at once, and glibc keeps what each thread freed in that
/// thread's arena: after the Python example (18 MiB) compiled, the broker
/// stayed at about 400 MiB, against 70 MiB after a restart that loaded the
/// same code from the cache; 130 to 175 MiB with this.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the
    // kernel; it takes the arenas' locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What names the code of `engine`'s configuration in artifact names: its
/// compatibility hash, as 16 hex digits.
fn engine_tag(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// How long compiled code nobody loads stays in the cache. Not less: a
/// cache directory may be shared by several brokers (the tests share one),
/// each loading other plugins, and each start of one prunes; a version
/// dropped and brought back within this time loads without compiling.
pub const UNUSED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// An artifact's modification time is when it was last loaded (or
/// written): what [`prune`] goes by. Best effort: a cache on a read-only
/// file system is only never pruned.
fn mark_used(artifact: &Path) {
    let touched = std::fs::File::options()
        .write(true)
        .open(artifact)
        .and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = touched {
        tracing::debug!(artifact = %artifact.display(), %error, "cannot mark compiled code as used");
    }
}

/// Compiled code removed by [`prune`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub files: u64,
    pub bytes: u64,
}

/// Removes the compiled code this start does not use and nobody loaded for
/// `retention`: artifacts of plugin versions (digests) not in `in_use`, or
/// of another engine configuration (an older broker, other limits).
/// Without it every version ever loaded stays, 40 MB and more each for a
/// Python or JavaScript plugin. Compiled code is only a cache: a version
/// that comes back is compiled again. The copies of plugin files
/// (`sources/`) stay, since a retired plugin needs its copy after any
/// restart; files not named as artifacts are left alone. Blocking.
pub fn prune(
    engine: &Engine,
    cache_dir: &Path,
    in_use: &HashSet<String>,
    retention: Duration,
) -> Pruned {
    let tag = engine_tag(engine);
    let mut pruned = Pruned::default();
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return pruned;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // A temporary file of a writer (a compile worker, a broker) killed
        // before its rename; a young one may still be being written.
        let kept_for = if leftover_temporary(name) {
            TEMPORARY_RETENTION
        } else {
            let Some((digest, entry_tag)) = artifact_parts(name) else {
                continue;
            };
            if in_use.contains(digest) && entry_tag == tag {
                continue;
            }
            retention
        };
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let unused_for = metadata
            .modified()
            .ok()
            .and_then(|used| SystemTime::now().duration_since(used).ok());
        if unused_for.is_none_or(|unused_for| unused_for < kept_for) {
            continue;
        }
        let bytes = metadata.len();
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                pruned.files += 1;
                pruned.bytes += bytes;
            }
            Err(error) => {
                tracing::warn!(artifact = %entry.path().display(), %error, "cannot remove unused compiled plugin code");
            }
        }
    }
    pruned
}

/// How old a left-over temporary file (`write_atomically`'s) must be to
/// be removed: writing one takes seconds.
const TEMPORARY_RETENTION: Duration = Duration::from_secs(3600);

/// An artifact's temporary name: `<artifact name without .cwasm>.tmp<pid>`.
fn leftover_temporary(name: &str) -> bool {
    name.rsplit_once(".tmp").is_some_and(|(artifact, pid)| {
        !pid.is_empty()
            && pid.bytes().all(|byte| byte.is_ascii_digit())
            && artifact_parts(&format!("{artifact}.cwasm")).is_some()
    })
}

/// `(digest, engine tag)` of an artifact's file name: 64 hex digits, `-`,
/// 16 hex digits, `.cwasm`.
fn artifact_parts(name: &str) -> Option<(&str, &str)> {
    let (digest, tag) = name.strip_suffix(".cwasm")?.split_once('-')?;
    let hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|byte| byte.is_ascii_hexdigit())
    };
    (hex(digest, 64) && hex(tag, 16)).then_some((digest, tag))
}

/// Keeps a copy of a plugin file under its digest, unless one is there.
/// Blocking. A failure is logged: it only matters if the plugin retires
/// and the broker restarts before its instances are gone.
pub fn keep_source(cache_dir: &Path, wasm: &[u8], digest: &str) {
    let path = source_path(cache_dir, digest);
    if path.is_file() {
        return;
    }
    if let Err(error) = write_atomically(&cache_dir.join(SOURCES), &path, wasm) {
        tracing::warn!(cache_dir = %cache_dir.display(), %error, "cannot keep a copy of a plugin file; if it retires, a restart cannot load it again");
    }
}

/// The copy [`keep_source`] kept of the file with `digest`, checked
/// against the digest. Blocking.
pub fn read_source(cache_dir: &Path, digest: &str) -> Result<Vec<u8>, String> {
    let path = source_path(cache_dir, digest);
    let wasm = std::fs::read(&path)
        .map_err(|error| format!("cannot read its kept copy {}: {error}", path.display()))?;
    use sha2::Digest as _;
    if hex::encode(sha2::Sha256::digest(&wasm)) != digest {
        return Err(format!(
            "its kept copy {} is damaged (digest mismatch)",
            path.display()
        ));
    }
    Ok(wasm)
}

fn source_path(cache_dir: &Path, digest: &str) -> PathBuf {
    // The digest is hex from our own hashing (or the state store, which got
    // it from there); checked anyway, since it becomes a file name.
    let name = if digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        digest
    } else {
        "invalid-digest"
    };
    cache_dir.join(SOURCES).join(format!("{name}.wasm"))
}

/// A reader never sees a half-written artifact: the bytes go to a temporary
/// file that is renamed into place.
pub(super) fn write_atomically(directory: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        // Best effort: a stray temporary file is only wasted disk space.
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_kept_by_digest_and_checked() {
        use sha2::Digest as _;
        let directory = tempfile::tempdir().expect("temp dir");
        let wasm = b"\0asm plugin bytes";
        let digest = hex::encode(sha2::Sha256::digest(wasm));
        keep_source(directory.path(), wasm, &digest);
        assert_eq!(read_source(directory.path(), &digest).expect("kept"), wasm);
        std::fs::write(source_path(directory.path(), &digest), b"tampered").expect("overwrite");
        let error = read_source(directory.path(), &digest).expect_err("damaged");
        assert!(error.contains("digest mismatch"), "{error}");
        let error = read_source(directory.path(), "../../etc/passwd").expect_err("no such copy");
        assert!(error.contains("invalid-digest"), "{error}");
    }

    #[test]
    fn pruning_keeps_only_the_artifacts_in_use_or_used_lately() {
        let directory = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let tag = engine_tag(&engine);
        let (used, old) = ("a".repeat(64), "b".repeat(64));
        let day = Duration::from_secs(24 * 3600);
        let write = |name: String, unused_for: Duration| {
            let path = directory.path().join(&name);
            std::fs::write(&path, b"code").expect("written");
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_modified(SystemTime::now() - unused_for))
                .expect("dated");
            name
        };
        let in_use = write(format!("{used}-{tag}.cwasm"), 30 * day);
        let other_engine = write(format!("{used}-0123456789abcdef.cwasm"), 8 * day);
        let old_version = write(format!("{old}-{tag}.cwasm"), 8 * day);
        let recently_used = write(format!("{old}-fedcba9876543210.cwasm"), day);
        let not_ours = write("notes.cwasm".to_owned(), 30 * day);
        let hour = Duration::from_secs(3600);
        let killed_writer = write(format!("{used}-{tag}.tmp4242"), 2 * hour);
        let writing_now = write(format!("{old}-{tag}.tmp77"), Duration::from_secs(5));
        keep_source(directory.path(), b"\0asm old", &old);

        let pruned = prune(
            &engine,
            directory.path(),
            &HashSet::from([used.clone()]),
            UNUSED_RETENTION,
        );
        assert_eq!(
            pruned,
            Pruned {
                files: 3,
                bytes: 12
            }
        );
        let exists = |name: &str| directory.path().join(name).exists();
        assert!(exists(&in_use) && exists(&recently_used) && exists(&not_ours));
        assert!(!exists(&other_engine) && !exists(&old_version));
        assert!(!exists(&killed_writer) && exists(&writing_now));
        assert!(
            source_path(directory.path(), &old).is_file(),
            "sources stay"
        );
    }

    #[test]
    fn artifacts_are_written_whole() {
        let directory = tempfile::tempdir().expect("temp dir");
        let nested = directory.path().join("compiled");
        let path = nested.join("a.cwasm");
        write_atomically(&nested, &path, b"code").expect("written");
        assert_eq!(std::fs::read(&path).expect("readable"), b"code");
        assert_eq!(
            std::fs::read_dir(&nested).expect("listable").count(),
            1,
            "no temporary file is left"
        );
    }
}
