//! Who owns each offering id, plan id and offering name: the plugin (file
//! stem) that served it first. The state store records owners; this module
//! decides, without I/O, what a plugin may serve given them, so that load
//! order (file names, restarts, replicas) never moves a service from one
//! plugin to another. Only the operator hands an id or a name over
//! (`wasm-broker plugins release`).

use std::collections::BTreeMap;

use super::{CatalogError, PluginCatalog, find_clash};

/// What a plugin claims by serving its catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimKind {
    ServiceId,
    PlanId,
    ServiceName,
}

impl ClaimKind {
    /// The word the state store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceId => "service-id",
            Self::PlanId => "plan-id",
            Self::ServiceName => "service-name",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::ServiceId, Self::PlanId, Self::ServiceName]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// As a message names it.
    fn described(self) -> &'static str {
        match self {
            Self::ServiceId => "offering id",
            Self::PlanId => "plan id",
            Self::ServiceName => "offering name",
        }
    }

    /// OSB ids are global: an offering id and a plan id share one space.
    fn is_id(self) -> bool {
        matches!(self, Self::ServiceId | Self::PlanId)
    }
}

/// One id or name a plugin claims.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    pub kind: ClaimKind,
    pub key: String,
}

impl Claim {
    pub fn new(kind: ClaimKind, key: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.into(),
        }
    }
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.kind.described(), self.key)
    }
}

/// Everything `catalog` claims: each offering's id and name, each plan's id.
pub fn claims(catalog: &PluginCatalog) -> Vec<Claim> {
    let mut claims = Vec::new();
    for offering in &catalog.catalog.services {
        claims.push(Claim::new(ClaimKind::ServiceId, &offering.id));
        claims.push(Claim::new(ClaimKind::ServiceName, &offering.name));
        for plan in &offering.plans {
            claims.push(Claim::new(ClaimKind::PlanId, &plan.id));
        }
    }
    claims
}

/// Recorded owners: claim -> plugin (file stem).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners(BTreeMap<Claim, String>);

impl Owners {
    pub fn new(owners: impl IntoIterator<Item = (Claim, String)>) -> Self {
        Self(owners.into_iter().collect())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Claim, &str)> {
        self.0
            .iter()
            .map(|(claim, plugin)| (claim, plugin.as_str()))
    }

    /// The plugin other than `plugin` that owns `claim` (for an id, as an
    /// offering id or as a plan id), and the claim it owns.
    fn other_owner(&self, claim: &Claim, plugin: &str) -> Option<(&Claim, &str)> {
        let kinds: &[ClaimKind] = if claim.kind.is_id() {
            &[ClaimKind::ServiceId, ClaimKind::PlanId]
        } else {
            &[claim.kind]
        };
        kinds.iter().find_map(|kind| {
            let owned = Claim::new(*kind, claim.key.clone());
            let (owned, owner) = self.0.get_key_value(&owned)?;
            (owner != plugin).then_some((owned, owner.as_str()))
        })
    }

    /// The first id or name of `candidate` another plugin owns, as the
    /// refusal naming the owner.
    pub fn trespass(&self, candidate: &PluginCatalog) -> Option<CatalogError> {
        claims(candidate).into_iter().find_map(|claim| {
            let (owned, owner) = self.other_owner(&claim, &candidate.plugin)?;
            Some(CatalogError::Owned(format!(
                "plugin {} declares {claim}, which plugin {owner} owns (as {owned}, since it first \
                 served it); `wasm-broker plugins release {owner}` hands it over",
                candidate.plugin
            )))
        })
    }

    /// The claims of `serving` nobody owns yet, each with its plugin: what
    /// the state store records as theirs now.
    pub fn unclaimed<'a>(
        &self,
        serving: impl IntoIterator<Item = &'a PluginCatalog>,
    ) -> Vec<(Claim, String)> {
        serving
            .into_iter()
            .flat_map(|catalog| {
                claims(catalog)
                    .into_iter()
                    .filter(|claim| !self.0.contains_key(claim))
                    .map(|claim| (claim, catalog.plugin.clone()))
            })
            .collect()
    }
}

/// Whether `candidate` may serve beside `serving` (the plugins admitted so
/// far): nothing it declares is owned by another plugin, and nothing
/// clashes with what is served. Owners are checked first, so the refusal
/// names the owner even if it is not serving (refused, or its file gone).
pub fn admit<'a>(
    owners: &Owners,
    serving: impl IntoIterator<Item = &'a PluginCatalog>,
    candidate: &PluginCatalog,
) -> Result<(), CatalogError> {
    if let Some(refusal) = owners.trespass(candidate) {
        return Err(refusal);
    }
    find_clash(serving, candidate).map_or(Ok(()), Err)
}

#[cfg(test)]
#[path = "ownership_tests.rs"]
mod tests;
