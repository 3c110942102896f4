//! Secrets end to end: binding credentials are encrypted in the state store
//! and never logged, a store holding them does not open without their key,
//! `rotate-key` moves them to a new key, and `[server.tls]` serves HTTPS.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use reqwest::Method;
use wasm_broker_tests::faults::{ECHO, plain_logs};
use wasm_broker_tests::{
    API_VERSION, BrokerSetup, ENCRYPTION_KEY, PASSWORD, TestBroker, USERNAME, binding_path,
    broker_binary, credential, credentials, service_available, unique_id,
};

const KEY_ENV: &str = "WASM_BROKER_ENCRYPTION_KEY";

/// Runs `wasm-broker <args> --config <the broker's broker.toml>` to its end
/// with no key variables but those in `env`. A `serve` that should refuse
/// to start but serves instead is stopped after 30 s.
async fn run(broker: &TestBroker, args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = tokio::process::Command::new(broker_binary())
        .args(args)
        .arg("--config")
        .arg(broker.dir.path().join("broker.toml"))
        .env("RUST_LOG", "info,wasm_broker=debug")
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .env_remove(KEY_ENV)
        .env_remove("WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS")
        .env_remove("WASM_BROKER_NEW_ENCRYPTION_KEY")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start wasm-broker");
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wasm-broker {args:?} did not finish within 30 s"))
        .expect("wasm-broker output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every byte of the state store's files: the database, its WAL and its
/// shared-memory index.
fn state_files(broker: &TestBroker) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(broker.dir.path().join("state")).expect("state directory") {
        let path = entry.expect("directory entry").path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).expect("state file"));
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn generated_passwords_are_neither_stored_in_clear_nor_logged() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let mut broker = TestBroker::start(BrokerSetup::shipped(&["mysql"])).await;
    let plan = broker.plan("mysql", "small").await;
    let instance_id = unique_id("secrets-instance");
    let binding_id = unique_id("secrets-binding");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, bound) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let password = credential(credentials(&bound), "password").to_owned();
    let uri = credential(credentials(&bound), "uri").to_owned();
    assert!(password.len() >= 16, "a generated password: {password}");
    let (status, fetched) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(
        fetched["credentials"], bound["credentials"],
        "decrypted as stored"
    );

    let stored = state_files(&broker);
    assert!(
        contains(&stored, &binding_id),
        "the files read are the ones the binding was written to"
    );
    for secret in [&password, &uri] {
        assert!(
            !contains(&stored, secret),
            "{secret} is in the state store in clear"
        );
    }

    // After a crash the WAL is all there is of the latest writes.
    broker.kill();
    assert!(!contains(&state_files(&broker), &password));
    broker.spawn().await;
    let (status, fetched) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(
        (status, &fetched["credentials"]),
        (200, &bound["credentials"]),
        "{fetched}"
    );

    let logs = plain_logs(&broker);
    assert!(
        logs.contains("created user"),
        "the log covers the bind:\n{logs}"
    );
    for secret in [&password, &uri] {
        assert!(!logs.contains(secret), "{secret} is in the log:\n{logs}");
    }

    // At debug level everywhere, as an operator investigating would run
    // it: sqlx, hyper and wasmtime log too.
    broker.kill();
    let debug_log = broker.dir.path().join("debug.log");
    let verbose = serve_logging_everything(&broker, &debug_log).await;
    let second_id = unique_id("secrets-binding-2");
    let (status, second) = broker.bind(&instance_id, &second_id, &plan, None).await;
    assert_eq!(status, 201, "{second}");
    let second_password = credential(credentials(&second), "password").to_owned();
    let (status, fetched) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(
        (status, &fetched["credentials"]),
        (200, &bound["credentials"]),
        "{fetched}"
    );
    for id in [&binding_id, &second_id] {
        let (status, body) = broker.unbind(&instance_id, id, &plan).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 200, "{body}");
    drop(verbose);
    let logs = std::fs::read_to_string(&debug_log).expect("debug log");
    assert!(
        logs.contains("DEBUG sqlx::query"),
        "debug logging was on:\n{logs}"
    );
    for secret in [&password, &second_password, &uri] {
        assert!(
            !logs.contains(secret),
            "{secret} is in the debug log:\n{logs}"
        );
    }
}

/// `wasm-broker serve` on the broker's directory and port with every
/// target at debug level, logging to `log`; killed when dropped.
async fn serve_logging_everything(broker: &TestBroker, log: &Path) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("debug log file");
    let child = tokio::process::Command::new(broker_binary())
        .args(["serve", "--config"])
        .arg(broker.dir.path().join("broker.toml"))
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .env(KEY_ENV, ENCRYPTION_KEY)
        .env_remove("WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS")
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start wasm-broker");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let health = broker.raw(Method::GET, "/healthz").send().await;
        if health.is_ok_and(|response| response.status().is_success()) {
            return child;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wasm-broker did not serve within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn credentials_need_their_key_and_survive_a_rotation() {
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    let plan = ECHO.plan();
    let instance_id = unique_id("rotation-instance");
    let binding_id = unique_id("rotation-binding");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, bound) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    broker.kill();

    let refused = run(&broker, &["serve"], &[]).await;
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "served without a key:\n{stderr}");
    assert!(
        stderr.contains(KEY_ENV),
        "the refusal names the variable:\n{stderr}"
    );
    assert!(
        stderr.contains("service binding credentials (1)"),
        "{stderr}"
    );

    let generated = run(&broker, &["generate-key"], &[]).await;
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let new_key = text(&generated.stdout).trim().to_owned();
    assert_eq!(new_key.len(), 44, "32 bytes in base64: {new_key}");
    assert_ne!(new_key, ENCRYPTION_KEY);

    let rotation = run(
        &broker,
        &["rotate-key"],
        &[
            (KEY_ENV, ENCRYPTION_KEY),
            ("WASM_BROKER_NEW_ENCRYPTION_KEY", new_key.as_str()),
        ],
    )
    .await;
    let report = text(&rotation.stdout);
    assert!(
        rotation.status.success(),
        "{report}{}",
        text(&rotation.stderr)
    );
    assert!(
        report.contains("re-encrypted the credentials of 1 service binding(s)"),
        "{report}"
    );
    let new_key_id = report
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(new_key_id.len(), 16, "{report}");

    let old_key_only = run(&broker, &["serve"], &[(KEY_ENV, ENCRYPTION_KEY)]).await;
    let stderr = text(&old_key_only.stderr);
    assert!(
        !old_key_only.status.success(),
        "served with the retired key:\n{stderr}"
    );
    assert!(
        stderr.contains(&new_key_id) && stderr.contains(KEY_ENV),
        "names the key it needs:\n{stderr}"
    );

    broker.encryption_key = Some(new_key);
    broker.spawn().await;
    let (status, fetched) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"], bound["credentials"]);
    let (status, body) = broker.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn without_a_key_the_broker_serves_but_refuses_to_bind() {
    let mut broker = TestBroker::start(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    })
    .await;
    broker.kill();
    broker.encryption_key = None;
    broker.spawn().await;
    let plan = ECHO.plan();
    let instance_id = unique_id("keyless-instance");
    let binding_id = unique_id("keyless-binding");
    let (status, body) = broker.provision(&instance_id, &plan, None).await;
    assert_eq!(status, 201, "instances hold no credentials: {body}");

    let (status, body) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 500, "{body}");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains(KEY_ENV),
        "the refusal says what to set: {body}"
    );
    let (status, body) = broker.get(&binding_path(&instance_id, &binding_id)).await;
    assert_eq!(status, 404, "nothing was recorded: {body}");

    // Refused before the plugin ran, so nothing is left half-made: with a
    // key, the same binding id binds at once.
    broker.kill();
    broker.encryption_key = Some(ENCRYPTION_KEY.to_owned());
    broker.spawn().await;
    let (status, body) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(broker.unbind(&instance_id, &binding_id, &plan).await.0, 200);
    assert_eq!(broker.deprovision(&instance_id, &plan).await.0, 200);
}

/// A self-signed certificate for 127.0.0.1, as (certificate PEM, key PEM).
fn self_signed_certificate() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write PEM file");
    path.display().to_string()
}

#[tokio::test]
async fn tls_serves_https_and_nothing_else() {
    let (certificate, key) = self_signed_certificate();
    let files = tempfile::tempdir().expect("temp dir");
    let cert_path = write_file(files.path(), "cert.pem", &certificate);
    let key_path = write_file(files.path(), "key.pem", &key);
    let broker = TestBroker::start(BrokerSetup {
        server: format!("\n[server.tls]\ncert = \"{cert_path}\"\nkey = \"{key_path}\"\n"),
        tls_certificate: Some(certificate),
        ..BrokerSetup::default()
    })
    .await;
    assert!(
        broker.base_url.starts_with("https://"),
        "{}",
        broker.base_url
    );

    let (status, catalog) = broker.get("/v2/catalog").await;
    assert_eq!(status, 200, "{catalog}");
    assert!(catalog["services"].is_array(), "{catalog}");

    let port = broker.port();
    let catalog_request = |client: reqwest::Client, scheme: &str| {
        client
            .request(
                Method::GET,
                format!("{scheme}://127.0.0.1:{port}/v2/catalog"),
            )
            .basic_auth(USERNAME, Some(PASSWORD))
            .header("X-Broker-API-Version", API_VERSION)
            .send()
    };
    let plain = catalog_request(reqwest::Client::new(), "http").await;
    assert!(
        plain.is_err(),
        "plain HTTP was answered: {:?}",
        plain.map(|response| response.status())
    );
    let untrusting = catalog_request(reqwest::Client::new(), "https").await;
    assert!(
        untrusting.is_err(),
        "a client that does not trust the certificate connected"
    );
    let (status, _) = broker.get("/v2/catalog").await;
    assert_eq!(
        status, 200,
        "still serving HTTPS after the failed handshakes"
    );
    assert!(
        plain_logs(&broker).contains("over HTTPS"),
        "{}",
        plain_logs(&broker)
    );
}

#[tokio::test]
async fn a_missing_certificate_is_named() {
    let mut broker = TestBroker::start(BrokerSetup::default()).await;
    broker.kill();
    let config = broker.dir.path().join("broker.toml");
    let original = std::fs::read_to_string(&config).expect("broker.toml");
    let tls = "[server.tls]\ncert = \"missing/cert.pem\"\nkey = \"missing/key.pem\"\n\n[auth]";
    std::fs::write(&config, original.replacen("[auth]", tls, 1)).expect("rewrite broker.toml");
    let refused = run(&broker, &["serve"], &[(KEY_ENV, ENCRYPTION_KEY)]).await;
    let stderr = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "served without its certificate:\n{stderr}"
    );
    assert!(stderr.contains("missing/cert.pem"), "{stderr}");
}
