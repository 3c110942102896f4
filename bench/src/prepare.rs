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
            // The host with this benchmark, so both come from one resolution.
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
    let mut command = Command::new(&cargo);
    // Without the variables `cargo run` set for this program: build scripts
    // read some of them (ring's declares `CARGO_MANIFEST_DIR`), and a cargo
    // started with them rebuilt ring and everything above it, the whole host
    // a second time (6 to 7 minutes on 2 cores).
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            command.env_remove(name);
        }
    }
    let status = command
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
