//! Mosquitto's dynamic security API: JSON commands published to
//! `$CONTROL/dynamic-security/v1`, answered on
//! `$CONTROL/dynamic-security/v1/response`:
//!
//! ```json
//! {"commands":[{"command":"createRole","rolename":"r","acls":[...],"correlationData":"c-1"}]}
//! {"responses":[{"command":"createRole","error":"Role already exists","correlationData":"c-1"}]}
//! ```
//!
//! Every admin connected to the broker receives every answer on that topic,
//! so each request carries correlation data of its own and the answers are
//! picked out by it.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};
use wasm_broker_sdk::BrokerError;

use crate::mqtt::Connect;
use crate::session::{Session, Transport};

pub const COMMAND_TOPIC: &str = "$CONTROL/dynamic-security/v1";
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// What a binding may do: publish and subscribe below `<prefix>/`, and
/// nothing else. The server's defaults (from `mosquitto_ctrl dynsec init`)
/// deny publishing and subscribing everywhere else; receiving and
/// unsubscribing stay allowed, which only ever concerns the subscriptions
/// granted here. `subscribePattern` lets a binding subscribe to any filter
/// inside the prefix (`<prefix>/+/x`), while a filter reaching beyond it
/// (`#`, `+/x`) is refused.
pub fn topic_acls(prefix: &str) -> Value {
    let topics = format!("{prefix}/#");
    json!([
        {"acltype": "publishClientSend", "topic": topics, "priority": 0, "allow": true},
        {"acltype": "subscribePattern", "topic": topics, "priority": 0, "allow": true},
    ])
}

pub fn create_role(role: &str, description: &str, acls: &Value) -> Value {
    json!({"command": "createRole", "rolename": role, "textdescription": description, "acls": acls})
}

/// Replaces the role's ACLs (and description) with these.
pub fn modify_role(role: &str, description: &str, acls: &Value) -> Value {
    json!({"command": "modifyRole", "rolename": role, "textdescription": description, "acls": acls})
}

pub fn delete_role(role: &str) -> Value {
    json!({"command": "deleteRole", "rolename": role})
}

/// A client (a login) with `role` as its only role.
pub fn create_client(username: &str, password: &str, role: &str, description: &str) -> Value {
    json!({
        "command": "createClient", "username": username, "password": password,
        "textdescription": description, "roles": [{"rolename": role}],
    })
}

/// Sets the client's password, and `role` as its only role.
pub fn modify_client(username: &str, password: &str, role: &str, description: &str) -> Value {
    json!({
        "command": "modifyClient", "username": username, "password": password,
        "textdescription": description, "roles": [{"rolename": role}],
    })
}

/// Deleting a client also disconnects the connections logged in as it.
pub fn delete_client(username: &str) -> Value {
    json!({"command": "deleteClient", "username": username})
}

/// The payload of a request: the commands, each tagged with `correlation`.
pub fn request(commands: &[Value], correlation: &str) -> Vec<u8> {
    let commands: Vec<Value> = commands
        .iter()
        .map(|command| {
            let mut command = command.clone();
            if let Some(fields) = command.as_object_mut() {
                fields.insert("correlationData".to_owned(), correlation.into());
            }
            command
        })
        .collect();
    json!({ "commands": commands }).to_string().into_bytes()
}

/// One command's answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reply {
    pub command: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default, rename = "correlationData")]
    correlation: Option<String>,
}

/// What a command did to the object it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    AlreadyExists,
    NotFound,
}

impl Reply {
    /// The outcome for `object` ("role", "client"); any other error (a
    /// missing role when creating a client, a malformed command ...) fails.
    fn outcome(&self, object: &str) -> Result<Outcome, BrokerError> {
        let Some(error) = &self.error else {
            return Ok(Outcome::Done);
        };
        // Mosquitto 2.0 answers "Role already exists", "Client not found" ...
        let lower = error.to_ascii_lowercase();
        if lower == format!("{object} already exists") {
            return Ok(Outcome::AlreadyExists);
        }
        if lower == format!("{object} not found") {
            return Ok(Outcome::NotFound);
        }
        Err(self.refused(error))
    }

    /// For a create command: whether it created the object (false: it
    /// was there already).
    pub fn created(&self, object: &str) -> Result<bool, BrokerError> {
        match self.outcome(object)? {
            Outcome::Done => Ok(true),
            Outcome::AlreadyExists => Ok(false),
            Outcome::NotFound => Err(self.refused(&format!("{object} not found"))),
        }
    }

    /// For a delete command: whether it deleted the object (false: it was
    /// gone already).
    pub fn deleted(&self, object: &str) -> Result<bool, BrokerError> {
        match self.outcome(object)? {
            Outcome::Done => Ok(true),
            Outcome::NotFound => Ok(false),
            Outcome::AlreadyExists => Err(self.refused(&format!("{object} already exists"))),
        }
    }

    /// Done, or an error naming the command.
    pub fn done(&self) -> Result<(), BrokerError> {
        match &self.error {
            None => Ok(()),
            Some(error) => Err(self.refused(error)),
        }
    }

    fn refused(&self, error: &str) -> BrokerError {
        BrokerError::Internal(format!(
            "Mosquitto's dynamic security refused {}: {error}",
            self.command
        ))
    }
}

#[derive(Deserialize)]
struct Response {
    responses: Vec<Reply>,
}

/// The replies in `payload` if they answer the request tagged
/// `correlation`; `None` for anyone else's.
pub fn replies_to(payload: &[u8], correlation: &str) -> Option<Vec<Reply>> {
    let response: Response = serde_json::from_slice(payload).ok()?;
    let ours = response
        .responses
        .iter()
        .any(|reply| reply.correlation.as_deref() == Some(correlation));
    ours.then_some(response.responses)
}

/// An admin session: connected, subscribed to the answers.
pub struct Admin<T: Transport> {
    session: Session<T>,
    /// Unique to this session; each request adds its number.
    correlation: String,
    requests: u32,
}

impl<T: Transport> Admin<T> {
    /// Logs in with `connect` and subscribes to the answers. Everything the
    /// session waits for must arrive before `deadline`.
    pub fn open(
        transport: T,
        connect: &Connect<'_>,
        deadline: Instant,
    ) -> Result<Self, BrokerError> {
        let mut session = Session::open(transport, connect, deadline)?;
        session.subscribe(RESPONSE_TOPIC)?;
        Ok(Self {
            session,
            correlation: connect.client_id.to_owned(),
            requests: 0,
        })
    }

    /// Runs one command and returns its answer.
    pub fn run(&mut self, command: Value) -> Result<Reply, BrokerError> {
        self.requests += 1;
        let correlation = format!("{}-{}", self.correlation, self.requests);
        self.session
            .publish(COMMAND_TOPIC, &request(&[command], &correlation))?;
        loop {
            let message = self.session.next_message()?;
            if message.topic != RESPONSE_TOPIC {
                continue;
            }
            if let Some(replies) = replies_to(&message.payload, &correlation) {
                return match <[Reply; 1]>::try_from(replies) {
                    Ok([reply]) => Ok(reply),
                    Err(replies) => Err(BrokerError::Internal(format!(
                        "Mosquitto's dynamic security answered one command with {} replies",
                        replies.len()
                    ))),
                };
            }
        }
    }

    pub fn close(self) {
        self.session.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt;
    use crate::session::tests::{LOGIN, Script, soon};

    #[test]
    fn acls_confine_a_binding_to_its_prefix() {
        assert_eq!(
            topic_acls("inst_1"),
            json!([
                {"acltype": "publishClientSend", "topic": "inst_1/#", "priority": 0, "allow": true},
                {"acltype": "subscribePattern", "topic": "inst_1/#", "priority": 0, "allow": true},
            ])
        );
    }

    #[test]
    fn requests_carry_the_correlation() {
        let payload = request(&[delete_role("r"), delete_client("u")], "c-1");
        let value: Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(
            value,
            json!({"commands": [
                {"command": "deleteRole", "rolename": "r", "correlationData": "c-1"},
                {"command": "deleteClient", "username": "u", "correlationData": "c-1"},
            ]})
        );
    }

    #[test]
    fn only_our_answers_are_taken() {
        let ours = br#"{"responses":[{"command":"createRole","error":"Role already exists","correlationData":"c-1"}]}"#;
        let replies = replies_to(ours, "c-1").expect("ours");
        assert_eq!(replies[0].created("role"), Ok(false));
        assert_eq!(replies_to(ours, "c-2"), None);
        assert_eq!(
            replies_to(br#"{"responses":[{"command":"getRole"}]}"#, "c-1"),
            None
        );
        assert_eq!(replies_to(b"not json", "c-1"), None);
    }

    #[test]
    fn outcomes_are_read_per_object() {
        let reply = |error: Option<&str>| Reply {
            command: "deleteClient".to_owned(),
            error: error.map(str::to_owned),
            correlation: None,
        };
        assert_eq!(reply(None).deleted("client"), Ok(true));
        assert_eq!(reply(Some("Client not found")).deleted("client"), Ok(false));
        assert_eq!(
            reply(Some("Client already exists")).created("client"),
            Ok(false)
        );
        assert!(reply(Some("Client not found")).created("client").is_err());
        // A missing role is not a missing client.
        assert!(reply(Some("Role not found")).deleted("client").is_err());
        assert!(reply(Some("Role not found")).created("client").is_err());
        let error = reply(Some("Internal error")).done().expect_err("fails");
        assert!(
            error.description().contains("deleteClient: Internal error"),
            "{error:?}"
        );
    }

    #[test]
    fn an_admin_session_picks_its_answer_out_of_others() {
        let connack: &[u8] = &[0x20, 2, 0, 0];
        let suback: &[u8] = &[0x90, 3, 0, 1, 0];
        let theirs = mqtt::publish(
            RESPONSE_TOPIC,
            br#"{"responses":[{"command":"listClients","correlationData":"other-1"}]}"#,
        )
        .expect("encodes");
        let ours = mqtt::publish(
            RESPONSE_TOPIC,
            br#"{"responses":[{"command":"deleteRole","correlationData":"test-1"}]}"#,
        )
        .expect("encodes");
        let mut script = Script::new(&[connack, suback, &theirs, &ours]);
        let mut admin = Admin::open(&mut script, &LOGIN, soon()).expect("opens");
        let reply = admin.run(delete_role("r")).expect("answered");
        assert_eq!(reply.command, "deleteRole");
        assert_eq!(reply.deleted("role"), Ok(true));
        admin.close();
        let sent = &script.sent;
        assert_eq!(
            sent[1],
            mqtt::subscribe(1, RESPONSE_TOPIC).expect("encodes")
        );
        assert_eq!(
            sent[2],
            mqtt::publish(COMMAND_TOPIC, &request(&[delete_role("r")], "test-1")).expect("encodes")
        );
    }
}
