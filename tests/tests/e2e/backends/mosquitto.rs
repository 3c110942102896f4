//! The mosquitto plugin end to end: the real broker, the real plugin
//! speaking MQTT through the host's tcp capability, a real Mosquitto with
//! dynamic security (tests/services/mosquitto-dynsec.sh, on 1884); what the
//! logins it hands out can and cannot do, checked with Debian's
//! `mosquitto_pub` and `mosquitto_sub` over MQTT 5, which report refused
//! publications (PUBACK "Not authorized") and subscriptions (a denied
//! SUBACK). The lifecycle every plugin shares runs through [`Mosquitto`];
//! retries finding leftovers on the server are this plugin's own.

use std::io::BufRead as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use wasm_broker_tests::{
    BrokerSetup, TestBroker, credential, credentials, derived_name, service_available, unique_id,
};

use super::{Backend, Credentials};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 1884;
/// The dynamic security admin tests/services/mosquitto-dynsec.sh creates
/// (and the harness's broker.toml gives the host, never the plugin).
const ADMIN_USER: &str = "wasm-broker-admin";
const ADMIN_PASSWORD: &str = "wasm-broker-admin-secret";
const COMMAND_TOPIC: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// How long anything the tests wait for on the server may take.
const WAIT: Duration = Duration::from_secs(10);

fn available() -> bool {
    service_available("Mosquitto with dynamic security", "127.0.0.1:1884")
}

/// `mosquitto_pub`/`mosquitto_sub` options: MQTT 5 to `host:port` as `username`.
fn login(host: &str, port: u16, username: &str, password: &str) -> Vec<String> {
    let port = port.to_string();
    [
        "-h", host, "-p", &port, "-V", "mqttv5", "-u", username, "-P", password,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Logging in with a binding's credentials, where they say.
fn binding_login(creds: &Credentials) -> Vec<String> {
    let port = creds
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|port| u16::try_from(port).ok())
        .unwrap_or_else(|| panic!("no port in {creds:?}"));
    login(
        credential(creds, "host"),
        port,
        credential(creds, "username"),
        credential(creds, "password"),
    )
}

fn admin_login() -> Vec<String> {
    login(HOST, PORT, ADMIN_USER, ADMIN_PASSWORD)
}

/// Runs a client to its end (at most [`WAIT`]): exit status, stdout, stderr.
async fn run(program: &str, args: &[String]) -> (ExitStatus, String, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT + Duration::from_secs(5), child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not end"))
        .unwrap_or_else(|error| panic!("running {program} (Debian's mosquitto-clients): {error}"));
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// How the server took a publication.
#[derive(Debug, PartialEq, Eq)]
enum Published {
    Accepted,
    /// PUBACK with reason "Not authorized": the ACLs refuse the topic.
    NotAuthorized,
    /// CONNACK refused the login.
    LoginRefused,
}

/// Publishes at QoS 1, so the server acknowledges or refuses it.
async fn publish(login: &[String], topic: &str, message: &str, retain: bool) -> Published {
    let mut args = login.to_vec();
    args.extend(["-q", "1", "-t", topic, "-m", message].map(str::to_owned));
    if retain {
        args.push("-r".to_owned());
    }
    let (status, stdout, stderr) = run("mosquitto_pub", &args).await;
    if stderr.contains("Connection error") {
        Published::LoginRefused
    } else if stderr.contains("Not authorized") {
        Published::NotAuthorized
    } else if status.success() && stderr.trim().is_empty() {
        Published::Accepted
    } else {
        panic!("mosquitto_pub to {topic}: {status} {stdout} {stderr}")
    }
}

/// What one subscription got.
#[derive(Debug, PartialEq, Eq)]
enum Subscribed {
    /// The first message (a retained one arrives at once).
    Received(String),
    /// SUBACK refused the filter.
    Denied,
    /// Granted, but nothing arrived within `wait_secs`.
    NothingArrived,
    LoginRefused,
}

async fn subscribe_once(login: &[String], filter: &str, wait_secs: u32) -> Subscribed {
    let mut args = login.to_vec();
    args.extend(["-t", filter, "-C", "1", "-W", &wait_secs.to_string()].map(str::to_owned));
    let (status, stdout, stderr) = run("mosquitto_sub", &args).await;
    if stderr.contains("Connection error") {
        Subscribed::LoginRefused
    } else if stderr.contains("subscription requests were denied") {
        Subscribed::Denied
    } else if stderr.contains("Timed out") {
        Subscribed::NothingArrived
    } else if status.success() {
        Subscribed::Received(stdout.trim_end_matches('\n').to_owned())
    } else {
        panic!("mosquitto_sub to {filter}: {status} {stdout} {stderr}")
    }
}

/// A `mosquitto_sub` left running, its output lines as they come.
///
/// It runs under `stdbuf -oL`: into a pipe, its stdio would hold the debug
/// lines (`-d`, which say when the subscription is granted) until it exits.
struct Subscriber {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Subscriber {
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("stdbuf (coreutils) runs mosquitto_sub (Debian's mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    async fn next_line(&mut self, what: &str) -> String {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
            .unwrap_or_else(|| panic!("mosquitto_sub ended before {what}"))
    }

    /// Its exit status, if it ends within `within`.
    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("mosquitto_sub's status") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one dynamic security command as the admin and returns its reply.
///
/// Every admin receives every reply on the response topic (mosquitto_ctrl
/// prints whichever comes first, so it gives wrong answers while a plugin
/// works beside it); this picks its own by correlation data.
async fn dynsec(mut command: Value) -> Value {
    let correlation = unique_id("e2e-dynsec");
    command["correlationData"] = json!(correlation);
    let mut args = admin_login();
    args.extend(["-d", "-t", RESPONSE_TOPIC].map(str::to_owned));
    let mut responses = Subscriber::spawn(&args);
    loop {
        let line = responses.next_line("the admin's SUBACK").await;
        if line.starts_with("Subscribed") {
            assert!(
                line.ends_with(": 0"),
                "the admin may not read replies: {line}"
            );
            break;
        }
    }
    let request = json!({"commands": [command]}).to_string();
    assert_eq!(
        publish(&admin_login(), COMMAND_TOPIC, &request, false).await,
        Published::Accepted
    );
    loop {
        let line = responses.next_line("the dynamic security reply").await;
        let Ok(reply) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if reply["responses"][0]["correlationData"] == correlation.as_str() {
            return reply["responses"][0].clone();
        }
    }
}

/// The role's ACLs, or `None` if there is no such role.
async fn role_acls(role: &str) -> Option<Value> {
    let reply = dynsec(json!({"command": "getRole", "rolename": role})).await;
    match reply["error"].as_str() {
        None => Some(reply["data"]["role"]["acls"].clone()),
        Some("Role not found") => None,
        Some(error) => panic!("getRole {role}: {error}"),
    }
}

/// The client's roles, or `None` if there is no such client.
async fn client_roles(username: &str) -> Option<Value> {
    let reply = dynsec(json!({"command": "getClient", "username": username})).await;
    match reply["error"].as_str() {
        None => Some(reply["data"]["client"]["roles"].clone()),
        Some("Client not found") => None,
        Some(error) => panic!("getClient {username}: {error}"),
    }
}

/// What the plugin grants an instance's role: publish and subscribe below
/// its prefix, nothing else.
fn expected_acls(prefix: &str) -> Value {
    let topics = format!("{prefix}/#");
    json!([
        {"acltype": "publishClientSend", "topic": topics, "priority": 0, "allow": true},
        {"acltype": "subscribePattern", "topic": topics, "priority": 0, "allow": true},
    ])
}

/// The topic the lifecycle's greeting is retained on.
fn greeting_topic(creds: &Credentials) -> String {
    format!("{}/greeting", credential(creds, "topic_prefix"))
}

/// The mosquitto plugin: a dynamic security role per instance, a client
/// per binding.
struct Mosquitto;

impl Backend for Mosquitto {
    const PLUGIN: &'static str = "mosquitto";
    const PLAN: &'static str = "standard";
    const ID_PREFIX: &'static str = "mqtt";
    const CREDENTIAL_FIELDS: &'static [&'static str] = &[
        "uri",
        "hostname",
        "host",
        "username",
        "password",
        "topic_prefix",
    ];
    const PORT: u16 = PORT;
    const URI_SCHEMES: &'static [&'static str] = &["mqtt://"];
    const RESOURCE: &'static str = "topic_prefix";
    const ROTATABLE: bool = true;
    /// A subscriber on the whole prefix, logged in with the binding.
    type Session = Subscriber;

    fn available() -> bool {
        available()
    }

    /// The plan takes no parameters.
    fn provision_parameters() -> Option<Value> {
        None
    }

    /// The role is named like the prefix and grants exactly the prefix;
    /// the client has that role only; the uri carries the same login.
    async fn check_binding(bound: &Value) {
        let creds = credentials(bound);
        let prefix = credential(creds, "topic_prefix");
        assert_eq!(
            role_acls(prefix).await,
            Some(expected_acls(prefix)),
            "the role of {prefix}"
        );
        assert_eq!(
            client_roles(credential(creds, "username")).await,
            Some(json!([{"rolename": prefix}]))
        );
        assert_eq!(
            credential(creds, "uri"),
            format!(
                "mqtt://{}:{}@{HOST}:{PORT}",
                credential(creds, "username"),
                credential(creds, "password")
            ),
            "the generated user and password need no encoding"
        );
    }

    /// A subscriber on `<prefix>/#` gets the greeting the same login
    /// publishes (retained, so it arrives however the two are ordered).
    async fn use_credentials(creds: &Credentials) -> Subscriber {
        let prefix = credential(creds, "topic_prefix");
        let mut args = binding_login(creds);
        args.extend(["-v", "-t", &format!("{prefix}/#")].map(str::to_owned));
        let mut session = Subscriber::spawn(&args);
        assert_eq!(
            publish(&binding_login(creds), &greeting_topic(creds), "hello", true).await,
            Published::Accepted,
            "publishing below the prefix"
        );
        assert_eq!(
            session.next_line("the greeting").await,
            format!("{} hello", greeting_topic(creds))
        );
        session
    }

    /// Nothing outside `<prefix>/`: no wildcard over other prefixes, no
    /// system or dynamic security topics, not even a topic that merely
    /// starts with the prefix's characters.
    async fn check_confined(_session: &mut Subscriber, creds: &Credentials) {
        let prefix = credential(creds, "topic_prefix");
        let app = binding_login(creds);
        let filters: [&str; 7] = [
            "#",
            "+/greeting",
            &format!("{prefix}x/#"),
            &unique_id("outside"),
            "$SYS/#",
            RESPONSE_TOPIC,
            "$CONTROL/#",
        ];
        for filter in filters {
            assert_eq!(
                subscribe_once(&app, filter, 2).await,
                Subscribed::Denied,
                "subscribing to {filter}"
            );
        }
        assert_eq!(
            subscribe_once(&app, &format!("{prefix}/+/deep"), 1).await,
            Subscribed::NothingArrived,
            "a filter inside the prefix is granted"
        );
        for topic in [
            format!("{}/x", unique_id("outside")),
            format!("{prefix}x/y"),
            "greeting".to_owned(),
        ] {
            assert_eq!(
                publish(&app, &topic, "x", false).await,
                Published::NotAuthorized,
                "publishing to {topic}"
            );
        }
        // No way to grant itself more.
        let escalation = json!({"commands": [{"command": "addRoleACL", "rolename": prefix,
            "acltype": "subscribePattern", "topic": "#", "allow": true}]});
        assert_eq!(
            publish(&app, COMMAND_TOPIC, &escalation.to_string(), false).await,
            Published::NotAuthorized,
            "a binding sending dynamic security commands"
        );
        assert_eq!(role_acls(prefix).await, Some(expected_acls(prefix)));
    }

    /// B can neither read nor write A's topics; B's own prefix works.
    async fn check_isolated(a: &Credentials, b: &Credentials) {
        let prefix_a = credential(a, "topic_prefix");
        let app_b = binding_login(b);
        assert_eq!(
            subscribe_once(&app_b, &format!("{prefix_a}/#"), 2).await,
            Subscribed::Denied,
            "B subscribing to A's prefix"
        );
        assert_eq!(
            publish(&app_b, &greeting_topic(a), "from b", true).await,
            Published::NotAuthorized,
            "B publishing to A's prefix"
        );
        assert_eq!(
            subscribe_once(&binding_login(a), &greeting_topic(a), 5).await,
            Subscribed::Received("hello".to_owned()),
            "A's retained greeting is untouched"
        );
        assert_eq!(
            publish(&app_b, &greeting_topic(b), "mine", true).await,
            Published::Accepted,
            "B publishing below its own prefix"
        );
    }

    async fn user_exists(creds: &Credentials) -> bool {
        client_roles(credential(creds, "username")).await.is_some()
    }

    async fn assert_login_refused(creds: &Credentials, what: &str) {
        assert_eq!(
            publish(&binding_login(creds), &greeting_topic(creds), "x", false).await,
            Published::LoginRefused,
            "{what}"
        );
    }

    /// Deleting the client disconnects it (over MQTT 5 the server says so
    /// in a DISCONNECT, and mosquitto_sub ends rather than reconnect).
    async fn assert_session_ended(mut session: Subscriber) {
        assert!(
            session.exit_within(WAIT).await.is_some(),
            "a subscriber logged in before the unbind is still connected {WAIT:?} after it"
        );
    }

    async fn resource_exists(creds: &Credentials) -> bool {
        role_acls(credential(creds, "topic_prefix")).await.is_some()
    }

    async fn leave_data(creds: &Credentials) {
        let topic = format!("{}/rotated", credential(creds, "topic_prefix"));
        assert_eq!(
            publish(&binding_login(creds), &topic, "v", true).await,
            Published::Accepted
        );
    }

    async fn check_data(creds: &Credentials) {
        let topic = format!("{}/rotated", credential(creds, "topic_prefix"));
        assert_eq!(
            subscribe_once(&binding_login(creds), &topic, 5).await,
            Subscribed::Received("v".to_owned())
        );
    }
}

shared_suite!(Mosquitto);

/// A provision or bind retried over what an earlier attempt (or a hand)
/// left on the server makes it exactly right; deletes of what is already
/// gone succeed.
#[tokio::test]
async fn retries_over_leftovers_make_them_right() {
    if !available() {
        return;
    }
    let broker = TestBroker::start(BrokerSetup::shipped(&["mosquitto"])).await;
    let plan = broker.plan("mosquitto", "standard").await;
    let instance = unique_id("mqtt-leftover");
    let role = derived_name("inst_", &instance, 64);

    // A role of that name granting far too much.
    let reply = dynsec(json!({"command": "createRole", "rolename": role, "acls": [
        {"acltype": "subscribePattern", "topic": "#", "allow": true},
        {"acltype": "publishClientSend", "topic": "#", "allow": true},
    ]}))
    .await;
    assert_eq!(reply.get("error"), None, "{reply}");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(role_acls(&role).await, Some(expected_acls(&role)));

    // A client of that name with another password and no role.
    let binding = unique_id("mqtt-leftover-binding");
    let user = derived_name("u_", &binding, 64);
    let reply = dynsec(json!({"command": "createClient", "username": user,
        "password": "leftover-password"}))
    .await;
    assert_eq!(reply.get("error"), None, "{reply}");
    let (status, bound) = broker.bind(&instance, &binding, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let creds = credentials(&bound).clone();
    assert_eq!(credential(&creds, "username"), user);
    assert_eq!(client_roles(&user).await, Some(json!([{"rolename": role}])));
    assert_eq!(
        publish(&binding_login(&creds), &greeting_topic(&creds), "hi", false).await,
        Published::Accepted
    );
    assert_eq!(
        publish(
            &login(HOST, PORT, &user, "leftover-password"),
            &greeting_topic(&creds),
            "x",
            false
        )
        .await,
        Published::LoginRefused,
        "the old password"
    );

    // Gone before the platform deletes them: the deletes still succeed.
    let reply = dynsec(json!({"command": "deleteClient", "username": user})).await;
    assert_eq!(reply.get("error"), None, "{reply}");
    let (status, body) = broker.unbind(&instance, &binding, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let reply = dynsec(json!({"command": "deleteRole", "rolename": role})).await;
    assert_eq!(reply.get("error"), None, "{reply}");
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(role_acls(&role).await, None);
}
