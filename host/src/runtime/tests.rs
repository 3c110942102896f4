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
    state: StateStore,
}

/// The broker.toml of the fixture in `directory`, with `extra` appended.
fn config_text(directory: &Path, extra: &str) -> String {
    format!(
        r#"
        [auth]
        username = "u"
        password = "p"
        [runtime]
        plugin_dir = {plugin_dir:?}
        cache_dir = {cache_dir:?}
        max_concurrent_instances = 8
        [connections.mariadb]
        kind = "mysql"
        url = "mysql://root@127.0.0.1:3306"
        [plugins.mysql.connections]
        admin = "mariadb"
        {extra}
        "#,
        plugin_dir = directory.join("plugins"),
        cache_dir = directory.join("cache"),
    )
}

impl Fixture {
    async fn start(plugins: &[(&Path, &str)]) -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let plugin_dir = directory.path().join("plugins");
        std::fs::create_dir(&plugin_dir).expect("plugin dir");
        for (source, name) in plugins {
            std::fs::copy(source, plugin_dir.join(name)).expect("plugin copied");
        }
        let state_config = StateConfig {
            path: directory.path().join("broker.db"),
            ..StateConfig::default()
        };
        let state = StateStore::open(&state_config).await.expect("state store");
        let runtime = Self::runtime(directory.path(), &state).await;
        Self {
            directory,
            runtime,
            state,
        }
    }

    /// A runtime on the fixture's directory and store (a restart, when one
    /// runs already).
    async fn runtime(directory: &Path, state: &StateStore) -> Arc<PluginRuntime> {
        let config: Config = toml::from_str(&config_text(directory, "")).expect("config parses");
        PluginRuntime::start(&config, state.clone())
            .await
            .expect("runtime starts")
    }

    /// Dates every compiled plugin file as last used longer ago than the
    /// cache keeps unused code.
    fn age_compiled_artifacts(&self) {
        let long_ago = std::time::SystemTime::now()
            - compile_cache::UNUSED_RETENTION
            - Duration::from_secs(3600);
        for path in self.compiled_artifacts() {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|file| file.set_modified(long_ago))
                .expect("dated");
        }
    }

    /// The compiled plugin files the compile cache holds.
    fn compiled_artifacts(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.directory.path().join("cache"))
            .expect("cache listable")
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
            .collect()
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
async fn plugins_load_reload_and_refuse_what_another_owns() {
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

    // The same catalog under another name declares what mysql owns.
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
    assert!(error.contains("which plugin mysql owns"), "{error}");
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

    // mysql gone, the copy is still refused: mysql owns the offering
    // until the operator releases it.
    std::fs::remove_file(fixture.plugin_file("mysql.wasm")).expect("removed");
    fixture
        .wait_for("mysql to go", |f| f.status("mysql").is_none())
        .await;
    let still = fixture.status("mysql-copy").and_then(|s| s.error);
    assert!(
        still
            .as_deref()
            .is_some_and(|error| error.contains("which plugin mysql owns")),
        "{still:?}"
    );
    let released = fixture
        .state
        .release_owner("mysql")
        .await
        .expect("released");
    assert!(!released.is_empty());
    // Released: the next change of the directory lets the copy serve.
    std::fs::write(fixture.plugin_file("unrelated.txt"), b"a change").expect("written");
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

/// The instance record of an instance of `service_id` in `status`.
async fn put_instance(
    state: &StateStore,
    instance: &Instance,
    status: crate::lifecycle::ResourceStatus,
) {
    let record = crate::state::InstanceRecord {
        instance: instance.clone(),
        status,
        dashboard_url: None,
        metadata: None,
        operation: None,
    };
    state
        .transition_instance(&instance.id, |_| {
            crate::state::Transition::Write(record, ())
        })
        .await
        .expect("instance written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_plugin_retires_while_its_instances_remain() {
    use crate::lifecycle::ResourceStatus;
    let Some(mysql) = built_plugin("mysql") else {
        return;
    };
    let fixture = Fixture::start(&[(&mysql, "mysql.wasm")]).await;
    let catalog = fixture.runtime.catalog();
    let offering = catalog.catalog.services[0].clone();
    let (_, info) = catalog.plugin_of(&offering.id).expect("served");
    let instance = instance(&offering.id, &offering.plans[0].id, &info.version);
    put_instance(&fixture.state, &instance, ResourceStatus::Ready).await;

    std::fs::remove_file(fixture.plugin_file("mysql.wasm")).expect("removed");
    fixture
        .wait_for("mysql to retire", |f| {
            f.status("mysql")
                .is_some_and(|s| s.retired_instances == Some(1))
        })
        .await;
    let catalog = fixture.runtime.catalog();
    assert!(catalog.service(&offering.id).is_none(), "no longer offered");
    assert!(catalog.retired_service(&offering.id).is_some());
    assert!(
        fixture.runtime.serving(&offering.id).is_ok(),
        "still serves its instance"
    );

    // A restart finds the file gone and the instance left: the retired
    // version comes back from the copy in the compile cache.
    fixture.age_compiled_artifacts();
    let restarted = Fixture::runtime(fixture.directory.path(), &fixture.state).await;
    let status = restarted
        .plugins()
        .into_iter()
        .find(|status| status.name == "mysql")
        .expect("listed after a restart");
    assert_eq!((status.retired_instances, status.error), (Some(1), None));
    assert!(restarted.serving(&offering.id).is_ok());
    assert_eq!(
        fixture.compiled_artifacts().len(),
        1,
        "a retired version's compiled code is in use: kept"
    );
    drop(restarted);

    // Once the instance is deleted, the next reload releases the plugin.
    put_instance(&fixture.state, &instance, ResourceStatus::Deleted).await;
    watcher::reload(&fixture.runtime.loader, &fixture.runtime.plugins).await;
    assert!(
        fixture.status("mysql").is_none(),
        "{:#?}",
        fixture.runtime.plugins()
    );
    assert!(matches!(
        fixture.runtime.serving(&offering.id),
        Err(CallError::NoPlugin { .. })
    ));
    fixture.age_compiled_artifacts();
    let restarted = Fixture::runtime(fixture.directory.path(), &fixture.state).await;
    assert!(restarted.plugins().is_empty(), "{:#?}", restarted.plugins());
    assert_eq!(
        fixture.compiled_artifacts().len(),
        0,
        "a released version's code unused for a week is pruned at the next start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_broker_toml_loads_every_plugin_again_or_nothing() {
    let Some(mysql) = built_plugin("mysql") else {
        return;
    };
    let fixture = Fixture::start(&[(&mysql, "mysql.wasm")]).await;
    let service_id = fixture.runtime.catalog().catalog.services[0].id.clone();
    let serving = || fixture.runtime.serving(&service_id).expect("served");
    let before = serving();
    assert_eq!(before.generation, 0);
    let path = fixture.directory.path().join("broker.toml");

    // Unchanged: nothing is loaded again, unless SIGHUP asks.
    std::fs::write(&path, config_text(fixture.directory.path(), "")).expect("write");
    let applied = fixture
        .runtime
        .apply_config(&path, Trigger::FileChanged)
        .await
        .expect("valid");
    assert_eq!(applied, Applied::Unchanged);
    assert!(Arc::ptr_eq(&before, &serving()));

    // A new limit and a new connection: loaded again, the unchanged
    // connection shared.
    let extra = "[connections.other]\nkind = \"redis\"\nurl = \"redis://127.0.0.1\"\n[plugins.mysql]\ncall_timeout_ms = 1234";
    std::fs::write(&path, config_text(fixture.directory.path(), extra)).expect("write");
    let applied = fixture
        .runtime
        .apply_config(&path, Trigger::FileChanged)
        .await
        .expect("valid");
    let Applied::Reloaded(changes) = applied else {
        panic!("not reloaded: {applied:?}")
    };
    assert_eq!(changes.added, ["other"]);
    assert!(changes.changed.is_empty() && changes.removed.is_empty());
    let after = serving();
    assert_eq!((after.generation, after.limits.call_timeout_ms), (1, 1234));
    assert_eq!(
        before.limits.call_timeout_ms, 10_000,
        "the old version keeps its limits"
    );

    // Invalid: a grant of a connection that does not exist. Nothing changes.
    let invalid = "[plugins.redis.connections]\ncache = \"nope\"";
    std::fs::write(&path, config_text(fixture.directory.path(), invalid)).expect("write");
    let error = fixture
        .runtime
        .apply_config(&path, Trigger::FileChanged)
        .await
        .expect_err("invalid");
    assert!(error.to_string().contains("nope"), "{error}");
    assert!(Arc::ptr_eq(&after, &serving()));

    // SIGHUP reloads even an unchanged file.
    std::fs::write(&path, config_text(fixture.directory.path(), extra)).expect("write");
    let applied = fixture
        .runtime
        .apply_config(&path, Trigger::Hangup)
        .await
        .expect("valid");
    assert_eq!(applied, Applied::Reloaded(Default::default()));
    assert_eq!(serving().generation, 2);
}
