//! The command line as an operator meets it: help, and clear errors for a
//! configuration it cannot use.

use std::process::Command;

fn broker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasm-broker"))
}

#[test]
fn help_names_the_serve_command() {
    let output = broker().arg("--help").output().expect("run wasm-broker");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("serve"), "{text}");
}

#[test]
fn missing_config_file_is_named() {
    let output = broker()
        .args(["--config", "/nonexistent/broker.toml", "serve"])
        .output()
        .expect("run wasm-broker");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("/nonexistent/broker.toml"), "{text}");
}

#[test]
fn config_without_credentials_is_refused_before_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\n").expect("write config");
    let output = broker()
        .args(["--config"])
        .arg(&path)
        .arg("serve")
        .env_remove("WASM_BROKER_USERNAME")
        .env_remove("WASM_BROKER_PASSWORD")
        .output()
        .expect("run wasm-broker");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("username and password must be set"), "{text}");
}

/// A shipped plugin, built by `cargo xtask test` before the tests run.
fn built_plugin(name: &str) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/wasm/wasm32-wasip2/release/{name}.wasm"));
    if path.exists() {
        return Some(path);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{} must be built in CI",
        path.display()
    );
    eprintln!(
        "skipping: {} is not built (run `cargo xtask build-plugins`)",
        path.display()
    );
    None
}

fn config_with_plugin_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("broker.toml");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::write(
        &path,
        format!(
            "[auth]\nusername = \"u\"\npassword = \"p\"\n[runtime]\nplugin_dir = \"plugins\"\ncache_dir = \"{}\"\n",
            dir.join("cache").display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn plugins_check_accepts_a_valid_plugin_and_refuses_garbage() {
    let Some(mysql) = built_plugin("mysql") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_with_plugin_dir(dir.path());
    let output = broker()
        .arg("--config")
        .arg(&config)
        .args(["plugins", "check"])
        .arg(&mysql)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("mysql") && stdout.contains("serving"),
        "{stdout}"
    );

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm but not really").expect("write garbage");
    let output = broker()
        .arg("--config")
        .arg(&config)
        .args(["plugins", "check"])
        .arg(&garbage)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("would be refused"), "{stderr}");
}

#[test]
fn catalog_and_plugins_list_show_the_plugin_directory() {
    let Some(mysql) = built_plugin("mysql") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_with_plugin_dir(dir.path());
    std::fs::copy(&mysql, dir.path().join("plugins/mysql.wasm")).expect("install plugin");
    std::fs::write(dir.path().join("plugins/broken.wasm"), b"not wasm")
        .expect("write broken plugin");

    let output = broker()
        .arg("--config")
        .arg(&config)
        .arg("catalog")
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let catalog: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("catalog is JSON on stdout");
    assert_eq!(catalog["services"][0]["name"], "mysql", "{catalog}");

    let output = broker()
        .arg("--config")
        .arg(&config)
        .args(["plugins", "list"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("mysql") && line.contains("serving")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("broken") && line.contains("REFUSED")),
        "{stdout}"
    );
}
