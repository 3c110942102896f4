//! OSB v2.17 rules every endpoint follows (auth, version header, request
//! identity, errors, idempotency, 410/404, body limits, opaque ids), checked
//! against the real broker with the shipped mysql plugin.
//!
//! Idempotency and conflicts of repeated provisions and binds are the broker
//! core's rules: `host/src/broker/tests.rs` checks them over in-memory fakes
//! (with `lifecycle/tests.rs` for every stored state), and the backend suite
//! (`backends/`) checks identical repeats answer 200 with the same
//! credentials from every real plugin.
//!
//! Not covered here: `AsyncRequired` (422). Every shipped plugin answers
//! synchronously, so no request made with them needs `accepts_incomplete`;
//! that rule belongs to the fixture-plugin tests.

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use wasm_broker_tests::{
    API_VERSION, BrokerSetup, PASSWORD, PlanIds, TestBroker, USERNAME, assert_error_body,
    binding_path, instance_path, json, provision_body, send, service_available, unique_id,
};

const REQUEST_IDENTITY: &str = "X-Broker-API-Request-Identity";
const API_VERSION_HEADER: &str = "X-Broker-API-Version";

async fn mysql_broker() -> TestBroker {
    TestBroker::start(BrokerSetup::shipped(&["mysql"])).await
}

/// The ten OSB endpoint shapes, with a body where the endpoint takes one.
fn endpoint_shapes(plan: &PlanIds) -> Vec<(Method, String, Option<Value>)> {
    let instance = unique_id("auth-instance");
    let binding = unique_id("auth-binding");
    let delete_query = format!("?{}", plan.query());
    vec![
        (Method::GET, "/v2/catalog".to_owned(), None),
        (
            Method::PUT,
            instance_path(&instance),
            Some(provision_body(plan, None)),
        ),
        (
            Method::PATCH,
            instance_path(&instance),
            Some(json!({"service_id": plan.service_id})),
        ),
        (Method::GET, instance_path(&instance), None),
        (
            Method::DELETE,
            format!("{}{delete_query}", instance_path(&instance)),
            None,
        ),
        (
            Method::GET,
            format!("{}/last_operation", instance_path(&instance)),
            None,
        ),
        (
            Method::PUT,
            binding_path(&instance, &binding),
            Some(json!({"service_id": plan.service_id, "plan_id": plan.plan_id})),
        ),
        (Method::GET, binding_path(&instance, &binding), None),
        (
            Method::DELETE,
            format!("{}{delete_query}", binding_path(&instance, &binding)),
            None,
        ),
        (
            Method::GET,
            format!("{}/last_operation", binding_path(&instance, &binding)),
            None,
        ),
    ]
}

fn with_body(request: reqwest::RequestBuilder, body: &Option<Value>) -> reqwest::RequestBuilder {
    match body {
        Some(body) => request.json(body),
        None => request,
    }
}

#[tokio::test]
async fn every_endpoint_requires_basic_auth() {
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    for (method, path, body) in endpoint_shapes(&plan) {
        let what = format!("{method} {path}");
        let attempts = [
            (
                "no Authorization",
                with_body(broker.raw(method.clone(), &path), &body)
                    .header(API_VERSION_HEADER, API_VERSION),
            ),
            (
                "wrong user",
                with_body(broker.raw(method.clone(), &path), &body)
                    .basic_auth("intruder", Some(PASSWORD))
                    .header(API_VERSION_HEADER, API_VERSION),
            ),
            (
                "wrong password",
                with_body(broker.raw(method.clone(), &path), &body)
                    .basic_auth(USERNAME, Some("not-the-password"))
                    .header(API_VERSION_HEADER, API_VERSION),
            ),
            (
                "no auth and no version (auth is checked first)",
                with_body(broker.raw(method.clone(), &path), &body),
            ),
            (
                "a bearer token instead of basic auth",
                with_body(broker.raw(method.clone(), &path), &body).bearer_auth(PASSWORD),
            ),
        ];
        for (case, request) in attempts {
            let response = request.send().await.expect("request");
            assert!(
                response.headers().contains_key(WWW_AUTHENTICATE),
                "{what} ({case}): 401 without WWW-Authenticate"
            );
            let (status, body) = json(response).await;
            assert_eq!(status, 401, "{what} ({case}): {body}");
            assert_error_body(&body, &format!("{what} ({case})"));
        }
    }
    // `{}` bodies, as the conformance suites send them: still 401, not 400.
    let (status, body) = send(
        broker
            .raw(Method::PUT, &instance_path(&unique_id("empty-body")))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_error_body(&body, "PUT {} without auth");
}

#[tokio::test]
async fn api_version_header_is_required_and_checked_before_the_body() {
    let broker = mysql_broker().await;
    let catalog = || broker.authed(Method::GET, "/v2/catalog");
    let cases = [
        ("missing", catalog(), 412),
        (
            "present but empty",
            catalog().header(API_VERSION_HEADER, ""),
            412,
        ),
        ("2.12", catalog().header(API_VERSION_HEADER, "2.12"), 412),
        ("3.0", catalog().header(API_VERSION_HEADER, "3.0"), 412),
        ("1.17", catalog().header(API_VERSION_HEADER, "1.17"), 412),
        (
            "not a version",
            catalog().header(API_VERSION_HEADER, "latest"),
            412,
        ),
        ("2.13", catalog().header(API_VERSION_HEADER, "2.13"), 200),
        ("2.17", catalog().header(API_VERSION_HEADER, "2.17"), 200),
    ];
    for (case, request, expected) in cases {
        let (status, body) = send(request).await;
        assert_eq!(status, expected, "version {case}: {body}");
        if expected == 412 {
            assert_error_body(&body, &format!("version {case}"));
        }
    }

    // A `{}` body with valid auth but no version: 412, not a body complaint.
    let path = instance_path(&unique_id("no-version"));
    let (status, body) = send(broker.authed(Method::PUT, &path).json(&json!({}))).await;
    assert_eq!(status, 412, "{body}");
    assert_error_body(&body, "PUT {} without version");
    let (status, body) = send(
        broker
            .authed(Method::PUT, &path)
            .header(API_VERSION_HEADER, "2.12")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    let (status, body) = send(
        broker
            .authed(Method::PATCH, &path)
            .header(CONTENT_TYPE, "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 412, "malformed body without version: {body}");
    // And with the version, the same `{}` body is a 400.
    let (status, body) = send(broker.osb(Method::PUT, &path).json(&json!({}))).await;
    assert_eq!(status, 400, "{body}");
    assert_error_body(&body, "PUT {} with version");
}

#[tokio::test]
async fn request_identity_is_echoed_on_success_and_on_errors() {
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let unknown = unique_id("identity");
    let requests = [
        ("catalog 200", 200, broker.osb(Method::GET, "/v2/catalog")),
        ("401", 401, broker.raw(Method::GET, "/v2/catalog")),
        ("412", 412, broker.authed(Method::GET, "/v2/catalog")),
        (
            "404",
            404,
            broker.osb(Method::GET, &instance_path(&unknown)),
        ),
        (
            "400",
            400,
            broker
                .osb(Method::PUT, &instance_path(&unknown))
                .json(&json!({"plan_id": plan.plan_id})),
        ),
        (
            "410",
            410,
            broker.osb(
                Method::DELETE,
                &format!("{}?{}", instance_path(&unknown), plan.query()),
            ),
        ),
    ];
    for (case, expected, request) in requests {
        let identity = unique_id("request-identity");
        let response = request
            .header(REQUEST_IDENTITY, &identity)
            .send()
            .await
            .expect("request");
        let echoed = response
            .headers()
            .get(REQUEST_IDENTITY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(response.status().as_u16(), expected, "{case}");
        assert_eq!(
            echoed.as_deref(),
            Some(identity.as_str()),
            "{case}: request identity not echoed"
        );
    }
}

#[tokio::test]
async fn catalog_is_json_with_services_and_an_etag() {
    let broker = mysql_broker().await;
    let response = broker
        .osb(Method::GET, "/v2/catalog")
        .send()
        .await
        .expect("catalog");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let etag = response
        .headers()
        .get(ETAG)
        .cloned()
        .expect("catalog has an ETag");
    let (status, catalog) = json(response).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "Content-Type {content_type:?}"
    );
    let services = catalog["services"].as_array().expect("services array");
    assert!(!services.is_empty(), "{catalog}");
    let mysql = services
        .iter()
        .find(|s| s["name"] == "mysql")
        .expect("a mysql offering");
    assert_eq!(mysql["bindable"], true);
    let plan_names: Vec<&str> = mysql["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(plan_names, ["small", "large"]);

    let response = broker
        .osb(Method::GET, "/v2/catalog")
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .expect("catalog");
    assert_eq!(response.status().as_u16(), 304);
    assert_eq!(response.headers().get(ETAG), Some(&etag));
    let response = broker
        .osb(Method::GET, "/v2/catalog")
        .header(IF_NONE_MATCH, "\"stale\"")
        .send()
        .await
        .expect("catalog");
    assert_eq!(
        response.status().as_u16(),
        200,
        "a different ETag gets the catalog"
    );
}

#[tokio::test]
async fn malformed_provisions_are_400_and_create_nothing() {
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let large = broker.plan("mysql", "large").await;
    let valid = provision_body(&plan, None);
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().expect("object").remove(field);
        body
    };
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let mut cases: Vec<(String, Value)> = Vec::new();
    for field in ["service_id", "plan_id", "organization_guid", "space_guid"] {
        cases.push((format!("missing {field}"), without(field)));
        cases.push((format!("empty {field}"), with(field, json!(""))));
        cases.push((format!("{field} not a string"), with(field, json!(42))));
    }
    cases.push((
        "unknown service_id".to_owned(),
        with("service_id", json!("xxxx-xxxx-xxxx-xxxx")),
    ));
    cases.push((
        "unknown plan_id".to_owned(),
        with("plan_id", json!("xxxx-xxxx-xxxx-xxxx")),
    ));
    cases.push((
        "a plan id as service_id".to_owned(),
        with("service_id", json!(large.plan_id)),
    ));
    cases.push((
        "parameters an array".to_owned(),
        with("parameters", json!([1, 2])),
    ));
    cases.push((
        "parameters a string".to_owned(),
        with("parameters", json!("charset=latin1")),
    ));
    cases.push((
        "parameters a number".to_owned(),
        with("parameters", json!(7)),
    ));
    cases.push((
        "context not an object".to_owned(),
        with("context", json!("cloudfoundry")),
    ));
    cases.push(("body an array".to_owned(), json!([valid.clone()])));

    let instance = unique_id("malformed");
    for (case, body) in &cases {
        let (status, answer) = broker.put_instance(&instance, "", body).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_error_body(&answer, case);
    }

    let path = instance_path(&instance);
    let raw_cases = [
        (
            "malformed JSON",
            broker
                .osb(Method::PUT, &path)
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"service_id": "#),
        ),
        (
            "empty body",
            broker
                .osb(Method::PUT, &path)
                .header(CONTENT_TYPE, "application/json")
                .body(""),
        ),
        (
            "text/plain",
            broker
                .osb(Method::PUT, &path)
                .header(CONTENT_TYPE, "text/plain")
                .body(valid.to_string()),
        ),
        (
            "accepts_incomplete=maybe",
            broker
                .osb(Method::PUT, &format!("{path}?accepts_incomplete=maybe"))
                .json(&valid),
        ),
        (
            "accepts_incomplete=1",
            broker
                .osb(Method::PUT, &format!("{path}?accepts_incomplete=1"))
                .json(&valid),
        ),
    ];
    for (case, request) in raw_cases {
        let (status, answer) = send(request).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_error_body(&answer, case);
    }

    // 4xx: nothing may have been created.
    let (status, answer) = broker.get(&path).await;
    assert_eq!(
        status, 404,
        "a refused provision left an instance: {answer}"
    );
    let (status, answer) = broker.get(&format!("{path}/last_operation")).await;
    assert_eq!(
        status, 404,
        "a refused provision left an operation: {answer}"
    );
}

#[tokio::test]
async fn parameters_failing_the_plan_schema_are_400_naming_the_field() {
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("schema");
    for (parameters, field) in [
        (json!({"charset": "klingon"}), "charset"),
        (json!({"charset": 8}), "charset"),
        (json!({"no_such_parameter": true}), "no_such_parameter"),
    ] {
        let (status, body) = broker
            .provision(&instance, &plan, Some(parameters.clone()))
            .await;
        assert_eq!(status, 400, "{parameters}: {body}");
        assert_error_body(&body, &parameters.to_string());
        let description = body["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(field),
            "the description of {parameters} does not name {field}: {description}"
        );
    }
    let (status, body) = broker.get(&instance_path(&instance)).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn maintenance_info_must_match_the_plan() {
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let catalog = broker.catalog().await;
    let version = catalog["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == "mysql"))
        .and_then(|service| service["plans"].as_array())
        .and_then(|plans| plans.iter().find(|p| p["id"] == plan.plan_id.as_str()))
        .and_then(|plan| plan["maintenance_info"]["version"].as_str())
        .expect("the mysql plans have a maintenance_info version")
        .to_owned();

    let conflicting = unique_id("maintenance-conflict");
    let mut body = provision_body(&plan, None);
    body["maintenance_info"] = json!({"version": "99.0.0-not-this-one"});
    let (status, answer) = broker.put_instance(&conflicting, "", &body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"], "MaintenanceInfoConflict", "{answer}");
    assert_error_body(&answer, "maintenance conflict");
    let (status, _) = broker.get(&instance_path(&conflicting)).await;
    assert_eq!(status, 404, "a 422 provision left an instance");

    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    // `{}` (the Go suite's default) means "not sent"; unknown fields and a
    // context are accepted too (OSB: receivers ignore vendor extensions).
    let empty = unique_id("maintenance-empty");
    let mut body = provision_body(&plan, None);
    body["maintenance_info"] = json!({});
    body["context"] =
        json!({"platform": "cloudfoundry", "organization_guid": "o", "space_guid": "s"});
    body["x_vendor_extension"] = json!({"anything": [1, 2]});
    let (status, answer) = broker.put_instance(&empty, "", &body).await;
    assert_eq!(status, 201, "{answer}");

    let matching = unique_id("maintenance-match");
    let mut body = provision_body(&plan, None);
    body["maintenance_info"] = json!({"version": version, "description": "ignored"});
    let (status, answer) = broker.put_instance(&matching, "", &body).await;
    assert_eq!(status, 201, "{answer}");
    let (status, fetched) = broker.get(&instance_path(&matching)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(
        fetched["maintenance_info"]["version"],
        version.as_str(),
        "{fetched}"
    );

    for instance in [&empty, &matching] {
        let (status, answer) = broker.deprovision(instance, &plan).await;
        assert_eq!((status, answer), (200, json!({})));
    }
}

#[tokio::test]
async fn deleting_what_does_not_exist_is_gone_and_deletes_need_their_ids() {
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let unknown = unique_id("never-provisioned");
    let (status, body) = broker.deprovision(&unknown, &plan).await;
    assert_eq!(status, 410, "{body}");
    assert!(body.is_object(), "410 has a JSON body: {body}");
    let (status, body) = broker
        .unbind(&unknown, &unique_id("never-bound"), &plan)
        .await;
    assert_eq!(status, 410, "{body}");

    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let instance = unique_id("gone");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = broker
        .unbind(&instance, &unique_id("never-bound"), &plan)
        .await;
    assert_eq!(
        status, 410,
        "unknown binding of an existing instance: {body}"
    );

    let path = instance_path(&instance);
    for query in [
        "",
        "?plan_id=x",
        &format!("?service_id={}", plan.service_id),
        "?service_id=&plan_id=",
    ] {
        let (status, body) = send(broker.osb(Method::DELETE, &format!("{path}{query}"))).await;
        assert_eq!(status, 400, "DELETE with query {query:?}: {body}");
        assert_error_body(&body, query);
    }
    let binding = unique_id("gone-binding");
    let (status, body) = broker.bind(&instance, &binding, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(broker.osb(Method::DELETE, &binding_path(&instance, &binding))).await;
    assert_eq!(status, 400, "unbind without ids: {body}");
    let (status, _) = broker.get(&binding_path(&instance, &binding)).await;
    assert_eq!(status, 200, "a 400 unbind must leave the binding");
    let (status, body) = broker.unbind(&instance, &binding, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.unbind(&instance, &binding, &plan).await;
    assert_eq!(status, 410, "second unbind: {body}");

    let (status, body) = broker.get(&path).await;
    assert_eq!(
        status, 200,
        "a 400 deprovision must leave the instance: {body}"
    );
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!(status, 410, "second deprovision: {body}");
}

#[tokio::test]
async fn unknown_instances_and_bindings_are_not_found() {
    let broker = mysql_broker().await;
    let instance = unique_id("unknown");
    let binding = unique_id("unknown-binding");
    for path in [
        instance_path(&instance),
        format!("{}/last_operation", instance_path(&instance)),
        format!(
            "{}/last_operation?operation=provision",
            instance_path(&instance)
        ),
        binding_path(&instance, &binding),
        format!("{}/last_operation", binding_path(&instance, &binding)),
    ] {
        let (status, body) = broker.get(&path).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_error_body(&body, &path);
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_with_a_json_body() {
    let setup = BrokerSetup {
        server: "max_body_bytes = 4096".to_owned(),
        ..BrokerSetup::shipped(&["mysql"])
    };
    let broker = TestBroker::start(setup).await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("oversized");
    let huge = Some(json!({"charset": "x".repeat(10_000)}));

    let (status, body) = broker.provision(&instance, &plan, huge.clone()).await;
    assert_eq!(status, 413, "{body}");
    assert_error_body(&body, "oversized provision");
    let (status, body) = broker
        .bind(
            &instance,
            &unique_id("oversized-binding"),
            &plan,
            huge.clone(),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_error_body(&body, "oversized bind");
    let (status, body) = broker
        .update(&instance, &provision_body(&plan, huge.clone()))
        .await;
    assert_eq!(status, 413, "{body}");
    // Auth still comes first.
    let (status, _) = send(
        broker
            .raw(Method::PUT, &instance_path(&instance))
            .json(&provision_body(&plan, huge)),
    )
    .await;
    assert_eq!(status, 401);
    // A body under the limit is read as usual (and refused for its content).
    let (status, body) = broker
        .provision(&instance, &plan, Some(json!({"charset": "klingon"})))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn instance_and_binding_ids_are_opaque() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let suffix = unique_id("");
    // `../../etc-…`, percent-encoded by hand so no client normalises it.
    let traversal_path = format!("/v2/service_instances/%2E%2E%2F%2E%2E%2Fetc{suffix}");
    let traversal_id = format!("../../etc{suffix}");
    let unicode_id = format!("ïd-ü-✓{suffix}");

    let (status, body) = send(
        broker
            .osb(Method::PUT, &traversal_path)
            .json(&provision_body(&plan, None)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = broker
        .provision(&unicode_id, &plan, Some(json!({"charset": "latin1"})))
        .await;
    assert_eq!(status, 201, "{body}");

    // Each id names its own instance.
    let (status, fetched) = broker.get(&instance_path(&traversal_id)).await;
    assert_eq!(status, 200, "{fetched}");
    assert!(
        fetched["parameters"].is_null() || fetched["parameters"] == json!({}),
        "{fetched}"
    );
    let (status, fetched) = broker.get(&instance_path(&unicode_id)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["parameters"], json!({"charset": "latin1"}));

    let binding = format!("bïnd/../✓{suffix}");
    let (status, body) = broker.bind(&unicode_id, &binding, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, fetched) = broker.get(&binding_path(&unicode_id, &binding)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"], body["credentials"]);
    let (status, body) = broker.unbind(&unicode_id, &binding, &plan).await;
    assert_eq!((status, body), (200, json!({})));

    let (status, body) = send(broker.osb(
        Method::DELETE,
        &format!("{traversal_path}?{}", plan.query()),
    ))
    .await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.deprovision(&unicode_id, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, _) = broker.get(&instance_path(&unicode_id)).await;
    assert_eq!(status, 404);
}
