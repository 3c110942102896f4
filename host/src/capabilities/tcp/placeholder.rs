//! Placeholder credentials: how a plugin authenticates over a raw stream
//! without ever holding the secret.
//!
//! A call asking for a connection's credentials gets tokens of the secrets'
//! exact byte lengths, so the lengths the plugin encodes into a protocol
//! frame (MQTT CONNECT, AMQP PLAIN, Redis AUTH, SMTP AUTH PLAIN ...) stay
//! right. On the way out, [`Outgoing`] writes the secret in place of the
//! first whole occurrence of each token on the stream, also when the token
//! is split across writes. On the way in, [`Incoming`] writes the token in
//! place of every occurrence of the secret, so a peer that echoes what it
//! received (or a plugin that asks it to) cannot hand the secret back.
//!
//! Only the first occurrence is substituted because credentials are sent
//! once, when a session starts; a plugin that wrote the token again later
//! (into a message a peer stores or echoes, say) would otherwise make the
//! host write the secret where the plugin can read it back.
//!
//! Pure byte logic, no I/O: the stream in `super` feeds it.

use rand::Rng;
use rand::distr::Alphanumeric;

/// One secret and the token standing in for it during one call.
#[derive(Clone)]
pub(crate) struct Placeholder {
    token: Vec<u8>,
    secret: Vec<u8>,
}

impl Placeholder {
    /// A fresh random token as long as `secret` (in bytes), different from it.
    /// Alphanumeric, so it is valid text in any protocol field the secret fits.
    pub(crate) fn new(secret: &str) -> Self {
        Self::for_bytes(secret.as_bytes().to_vec())
    }

    /// As [`Self::new`], for a secret that is not text (an encoded one).
    pub(crate) fn for_bytes(secret: Vec<u8>) -> Self {
        let mut rng = rand::rng();
        loop {
            let token: Vec<u8> = (&mut rng)
                .sample_iter(Alphanumeric)
                .take(secret.len())
                .collect();
            // A one-in-62^n coincidence, but then the plugin would hold the secret.
            if token != secret || secret.is_empty() {
                return Self { token, secret };
            }
        }
    }

    /// The token as text (it is ASCII).
    pub(crate) fn token(&self) -> String {
        String::from_utf8_lossy(&self.token).into_owned()
    }
}

/// `text` with every token of `placeholders` in it replaced by its secret:
/// what a derived (encoded) placeholder stands for.
pub(crate) fn with_secrets(text: &str, placeholders: &[Placeholder]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for placeholder in placeholders {
        let mut from = 0;
        while let Some(at) = find(&bytes[from..], &placeholder.token) {
            let at = from + at;
            bytes[at..at + placeholder.secret.len()].copy_from_slice(&placeholder.secret);
            from = at + placeholder.secret.len();
        }
    }
    bytes
}

/// The longest suffix of `bytes` that is a proper prefix of one of
/// `patterns`: what may still become a whole pattern with the next bytes.
fn pending_prefix_len<'a>(bytes: &[u8], patterns: impl Iterator<Item = &'a [u8]>) -> usize {
    patterns
        .map(|pattern| {
            let longest = pattern.len().saturating_sub(1).min(bytes.len());
            (1..=longest)
                .rev()
                .find(|&len| bytes[bytes.len() - len..] == pattern[..len])
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Token -> secret on the bytes a plugin writes to one stream.
pub(crate) struct Outgoing {
    /// Placeholders whose token has not been seen on this stream yet.
    unused: Vec<Placeholder>,
    /// Bytes held back because they may be the start of a token.
    held: Vec<u8>,
}

impl Outgoing {
    pub(crate) fn new(placeholders: Vec<Placeholder>) -> Self {
        Self {
            unused: placeholders
                .into_iter()
                .filter(|p| !p.token.is_empty())
                .collect(),
            held: Vec::new(),
        }
    }

    /// The bytes to send now for `data` written by the plugin; some may be
    /// held back until the next write or [`Self::flush`].
    pub(crate) fn write(&mut self, data: &[u8]) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend_from_slice(data);
        if self.unused.is_empty() {
            return bytes;
        }
        self.unused.retain(|placeholder| {
            match find(&bytes, &placeholder.token) {
                Some(at) => {
                    // Same length, so no other position moves.
                    bytes[at..at + placeholder.secret.len()].copy_from_slice(&placeholder.secret);
                    false
                }
                None => true,
            }
        });
        let held = pending_prefix_len(&bytes, self.unused.iter().map(|p| p.token.as_slice()));
        self.held = bytes.split_off(bytes.len() - held);
        bytes
    }

    /// What is held back, sent as it is: the plugin is about to read (or
    /// closes), so no more of a token can follow.
    pub(crate) fn flush(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Secret -> token on the bytes read from one stream, for every occurrence.
pub(crate) struct Incoming {
    placeholders: Vec<Placeholder>,
    held: Vec<u8>,
}

impl Incoming {
    pub(crate) fn new(placeholders: Vec<Placeholder>) -> Self {
        let mut placeholders: Vec<Placeholder> = placeholders
            .into_iter()
            .filter(|p| !p.secret.is_empty())
            .collect();
        // Longest first: a password that contains the username (`admin` in
        // `admin-s3cret`) must be masked whole, not have its `admin` part
        // masked and the rest shown.
        placeholders.sort_by_key(|p| std::cmp::Reverse(p.secret.len()));
        Self {
            placeholders,
            held: Vec::new(),
        }
    }

    /// Whether bytes are held back waiting to see if a secret follows.
    pub(crate) fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The bytes the plugin may see of `data` just read; a tail that may be
    /// the start of a secret is held back for the next read.
    pub(crate) fn read(&mut self, data: &[u8]) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend_from_slice(data);
        for placeholder in &self.placeholders {
            let mut from = 0;
            while let Some(at) = find(&bytes[from..], &placeholder.secret) {
                let at = from + at;
                bytes[at..at + placeholder.token.len()].copy_from_slice(&placeholder.token);
                from = at + placeholder.token.len();
            }
        }
        let held = pending_prefix_len(
            &bytes,
            self.placeholders.iter().map(|p| p.secret.as_slice()),
        );
        self.held = bytes.split_off(bytes.len() - held);
        bytes
    }

    /// What is held back, when no more bytes arrive (the peer went quiet
    /// or closed): it was not a whole secret.
    pub(crate) fn release(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholder(token: &str, secret: &str) -> Placeholder {
        Placeholder {
            token: token.as_bytes().to_vec(),
            secret: secret.as_bytes().to_vec(),
        }
    }

    #[test]
    fn tokens_are_as_long_as_the_secret_and_differ_from_it() {
        for secret in [
            "x",
            "hunter2",
            "pässwörd",
            "a-much-longer-secret-of-forty-bytes-long",
        ] {
            let placeholder = Placeholder::new(secret);
            assert_eq!(placeholder.token().len(), secret.len());
            assert_ne!(placeholder.token(), secret);
            assert!(
                placeholder
                    .token()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric())
            );
        }
        assert_ne!(
            Placeholder::new("secret").token(),
            Placeholder::new("secret").token()
        );
    }

    #[test]
    fn the_first_token_becomes_the_secret_also_across_writes() {
        let mut out = Outgoing::new(vec![placeholder("TOKEN1", "s3cr3t")]);
        assert_eq!(out.write(b"hello TOKEN1 world"), b"hello s3cr3t world");

        for split in 1..6 {
            let mut out = Outgoing::new(vec![placeholder("TOKEN1", "s3cr3t")]);
            let frame = b"CONNECT TOKEN1;";
            let mut sent = out.write(&frame[..8 + split]);
            assert_eq!(sent, b"CONNECT ", "the token's start is held back");
            sent.extend(out.write(&frame[8 + split..]));
            sent.extend(out.flush());
            assert_eq!(sent, b"CONNECT s3cr3t;", "split after {split} token bytes");
        }
    }

    #[test]
    fn derived_secrets_replace_every_token_in_the_text() {
        let placeholders = [placeholder("UUUU", "user"), placeholder("PPPPPP", "passwd")];
        assert_eq!(
            with_secrets("\0UUUU\0PPPPPP", &placeholders),
            b"\0user\0passwd"
        );
        assert_eq!(with_secrets("no tokens", &placeholders), b"no tokens");
    }

    #[test]
    fn only_the_first_occurrence_is_substituted() {
        let mut out = Outgoing::new(vec![placeholder("TOKEN1", "s3cr3t")]);
        assert_eq!(out.write(b"TOKEN1"), b"s3cr3t");
        assert_eq!(out.write(b" then TOKEN1 again"), b" then TOKEN1 again");
    }

    #[test]
    fn a_partial_token_is_sent_as_it_is_when_the_plugin_reads() {
        let mut out = Outgoing::new(vec![placeholder("TOKEN1", "s3cr3t")]);
        assert_eq!(out.write(b"abcTOK"), b"abc");
        assert_eq!(out.flush(), b"TOK");
        assert_eq!(
            out.write(b"EN1"),
            b"EN1",
            "a read came between: not a token"
        );
    }

    #[test]
    fn two_secrets_are_substituted_independently() {
        let mut out = Outgoing::new(vec![
            placeholder("UUUU", "user"),
            placeholder("PPPPPP", "passwd"),
        ]);
        let mut sent = out.write(b"\x00\x04UUUU\x00\x06PP");
        sent.extend(out.write(b"PPPP"));
        sent.extend(out.flush());
        assert_eq!(sent, b"\x00\x04user\x00\x06passwd");
    }

    #[test]
    fn secrets_read_back_are_masked_whole_or_split() {
        let mut input = Incoming::new(vec![placeholder("TOKEN1", "s3cr3t")]);
        assert_eq!(
            input.read(b"echo: s3cr3t, s3cr3t."),
            b"echo: TOKEN1, TOKEN1."
        );

        let mut input = Incoming::new(vec![placeholder("TOKEN1", "s3cr3t")]);
        let mut seen = input.read(b"echo: s3c");
        assert_eq!(seen, b"echo: ");
        assert!(input.is_holding());
        seen.extend(input.read(b"r3t!"));
        assert_eq!(seen, b"echo: TOKEN1!");

        let mut input = Incoming::new(vec![
            placeholder("UUUUU", "admin"),
            placeholder("PPPPPPPPPPPP", "admin-s3cr3t"),
        ]);
        assert_eq!(
            input.read(b"[admin-s3cr3t] [admin]"),
            b"[PPPPPPPPPPPP] [UUUUU]"
        );

        let mut input = Incoming::new(vec![placeholder("TOKEN1", "s3cr3t")]);
        let mut seen = input.read(b"ends in s");
        seen.extend(input.release());
        assert_eq!(seen, b"ends in s", "not a secret after all");
    }
}
