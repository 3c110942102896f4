//! Text that came from outside the broker (a plugin's log line or panic
//! message, an instance id chosen by the platform, a name from a catalog)
//! made safe to write to a terminal or a log line.
//!
//! A leaf module. The log formatter escapes ANSI escape sequences already,
//! but not line breaks or carriage returns: a plugin could forge whole log
//! lines ("\n2026-01-01T00:00:00Z INFO ...") or overwrite the one shown. Every
//! control character is therefore written as its Rust escape (`\n`, `\r`,
//! `\u{1b}` ...), which keeps it visible and unambiguous.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) escaped; borrowed
/// when there is none, which is nearly always.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if character.is_control() {
            out.extend(character.escape_debug());
        } else {
            out.push(character);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let cases = [
            ("plain id-123 é ü 日本", "plain id-123 é ü 日本"),
            ("line\nforged", "line\\nforged"),
            ("back\roverwrite", "back\\roverwrite"),
            ("\u{1b}[2Jclear", "\\u{1b}[2Jclear"),
            ("bell\u{7}", "bell\\u{7}"),
            ("del\u{7f}", "del\\u{7f}"),
            ("c1\u{9b}31m", "c1\\u{9b}31m"),
            ("tab\there", "tab\\there"),
        ];
        for (input, expected) in cases {
            assert_eq!(printable(input), expected, "{input:?}");
        }
        assert!(matches!(printable("nothing to do"), Cow::Borrowed(_)));
    }
}
