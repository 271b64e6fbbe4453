//! What is safe to print: text that came from outside (bucket keys, storage classes,
//! manifest and pointer strings, server replies, error chains quoting them) made inert
//! before it reaches a terminal or a log. Every character a terminal or a text renderer
//! acts on instead of showing — C0 controls (newline and tab included: one message stays
//! one line), DEL, C1 controls (U+0080–U+009F, U+009B is a one-character CSI) and the
//! bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E, U+200F,
//! U+202A–U+202E, U+2066–U+2069) — is written as a visible escape: `\x1b` for ASCII
//! controls, `\u{9b}` / `\u{202e}` for the others. Everything else, backslashes included,
//! is left as it is, so escaping is idempotent (a line escaped twice reads the same).
//! `--json` output does not need this: serde_json escapes controls itself.

use std::fmt::{self, Display, Write as _};

/// True for a character that must not reach a terminal raw.
pub fn is_active(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// Displays the wrapped text with every active character escaped (see the module doc).
pub struct Inert<'a>(pub &'a str);

impl Display for Inert<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(is_active) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            if c.is_ascii() {
                write!(f, "\\x{:02x}", c as u32)?;
            } else {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `text` with every active character escaped.
pub fn inert(text: &str) -> String {
    if !text.contains(is_active) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let _ = write!(out, "{}", Inert(text));
    out
}

/// `println!` for human-readable output that may quote outside text: the whole formatted
/// line is made inert (see [`Inert`]) before it goes to stdout.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        println!("{}", $crate::term::Inert(&format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        for s in [
            "",
            "backups/subvol/data/full/manifest-20250101T020000Z.json",
            "größe 1.5 GiB — ok ✓ 日本",
            r"C:\path\with\backslashes and \x1b written out",
        ] {
            assert_eq!(inert(s), s);
        }
    }

    #[test]
    fn terminal_controls_become_visible_escapes() {
        assert_eq!(inert("a\x1b]0;pwned\x07b"), r"a\x1b]0;pwned\x07b");
        assert_eq!(inert("\x1b[2J\x1b[H"), r"\x1b[2J\x1b[H");
        assert_eq!(inert("x\u{9b}2Jy"), r"x\u{9b}2Jy");
        assert_eq!(inert("one\ntwo\r\tthree\0"), r"one\x0atwo\x0d\x09three\x00");
        assert_eq!(inert("del\x7f"), r"del\x7f");
        assert_eq!(
            inert("\u{80}\u{85}\u{9f}\u{a0}"),
            "\\u{80}\\u{85}\\u{9f}\u{a0}"
        );
    }

    #[test]
    fn bidi_controls_become_visible_escapes() {
        assert_eq!(
            inert("key\u{202e}txt.exe"),
            r"key\u{202e}txt.exe",
            "right-to-left override"
        );
        for c in ('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200e}', '\u{200f}', '\u{61c}'])
        {
            let s = format!("a{c}b");
            assert_eq!(inert(&s), format!("a\\u{{{:x}}}b", c as u32));
        }
        // Neighbours that are not controls stay.
        for c in ['\u{2029}', '\u{2065}', '\u{206a}', '\u{200d}', '\u{202f}'] {
            let s = format!("a{c}b");
            assert_eq!(inert(&s), s);
        }
    }

    #[test]
    fn output_holds_no_active_character_and_escaping_is_idempotent() {
        let mut all = String::new();
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            all.push(c);
        }
        let once = inert(&all);
        assert!(!once.contains(is_active), "{once:?}");
        assert!(!once.bytes().any(|b| b == 0x1b || b == 0x07));
        assert!(!once.contains('\u{9b}'));
        assert_eq!(inert(&once), once);
        assert_eq!(format!("{}", Inert(&all)), once);
    }
}
