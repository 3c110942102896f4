//! Serving from the store, as the only broker (SQLite) or as one replica
//! among several sharing a PostgreSQL store: each replica holds a lease it
//! keeps renewing, and the operations a broker left under way when it
//! stopped (its plugin call cut short) are failed, at startup or once the
//! lease of the replica calling them runs out.

use std::time::Duration;

use sqlx::AnyConnection;

use super::tables::history::{self, OperationMark, ResourceKind};
use super::tables::{self, Interrupted};
use super::{StateError, StateStore};
use crate::config::StateBackend;

/// PostgreSQL only: a replica's lease, renewed (or taken again, should
/// another replica have given it up for dead meanwhile).
const RENEW_LEASE: &str = "\
    INSERT INTO replicas (id) VALUES ($1) \
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()";

/// PostgreSQL only: replicas whose lease ran out, once their operations are
/// failed. `$1` is the replica asking, `$2` the lease in seconds.
const DELETE_EXPIRED_REPLICAS: &str = "\
    DELETE FROM replicas \
    WHERE id <> $1 AND heartbeat_at <= clock_timestamp() - make_interval(secs => $2)";

impl StateStore {
    /// Marks the operations a crash cut short `Failed` with `description`
    /// (creations become `Failed` resources, other kinds leave the resource
    /// as it was): on SQLite, run at startup, every operation still
    /// `Calling`; on PostgreSQL, those whose calling replica's lease ran out.
    /// Returns how many were marked.
    pub async fn fail_interrupted_operations(&self, description: &str) -> Result<u64, StateError> {
        let interrupted = match self.backend {
            StateBackend::Sqlite => Interrupted::All,
            StateBackend::Postgres => Interrupted::LeaseExpired {
                replica: &self.replica,
                lease: self.replica_lease,
            },
        };
        let mut write = self.begin_write().await?;
        let mut marked = 0;
        for mut record in
            tables::read_interrupted_instances(&mut write.transaction, &interrupted).await?
        {
            let before = OperationMark::of(record.operation.as_ref());
            if let Some(operation) = record.operation.as_mut() {
                crate::lifecycle::fail_interrupted(operation, &mut record.status, description);
                tables::write_instance(&mut write.transaction, &self.replica, &record).await?;
                let id = &record.instance.id;
                history::append(
                    &mut write.transaction,
                    ResourceKind::Instance,
                    id,
                    &before,
                    &record.operation,
                )
                .await?;
                marked += 1;
            }
        }
        for mut record in
            tables::read_interrupted_bindings(&mut write.transaction, &self.keyring, &interrupted)
                .await?
        {
            let before = OperationMark::of(record.operation.as_ref());
            if let Some(operation) = record.operation.as_mut() {
                crate::lifecycle::fail_interrupted(operation, &mut record.status, description);
                tables::write_binding(
                    &mut write.transaction,
                    &self.keyring,
                    &self.replica,
                    &record,
                )
                .await?;
                let id = &record.binding.id;
                history::append(
                    &mut write.transaction,
                    ResourceKind::Binding,
                    id,
                    &before,
                    &record.operation,
                )
                .await?;
                marked += 1;
            }
        }
        if let Interrupted::LeaseExpired { replica, lease } = interrupted {
            forget_expired_replicas(&mut write.transaction, replica, lease).await?;
        }
        write.transaction.commit().await?;
        Ok(marked)
    }

    /// Starts serving from this store: fails the operations a crash cut
    /// short (see `fail_interrupted_operations`) and, on PostgreSQL, takes a
    /// lease for this replica and keeps it in the background, failing the
    /// operations of replicas whose lease runs out, until the store closes.
    /// Returns how many operations were failed now.
    pub async fn start_serving(&self, interrupted: &'static str) -> Result<u64, StateError> {
        if self.backend == StateBackend::Postgres {
            self.renew_lease().await?;
            tracing::info!(
                replica = %self.replica,
                lease_seconds = self.replica_lease.as_secs(),
                "serving as a replica of a shared PostgreSQL state store"
            );
            tokio::spawn(self.clone().keep_lease(interrupted));
        }
        self.fail_interrupted_operations(interrupted).await
    }

    /// Renews this replica's lease (a few times per lease, so a late renewal
    /// or two never lets it run out) and fails the operations of replicas
    /// whose lease ran out. A failed round is logged and retried.
    async fn keep_lease(self, interrupted: &'static str) {
        let period = self.replica_lease / 3;
        while !self.pool.is_closed() {
            tokio::time::sleep(period).await;
            if let Err(error) = self.renew_lease().await {
                tracing::warn!(%error, replica = %self.replica, "cannot renew this replica's lease");
                continue;
            }
            match self.fail_interrupted_operations(interrupted).await {
                Ok(0) => {}
                Ok(failed) => tracing::warn!(
                    failed,
                    "marked operations of a replica whose lease ran out as failed"
                ),
                Err(error) => {
                    tracing::warn!(%error, "cannot fail the operations of dead replicas")
                }
            }
        }
    }

    async fn renew_lease(&self) -> Result<(), StateError> {
        let mut connection = self.pool.acquire().await?;
        write_lease(&mut connection, &self.replica).await
    }
}

async fn write_lease(connection: &mut AnyConnection, replica: &str) -> Result<(), StateError> {
    sqlx::query(RENEW_LEASE)
        .bind(replica)
        .execute(connection)
        .await?;
    Ok(())
}

async fn forget_expired_replicas(
    connection: &mut AnyConnection,
    replica: &str,
    lease: Duration,
) -> Result<(), StateError> {
    sqlx::query(DELETE_EXPIRED_REPLICAS)
        .bind(replica)
        .bind(lease.as_secs_f64())
        .execute(connection)
        .await?;
    Ok(())
}

/// Unique per process and start: a replica that restarts is a new replica,
/// and the operations its previous life had under way are failed once that
/// life's lease runs out.
pub(super) fn new_replica_id() -> String {
    let nonce: [u8; 6] = rand::random();
    format!("{}-{}", std::process::id(), hex::encode(nonce))
}
