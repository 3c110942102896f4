//! Owners of offering ids, plan ids and names: recorded once, kept against
//! later claims (from this process or another replica), released on request.

use super::*;
use crate::catalog::ownership::{Claim, ClaimKind};

fn claim(kind: ClaimKind, key: &str, plugin: &str) -> (Claim, String) {
    (Claim::new(kind, key), plugin.to_owned())
}

async fn the_first_claim_wins_until_released(scratch: &Scratch) {
    // Two stores on one database: two replicas.
    let (first, second) = (open(scratch).await, open(scratch).await);
    assert_eq!(first.owners().await.expect("read").iter().count(), 0);
    let owners = first
        .claim(&[
            claim(ClaimKind::ServiceId, "svc-mysql", "mysql"),
            claim(ClaimKind::ServiceName, "mysql", "mysql"),
            claim(ClaimKind::PlanId, "plan-mysql", "mysql"),
        ])
        .await
        .expect("claimed");
    assert_eq!(owners.iter().count(), 3);

    // A later claim on the other replica does not move the id.
    let owners = second
        .claim(&[
            claim(ClaimKind::ServiceId, "svc-mysql", "aaa"),
            claim(ClaimKind::ServiceName, "clash", "aaa"),
        ])
        .await
        .expect("claimed");
    let owner_of = |owners: &crate::catalog::ownership::Owners, kind, key: &str| {
        owners
            .iter()
            .find(|(claim, _)| claim.kind == kind && claim.key == key)
            .map(|(_, plugin)| plugin.to_owned())
    };
    assert_eq!(
        owner_of(&owners, ClaimKind::ServiceId, "svc-mysql").as_deref(),
        Some("mysql")
    );
    assert_eq!(
        owner_of(&owners, ClaimKind::ServiceName, "clash").as_deref(),
        Some("aaa")
    );
    assert_eq!(first.owners().await.expect("read"), owners);

    let released = second.release_owner("mysql").await.expect("released");
    assert_eq!(
        released,
        [
            Claim::new(ClaimKind::ServiceId, "svc-mysql"),
            Claim::new(ClaimKind::PlanId, "plan-mysql"),
            Claim::new(ClaimKind::ServiceName, "mysql"),
        ]
    );
    assert!(
        second
            .release_owner("mysql")
            .await
            .expect("again")
            .is_empty()
    );
    let owners = first
        .claim(&[claim(ClaimKind::ServiceId, "svc-mysql", "aaa")])
        .await
        .expect("claimed");
    assert_eq!(
        owner_of(&owners, ClaimKind::ServiceId, "svc-mysql").as_deref(),
        Some("aaa")
    );
}

on_both_backends!(the_first_claim_wins_until_released,);
