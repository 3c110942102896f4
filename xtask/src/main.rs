//! Project automation, so the README needs exactly two commands:
//! `cargo xtask serve` and `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod polyglot;

const USAGE: &str = "usage: cargo xtask <command> [args...]

commands:
  build-plugins   build the shipped plugins (wasm32-wasip2) into plugins/dist/, and the Python
                  and JavaScript example plugins into plugins/examples/dist/ (componentize-py and
                  componentize-js, pinned, installed into target/plugin-tools/ on first use)
  serve [ARGS]    build the plugins and the broker (release), run `wasm-broker serve` with broker.toml
  test [ARGS]     build the plugins and the test fixtures, run the plugins' and the SDK's unit tests
                  natively, `wasm-broker plugins test` on every shipped plugin with broker.toml's
                  grants, then every host test (`cargo test --workspace [ARGS]`)";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    match command.as_str() {
        "build-plugins" => {
            build_plugins(&root)?;
            polyglot::build_examples(&root)
        }
        "serve" => {
            build_plugins(&root)?;
            prepare_local_services(&root);
            let key = dev_encryption_key(&root)?;
            run(cargo()
                .current_dir(&root)
                .env("WASM_BROKER_ENCRYPTION_KEY", key)
                .args([
                    "run",
                    "--release",
                    "--package",
                    "wasm-broker",
                    "--",
                    "serve",
                    "--config",
                    "broker.toml",
                ])
                .args(&rest))
        }
        "test" => {
            let plugins = build_plugins(&root)?;
            polyglot::build_examples(&root)?;
            build_fixtures(&root)?;
            test_plugins_natively(&root)?;
            polyglot::test_helpers(&root)?;
            test_plugins_through_the_contract(&root, &plugins)?;
            run(cargo()
                .current_dir(&root)
                .args(["test", "--workspace"])
                .args(&rest))
        }
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown command {command:?}")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A cargo command without the variables `cargo run` set for this program.
/// Build scripts read some of them (ring's declares `CARGO_MANIFEST_DIR`), so
/// a cargo started with them rebuilds ring and everything above it (rustls,
/// sqlx, the host) instead of reusing the build a plain `cargo` made.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
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
    command
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

/// Builds a plugin workspace for wasm32-wasip2 (its .cargo/config.toml picks
/// the target and target dir) and returns the directory holding the .wasm files.
fn build_wasm_workspace(root: &Path, workspace: &str) -> anyhow::Result<PathBuf> {
    ensure_wasm_target(root)?;
    let dir = root.join(workspace);
    run(cargo().current_dir(&dir).args(["build", "--release"]))?;
    Ok(root.join("target/wasm/wasm32-wasip2/release"))
}

/// rust-toolchain.toml names the wasm32-wasip2 target, but rustup adds a
/// toolchain's targets only when it installs the toolchain: where Rust 1.95
/// was already installed without it, the first plugin build would fail.
fn ensure_wasm_target(root: &Path) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .current_dir(root)
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(output) if output.status.success() => {
            let listed = String::from_utf8_lossy(&output.stdout);
            if !listed.lines().any(|line| line.trim() == WASM_TARGET) {
                println!("adding the {WASM_TARGET} target to the pinned toolchain");
                run(Command::new("rustup")
                    .current_dir(root)
                    .args(["target", "add", WASM_TARGET]))?;
            }
            Ok(())
        }
        // No rustup: the toolchain came some other way and must bring the target.
        _ => Ok(()),
    }
}

const WASM_TARGET: &str = "wasm32-wasip2";

/// The plugins' and the SDK's own unit tests (codecs, names, parameter
/// checks), on the machine's native target: the plugin workspace builds for
/// wasm32-wasip2 by default, where no test can run.
fn test_plugins_natively(root: &Path) -> anyhow::Result<()> {
    let output = Command::new("rustc")
        .current_dir(root)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let description = String::from_utf8_lossy(&output.stdout);
    let host = description
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .context("rustc -vV names no host target")?
        .trim()
        .to_owned();
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["test", "--workspace", "--target", &host]))
}

/// `wasm-broker plugins test` on every shipped plugin, with the grants of
/// the shipped broker.toml (the least-privilege accounts of
/// tests/services/roles.sh) against the loopback services: each plugin's
/// own answers to repeats, half-made instances and its parameter schemas,
/// which the broker's end-to-end tests never reach (the broker answers
/// repeats itself). As the end-to-end tests do, a plugin whose service is
/// not running is skipped outside CI and fails under CI=true.
fn test_plugins_through_the_contract(root: &Path, plugins: &[PathBuf]) -> anyhow::Result<()> {
    run(cargo().current_dir(root).args([
        "build",
        "--package",
        "wasm-broker",
        "--bin",
        "wasm-broker",
    ]))?;
    let broker = root.join("target/debug/wasm-broker");
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    let mut failed = Vec::new();
    for plugin in plugins {
        let name = plugin
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or_default();
        let service = SERVICES
            .iter()
            .find(|(plugin, _)| *plugin == name)
            .map(|(_, address)| *address);
        if let Some(address) = service
            && !in_ci
            && !reachable(address)
        {
            println!("skipping `plugins test` of {name}: nothing answers on {address}");
            continue;
        }
        println!("wasm-broker plugins test {}", plugin.display());
        let status = Command::new(&broker)
            .current_dir(root)
            .args(["plugins", "test", "--config", "broker.toml"])
            .arg(plugin)
            .env("RUST_LOG", "error")
            .status()
            .with_context(|| format!("running {}", broker.display()))?;
        if !status.success() {
            failed.push(name.to_owned());
        }
    }
    if !failed.is_empty() {
        bail!(
            "`wasm-broker plugins test` failed for {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The loopback service each shipped plugin's grant in broker.toml reaches.
const SERVICES: [(&str, &str); 5] = [
    ("mysql", "127.0.0.1:3306"),
    ("postgres", "127.0.0.1:5432"),
    ("redis", "127.0.0.1:6379"),
    ("rabbitmq", "127.0.0.1:15672"),
    ("mosquitto", "127.0.0.1:1884"),
];

fn reachable(address: &str) -> bool {
    address.parse().is_ok_and(|address| {
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2)).is_ok()
    })
}

/// Copies every built plugin into plugins/dist, the default plugin directory.
/// Unchanged files are left alone so a running broker does not reload them;
/// changed ones are written beside and renamed, so the watcher never reads a
/// half-written file.
fn build_plugins(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let built = build_wasm_workspace(root, "plugins")?;
    let dist = root.join("plugins/dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let mut installed = Vec::new();
    for name in ["mysql", "postgres", "redis", "rabbitmq", "mosquitto"] {
        let source = built.join(format!("{name}.wasm"));
        let bytes =
            std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        let target = dist.join(format!("{name}.wasm"));
        if std::fs::read(&target).ok().as_deref() != Some(bytes.as_slice()) {
            let partial = dist.join(format!(".{name}.wasm.partial"));
            std::fs::write(&partial, &bytes)
                .with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &target)
                .with_context(|| format!("installing {}", target.display()))?;
        }
        installed.push(target);
    }
    println!("plugins installed in {}", dist.display());
    Ok(installed)
}

/// The key that encrypts stored credentials, for a local broker: the
/// environment's if set, else one generated once and kept in
/// `state/dev-encryption.key` (mode 0600). Production keys belong in a
/// secret store, never in a generated file.
/// The shipped broker.toml grants each plugin a least-privilege account on
/// the loopback services (and the mosquitto plugin a Mosquitto with dynamic
/// security on 1884), which the scripts in tests/services make. On a fresh
/// machine nothing has made them yet: try once here, so the first command
/// serves plugins that work. Idempotent; a failure (a service not running
/// here) is reported and serving goes on: the plugins granted that service
/// fail their calls until the script succeeds.
fn prepare_local_services(root: &Path) {
    let services = root.join("tests/services");
    let mut scripts = Vec::new();
    let have = |tool: &str| Command::new(tool).arg("--help").output().is_ok();
    // The rabbitmq plugin's management API is a RabbitMQ plugin that a fresh
    // installation leaves off.
    if have("rabbitmq-plugins") {
        let enabled = Command::new("rabbitmq-plugins")
            .args(["enable", "--quiet", "rabbitmq_management"])
            .status();
        if !enabled.is_ok_and(|status| status.success()) {
            eprintln!("warning: could not enable RabbitMQ's management API (rabbitmq_management)");
        }
    }
    if have("mosquitto_ctrl") {
        scripts.push("mosquitto-dynsec.sh");
    }
    scripts.push("roles.sh");
    for script in scripts {
        println!("preparing the local services: tests/services/{script}");
        let ran = Command::new("bash").arg(services.join(script)).status();
        match ran {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!(
                "warning: tests/services/{script} failed ({status}); plugins granted a service it \
                 could not prepare will fail their calls until it succeeds"
            ),
            Err(error) => eprintln!("warning: cannot run tests/services/{script}: {error}"),
        }
    }
}

fn dev_encryption_key(root: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Ok(key) = std::env::var("WASM_BROKER_ENCRYPTION_KEY")
        && !key.is_empty()
    {
        return Ok(key);
    }
    let path = root.join("state/dev-encryption.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    std::fs::create_dir_all(root.join("state")).context("creating state/")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "generated a development encryption key in {}",
        path.display()
    );
    Ok(key)
}

/// The fault-injection plugins the tests load (tests/fixtures).
fn build_fixtures(root: &Path) -> anyhow::Result<()> {
    if root.join("tests/fixtures/Cargo.toml").exists() {
        build_wasm_workspace(root, "tests/fixtures")?;
    }
    Ok(())
}
