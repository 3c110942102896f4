//! Provision, bind, unbind and deprovision run natively against the SDK's
//! fake `tcp` capability, behind which the test plays a Mosquitto with
//! dynamic security: it decodes the plugin's MQTT packets, keeps roles and
//! clients, and answers on the response topic as Mosquitto 2.0 does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Value, json};
use wasm_broker_sdk::tcp::{Credentials, ServerInfo};
use wasm_broker_sdk::testing::{self, Fakes};

use super::*;
use crate::dynsec::RESPONSE_TOPIC;

/// What the fake Mosquitto holds, and every command it received.
#[derive(Default)]
struct DynSec {
    roles: BTreeMap<String, Value>,
    clients: BTreeMap<String, Value>,
    commands: Vec<Value>,
    /// CONNACK's return code.
    login_refusal: u8,
}

impl DynSec {
    /// Mosquitto's answer to one command: `None`, or its error text.
    fn apply(&mut self, command: &Value) -> Option<String> {
        self.commands.push(command.clone());
        let name = |field: &str| command[field].as_str().unwrap_or_default().to_owned();
        let (table, key, object) = match command["command"].as_str().unwrap_or_default() {
            verb if verb.ends_with("Role") => (&mut self.roles, name("rolename"), "Role"),
            _ => (&mut self.clients, name("username"), "Client"),
        };
        let verb = command["command"].as_str().unwrap_or_default();
        let exists = table.contains_key(&key);
        match (
            verb.starts_with("create"),
            verb.starts_with("delete"),
            exists,
        ) {
            (true, _, true) => Some(format!("{object} already exists")),
            (false, _, false) => Some(format!("{object} not found")),
            (_, true, true) => {
                table.remove(&key);
                None
            }
            _ => {
                table.insert(key, command.clone());
                None
            }
        }
    }

    /// The server's side of one packet the plugin wrote.
    fn answer(&mut self, packet: &[u8]) -> Vec<u8> {
        let (len, used) = mqtt::decode_remaining_length(&packet[1..])
            .expect("a valid length")
            .expect("a whole length");
        let body = &packet[1 + used..1 + used + len];
        match packet[0] >> 4 {
            // CONNECT -> CONNACK
            1 => vec![0x20, 2, 0, self.login_refusal],
            // SUBSCRIBE -> SUBACK granting QoS 0
            8 => vec![0x90, 3, body[0], body[1], 0],
            // PUBLISH of a dynamic security request -> its response
            3 => {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let request: Value =
                    serde_json::from_slice(&body[2 + topic_len..]).expect("a JSON request");
                let responses: Vec<Value> = request["commands"]
                    .as_array()
                    .expect("commands")
                    .iter()
                    .map(|command| {
                        let mut reply = json!({
                            "command": command["command"],
                            "correlationData": command["correlationData"],
                        });
                        if let Some(error) = self.apply(command) {
                            reply["error"] = error.into();
                        }
                        reply
                    })
                    .collect();
                let payload = json!({ "responses": responses }).to_string();
                mqtt::publish(RESPONSE_TOPIC, payload.as_bytes()).expect("encodes")
            }
            // DISCONNECT
            _ => Vec::new(),
        }
    }
}

fn mosquitto() -> (Fakes, Rc<RefCell<DynSec>>) {
    let fakes = Fakes::install();
    fakes.tcp.grant(
        ADMIN,
        ServerInfo {
            host: "mqtt.test".to_owned(),
            port: 8883,
            tls: true,
        },
        Credentials {
            username: Some("user-token".to_owned()),
            password: Some("password-token".to_owned()),
            revealed: false,
        },
    );
    let server = Rc::new(RefCell::new(DynSec::default()));
    let state = Rc::clone(&server);
    fakes
        .tcp
        .serve(ADMIN, move |packet| state.borrow_mut().answer(packet));
    (fakes, server)
}

fn instance() -> Instance {
    testing::instance("instance-1", SERVICE_ID, PLAN_ID)
}

fn verbs(server: &Rc<RefCell<DynSec>>) -> Vec<String> {
    server
        .borrow()
        .commands
        .iter()
        .map(|command| command["command"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn provision_logs_in_with_the_placeholders_and_creates_the_role() {
    let (fakes, server) = mosquitto();
    let instance = instance();
    let role = role_name(&instance);

    Mosquitto::provision(&instance, &testing::request()).expect("provisioned");

    let written = fakes.tcp.written(ADMIN);
    let connect = String::from_utf8_lossy(&written[0]);
    assert!(
        connect.contains("user-token") && connect.contains("password-token"),
        "{connect:?}"
    );
    assert_eq!(written.last(), Some(&mqtt::disconnect()));
    let created = &server.borrow().roles[&role];
    assert_eq!(created["acls"], dynsec::topic_acls(&role));
    assert_eq!(
        created["textdescription"],
        "wasm-broker instance instance-1"
    );
}

#[test]
fn a_repeated_provision_finds_the_role_and_sets_its_acls_again() {
    let (_fakes, server) = mosquitto();
    let instance = instance();
    Mosquitto::provision(&instance, &testing::request()).expect("provisioned");
    Mosquitto::provision(&instance, &testing::request()).expect("provisioned again");
    assert_eq!(verbs(&server), ["createRole", "createRole", "modifyRole"]);
}

#[test]
fn bind_creates_a_client_with_the_role_and_a_repeat_sets_a_new_password() {
    let (_fakes, server) = mosquitto();
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    Mosquitto::provision(&instance, &testing::request()).expect("provisioned");

    let first = testing::credentials(
        &Mosquitto::bind(&instance, &binding, &testing::request()).expect("bound"),
    );
    let again = testing::credentials(
        &Mosquitto::bind(&instance, &binding, &testing::request()).expect("bound again"),
    );

    let user = user_name(&binding);
    let role = role_name(&instance);
    let password = first["password"].as_str().expect("password");
    assert_eq!(password.len(), 32);
    assert_eq!(
        first["uri"],
        format!("mqtts://{user}:{password}@mqtt.test:8883")
    );
    assert_eq!(first["topic_prefix"], role.as_str());
    assert_eq!(again["username"], first["username"]);
    assert_ne!(again["password"], first["password"]);
    assert_eq!(
        verbs(&server)[1..],
        ["createClient", "createClient", "modifyClient"]
    );
    let client = &server.borrow().clients[&user];
    assert_eq!(client["password"], again["password"]);
    assert_eq!(client["roles"], json!([{"rolename": role}]));
}

#[test]
fn unbind_and_deprovision_count_gone_as_done() {
    let (fakes, server) = mosquitto();
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    Mosquitto::provision(&instance, &testing::request()).expect("provisioned");
    Mosquitto::bind(&instance, &binding, &testing::request()).expect("bound");

    Mosquitto::unbind(&instance, &binding, &testing::request()).expect("unbound");
    Mosquitto::unbind(&instance, &binding, &testing::request()).expect("unbound again");
    Mosquitto::deprovision(&instance, &testing::request()).expect("deprovisioned");
    Mosquitto::deprovision(&instance, &testing::request()).expect("deprovisioned again");

    assert!(server.borrow().roles.is_empty() && server.borrow().clients.is_empty());
    let messages = fakes.log.messages();
    let user = user_name(&binding);
    let role = role_name(&instance);
    for expected in [
        format!("deleted client {user}"),
        format!("client {user} was already gone"),
        format!("deleted role {role}"),
        format!("role {role} was already gone"),
    ] {
        assert!(messages.contains(&expected), "{expected}: {messages:?}");
    }
}

#[test]
fn a_refused_admin_login_fails_the_call_and_says_why() {
    let (_fakes, server) = mosquitto();
    server.borrow_mut().login_refusal = 5;
    let error = Mosquitto::provision(&instance(), &testing::request()).expect_err("refused");
    assert!(
        error.description().contains("refused the admin login"),
        "{error:?}"
    );
    assert!(server.borrow().commands.is_empty());
}
