//! Encryption at rest of what the broker must keep but nobody else may read:
//! the credentials of service bindings. AES-256-GCM, and every sealed value
//! names the key that sealed it, so a key can be rotated while values sealed
//! with the old one stay readable.
//!
//! A sealed value (format 1) is
//!
//! | bytes   | what                                                  |
//! |---------|-------------------------------------------------------|
//! | 0       | format, `1`                                           |
//! | 1..9    | key id: the first 8 bytes of SHA-256 of the raw key   |
//! | 9..21   | nonce: 96 random bits from the operating system       |
//! | 21..    | ciphertext, then the 16-byte authentication tag       |
//!
//! The associated data is bytes 0..9 followed by the caller's context (for
//! credentials, the binding id): a value copied into another record, or
//! relabelled with another key id, does not decrypt.
//!
//! The key id lets an operator tell keys apart without showing them:
//! `echo "$KEY" | base64 -d | sha256sum | cut -c1-16`.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{self, Aead, Generate, KeyInit, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::StateConfig;

const FORMAT_V1: u8 = 1;
const KEY_LEN: usize = 32;
const KEY_ID_LEN: usize = 8;
/// Bytes at the start of a sealed value that say how it was sealed.
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

type Nonce = aead::Nonce<Aes256Gcm>;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Never shows the text itself: it may be a real key with a typo.
    #[error(
        "{name} is not an encryption key: it must be 32 random bytes in base64 \
         (`wasm-broker generate-key` prints one)"
    )]
    InvalidKey { name: String },
    #[error(
        "no encryption key is configured: set {key_env} (or [state] encryption_key) to a key from \
         `wasm-broker generate-key`; service binding credentials are never stored unencrypted"
    )]
    NoKey { key_env: String },
    #[error(
        "they are encrypted with key {key_id}, which is not configured: set {key_env} to that key, \
         or list it in {previous_env} while rotating keys"
    )]
    UnknownKey {
        key_id: KeyId,
        key_env: String,
        previous_env: String,
    },
    #[error(
        "decryption with key {key_id} failed: the stored value was altered or belongs to another record"
    )]
    Tampered { key_id: KeyId },
    #[error("not a sealed value: format {found}, expected {FORMAT_V1}")]
    UnknownFormat { found: u8 },
    #[error("sealed value is truncated: {length} bytes")]
    Truncated { length: usize },
    /// AES-GCM encrypts at most 64 GiB at once.
    #[error("too large to encrypt: {length} bytes")]
    TooLarge { length: usize },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// Which key sealed a value; safe to show.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8]) -> Self {
        let digest = Sha256::digest(key);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One AES-256 key. Its `Debug` shows the id only.
#[derive(Clone)]
pub struct EncryptionKey {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl EncryptionKey {
    /// Parses a base64 key; `name` says where it came from, for the error.
    pub fn from_base64(text: &SecretString, name: &str) -> Result<Self, SecretsError> {
        let invalid = || SecretsError::InvalidKey {
            name: name.to_owned(),
        };
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.expose_secret().trim())
                .map_err(|_| invalid())?,
        );
        if bytes.len() != KEY_LEN {
            return Err(invalid());
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| invalid())?;
        Ok(Self {
            id: KeyId::of(&bytes),
            cipher,
        })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({})", self.id)
    }
}

/// A fresh key from the operating system's CSPRNG, in base64.
pub fn generate_key() -> Result<SecretString, SecretsError> {
    let key = Zeroizing::new(
        <[u8; KEY_LEN]>::try_generate().map_err(|error| SecretsError::Random(error.to_string()))?,
    );
    Ok(STANDARD.encode(key.as_slice()).into())
}

/// The key of a sealed value, read from its header (the value's first
/// [`HEADER_LEN`] bytes are enough).
pub fn sealed_key_id(sealed: &[u8]) -> Result<KeyId, SecretsError> {
    match sealed {
        [FORMAT_V1, id @ ..] if id.len() >= KEY_ID_LEN => {
            let mut key_id = [0; KEY_ID_LEN];
            key_id.copy_from_slice(&id[..KEY_ID_LEN]);
            Ok(KeyId(key_id))
        }
        [FORMAT_V1, ..] | [] => Err(SecretsError::Truncated {
            length: sealed.len(),
        }),
        [found, ..] => Err(SecretsError::UnknownFormat { found: *found }),
    }
}

/// The keys of a broker: the current one seals, every one opens.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Option<EncryptionKey>,
    /// Keys that only open: values sealed before a rotation.
    previous: Vec<EncryptionKey>,
    /// Where operators set the keys, to name in errors.
    key_env: String,
    previous_env: String,
}

impl Keyring {
    /// The keys of `[state]`, environment already applied (see `Config::load`).
    pub fn from_config(config: &StateConfig) -> Result<Self, SecretsError> {
        let key_name = format!("{} (or [state] encryption_key)", config.encryption_key_env);
        let current = config
            .encryption_key
            .as_ref()
            .map(|text| EncryptionKey::from_base64(text, &key_name))
            .transpose()?;
        let previous_name = format!(
            "an entry of {} (or [state] previous_encryption_keys)",
            config.previous_encryption_keys_env
        );
        let previous = config
            .previous_encryption_keys
            .iter()
            .map(|text| EncryptionKey::from_base64(text, &previous_name))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            current,
            previous,
            key_env: config.encryption_key_env.clone(),
            previous_env: config.previous_encryption_keys_env.clone(),
        })
    }

    /// This keyring with `key` sealing from now on; the former current key
    /// still opens.
    pub fn rotating_to(mut self, key: EncryptionKey) -> Self {
        if let Some(former) = self.current.replace(key) {
            self.previous.push(former);
        }
        self
    }

    pub fn current_key_id(&self) -> Option<KeyId> {
        self.current.as_ref().map(EncryptionKey::id)
    }

    /// Whether no key at all is configured.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_empty()
    }

    /// The name of the environment variable that holds the current key.
    pub fn key_env(&self) -> &str {
        &self.key_env
    }

    /// Fails unless there is a key to seal with.
    pub fn require_current(&self) -> Result<&EncryptionKey, SecretsError> {
        self.current.as_ref().ok_or_else(|| SecretsError::NoKey {
            key_env: self.key_env.clone(),
        })
    }

    /// Encrypts `plaintext` with the current key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let key = self.require_current()?;
        // A random nonce per value: keys seal far fewer than the 2^32 values
        // after which random 96-bit nonces risk repeating.
        let nonce =
            Nonce::try_generate().map_err(|error| SecretsError::Random(error.to_string()))?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(key.id.as_bytes());
        let aad = associated_data(&sealed, context);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretsError::TooLarge {
                length: plaintext.len(),
            })?;
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts a value sealed by any key of this keyring for `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let key = self.key_for(sealed_key_id(sealed)?)?;
        if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Truncated {
                length: sealed.len(),
            });
        }
        let (header, rest) = sealed.split_at(HEADER_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| SecretsError::Truncated {
            length: sealed.len(),
        })?;
        let aad = associated_data(header, context);
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretsError::Tampered { key_id: key.id })
    }

    /// The key with this id, or why there is none.
    pub fn key_for(&self, id: KeyId) -> Result<&EncryptionKey, SecretsError> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|key| key.id == id)
            .ok_or_else(|| SecretsError::UnknownKey {
                key_id: id,
                key_env: self.key_env.clone(),
                previous_env: self.previous_env.clone(),
            })
    }
}

fn associated_data(header: &[u8], context: &[u8]) -> Vec<u8> {
    [header, context].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(current: Option<&SecretString>, previous: &[&SecretString]) -> StateConfig {
        StateConfig {
            encryption_key: current.cloned(),
            previous_encryption_keys: previous.iter().map(|key| (*key).clone()).collect(),
            ..StateConfig::default()
        }
    }

    fn keyring(current: &SecretString) -> Keyring {
        Keyring::from_config(&config_with(Some(current), &[])).expect("valid key")
    }

    fn new_key() -> SecretString {
        generate_key().expect("random key")
    }

    #[test]
    fn sealed_values_open_with_their_context_only() {
        let keys = keyring(&new_key());
        let sealed = keys
            .seal(b"{\"password\":\"hunter2\"}", b"b-1")
            .expect("sealed");
        assert!(!sealed.windows(7).any(|window| window == b"hunter2"));
        assert_eq!(
            keys.open(&sealed, b"b-1").expect("opens").as_slice(),
            b"{\"password\":\"hunter2\"}"
        );
        assert!(matches!(
            keys.open(&sealed, b"b-2"),
            Err(SecretsError::Tampered { .. })
        ));
        // Fresh nonce each time: equal plaintexts do not look equal.
        assert_ne!(
            keys.seal(b"same", b"b-1").expect("sealed"),
            keys.seal(b"same", b"b-1").expect("sealed")
        );
    }

    #[test]
    fn a_wrong_key_is_named_not_mistaken() {
        let sealing = keyring(&new_key());
        let other = keyring(&new_key());
        let sealed = sealing.seal(b"secret", b"b-1").expect("sealed");
        match other.open(&sealed, b"b-1") {
            Err(SecretsError::UnknownKey { key_id, .. }) => {
                assert_eq!(Some(key_id), sealing.current_key_id());
                let message = other
                    .open(&sealed, b"b-1")
                    .expect_err("refused")
                    .to_string();
                assert!(message.contains(&key_id.to_string()), "{message}");
                assert!(message.contains("WASM_BROKER_ENCRYPTION_KEY"), "{message}");
            }
            other => panic!("expected UnknownKey, got {other:?}"),
        }
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let keys = keyring(&new_key());
        let sealed = keys.seal(b"secret", b"b-1").expect("sealed");
        for position in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[position] ^= 0x01;
            assert!(
                keys.open(&altered, b"b-1").is_err(),
                "byte {position} altered unnoticed"
            );
        }
        for length in 0..sealed.len() {
            assert!(
                keys.open(&sealed[..length], b"b-1").is_err(),
                "truncated to {length}"
            );
        }
        assert!(matches!(
            keys.open(b"{\"plain\":\"json\"}", b"b-1"),
            Err(SecretsError::UnknownFormat { found: b'{' })
        ));
    }

    #[test]
    fn rotation_seals_with_the_new_key_and_still_opens_old_values() {
        let (old, new) = (new_key(), new_key());
        let before = keyring(&old);
        let sealed_before = before.seal(b"old value", b"b-1").expect("sealed");
        let rotating = before.rotating_to(keyring(&new).require_current().expect("key").clone());
        let sealed_after = rotating.seal(b"new value", b"b-2").expect("sealed");
        assert_eq!(sealed_key_id(&sealed_after).ok(), rotating.current_key_id());
        assert_eq!(
            rotating
                .open(&sealed_before, b"b-1")
                .expect("opens")
                .as_slice(),
            b"old value"
        );

        let from_config =
            Keyring::from_config(&config_with(Some(&new), &[&old])).expect("valid keys");
        assert_eq!(
            from_config
                .open(&sealed_before, b"b-1")
                .expect("opens")
                .as_slice(),
            b"old value"
        );
        assert_eq!(from_config.current_key_id(), rotating.current_key_id());
    }

    #[test]
    fn without_a_key_nothing_is_sealed() {
        let keys = Keyring::from_config(&StateConfig::default()).expect("no key is valid");
        assert!(keys.is_empty());
        let error = keys.seal(b"secret", b"b-1").expect_err("refused");
        assert!(matches!(error, SecretsError::NoKey { .. }));
        assert!(
            error.to_string().contains("WASM_BROKER_ENCRYPTION_KEY"),
            "{error}"
        );
    }

    #[test]
    fn malformed_keys_are_refused_without_being_shown() {
        for text in ["not base64!", "c2hvcnQ=", &STANDARD.encode([7; 33])] {
            let config = config_with(Some(&SecretString::from(text)), &[]);
            let error = Keyring::from_config(&config)
                .expect_err("refused")
                .to_string();
            assert!(!error.contains(text), "{error}");
            assert!(error.contains("WASM_BROKER_ENCRYPTION_KEY"), "{error}");
        }
        let config = config_with(Some(&new_key()), &[&SecretString::from("nope")]);
        let error = Keyring::from_config(&config)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS"),
            "{error}"
        );
    }

    #[test]
    fn key_ids_are_sha256_prefixes_and_debug_shows_nothing_else() {
        let text = new_key();
        let raw = STANDARD.decode(text.expose_secret()).expect("base64");
        assert_eq!(raw.len(), KEY_LEN);
        let keys = keyring(&text);
        let id = keys.current_key_id().expect("key");
        assert_eq!(
            id.to_string(),
            hex::encode(&Sha256::digest(&raw)[..KEY_ID_LEN])
        );
        let debug = format!("{keys:?}");
        assert!(!debug.contains(text.expose_secret()), "{debug}");
        assert!(debug.contains(&id.to_string()), "{debug}");
        assert_ne!(new_key().expose_secret(), text.expose_secret());
    }
}
