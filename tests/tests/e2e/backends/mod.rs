//! The shipped plugins against their real backing services. What every one
//! of them must do is one suite, run for each: provision, bind, use the
//! credentials, check a second instance's binding cannot reach the first,
//! unbind (which revokes), deprovision (which deletes), and rotate a
//! binding. A [`Backend`] tells the suite how to do and check each step on
//! its server. What only one plugin does (parameters, plan changes, binding
//! lifetimes) is tested in that plugin's module.

use serde_json::{Map, Value, json};
use wasm_broker_tests::{
    BrokerSetup, PlanIds, TestBroker, bind_body, binding_path, credential, credentials,
    instance_path, unique_id,
};

/// The tests of the shared suite for one backend, in that backend's module.
macro_rules! shared_suite {
    ($backend:ty) => {
        #[tokio::test]
        async fn lifecycle_isolation_and_revocation() {
            super::lifecycle_isolation_and_revocation::<$backend>().await;
        }

        #[tokio::test]
        async fn binding_rotation() {
            super::binding_rotation::<$backend>().await;
        }
    };
}

mod mosquitto;
mod mysql;
mod postgres;
mod rabbitmq;
mod redis;

/// The `credentials` object of a binding.
type Credentials = Map<String, Value>;

/// A shipped plugin and the server it manages, as the shared suite uses
/// them.
trait Backend {
    /// The plugin's file stem, also its offering's name in the catalog.
    const PLUGIN: &'static str;
    /// The plan the suite provisions.
    const PLAN: &'static str = "small";
    /// Starts the ids the suite makes, so a leftover on the server shows
    /// which suite left it.
    const ID_PREFIX: &'static str;
    /// Credentials every binding carries, as non-empty strings.
    const CREDENTIAL_FIELDS: &'static [&'static str];
    /// The `port` credential.
    const PORT: u16;
    /// What the `uri` credential starts with (one of).
    const URI_SCHEMES: &'static [&'static str];
    /// The credential naming what an instance owns (its database, key
    /// prefix or virtual host): its own per instance, the same for every
    /// binding of one.
    const RESOURCE: &'static str;
    /// Whether the plans are `binding_rotatable`.
    const ROTATABLE: bool;
    /// A connection opened with a binding's credentials.
    type Session;

    /// Whether the server answers (see `service_available`).
    fn available() -> bool;

    /// Parameters for the first instance's provision: each plugin's suite
    /// sets one plan parameter there, which [`Backend::check_binding`]
    /// checks.
    fn provision_parameters() -> Option<Value>;

    /// What only this plugin's bind answer carries, and what the provision
    /// parameters did on the server.
    async fn check_binding(bound: &Value);

    /// Logs in with `credentials`, stores something and reads it back;
    /// returns the session, still open.
    async fn use_credentials(credentials: &Credentials) -> Self::Session;

    /// What the credentials must not reach on their own server, beyond
    /// their instance's resource.
    async fn check_confined(session: &mut Self::Session, credentials: &Credentials);

    /// Instance B's binding cannot reach what instance A's stored; B's
    /// own resource works.
    async fn check_isolated(a: &Credentials, b: &Credentials);

    /// Whether the server still has the user (role) of a binding.
    async fn user_exists(credentials: &Credentials) -> bool;

    /// Logging in with `credentials` fails the way a revoked login does.
    async fn assert_login_refused(credentials: &Credentials, what: &str);

    /// A session opened before its binding was unbound no longer works.
    async fn assert_session_ended(session: Self::Session);

    /// Whether the instance's resource is still on the server.
    async fn resource_exists(credentials: &Credentials) -> bool;

    /// Stores more under the instance's resource before its deprovision,
    /// which must delete it all (nothing unless a plugin deletes in steps).
    async fn fill(_credentials: &Credentials) {}

    /// After its neighbour's deprovision, instance B's resource is intact.
    async fn check_untouched(b: &Credentials) {
        assert!(
            Self::resource_exists(b).await,
            "deprovisioning A deleted B's {}",
            credential(b, Self::RESOURCE)
        );
    }

    /// Rotation: the predecessor stores something in the instance.
    async fn leave_data(credentials: &Credentials);

    /// Rotation: `credentials` see (and may change) what the predecessor
    /// stored.
    async fn check_data(credentials: &Credentials);
}

async fn start<B: Backend>() -> TestBroker {
    TestBroker::start(BrokerSetup::shipped(&[B::PLUGIN])).await
}

/// `id` with the backend's prefix, unique.
fn id<B: Backend>(what: &str) -> String {
    unique_id(&format!("{}-{what}", B::ID_PREFIX))
}

/// The catalog's plan `plan` of the backend's offering.
fn catalog_plan<'a, B: Backend>(catalog: &'a Value, plan: &PlanIds) -> &'a Value {
    catalog["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == B::PLUGIN))
        .and_then(|offering| offering["plans"].as_array())
        .and_then(|plans| plans.iter().find(|p| p["id"] == plan.plan_id.as_str()))
        .unwrap_or_else(|| panic!("no plan {} of {} in {catalog}", plan.plan_id, B::PLUGIN))
}

async fn lifecycle_isolation_and_revocation<B: Backend>() {
    if !B::available() {
        return;
    }
    let broker = start::<B>().await;
    let catalog = broker.catalog().await;
    let offering = catalog["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == B::PLUGIN))
        .unwrap_or_else(|| panic!("no offering {} in {catalog}", B::PLUGIN));
    assert_eq!(offering["bindable"], true, "{offering}");
    assert_eq!(offering["bindings_retrievable"], true, "{offering}");
    let plan = broker.plan(B::PLUGIN, B::PLAN).await;

    // Provision and bind instance A.
    let instance_a = id::<B>("a");
    let (status, body) = broker
        .provision(&instance_a, &plan, B::provision_parameters())
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.is_object(), "{body}");
    let binding_a = id::<B>("a-binding");
    let (status, bound) = broker.bind(&instance_a, &binding_a, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let creds = credentials(&bound).clone();
    for field in B::CREDENTIAL_FIELDS {
        credential(&creds, field);
    }
    assert_eq!(creds.get("port"), Some(&json!(B::PORT)), "{creds:?}");
    let uri = credential(&creds, "uri").to_owned();
    let resource = credential(&creds, B::RESOURCE).to_owned();
    let username = credential(&creds, "username").to_owned();
    let password = credential(&creds, "password").to_owned();
    assert!(
        B::URI_SCHEMES.iter().any(|scheme| uri.starts_with(scheme)),
        "{uri} starts with none of {:?}",
        B::URI_SCHEMES
    );
    B::check_binding(&bound).await;

    // Identical requests again: the same instance, the same binding.
    let (status, body) = broker
        .provision(&instance_a, &plan, B::provision_parameters())
        .await;
    assert_eq!(status, 200, "identical provision re-sent: {body}");
    let (status, again) = broker.bind(&instance_a, &binding_a, &plan, None).await;
    assert_eq!(status, 200, "identical bind re-sent: {again}");
    assert_eq!(again["credentials"], bound["credentials"]);

    // The credentials work, within their own resource only.
    let mut session_a = B::use_credentials(&creds).await;
    B::check_confined(&mut session_a, &creds).await;

    // No secret in the broker's logs (which do hold the plugin's lines).
    let logs = broker.logs();
    assert!(
        logs.contains(&username),
        "the plugin's log line about {username} is not in the broker log"
    );
    assert!(
        !logs.contains(&password),
        "the binding's password is in the broker log"
    );
    assert!(
        !logs.contains(&uri),
        "the binding's uri is in the broker log"
    );

    // Fetching the binding gives the same credentials.
    let (status, fetched) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"], bound["credentials"]);

    // Instance B's binding cannot reach A's resource.
    let instance_b = id::<B>("b");
    let (status, body) = broker.provision(&instance_b, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding_b = id::<B>("b-binding");
    let (status, bound_b) = broker.bind(&instance_b, &binding_b, &plan, None).await;
    assert_eq!(status, 201, "{bound_b}");
    let creds_b = credentials(&bound_b).clone();
    let resource_b = credential(&creds_b, B::RESOURCE).to_owned();
    assert_ne!(
        resource_b,
        resource,
        "two instances share a {}",
        B::RESOURCE
    );
    assert_ne!(
        credential(&creds_b, "username"),
        username,
        "two bindings share a user"
    );
    B::check_isolated(&creds, &creds_b).await;

    // Unbind: 200 {}, the user is gone, new logins fail, open sessions end.
    let (status, body) = broker.unbind(&instance_a, &binding_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(!B::user_exists(&creds).await, "unbind left user {username}");
    B::assert_login_refused(&creds, "logging in after unbind").await;
    B::assert_session_ended(session_a).await;
    let (status, body) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 404, "fetching an unbound binding: {body}");
    let (status, body) = broker.unbind(&instance_a, &binding_a, &plan).await;
    assert_eq!(status, 410, "a second unbind: {body}");

    // Deprovision: 200 {}, the resource and what it held are gone, and
    // B's is untouched.
    B::fill(&creds).await;
    assert!(B::resource_exists(&creds).await);
    let (status, body) = broker.deprovision(&instance_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        !B::resource_exists(&creds).await,
        "deprovision left {} {resource}",
        B::RESOURCE
    );
    B::check_untouched(&creds_b).await;
    let (status, operation) = broker
        .get(&format!("{}/last_operation", instance_path(&instance_a)))
        .await;
    assert_eq!(
        (status, &operation["state"]),
        (200, &json!("succeeded")),
        "last_operation after deprovision: {operation}"
    );
    let (status, body) = broker.get(&instance_path(&instance_a)).await;
    assert_eq!(status, 404, "fetching a deprovisioned instance: {body}");
    let (status, body) = broker.deprovision(&instance_a, &plan).await;
    assert_eq!(status, 410, "a second deprovision: {body}");

    // Deprovisioning B with its binding still there revokes that binding too.
    let (status, body) = broker.deprovision(&instance_b, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        !B::resource_exists(&creds_b).await,
        "deprovision left {} {resource_b}",
        B::RESOURCE
    );
    assert!(
        !B::user_exists(&creds_b).await,
        "deprovision left the user of a binding never unbound: {}",
        credential(&creds_b, "username")
    );
    let (status, body) = broker.get(&binding_path(&instance_b, &binding_b)).await;
    assert_eq!(status, 404, "{body}");

    let logs = broker.logs();
    for secret in [password.as_str(), credential(&creds_b, "password")] {
        assert!(
            !logs.contains(secret),
            "a binding's password is in the broker log after unbind/deprovision"
        );
    }
}

async fn binding_rotation<B: Backend>() {
    if !B::available() {
        return;
    }
    let broker = start::<B>().await;
    let plan = broker.plan(B::PLUGIN, B::PLAN).await;
    let catalog = broker.catalog().await;
    assert_eq!(
        catalog_plan::<B>(&catalog, &plan)["binding_rotatable"] == true,
        B::ROTATABLE,
        "the {} plugin's plans declare binding_rotatable {}",
        B::PLUGIN,
        B::ROTATABLE
    );

    let instance = id::<B>("rotate");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let old = id::<B>("rotate-old");
    let (status, old_bound) = broker.bind(&instance, &old, &plan, None).await;
    assert_eq!(status, 201, "{old_bound}");
    let new = id::<B>("rotate-new");
    let mut rotation = bind_body(&plan, None);
    rotation["predecessor_binding_id"] = json!(old);

    if !B::ROTATABLE {
        let (status, body) = broker.put_binding(&instance, &new, &rotation).await;
        assert_eq!(
            status, 400,
            "rotation on a plan that is not binding_rotatable: {body}"
        );
        broker
            .unbind_all_and_deprovision(&instance, &[&old], &plan)
            .await;
        return;
    }

    let old_creds = credentials(&old_bound).clone();
    B::leave_data(&old_creds).await;

    // A predecessor that is not a binding of this instance is refused.
    let mut stray = bind_body(&plan, None);
    stray["predecessor_binding_id"] = json!(unique_id("no-such-binding"));
    let (status, body) = broker
        .put_binding(&instance, &id::<B>("rotate-stray"), &stray)
        .await;
    assert_eq!(status, 400, "rotation from an unknown binding: {body}");

    let (status, new_bound) = broker.put_binding(&instance, &new, &rotation).await;
    assert_eq!(status, 201, "{new_bound}");
    let new_creds = credentials(&new_bound).clone();
    for field in ["username", "password", "uri"] {
        assert_ne!(
            credential(&new_creds, field),
            credential(&old_creds, field),
            "a rotation hands out a new {field}"
        );
    }
    assert_eq!(
        credential(&new_creds, B::RESOURCE),
        credential(&old_creds, B::RESOURCE),
        "a rotation keeps the {}",
        B::RESOURCE
    );
    let (status, again) = broker.put_binding(&instance, &new, &rotation).await;
    assert_eq!(status, 200, "identical rotation re-sent: {again}");

    // Both credentials work until the predecessor is unbound.
    B::check_data(&old_creds).await;
    B::check_data(&new_creds).await;
    let (status, body) = broker.unbind(&instance, &old, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    B::assert_login_refused(&old_creds, "old credentials after their unbind").await;
    B::check_data(&new_creds).await;

    broker
        .unbind_all_and_deprovision(&instance, &[&new], &plan)
        .await;
}
