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
    let output = broker().args(["--config", "/nonexistent/broker.toml", "serve"]).output().expect("run wasm-broker");
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
