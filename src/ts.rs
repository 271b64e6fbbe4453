//! UTC timestamps in the contract's `YYYYMMDDTHHMMSSZ` form (`TS`), with the ISO form
//! `2025-01-01T02:00:00Z` accepted when reading files written by the older tool.

use std::fmt;

use anyhow::{bail, Result};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// The contract's `TS` (also SigV4's `x-amz-date`).
const COMPACT: &[time::format_description::FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");
/// ISO 8601, for log lines and the older tool's files.
const ISO: &[time::format_description::FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// A whole-second UTC instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(i64);

impl Ts {
    /// The current time, to the second.
    pub fn now() -> Ts {
        Ts(OffsetDateTime::now_utc().unix_timestamp())
    }

    /// The time `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: i64) -> Ts {
        Ts(secs)
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// Parses `20250101T020000Z` or `2025-01-01T02:00:00Z`.
    pub fn parse(s: &str) -> Result<Ts> {
        let parsed = PrimitiveDateTime::parse(s, COMPACT)
            .or_else(|_| PrimitiveDateTime::parse(s, ISO))
            .or_else(|_| {
                // ISO with fractional seconds, e.g. 2025-01-01T02:00:00.123456Z
                let frac = format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]Z"
                );
                PrimitiveDateTime::parse(s, frac)
            });
        match parsed {
            Ok(p) => Ok(Ts(p.assume_utc().unix_timestamp())),
            Err(_) => bail!("invalid timestamp {s:?}: expected YYYYMMDDTHHMMSSZ"),
        }
    }

    /// This time plus `secs` seconds (negative: earlier).
    pub fn add_secs(self, secs: i64) -> Ts {
        Ts(self.0 + secs)
    }

    fn datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.0).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// `2025-01-01T02:00:00Z`, for log lines.
    pub fn iso(self) -> String {
        self.datetime().format(ISO).unwrap_or_default()
    }
}

impl fmt::Display for Ts {
    /// The contract's `YYYYMMDDTHHMMSSZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.datetime().format(COMPACT).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compact() {
        let t = Ts::parse("20250101T020000Z").unwrap();
        assert_eq!(t.to_string(), "20250101T020000Z");
        assert_eq!(t.iso(), "2025-01-01T02:00:00Z");
        assert_eq!(t.unix(), 1735696800);
    }

    #[test]
    fn accepts_iso() {
        assert_eq!(
            Ts::parse("2025-01-01T02:00:00Z").unwrap(),
            Ts::parse("20250101T020000Z").unwrap()
        );
        assert_eq!(
            Ts::parse("2025-01-01T02:00:00.5Z").unwrap(),
            Ts::parse("20250101T020000Z").unwrap()
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "2025", "20250101T020000", "20251301T020000Z", "x"] {
            assert!(Ts::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ordering_and_add() {
        let t = Ts::from_unix(100);
        assert!(t.add_secs(1) > t);
        assert_eq!(t.add_secs(86400).unix(), 86500);
    }
}
