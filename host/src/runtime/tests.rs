//! The runtime against the real plugins, when they have been built
//! (`target/wasm/wasm32-wasip2/release/*.wasm`); without them these tests
//! say so and pass, and the `tests` crate covers the same ground end to end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::config::StateConfig;
use crate::state::StateStore;

fn built_plugin(name: &str) -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm/wasm32-wasip2/release");
    let path = target.join(format!("{name}.wasm"));
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: {} is not built", path.display());
        None
    }
}

struct Fixture {
    directory: tempfile::TempDir,
    runtime: Arc<PluginRuntime>,
}

impl Fixture {
    async fn start(plugins: &[(&Path, &str)]) -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let plugin_dir = directory.path().join("plugins");
        std::fs::create_dir(&plugin_dir).expect("plugin dir");
        for (source, name) in plugins {
            std::fs::copy(source, plugin_dir.join(name)).expect("plugin copied");
        }
        let config: Config = toml::from_str(&format!(
            r#"
            [runtime]
            plugin_dir = {plugin_dir:?}
            cache_dir = {cache_dir:?}
            max_concurrent_instances = 8
            [connections.mariadb]
            kind = "mysql"
            url = "mysql://root@127.0.0.1:3306"
            [plugins.mysql.connections]
            admin = "mariadb"
            "#,
            cache_dir = directory.path().join("cache"),
        ))
        .expect("config parses");
        let state_config = StateConfig {
            path: directory.path().join("broker.db"),
            ..StateConfig::default()
        };
        let state = StateStore::open(&state_config).await.expect("state store");
        let runtime = PluginRuntime::start(&config, state)
            .await
            .expect("runtime starts");
        Self { directory, runtime }
    }

    fn plugin_file(&self, name: &str) -> PathBuf {
        self.directory.path().join("plugins").join(name)
    }

    fn status(&self, name: &str) -> Option<PluginStatus> {
        self.runtime
            .plugins()
            .into_iter()
            .find(|status| status.name == name)
    }

    /// Waits for the watcher to bring the runtime to the state `done` checks.
    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.runtime.plugins()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn instance(service_id: &str, plan_id: &str, plugin_version: &str) -> Instance {
    Instance {
        id: format!("runtime-test-{}", std::process::id()),
        service_id: service_id.to_owned(),
        plan_id: plan_id.to_owned(),
        parameters: None,
        context: None,
        organization_guid: None,
        space_guid: None,
        maintenance_version: None,
        plugin_version: plugin_version.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_load_reload_and_refuse_clashes() {
    let (Some(mysql), Some(postgres)) = (built_plugin("mysql"), built_plugin("postgres")) else {
        return;
    };
    let fixture = Fixture::start(&[(&mysql, "mysql.wasm")]).await;

    let status = fixture.status("mysql").expect("mysql listed");
    assert_eq!(status.error, None);
    assert_eq!(status.wit_version.as_deref(), Some("0.1.0"));
    assert_eq!(status.services, vec!["mysql".to_owned()]);
    let catalog = fixture.runtime.catalog();
    let offering = &catalog.catalog.services[0];
    assert_eq!(
        catalog.plugin_of(&offering.id).map(|(name, _)| name),
        Some("mysql")
    );

    // The same catalog under another name clashes with the serving plugin.
    std::fs::copy(&mysql, fixture.plugin_file("mysql-copy.wasm")).expect("copied");
    fixture
        .wait_for("the copy to be refused", |f| {
            f.status("mysql-copy").is_some()
        })
        .await;
    let refused = fixture.status("mysql-copy").expect("listed");
    let error = refused.error.expect("refused");
    assert!(
        error.starts_with("plugin mysql-copy declares offering id"),
        "{error}"
    );
    assert!(
        error.ends_with("which plugin mysql already serves"),
        "{error}"
    );
    assert_eq!(
        fixture.status("mysql").and_then(|s| s.error),
        None,
        "the serving plugin stays"
    );

    // A new plugin is picked up without a restart.
    std::fs::copy(&postgres, fixture.plugin_file("postgres.wasm")).expect("copied");
    fixture
        .wait_for("postgres to load", |f| {
            f.status("postgres").is_some_and(|s| s.info.is_some())
        })
        .await;
    assert_eq!(fixture.runtime.catalog().catalog.services.len(), 2);

    // A broken replacement leaves the previous version serving.
    std::fs::write(fixture.plugin_file("postgres.wasm"), b"not a component").expect("written");
    fixture
        .wait_for("the broken file to be refused", |f| {
            f.status("postgres").is_some_and(|s| s.error.is_some())
        })
        .await;
    let status = fixture.status("postgres").expect("listed");
    let error = status.error.expect("refused");
    assert!(
        error.starts_with("the new file was refused (is not a valid component"),
        "{error}"
    );
    assert!(status.info.is_some(), "the old version still serves");

    // Once mysql is gone, the copy no longer clashes and serves.
    std::fs::remove_file(fixture.plugin_file("mysql.wasm")).expect("removed");
    fixture
        .wait_for("mysql to go", |f| f.status("mysql").is_none())
        .await;
    fixture
        .wait_for("the copy to serve", |f| {
            f.status("mysql-copy").is_some_and(|s| s.error.is_none())
        })
        .await;
    assert_eq!(
        fixture
            .runtime
            .catalog()
            .plugin_of(&offering.id)
            .map(|(name, _)| name),
        Some("mysql-copy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_on_the_owning_plugin() {
    let Some(mysql) = built_plugin("mysql") else {
        return;
    };
    let fixture = Fixture::start(&[(&mysql, "mysql.wasm")]).await;
    let catalog = fixture.runtime.catalog();
    let offering = &catalog.catalog.services[0];
    let (_, info) = catalog.plugin_of(&offering.id).expect("served");
    let instance = instance(&offering.id, &offering.plans[0].id, &info.version);
    let request = RequestInfo {
        api_version: "2.17".to_owned(),
        ..RequestInfo::default()
    };

    let outcome = fixture
        .runtime
        .provision(&instance, &request)
        .await
        .expect("provisioned");
    assert!(matches!(outcome, InstanceOutcome::Done(_)), "{outcome:?}");
    let outcome = fixture
        .runtime
        .deprovision(&instance, &request)
        .await
        .expect("deprovisioned");
    assert_eq!(outcome, DeletionOutcome::Done);

    let unknown = Instance {
        service_id: "no-such-service".to_owned(),
        ..instance
    };
    let error = fixture
        .runtime
        .deprovision(&unknown, &request)
        .await
        .expect_err("nobody serves it");
    assert!(matches!(error, CallError::NoPlugin { service_id } if service_id == "no-such-service"));
}

/// The broker core awaits runtime calls inside request handlers, which the
/// HTTP server runs on any worker thread.
#[test]
fn calls_can_move_between_threads() {
    fn assert_send<T: Send>(_: &T) {}
    fn check(runtime: &PluginRuntime, instance: &Instance, binding: &Binding, info: &RequestInfo) {
        assert_send(&runtime.provision(instance, info));
        assert_send(&runtime.bind(instance, binding, info));
        assert_send(&runtime.last_binding_operation(instance, binding, OperationKind::Bind, None));
    }
    let _ = check;
}
