use crate::BrokerError;

/// Letters and digits only: a password made of them needs no escaping in a
/// URI, an SQL literal, a Redis ACL rule, JSON or a shell.
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Random bytes at or above this are dropped: 248 = 4 * 62, so every kept byte
/// maps to each character equally often (no modulo bias).
const UNBIASED_LIMIT: u8 = (256 - 256 % ALPHABET.len()) as u8;

/// A random password of `len` characters from `[A-Za-z0-9]` (about 5.95 bits
/// each: 24 characters give 142 bits), drawn from the host's CSPRNG through
/// `wasi:random`.
pub fn password(len: usize) -> Result<String, BrokerError> {
    let mut password = String::with_capacity(len);
    let mut random = [0u8; 64];
    while password.len() < len {
        getrandom::fill(&mut random).map_err(|error| {
            BrokerError::Internal(format!("no random numbers from the host: {error}"))
        })?;
        let missing = len - password.len();
        password.extend(
            random
                .iter()
                .filter(|&&byte| byte < UNBIASED_LIMIT)
                .map(|&byte| char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]))
                .take(missing),
        );
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_have_the_length_and_alphabet() {
        for len in [0, 1, 24, 200] {
            let password = password(len).expect("random numbers");
            assert_eq!(password.len(), len);
            assert!(
                password.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{password}"
            );
        }
    }

    #[test]
    fn passwords_differ() {
        assert_ne!(password(24).expect("random"), password(24).expect("random"));
    }

    #[test]
    fn every_kept_byte_maps_evenly() {
        assert_eq!(UNBIASED_LIMIT, 248);
        assert_eq!(usize::from(UNBIASED_LIMIT) % ALPHABET.len(), 0);
    }
}
