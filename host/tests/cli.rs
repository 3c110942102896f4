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

/// The key the served stores of these tests seal credentials with.
const ENCRYPTION_KEY: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";
const ECHO_SERVICE_ID: &str = "d4a7f4e4-3344-44c5-a9e0-e71290823c71";
const ECHO_PLAN_ID: &str = "d887ddca-3b57-43fb-ba6b-a2ca0416f942";

/// `wasm-broker` run on `config` with the store's key, stdin closed (no
/// terminal, as from a script): exit status, stdout, stderr.
fn run_on(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = broker()
        .arg("--config")
        .arg(config)
        .args(args)
        .env("WASM_BROKER_ENCRYPTION_KEY", ENCRYPTION_KEY)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run wasm-broker");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A config whose store is `state/broker.db` in `dir`, created (migrated,
/// empty) unless `create` is false.
async fn config_with_store(dir: &std::path::Path, create: bool) -> std::path::PathBuf {
    let config = config_with_plugin_dir(dir);
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text.push_str(&format!(
        "[state]\npath = \"{}\"\n",
        dir.join("state/broker.db").display()
    ));
    std::fs::write(&config, text).expect("write config");
    if create {
        let loaded = wasm_broker::config::Config::load(&config).expect("load config");
        let store = wasm_broker::state::StateStore::open(&loaded.state)
            .await
            .expect("create the store");
        store.close().await;
    }
    config
}

#[tokio::test]
async fn store_commands_explain_what_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_with_store(dir.path(), false).await;
    let (ok, _, stderr) = run_on(&config, &["instances", "list"]);
    assert!(!ok);
    assert!(stderr.contains("there is no state store at"), "{stderr}");
    assert!(
        !dir.path().join("state/broker.db").exists(),
        "listing must not create a store"
    );

    let config = config_with_store(dir.path(), true).await;
    let (ok, stdout, stderr) = run_on(&config, &["instances", "list"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("no instances match"), "{stdout}");
    for args in [
        &["instances", "show", "no-such-instance"][..],
        &["purge", "no-such-instance", "--yes"][..],
    ] {
        let (ok, _, stderr) = run_on(&config, args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            stderr.contains("there is no service instance \"no-such-instance\""),
            "{args:?}: {stderr}"
        );
    }
    let (ok, _, stderr) = run_on(&config, &["instances", "list", "--status", "stuck"]);
    assert!(!ok);
    assert!(stderr.contains("possible values"), "{stderr}");
}

/// A `wasm-broker serve` on a free port; killed when dropped.
struct Served {
    child: std::process::Child,
    base_url: String,
    client: reqwest::Client,
}

impl Served {
    async fn start(config: &std::path::Path, port: u16) -> Self {
        let log = std::fs::File::create(config.with_file_name("broker.log")).expect("log file");
        let child = broker()
            .arg("--config")
            .arg(config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("WASM_BROKER_ENCRYPTION_KEY", ENCRYPTION_KEY)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start wasm-broker serve");
        let served = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        for _ in 0..1200 {
            let up = served
                .client
                .get(format!("{}/readyz", served.base_url))
                .send()
                .await;
            if up.is_ok_and(|response| response.status().is_success()) {
                return served;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "wasm-broker did not become ready:\n{}",
            std::fs::read_to_string(config.with_file_name("broker.log")).unwrap_or_default()
        );
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> u16 {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .basic_auth("u", Some("p"))
            .header("X-Broker-API-Version", "2.17");
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("OSB request").status().as_u16()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn provision_body() -> serde_json::Value {
    serde_json::json!({
        "service_id": ECHO_SERVICE_ID,
        "plan_id": ECHO_PLAN_ID,
        "organization_guid": "org",
        "space_guid": "space",
    })
}

/// A broker serving the echo fixture from a store in a new directory (kept
/// while the returned guard lives), or `None` where echo is not built.
async fn serve_echo() -> Option<(tempfile::TempDir, std::path::PathBuf, Served)> {
    let echo = built_plugin("echo")?;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_with_store(dir.path(), false).await;
    std::fs::copy(&echo, dir.path().join("plugins/echo.wasm")).expect("install echo");
    let broker = Served::start(&config, free_port()).await;
    Some((dir, config, broker))
}

/// The real binary on the store of a broker that keeps serving: list, show,
/// and purge an instance the platform provisioned and bound over HTTP.
#[tokio::test]
async fn instances_and_purge_work_on_the_store_a_broker_serves() {
    let Some((_dir, config, broker)) = serve_echo().await else {
        return;
    };

    let (first, second) = ("instance-first", "instance-second");
    let (binding, secret) = ("binding-of-first", "credential-marker-7d1e");
    for id in [first, second] {
        let path = format!("/v2/service_instances/{id}");
        assert_eq!(
            broker
                .send(reqwest::Method::PUT, &path, Some(provision_body()))
                .await,
            201
        );
    }
    // Echo hands the bind parameters back inside the credentials.
    let bind_body = serde_json::json!({
        "service_id": ECHO_SERVICE_ID,
        "plan_id": ECHO_PLAN_ID,
        "parameters": {"marker": secret},
    });
    let binding_path = format!("/v2/service_instances/{first}/service_bindings/{binding}");
    assert_eq!(
        broker
            .send(reqwest::Method::PUT, &binding_path, Some(bind_body))
            .await,
        201
    );

    let (ok, stdout, stderr) = run_on(&config, &["instances", "list"]);
    assert!(ok, "{stderr}");
    let line = stdout
        .lines()
        .find(|line| line.starts_with(first))
        .unwrap_or_else(|| panic!("{first} is not listed:\n{stdout}"));
    for expected in ["echo", "default", "ready", "provision succeeded"] {
        assert!(line.contains(expected), "{expected:?} missing in {line:?}");
    }
    assert!(stdout.contains(second), "{stdout}");
    assert!(stdout.contains("2 instance(s)"), "{stdout}");

    let (ok, stdout, stderr) = run_on(&config, &["instances", "list", "--limit", "1", "--json"]);
    assert!(ok, "{stderr}");
    let page: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(
        page["instances"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    assert_eq!(page["more"], true, "{page}");
    assert_eq!(page["instances"][0]["last_operation"]["kind"], "provision");

    for (filter, expected) in [
        (&["--service", "echo"][..], 2),
        (&["--service", ECHO_SERVICE_ID][..], 2),
        (&["--service", "no-such-service"][..], 0),
        (&["--status", "failed"][..], 0),
        (&["--status", "ready"][..], 2),
    ] {
        let mut args = vec!["instances", "list", "--json"];
        args.extend(filter);
        let (ok, stdout, stderr) = run_on(&config, &args);
        assert!(ok, "{stderr}");
        let page: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
        assert_eq!(
            page["instances"].as_array().map(Vec::len),
            Some(expected),
            "{filter:?}: {page}"
        );
    }

    let (ok, stdout, stderr) = run_on(&config, &["instances", "show", first]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(binding), "{stdout}");
    assert!(stdout.contains("bind succeeded"), "{stdout}");
    assert!(!stdout.contains(secret), "credentials leaked:\n{stdout}");
    let (ok, stdout, stderr) = run_on(&config, &["instances", "show", first, "--json"]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains(secret), "credentials leaked:\n{stdout}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(shown["service_name"], "echo");
    assert_eq!(shown["bindings"][0]["id"], binding);
    let kinds: Vec<&str> = shown["history"]
        .as_array()
        .map(|history| history.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        kinds.contains(&"provision") && kinds.contains(&"bind"),
        "{shown}"
    );

    // No terminal and no --yes: nothing happens.
    let (ok, _, stderr) = run_on(&config, &["purge", first]);
    assert!(!ok);
    assert!(stderr.contains("Pass --yes"), "{stderr}");
    let instance_path = format!("/v2/service_instances/{first}");
    assert_eq!(
        broker
            .send(reqwest::Method::GET, &instance_path, None)
            .await,
        200
    );

    let (ok, stdout, stderr) = run_on(&config, &["purge", first, "--yes", "--reason", "ticket 42"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("NOT deleted"), "{stderr}");
    assert!(
        stderr.contains(binding),
        "the bindings to forget are listed: {stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "purged service instance {first} and 1 binding record(s): {binding}"
        )),
        "{stdout}"
    );

    // The broker, still serving, answers as for an id it never saw.
    assert_eq!(
        broker
            .send(reqwest::Method::GET, &instance_path, None)
            .await,
        404
    );
    assert_eq!(
        broker
            .send(
                reqwest::Method::GET,
                &format!("{instance_path}/last_operation"),
                None
            )
            .await,
        404
    );
    assert_eq!(
        broker.send(reqwest::Method::GET, &binding_path, None).await,
        404
    );
    let query = format!("?service_id={ECHO_SERVICE_ID}&plan_id={ECHO_PLAN_ID}");
    assert_eq!(
        broker
            .send(
                reqwest::Method::DELETE,
                &format!("{instance_path}{query}"),
                None
            )
            .await,
        410
    );
    let (ok, _, stderr) = run_on(&config, &["instances", "show", first]);
    assert!(!ok);
    assert!(
        stderr.contains("its history ends with purge succeeded"),
        "{stderr}"
    );

    // The platform may provision the id again; the purge stays in its history.
    assert_eq!(
        broker
            .send(reqwest::Method::PUT, &instance_path, Some(provision_body()))
            .await,
        201
    );
    let (ok, stdout, stderr) = run_on(&config, &["instances", "show", first, "--json"]);
    assert!(ok, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let purge = shown["history"]
        .as_array()
        .and_then(|history| history.iter().find(|entry| entry["kind"] == "purge"))
        .unwrap_or_else(|| panic!("no purge in the history: {shown}"));
    assert!(
        purge["description"]
            .as_str()
            .is_some_and(|text| text.contains("ticket 42")),
        "{purge}"
    );
    assert_eq!(
        shown["bindings"].as_array().map(Vec::len),
        Some(0),
        "{shown}"
    );
}

/// An instance id is the platform's to choose, and OSB does not restrict its
/// characters: one carrying a terminal escape and a line break must reach the
/// operator's terminal escaped, not clear the screen or forge a table row.
#[tokio::test]
async fn control_characters_in_ids_are_shown_escaped() {
    let Some((_dir, config, broker)) = serve_echo().await else {
        return;
    };

    let hostile = "evil\u{1b}[2J\nforged-row";
    let path = "/v2/service_instances/evil%1B%5B2J%0Aforged-row";
    assert_eq!(
        broker
            .send(reqwest::Method::PUT, path, Some(provision_body()))
            .await,
        201
    );

    let (ok, stdout, stderr) = run_on(&config, &["instances", "list"]);
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains('\u{1b}'),
        "raw escape on the terminal: {stdout:?}"
    );
    assert!(
        !stdout.lines().any(|line| line.starts_with("forged-row")),
        "the id's line break made a row of its own: {stdout:?}"
    );
    assert!(stdout.contains("evil\\u{1b}[2J\\nforged-row"), "{stdout:?}");

    let (ok, stdout, stderr) = run_on(&config, &["instances", "show", hostile]);
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains('\u{1b}'),
        "raw escape on the terminal: {stdout:?}"
    );
    assert!(
        stdout.starts_with("service instance evil\\u{1b}[2J\\nforged-row\n"),
        "{stdout:?}"
    );

    // --json is for programs: the id comes back exactly, JSON-escaped.
    let (ok, stdout, stderr) = run_on(&config, &["instances", "list", "--json"]);
    assert!(ok, "{stderr}");
    let page: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(page["instances"][0]["id"], hostile, "{page}");
}
