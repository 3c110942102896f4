use super::*;
use crate::model::{Catalog, PluginInfo, ServiceOffering, ServicePlan};

fn plugin(stem: &str, offerings: &[(&str, &str, &[&str])]) -> PluginCatalog {
    let services = offerings
        .iter()
        .map(|(id, name, plans)| ServiceOffering {
            id: (*id).to_owned(),
            name: (*name).to_owned(),
            description: "an offering".to_owned(),
            tags: Vec::new(),
            requires: Vec::new(),
            bindable: true,
            instances_retrievable: false,
            bindings_retrievable: false,
            allow_context_updates: false,
            plan_updateable: false,
            metadata: None,
            dashboard_client: None,
            plans: plans
                .iter()
                .map(|plan_id| ServicePlan {
                    id: (*plan_id).to_owned(),
                    name: "default".to_owned(),
                    description: "a plan".to_owned(),
                    metadata: None,
                    free: true,
                    bindable: None,
                    plan_updateable: None,
                    binding_rotatable: false,
                    schemas: None,
                    maximum_polling_duration: None,
                    maintenance_info: None,
                })
                .collect(),
        })
        .collect();
    PluginCatalog {
        plugin: stem.to_owned(),
        info: PluginInfo {
            name: stem.to_owned(),
            version: "1.0.0".to_owned(),
            description: "test".to_owned(),
        },
        catalog: Catalog { services },
    }
}

fn owners(rows: &[(ClaimKind, &str, &str)]) -> Owners {
    Owners::new(
        rows.iter()
            .map(|(kind, key, plugin)| (Claim::new(*kind, *key), (*plugin).to_owned())),
    )
}

/// The real plugin: offering `svc-mysql` named `mysql`, plan `plan-mysql`.
fn mysql() -> PluginCatalog {
    plugin("mysql", &[("svc-mysql", "mysql", &["plan-mysql"])])
}

fn mysql_owns_its_catalog() -> Owners {
    Owners::new(Owners::default().unclaimed([&mysql()]))
}

/// What a set of candidates gives, admitted in `order` as the runtime's
/// merge does: stem -> Ok, or the refusal.
fn decide(owners: &Owners, order: &[&PluginCatalog]) -> Vec<(String, Result<(), String>)> {
    let mut serving: Vec<&PluginCatalog> = Vec::new();
    let mut verdicts = Vec::new();
    for candidate in order {
        let verdict = admit(owners, serving.iter().copied(), candidate);
        if verdict.is_ok() {
            serving.push(candidate);
        }
        verdicts.push((
            candidate.plugin.clone(),
            verdict.map_err(|error| error.to_string()),
        ));
    }
    verdicts.sort_by(|a, b| a.0.cmp(&b.0));
    verdicts
}

#[test]
fn a_catalog_claims_its_ids_and_names() {
    let claims = claims(&plugin(
        "p",
        &[("s1", "one", &["p1", "p2"]), ("s2", "two", &["p3"])],
    ));
    assert_eq!(
        claims,
        [
            Claim::new(ClaimKind::ServiceId, "s1"),
            Claim::new(ClaimKind::ServiceName, "one"),
            Claim::new(ClaimKind::PlanId, "p1"),
            Claim::new(ClaimKind::PlanId, "p2"),
            Claim::new(ClaimKind::ServiceId, "s2"),
            Claim::new(ClaimKind::ServiceName, "two"),
            Claim::new(ClaimKind::PlanId, "p3"),
        ]
    );
    for kind in [
        ClaimKind::ServiceId,
        ClaimKind::PlanId,
        ClaimKind::ServiceName,
    ] {
        assert_eq!(ClaimKind::parse(kind.as_str()), Some(kind));
    }
    assert_eq!(ClaimKind::parse("other"), None);
}

#[test]
fn an_owner_keeps_what_it_owns_whatever_the_order() {
    let owners = mysql_owns_its_catalog();
    // Each squatter sorts before mysql and claims one of its ids or names.
    let squatters = [
        (
            plugin("aaa", &[("svc-mysql", "clash", &["plan-aaa"])]),
            "offering id \"svc-mysql\"",
        ),
        (
            plugin("aab", &[("svc-aab", "mysql", &["plan-aab"])]),
            "offering name \"mysql\"",
        ),
        (
            plugin("aac", &[("svc-aac", "aac", &["plan-mysql"])]),
            "plan id \"plan-mysql\"",
        ),
        // An owned plan id reused as an offering id: ids are global.
        (
            plugin("aad", &[("plan-mysql", "aad", &["plan-aad"])]),
            "offering id \"plan-mysql\"",
        ),
    ];
    let real = mysql();
    for (squatter, what) in &squatters {
        for order in [[squatter, &real], [&real, squatter]] {
            let verdicts = decide(&owners, &order);
            let (name, verdict) = &verdicts[0];
            assert_eq!(name, &squatter.plugin);
            let refusal = verdict.clone().expect_err("the squatter is refused");
            assert!(
                refusal.contains(what) && refusal.contains("plugin mysql owns"),
                "{refusal}"
            );
            assert!(
                refusal.contains("wasm-broker plugins release mysql"),
                "{refusal}"
            );
            assert_eq!(verdicts[1], ("mysql".to_owned(), Ok(())));
        }
    }
}

#[test]
fn unowned_claims_go_to_the_first_admitted() {
    // Nothing recorded yet (the first start): one of the two serves, as
    // find_clash decides; the store then records it as the owner.
    let (squatter, real) = (
        plugin("aaa", &[("svc-mysql", "clash", &["plan-aaa"])]),
        mysql(),
    );
    let verdicts = decide(&Owners::default(), &[&squatter, &real]);
    assert_eq!(verdicts[0], ("aaa".to_owned(), Ok(())));
    let refusal = verdicts[1].1.clone().expect_err("clash");
    assert!(refusal.contains("already serves"), "{refusal}");
}

#[test]
fn a_plugin_may_serve_what_it_owns_and_claim_more() {
    let owners = mysql_owns_its_catalog();
    let grown = plugin(
        "mysql",
        &[
            ("svc-mysql", "mysql", &["plan-mysql", "plan-new"]),
            ("svc-new", "mysql-ha", &["plan-ha"]),
        ],
    );
    assert_eq!(admit(&owners, [], &grown), Ok(()));
    let unclaimed: Vec<String> = owners
        .unclaimed([&grown])
        .into_iter()
        .map(|(claim, owner)| format!("{claim} -> {owner}"))
        .collect();
    assert_eq!(
        unclaimed,
        [
            "plan id \"plan-new\" -> mysql",
            "offering id \"svc-new\" -> mysql",
            "offering name \"mysql-ha\" -> mysql",
            "plan id \"plan-ha\" -> mysql",
        ]
    );
}

#[test]
fn released_claims_are_free_again() {
    let squatter = plugin("aaa", &[("svc-mysql", "clash", &["plan-aaa"])]);
    let owners = mysql_owns_its_catalog();
    assert!(admit(&owners, [], &squatter).is_err());
    let released = Owners::new(
        owners
            .iter()
            .filter(|(_, owner)| *owner != "mysql")
            .map(|(claim, owner)| (claim.clone(), owner.to_owned())),
    );
    assert_eq!(admit(&released, [], &squatter), Ok(()));
}

#[test]
fn owners_refuse_even_when_the_owner_is_not_serving() {
    // mysql.wasm removed (or refused): its ids stay its own.
    let squatter = plugin("aaa", &[("svc-mysql", "clash", &["plan-aaa"])]);
    let owners = owners(&[(ClaimKind::ServiceId, "svc-mysql", "mysql")]);
    let refusal = admit(&owners, [], &squatter).expect_err("owned");
    assert!(
        refusal.to_string().contains("plugin mysql owns"),
        "{refusal}"
    );
}
