//! Scale: fetch-instance and last_operation latency of the real broker on
//! an empty state store, then on one holding 100,000 instances and 200,000
//! bindings, written through the broker's own [`StateStore`] API.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hyper::{Method, StatusCode};
use serde_json::json;
use wasm_broker::config::StateConfig;
use wasm_broker::lifecycle::{OperationPhase, OperationRecord, ResourceStatus};
use wasm_broker::model::{Binding, BindingResult, Instance, OperationKind};
use wasm_broker::state::{BindingRecord, InstanceRecord, StateStore, Transition};

use crate::load::{self, Connection, Measurement, Window, nanos};
use crate::prepare::Artifacts;
use crate::scenarios::{Plan, Read, instance_path, provision_body};
use crate::servers::{
    NoopCopy, ServerProcess, broker_command, encryption_key, free_address, write_broker_config,
};

pub const BINDINGS_PER_INSTANCE: usize = 2;
/// Instances the latency phases read, provisioned through the broker.
const MEASURED_INSTANCES: usize = 64;
/// Reads of one record through the store API, in this process.
const STORE_READS: usize = 5_000;
const WARMUP: Duration = Duration::from_millis(500);

pub struct Scale {
    pub instances: usize,
    pub fetch_empty: Measurement,
    pub fetch_full: Measurement,
    pub poll_empty: Measurement,
    pub poll_full: Measurement,
    /// `StateStore::instance` alone, in this process.
    pub store_read_empty: Measurement,
    pub store_read_full: Measurement,
    pub populate: Duration,
}

/// `scratch` should be a RAM file system: the records are written through
/// the store API, one durable transaction each, which on a disk would cost
/// an fsync apiece. The finished file is copied to disk for the broker.
pub async fn measure(
    artifacts: &Artifacts,
    dir: &Path,
    scratch: &Path,
    instances: usize,
    duration: Duration,
) -> anyhow::Result<Scale> {
    let copy = NoopCopy::numbered(1);
    let (fetch_empty, poll_empty) =
        measure_broker(artifacts, &dir.join("empty"), &copy, None, duration).await?;

    let store_path = scratch.join("broker.db");
    let state = StateConfig {
        path: store_path.clone(),
        encryption_key: Some(encryption_key().into()),
        ..StateConfig::default()
    };
    let store = StateStore::open(&state)
        .await
        .context("opening the store to fill")?;
    let probe = write_instance(&store, "scale-probe", &copy.plan).await?;
    let store_read_empty = time_store_reads(&store, &probe).await?;
    let started = Instant::now();
    for number in 0..instances {
        fill(&store, number, &copy.plan).await?;
    }
    let populate = started.elapsed();
    let store_read_full = time_store_reads(&store, &probe).await?;
    // Checkpoints the WAL into the file, so the file alone is the store.
    store.close().await;

    let full_dir = dir.join("full");
    std::fs::create_dir_all(full_dir.join("state"))?;
    std::fs::copy(&store_path, full_dir.join("state/broker.db"))
        .context("copying the filled store to disk")?;
    let (fetch_full, poll_full) =
        measure_broker(artifacts, &full_dir, &copy, Some(instances), duration).await?;
    Ok(Scale {
        instances,
        fetch_empty,
        fetch_full,
        poll_empty,
        poll_full,
        store_read_empty,
        store_read_full,
        populate,
    })
}

/// Starts a broker on `dir` (its state store already there or not),
/// provisions the measured instances through it, and times fetching them
/// and polling their last operation, one request at a time.
async fn measure_broker(
    artifacts: &Artifacts,
    dir: &Path,
    copy: &NoopCopy,
    expected_fill: Option<usize>,
    duration: Duration,
) -> anyhow::Result<(Measurement, Measurement)> {
    let address = free_address()?;
    let config = write_broker_config(
        dir,
        address,
        &dir.join("compiled"),
        std::slice::from_ref(copy),
    )?;
    std::fs::copy(
        &artifacts.noop,
        dir.join("plugins").join(format!("{}.wasm", copy.stem)),
    )?;
    let (broker, _) = ServerProcess::start(
        broker_command(&artifacts.broker, &config),
        address,
        dir.join("broker.log"),
    )
    .await?;
    let mut connection = Connection::open(&broker.endpoint).await?;
    let mut fetch = Vec::with_capacity(MEASURED_INSTANCES);
    for number in 0..MEASURED_INSTANCES {
        let path = instance_path(&format!("scale-{number}"));
        let (status, body) = connection
            .send(Method::PUT, &path, Some(provision_body(&copy.plan)))
            .await?;
        ensure!(
            status == StatusCode::CREATED,
            "provisioning {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        fetch.push(path);
    }
    if let Some(fill) = expected_fill {
        let (status, _) = connection
            .send(
                Method::GET,
                &instance_path(&format!("scale-fill-{}", fill - 1)),
                None,
            )
            .await?;
        ensure!(
            status == StatusCode::OK,
            "the broker does not see the filled store ({status})"
        );
    }
    let poll: Vec<String> = fetch
        .iter()
        .map(|path| format!("{path}/last_operation"))
        .collect();
    let read = |paths: Vec<String>| {
        let paths = Arc::new(paths);
        let endpoint = broker.endpoint.clone();
        async move {
            let window = Window::after_warmup(WARMUP, duration);
            load::run(&endpoint, 1, window, |_| Read {
                paths: paths.clone(),
                next: 0,
            })
            .await
        }
    };
    let fetched = read(fetch).await?;
    let polled = read(poll).await?;
    Ok((fetched, polled))
}

async fn time_store_reads(store: &StateStore, instance_id: &str) -> anyhow::Result<Measurement> {
    let mut latencies_ns = Vec::with_capacity(STORE_READS);
    let started = Instant::now();
    for _ in 0..STORE_READS {
        let read = Instant::now();
        let record = store.instance(instance_id).await?;
        latencies_ns.push(nanos(read.elapsed()));
        ensure!(record.is_some(), "{instance_id} is not in the store");
    }
    Ok(Measurement::from_latencies(
        latencies_ns,
        started.elapsed().as_secs_f64(),
    ))
}

/// Instance `number` of the fill and its bindings.
async fn fill(store: &StateStore, number: usize, plan: &Plan) -> anyhow::Result<()> {
    let instance_id = write_instance(store, &format!("scale-fill-{number}"), plan).await?;
    for binding in 0..BINDINGS_PER_INSTANCE {
        let binding_id = format!("scale-fill-{number}-{binding}");
        write_binding(store, &instance_id, &binding_id, plan).await?;
    }
    Ok(())
}

fn succeeded(kind: OperationKind, number: u64) -> OperationRecord {
    OperationRecord {
        id: format!("{number:032x}"),
        kind,
        phase: OperationPhase::Succeeded,
        plugin_operation: None,
        description: None,
        instance_usable: None,
        update_repeatable: None,
        changes: None,
        request_fingerprint: String::new(),
    }
}

/// A provisioned instance, as the broker leaves it.
async fn write_instance(
    store: &StateStore,
    instance_id: &str,
    plan: &Plan,
) -> anyhow::Result<String> {
    let record = InstanceRecord {
        instance: Instance {
            id: instance_id.to_owned(),
            service_id: plan.service_id.clone(),
            plan_id: plan.plan_id.clone(),
            parameters: None,
            context: Some(
                json!({"platform": "cloudfoundry", "organization_guid": "org-guid-bench"}),
            ),
            organization_guid: Some("org-guid-bench".to_owned()),
            space_guid: Some("space-guid-bench".to_owned()),
            maintenance_version: None,
            plugin_version: "1.0.0".to_owned(),
        },
        status: ResourceStatus::Ready,
        dashboard_url: None,
        metadata: None,
        operation: Some(succeeded(OperationKind::Provision, 1)),
    };
    store
        .transition_instance(instance_id, |_| Transition::Write(record, ()))
        .await?;
    Ok(instance_id.to_owned())
}

/// A binding with sealed credentials, as the broker leaves it.
async fn write_binding(
    store: &StateStore,
    instance_id: &str,
    binding_id: &str,
    plan: &Plan,
) -> anyhow::Result<()> {
    let record = BindingRecord {
        binding: Binding {
            id: binding_id.to_owned(),
            instance_id: instance_id.to_owned(),
            service_id: plan.service_id.clone(),
            plan_id: plan.plan_id.clone(),
            app_guid: Some("app-guid-bench".to_owned()),
            bind_resource: Some(json!({"app_guid": "app-guid-bench"})),
            context: None,
            parameters: None,
            predecessor_binding_id: None,
        },
        status: ResourceStatus::Ready,
        result: Some(BindingResult {
            credentials: Some(json!({"username": "fixture", "password": "fixture"})),
            ..BindingResult::default()
        }),
        operation: Some(succeeded(OperationKind::Bind, 2)),
    };
    store
        .transition_binding(binding_id, instance_id, |_, _| {
            Transition::Write(record, ())
        })
        .await?;
    Ok(())
}
