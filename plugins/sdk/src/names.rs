//! Backend identifiers derived from platform ids, and quoting for the SQL
//! text that cannot use bound parameters (DDL).
//!
//! Platform ids may contain any character, so they never appear in a
//! statement, a URL or a command: a plugin derives a name from the id with
//! [`derive_name`], then quotes it where the syntax asks for it.

use sha2::{Digest, Sha256};

use crate::sql::Dialect;

/// Hex digits of the id's SHA-256 kept in a derived name: 64 bits, so two of
/// a million ids collide with a chance of about 3 in 100 million.
const HASH_DIGITS: usize = 16;

/// A name for the backend resource of a platform id: `prefix` followed by
/// the first 16 hex digits of the id's SHA-256, at most `max_len` bytes.
///
/// The result holds only `[a-z0-9_]`, so it is a valid unquoted identifier
/// (if the prefix starts with a letter) for MySQL/MariaDB, PostgreSQL,
/// RabbitMQ and Redis alike, and the same id always yields the same name, so
/// a retry or a delete finds what an earlier call created. Characters of
/// the prefix outside `[a-z0-9_]` become `_`; when the name does not fit,
/// the prefix is shortened, never the hash.
pub fn derive_name(prefix: &str, id: &str, max_len: usize) -> String {
    let hash = sha256_hex(id);
    let hash_len = HASH_DIGITS.min(max_len);
    let prefix_len = max_len - hash_len;
    let mut name: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .take(prefix_len)
        .collect();
    name.push_str(&hash[..hash_len]);
    name
}

/// The SHA-256 of `text` in lower-case hex, e.g. for Redis's `#<hash>`
/// password rule, which keeps the password itself out of the command.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `name` as a MySQL/MariaDB identifier: in backticks, inner backticks doubled.
pub fn quote_mysql_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `name` as a PostgreSQL identifier: in double quotes, inner quotes doubled.
pub fn quote_pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a string literal of `dialect`, for statements that cannot bind
/// parameters (e.g. the password of `CREATE USER`).
///
/// MySQL treats backslashes in literals as escapes (unless the server runs
/// with `NO_BACKSLASH_ESCAPES`, which this does not support), so they are
/// doubled. PostgreSQL reads backslashes literally only when
/// `standard_conforming_strings` is on, so a text with a backslash becomes
/// an escape string (`E'...'`), which reads the same under both settings.
pub fn quote_sql_string(dialect: Dialect, text: &str) -> String {
    match dialect {
        Dialect::Mysql => {
            let mut quoted = String::with_capacity(text.len() + 2);
            quoted.push('\'');
            for c in text.chars() {
                match c {
                    '\'' => quoted.push_str("''"),
                    '\\' => quoted.push_str("\\\\"),
                    '\0' => quoted.push_str("\\0"),
                    c => quoted.push(c),
                }
            }
            quoted.push('\'');
            quoted
        }
        Dialect::Postgres if text.contains('\\') => {
            format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
        }
        Dialect::Postgres => format!("'{}'", text.replace('\'', "''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_deterministic_and_safe() {
        let id = "Robert'); DROP TABLE students;-- \u{1F600}/..";
        let name = derive_name("db_", id, 64);
        assert_eq!(name, derive_name("db_", id, 64));
        assert_eq!(name.len(), 3 + 16);
        assert!(name.starts_with("db_"));
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        );
        assert_ne!(name, derive_name("db_", "another id", 64));
    }

    #[test]
    fn derived_name_is_the_sha256_prefix() {
        // sha256("") = e3b0c44298fc1c149afbf4c8996fb924...
        assert_eq!(derive_name("u_", "", 32), "u_e3b0c44298fc1c14");
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_long_prefix_is_shortened_not_the_hash() {
        let name = derive_name("a_very_long_prefix_", "id", 20);
        assert_eq!(name.len(), 20);
        assert!(name.starts_with("a_v"));
        assert_eq!(&name[4..], &derive_name("", "id", 16));
    }

    #[test]
    fn unsafe_prefix_characters_become_underscores() {
        assert!(derive_name("My-App.", "id", 64).starts_with("my_app_"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_mysql_ident("a`b"), "`a``b`");
        assert_eq!(quote_pg_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn mysql_literals_escape_quotes_backslashes_and_nul() {
        assert_eq!(quote_sql_string(Dialect::Mysql, "it's"), "'it''s'");
        assert_eq!(
            quote_sql_string(Dialect::Mysql, "a\\' OR 1=1"),
            "'a\\\\'' OR 1=1'"
        );
        assert_eq!(quote_sql_string(Dialect::Mysql, "a\0b"), "'a\\0b'");
    }

    #[test]
    fn postgres_literals_double_quotes_and_escape_backslashes() {
        assert_eq!(quote_sql_string(Dialect::Postgres, "it's"), "'it''s'");
        assert_eq!(quote_sql_string(Dialect::Postgres, "a\\'b"), "E'a\\\\''b'");
    }
}
