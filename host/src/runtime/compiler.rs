//! Compiling plugin code in a child process, the compile worker: the
//! broker's own binary run as `wasm-broker compile-plugin`, which builds an
//! engine of the same settings, compiles one component and writes its code
//! where the compile cache wants it.
//!
//! Why not in the broker: compiling the 18 MiB Python example made the
//! broker peak at about 450 MB and stay at 130 MB after it (winch) or 175
//! MB (cranelift), against 70 to 80 MB after a restart that loaded the
//! same code from the cache, even with glibc's free memory handed back: the
//! code generators keep their working buffers for the engine's lifetime.
//! In a child, all of it ends with the child, and a plugin whose compiling
//! would run the machine out of memory takes down the child, not the
//! broker: the plugin is refused. The child caps what it allocates
//! (`[runtime] compile_memory_mb`, as its data segment limit) and offers
//! itself first to the kernel's OOM killer, so a plugin file built to make
//! the compiler allocate without end meets the cap, and the machine's
//! other processes, the broker among them, keep their memory.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::engine::{EngineSettings, compiling_engine};
use crate::config::Compiler;

/// The binary to run as the compile worker, set once by the `wasm-broker`
/// command line. Unset (library users, the host's unit tests, whose binary
/// is a test harness), plugins are compiled in process.
static WORKER: OnceLock<PathBuf> = OnceLock::new();

/// Compile plugins in child processes of `binary`, which must be this
/// `wasm-broker` (its `compile-plugin` command).
pub fn use_compile_worker(binary: PathBuf) {
    let _ = WORKER.set(binary);
}

pub(super) fn worker() -> Option<&'static Path> {
    WORKER.get().map(PathBuf::as_path)
}

/// The exit status of a worker that found the file is not a component it
/// can compile (any other failure is the worker's own).
const INVALID: i32 = 3;

/// What a worker run gave, for `compile_cache`.
pub(super) enum WorkerOutcome {
    /// `artifact` holds the code.
    Written,
    /// The file is not a component this engine compiles: why.
    Invalid(String),
    /// The worker could not be started: the caller compiles in process.
    Unavailable(String),
    /// The worker failed or died (run out of memory, say): the plugin is
    /// refused rather than compiled in the broker.
    Failed(String),
}

/// How long a worker may compile one plugin before it is stopped and the
/// plugin refused. The 18 MiB Python example takes 2 to 9 s on 2 cores
/// (Winch, Cranelift); without a bound, a file that makes the compiler
/// run on would hold up every later load of the plugin directory.
pub(super) const COMPILE_WITHIN: Duration = Duration::from_secs(600);

/// Runs the worker on `wasm` (a file), writing the code to `artifact`, and
/// stops it after `within`. Blocking.
pub(super) fn compile_in_worker(
    binary: &Path,
    settings: &EngineSettings,
    wasm: &Path,
    artifact: &Path,
    within: Duration,
) -> WorkerOutcome {
    // The worker's stderr goes to a file, not a pipe: a pipe it filled
    // while nobody reads it would stall it until the deadline.
    let said = match tempfile::tempfile() {
        Ok(file) => file,
        Err(error) => {
            return WorkerOutcome::Unavailable(format!("no file for its output: {error}"));
        }
    };
    let child = said.try_clone().and_then(|stderr| {
        Command::new(binary)
            .arg("compile-plugin")
            .args(arguments(settings))
            .arg("--input")
            .arg(wasm)
            .arg("--output")
            .arg(artifact)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
    });
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            return WorkerOutcome::Unavailable(format!("cannot run {}: {error}", binary.display()));
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < within => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return WorkerOutcome::Failed(format!(
                    "compiling took longer than {} s; stopped",
                    within.as_secs()
                ));
            }
            Err(error) => return WorkerOutcome::Failed(format!("waiting for the worker: {error}")),
        }
    };
    // What the worker says is about the plugin file (wasmtime's message),
    // bounded: a log line, not a dump.
    let mut text = String::new();
    let mut said = said;
    let _ = said
        .seek(SeekFrom::Start(0))
        .and_then(|_| said.take(8192).read_to_string(&mut text));
    let said: String = text.trim().chars().take(2000).collect();
    match status.code() {
        Some(0) => WorkerOutcome::Written,
        Some(INVALID) => WorkerOutcome::Invalid(said),
        _ => WorkerOutcome::Failed(failure(status, &said, settings.compile_memory_mb)),
    }
}

fn arguments(settings: &EngineSettings) -> Vec<String> {
    let compiler = match settings.compiler {
        Compiler::Cranelift => "cranelift",
        Compiler::Winch => "winch",
    };
    vec![
        "--compiler".to_owned(),
        compiler.to_owned(),
        "--largest-memory".to_owned(),
        settings.largest_memory.to_string(),
        "--max-instances".to_owned(),
        settings.max_instances.to_string(),
        "--memory-limit-mb".to_owned(),
        settings.compile_memory_mb.to_string(),
    ]
}

/// The OOM killer's preference (`/proc/<pid>/oom_score_adj`, -1000 to
/// 1000) a worker takes: the highest, so that if compiling runs the
/// machine short before the cap, the worker is the process stopped.
const OOM_FIRST: &str = "1000";

/// How much a worker lowers its CPU priority (`nice`): a plugin dropped
/// into a serving broker compiles on the cores the broker serves from, and
/// the compiler keeps every core busy (2 to 9 s for the Python example);
/// niced, it takes what the broker leaves, and is no slower on idle cores.
const NICER_BY: i32 = 10;

/// Confines this process, a compile worker, before it compiles: caps its
/// data segment (heap and private writable mappings) at
/// `memory_limit_mb`, makes it the OOM killer's first choice, and lowers
/// its CPU priority. (On Linux the priority is the calling thread's; the
/// compiler's threads are started later, by this one, and inherit it.)
fn confine(memory_limit_mb: u64) -> Result<(), String> {
    // Raising one's own OOM score, or lowering one's priority, needs no
    // privilege; where /proc is missing (not Linux), the cap below still
    // holds.
    let _ = std::fs::write("/proc/self/oom_score_adj", OOM_FIRST);
    let _ = rustix::process::nice(NICER_BY);
    let bytes = memory_limit_mb.saturating_mul(1 << 20);
    let limit = rustix::process::Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    rustix::process::setrlimit(rustix::process::Resource::Data, limit)
        .map_err(|error| format!("cannot cap its memory at {memory_limit_mb} MiB: {error}"))
}

/// Why a worker that ended badly did, for the operator: what it said, and
/// the cap when it ran out of memory (Rust's allocator reports a failed
/// allocation on stderr, then aborts).
fn failure(status: std::process::ExitStatus, said: &str, memory_limit_mb: u64) -> String {
    if said.contains("memory allocation of") {
        return format!(
            "compiling it needs more memory than the compile worker may take \
             ({memory_limit_mb} MiB, [runtime] compile_memory_mb): {said}"
        );
    }
    format!("the compile worker ended with {status}: {said}")
}

/// The worker's side (`wasm-broker compile-plugin`): compiles `input` and
/// writes the code to `output` (atomically). Returns the exit status:
/// 0, [`INVALID`] with wasmtime's reason on stderr, or 1 for anything else.
pub fn run_worker(settings: &EngineSettings, input: &Path, output: &Path) -> i32 {
    if let Err(error) = confine(settings.compile_memory_mb) {
        eprintln!("{error}");
        return 1;
    }
    compile_file(settings, input, output)
}

/// The worker's compiling, once confined (the unit tests run it in their
/// own process, which must not be confined).
fn compile_file(settings: &EngineSettings, input: &Path, output: &Path) -> i32 {
    let engine = match compiling_engine(settings) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("cannot build the engine: {error}");
            return 1;
        }
    };
    let wasm = match std::fs::read(input) {
        Ok(wasm) => wasm,
        Err(error) => {
            eprintln!("cannot read {}: {error}", input.display());
            return 1;
        }
    };
    let compiled = match engine.precompile_component(&wasm) {
        Ok(compiled) => compiled,
        Err(error) => {
            eprintln!("{error:#}");
            return INVALID;
        }
    };
    let Some(dir) = output.parent() else {
        eprintln!("{} has no directory", output.display());
        return 1;
    };
    match super::compile_cache::write_atomically(dir, output, &compiled) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("cannot write {}: {error}", output.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::component::Component;

    use super::*;

    fn settings(compiler: Compiler) -> EngineSettings {
        EngineSettings {
            compiler,
            largest_memory: 64 << 20,
            max_instances: 4,
            compile_memory_mb: 2048,
        }
    }

    /// A component with nothing in it (the binary header of a component,
    /// layer 1, version 0xd): valid, and quick to compile.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn the_worker_writes_code_its_broker_loads_and_no_other() {
        let dir = tempfile::tempdir().expect("temp dir");
        let input = dir.path().join("empty.wasm");
        let output = dir.path().join("code").join("empty.cwasm");
        std::fs::write(&input, EMPTY_COMPONENT).expect("write");
        let winch = settings(Compiler::Winch);
        assert_eq!(compile_file(&winch, &input, &output), 0);
        let same = compiling_engine(&winch).expect("engine");
        // SAFETY: written by `compile_file` above, from an engine of these
        // settings; the test is that wasmtime accepts it.
        let loaded = unsafe { Component::deserialize_file(&same, &output) };
        assert!(loaded.is_ok(), "{:?}", loaded.err());
        // An engine of other settings refuses it, so a worker and a broker
        // that disagreed would be caught, not run wrong code.
        let other = compiling_engine(&settings(Compiler::Cranelift)).expect("engine");
        // SAFETY: as above; wasmtime checks the header.
        let refused = unsafe { Component::deserialize_file(&other, &output) };
        assert!(refused.is_err());
    }

    #[test]
    fn a_file_that_is_no_component_gets_its_own_status_and_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let input = dir.path().join("garbage.wasm");
        std::fs::write(&input, b"not wasm at all").expect("write");
        let output = dir.path().join("garbage.cwasm");
        assert_eq!(
            compile_file(&settings(Compiler::Winch), &input, &output),
            INVALID
        );
        assert!(!output.exists());
        let missing = dir.path().join("missing.wasm");
        assert_eq!(
            compile_file(&settings(Compiler::Winch), &missing, &output),
            1
        );
    }

    #[test]
    fn a_worker_that_cannot_start_is_reported_as_unavailable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outcome = compile_in_worker(
            &dir.path().join("no-such-binary"),
            &settings(Compiler::Winch),
            &dir.path().join("in.wasm"),
            &dir.path().join("out.cwasm"),
            COMPILE_WITHIN,
        );
        assert!(matches!(outcome, WorkerOutcome::Unavailable(_)));
    }

    /// Runs a stand-in worker, a shell script of `body`, as the broker
    /// runs a worker, stopping it after `within`.
    fn run_script(body: &str, within: Duration) -> WorkerOutcome {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let worker = dir.path().join("worker.sh");
        std::fs::write(&worker, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        compile_in_worker(
            &worker,
            &settings(Compiler::Winch),
            &dir.path().join("in.wasm"),
            &dir.path().join("out.cwasm"),
            within,
        )
    }

    #[test]
    fn a_worker_that_runs_on_is_stopped_at_its_deadline() {
        let started = Instant::now();
        let outcome = run_script("sleep 30", Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        let WorkerOutcome::Failed(why) = outcome else {
            panic!("not refused");
        };
        assert!(why.contains("longer than"), "{why}");
    }

    #[test]
    fn a_worker_that_dies_refuses_the_plugin_with_what_it_said() {
        let outcome = run_script("echo 'out of memory' >&2; kill -9 $$", COMPILE_WITHIN);
        let WorkerOutcome::Failed(why) = outcome else {
            panic!("not refused");
        };
        assert!(
            why.contains("signal") && why.contains("out of memory"),
            "{why}"
        );
    }

    #[test]
    fn a_worker_that_met_its_memory_cap_is_reported_with_the_cap() {
        // What Rust's allocator says when an allocation fails, then aborts.
        let outcome = run_script(
            "echo 'memory allocation of 1048576 bytes failed' >&2; kill -ABRT $$",
            COMPILE_WITHIN,
        );
        let WorkerOutcome::Failed(why) = outcome else {
            panic!("not refused");
        };
        assert!(
            why.contains("2048 MiB") && why.contains("compile_memory_mb"),
            "{why}"
        );
    }
}
