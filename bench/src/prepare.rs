//! Builds what the benchmark runs: the host binary in release mode and the
//! fixture plugins (no-op, echo, echo 2.0.0).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The files the benchmark runs.
pub struct Artifacts {
    pub broker: PathBuf,
    /// tests/fixtures/bench_noop.
    pub noop: PathBuf,
    pub echo: PathBuf,
    /// echo built as 2.0.0, for hot reload.
    pub version_two: PathBuf,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds (cargo does nothing when up to date) unless `skip_build`, then
/// checks every artifact is there. `WASM_BROKER_BIN` names another host
/// binary to measure instead of building one (as for the e2e tests).
pub fn build(root: &Path, skip_build: bool) -> anyhow::Result<Artifacts> {
    let chosen_broker = std::env::var_os("WASM_BROKER_BIN").map(PathBuf::from);
    if !skip_build {
        if chosen_broker.is_none() {
            // The host together with this benchmark: cargo unifies the
            // features of shared dependencies over the packages it is asked
            // for, and the host's dependencies are all this benchmark's too
            // (it links the host's library). Asked for alone, the host gets
            // another feature set (no hyper client, ...) and every shared
            // dependency compiles a second time: 6 to 7 minutes on 2 cores.
            // Asked for with the benchmark, the build `cargo run --release -p
            // wasm-broker-bench` just made is reused as it is.
            cargo(
                root,
                &[
                    "build",
                    "--release",
                    "--package",
                    "wasm-broker",
                    "--package",
                    "wasm-broker-bench",
                ],
            )?;
        }
        // Its own workspace: .cargo/config.toml there picks wasm32-wasip2.
        cargo(&root.join("tests/fixtures"), &["build", "--release"])?;
    }
    let wasm = root.join("target/wasm/wasm32-wasip2/release");
    let artifacts = Artifacts {
        broker: chosen_broker.unwrap_or_else(|| root.join("target/release/wasm-broker")),
        noop: wasm.join("bench_noop.wasm"),
        echo: wasm.join("echo.wasm"),
        version_two: wasm.join("version_two.wasm"),
    };
    for path in [
        &artifacts.broker,
        &artifacts.noop,
        &artifacts.echo,
        &artifacts.version_two,
    ] {
        if !path.is_file() {
            bail!("{} is missing: run without --skip-build", path.display());
        }
    }
    Ok(artifacts)
}

fn cargo(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("bench: cargo {} (in {})", args.join(" "), dir.display());
    let status = Command::new(&cargo)
        .current_dir(dir)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!(
            "cargo {} in {} failed with {status}",
            args.join(" "),
            dir.display()
        );
    }
    Ok(())
}
