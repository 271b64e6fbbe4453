//! The outcome of the last `backup` run, for `status`: `<state file>.last-run.json` beside
//! the state (not inside the contract's state JSON), written atomically at the end of every
//! backup run that got past the lock (`--dry-run` writes nothing). It holds the run's
//! times, exit code and final line (already redacted and made inert); read leniently:
//! a missing or unreadable file is "no record".

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub started_at: String,
    pub finished_at: String,
    pub exit_code: u8,
    /// `ok`, `failed`, or `waiting` (archive restores pending; not a backup outcome).
    pub result: String,
    /// The run's last line: the summary, or the error line.
    pub line: String,
}

/// Lines longer than this are cut: the file stays small whatever an error says.
const MAX_LINE: usize = 4096;

pub fn path_for(state_path: &Path) -> PathBuf {
    let mut name = state_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".last-run.json");
    state_path.with_file_name(name)
}

impl LastRun {
    pub fn new(started_at: String, finished_at: String, exit_code: u8, line: &str) -> LastRun {
        let result = match exit_code {
            0 => "ok",
            3 => "waiting",
            _ => "failed",
        };
        let mut line = crate::term::inert(&crate::logging::redact(line));
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" ...");
        }
        LastRun {
            started_at,
            finished_at,
            exit_code,
            result: result.into(),
            line,
        }
    }

    pub fn save(&self, state_path: &Path) -> Result<()> {
        let p = path_for(state_path);
        let body = serde_json::to_vec_pretty(self).context("encoding the last run")?;
        crate::atomic::write(&p, &body)
            .with_context(|| format!("writing the last run's record {}", p.display()))
    }

    /// The record, if there is a readable one.
    pub fn load(state_path: &Path) -> Option<LastRun> {
        let p = path_for(state_path);
        let f = std::fs::File::open(&p).ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 * 1024), &mut bytes).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_the_line_is_inert_and_bounded() {
        let d = crate::testing::Scratch::new("lastrun");
        let state = d.0.join("state.json");
        assert_eq!(LastRun::load(&state), None);
        let long = format!("bad \x1b]0;x\x07 {}", "y".repeat(10_000));
        let r = LastRun::new("a".into(), "b".into(), 1, &long);
        assert_eq!(r.result, "failed");
        assert!(r.line.starts_with(r"bad \x1b]0;x\x07 yyy") && r.line.len() < MAX_LINE + 8);
        r.save(&state).unwrap();
        assert_eq!(path_for(&state), d.0.join("state.json.last-run.json"));
        assert_eq!(LastRun::load(&state), Some(r));
        std::fs::write(path_for(&state), b"not json").unwrap();
        assert_eq!(LastRun::load(&state), None);
    }
}
