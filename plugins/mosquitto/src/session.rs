//! A blocking MQTT 3.1.1 client session over any byte transport, with one
//! deadline for everything it waits for. The plugin runs it over the host's
//! tcp stream; the unit tests over scripted bytes.

use std::time::{Duration, Instant};

use wasm_broker_sdk::BrokerError;
use wasm_broker_sdk::tcp;

use crate::mqtt::{self, Connect, Decoder, Packet, Publish};

/// Bytes asked for per read.
const READ_CHUNK: usize = 64 * 1024;

/// A byte stream to the server.
pub trait Transport {
    fn send(&mut self, bytes: &[u8]) -> Result<(), BrokerError>;

    /// What arrives within `timeout`, up to `max` bytes: `None` if nothing
    /// did, empty if the peer closed the stream.
    fn receive(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<u8>>, BrokerError>;
}

impl Transport for tcp::Stream {
    fn send(&mut self, bytes: &[u8]) -> Result<(), BrokerError> {
        self.write_all(bytes)
    }

    fn receive(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<u8>>, BrokerError> {
        self.try_read(max, timeout)
    }
}

/// A connected session.
pub struct Session<T: Transport> {
    transport: T,
    decoder: Decoder,
    deadline: Instant,
    last_packet_id: u16,
}

impl<T: Transport> Session<T> {
    /// Sends CONNECT and waits for the server to accept it (CONNACK).
    pub fn open(
        mut transport: T,
        connect: &Connect<'_>,
        deadline: Instant,
    ) -> Result<Self, BrokerError> {
        transport.send(&mqtt::connect(connect).map_err(protocol_error)?)?;
        let mut session = Self {
            transport,
            decoder: Decoder::new(),
            deadline,
            last_packet_id: 0,
        };
        match session.next_packet("CONNACK")? {
            Packet::ConnAck { return_code: 0, .. } => Ok(session),
            Packet::ConnAck { return_code, .. } => Err(BrokerError::Internal(format!(
                "the MQTT server refused the admin login: {} (CONNACK {return_code})",
                mqtt::connack_refusal(return_code)
            ))),
            other => Err(BrokerError::Internal(format!(
                "the MQTT server answered CONNECT with {other:?}, not CONNACK"
            ))),
        }
    }

    /// Subscribes to `filter` at QoS 0 and waits until the server grants it.
    pub fn subscribe(&mut self, filter: &str) -> Result<(), BrokerError> {
        self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
        let packet_id = self.last_packet_id;
        self.transport
            .send(&mqtt::subscribe(packet_id, filter).map_err(protocol_error)?)?;
        loop {
            match self.next_packet("SUBACK")? {
                Packet::SubAck {
                    packet_id: acked,
                    return_codes,
                } if acked == packet_id => {
                    return match return_codes.as_slice() {
                        [granted] if *granted <= 2 => Ok(()),
                        _ => Err(BrokerError::Internal(format!(
                            "the MQTT server refused the admin's subscription to {filter} (SUBACK {return_codes:?})"
                        ))),
                    };
                }
                // Messages for earlier subscriptions may come first.
                _ => continue,
            }
        }
    }

    /// Publishes `payload` to `topic` at QoS 0.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), BrokerError> {
        self.transport
            .send(&mqtt::publish(topic, payload).map_err(protocol_error)?)
    }

    /// The next message on a subscribed topic.
    pub fn next_message(&mut self) -> Result<Publish, BrokerError> {
        loop {
            if let Packet::Publish(publish) = self.next_packet("message")? {
                return Ok(publish);
            }
        }
    }

    /// Sends DISCONNECT, so the server ends the session cleanly. Best
    /// effort: the stream closes with the call anyway.
    pub fn close(mut self) {
        let _ = self.transport.send(&mqtt::disconnect());
    }

    /// The next packet, reading as needed until the session's deadline.
    fn next_packet(&mut self, awaited: &str) -> Result<Packet, BrokerError> {
        loop {
            if let Some(packet) = self.decoder.next_packet().map_err(protocol_error)? {
                return Ok(packet);
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let waited_out = || {
                BrokerError::Internal(format!(
                    "the MQTT server sent no {awaited} in time (the admin session has a {} ms budget)",
                    crate::SESSION_BUDGET.as_millis()
                ))
            };
            if left.is_zero() {
                return Err(waited_out());
            }
            match self.transport.receive(READ_CHUNK, left)? {
                None => return Err(waited_out()),
                Some(bytes) if bytes.is_empty() => {
                    return Err(BrokerError::Internal(format!(
                        "the MQTT server closed the connection while the plugin waited for {awaited}"
                    )));
                }
                Some(bytes) => self.decoder.push(&bytes),
            }
        }
    }
}

fn protocol_error(error: mqtt::Error) -> BrokerError {
    BrokerError::Internal(error.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A server's bytes, handed out in the given pieces; `None` pieces are
    /// reads that time out. What the session sends is kept.
    #[derive(Default)]
    pub(crate) struct Script {
        pub(crate) incoming: VecDeque<Option<Vec<u8>>>,
        pub(crate) sent: Vec<Vec<u8>>,
    }

    impl Script {
        pub(crate) fn new(pieces: &[&[u8]]) -> Self {
            Self {
                incoming: pieces.iter().map(|piece| Some(piece.to_vec())).collect(),
                sent: Vec::new(),
            }
        }
    }

    impl Transport for &mut Script {
        fn send(&mut self, bytes: &[u8]) -> Result<(), BrokerError> {
            self.sent.push(bytes.to_vec());
            Ok(())
        }

        fn receive(
            &mut self,
            max: usize,
            _timeout: Duration,
        ) -> Result<Option<Vec<u8>>, BrokerError> {
            match self.incoming.pop_front() {
                Some(Some(mut bytes)) => {
                    if bytes.len() > max {
                        let rest = bytes.split_off(max);
                        self.incoming.push_front(Some(rest));
                    }
                    Ok(Some(bytes))
                }
                Some(None) => Ok(None),
                // The script is over: the server closed the stream.
                None => Ok(Some(Vec::new())),
            }
        }
    }

    pub(crate) const LOGIN: Connect<'static> = Connect {
        client_id: "test",
        username: Some("admin-token"),
        password: Some(b"password-token"),
        keep_alive_secs: 30,
    };

    pub(crate) fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn description<T>(result: Result<T, BrokerError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.description().to_owned(),
        }
    }

    #[test]
    fn connect_subscribe_receive_over_split_reads() {
        let publish = mqtt::publish("r/t", b"{\"ok\":1}").expect("encodes");
        let (head, tail) = publish.split_at(3);
        let mut script = Script::new(&[&[0x20], &[2, 0, 0, 0x90], &[3, 0, 1, 0], head, tail]);
        let mut session = Session::open(&mut script, &LOGIN, soon()).expect("connects");
        session.subscribe("r/#").expect("subscribes");
        let message = session.next_message().expect("a message");
        assert_eq!(
            (message.topic.as_str(), message.payload.as_slice()),
            ("r/t", &b"{\"ok\":1}"[..])
        );
        session.close();
        assert_eq!(script.sent[0], mqtt::connect(&LOGIN).expect("encodes"));
        assert_eq!(script.sent[1], mqtt::subscribe(1, "r/#").expect("encodes"));
        assert_eq!(script.sent[2], mqtt::disconnect());
    }

    #[test]
    fn a_refused_login_says_why() {
        let mut script = Script::new(&[&[0x20, 2, 0, 4]]);
        let error = description(Session::open(&mut script, &LOGIN, soon()));
        assert!(error.contains("bad user name or password"), "{error}");
    }

    #[test]
    fn a_refused_subscription_is_an_error() {
        let mut script = Script::new(&[&[0x20, 2, 0, 0], &[0x90, 3, 0, 1, 0x80]]);
        let mut session = Session::open(&mut script, &LOGIN, soon()).expect("connects");
        let error = description(session.subscribe("$CONTROL/x"));
        assert!(
            error.contains("refused the admin's subscription"),
            "{error}"
        );
    }

    #[test]
    fn silence_and_hang_ups_end_the_wait() {
        let mut script = Script::new(&[&[0x20, 2, 0, 0]]);
        script.incoming.push_back(None);
        let mut session = Session::open(&mut script, &LOGIN, soon()).expect("connects");
        let error = description(session.next_message());
        assert!(error.contains("sent no message in time"), "{error}");
        let error = description(session.next_message());
        assert!(error.contains("closed the connection"), "{error}");
    }

    #[test]
    fn a_passed_deadline_reads_nothing() {
        let mut script = Script::new(&[&[0x20, 2, 0, 0]]);
        let error = description(Session::open(&mut script, &LOGIN, Instant::now()));
        assert!(error.contains("in time"), "{error}");
        assert_eq!(script.incoming.len(), 1, "nothing was read");
    }
}
