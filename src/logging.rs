//! Logging to stderr: one `TIMESTAMP LEVEL event=name key=value ...` line per event, UTC.
//! The level comes from `global.log_level`, then `--log-level`, then `RUST_LOG` (strongest).
//! Never pass credentials to [`event!`]: nothing here can tell a secret from a value.

use std::fmt::{Display, Write as _};
use std::io::Write;

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
pub fn push_kv(line: &mut String, key: &str, value: &dyn Display) {
    let v = value.to_string();
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
    b.format(|f, record| {
        let level = match record.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARNING",
            log::Level::Info => "INFO",
            log::Level::Debug => "DEBUG",
            log::Level::Trace => "TRACE",
        };
        writeln!(f, "{} {level} {}", Ts::now().iso(), record.args())
    });
    let _ = b.try_init();
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
}
