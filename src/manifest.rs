//! Wire types of what we publish in S3 (manifest and `current.json`) and the key layout
//! of CONTRACT.md. Serde only, no I/O. Fields this version does not know are kept, and
//! new optional fields (`stream_sha256`) are skipped when absent so old readers are safe.

use serde::{Deserialize, Serialize};

use crate::ts::Ts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub parent_uuid: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Info {
    pub storage_class: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub subvolume: String,
    pub kind: Kind,
    pub created_at: String,
    pub snapshot: SnapshotRef,
    #[serde(default)]
    pub parent_manifest: Option<String>,
    pub chunks: Vec<ChunkEntry>,
    pub total_bytes: u64,
    pub chunk_size: u64,
    pub s3: S3Info,
    /// Extension: SHA-256 of the whole send stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sha256: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub manifest_key: String,
    pub kind: Kind,
    pub created_at: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

impl Pointer {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// The S3 key layout: `P subvol/<name>/KIND/chunk-TS-<i>.bin`, `.../manifest-TS.json`,
/// `P subvol/<name>/current.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `P`: the prefix without trailing `/`, plus `/` when not empty.
    pub prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        let p = prefix.trim_end_matches('/');
        Layout {
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    /// `P subvol/<name>/`: everything of one subvolume.
    pub fn subvolume_prefix(&self, name: &str) -> String {
        format!("{}subvol/{name}/", self.prefix)
    }

    pub fn chunk_key(&self, name: &str, kind: Kind, ts: Ts, index: u64) -> String {
        format!(
            "{}{}/chunk-{ts}-{index}.bin",
            self.subvolume_prefix(name),
            kind.as_str()
        )
    }

    pub fn manifest_key(&self, name: &str, kind: Kind, ts: Ts) -> String {
        format!(
            "{}{}/manifest-{ts}.json",
            self.subvolume_prefix(name),
            kind.as_str()
        )
    }

    pub fn pointer_key(&self, name: &str) -> String {
        format!("{}current.json", self.subvolume_prefix(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_contract() {
        let ts = Ts::parse("20250101T020000Z").unwrap();
        for (prefix, p) in [
            ("backups/", "backups/"),
            ("backups", "backups/"),
            ("", ""),
            ("a/b//", "a/b/"),
        ] {
            let l = Layout::new(prefix);
            assert_eq!(
                l.chunk_key("data", Kind::Full, ts, 0),
                format!("{p}subvol/data/full/chunk-20250101T020000Z-0.bin")
            );
            assert_eq!(
                l.chunk_key("data", Kind::Incremental, ts, 10),
                format!("{p}subvol/data/incremental/chunk-20250101T020000Z-10.bin")
            );
            assert_eq!(
                l.manifest_key("data", Kind::Full, ts),
                format!("{p}subvol/data/full/manifest-20250101T020000Z.json")
            );
            assert_eq!(
                l.pointer_key("data"),
                format!("{p}subvol/data/current.json")
            );
        }
    }

    #[test]
    fn reads_python_manifest_and_keeps_unknown_fields() {
        let text = r#"{"version": 1, "subvolume": "data", "kind": "incremental",
            "created_at": "20250108T020000Z",
            "snapshot": {"name": "data__20250108T020000Z__inc", "path": "/srv/snapshots/data__20250108T020000Z__inc", "uuid": null, "parent_uuid": null},
            "parent_manifest": "p/subvol/data/full/manifest-20250101T020000Z.json",
            "chunks": [{"key": "p/subvol/data/incremental/chunk-20250108T020000Z-0.bin", "size": 3, "sha256": "abc", "etag": null}],
            "total_bytes": 3, "chunk_size": 214748364800, "s3": {"storage_class": "DEEP_ARCHIVE"},
            "tool": "python"}"#;
        let m: Manifest = serde_json::from_str(text).unwrap();
        assert_eq!(m.kind, Kind::Incremental);
        assert_eq!(m.stream_sha256, None);
        assert_eq!(m.chunks[0].etag, None);
        let back: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(back["tool"], "python");
        assert!(back.get("stream_sha256").is_none());
        assert_eq!(
            back["parent_manifest"],
            "p/subvol/data/full/manifest-20250101T020000Z.json"
        );
        let p: Pointer = serde_json::from_str(
            r#"{"manifest_key": "k", "kind": "full", "created_at": "20250101T020000Z"}"#,
        )
        .unwrap();
        assert_eq!(p.kind, Kind::Full);
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"manifest_key": "k", "kind": "full", "created_at": "20250101T020000Z"})
        );
    }
}
