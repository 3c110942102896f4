//! Fuzzes the real broker with schemathesis against the project's OpenAPI
//! document (`openapi/wasm-broker.yaml`): no 5xx, every status code and
//! response body as documented, schema-invalid requests refused, 401 without
//! credentials, 405 for undeclared methods, deleted resources gone.
//!
//! The broker serves only the `echo` fixture (no backend needed). The
//! resources the fuzzer aims at are made first and named in schemathesis
//! dictionaries, so generated requests reach the plugin instead of stopping
//! at "unknown id".
//!
//! Needs schemathesis 4 for `python3` (`.ci/run` installs the pinned version).
//! Without it the test is skipped with a message, except under CI=true.

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasm_broker_tests::{
    API_VERSION, BrokerSetup, PASSWORD, PlanIds, TestBroker, USERNAME, repo_root, wasm,
};

/// Test cases per operation and phase. 50 keeps the run near a minute on
/// two cores while every operation still sees a hundred requests or more.
const MAX_EXAMPLES: u32 = 50;
/// Provisions and binds get more: a schema-valid one succeeds only with
/// catalog ids, a new id (or identical attributes) and, for binds, the
/// instance's plan and no rotation (echo's plans are not rotatable).
const MAX_CREATE_EXAMPLES: u32 = 150;
/// The same cases every run, so CI does not flicker; `SCHEMATHESIS_SEED`
/// explores others (a failing run prints its seed).
const DEFAULT_SEED: &str = "2017";
/// A run that takes longer than this is hung, not slow.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Instances made before the run, on the echo plan `default`, each with a
/// binding. Updates and deletes are aimed at resources of their own (below),
/// so these keep their plan and live long enough for fetches, binds and polls.
const INSTANCES: [(&str, &str); 2] = [
    ("fuzz-instance-1", "fuzz-binding-1"),
    ("fuzz-instance-2", "fuzz-binding-2"),
];
/// What update and deprovision are aimed at (plan `default`, no binding).
const DELETABLE_INSTANCE: &str = "fuzz-instance-3";
/// What unbind is aimed at: a second binding of the first instance, which
/// deprovision never reaches.
const DELETABLE_BINDING: (&str, &str) = ("fuzz-instance-1", "fuzz-binding-3");
/// `cloudfoundry` and the base64 of `{"user_id":"fuzz"}`.
const ORIGINATING_IDENTITY: &str = "cloudfoundry eyJ1c2VyX2lkIjoiZnV6eiJ9";

/// `python3 -m schemathesis.cli`: the interpreter `.ci/run` installs it for,
/// whatever is on PATH for console scripts.
fn schemathesis() -> tokio::process::Command {
    let mut command = tokio::process::Command::new("python3");
    command.args(["-m", "schemathesis.cli"]);
    command
}

/// The installed schemathesis version, if it is a 4.x. Outside CI a missing
/// one skips the test with a message; under CI=true it fails it.
async fn installed_schemathesis() -> Option<String> {
    let output = schemathesis().arg("--version").output().await;
    let version = output
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .rsplit(' ')
                .next()
                .map(str::to_owned)
        })
        .filter(|version| version.starts_with("4."));
    if version.is_none() {
        let why =
            "schemathesis 4 is not installed for python3 (.ci/run pip-installs the pinned version)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}; CI must install it");
        }
        eprintln!("skipping: {why}");
    }
    version
}

/// Makes the resources the dictionaries below name.
async fn seed_resources(broker: &TestBroker, plan: &PlanIds) {
    for instance in INSTANCES
        .iter()
        .map(|(instance, _)| instance)
        .chain([&DELETABLE_INSTANCE])
    {
        let (status, body) = broker.provision(instance, plan, None).await;
        assert_eq!(status, 201, "provision {instance}: {body}");
    }
    for (instance, binding) in INSTANCES.into_iter().chain([DELETABLE_BINDING]) {
        let (status, body) = broker.bind(instance, binding, plan, None).await;
        assert_eq!(status, 201, "bind {binding}: {body}");
    }
}

/// schemathesis.toml for this run: what it takes to fuzz an OSB broker. The
/// generic knobs are on the command line.
fn config(default: &PlanIds, other: &PlanIds) -> String {
    let list = |values: &[&str]| {
        values
            .iter()
            .map(|value| format!("{value:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut instance_ids: Vec<&str> = INSTANCES.iter().map(|(instance, _)| *instance).collect();
    instance_ids.push(DELETABLE_INSTANCE);
    let mut binding_ids: Vec<&str> = INSTANCES.iter().map(|(_, binding)| *binding).collect();
    binding_ids.push(DELETABLE_BINDING.1);
    format!(
        r#"
# Catalog ids and existing resources, drawn often enough that requests get
# past "unknown service_id" (400) and "no such instance" (404/410).
[dictionaries.service_ids]
values = [{service_id:?}]
[dictionaries.plan_ids]
values = [{default_plan:?}, {other_plan:?}]
[dictionaries.seeded_plan]
values = [{default_plan:?}]
[dictionaries.instance_ids]
values = [{instance_ids}]
[dictionaries.binding_ids]
values = [{binding_ids}]
[dictionaries.deletable_instance]
values = [{deletable_instance:?}]
[dictionaries.deletable_binding_instance]
values = [{deletable_binding_instance:?}]
[dictionaries.deletable_binding]
values = [{deletable_binding:?}]
[dictionaries.maintenance_versions]
values = ["1.0.0"]
[dictionaries.originating_identities]
values = [{identity:?}]

[parameters]
"body.service_id" = {{ dictionary = "service_ids", probability = 0.7 }}
"body.plan_id" = {{ dictionary = "plan_ids", probability = 0.7 }}
"query.service_id" = {{ dictionary = "service_ids", probability = 0.7 }}
"query.plan_id" = {{ dictionary = "plan_ids", probability = 0.7 }}
"path.instance_id" = {{ dictionary = "instance_ids", probability = 0.6 }}
"path.binding_id" = {{ dictionary = "binding_ids", probability = 0.6 }}
"body.maintenance_info.version" = {{ dictionary = "maintenance_versions", probability = 0.5 }}
"header.X-Broker-API-Originating-Identity" = {{ dictionary = "originating_identities", probability = 0.5 }}

[generation]
max-examples = {max_examples}

# Provisions and binds mostly under new ids; binds with the plan of the
# seeded instances.
[[operations]]
include-name = "PUT /v2/service_instances/{{instance_id}}"
generation.max-examples = {max_create_examples}
parameters = {{ "path.instance_id" = {{ dictionary = "instance_ids", probability = 0.2 }} }}

[[operations]]
include-name = "PUT /v2/service_instances/{{instance_id}}/service_bindings/{{binding_id}}"
generation.max-examples = {max_create_examples}
parameters = {{ "path.binding_id" = {{ dictionary = "binding_ids", probability = 0.3 }}, "body.service_id" = {{ dictionary = "service_ids", probability = 0.9 }}, "body.plan_id" = {{ dictionary = "seeded_plan", probability = 0.9 }} }}

[[operations]]
include-name = "PATCH /v2/service_instances/{{instance_id}}"
parameters = {{ "path.instance_id" = {{ dictionary = "deletable_instance", probability = 0.6 }} }}

[[operations]]
include-name = "DELETE /v2/service_instances/{{instance_id}}"
parameters = {{ "path.instance_id" = {{ dictionary = "deletable_instance", probability = 0.6 }} }}

[[operations]]
include-name = "DELETE /v2/service_instances/{{instance_id}}/service_bindings/{{binding_id}}"
parameters = {{ "path.instance_id" = {{ dictionary = "deletable_binding_instance", probability = 0.6 }}, "path.binding_id" = {{ dictionary = "deletable_binding", probability = 0.6 }} }}

# A missing X-Broker-API-Version is a failed precondition: 412 is the
# broker's default answer (what the OSB conformance suites expect).
[checks.missing_required_header]
expected-statuses = [412]

# Only the document's own links. Inferred ones chain DELETE with
# last_operation, where OSB wants `succeeded` for a finished deprovision,
# which use_after_free would report as a deleted resource still served.
[phases.stateful]
inference.algorithms = []
"#,
        service_id = default.service_id,
        default_plan = default.plan_id,
        other_plan = other.plan_id,
        instance_ids = list(&instance_ids),
        binding_ids = list(&binding_ids),
        deletable_instance = DELETABLE_INSTANCE,
        deletable_binding_instance = DELETABLE_BINDING.0,
        deletable_binding = DELETABLE_BINDING.1,
        identity = ORIGINATING_IDENTITY,
        max_examples = MAX_EXAMPLES,
        max_create_examples = MAX_CREATE_EXAMPLES,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_answers_as_its_openapi_document_says() {
    let _cpu = wasm_broker_tests::saturating().await;
    let Some(version) = installed_schemathesis().await else {
        return;
    };
    let broker = TestBroker::start(BrokerSetup {
        plugins: vec![("echo".into(), wasm("echo"))],
        ..BrokerSetup::default()
    })
    .await;
    let default = broker.plan("echo", "default").await;
    let other = broker.plan("echo", "other").await;
    seed_resources(&broker, &default).await;

    let work_dir = broker.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work_dir).expect("schemathesis work dir");
    let config_path = work_dir.join("schemathesis.toml");
    std::fs::write(&config_path, config(&default, &other)).expect("write schemathesis.toml");
    let report_path = work_dir.join("report.json");
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());

    let mut command = schemathesis();
    command
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(repo_root().join("openapi/wasm-broker.yaml"))
        .args(["--url", &broker.base_url])
        .args(["--auth", &format!("{USERNAME}:{PASSWORD}")])
        .args(["--header", &format!("X-Broker-API-Version: {API_VERSION}")])
        // positive_data_acceptance wants 2xx for every schema-valid request,
        // but OSB refuses valid-looking requests by design: unknown ids
        // (400), absent resources (404/410), conflicting attributes (409),
        // concurrent operations (422). The other checks hold as they are.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // Security is the --auth above and the ignored_auth check: generated
        // Authorization headers would be overwritten by --auth anyway, and
        // the case then wrongly counts as one the broker must refuse.
        .args(["--generation-with-security-parameters", "false"])
        .args(["--seed", &seed])
        // One worker: with two, CPython 3.11 trips over concurrent
        // `ast.parse` calls in hypothesis ("AST constructor recursion depth
        // mismatch") and the coverage phase errors out.
        .args([
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
        ])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report_path)
        .arg("--no-color")
        .current_dir(&work_dir)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_LIMIT:?}"))
        .expect("start schemathesis");
    let elapsed = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let run: Value = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_else(|| {
            panic!(
                "schemathesis {version} wrote no JSON report ({}):\n{text}",
                output.status
            )
        });
    report(&summary(&run, &seed, elapsed));
    let clean = output.status.success()
        && run["complete"] == true
        && run["test_cases"]["with_failures"] == 0
        && run["errors"].as_array().is_some_and(Vec::is_empty);
    assert!(
        clean,
        "schemathesis found failures ({}):\n{text}\nbroker log, last lines:\n{}",
        output.status,
        log_tail(&broker)
    );

    // A green run must also have got past validation: thanks to the seeded
    // resources every OSB operation answers 2xx at least once.
    for (operation, answers) in answers_per_operation(&run) {
        assert!(
            !operation.contains("/v2/") || answers.accepted > 0,
            "{operation} never answered 2xx to a schema-valid request: the fuzzer did not reach the plugin"
        );
    }
}

/// Writes past libtest's output capture, so the figures show in the log of
/// a passing run too (cargo prints a passing test's output only on request).
fn report(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// How an operation answered schema-valid requests, over all phases.
#[derive(Default)]
struct Answers {
    accepted: u64,
    absent: u64,
    conflicting: u64,
    refused: u64,
}

fn answers_per_operation(run: &Value) -> Vec<(String, Answers)> {
    let Some(rates) = run["valid_rates"].as_object() else {
        return Vec::new();
    };
    rates
        .iter()
        .map(|(operation, phases)| {
            let mut answers = Answers::default();
            for phase in phases
                .as_object()
                .into_iter()
                .flat_map(|phases| phases.values())
            {
                let count = |field: &str| phase[field].as_u64().unwrap_or_default();
                answers.accepted += count("accepted");
                answers.absent += count("unreachable");
                answers.conflicting += count("conflicts");
                answers.refused += count("rejected");
            }
            (operation.clone(), answers)
        })
        .collect()
}

/// The figures of schemathesis' JSON report worth a line in the test log.
fn summary(run: &Value, seed: &str, elapsed: Duration) -> String {
    let cases = &run["test_cases"];
    let mut lines = vec![format!(
        "schemathesis {}: {} test cases in {:.0} s, {} failing ({} unique), {} errors; seed {seed}",
        run["schemathesis_version"].as_str().unwrap_or("?"),
        cases["generated"],
        elapsed.as_secs_f64(),
        cases["with_failures"],
        cases["unique_failures"],
        run["errors"].as_array().map_or(0, Vec::len),
    )];
    lines.push("  schema-valid requests per operation: 2xx / 404 / 409 / other 4xx".to_owned());
    for (operation, answers) in answers_per_operation(run) {
        lines.push(format!(
            "    {operation}: {} / {} / {} / {}",
            answers.accepted, answers.absent, answers.conflicting, answers.refused
        ));
    }
    lines.join("\n")
}

/// The end of the broker's log, for a failure message.
fn log_tail(broker: &TestBroker) -> String {
    let logs = broker.logs();
    let mut tail: Vec<&str> = logs.lines().rev().take(40).collect();
    tail.reverse();
    tail.join("\n")
}
