//! The local state file of the contract (DESIGN.md, "Formats") (`global.state_path`): which snapshot and manifest
//! each subvolume's next incremental builds on. Read strictly (a corrupt file is an error,
//! never a silent reset that would trigger a full backup of everything) and written
//! atomically. Fields this version does not know are kept on rewrite.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::ts::Ts;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default, deserialize_with = "null_as_default")]
    pub subvolumes: BTreeMap<String, SubvolState>,
    #[serde(default)]
    pub last_run_at: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubvolState {
    #[serde(default)]
    pub last_snapshot: Option<String>,
    #[serde(default)]
    pub last_manifest: Option<String>,
    #[serde(default)]
    pub last_full_at: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl SubvolState {
    /// `last_full_at` parsed; an unparsable value counts as absent (a new full is due).
    pub fn last_full(&self) -> Option<Ts> {
        self.last_full_at.as_deref().and_then(|s| Ts::parse(s).ok())
    }
}

impl State {
    /// Reads the state; a missing file is the empty state.
    pub fn load(path: &Path) -> Result<State> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading state file {}", path.display()))
            }
        };
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "state file {} is corrupt; fix or restore it from a copy (deleting it makes every subvolume's next backup a full one)",
                path.display()
            )
        })
    }

    /// Replaces the state file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).context("serialising state")?;
        bytes.push(b'\n');
        crate::atomic::write(path, &bytes)
            .with_context(|| format!("writing state file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("b2s3-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_is_empty() {
        let d = dir("m");
        assert_eq!(State::load(&d.join("none.json")).unwrap(), State::default());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let d = dir("r");
        let p = d.join("s/state.json");
        let mut s = State::default();
        s.subvolumes.insert(
            "data".into(),
            SubvolState {
                last_snapshot: Some("/srv/snapshots/data__20250101T020000Z__full".into()),
                last_manifest: Some("p/subvol/data/full/manifest-20250101T020000Z.json".into()),
                last_full_at: Some("20250101T020000Z".into()),
                ..Default::default()
            },
        );
        s.last_run_at = Some("20250101T020000Z".into());
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), s);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            v["subvolumes"]["data"]["last_full_at"],
            serde_json::json!("20250101T020000Z")
        );
        s.last_run_at = Some("20250102T020000Z".into());
        s.save(&p).unwrap();
        assert_eq!(
            State::load(&p).unwrap().last_run_at.as_deref(),
            Some("20250102T020000Z")
        );
        assert_eq!(std::fs::read_dir(d.join("s")).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn old_tool_nulls_and_unknown_fields() {
        let d = dir("o");
        let p = d.join("state.json");
        std::fs::write(
            &p,
            r#"{"subvolumes": {"a": {"last_snapshot": null, "last_manifest": null,
                 "last_full_at": "2025-01-01T02:00:00Z", "note": 1},
                 "b": {}}, "last_run_at": null, "version": 7}"#,
        )
        .unwrap();
        let s = State::load(&p).unwrap();
        assert_eq!(s.subvolumes["a"].last_snapshot, None);
        assert_eq!(
            s.subvolumes["a"].last_full(),
            Some(Ts::parse("20250101T020000Z").unwrap())
        );
        assert_eq!(s.subvolumes["b"], SubvolState::default());
        s.save(&p).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["version"], serde_json::json!(7));
        assert_eq!(v["subvolumes"]["a"]["note"], serde_json::json!(1));
        std::fs::write(&p, r#"{"subvolumes": null}"#).unwrap();
        assert!(State::load(&p).unwrap().subvolumes.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_is_an_error_naming_the_file() {
        let d = dir("c");
        let p = d.join("state.json");
        for bad in ["{\"subvolumes\": {\"a\": ", "[]", "", "{\"subvolumes\": 3}"] {
            std::fs::write(&p, bad).unwrap();
            let e = State::load(&p).unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.contains(&p.display().to_string()) && msg.contains("corrupt"),
                "{msg}"
            );
        }
        // Unreadable (a directory) is an error too, not an empty state.
        let e = State::load(&d).unwrap_err();
        assert!(format!("{e:#}").contains("reading state file"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_last_full_counts_as_absent() {
        let s = SubvolState {
            last_full_at: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(s.last_full(), None);
    }
}
