//! `wasm-broker plugins test`: the shipped plugins pass it against the real
//! backends with the least-privilege grants the broker ships; an
//! asynchronous plugin passes it by polling; and plugins that break the
//! contract's rules on repeats, on their file name or on clashes fail it,
//! naming the check.

use std::path::Path;

use wasm_broker_tests::faults::{ECHO, SLOW_ASYNC};
use wasm_broker_tests::{BrokerSetup, TestBroker, service_available, wasm};

/// The label (`PASS`, `WARN`, `SKIP`, `FAIL`) of the report line of check
/// `name`, panicking with the report if there is none.
fn outcome<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|line| {
            line.get(6..).is_some_and(|rest| {
                rest.strip_prefix(name).is_some_and(|after| {
                    after.trim_start().starts_with(|c: char| c.is_ascii_digit())
                })
            })
        })
        .map(|line| &line[..4])
        .unwrap_or_else(|| panic!("no check {name:?} in the report:\n{report}"))
}

/// The first plan the report ran the lifecycle on, for `offering`.
fn first_plan<'a>(report: &'a str, offering: &str) -> &'a str {
    let prefix = format!("{offering}/");
    report
        .lines()
        .filter_map(|line| line.get(6..))
        .filter_map(|rest| rest.strip_prefix(&prefix))
        .find_map(|rest| rest.split_once(": provision "))
        .map(|(plan, _)| plan)
        .unwrap_or_else(|| panic!("no provision of {offering} in the report:\n{report}"))
}

fn plugins_test(broker: &TestBroker, file: &Path) -> (bool, String) {
    broker.cli(&["plugins", "test", &file.to_string_lossy()])
}

#[tokio::test]
async fn shipped_plugins_pass_against_their_backends() {
    let services = [
        ("mysql", "MariaDB", "127.0.0.1:3306"),
        ("postgres", "PostgreSQL", "127.0.0.1:5432"),
        ("redis", "Redis", "127.0.0.1:6379"),
        ("rabbitmq", "RabbitMQ", "127.0.0.1:15672"),
        ("mosquitto", "Mosquitto", "127.0.0.1:1884"),
    ];
    let available: Vec<&str> = services
        .iter()
        .filter(|(_, service, address)| service_available(service, address))
        .map(|(plugin, _, _)| *plugin)
        .collect();
    if available.len() < 2 {
        return;
    }
    // All five in the plugin directory: each is tested against the other
    // four for clashes, and with the grants of the shipped broker.toml.
    let broker = TestBroker::prepare(BrokerSetup::shipped(&services.map(|(plugin, _, _)| plugin)));
    for plugin in available {
        let (ok, report) = plugins_test(&broker, &wasm(plugin));
        assert!(ok, "plugins test {plugin} failed:\n{report}");
        for check in [
            "load: contract and catalog rules",
            "file stem = describe().name",
            "no clash with the plugin directory",
        ] {
            assert_eq!(outcome(&report, check), "PASS", "{check}:\n{report}");
        }
        let plan = first_plan(&report, plugin);
        for step in [
            "provision",
            "get-instance",
            "provision again, same inputs",
            "bind",
            "bind again, another binding id",
            "distinct credentials",
            "unbind",
            "unbind again",
            "unbind the other binding",
            "deprovision",
            "deprovision again",
            "provision cut at 1/4, then deprovision",
            "provision cut at 1/2, then deprovision",
            "provision cut at 3/4, then deprovision",
            "second instance, to time the cuts",
        ] {
            let name = format!("{plugin}/{plan}: {step}");
            assert_eq!(outcome(&report, &name), "PASS", "{name}:\n{report}");
        }
        // The shipped plugins cannot tell a different repeat from the
        // same one (the broker answers 409 to it itself): a warning.
        let different = format!("{plugin}/{plan}: provision again, different inputs");
        assert_ne!(outcome(&report, &different), "FAIL", "{report}");
        assert!(report.contains(" 0 failed,"), "{report}");
    }
}

#[tokio::test]
async fn an_asynchronous_plugin_is_polled_to_the_end() {
    let broker = TestBroker::prepare(BrokerSetup {
        plugins: vec![SLOW_ASYNC.plugin()],
        ..BrokerSetup::default()
    });
    let (ok, report) = plugins_test(&broker, &SLOW_ASYNC.plugin().1);
    assert!(ok, "{report}");
    let provision = report
        .lines()
        .find(|line| line.starts_with("PASS  slow-async/default: provision "))
        .unwrap_or_else(|| panic!("no passed provision:\n{report}"));
    assert!(
        provision.contains("accepted, succeeded after 3 polls"),
        "{provision}"
    );
    assert_eq!(
        outcome(
            &report,
            "slow-async/default: provision cut short, then deprovision"
        ),
        "SKIP",
        "an asynchronous provision is not cut: {report}"
    );
}

#[tokio::test]
async fn a_plugin_whose_repeats_fail_fails_naming_the_checks() {
    let (stem, file) = ("not_idempotent", wasm("not_idempotent"));
    let broker = TestBroker::prepare(BrokerSetup {
        plugins: vec![(stem.to_owned(), file.clone())],
        ..BrokerSetup::default()
    });
    let (ok, report) = plugins_test(&broker, &file);
    assert!(!ok, "a plugin that fails its repeats passed:\n{report}");
    let name = |step: &str| format!("not-idempotent/default: {step}");
    for step in ["provision", "bind", "unbind", "deprovision"] {
        assert_eq!(outcome(&report, &name(step)), "PASS", "{step}:\n{report}");
    }
    for step in [
        "provision again, same inputs",
        "distinct credentials",
        "deprovision again",
    ] {
        assert_eq!(outcome(&report, &name(step)), "FAIL", "{step}:\n{report}");
        assert!(
            report
                .lines()
                .find(|line| line.starts_with("Error: "))
                .is_some_and(|line| line.contains(&name(step))),
            "the closing error names {step}:\n{report}"
        );
    }
    assert!(
        report.contains(
            "already exists: an identical repeat (a retry) must answer as for the existing instance"
        ),
        "{report}"
    );
}

#[tokio::test]
async fn a_file_named_after_another_plugin_fails_the_name_and_clash_checks() {
    // version_two is echo 2.0.0 built under another file name: it reports
    // the name `echo`, and declares the ids echo.wasm serves.
    let broker = TestBroker::prepare(BrokerSetup {
        plugins: vec![ECHO.plugin()],
        ..BrokerSetup::default()
    });
    let file = wasm("version_two");
    let (ok, report) = plugins_test(&broker, &file);
    assert!(!ok, "{report}");
    assert_eq!(
        outcome(&report, "file stem = describe().name"),
        "FAIL",
        "{report}"
    );
    assert!(report.contains("name the file echo.wasm"), "{report}");
    assert_eq!(
        outcome(&report, "no clash with the plugin directory"),
        "FAIL",
        "{report}"
    );
    assert!(
        report.contains("plugin version_two declares offering id")
            && report.contains("which plugin echo already serves"),
        "{report}"
    );

    // plugins check says the same, and fails.
    let (ok, check) = broker.cli(&["plugins", "check", &file.to_string_lossy()]);
    assert!(!ok, "{check}");
    assert!(
        check.contains("file stem = describe().name: FAILED")
            && check.contains("no clash with the plugin directory: FAILED"),
        "{check}"
    );
    // The same file under echo's own name replaces echo: both rules hold.
    let renamed = broker.dir.path().join("echo.wasm");
    std::fs::copy(&file, &renamed).expect("copy version_two as echo.wasm");
    let (ok, check) = broker.cli(&["plugins", "check", &renamed.to_string_lossy()]);
    assert!(ok, "{check}");
    assert!(
        check.contains("file stem = describe().name: ok")
            && check.contains("no clash with the plugin directory: ok"),
        "{check}"
    );
}
