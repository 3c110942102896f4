//! Which plugin version served each service last (`served_services`), and
//! how many instances each service still has: what the runtime needs to
//! keep a retired plugin (one whose file is gone, or whose newer version
//! dropped a service) for the instances it left, across restarts too.

use std::collections::BTreeMap;

use super::inventory::column_text;
use super::{StateError, StateStore};
use crate::lifecycle::ResourceStatus;

/// One row of `served_services`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ServedService {
    pub service_id: String,
    pub service_name: String,
    /// File stem of the plugin.
    pub plugin: String,
    /// sha256 of the plugin's file, hex: the compile cache keeps a copy
    /// under it.
    pub digest: String,
    pub version: String,
}

impl StateStore {
    /// Every service recorded as served, in id order.
    pub async fn served_services(&self) -> Result<Vec<ServedService>, StateError> {
        Ok(sqlx::query_as::<_, ServedService>(
            "SELECT service_id, service_name, plugin, digest, version FROM served_services \
             ORDER BY service_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records who serves each of `services` now (replacing what was there).
    pub async fn record_served(&self, services: &[ServedService]) -> Result<(), StateError> {
        if services.is_empty() {
            return Ok(());
        }
        let mut write = self.begin_write().await?;
        for service in services {
            sqlx::query(
                "INSERT INTO served_services (service_id, service_name, plugin, digest, version) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (service_id) DO UPDATE SET service_name = excluded.service_name, \
                 plugin = excluded.plugin, digest = excluded.digest, version = excluded.version",
            )
            .bind(&service.service_id)
            .bind(&service.service_name)
            .bind(&service.plugin)
            .bind(&service.digest)
            .bind(&service.version)
            .execute(&mut *write.transaction)
            .await?;
        }
        write.transaction.commit().await?;
        Ok(())
    }

    /// Forgets the services of `service_ids`: nothing serves them and no
    /// instance of them is left.
    pub async fn forget_served(&self, service_ids: &[String]) -> Result<(), StateError> {
        if service_ids.is_empty() {
            return Ok(());
        }
        let mut write = self.begin_write().await?;
        for service_id in service_ids {
            sqlx::query("DELETE FROM served_services WHERE service_id = $1")
                .bind(service_id)
                .execute(&mut *write.transaction)
                .await?;
        }
        write.transaction.commit().await?;
        Ok(())
    }

    /// Instances not deleted (being created, ready, failed: each still needs
    /// its plugin, at least to be deprovisioned), per service id.
    pub async fn live_instances_by_service(&self) -> Result<BTreeMap<String, u64>, StateError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT service_id, count(*) FROM instances WHERE status <> $1 GROUP BY service_id",
        )
        .bind(column_text(ResourceStatus::Deleted))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(service_id, count)| (service_id, u64::try_from(count).unwrap_or(0)))
            .collect())
    }
}
