//! Our read-only snapshots: names `<name>__<TS>__<full|inc>` under `snapshots.base_dir`,
//! listing, and retention (a pure function: keep the `retain` newest and always the parent
//! of the next incremental). Names of any other shape are never touched.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::btrfs::Btrfs;
use crate::event;
use crate::kind::Kind;
use crate::ts::Ts;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapName {
    pub subvolume: String,
    pub ts: Ts,
    pub kind: Kind,
}

impl SnapName {
    pub fn file_name(&self) -> String {
        format!(
            "{}__{}__{}",
            self.subvolume,
            self.ts,
            self.kind.snap_suffix()
        )
    }

    /// Parses a snapshot file name of subvolume `subvolume`; `None` for any other shape.
    pub fn parse(subvolume: &str, file_name: &str) -> Option<SnapName> {
        let rest = file_name.strip_prefix(subvolume)?.strip_prefix("__")?;
        let (ts, kind) = rest.split_once("__")?;
        let kind = match kind {
            "full" => Kind::Full,
            "inc" => Kind::Incremental,
            _ => return None,
        };
        // Exactly the compact TS form: 16 characters, re-formatting gives it back.
        let parsed = Ts::parse(ts).ok()?;
        (ts.len() == 16 && parsed.to_string() == ts).then(|| SnapName {
            subvolume: subvolume.to_string(),
            ts: parsed,
            kind,
        })
    }

    /// Parses the last component of a snapshot path.
    pub fn from_path(subvolume: &str, path: &Path) -> Option<SnapName> {
        SnapName::parse(subvolume, path.file_name()?.to_str()?)
    }
}

/// Our snapshots of `subvolume` in `base_dir`, oldest first. A missing dir is empty.
pub fn list(base_dir: &Path, subvolume: &str) -> Result<Vec<SnapName>> {
    let entries = match std::fs::read_dir(base_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("listing snapshots in {}", base_dir.display()))
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("listing snapshots in {}", base_dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            if let Some(s) = SnapName::parse(subvolume, name) {
                out.push(s);
            }
        }
    }
    out.sort_by_key(|s| s.ts);
    Ok(out)
}

/// Which snapshots retention deletes: all but the `retain` newest, never one named in
/// `keep` (the parent of the next incremental, i.e. the last published snapshot, and a
/// pending backup's snapshot and parent).
pub fn to_prune(snaps: &[SnapName], retain: usize, keep: &[&str]) -> Vec<SnapName> {
    let mut sorted: Vec<&SnapName> = snaps.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.ts));
    sorted
        .into_iter()
        .skip(retain.max(1))
        .filter(|s| !keep.contains(&s.file_name().as_str()))
        .cloned()
        .collect()
}

/// Applies retention to `subvolume`'s snapshots; returns the deleted paths.
pub fn prune(
    btrfs: &dyn Btrfs,
    base_dir: &Path,
    subvolume: &str,
    retain: usize,
    keep: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let snaps = list(base_dir, subvolume)?;
    let keep_names: Vec<&str> = keep
        .iter()
        .filter(|k| k.parent() == Some(base_dir))
        .filter_map(|k| k.file_name())
        .filter_map(|n| n.to_str())
        .collect();
    let mut deleted = Vec::new();
    for s in to_prune(&snaps, retain, &keep_names) {
        let path = base_dir.join(s.file_name());
        btrfs
            .delete_subvolume(&path)
            .with_context(|| format!("pruning old snapshot {}", path.display()))?;
        event!(
            Info,
            "snapshot_pruned",
            subvolume = subvolume,
            path = path.display()
        );
        deleted.push(path);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ts: &str, kind: Kind) -> SnapName {
        SnapName {
            subvolume: "data".into(),
            ts: Ts::parse(ts).unwrap(),
            kind,
        }
    }

    #[test]
    fn names_round_trip() {
        let s = snap("20250101T020000Z", Kind::Full);
        assert_eq!(s.file_name(), "data__20250101T020000Z__full");
        assert_eq!(
            SnapName::parse("data", "data__20250101T020000Z__full"),
            Some(s)
        );
        let i = snap("20250108T020000Z", Kind::Incremental);
        assert_eq!(SnapName::parse("data", &i.file_name()), Some(i.clone()));
        assert_eq!(
            SnapName::from_path(
                "data",
                Path::new("/srv/snapshots/data__20250108T020000Z__inc")
            ),
            Some(i)
        );
        // Names with "__" inside the subvolume name still parse for that subvolume.
        assert!(SnapName::parse("my__vol", "my__vol__20250101T020000Z__full").is_some());
    }

    #[test]
    fn other_shapes_are_not_ours() {
        for n in [
            "data",
            "data__20250101T020000Z__incremental",
            "data__20250101T020000Z",
            "data__2025-01-01T02:00:00Z__full",
            "data__20250101T020000Z__full.tmp",
            "database__20250101T020000Z__full",
            "other__20250101T020000Z__full",
            "data__20251301T020000Z__full",
            "xdata__20250101T020000Z__full",
        ] {
            assert_eq!(SnapName::parse("data", n), None, "{n}");
        }
    }

    #[test]
    fn retention_keeps_newest_and_parent() {
        let s: Vec<SnapName> = [
            "20250101T020000Z",
            "20250102T020000Z",
            "20250103T020000Z",
            "20250104T020000Z",
        ]
        .iter()
        .map(|t| snap(t, Kind::Incremental))
        .collect();
        let names = |v: Vec<SnapName>| v.iter().map(|s| s.ts.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(to_prune(&s, 2, &[])),
            ["20250102T020000Z", "20250101T020000Z"]
        );
        // The parent (published) snapshot is old but kept.
        let keep = s[0].file_name();
        assert_eq!(names(to_prune(&s, 2, &[&keep])), ["20250102T020000Z"]);
        assert_eq!(names(to_prune(&s, 1, &[&s[3].file_name()])).len(), 3);
        // A pending backup's snapshot and its parent are kept too.
        let (a, b) = (s[0].file_name(), s[1].file_name());
        assert!(to_prune(&s, 2, &[&a, &b]).is_empty());
        assert!(to_prune(&s, 4, &[]).is_empty());
        assert!(to_prune(&s, 10, &[]).is_empty());
        // retain 0 is treated as 1 (the config forbids it anyway).
        assert_eq!(to_prune(&s, 0, &[]).len(), 3);
    }

    #[test]
    fn list_filters_and_sorts() {
        let d = std::env::temp_dir().join(format!("b2s3-snaps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for n in [
            "data__20250103T020000Z__inc",
            "data__20250101T020000Z__full",
            "data-manual-copy",
            "other__20250101T020000Z__full",
        ] {
            std::fs::create_dir_all(d.join(n)).unwrap();
        }
        let l = list(&d, "data").unwrap();
        assert_eq!(
            l.iter().map(|s| s.file_name()).collect::<Vec<_>>(),
            [
                "data__20250101T020000Z__full",
                "data__20250103T020000Z__inc"
            ]
        );
        assert!(list(&d.join("missing"), "data").unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
