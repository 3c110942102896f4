//! What a durable state change costs at the bottom, measured in the same
//! run as the broker: the disk's fsync rate (a file in the state directory,
//! one writer, write then fsync), a bare SQLite transaction (rusqlite on
//! the calling thread, as the store's batch writer runs its statements, and
//! sqlx-sqlite, as the store ran them before; WAL and `synchronous=FULL`
//! like the `StateStore`, the same kind of rows: read the instance, write
//! it, append its history), and the
//! `StateStore` doing the same state change through its own transaction,
//! one writer and then 64 at once (where group commit shares fsyncs).
//! The same on PostgreSQL, when it is reachable: a bare transaction, the
//! store with one writer, and two stores (two replicas) on one database
//! with 32 writers each. Each with the CPU time this process spent per
//! operation.

use std::io::{Seek, SeekFrom, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use wasm_broker::config::StateConfig;
use wasm_broker::lifecycle::{OperationPhase, OperationRecord, ResourceStatus};
use wasm_broker::model::{Instance, OperationKind};
use wasm_broker::state::{InstanceRecord, StateStore, Transition};

use crate::system;

/// Operations in a window, and the CPU this process spent on them.
#[derive(Debug, Clone)]
pub struct Rate {
    pub operations: u64,
    pub seconds: f64,
    pub cpu_us: Option<f64>,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.seconds
    }
}

pub struct Durability {
    /// 4 KiB written in place, then fsync.
    pub fsync: Rate,
    /// One state change in a bare SQLite transaction (rusqlite): the
    /// floor the store is held to.
    pub bare: Rate,
    /// The same through sqlx-sqlite.
    pub bare_sqlx: Rate,
    /// One state change through `StateStore::transition_instance`.
    pub store: Rate,
    /// The same with `CONCURRENT_WRITERS` writers at once.
    pub store_concurrent: Rate,
    /// The PostgreSQL backend, if its server answered.
    pub postgres: Result<PostgresDurability, String>,
}

pub struct PostgresDurability {
    pub bare: Rate,
    pub store: Rate,
    /// Two stores on one database, `CONCURRENT_WRITERS / 2` writers each.
    pub two_replicas: Rate,
}

/// Writers at once in the concurrent measurements: the bench's largest
/// connection count.
pub const CONCURRENT_WRITERS: u64 = 64;

/// Where the PostgreSQL measurements make their scratch database;
/// `WASM_BROKER_BENCH_POSTGRES_URL` overrides it.
const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub async fn measure(dir: &Path, duration: Duration) -> anyhow::Result<Durability> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join("fsync-probe");
    let fsync = tokio::task::spawn_blocking(move || fsync_loop(&probe, duration)).await??;
    let bare = {
        let path = dir.join("bare-rusqlite.db");
        tokio::task::spawn_blocking(move || bare_rusqlite(&path, duration)).await??
    };
    let bare_sqlx = bare_sqlite(&dir.join("bare.db"), duration).await?;
    let config = StateConfig {
        path: dir.join("store/broker.db"),
        encryption_key: Some(crate::servers::encryption_key().into()),
        ..StateConfig::default()
    };
    let store = state_store(&[&config], 1, duration).await?;
    let concurrent = StateConfig {
        path: dir.join("concurrent/broker.db"),
        ..config
    };
    let store_concurrent = state_store(&[&concurrent], CONCURRENT_WRITERS, duration).await?;
    let postgres = match postgres::measure(duration).await {
        Ok(measured) => Ok(measured),
        Err(error) => {
            eprintln!("bench: PostgreSQL measurements skipped: {error:#}");
            Err(format!("{error:#}"))
        }
    };
    Ok(Durability {
        fsync,
        bare,
        bare_sqlx,
        store,
        store_concurrent,
        postgres,
    })
}

/// Runs `step` until `duration` has passed, counting and timing it.
async fn timed<F: AsyncFnMut(u64) -> anyhow::Result<()>>(
    duration: Duration,
    mut step: F,
) -> anyhow::Result<Rate> {
    let clock = Clock::start();
    let mut operations = 0;
    while clock.started.elapsed() < duration {
        step(operations).await?;
        operations += 1;
    }
    Ok(clock.rate(operations))
}

/// When a loop started, and this process's CPU time then.
struct Clock {
    started: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: system::cpu_time(std::process::id()),
        }
    }

    fn rate(&self, operations: u64) -> Rate {
        let seconds = self.started.elapsed().as_secs_f64();
        let cpu_us = self
            .cpu
            .zip(system::cpu_time(std::process::id()))
            .and_then(|(before, after)| after.checked_sub(before))
            .filter(|_| operations > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / operations as f64);
        Rate {
            operations,
            seconds,
            cpu_us,
        }
    }
}

/// Like a WAL reused after a checkpoint: 4 KiB pages written in place in a
/// file of 1 MiB, each followed by fsync (`File::sync_all`).
fn fsync_loop(path: &Path, duration: Duration) -> anyhow::Result<Rate> {
    const PAGE: usize = 4096;
    const PAGES: u64 = 256;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&vec![0; PAGE * PAGES as usize])?;
    file.sync_all()?;
    let page = vec![0x5a; PAGE];
    let clock = Clock::start();
    let mut operations = 0;
    while clock.started.elapsed() < duration {
        file.seek(SeekFrom::Start((operations % PAGES) * PAGE as u64))?;
        file.write_all(&page)?;
        file.sync_all()?;
        operations += 1;
    }
    Ok(clock.rate(operations))
}

/// The instance a state change writes, with its operation record, as the
/// broker's provision writes it.
fn record(number: u64, phase: OperationPhase) -> InstanceRecord {
    InstanceRecord {
        instance: Instance {
            id: format!("durable-{}", number / 2),
            service_id: "bench-noop-service-1".to_owned(),
            plan_id: "bench-noop-plan-1".to_owned(),
            parameters: Some(serde_json::json!({"size": "small"})),
            context: Some(serde_json::json!({"platform": "bench"})),
            organization_guid: Some("org".to_owned()),
            space_guid: Some("space".to_owned()),
            maintenance_version: None,
            plugin_version: "1.0.0".to_owned(),
        },
        status: match phase {
            OperationPhase::Succeeded => ResourceStatus::Ready,
            _ => ResourceStatus::Creating,
        },
        dashboard_url: None,
        metadata: None,
        operation: Some(OperationRecord {
            id: format!("{:032x}", number / 2),
            kind: OperationKind::Provision,
            phase,
            plugin_operation: None,
            description: None,
            instance_usable: None,
            update_repeatable: None,
            changes: None,
            request_fingerprint: "0".repeat(64),
        }),
    }
}

/// Each change: even numbers create an instance (`Calling`), odd ones
/// finish it (`Succeeded`), as a synchronous provision does.
fn phase_of(number: u64) -> OperationPhase {
    if number.is_multiple_of(2) {
        OperationPhase::Calling
    } else {
        OperationPhase::Succeeded
    }
}

const BARE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY NOT NULL, service_id TEXT NOT NULL, plan_id TEXT NOT NULL,
    status TEXT NOT NULL, record TEXT NOT NULL, operation TEXT, operation_phase TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX IF NOT EXISTS instances_by_operation_phase ON instances (operation_phase);
CREATE TABLE IF NOT EXISTS operations (
    seq INTEGER PRIMARY KEY, resource_kind TEXT NOT NULL, resource_id TEXT NOT NULL,
    operation_id TEXT NOT NULL, kind TEXT NOT NULL, phase TEXT NOT NULL, description TEXT,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX IF NOT EXISTS operations_by_resource ON operations (resource_kind, resource_id);
";

/// One writer, one connection: `BEGIN IMMEDIATE`, read the row, upsert it,
/// append a history row, commit (WAL, `synchronous=FULL`).
async fn bare_sqlite(path: &Path, duration: Duration) -> anyhow::Result<Rate> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::raw_sql(BARE_SCHEMA).execute(&pool).await?;
    let rate = timed(duration, async |number| {
        let record = record(number, phase_of(number));
        let instance = serde_json::to_string(&record.instance)?;
        let operation = serde_json::to_string(&record.operation)?;
        let id = record.instance.id.as_str();
        let phase = format!("{:?}", phase_of(number)).to_lowercase();
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("SELECT record, operation FROM instances WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
        sqlx::query(
            "INSERT INTO instances (id, service_id, plan_id, status, record, operation, operation_phase)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record,
                 operation = excluded.operation, operation_phase = excluded.operation_phase,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
        .bind(id)
        .bind(&record.instance.service_id)
        .bind(&record.instance.plan_id)
        .bind(format!("{:?}", record.status).to_lowercase())
        .bind(instance)
        .bind(operation)
        .bind(&phase)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO operations (resource_kind, resource_id, operation_id, kind, phase)
             VALUES ('instance', $1, $2, 'provision', $3)",
        )
        .bind(id)
        .bind(format!("{:032x}", number / 2))
        .bind(&phase)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    })
    .await?;
    pool.close().await;
    Ok(rate)
}

/// The same as [`bare_sqlite`] through rusqlite, with prepared statements
/// kept, on this (blocking) thread.
fn bare_rusqlite(path: &Path, duration: Duration) -> anyhow::Result<Rate> {
    let mut connection = rusqlite::Connection::open(path)?;
    connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    connection.execute_batch(BARE_SCHEMA)?;
    let clock = Clock::start();
    let mut number = 0;
    while clock.started.elapsed() < duration {
        let record = record(number, phase_of(number));
        let instance = serde_json::to_string(&record.instance)?;
        let operation = serde_json::to_string(&record.operation)?;
        let id = record.instance.id.as_str();
        let phase = format!("{:?}", phase_of(number)).to_lowercase();
        let status = format!("{:?}", record.status).to_lowercase();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut read = transaction
                .prepare_cached("SELECT record, operation FROM instances WHERE id = ?1")?;
            let mut rows = read.query([id])?;
            while rows.next()?.is_some() {}
        }
        transaction
            .prepare_cached(
                "INSERT INTO instances (id, service_id, plan_id, status, record, operation, operation_phase)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record,
                     operation = excluded.operation, operation_phase = excluded.operation_phase,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            )?
            .execute(rusqlite::params![
                id,
                record.instance.service_id,
                record.instance.plan_id,
                status,
                instance,
                operation,
                phase
            ])?;
        transaction
            .prepare_cached(
                "INSERT INTO operations (resource_kind, resource_id, operation_id, kind, phase)
                 VALUES ('instance', ?1, ?2, 'provision', ?3)",
            )?
            .execute(rusqlite::params![id, format!("{:032x}", number / 2), phase])?;
        transaction.commit()?;
        number += 1;
    }
    Ok(clock.rate(number))
}

/// The same state changes through the broker's own store(s): `writers`
/// loops at once, spread over `configs` (one store each), each on ids of
/// its own.
async fn state_store(
    configs: &[&StateConfig],
    writers: u64,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let mut stores = Vec::new();
    for config in configs {
        stores.push(
            StateStore::open(config)
                .await
                .context("opening the state store")?,
        );
    }
    let clock = Clock::start();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = stores[writer as usize % stores.len()].clone();
        let started = clock.started;
        tasks.spawn(async move {
            let mut operations = 0_u64;
            while started.elapsed() < duration {
                // Interleaved numbers keep each writer on ids of its own.
                let number = (operations / 2 * writers + writer) * 2 + operations % 2;
                let record = record(number, phase_of(number));
                let id = record.instance.id.clone();
                store
                    .transition_instance(&id, |_| Transition::Write(record, ()))
                    .await?;
                operations += 1;
            }
            anyhow::Ok(operations)
        });
    }
    let mut operations = 0;
    while let Some(done) = tasks.join_next().await {
        operations += done??;
    }
    let rate = clock.rate(operations);
    for store in stores {
        store.close().await;
    }
    Ok(rate)
}

/// The PostgreSQL backend: a scratch database of its own, dropped after.
mod postgres {
    use super::*;
    use sqlx::{Connection as _, Executor as _, PgConnection};
    use wasm_broker::config::StateBackend;

    const BARE_SCHEMA: &str = "
    CREATE TABLE instances (
        id TEXT PRIMARY KEY NOT NULL, service_id TEXT NOT NULL, plan_id TEXT NOT NULL,
        status TEXT NOT NULL, record TEXT NOT NULL, operation TEXT, operation_phase TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX instances_by_operation_phase ON instances (operation_phase);
    CREATE TABLE operations (
        seq BIGSERIAL PRIMARY KEY, resource_kind TEXT NOT NULL, resource_id TEXT NOT NULL,
        operation_id TEXT NOT NULL, kind TEXT NOT NULL, phase TEXT NOT NULL, description TEXT,
        at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX operations_by_resource ON operations (resource_kind, resource_id);
    ";

    pub async fn measure(duration: Duration) -> anyhow::Result<PostgresDurability> {
        let admin_url = std::env::var("WASM_BROKER_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        let mut databases = Vec::new();
        let mut result = async {
            let bare_url = scratch(&mut admin, &admin_url, "bare", &mut databases).await?;
            let bare = bare_postgres(&bare_url, duration).await?;
            let one_url = scratch(&mut admin, &admin_url, "store", &mut databases).await?;
            let store = state_store(&[&config(&one_url)], 1, duration).await?;
            let two_url = scratch(&mut admin, &admin_url, "replicas", &mut databases).await?;
            let replicas = config(&two_url);
            let two_replicas =
                state_store(&[&replicas, &replicas], CONCURRENT_WRITERS, duration).await?;
            anyhow::Ok(PostgresDurability {
                bare,
                store,
                two_replicas,
            })
        }
        .await;
        for name in databases {
            let dropped = admin
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
            if let (Err(error), Ok(_)) = (dropped, &result) {
                result = Err(anyhow::anyhow!("dropping {name}: {error}"));
            }
        }
        result
    }

    /// A fresh database; its URL.
    async fn scratch(
        admin: &mut PgConnection,
        admin_url: &str,
        purpose: &str,
        made: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let name = format!("wasm_broker_bench_{purpose}_{}", std::process::id());
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        made.push(name.clone());
        let mut url = url::Url::parse(admin_url)?;
        url.set_path(&name);
        Ok(url.to_string())
    }

    fn config(url: &str) -> StateConfig {
        StateConfig {
            backend: StateBackend::Postgres,
            url: Some(url.to_owned().into()),
            encryption_key: Some(crate::servers::encryption_key().into()),
            ..StateConfig::default()
        }
    }

    /// One writer, one connection: `BEGIN`, read the row, upsert it,
    /// append a history row, commit (synchronous commit, the default).
    async fn bare_postgres(url: &str, duration: Duration) -> anyhow::Result<Rate> {
        let mut connection = PgConnection::connect(url).await?;
        sqlx::raw_sql(BARE_SCHEMA).execute(&mut connection).await?;
        timed(duration, async |number| {
            let record = record(number, phase_of(number));
            let instance = serde_json::to_string(&record.instance)?;
            let operation = serde_json::to_string(&record.operation)?;
            let id = record.instance.id.as_str();
            let phase = format!("{:?}", phase_of(number)).to_lowercase();
            let mut transaction = connection.begin().await?;
            sqlx::query("SELECT record, operation FROM instances WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *transaction)
                .await?;
            sqlx::query(
                "INSERT INTO instances (id, service_id, plan_id, status, record, operation, operation_phase)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record,
                     operation = excluded.operation, operation_phase = excluded.operation_phase,
                     updated_at = now()",
            )
            .bind(id)
            .bind(&record.instance.service_id)
            .bind(&record.instance.plan_id)
            .bind(format!("{:?}", record.status).to_lowercase())
            .bind(instance)
            .bind(operation)
            .bind(&phase)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO operations (resource_kind, resource_id, operation_id, kind, phase)
                 VALUES ('instance', $1, $2, 'provision', $3)",
            )
            .bind(id)
            .bind(format!("{:032x}", number / 2))
            .bind(&phase)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            Ok(())
        })
        .await
    }
}
