//! Chain resolution: from `current.json` (or `--manifest-key`) follow `parent_manifest`
//! back to a `full`, refusing loops, chains that do not end in a full, manifests of
//! another subvolume, missing or unparsable manifests, and any key, snapshot name or
//! size a manifest or pointer names that does not fit this subvolume's layout
//! ([`Manifest::check`]), each naming the key and the field. What this returns is
//! checked: later steps may use its names as paths and keys. Manifests and pointers are
//! read with a size cap ([`fetch_json`]): an object larger than one is damage, read no
//! further than the cap.

use std::collections::HashSet;

use anyhow::anyhow;

use crate::manifest::{Kind, Layout, Manifest, ManifestKey, Pointer};
use crate::retry::Retrier;
use crate::store::{get_bounded, ErrorKind, ObjectStore};

/// Damage found while resolving a chain (a missing, unreadable, untrustworthy or
/// misplaced manifest or pointer), as opposed to a request that failed: `verify` reports
/// it as a finding, `backup` falls back to a full.
#[derive(Debug)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// Why a chain, a manifest or a pointer could not be had, decided where it is known:
/// damage in the bucket (a finding) or a request that failed (the run's error). Callers
/// match on it; `?` into `anyhow` keeps the message as it was.
#[derive(Debug)]
pub enum ChainError {
    /// What the bucket holds is missing, unreadable, untrustworthy or misplaced:
    /// `verify` and `list` report it, a pinned restore tries another version.
    Damaged(Damaged),
    /// A request failed (after its retries), or a flag named a key outside the layout:
    /// the check could not be made.
    Failed(anyhow::Error),
}

impl ChainError {
    /// Adds `what` in front of the message (as `anyhow`'s `context`), keeping which it is.
    pub fn context(self, what: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            ChainError::Damaged(d) => ChainError::Damaged(Damaged(format!("{what}: {}", d.0))),
            ChainError::Failed(e) => ChainError::Failed(e.context(what)),
        }
    }
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Damaged(d) => std::fmt::Display::fmt(d, f),
            ChainError::Failed(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

impl From<Damaged> for ChainError {
    fn from(d: Damaged) -> Self {
        ChainError::Damaged(d)
    }
}

impl From<anyhow::Error> for ChainError {
    fn from(e: anyhow::Error) -> Self {
        ChainError::Failed(e)
    }
}

// Not `std::error::Error` (which would make the failed side's context chain one
// opaque link): into `anyhow`, each side is the error it holds, message unchanged.
impl From<ChainError> for anyhow::Error {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Damaged(d) => anyhow::Error::new(d),
            ChainError::Failed(e) => e,
        }
    }
}

/// Outside the engines, damage is a failed run like any other (exit code 1).
impl From<ChainError> for crate::exit::Failure {
    fn from(e: ChainError) -> Self {
        crate::exit::Failure::Run(e.into())
    }
}

macro_rules! damaged {
    ($($t:tt)*) => { return Err(ChainError::Damaged(Damaged(format!($($t)*)))) };
}

/// No real chain is this long; a longer one is treated as damage.
pub const MAX_CHAIN: usize = 10_000;

/// The largest manifest read: at about 264 bytes a chunk (measured, with a prefix and
/// ETags), some 250,000 chunks, a 5 TiB stream in chunks of 22 MiB or more (the default
/// chunk, 200 GiB, makes 26). `Repo::publish` refuses to write a larger one.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The largest `current.json` read (ours are a few hundred bytes).
pub const MAX_POINTER_BYTES: u64 = 1 << 20;
/// The most JSON values (`manifest::json_values`: an object's member counts two) a
/// manifest may hold: one of 250,000 chunks holds about 2.3 million, and the densest
/// this tool writes holds about 3 million in [`MAX_MANIFEST_BYTES`] (a unit test in
/// `repo` keeps it under 80 % of this). Parsed, a value costs tens of bytes, many times
/// its text (`[0,0,...]` is two bytes a value): 64 MiB of it would take gigabytes, this
/// many at most about 400 MB while parsing (measured: 1.5 million one-character members
/// +270 MB, 2 million +360 MB; 3 million zeros +190 MB).
pub const MAX_MANIFEST_VALUES: u64 = 4_000_000;
/// The most JSON values a pointer may hold (ours hold 4).
pub const MAX_POINTER_VALUES: u64 = 1_000;
/// The most JSON values the manifests of one chain may hold together: a chain is held
/// whole while it is restored or checked, so this bounds its memory (at most about
/// 400 MB), where `MAX_CHAIN` manifests of 64 MiB could take terabytes. A real chain of a
/// 250,000-chunk full and 10,000 incrementals holds about 3 million.
pub const MAX_CHAIN_VALUES: u64 = 6_000_000;
/// The most bytes the manifests of one chain may hold together: a long string is one
/// value, so values alone do not bound a chain held whole. A real chain of a 64 MiB full
/// and 10,000 incrementals of a few KiB is well under.
pub const MAX_CHAIN_BYTES: u64 = 256 << 20;
/// The most JSON values and bytes the manifests `list`, `prune` and `verify` read for one
/// listing may hold together (they are held at once): about 30 years of nightly backups
/// of 20 subvolumes, or a hundred 250,000-chunk fulls, are well under.
pub const MAX_CATALOG_VALUES: u64 = 30_000_000;
pub const MAX_CATALOG_BYTES: u64 = 1 << 30;

/// A small JSON object of the layout: its cap, and its name in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Small {
    Manifest,
    Pointer,
}

impl Small {
    pub fn cap(self) -> u64 {
        match self {
            Small::Manifest => MAX_MANIFEST_BYTES,
            Small::Pointer => MAX_POINTER_BYTES,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Small::Manifest => "manifest",
            Small::Pointer => "pointer",
        }
    }

    /// The most JSON values it may hold ([`MAX_MANIFEST_VALUES`]).
    pub fn max_values(self) -> u64 {
        match self {
            Small::Manifest => MAX_MANIFEST_VALUES,
            Small::Pointer => MAX_POINTER_VALUES,
        }
    }

    /// The damage of an object at `key` that is over the cap; `why` is
    /// [`crate::store::too_large`]'s.
    pub fn too_large(self, key: &str, why: &str) -> Damaged {
        Damaged(format!(
            "{what} {key} is too large: {why}; this tool writes no {what} that large, so \
             delete or replace the object",
            what = self.name(),
        ))
    }
}

/// A resolved chain, oldest (the full) first, with each manifest's key.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Oldest first; each key checked to lie under the subvolume's prefix, and each
    /// manifest by `Manifest::check` (every chunk key under that prefix too).
    pub links: Vec<(ManifestKey, Manifest)>,
    /// The JSON values and bytes its manifests hold together (what [`MAX_CHAIN_VALUES`]
    /// and [`MAX_CHAIN_BYTES`] bound).
    pub size: (u64, u64),
}

impl Chain {
    pub fn newest(&self) -> &(ManifestKey, Manifest) {
        // A chain always has at least its full.
        &self.links[self.links.len() - 1]
    }

    pub fn chunk_count(&self) -> usize {
        self.links.iter().map(|(_, m)| m.chunks.len()).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.links
            .iter()
            .fold(0u64, |a, (_, m)| a.saturating_add(m.total_bytes))
    }
}

/// Reads and parses one manifest or pointer, never more than its cap; `Ok(None)` when
/// the object does not exist. An object over the cap, or not JSON of the shape, is
/// [`Damaged`]; a request that failed is an error of its own.
pub fn fetch_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    key: &str,
    what: Small,
) -> Result<Option<T>, ChainError> {
    Ok(fetch_counted(store, retrier, key, what)?.map(|(v, _, _)| v))
}

/// [`fetch_json`], with the number of JSON values the object holds ([`json_values`]) and
/// its bytes.
fn fetch_counted<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    key: &str,
    what: Small,
) -> Result<Option<(T, u64, u64)>, ChainError> {
    let bytes = match retrier.run(|| get_bounded(store, key, what.cap())) {
        Ok(b) => b,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind == ErrorKind::TooLarge => {
            return Err(what.too_large(key, &e.message).into())
        }
        Err(e) => {
            return Err(ChainError::Failed(
                anyhow::Error::from(e).context(format!("reading {} {key}", what.name())),
            ))
        }
    };
    // Counted before parsing: a small object of many tiny values would take many times
    // its size once parsed.
    let values = crate::manifest::json_values(&bytes);
    if values > what.max_values() {
        damaged!(
            "{what} {key} holds {values} JSON values, more than the {max} this tool reads; \
             this tool writes no {what} that large, so delete or replace the object",
            what = what.name(),
            max = what.max_values()
        );
    }
    serde_json::from_slice(&bytes)
        .map(|v| Some((v, values, bytes.len() as u64)))
        .map_err(|e| {
            ChainError::Damaged(Damaged(format!(
                "{} {key} is not valid JSON of the expected shape: {e}",
                what.name()
            )))
        })
}

/// The key of the manifest to restore: `--manifest-key`, else what `current.json` names.
pub fn start_key(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    layout: &Layout,
    subvolume: &str,
    manifest_key: Option<&str>,
) -> Result<ManifestKey, ChainError> {
    let within = layout.subvolume_prefix(subvolume);
    if let Some(k) = manifest_key {
        let Some(k) = layout.owned_manifest_key(subvolume, k) else {
            return Err(ChainError::Failed(anyhow!(
                "--manifest-key {k:?} is not a key under {within} (this subvolume's backups under s3.prefix); \
                 pick one from the bucket listing under that prefix"
            )));
        };
        return Ok(k);
    }
    let pkey = layout.pointer_key(subvolume);
    // Only a pointer that is not there means "no backup": a request that failed (a
    // wrong key, a dead link) or a damaged pointer keeps its own error.
    let Some(p): Option<Pointer> = fetch_json(store, retrier, &pkey, Small::Pointer)? else {
        damaged!(
            "no published backup of subvolume {subvolume} under this prefix ({pkey} is missing; \
             check --subvolume and s3.prefix)"
        );
    };
    let Some(k) = layout.owned_manifest_key(subvolume, &p.manifest_key) else {
        damaged!(
            "pointer {pkey}: field manifest_key = {:?} is not a key under {within}; refusing to restore from it",
            p.manifest_key
        );
    };
    Ok(k)
}

/// Reads one manifest of `subvolume` and checks it (`Manifest::check`, version 1). A
/// manifest that is missing, unparsable or untrustworthy is [`Damaged`], naming the key
/// and the field; a request that failed is an error of its own.
pub fn read_manifest(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    layout: &Layout,
    subvolume: &str,
    k: &str,
) -> Result<Manifest, ChainError> {
    Ok(read_counted(store, retrier, layout, subvolume, k)?.0)
}

/// [`read_manifest`], with the number of JSON values the manifest holds and its bytes.
pub fn read_counted(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    layout: &Layout,
    subvolume: &str,
    k: &str,
) -> Result<(Manifest, u64, u64), ChainError> {
    let Some((m, values, bytes)) = fetch_counted::<Manifest>(store, retrier, k, Small::Manifest)?
    else {
        damaged!("manifest {k} is missing from the bucket");
    };
    if m.subvolume != subvolume {
        damaged!(
            "manifest {k} belongs to subvolume {:?}, not {subvolume:?}",
            m.subvolume
        );
    }
    if m.version != 1 {
        damaged!(
            "manifest {k} has version {}, this tool reads version 1",
            m.version
        );
    }
    if let Err(why) = m.check(layout, subvolume) {
        damaged!("manifest {k}: {why}; refusing to restore from it");
    }
    Ok((m, values, bytes))
}

/// The damage of a manifest key (a `parent_manifest`, the state file's last manifest)
/// that does not lie under `subvolume`'s prefix: [`Layout::owned_manifest_key`] said no.
pub fn not_owned(layout: &Layout, subvolume: &str, k: &str) -> Damaged {
    Damaged(format!(
        "manifest key {k:?} is not under {}; refusing to restore from it",
        layout.subvolume_prefix(subvolume)
    ))
}

/// Follows `parent_manifest` from `key` back to a full.
pub fn resolve(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    layout: &Layout,
    subvolume: &str,
    key: &ManifestKey,
) -> Result<Chain, ChainError> {
    let budget = (MAX_CHAIN_VALUES, MAX_CHAIN_BYTES);
    resolve_within(store, retrier, layout, subvolume, key, budget)
}

/// [`resolve`], the chain's manifests holding at most `budget` (JSON values, bytes)
/// together.
fn resolve_within(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    layout: &Layout,
    subvolume: &str,
    key: &ManifestKey,
    budget: (u64, u64),
) -> Result<Chain, ChainError> {
    let mut links: Vec<(ManifestKey, Manifest)> = Vec::new();
    let mut seen = HashSet::new();
    let (mut values, mut bytes) = (0u64, 0u64);
    let mut next = Some(key.to_string());
    while let Some(k) = next.take() {
        if !seen.insert(k.clone()) {
            damaged!("manifest chain loops: {k} is its own ancestor");
        }
        if links.len() >= MAX_CHAIN {
            damaged!("manifest chain from {key} is longer than {MAX_CHAIN} links");
        }
        let Some(k) = layout.owned_manifest_key(subvolume, &k) else {
            return Err(not_owned(layout, subvolume, &k).into());
        };
        let (m, n, b) = read_counted(store, retrier, layout, subvolume, &k)?;
        values = values.saturating_add(n);
        bytes = bytes.saturating_add(b);
        if values > budget.0 || bytes > budget.1 {
            damaged!(
                "manifest chain from {key}: its manifests down to {k} hold {values} JSON values \
                 in {bytes} bytes, more than the {} values or {} bytes this tool holds for one \
                 chain; this tool writes no chain that large",
                budget.0,
                budget.1
            );
        }
        match (m.kind, &m.parent_manifest) {
            (Kind::Full, _) => {}
            (Kind::Incremental, Some(p)) => next = Some(p.clone()),
            (Kind::Incremental, None) => {
                damaged!("manifest {k} is incremental but names no parent_manifest: the chain does not end in a full")
            }
        }
        links.push((k, m));
    }
    links.reverse();
    Ok(Chain {
        links,
        size: (values, bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ChunkEntry, S3Info, SnapshotRef};
    use crate::store::memory::MemoryStore;
    use crate::store::PutOptions;

    fn retrier() -> Retrier {
        crate::testing::retrier()
    }

    /// `k` as a manifest key of `data` under `prefix` (the tests' keys are all owned).
    fn mk(prefix: &str, k: &str) -> ManifestKey {
        Layout::new(prefix).owned_manifest_key("data", k).unwrap()
    }

    /// A manifest key outside the subvolume's prefix (the state file's, after `s3.prefix`
    /// changed) is refused with the text chain resolution has always used for it.
    #[test]
    fn a_key_outside_the_prefix_keeps_its_message() {
        let layout = Layout::new("p");
        assert!(layout
            .owned_manifest_key("data", "q/subvol/data/m")
            .is_none());
        assert_eq!(
            not_owned(&layout, "data", "q/subvol/data/m").to_string(),
            "manifest key \"q/subvol/data/m\" is not under p/subvol/data/; refusing to restore from it"
        );
    }

    fn opts() -> PutOptions {
        PutOptions {
            storage_class: "STANDARD".into(),
            sse: crate::config::Sse::Aes256,
            content_type: "application/json",
            kms_key_id: None,
            lock: None,
        }
    }

    fn manifest(sub: &str, kind: Kind, parent: Option<&str>) -> Manifest {
        Manifest {
            version: 1,
            subvolume: sub.into(),
            kind,
            created_at: "20250101T020000Z".into(),
            snapshot: SnapshotRef {
                name: "data__20250101T020000Z__full".into(),
                path: "/s".into(),
                uuid: None,
                parent_uuid: None,
                extra: Default::default(),
            },
            parent_manifest: parent.map(str::to_string),
            chunks: vec![ChunkEntry {
                key: "subvol/data/full/c".into(),
                size: 1,
                sha256: "0".repeat(64),
                etag: None,
                extra: Default::default(),
            }],
            total_bytes: 1,
            chunk_size: 1,
            s3: S3Info {
                storage_class: "STANDARD".into(),
                extra: Default::default(),
            },
            stream_sha256: None,
            send_protocol: None,
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        }
    }

    fn put(s: &MemoryStore, key: &str, m: &Manifest) {
        s.insert(key, &m.to_json(), opts());
    }

    #[test]
    fn values_are_counted_outside_strings() {
        assert_eq!(
            crate::manifest::json_values(br#"{"a":[1,2],"b":"x,y:{[\"}"}"#),
            7
        );
        assert_eq!(crate::manifest::json_values(b"0"), 1);
        let m = manifest("data", Kind::Full, None).to_json();
        let n = crate::manifest::json_values(&m);
        assert!((20..80).contains(&n), "{n}");
    }

    /// A bucket writer's padding: a manifest of many tiny values is refused before it is
    /// parsed (parsed, 64 MiB of `0,` would take gigabytes), and a chain's manifests
    /// together are held to a budget (a chain is held whole).
    #[test]
    fn padded_manifests_and_chains_are_refused_before_they_take_memory() {
        let s = MemoryStore::new();
        let pad = format!(
            "{{\"pad\":[{}0]}}",
            "0,".repeat(MAX_MANIFEST_VALUES as usize)
        );
        s.insert("subvol/data/padded", pad.as_bytes(), opts());
        let e = read_manifest(
            &s,
            &retrier(),
            &Layout::new(""),
            "data",
            "subvol/data/padded",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("manifest subvol/data/padded holds 4000004 JSON values, more than the 4000000 this tool reads"),
            "{e}"
        );
        s.insert(
            "subvol/data/current.json",
            format!("[{}0]", "0,".repeat(1000)).as_bytes(),
            opts(),
        );
        let fetched: Result<Option<Pointer>, _> =
            fetch_json(&s, &retrier(), "subvol/data/current.json", Small::Pointer);
        let e = fetched.unwrap_err().to_string();
        assert!(
            e.contains(
                "pointer subvol/data/current.json holds 1002 JSON values, more than the 1000"
            ),
            "{e}"
        );

        put(&s, "subvol/data/f", &manifest("data", Kind::Full, None));
        let inc = manifest("data", Kind::Incremental, Some("subvol/data/f"));
        put(&s, "subvol/data/i", &inc);
        let (f, i) = (manifest("data", Kind::Full, None).to_json(), inc.to_json());
        let both = crate::manifest::json_values(&f) + crate::manifest::json_values(&i);
        let size = (f.len() + i.len()) as u64;
        let resolve = |budget| {
            resolve_within(
                &s,
                &retrier(),
                &Layout::new(""),
                "data",
                &mk("", "subvol/data/i"),
                budget,
            )
        };
        assert_eq!(resolve((both, size)).unwrap().links.len(), 2);
        // One value or one byte over (a long string is one value: bytes count too).
        for budget in [(both - 1, size), (both, size - 1)] {
            let e = resolve(budget).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "manifest chain from subvol/data/i: its manifests down to subvol/data/f hold {both} JSON values in {size} bytes, more than the {} values or {} bytes",
                    budget.0, budget.1
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn full_plus_two_incrementals() {
        let s = MemoryStore::new();
        put(&s, "subvol/data/f", &manifest("data", Kind::Full, None));
        put(
            &s,
            "subvol/data/i1",
            &manifest("data", Kind::Incremental, Some("subvol/data/f")),
        );
        put(
            &s,
            "subvol/data/i2",
            &manifest("data", Kind::Incremental, Some("subvol/data/i1")),
        );
        let c = resolve(
            &s,
            &retrier(),
            &Layout::new(""),
            "data",
            &mk("", "subvol/data/i2"),
        )
        .unwrap();
        let keys: Vec<&str> = c.links.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["subvol/data/f", "subvol/data/i1", "subvol/data/i2"]);
        assert_eq!(c.newest().0, "subvol/data/i2");
        assert_eq!(c.chunk_count(), 3);
        assert_eq!(c.total_bytes(), 3);
        // From an older key.
        let c = resolve(
            &s,
            &retrier(),
            &Layout::new(""),
            "data",
            &mk("", "subvol/data/i1"),
        )
        .unwrap();
        assert_eq!(c.links.len(), 2);
    }

    #[test]
    fn refusals_name_the_key() {
        let s = MemoryStore::new();
        put(
            &s,
            "subvol/data/a",
            &manifest("data", Kind::Incremental, Some("subvol/data/b")),
        );
        put(
            &s,
            "subvol/data/b",
            &manifest("data", Kind::Incremental, Some("subvol/data/a")),
        );
        put(
            &s,
            "subvol/data/orphan",
            &manifest("data", Kind::Incremental, None),
        );
        put(&s, "subvol/data/other", &manifest("home", Kind::Full, None));
        put(
            &s,
            "subvol/data/to-missing",
            &manifest("data", Kind::Incremental, Some("subvol/data/gone")),
        );
        s.insert("subvol/data/junk", b"{not json", opts());
        put(
            &s,
            "subvol/data/to-junk",
            &manifest("data", Kind::Incremental, Some("subvol/data/junk")),
        );
        let mut v2 = manifest("data", Kind::Full, None);
        v2.version = 2;
        put(&s, "subvol/data/v2", &v2);
        put(
            &s,
            "subvol/data/to-outside",
            &manifest("data", Kind::Incremental, Some("subvol/home/x")),
        );
        let mut bad = manifest("data", Kind::Full, None);
        bad.snapshot.name = "/etc".into();
        put(&s, "subvol/data/bad-name", &bad);
        for (start, words) in [
            ("subvol/data/a", &["loops", "subvol/data/a"][..]),
            (
                "subvol/data/orphan",
                &["subvol/data/orphan", "does not end in a full"],
            ),
            ("subvol/data/other", &["subvol/data/other", "home"]),
            (
                "subvol/data/to-missing",
                &["manifest subvol/data/gone is missing"],
            ),
            (
                "subvol/data/to-junk",
                &["manifest subvol/data/junk is not valid JSON"],
            ),
            (
                "subvol/data/to-outside",
                &["manifest subvol/data/to-outside: field parent_manifest = \"subvol/home/x\""],
            ),
            (
                "subvol/data/bad-name",
                &["manifest subvol/data/bad-name: field snapshot.name = \"/etc\""],
            ),
            ("subvol/data/v2", &["version 2"]),
        ] {
            let e = format!(
                "{:#}",
                resolve(&s, &retrier(), &Layout::new(""), "data", &mk("", start)).unwrap_err()
            );
            for w in words {
                assert!(e.contains(w), "{start}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn a_failed_request_for_the_pointer_is_not_called_a_missing_backup() {
        // Issue 25 item 5: a 403 (a wrong key) said "no published backup of subvolume".
        let s = MemoryStore::new();
        s.fail("current.json", crate::store::ErrorKind::Permanent, 1);
        let err = start_key(&s, &retrier(), &Layout::new("p"), "data", None).unwrap_err();
        let e = format!("{err:#}");
        assert!(
            !e.contains("no published backup") && e.contains("injected failure"),
            "{e}"
        );
        assert!(
            !matches!(err, ChainError::Damaged(_)),
            "a failed request is not damage: {e}"
        );
    }

    #[test]
    fn start_from_pointer_or_flag() {
        let s = MemoryStore::new();
        let layout = Layout::new("p");
        let r = retrier();
        let e = format!(
            "{:#}",
            start_key(&s, &r, &layout, "data", None).unwrap_err()
        );
        assert!(
            e.contains("p/subvol/data/current.json is missing")
                && e.contains("no published backup"),
            "{e}"
        );
        s.insert(
            "p/subvol/data/current.json",
            br#"{"manifest_key": "p/subvol/data/m", "kind": "full", "created_at": "20250101T020000Z"}"#,
            opts(),
        );
        assert_eq!(
            start_key(&s, &r, &layout, "data", None).unwrap(),
            "p/subvol/data/m"
        );
        let x = "p/subvol/data/full/x";
        assert_eq!(start_key(&s, &r, &layout, "data", Some(x)).unwrap(), x);
        // Keys outside the subvolume's prefix, from the flag or the pointer, are refused.
        for bad in [
            "x",
            "p/subvol/home/m",
            "p/subvol/data/../home/m",
            "/p/subvol/data/m",
        ] {
            let e = start_key(&s, &r, &layout, "data", Some(bad)).unwrap_err();
            assert!(e.to_string().contains("--manifest-key"), "{bad}: {e}");
        }
        s.insert(
            "p/subvol/data/current.json",
            br#"{"manifest_key": "/etc/x", "kind": "full", "created_at": "20250101T020000Z"}"#,
            opts(),
        );
        let e = start_key(&s, &r, &layout, "data", None).unwrap_err();
        assert!(e.to_string().contains("field manifest_key"), "{e}");
        s.insert("p/subvol/data/current.json", b"[]", opts());
        assert!(start_key(&s, &r, &layout, "data", None).is_err());
    }

    /// A planted object of 64 MiB and a byte at a manifest key, or of 1 MiB and a byte at
    /// `current.json`: damage naming the key, the size and the cap (the old reader took
    /// any size into memory, and a 400 MB one whole).
    #[test]
    fn a_manifest_or_pointer_over_its_cap_is_damage() {
        let s = MemoryStore::new();
        let layout = Layout::new("p");
        let big = "p/subvol/data/full/manifest-20250101T020000Z.json";
        s.insert(big, &vec![b' '; MAX_MANIFEST_BYTES as usize + 1], opts());
        let e = resolve(&s, &retrier(), &layout, "data", &mk("p", big)).unwrap_err();
        assert!(matches!(e, ChainError::Damaged(_)), "{e:#}");
        let e = format!("{e:#}");
        for w in [
            &format!("manifest {big} is too large"),
            "the object is 67108865 bytes",
            "the cap of 67108864 bytes (64 MiB)",
        ] {
            assert!(e.contains(w), "{e} lacks {w}");
        }
        // Not retried: one GET, and one HEAD for the size.
        let gets = s.log().iter().filter(|c| c.starts_with("GET")).count();
        assert_eq!(gets, 1);
        // At the cap it is read (and found not to be JSON).
        s.insert(big, &vec![b' '; MAX_MANIFEST_BYTES as usize], opts());
        let e = format!(
            "{:#}",
            resolve(&s, &retrier(), &layout, "data", &mk("p", big)).unwrap_err()
        );
        assert!(e.contains("not valid JSON"), "{e}");
        let pkey = "p/subvol/data/current.json";
        s.insert(pkey, &vec![b' '; MAX_POINTER_BYTES as usize + 1], opts());
        let e = start_key(&s, &retrier(), &layout, "data", None).unwrap_err();
        assert!(matches!(e, ChainError::Damaged(_)));
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!("pointer {pkey} is too large"))
                && e.contains(
                    "the object is 1048577 bytes, more than the cap of 1048576 bytes (1 MiB)"
                ),
            "{e}"
        );
    }

    #[test]
    fn transient_errors_are_retried_then_reported() {
        let s = MemoryStore::new();
        put(&s, "subvol/data/f", &manifest("data", Kind::Full, None));
        s.fail("GET subvol/data/f", ErrorKind::Transient, 2);
        assert!(resolve(
            &s,
            &retrier(),
            &Layout::new(""),
            "data",
            &mk("", "subvol/data/f")
        )
        .is_ok());
        s.fail("GET subvol/data/f", ErrorKind::Permanent, 1);
        let e = format!(
            "{:#}",
            resolve(
                &s,
                &retrier(),
                &Layout::new(""),
                "data",
                &mk("", "subvol/data/f")
            )
            .unwrap_err()
        );
        assert!(e.contains("reading manifest subvol/data/f"), "{e}");
    }
}
