//! `wasm-broker plugins new`: a Rust project written outside the
//! repository builds to a component with the one command its README gives,
//! its native unit tests pass through the SDK's fakes, `plugins check`
//! accepts the `.wasm`, and a broker serving it provisions and binds.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use wasm_broker_tests::{BrokerSetup, TestBroker, broker_binary, repo_root, saturating, unique_id};

/// `cargo <args>` in `project`, as its author would run it: none of the
/// variables `cargo test` set for this process, the build kept in the
/// repository's target/ so later runs reuse it.
fn cargo(project: &Path, args: &[&str]) -> String {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_") && name != "CARGO_HOME" {
            command.env_remove(name);
        }
    }
    let output = command
        .current_dir(project)
        .args(args)
        .env("CARGO_TARGET_DIR", repo_root().join("target/scaffold"))
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "cargo {args:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn a_new_rust_plugin_builds_passes_its_tests_and_serves() {
    let scratch = tempfile::tempdir().expect("a temp dir");
    let output = Command::new(broker_binary())
        .args(["plugins", "new", "demo", "--dir"])
        .arg(scratch.path())
        .output()
        .expect("run wasm-broker plugins new");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let project = scratch.path().join("demo");

    {
        // Compiling keeps both cores busy.
        let _cpu = saturating().await;
        cargo(&project, &["build", "--release"]);
        let tests = cargo(&project, &["test-native"]);
        assert!(tests.contains("test result: ok. 2 passed"), "{tests}");
    }
    let wasm = repo_root().join("target/scaffold/wasm32-wasip2/release/demo.wasm");
    assert!(wasm.is_file(), "{} was not built", wasm.display());

    let mut broker = TestBroker::prepare(BrokerSetup {
        plugins: vec![("demo".to_owned(), wasm.clone())],
        ..BrokerSetup::default()
    });
    let wasm_path = wasm.to_string_lossy().into_owned();
    let (checked, report) = broker.cli(&["plugins", "check", &wasm_path]);
    assert!(checked, "plugins check refused the new plugin:\n{report}");

    broker.spawn().await;
    let plan = broker.plan("demo", "standard").await;
    let instance = unique_id("scaffold");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!((status, &body), (201, &json!({})), "provision");
    let (status, body) = broker.bind(&instance, "binding-1", &plan, None).await;
    assert_eq!(status, 201, "bind: {body}");
    let password = body["credentials"]["password"].as_str().unwrap_or_default();
    assert_eq!(password.len(), 24, "{body}");
    assert!(
        body["credentials"]["username"]
            .as_str()
            .is_some_and(|user| user.starts_with("u_")),
        "{body}"
    );
    broker
        .unbind_all_and_deprovision(&instance, &["binding-1"], &plan)
        .await;
}
