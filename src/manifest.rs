//! Wire types of what we publish in S3 (manifest and `current.json`) and the key layout
//! of the contract (DESIGN.md, "Formats"). Serde only, no I/O. Fields this version does not know are kept, and
//! new optional fields (`stream_sha256`) are skipped when absent so old readers are safe.

use serde::{Deserialize, Serialize};

use crate::snapshots::SnapName;
use crate::ts::Ts;

/// The largest object S3 stores (5 TiB): no chunk is larger.
pub const MAX_CHUNK_BYTES: u64 = 5 * (1 << 40);

/// Full or incremental (a leaf of its own, `kind`; named here too for the wire types).
pub use crate::kind::Kind;

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
    /// Extension: the send stream's protocol (absent: 1, as the earlier tool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_protocol: Option<u32>,
    /// Extension: compressed extents were sent as they are (`--compressed-data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_data: Option<bool>,
    /// Extension: each chunk is an age file (client-side encryption); `chunks`, sizes
    /// and hashes describe the stored ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The scheme of [`EncryptionInfo`]: every chunk is one age v1 file.
pub const AGE_V1: &str = "age-v1";

/// An encrypted backup: the scheme, the recipients' fingerprints (for display), and
/// `sealed`, the base64 of one age file to the same recipients holding a
/// [`SealedPart`] as JSON (what restore checks the plaintext against).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    pub scheme: String,
    pub recipients: Vec<String>,
    pub sealed: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The encrypted part of an encrypted backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPart {
    /// Plaintext bytes of the send stream.
    pub stream_bytes: u64,
    /// Per chunk, in order: its age header's SHA-256 and its plaintext size.
    pub chunks: Vec<SealedChunkEntry>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChunkEntry {
    pub header_sha256: String,
    pub size: u64,
}

/// The largest `encryption.sealed` read (base64): ample for 10^5 chunks.
pub const MAX_SEALED_LEN: usize = 32 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub manifest_key: String,
    pub kind: Kind,
    pub created_at: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// About how many values a JSON text holds, counting an object's member twice (its name
/// and value: parsed, a member costs about twice a value): every `,`, `:`, `[` and `{`
/// outside strings, plus one. One pass, no allocation.
pub fn json_values(text: &[u8]) -> u64 {
    let (mut n, mut in_string, mut escaped) = (1u64, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => n += 1,
                _ => {}
            }
        }
    }
    n
}

impl Manifest {
    /// The send protocol of the stream (1 when the manifest does not say).
    pub fn protocol(&self) -> u32 {
        self.send_protocol.unwrap_or(1)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

impl Manifest {
    /// Checks everything in a manifest read from the bucket that will name a path, a key
    /// or a size, before any of it is used: it must be `subvolume`'s, stored under
    /// `subvolume`'s prefix, with a snapshot name of that subvolume's shape (one plain
    /// path component), its parent and every chunk under the same prefix, and sizes and
    /// hashes of the right form. The error names the field; the caller names the key.
    pub fn check(&self, layout: &Layout, subvolume: &str) -> Result<(), String> {
        let within = layout.subvolume_prefix(subvolume);
        if self.subvolume != subvolume {
            return Err(format!(
                "field subvolume = {:?}: it belongs to subvolume {:?}, not {subvolume:?}",
                self.subvolume, self.subvolume
            ));
        }
        if SnapName::parse(subvolume, &self.snapshot.name).is_none() {
            return Err(format!(
                "field snapshot.name = {:?} is not a snapshot name of subvolume {subvolume} \
                 ({subvolume}__YYYYMMDDTHHMMSSZ__full or __inc)",
                self.snapshot.name
            ));
        }
        if let Some(p) = &self.parent_manifest {
            if !layout.owns(subvolume, p) {
                return Err(format!(
                    "field parent_manifest = {p:?} is not a key under {within}"
                ));
            }
        }
        let mut keys = std::collections::HashSet::with_capacity(self.chunks.len());
        for (i, c) in self.chunks.iter().enumerate() {
            if !layout.owns(subvolume, &c.key) {
                return Err(format!(
                    "field chunks[{i}].key = {:?} is not a key under {within}",
                    c.key
                ));
            }
            // Every chunk is its own object: a key listed twice would be checked (size,
            // storage class) once and read twice, at whatever size each entry claims.
            if !keys.insert(c.key.as_str()) {
                return Err(format!(
                    "field chunks[{i}].key = {:?} is listed twice",
                    c.key
                ));
            }
            if c.size > MAX_CHUNK_BYTES {
                return Err(format!(
                    "field chunks[{i}].size = {} is larger than any S3 object",
                    c.size
                ));
            }
            if c.sha256.len() != 64 || !c.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "field chunks[{i}].sha256 = {:?} is not a SHA-256 in hex",
                    c.sha256
                ));
            }
        }
        if let Some(e) = &self.encryption {
            if e.scheme != AGE_V1 {
                return Err(format!(
                    "field encryption.scheme = {:?} is not {AGE_V1:?}, the only one this version reads",
                    e.scheme
                ));
            }
            if e.recipients.is_empty()
                || e.recipients.len() > 1000
                || !e
                    .recipients
                    .iter()
                    .all(|r| r.len() == 16 && r.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(
                    "field encryption.recipients is not a list of recipient fingerprints"
                        .to_string(),
                );
            }
            if e.sealed.is_empty() || e.sealed.len() > MAX_SEALED_LEN {
                return Err(format!(
                    "field encryption.sealed is {} bytes long, not an age file in base64",
                    e.sealed.len()
                ));
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// Each chunk with its key as a [`ChunkKey`] of this manifest's subvolume
    /// ([`Layout::owned_chunk_key`]). In a manifest [`Manifest::check`] passed every key
    /// is owned; in another, a key outside the prefix is the check's error for it.
    pub fn chunk_keys<'a>(
        &'a self,
        layout: &'a Layout,
    ) -> impl Iterator<Item = Result<(&'a ChunkEntry, ChunkKey), String>> + 'a {
        self.chunks.iter().enumerate().map(move |(i, c)| {
            match layout.owned_chunk_key(&self.subvolume, &c.key) {
                Some(k) => Ok((c, k)),
                None => Err(format!(
                    "field chunks[{i}].key = {:?} is not a key under {}",
                    c.key,
                    layout.subvolume_prefix(&self.subvolume)
                )),
            }
        })
    }
}

impl Pointer {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// Keys of the layout, as types: only [`Layout`] makes one, by building it
/// (`chunk_key`, `manifest_key`, `pointer_key`) or by reading a key from outside (a
/// manifest field, a pointer, the state file, a flag) that lies under the subvolume's
/// prefix (`owned_chunk_key`, `owned_manifest_key`). On the wire each is the same string
/// as before (DESIGN.md, "Formats"); `Deref` to `str` reads it.
/// Any key of the layout ([`ChunkKey`], [`ManifestKey`], [`PointerKey`]): what the
/// `Repo` methods that may touch any object of the repository (`head`, `exists`) take.
/// Sealed: a plain string is not one.
pub trait ObjectKey: std::fmt::Display + sealed::Sealed {
    /// The key as S3 names it.
    fn as_str(&self) -> &str;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! layout_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The key as S3 names it.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The key as an owned string (for the wire types and the journal).
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl sealed::Sealed for $name {}

        impl ObjectKey for $name {
            fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

layout_key!(
    /// `P subvol/<name>/KIND/chunk-TS-<i>.bin`, or a chunk key a checked manifest names.
    ChunkKey
);
layout_key!(
    /// `P subvol/<name>/KIND/manifest-TS.json`, or a manifest key read from outside and
    /// checked to lie under the subvolume's prefix.
    ManifestKey
);
layout_key!(
    /// `P subvol/<name>/current.json`.
    PointerKey
);

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

    pub fn chunk_key(&self, name: &str, kind: Kind, ts: Ts, index: u64) -> ChunkKey {
        ChunkKey(format!(
            "{}{}/chunk-{ts}-{index}.bin",
            self.subvolume_prefix(name),
            kind.as_str()
        ))
    }

    pub fn manifest_key(&self, name: &str, kind: Kind, ts: Ts) -> ManifestKey {
        ManifestKey(format!(
            "{}{}/manifest-{ts}.json",
            self.subvolume_prefix(name),
            kind.as_str()
        ))
    }

    pub fn pointer_key(&self, name: &str) -> PointerKey {
        PointerKey(format!("{}current.json", self.subvolume_prefix(name)))
    }

    /// `key`, read from outside (a manifest's `parent_manifest`, a pointer, the state
    /// file, `--manifest-key`), as a manifest key of `name`: `None` unless [`Layout::owns`]
    /// it (the rule such keys have always been held to; the shape is not required).
    pub fn owned_manifest_key(&self, name: &str, key: &str) -> Option<ManifestKey> {
        self.owns(name, key).then(|| ManifestKey(key.to_string()))
    }

    /// `key`, a chunk key a manifest names, as a chunk key of `name`: `None` unless
    /// [`Layout::owns`] it.
    pub fn owned_chunk_key(&self, name: &str, key: &str) -> Option<ChunkKey> {
        self.owns(name, key).then(|| ChunkKey(key.to_string()))
    }

    /// A chunk key of any spelling, for the pipeline's unit tests (which name chunks
    /// `p/chunk-<i>.bin`); never compiled into the tool.
    #[cfg(test)]
    pub(crate) fn test_chunk_key(key: &str) -> ChunkKey {
        ChunkKey(key.to_string())
    }

    /// True when `key` lies under `P subvol/<name>/` and has no empty, `.` or `..`
    /// segment: a key from a manifest, a pointer or a flag that may be used for `name`.
    pub fn owns(&self, name: &str, key: &str) -> bool {
        key.strip_prefix(&self.subvolume_prefix(name))
            .is_some_and(|rest| !rest.is_empty())
            && !key
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            && !key.chars().any(char::is_control)
    }
}

/// What a key of the layout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Pointer,
    Manifest { kind: Kind, ts: Ts },
    Chunk { kind: Kind, ts: Ts, index: u64 },
}

impl Layout {
    /// Reads `key` back as a key of the layout: its subvolume and shape, or `None` for
    /// anything this tool never writes (which tools checking the bucket call damage).
    pub fn parse<'k>(&self, key: &'k str) -> Option<(&'k str, Shape)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("subvol/")?;
        let (name, rest) = rest.split_once('/')?;
        if subvolume_name_problem(name).is_some() {
            return None;
        }
        if rest == "current.json" {
            return Some((name, Shape::Pointer));
        }
        let (dir, file) = rest.split_once('/')?;
        let kind = match dir {
            "full" => Kind::Full,
            "incremental" => Kind::Incremental,
            _ => return None,
        };
        // Only the canonical spelling: `Ts::parse` also reads the ISO form.
        let ts = |t: &str| Ts::parse(t).ok().filter(|ts| ts.to_string() == t);
        if let Some(t) = file
            .strip_prefix("manifest-")
            .and_then(|f| f.strip_suffix(".json"))
        {
            return Some((name, Shape::Manifest { kind, ts: ts(t)? }));
        }
        let (t, index) = file
            .strip_prefix("chunk-")?
            .strip_suffix(".bin")?
            .split_once('-')?;
        let canonical_index = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'));
        if !canonical_index {
            return None;
        }
        Some((
            name,
            Shape::Chunk {
                kind,
                ts: ts(t)?,
                index: index.parse().ok()?,
            },
        ))
    }
}

/// Why `name` cannot be a subvolume name given on the command line, if it cannot: it
/// names S3 keys, snapshot names and a staging directory, so it must be one plain path
/// component.
pub fn subvolume_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Some("is empty, . or ..");
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Some("contains / or a control character");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys_parse_back() {
        let ts = Ts::parse("20250101T020000Z").unwrap();
        let l = Layout::new("p");
        for (kind, key) in [
            (Kind::Full, l.chunk_key("data", Kind::Full, ts, 10)),
            (
                Kind::Incremental,
                l.chunk_key("data", Kind::Incremental, ts, 0),
            ),
        ] {
            let (name, shape) = l.parse(&key).unwrap();
            assert_eq!(name, "data");
            let Shape::Chunk { kind: k, ts: t, .. } = shape else {
                panic!("{key}: {shape:?}")
            };
            assert_eq!((k, t), (kind, ts));
        }
        assert_eq!(
            l.parse(&l.manifest_key("data", Kind::Full, ts)),
            Some((
                "data",
                Shape::Manifest {
                    kind: Kind::Full,
                    ts
                }
            ))
        );
        assert_eq!(
            l.parse("p/subvol/data/current.json"),
            Some(("data", Shape::Pointer))
        );
        for stray in [
            "q/subvol/data/current.json",
            "p/subvol/data/full/manifest-2025-01-01T02:00:00Z.json",
            "p/subvol/data/full/chunk-20250101T020000Z-01.bin",
            "p/subvol/data/full/chunk-20250101T020000Z-.bin",
            "p/subvol/data/full/chunk-20250101T020000Z-1.bin.tmp",
            "p/subvol/data/inc/manifest-20250101T020000Z.json",
            "p/subvol/data/notes.txt",
            "p/subvol/../full/manifest-20250101T020000Z.json",
            "p/subvol/data/full/x/manifest-20250101T020000Z.json",
            "p/other",
        ] {
            assert_eq!(l.parse(stray), None, "{stray}");
        }
    }

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

    fn good() -> Manifest {
        let text = r#"{"version": 1, "subvolume": "data", "kind": "incremental",
            "created_at": "20250108T020000Z",
            "snapshot": {"name": "data__20250108T020000Z__inc", "path": "/srv/snapshots/data__20250108T020000Z__inc", "uuid": null, "parent_uuid": null},
            "parent_manifest": "p/subvol/data/full/manifest-20250101T020000Z.json",
            "chunks": [{"key": "p/subvol/data/incremental/chunk-20250108T020000Z-0.bin", "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "etag": null}],
            "total_bytes": 3, "chunk_size": 214748364800, "s3": {"storage_class": "DEEP_ARCHIVE"}}"#;
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn doctored_manifests_are_refused_naming_the_field() {
        let l = Layout::new("p");
        good().check(&l, "data").unwrap();
        type Edit = fn(&mut Manifest);
        let cases: &[(Edit, &str)] = &[
            (|m| m.snapshot.name = "/etc".into(), "snapshot.name"),
            (|m| m.snapshot.name = "../../x".into(), "snapshot.name"),
            (
                |m| m.snapshot.name = "data__20250108T020000Z__inc/x".into(),
                "snapshot.name",
            ),
            (
                |m| m.snapshot.name = "home__20250108T020000Z__inc".into(),
                "snapshot.name",
            ),
            (|m| m.snapshot.name = String::new(), "snapshot.name"),
            (|m| m.subvolume = "home".into(), "field subvolume"),
            (
                |m| m.parent_manifest = Some("q/subvol/data/full/manifest-1.json".into()),
                "parent_manifest",
            ),
            (
                |m| m.parent_manifest = Some("p/subvol/data/../../q/x.json".into()),
                "parent_manifest",
            ),
            (
                |m| m.chunks[0].key = "p/subvol/home/full/c.bin".into(),
                "chunks[0].key",
            ),
            (
                |m| m.chunks[0].key = "p/subvol/data/".into(),
                "chunks[0].key",
            ),
            (
                |m| m.chunks[0].key = "p/subvol/data//c".into(),
                "chunks[0].key",
            ),
            (|m| m.chunks[0].size = u64::MAX, "chunks[0].size"),
            (|m| m.chunks[0].sha256 = "../etc".into(), "chunks[0].sha256"),
            (
                |m| {
                    let mut twice = m.chunks[0].clone();
                    twice.size = 5 << 40;
                    m.chunks.push(twice);
                },
                "chunks[1].key = \"p/subvol/data/incremental/chunk-20250108T020000Z-0.bin\" is listed twice",
            ),
        ];
        for (edit, field) in cases {
            let mut m = good();
            edit(&mut m);
            let e = m.check(&l, "data").unwrap_err();
            assert!(e.contains(field), "{e} lacks {field}");
        }
        assert!(l.owns("data", "p/subvol/data/full/manifest-1.json"));
        assert!(!l.owns("data", "p/subvol/database/full/manifest-1.json"));
        assert!(!l.owns("data", "p/subvol/data/./x"));
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(subvolume_name_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(subvolume_name_problem("my data"), None);
    }

    /// A checked manifest hands out its chunk keys as `ChunkKey`s (the same strings, the
    /// JSON unchanged); a key outside the prefix is the check's own error.
    #[test]
    fn a_checked_manifest_hands_out_typed_chunk_keys() {
        let l = Layout::new("p");
        let m = good();
        m.check(&l, "data").unwrap();
        let keys: Vec<ChunkKey> = m.chunk_keys(&l).map(|r| r.unwrap().1).collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0], m.chunks[0].key);
        assert_eq!(
            Some(keys[0].clone()),
            l.owned_chunk_key("data", &m.chunks[0].key)
        );
        let mut bad = good();
        bad.chunks[0].key = "p/subvol/home/full/c.bin".into();
        let e = bad.chunk_keys(&l).next().unwrap().unwrap_err();
        assert_eq!(e, bad.check(&l, "data").unwrap_err());
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
