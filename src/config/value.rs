//! The value types of config keys, each read from the TOML value serde hands it and
//! checked as far as it can be alone: its type, its range, its spelling. A refusal is the
//! tail of the message, after the key (` = 0: must be greater than 0`); `file::read`
//! puts the key in front. What needs other keys, `HOME` or the environment is
//! `Config::parse`'s.

use serde::Deserialize;
use toml::Value;

use super::limits;

/// `value` when it is a string; else the message every string key gives.
pub(super) fn text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        v => Err(format!(" = {v}: must be a string, not a {}", v.type_str())),
    }
}

/// A string that must be one of `names` (what `parse` accepts), for enum settings.
pub(super) fn one_of<T>(
    value: Value,
    names: &[&str],
    parse: fn(&str) -> Option<T>,
) -> Result<T, String> {
    let s = text(value)?;
    parse(&s).ok_or_else(|| format!(" = {s:?}: must be one of {}", names.join(", ")))
}

/// A string key; what the string must be is checked where it is used.
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Text(pub String);

impl TryFrom<Value> for Text {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        text(v).map(Text)
    }
}

/// `true` or `false`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Flag(pub bool);

impl TryFrom<Value> for Flag {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        match v {
            Value::Boolean(b) => Ok(Flag(b)),
            v => Err(format!(
                " = {v}: must be true or false, not a {}",
                v.type_str()
            )),
        }
    }
}

/// A whole number in `1..=MAX` (a count, days, seconds).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Count<const MAX: u64>(pub u64);

impl<const MAX: u64> TryFrom<Value> for Count<MAX> {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        whole(v, MAX, false).map(Count)
    }
}

/// Bytes in `1..=MAX`: a whole number, or a string with a unit (`"16MiB"`, see size.rs).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Size<const MAX: u64>(pub u64);

impl<const MAX: u64> TryFrom<Value> for Size<MAX> {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        whole(v, MAX, true).map(Size)
    }
}

fn whole(v: Value, max: u64, units: bool) -> Result<u64, String> {
    let n = match v {
        Value::Integer(i) if i > 0 => i as u64,
        Value::Integer(i) => return Err(format!(" = {i}: must be greater than 0")),
        Value::String(t) if units => match crate::size::parse(&t) {
            Ok(0) => return Err(format!(" = {t:?}: must be greater than 0")),
            Ok(n) => n,
            Err(why) => return Err(format!(" = {t:?}: {why}; write {}", crate::size::FORMS)),
        },
        v => {
            return Err(format!(
                " = {v}: must be a whole number greater than 0, not a {}",
                v.type_str()
            ))
        }
    };
    if n > max {
        return Err(format!(" = {n}: must be at most {max}"));
    }
    Ok(n)
}

/// `s3.outage_patience_seconds`: whole seconds from 0 (no waiting: the bounded retries
/// only) to [`limits::MAX_OUTAGE_PATIENCE_SECONDS`].
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct OutagePatience(pub u64);

impl TryFrom<Value> for OutagePatience {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let max = limits::MAX_OUTAGE_PATIENCE_SECONDS;
        match v {
            Value::Integer(i) if (0..=max as i64).contains(&i) => Ok(OutagePatience(i as u64)),
            v => Err(format!(
                " = {v}: must be a whole number of seconds from 0 \
                 (give up after the bounded retries) to {max} (7 days); the default is {} (4 hours)",
                limits::DEFAULT_OUTAGE_PATIENCE_SECONDS
            )),
        }
    }
}

/// `s3.max_upload_rate` / `s3.max_download_rate`: bytes per second, a whole number or a
/// size with a unit (`"20MiB"`, `"20MiB/s"`); `"off"` or 0 is no cap.
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Rate(pub crate::ratelimit::Cap);

impl TryFrom<Value> for Rate {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        use crate::ratelimit::{parse_rate, Cap};
        let cap = |r: Result<Option<_>, String>| match r {
            Ok(Some(r)) => Ok(Cap::Fixed(r)),
            Ok(None) => Ok(Cap::Off),
            Err(why) => Err(why),
        };
        match v {
            Value::Integer(0) => Ok(Rate(Cap::Off)),
            Value::Integer(i) if i > 0 => cap(parse_rate(&i.to_string()))
                .map(Rate)
                .map_err(|why| format!(" = {i}: {why}")),
            Value::String(t) => cap(parse_rate(&t))
                .map(Rate)
                .map_err(|why| format!(" = {t:?}: {why}")),
            v => Err(format!(
                " = {v}: must be bytes per second, as a whole number or a string \
                 such as \"20MiB\" (\"off\" or 0: no cap)"
            )),
        }
    }
}

/// `s3.upload_rate_schedule` / `s3.download_rate_schedule`: an rclone-style timetable
/// (`"08:00,20MiB 23:00,off"`, local time).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Schedule(pub crate::ratelimit::Cap);

impl TryFrom<Value> for Schedule {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        use crate::ratelimit::{Cap, Timetable};
        match v {
            Value::String(t) => match Timetable::parse(&t) {
                Ok(table) => Ok(Schedule(Cap::Timetable(table))),
                Err(why) => Err(format!(" = {t:?}: {why}")),
            },
            v => Err(format!(
                " = {v}: must be a string such as \"08:00,20MiB 23:00,off\" \
                 (local times of day and the rate from each)"
            )),
        }
    }
}

/// A 24-hour `HH:MM`, as `(hour, minute)`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct RunAt(pub (u8, u8));

impl TryFrom<Value> for RunAt {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let s = text(v)?;
        parse_hhmm(&s).map(RunAt).ok_or_else(|| {
            format!(" = {s:?}: must be a 24-hour time HH:MM between 00:00 and 23:59")
        })
    }
}

pub(super) fn parse_hhmm(v: &str) -> Option<(u8, u8)> {
    let (h, m) = v.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

/// `subvolumes.paths`: a non-empty list of strings (expanded and named by `Config::parse`).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct SubvolumePaths(pub Vec<String>);

impl TryFrom<Value> for SubvolumePaths {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let Value::Array(items) = v else {
            return Err(format!(" = {v}: must be a list of absolute paths"));
        };
        if items.is_empty() {
            return Err(" = []: list at least one subvolume path".into());
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) => out.push(s),
                item => return Err(format!(": entry {item} must be a string path")),
            }
        }
        Ok(SubvolumePaths(out))
    }
}

/// A list of path strings (`encryption.identity_files`; expanded by `Config::parse`).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct PathList(pub Vec<String>);

impl TryFrom<Value> for PathList {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let Value::Array(items) = v else {
            return Err(format!(
                " = a {}: must be a list of absolute paths",
                v.type_str()
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) => out.push(s),
                _ => return Err(format!("[{i}]: must be a string path")),
            }
        }
        Ok(PathList(out))
    }
}

/// `encryption.recipients`: a non-empty list of `age1…` recipients. Its messages never
/// quote a value (a pasted secret key must not reach a log).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct Recipients(pub Vec<crate::age::Recipient>);

impl TryFrom<Value> for Recipients {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let Value::Array(items) = v else {
            return Err(format!(
                " = a {}: must be a list of age recipients (\"age1…\")",
                v.type_str()
            ));
        };
        let mut values = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) => values.push(s),
                item => {
                    return Err(format!(
                        "[{i}]: must be a string \"age1…\", not a {}",
                        item.type_str()
                    ))
                }
            }
        }
        if values.is_empty() {
            return Err(" = []: list at least one age recipient (\"age1…\", from \
                        age-keygen -y), or remove the key"
                .into());
        }
        crate::age::parse_recipient_list(&values)
            .map(Recipients)
            .map_err(|e| e.to_string())
    }
}
