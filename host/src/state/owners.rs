//! Who owns each offering id, plan id and offering name (`catalog_owners`):
//! the store only records; `catalog::ownership` decides what a plugin may
//! serve given the owners. Shared by replicas on PostgreSQL, so the first
//! replica to serve an id records its owner for all of them.

use super::{StateError, StateStore};
use crate::catalog::ownership::{Claim, ClaimKind, Owners};

impl StateStore {
    /// Every recorded owner. Rows of a kind this version does not know are
    /// skipped (a newer version wrote them).
    pub async fn owners(&self) -> Result<Owners, StateError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT kind, name, plugin FROM catalog_owners")
                .fetch_all(&self.pool)
                .await?;
        Ok(owners_of(rows))
    }

    /// Records `claims` that nobody owns yet, in one transaction: a claim
    /// another replica recorded meanwhile stays theirs. Returns every owner
    /// after it, for the caller to check that it won.
    pub async fn claim(&self, claims: &[(Claim, String)]) -> Result<Owners, StateError> {
        let mut write = self.begin_write().await?;
        for (claim, plugin) in claims {
            sqlx::query(
                "INSERT INTO catalog_owners (kind, name, plugin) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, name) DO NOTHING",
            )
            .bind(claim.kind.as_str())
            .bind(&claim.key)
            .bind(plugin)
            .execute(&mut *write.transaction)
            .await?;
        }
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT kind, name, plugin FROM catalog_owners")
                .fetch_all(&mut *write.transaction)
                .await?;
        write.transaction.commit().await?;
        Ok(owners_of(rows))
    }

    /// Forgets everything `plugin` owns; returns what it owned (offering
    /// ids, plan ids, then names).
    pub async fn release_owner(&self, plugin: &str) -> Result<Vec<Claim>, StateError> {
        let mut write = self.begin_write().await?;
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT kind, name, plugin FROM catalog_owners WHERE plugin = $1")
                .bind(plugin)
                .fetch_all(&mut *write.transaction)
                .await?;
        sqlx::query("DELETE FROM catalog_owners WHERE plugin = $1")
            .bind(plugin)
            .execute(&mut *write.transaction)
            .await?;
        write.transaction.commit().await?;
        Ok(owners_of(rows)
            .iter()
            .map(|(claim, _)| claim.clone())
            .collect())
    }
}

fn owners_of(rows: Vec<(String, String, String)>) -> Owners {
    Owners::new(rows.into_iter().filter_map(|(kind, key, plugin)| {
        Some((Claim::new(ClaimKind::parse(&kind)?, key), plugin))
    }))
}
