//! Helpers for the tests that use the fixture plugins of `tests/fixtures`
//! (sandbox, hot reload, restart, concurrency): their fixed ids, files that
//! are not plugins, replacing files in a running broker's plugin directory,
//! asynchronous requests and polling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{PlanIds, TestBroker, bind_body, binding_path, instance_path, provision_body, send};

/// The offering and plan ids a fixture declares (tests/fixtures/README.md),
/// for requests that must name them when the catalog no longer does.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// File stem in the plugin directory (and `[plugins.<stem>]`).
    pub stem: &'static str,
    /// Offering name in the catalog.
    pub offering: &'static str,
    pub service_id: &'static str,
    pub plan_id: &'static str,
}

impl Fixture {
    pub fn plan(&self) -> PlanIds {
        PlanIds {
            service_id: self.service_id.to_owned(),
            plan_id: self.plan_id.to_owned(),
        }
    }

    /// `(stem, built .wasm)`, as [`crate::BrokerSetup::plugins`] lists plugins.
    pub fn plugin(&self) -> (String, PathBuf) {
        (self.stem.to_owned(), crate::wasm(self.stem))
    }
}

pub const FAULT_LOOP: Fixture = Fixture {
    stem: "fault_loop",
    offering: "fault-loop",
    service_id: "8abf2fa4-fd63-4c0a-aee7-621dc2c02a10",
    plan_id: "143cb99a-e217-4588-996f-bcd8757b81eb",
};
pub const FAULT_MEMORY: Fixture = Fixture {
    stem: "fault_memory",
    offering: "fault-memory",
    service_id: "e3bfbc2a-b79f-43a4-a05d-7716917a04ae",
    plan_id: "549abf19-6999-46bd-a0cc-c5040592980c",
};
pub const FAULT_PANIC: Fixture = Fixture {
    stem: "fault_panic",
    offering: "fault-panic",
    service_id: "a080b3aa-f48b-42c4-9c93-e6e7ebaf4268",
    plan_id: "6bf5f895-e5c0-4871-96c2-f75490a9732b",
};
pub const FAULT_GARBAGE: Fixture = Fixture {
    stem: "fault_garbage",
    offering: "fault-garbage",
    service_id: "3b072f59-ea78-4abd-9e91-5b6095a79770",
    plan_id: "5eb517f8-b29b-4f43-b249-6f540af025c8",
};
pub const WRONG_WIT: Fixture = Fixture {
    stem: "wrong_wit",
    offering: "wrong-wit",
    service_id: "3c9f2260-d25b-43d0-a880-951e2a0f2cab",
    plan_id: "97c80d5e-26a6-465a-a6a7-7606d178ad1e",
};
/// Declares the shipped mysql plugin's offering id.
pub const CLASH: Fixture = Fixture {
    stem: "clash",
    offering: "clash",
    service_id: "9cc50e7b-80c1-41dc-a640-510b85e0cdf6",
    plan_id: "144970eb-1791-4838-aab4-13d2574e6ee8",
};
pub const ESCAPE: Fixture = Fixture {
    stem: "escape",
    offering: "escape",
    service_id: "52882e48-9e0b-47ff-8c1e-d6b0d87f3a40",
    plan_id: "2fcd76c4-2bac-4b00-b24c-56a174be0924",
};
/// Granted one tcp connection, tries every other way out (`tcp_escape`).
pub const TCP_ESCAPE: Fixture = Fixture {
    stem: "tcp_escape",
    offering: "tcp-escape",
    service_id: "cad78507-9113-4733-807f-9799d69ed7f1",
    plan_id: "b0596b8d-d8d7-4819-a60d-a319b1137f5f",
};
pub const SLOW_ASYNC: Fixture = Fixture {
    stem: "slow_async",
    offering: "slow-async",
    service_id: "1392657a-87c3-4b41-a990-0b63b3ebc04a",
    plan_id: "39c3c439-164f-4993-a73e-de1e7790b43f",
};
pub const ECHO: Fixture = Fixture {
    stem: "echo",
    offering: "echo",
    service_id: "d4a7f4e4-3344-44c5-a9e0-e71290823c71",
    plan_id: "d887ddca-3b57-43fb-ba6b-a2ca0416f942",
};
/// Echo's second plan, `other`.
pub const ECHO_OTHER_PLAN_ID: &str = "ee060409-17ad-406a-8a51-9103775f33e2";

/// tests/fixtures/grant_abuse: runs the host calls its provision parameters
/// list (through alias `admin` unless a call names another) and reports each.
pub const GRANT_ABUSE: Fixture = Fixture {
    stem: "grant_abuse",
    offering: "grant-abuse",
    service_id: "6f1f4c1e-8f3e-4d55-9a0b-2b8e54a1c7d3",
    plan_id: "b3a7d0e2-51c4-4f0e-9d6a-0c1e7f9a2b48",
};

/// Provisions a grant_abuse instance running `calls` (a JSON array); its
/// report (`{"report": [...]}` in the metadata), one line per call.
pub async fn grant_abuse_report(broker: &TestBroker, calls: Value) -> Vec<String> {
    let expected = calls.as_array().map_or(0, Vec::len);
    let (status, body) = broker
        .provision(
            &crate::unique_id("abuse"),
            &GRANT_ABUSE.plan(),
            Some(json!({ "calls": calls })),
        )
        .await;
    assert_eq!(status, 201, "grant_abuse provision: {body}");
    let report: Vec<String> = body["metadata"]["report"]
        .as_array()
        .unwrap_or_else(|| panic!("a report in the metadata: {body}"))
        .iter()
        .map(|line| line.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(report.len(), expected, "one line per call: {report:?}");
    report
}

/// A report line of grant_abuse is the WIT `denied` case.
pub fn assert_denied(line: &str, what: &str) {
    assert!(
        line.starts_with("denied: "),
        "{what} was not denied: {line}"
    );
}

/// Writes `len` bytes that are no WebAssembly at all (a fixed xorshift
/// sequence, so a failure reproduces) to `path`.
pub fn write_garbage(path: &Path, len: usize) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    assert_ne!(
        bytes.get(..4),
        Some(&b"\0asm"[..]),
        "garbage must not look like wasm"
    );
    std::fs::write(path, bytes).expect("write garbage file");
}

/// A file of garbage bytes in `dir`, to hand to [`crate::BrokerSetup::plugins`].
pub fn garbage_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    write_garbage(&path, 4096);
    path
}

/// Puts `bytes` at `target` the way a deployment tool does: written to a
/// temporary name in the same directory (not ending in `.wasm`, so the
/// watcher ignores it), then renamed over the target in one step.
pub fn replace_atomically(target: &Path, bytes: &[u8]) {
    let temporary = target.with_extension("wasm.partial");
    std::fs::write(&temporary, bytes).expect("write temporary plugin file");
    std::fs::rename(&temporary, target).expect("rename plugin file into place");
}

/// The broker log without terminal colour codes, so a test can search for
/// `key=value` as it reads on a terminal.
pub fn plain_logs(broker: &TestBroker) -> String {
    strip_ansi(&broker.logs())
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The log lines that contain every one of `needles`.
pub fn log_lines_with(broker: &TestBroker, needles: &[&str]) -> Vec<String> {
    plain_logs(broker)
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

/// Waits until a log line contains every one of `needles`; returns it.
pub async fn wait_for_log(broker: &TestBroker, needles: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = log_lines_with(broker, needles).into_iter().next() {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with all of {needles:?} within {timeout:?}; log:\n{}",
            plain_logs(broker)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after
/// `timeout` describing `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The catalog offering named `name`, if it is there.
pub fn offering<'a>(catalog: &'a Value, name: &str) -> Option<&'a Value> {
    catalog["services"]
        .as_array()?
        .iter()
        .find(|service| service["name"] == name)
}

/// How many catalog offerings have the id `service_id`.
pub fn offerings_with_id(catalog: &Value, service_id: &str) -> usize {
    catalog["services"].as_array().map_or(0, |services| {
        services.iter().filter(|s| s["id"] == service_id).count()
    })
}

/// `maintenance_info.version` of plan `plan` of offering `service`.
pub fn plan_maintenance_version(catalog: &Value, service: &str, plan: &str) -> Option<String> {
    let plans = offering(catalog, service)?["plans"].as_array()?;
    let plan = plans.iter().find(|p| p["name"] == plan)?;
    plan["maintenance_info"]["version"]
        .as_str()
        .map(str::to_owned)
}

/// `PUT ...?accepts_incomplete=true` of a provision.
pub async fn provision_async(
    broker: &TestBroker,
    instance_id: &str,
    plan: &PlanIds,
    parameters: Option<Value>,
) -> (u16, Value) {
    broker
        .put_instance(
            instance_id,
            "?accepts_incomplete=true",
            &provision_body(plan, parameters),
        )
        .await
}

/// `PUT ...?accepts_incomplete=true` of a binding.
pub async fn bind_async(
    broker: &TestBroker,
    instance_id: &str,
    binding_id: &str,
    plan: &PlanIds,
    parameters: Option<Value>,
) -> (u16, Value) {
    let path = format!(
        "{}?accepts_incomplete=true",
        binding_path(instance_id, binding_id)
    );
    send(
        broker
            .osb(Method::PUT, &path)
            .json(&bind_body(plan, parameters)),
    )
    .await
}

/// `DELETE ...?accepts_incomplete=true` of an instance.
pub async fn deprovision_async(
    broker: &TestBroker,
    instance_id: &str,
    plan: &PlanIds,
) -> (u16, Value) {
    let path = format!(
        "{}?{}&accepts_incomplete=true",
        instance_path(instance_id),
        plan.query()
    );
    send(broker.osb(Method::DELETE, &path)).await
}

/// `DELETE ...?accepts_incomplete=true` of a binding.
pub async fn unbind_async(
    broker: &TestBroker,
    instance_id: &str,
    binding_id: &str,
    plan: &PlanIds,
) -> (u16, Value) {
    let path = format!(
        "{}?{}&accepts_incomplete=true",
        binding_path(instance_id, binding_id),
        plan.query()
    );
    send(broker.osb(Method::DELETE, &path)).await
}

/// `GET .../last_operation` of an instance.
pub async fn instance_last_operation(broker: &TestBroker, instance_id: &str) -> (u16, Value) {
    broker
        .get(&format!("{}/last_operation", instance_path(instance_id)))
        .await
}

/// `GET .../last_operation` of a binding.
pub async fn binding_last_operation(
    broker: &TestBroker,
    instance_id: &str,
    binding_id: &str,
) -> (u16, Value) {
    broker
        .get(&format!(
            "{}/last_operation",
            binding_path(instance_id, binding_id)
        ))
        .await
}

/// Polls a `last_operation` endpoint (`path`) until its state is not
/// `in progress`, at most `max_polls` times; returns the final body and the
/// number of `in progress` answers seen.
pub async fn poll_until_done(broker: &TestBroker, path: &str, max_polls: usize) -> (Value, usize) {
    let mut in_progress = 0;
    for _ in 0..max_polls {
        let (status, body) = broker.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        match body["state"].as_str() {
            Some("in progress") => in_progress += 1,
            Some("succeeded" | "failed") => return (body, in_progress),
            _ => panic!("GET {path}: no valid state in {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GET {path}: still in progress after {max_polls} polls");
}

pub fn instance_poll_path(instance_id: &str) -> String {
    format!("{}/last_operation", instance_path(instance_id))
}

pub fn binding_poll_path(instance_id: &str, binding_id: &str) -> String {
    format!("{}/last_operation", binding_path(instance_id, binding_id))
}

/// Fails unless `body` is a 422 `ConcurrencyError` answer.
#[track_caller]
pub fn assert_concurrency_error(status: u16, body: &Value, context: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("ConcurrencyError")),
        "{context}: {body}"
    );
}

/// Provisions, binds, unbinds and deprovisions an echo instance, each
/// answering 201/201/200/200: the broker serves.
pub async fn assert_echo_serves(broker: &TestBroker, context: &str) {
    let plan = ECHO.plan();
    let instance_id = crate::unique_id("echo-alive");
    let binding_id = crate::unique_id("echo-alive-binding");
    let (status, body) = broker
        .provision(&instance_id, &plan, Some(json!({"probe": context})))
        .await;
    assert_eq!(status, 201, "{context}: echo provision: {body}");
    let (status, body) = broker.bind(&instance_id, &binding_id, &plan, None).await;
    assert_eq!(status, 201, "{context}: echo bind: {body}");
    assert_eq!(
        body["credentials"]["binding"]["id"],
        binding_id.as_str(),
        "{context}: echo bind credentials: {body}"
    );
    let (status, body) = broker.unbind(&instance_id, &binding_id, &plan).await;
    assert_eq!(status, 200, "{context}: echo unbind: {body}");
    let (status, body) = broker.deprovision(&instance_id, &plan).await;
    assert_eq!(status, 200, "{context}: echo deprovision: {body}");
}

/// Runs `count` requests made by `request` at once against `broker` and
/// returns their answers in request order.
pub async fn all_at_once<F, Fut>(
    broker: &Arc<TestBroker>,
    count: usize,
    request: F,
) -> Vec<(u16, Value)>
where
    F: Fn(Arc<TestBroker>, usize) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    // Every task waits at the barrier, so the requests leave together
    // instead of in spawn order.
    let start = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let request = request(broker.clone(), index);
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            (index, request.await)
        });
    }
    let mut answers: Vec<Option<(u16, Value)>> = vec![None; count];
    while let Some(joined) = tasks.join_next().await {
        let (index, answer) = joined.expect("request task");
        answers[index] = Some(answer);
    }
    answers
        .into_iter()
        .map(|answer| answer.expect("every request answered"))
        .collect()
}

/// What a fresh provision of the escape fixture got for its three HTTP path
/// escapes through the alias `api`: `denied: ...` when `api` is granted (the
/// host's path check refused them), `not-granted: ...` when it is not.
pub async fn escape_http_results(broker: &TestBroker) -> Vec<String> {
    let (status, body) = broker
        .provision(&crate::unique_id("escape-http"), &ESCAPE.plan(), None)
        .await;
    assert_eq!(status, 201, "{body}");
    let attempts = body["metadata"]["http_escape"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 3, "{body}");
    attempts
        .iter()
        .map(|attempt: &Value| attempt["result"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_removed() {
        let coloured = "\u{1b}[2m2025\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m \u{1b}[3mplugin\u{1b}[0m\u{1b}[2m=\u{1b}[0mecho";
        assert_eq!(strip_ansi(coloured), "2025 ERROR plugin=echo");
    }

    #[test]
    fn garbage_is_not_wasm() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = garbage_file(dir.path(), "x.wasm");
        assert_eq!(std::fs::read(path).expect("readable").len(), 4096);
    }
}
