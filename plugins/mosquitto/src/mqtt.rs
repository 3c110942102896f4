//! The part of MQTT 3.1.1 an admin session needs: CONNECT, SUBSCRIBE,
//! PUBLISH (QoS 0) and DISCONNECT out; CONNACK, SUBACK and PUBLISH in.
//! Pure byte work, no host imports, so it is unit-tested natively.
//!
//! Every packet is a fixed header (type and flags in one byte, then the
//! "remaining length" as a base-128 varint of one to four bytes) followed by
//! that many bytes. Strings are a two-byte big-endian length and UTF-8.

use std::fmt;

/// The largest remaining length the varint can express (four bytes).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Packets larger than this are refused rather than buffered: an admin
/// session only expects small answers, and the plugin's memory is capped.
pub const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// What can go wrong encoding or decoding a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The peer sent bytes that are not a valid packet.
    Malformed(String),
    /// A packet longer than [`MAX_INCOMING_PACKET`] (or than MQTT allows).
    TooLarge(usize),
    /// A string longer than the 65,535 bytes its length prefix can say.
    StringTooLong(usize),
    /// A password without a user name, which MQTT 3.1.1 does not allow.
    PasswordWithoutUsername,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed MQTT packet: {what}"),
            Self::TooLarge(len) => write!(f, "MQTT packet of {len} bytes is too large"),
            Self::StringTooLong(len) => {
                write!(f, "MQTT string of {len} bytes is longer than 65535")
            }
            Self::PasswordWithoutUsername => {
                write!(f, "MQTT 3.1.1 sends a password only with a user name")
            }
        }
    }
}

/// Appends `len` as MQTT's remaining-length varint: seven bits a byte,
/// least significant first, the high bit set on every byte but the last.
pub fn encode_remaining_length(len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    if len > MAX_REMAINING_LENGTH {
        return Err(Error::TooLarge(len));
    }
    let mut rest = len;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// Reads a remaining-length varint from the start of `bytes`: the value and
/// how many bytes it took, or `None` if `bytes` ends before it does.
pub fn decode_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut value = 0usize;
    for (index, byte) in bytes.iter().take(4).enumerate() {
        value += usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(Error::Malformed(
            "remaining length longer than four bytes".to_owned(),
        ));
    }
    Ok(None)
}

/// The login and identity of a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// Unique per connection: the server disconnects an older connection
    /// with the same id.
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// Seconds the server waits for a packet before dropping the
    /// connection; 0 turns the check off.
    pub keep_alive_secs: u16,
}

/// A CONNECT with a clean session (nothing kept after the connection ends).
pub fn connect(connect: &Connect<'_>) -> Result<Vec<u8>, Error> {
    if connect.password.is_some() && connect.username.is_none() {
        return Err(Error::PasswordWithoutUsername);
    }
    let mut body = Vec::new();
    put_bytes(&mut body, b"MQTT")?;
    body.push(4); // protocol level: 3.1.1
    let mut flags = 0x02; // clean session
    if connect.username.is_some() {
        flags |= 0x80;
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&connect.keep_alive_secs.to_be_bytes());
    put_bytes(&mut body, connect.client_id.as_bytes())?;
    if let Some(username) = connect.username {
        put_bytes(&mut body, username.as_bytes())?;
    }
    if let Some(password) = connect.password {
        put_bytes(&mut body, password)?;
    }
    packet(CONNECT << 4, &body)
}

/// A SUBSCRIBE to one topic filter at QoS 0. `packet_id` must not be 0.
pub fn subscribe(packet_id: u16, filter: &str) -> Result<Vec<u8>, Error> {
    if packet_id == 0 {
        return Err(Error::Malformed("packet identifier 0".to_owned()));
    }
    let mut body = packet_id.to_be_bytes().to_vec();
    put_bytes(&mut body, filter.as_bytes())?;
    body.push(0); // requested QoS
    // SUBSCRIBE's fixed header flags are 0010, as the spec requires.
    packet((SUBSCRIBE << 4) | 0x02, &body)
}

/// A PUBLISH at QoS 0 (no packet identifier, no acknowledgement), not retained.
pub fn publish(topic: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 2);
    put_bytes(&mut body, topic.as_bytes())?;
    body.extend_from_slice(payload);
    packet(PUBLISH << 4, &body)
}

pub fn disconnect() -> Vec<u8> {
    vec![DISCONNECT << 4, 0]
}

fn packet(first_byte: u8, body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut packet = Vec::with_capacity(body.len() + 5);
    packet.push(first_byte);
    encode_remaining_length(body.len(), &mut packet)?;
    packet.extend_from_slice(body);
    Ok(packet)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::StringTooLong(bytes.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        session_present: bool,
        /// 0 accepted; 1 to 5 refused (see [`connack_refusal`]).
        return_code: u8,
    },
    Publish(Publish),
    SubAck {
        packet_id: u16,
        /// One per topic filter: the granted QoS, or 0x80 for a refusal.
        return_codes: Vec<u8>,
    },
    PingResp,
    /// Any other packet type, which an admin session ignores.
    Other {
        packet_type: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

/// Why a server refused a connection, from CONNACK's return code.
pub fn connack_refusal(return_code: u8) -> &'static str {
    match return_code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// Collects the bytes a stream delivers, in whatever pieces, and yields
/// whole packets.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole packet, or `None` until more bytes arrive.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, Error> {
        let Some(&first) = self.buffer.first() else {
            return Ok(None);
        };
        let Some((len, len_bytes)) = decode_remaining_length(&self.buffer[1..])? else {
            return Ok(None);
        };
        if len > MAX_INCOMING_PACKET {
            return Err(Error::TooLarge(len));
        }
        let start = 1 + len_bytes;
        if self.buffer.len() < start + len {
            return Ok(None);
        }
        let packet = parse(first, &self.buffer[start..start + len]);
        self.buffer.drain(..start + len);
        packet.map(Some)
    }
}

fn parse(first: u8, body: &[u8]) -> Result<Packet, Error> {
    let packet_type = first >> 4;
    match packet_type {
        CONNACK => match body {
            [flags, return_code] => Ok(Packet::ConnAck {
                session_present: flags & 0x01 != 0,
                return_code: *return_code,
            }),
            _ => Err(Error::Malformed(format!(
                "CONNACK of {} bytes, not 2",
                body.len()
            ))),
        },
        SUBACK => match body {
            [high, low, return_codes @ ..] if !return_codes.is_empty() => Ok(Packet::SubAck {
                packet_id: u16::from_be_bytes([*high, *low]),
                return_codes: return_codes.to_vec(),
            }),
            _ => Err(Error::Malformed("SUBACK without return codes".to_owned())),
        },
        PUBLISH => parse_publish(first & 0x0f, body).map(Packet::Publish),
        PINGRESP => Ok(Packet::PingResp),
        _ => Ok(Packet::Other { packet_type }),
    }
}

fn parse_publish(flags: u8, body: &[u8]) -> Result<Publish, Error> {
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(Error::Malformed("PUBLISH with QoS 3".to_owned()));
    }
    let (topic, rest) = take_string(body)?;
    let (packet_id, payload) = if qos > 0 {
        match rest {
            [high, low, payload @ ..] => (Some(u16::from_be_bytes([*high, *low])), payload),
            _ => {
                return Err(Error::Malformed(
                    "PUBLISH without its packet identifier".to_owned(),
                ));
            }
        }
    } else {
        (None, rest)
    };
    Ok(Publish {
        topic,
        qos,
        retain: flags & 0x01 != 0,
        packet_id,
        payload: payload.to_vec(),
    })
}

fn take_string(bytes: &[u8]) -> Result<(String, &[u8]), Error> {
    let [high, low, rest @ ..] = bytes else {
        return Err(Error::Malformed("string length cut off".to_owned()));
    };
    let len = usize::from(u16::from_be_bytes([*high, *low]));
    if rest.len() < len {
        return Err(Error::Malformed(format!(
            "string of {len} bytes in {} remaining",
            rest.len()
        )));
    }
    let (text, rest) = rest.split_at(len);
    let text = String::from_utf8(text.to_vec())
        .map_err(|_| Error::Malformed("string is not UTF-8".to_owned()))?;
    Ok((text, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_remaining_length(len, &mut out).expect("encodable");
        out
    }

    #[test]
    fn remaining_lengths_follow_the_spec_table() {
        // MQTT 3.1.1, 2.2.3: the bounds of one to four bytes.
        let table: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (len, bytes) in table {
            assert_eq!(varint(len), bytes, "{len}");
            assert_eq!(
                decode_remaining_length(bytes),
                Ok(Some((len, bytes.len()))),
                "{len}"
            );
        }
    }

    #[test]
    fn remaining_length_limits() {
        let mut out = Vec::new();
        assert_eq!(
            encode_remaining_length(268_435_456, &mut out),
            Err(Error::TooLarge(268_435_456))
        );
        assert!(matches!(
            decode_remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(Error::Malformed(_))
        ));
        // Cut off: wait for more.
        assert_eq!(decode_remaining_length(&[]), Ok(None));
        assert_eq!(decode_remaining_length(&[0x80, 0x80]), Ok(None));
        // Bytes after the varint are not part of it.
        assert_eq!(decode_remaining_length(&[0x05, 0xff]), Ok(Some((5, 1))));
    }

    #[test]
    fn connect_carries_the_login() {
        let packet = connect(&Connect {
            client_id: "c1",
            username: Some("u"),
            password: Some(b"pw"),
            keep_alive_secs: 30,
        })
        .expect("encodes");
        let expected: &[u8] = &[
            0x10, 21, // CONNECT, remaining length
            0, 4, b'M', b'Q', b'T', b'T', 4,    // protocol name and level
            0xc2, // user name, password, clean session
            0, 30, // keep alive
            0, 2, b'c', b'1', // client id
            0, 1, b'u', // user name
            0, 2, b'p', b'w', // password
        ];
        assert_eq!(packet, expected);
    }

    #[test]
    fn connect_without_login_and_its_refusals() {
        let packet = connect(&Connect {
            client_id: "",
            username: None,
            password: None,
            keep_alive_secs: 0,
        })
        .expect("encodes");
        assert_eq!(packet[9], 0x02, "only clean session");
        assert_eq!(
            connect(&Connect {
                client_id: "c",
                username: None,
                password: Some(b"pw"),
                keep_alive_secs: 0,
            }),
            Err(Error::PasswordWithoutUsername)
        );
        let long = "x".repeat(70_000);
        assert_eq!(
            connect(&Connect {
                client_id: &long,
                username: None,
                password: None,
                keep_alive_secs: 0,
            }),
            Err(Error::StringTooLong(70_000))
        );
    }

    #[test]
    fn subscribe_publish_and_disconnect_bytes() {
        assert_eq!(
            subscribe(7, "a/#").expect("encodes"),
            [0x82, 8, 0, 7, 0, 3, b'a', b'/', b'#', 0]
        );
        assert!(subscribe(0, "a").is_err());
        assert_eq!(
            publish("t", b"hi").expect("encodes"),
            [0x30, 5, 0, 1, b't', b'h', b'i']
        );
        assert_eq!(disconnect(), [0xe0, 0]);
    }

    #[test]
    fn a_large_publish_has_a_multi_byte_length() {
        let payload = vec![b'x'; 200];
        let packet = publish("topic", &payload).expect("encodes");
        // 2 + 5 + 200 = 207 = 0xcf 0x01
        assert_eq!(&packet[..3], &[0x30, 0xcf, 0x01]);
        let mut decoder = Decoder::new();
        decoder.push(&packet);
        let Some(Packet::Publish(publish)) = decoder.next_packet().expect("parses") else {
            panic!("not a publish");
        };
        assert_eq!(publish.topic, "topic");
        assert_eq!(publish.payload, payload);
    }

    #[test]
    fn packets_split_anywhere_are_reassembled() {
        let mut stream = vec![0x20, 2, 0, 0]; // CONNACK accepted
        stream.extend_from_slice(&[0x90, 3, 0, 1, 0]); // SUBACK id 1, QoS 0
        let mut publish = vec![0x30];
        let body = [&[0u8, 3][..], b"a/b", &[b'z'; 300][..]].concat();
        encode_remaining_length(body.len(), &mut publish).expect("encodes");
        publish.extend_from_slice(&body);
        stream.extend_from_slice(&publish);
        stream.extend_from_slice(&[0xd0, 0]); // PINGRESP

        let expected = vec![
            Packet::ConnAck {
                session_present: false,
                return_code: 0,
            },
            Packet::SubAck {
                packet_id: 1,
                return_codes: vec![0],
            },
            Packet::Publish(Publish {
                topic: "a/b".to_owned(),
                qos: 0,
                retain: false,
                packet_id: None,
                payload: vec![b'z'; 300],
            }),
            Packet::PingResp,
        ];
        for chunk_len in [1, 2, 3, 7, 64, stream.len()] {
            let mut decoder = Decoder::new();
            let mut packets = Vec::new();
            for chunk in stream.chunks(chunk_len) {
                decoder.push(chunk);
                while let Some(packet) = decoder.next_packet().expect("valid") {
                    packets.push(packet);
                }
            }
            assert_eq!(packets, expected, "chunks of {chunk_len}");
            assert_eq!(decoder.next_packet(), Ok(None));
        }
    }

    #[test]
    fn publish_with_qos_1_has_a_packet_id_and_flags() {
        let mut decoder = Decoder::new();
        // QoS 1, retained: flags 0011.
        decoder.push(&[0x33, 7, 0, 1, b't', 0x12, 0x34, b'o', b'k']);
        assert_eq!(
            decoder.next_packet(),
            Ok(Some(Packet::Publish(Publish {
                topic: "t".to_owned(),
                qos: 1,
                retain: true,
                packet_id: Some(0x1234),
                payload: b"ok".to_vec(),
            })))
        );
    }

    #[test]
    fn refused_subscriptions_and_connections_are_visible() {
        let mut decoder = Decoder::new();
        decoder.push(&[0x90, 3, 0, 9, 0x80, 0x20, 2, 1, 5]);
        assert_eq!(
            decoder.next_packet(),
            Ok(Some(Packet::SubAck {
                packet_id: 9,
                return_codes: vec![0x80]
            }))
        );
        assert_eq!(
            decoder.next_packet(),
            Ok(Some(Packet::ConnAck {
                session_present: true,
                return_code: 5
            }))
        );
        assert_eq!(connack_refusal(4), "bad user name or password");
    }

    #[test]
    fn malformed_and_oversized_packets_are_errors() {
        let mut decoder = Decoder::new();
        decoder.push(&[0x30, 3, 0, 9, b'a']); // topic longer than the packet
        assert!(matches!(decoder.next_packet(), Err(Error::Malformed(_))));

        let mut decoder = Decoder::new();
        decoder.push(&[0x20, 3, 0, 0, 0]);
        assert!(matches!(decoder.next_packet(), Err(Error::Malformed(_))));

        let mut decoder = Decoder::new();
        let mut header = vec![0x30];
        encode_remaining_length(MAX_INCOMING_PACKET + 1, &mut header).expect("encodes");
        decoder.push(&header);
        assert_eq!(
            decoder.next_packet(),
            Err(Error::TooLarge(MAX_INCOMING_PACKET + 1))
        );
    }

    #[test]
    fn unknown_packet_types_are_passed_over() {
        let mut decoder = Decoder::new();
        decoder.push(&[0x40, 2, 0, 1, 0xd0, 0]); // PUBACK, then PINGRESP
        assert_eq!(
            decoder.next_packet(),
            Ok(Some(Packet::Other { packet_type: 4 }))
        );
        assert_eq!(decoder.next_packet(), Ok(Some(Packet::PingResp)));
    }
}
