//! Logging to stderr: one `TIMESTAMP LEVEL event=name key=value ...` line per event, UTC.
//! The level comes from `global.log_level`, then `--log-level`, then `RUST_LOG` (strongest).
//! Never pass credentials to [`event!`]. As a second line of defence every line written
//! here, the HTTP library's own debug output included, and the final error line have the
//! credentials in use ([`add_secret`]) replaced by `***` ([`redact`]).

use std::fmt::{Display, Write as _};
use std::io::Write;
use std::sync::RwLock;

use crate::ts::Ts;

/// Logs `event=NAME k=v ...` at `LEVEL`: `event!(Info, "backup_start", subvolume = name)`.
#[macro_export]
macro_rules! event {
    ($lvl:ident, $name:expr $(, $k:ident = $v:expr)* $(,)?) => {
        if log::log_enabled!(log::Level::$lvl) {
            #[allow(unused_mut)]
            let mut line = format!("event={}", $name);
            $( $crate::logging::push_kv(&mut line, stringify!($k), &$v); )*
            log::log!(log::Level::$lvl, "{}", line);
        }
    };
}

/// Appends ` key=value`, quoting a value that is empty or holds spaces, quotes or `=`.
/// Terminal controls in the value (a key or a reason from the bucket) are escaped
/// (`crate::term`): they never reach stderr raw.
pub fn push_kv(line: &mut String, key: &str, value: &dyn Display) {
    let v = crate::term::inert(&value.to_string());
    let needs_quotes = v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '"' || c == '=');
    if needs_quotes {
        let _ = write!(
            line,
            " {key}=\"{}\"",
            v.replace('\\', "\\\\").replace('"', "\\\"")
        );
    } else {
        let _ = write!(line, " {key}={v}");
    }
}

/// The secrets in use (access key id, secret key, session token): never printed.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Secrets shorter than this are not masked: masking a short test key such as `bench`
/// mangles every path and word that contains it (seen in the benchmark's logs); real
/// credentials are longer (access key ids 16+ characters, secrets 40).
const MIN_SECRET_LEN: usize = 8;

/// Registers a credential value that must never appear in any output.
pub fn add_secret(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut g = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !g.iter().any(|s| s == secret) {
        g.push(secret.to_string());
        // Longest first, so a secret that contains another is masked whole.
        g.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> String {
    let g = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in g.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Installs the logger once; later calls (tests) are ignored.
pub fn init(level: log::LevelFilter) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        if !spec.is_empty() {
            b.parse_filters(&spec);
        }
    }
    b.target(env_logger::Target::Stderr);
    let journal = stderr_is_journal();
    b.format(move |f, record| {
        let level = match record.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARNING",
            log::Level::Info => "INFO",
            log::Level::Debug => "DEBUG",
            log::Level::Trace => "TRACE",
        };
        // Also the lines of other crates (the HTTP library's debug output).
        let line = crate::term::inert(&redact(&record.args().to_string()));
        let prio = if journal {
            priority(record.level())
        } else {
            ""
        };
        writeln!(f, "{prio}{} {level} {line}", Ts::now().iso())
    });
    let _ = b.try_init();
}

/// The syslog priority prefix journald reads at the start of a line (`SyslogLevelPrefix=`,
/// on by default), so `journalctl -p err` finds failures.
pub fn priority(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// Whether stderr is the journal stream systemd gave us: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and it counts only when it is still stderr (a child
/// of the unit with stderr redirected inherits the variable).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&v, st.st_dev, st.st_ino)
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` (decimal) against stderr's device and inode.
fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let mut s = String::from("event=x");
        push_kv(&mut s, "a", &1);
        push_kv(&mut s, "b", &"two words");
        push_kv(&mut s, "c", &"");
        push_kv(&mut s, "d", &"say \"hi\"");
        assert_eq!(s, r#"event=x a=1 b="two words" c="" d="say \"hi\"""#);
    }

    #[test]
    fn values_with_terminal_controls_are_escaped() {
        let mut s = String::from("event=x");
        push_kv(&mut s, "key", &"p/\x1b]0;pwned\x07/k\u{9b}2J\u{202e}");
        push_kv(&mut s, "why", &"two\nlines");
        assert_eq!(
            s,
            r"event=x key=p/\x1b]0;pwned\x07/k\u{9b}2J\u{202e} why=two\x0alines"
        );
    }

    #[test]
    fn journal_stream_is_believed_only_for_stderr_itself() {
        assert!(journal_stream_matches("2049:123456", 2049, 123456));
        for v in [
            "2049:123457",
            "2049",
            "",
            "x:y",
            "2049:123456:1",
            "-1:123456",
        ] {
            assert!(!journal_stream_matches(v, 2049, 123456), "{v}");
        }
        assert_eq!(priority(log::Level::Error), "<3>");
        assert_eq!(priority(log::Level::Warn), "<4>");
    }

    #[test]
    fn secrets_are_masked() {
        add_secret("bench");
        add_secret("AKIDSECRETEXAMPLE");
        add_secret("SECRETKEY");
        assert_eq!(
            redact("x-amz-security-token: /var/tmp/bench AKIDSECRETEXAMPLE SECRETKEY"),
            "x-amz-security-token: /var/tmp/bench *** ***"
        );
    }
}
