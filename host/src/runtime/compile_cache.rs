//! Compiled plugin code, cached on disk per file digest and engine
//! configuration, so a restart or a reload of an unchanged plugin does not
//! compile it again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiles `wasm`, or loads the code compiled for it earlier by this same
/// engine configuration. `digest` is the sha256 of `wasm` in hex. Blocking:
/// compiling takes tens of milliseconds to seconds.
pub fn compile_cached(
    engine: &Engine,
    cache_dir: &Path,
    wasm: &[u8],
    digest: &str,
) -> Result<Component, String> {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let artifact = cache_dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
    if artifact.is_file() {
        // SAFETY: the broker wrote this file itself (below) from
        // `precompile_component` of an engine with the same compatibility
        // hash; the cache directory belongs to the broker like its binary.
        // wasmtime still checks the header and refuses a mismatch.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => return Ok(component),
            Err(error) => {
                tracing::warn!(artifact = %artifact.display(), error = %format!("{error:#}"), "cannot use cached plugin code; recompiling")
            }
        }
    }
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|error| format!("is not a valid component: {error:#}"))?;
    if let Err(error) = write_atomically(cache_dir, &artifact, &compiled) {
        tracing::warn!(cache_dir = %cache_dir.display(), %error, "cannot cache compiled plugin code; the next start compiles again");
    }
    // SAFETY: `compiled` was produced by `precompile_component` of this very
    // engine a moment ago.
    unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|error| format!("cannot load its compiled code: {error:#}"))
}

/// A reader never sees a half-written artifact: the bytes go to a temporary
/// file that is renamed into place.
fn write_atomically(directory: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
