//! The example plugins in Python and JavaScript (`plugins/examples/`), built
//! with componentize-py and componentize-js into `plugins/examples/dist/`.
//!
//! They go to a directory of their own, not `plugins/dist`: the shipped
//! broker.toml, the container image and the deployment checks serve
//! `plugins/dist`, and each example costs a first start about 20 s of
//! compiling and a 40 MB compiled file. The tests load them from there.
//!
//! The tools are pinned and installed into `target/plugin-tools/` (pip
//! `--target`, `npm ci` with the lockfile of `plugins/sdk-js/`) the first
//! time. Where that fails (no python3 or npm, no registry), the examples are
//! skipped with a message, and under `CI=true` the build fails instead.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// The componentize-py release the Python example is built with (PyPI).
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The WIT world every plugin implements.
const WORLD: &str = "service-plugin";
/// WASI features componentize-js would otherwise import and the host
/// refuses: `wasi:http` (outgoing `fetch`, incoming `fetch` events).
const JS_DISABLED_FEATURES: [&str; 2] = ["http", "fetch-event"];

/// Builds both examples into `plugins/examples/dist/`, or skips each with a
/// message when its tool cannot be had (an error under `CI=true`).
pub fn build_examples(root: &Path) -> anyhow::Result<()> {
    let dist = root.join("plugins/examples/dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    // A tool that cannot be had skips its example; a build that fails fails.
    match python_tool(root) {
        Ok(tool) => build_python(root, &tool, "python-redis")?,
        Err(error) => skip_unless_ci("the example plugin python-redis (and its test)", error)?,
    }
    match js_tool(root) {
        Ok(tool) => build_js(root, &tool, "js-rabbitmq")?,
        Err(error) => skip_unless_ci("the example plugin js-rabbitmq (and its test)", error)?,
    }
    println!("example plugins in {}", dist.display());
    Ok(())
}

/// The helpers' own unit tests, natively: Python's with the bindings
/// componentize-py generates (the host's functions stubbed by the tests),
/// JavaScript's under `node --test` with the host's modules stubbed
/// (`plugins/sdk-js/test/register.mjs`). Skipped like the examples when a
/// tool cannot be had.
pub fn test_helpers(root: &Path) -> anyhow::Result<()> {
    match python_tool(root) {
        Ok(tool) => {
            let bindings = root.join("target/plugin-build/python-bindings");
            let _ = std::fs::remove_dir_all(&bindings);
            let mut generate = clone(&tool);
            generate
                .current_dir(root)
                .args(["-d", "wit/v0.1.0", "-w", WORLD, "bindings"])
                .arg(&bindings);
            run(&mut generate)?;
            let sdk = root.join("plugins/sdk-python");
            run(Command::new("python3")
                .current_dir(root)
                .env("PYTHONPATH", std::env::join_paths([&bindings, &sdk])?)
                .args(["-m", "unittest", "discover", "-s"])
                .arg(&sdk))?;
        }
        Err(error) => skip_unless_ci("the Python plugin helpers' tests", error)?,
    }
    match Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => run(Command::new("node")
            .current_dir(root.join("plugins/sdk-js"))
            .args(["--import", "./test/register.mjs", "--test", "test/"]))?,
        _ => skip_unless_ci(
            "the JavaScript plugin helpers' tests",
            anyhow::anyhow!("cannot run node (is Node.js installed?)"),
        )?,
    }
    Ok(())
}

/// Outside CI a tool that cannot be had skips `what` with a message; under
/// `CI=true` it is an error.
fn skip_unless_ci(what: &str, error: anyhow::Error) -> anyhow::Result<()> {
    if std::env::var("CI").as_deref() == Ok("true") {
        return Err(error.context(what.to_owned()));
    }
    eprintln!("skipping {what}: {error:#}\n  (under CI=true this fails)");
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// `python3` with componentize-py importable: from `target/plugin-tools/python`,
/// installed there pinned if missing.
fn python_tool(root: &Path) -> anyhow::Result<Command> {
    let dir = root.join("target/plugin-tools/python");
    let stamp = dir.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(COMPONENTIZE_PY) {
        println!("installing {COMPONENTIZE_PY} into {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .args(["--no-deps", "--target"])
            .arg(&dir)
            .arg(COMPONENTIZE_PY)
            .status()
            .context("running python3 -m pip (is Python 3 with pip installed?)")?;
        if !status.success() {
            bail!("pip install {COMPONENTIZE_PY} failed ({status})");
        }
        std::fs::write(&stamp, COMPONENTIZE_PY)?;
    }
    let mut command = Command::new("python3");
    command.env("PYTHONPATH", &dir).args([
        "-c",
        "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
    ]);
    Ok(command)
}

/// `node` running componentize-js from `target/plugin-tools/js`, installed
/// there from `plugins/sdk-js`'s lockfile if missing or stale.
fn js_tool(root: &Path) -> anyhow::Result<Command> {
    let dir = root.join("target/plugin-tools/js");
    let source = root.join("plugins/sdk-js");
    let manifest = std::fs::read(source.join("package.json"))?;
    let lock = std::fs::read(source.join("package-lock.json"))?;
    let cli = dir.join("node_modules/@bytecodealliance/componentize-js/src/cli.js");
    let current = std::fs::read(dir.join("package-lock.json")).ok().as_deref() == Some(&lock[..])
        && cli.exists();
    if !current {
        println!(
            "installing componentize-js (plugins/sdk-js/package-lock.json) into {}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("package.json"), &manifest)?;
        std::fs::write(dir.join("package-lock.json"), &lock)?;
        let status = Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .status()
            .context("running npm (is Node.js with npm installed?)")?;
        if !status.success() {
            // A half-installed tree must not pass for a current one next time.
            let _ = std::fs::remove_file(dir.join("package-lock.json"));
            bail!("npm ci of componentize-js failed ({status})");
        }
    }
    let mut command = Command::new("node");
    command.arg(cli);
    Ok(command)
}

/// `componentize-py ... componentize app`, with the SDK helpers and the
/// example's directory on the module path.
fn build_python(root: &Path, tool: &Command, name: &str) -> anyhow::Result<()> {
    let source = root.join("plugins/examples").join(name);
    let sdk = root.join("plugins/sdk-python");
    let inputs = [source.join("app.py"), sdk.join("wasm_broker_sdk.py")];
    build_if_changed(root, name, &inputs, COMPONENTIZE_PY, |output| {
        let mut command = clone(tool);
        command
            .current_dir(root)
            .args(["-d", "wit/v0.1.0", "-w", WORLD, "componentize", "-p"])
            .arg(&sdk)
            .arg("-p")
            .arg(&source)
            .arg("app")
            .arg("-o")
            .arg(output);
        command
    })
}

/// componentize-js reads only the files below its source's directory, so
/// the example and the SDK helper are staged together first, as a plugin
/// of one's own keeps `wasm-broker-sdk.js` beside its `app.js`.
fn build_js(root: &Path, tool: &Command, name: &str) -> anyhow::Result<()> {
    let source = root.join("plugins/examples").join(name).join("app.js");
    let sdk = root.join("plugins/sdk-js/wasm-broker-sdk.js");
    let lock = root.join("plugins/sdk-js/package-lock.json");
    let stage = root.join("target/plugin-build").join(name);
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(&source, stage.join("app.js"))?;
    std::fs::copy(&sdk, stage.join("wasm-broker-sdk.js"))?;
    build_if_changed(root, name, &[source, sdk, lock], "", |output| {
        let mut command = clone(tool);
        command.current_dir(root).arg(stage.join("app.js")).args([
            "--wit",
            "wit/v0.1.0",
            "--world-name",
            WORLD,
        ]);
        for feature in JS_DISABLED_FEATURES {
            command.args(["-d", feature]);
        }
        command.arg("-o").arg(output);
        command
    })
}

/// Runs the build unless `plugins/examples/dist/NAME.wasm` was built from
/// the same inputs (the WIT, the sources, the tool's pin): each build takes
/// 10 to 20 s. The file is written beside and renamed, so a broker watching
/// the directory never reads half of it.
fn build_if_changed(
    root: &Path,
    name: &str,
    inputs: &[PathBuf],
    pin: &str,
    command: impl FnOnce(&Path) -> Command,
) -> anyhow::Result<()> {
    let dist = root.join("plugins/examples/dist");
    let target = dist.join(format!("{name}.wasm"));
    let stamp_path = root
        .join("target/plugin-build")
        .join(format!("{name}.stamp"));
    let mut hasher = DefaultHasher::new();
    pin.hash(&mut hasher);
    let wit = root.join("wit/v0.1.0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&wit)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    files.sort();
    files.extend(inputs.iter().cloned());
    for file in &files {
        std::fs::read(file)
            .with_context(|| format!("reading {}", file.display()))?
            .hash(&mut hasher);
    }
    let stamp = format!("{:016x}", hasher.finish());
    if target.exists() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        return Ok(());
    }
    let partial = dist.join(format!(".{name}.wasm.partial"));
    let started = Instant::now();
    run(&mut command(&partial))?;
    std::fs::rename(&partial, &target)
        .with_context(|| format!("installing {}", target.display()))?;
    if let Some(parent) = stamp_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&stamp_path, stamp)?;
    let size = std::fs::metadata(&target)
        .map(|meta| meta.len())
        .unwrap_or(0);
    println!(
        "built {} ({:.1} MB) in {:.1} s",
        target.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A copy of a prepared command (program, arguments, environment), since
/// `Command` is not `Clone`.
fn clone(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => copy.env(key, value),
            None => copy.env_remove(key),
        };
    }
    copy
}
