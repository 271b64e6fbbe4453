//! Restore orchestration with a fake btrfs and the in-memory store: replay order,
//! placement, cleanup on failure, and archive chunks without waiting.

use std::sync::Arc;

use super::*;
use crate::chunker::hex;
use crate::config::ProcessEnv;
use crate::manifest::{ChunkEntry, Kind, Manifest, S3Info, SnapshotRef};
use crate::sendstream::build::Stream;
use crate::store::memory::MemoryStore;
use crate::store::PutOptions;
use crate::testing::{FakeBtrfs, Scratch};
use sha2::{Digest, Sha256};

fn config(dir: &Path) -> Config {
    let text = format!(
        "[global]\nstate_path = \"{d}/s.json\"\nlock_path = \"{d}/l\"\n[subvolumes]\npaths = [\"{d}/data\"]\n\
         [s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\nconcurrency = 2\n",
        d = dir.display()
    );
    Config::parse(&text, &ProcessEnv).unwrap()
}

fn opts(class: &str) -> PutOptions {
    crate::testing::put_opts(class)
}

/// Stores a manifest whose stream starts with the snapshot name (the fake receive uses it).
fn put_backup(
    s: &MemoryStore,
    key: &str,
    name: &str,
    kind: Kind,
    parent: Option<&str>,
    class: &str,
) -> Vec<u8> {
    // A send stream the guard and the fake receive read; 4 chunks, the last two inside
    // the write command's data.
    // Each backup's subvolume UUID from its manifest key, so that an incremental's
    // snapshot names its parent's, as `btrfs send -p` writes it.
    let uuid = |k: &str| -> [u8; 16] {
        let h = Sha256::digest(k.as_bytes());
        h[..16].try_into().expect("16 bytes")
    };
    let start = Stream::new(1);
    let start = match parent {
        None => start.subvol(name, uuid(key)),
        Some(p) => start.snapshot(name, uuid(key), uuid(p)),
    };
    let stream = start.write("f", "x".repeat(200).as_bytes()).end().bytes();
    put_stream(s, key, name, kind, parent, class, stream)
}

/// Stores `stream` in four chunks and its manifest.
fn put_stream(
    s: &MemoryStore,
    key: &str,
    name: &str,
    kind: Kind,
    parent: Option<&str>,
    class: &str,
    stream: Vec<u8>,
) -> Vec<u8> {
    let mut chunks = Vec::new();
    for (i, part) in stream.chunks(stream.len().div_ceil(4)).enumerate() {
        let ck = format!("{key}.chunk{i}");
        s.insert(&ck, part, opts(class));
        chunks.push(ChunkEntry {
            key: ck,
            size: part.len() as u64,
            sha256: hex(&Sha256::digest(part)),
            etag: None,
            extra: Default::default(),
        });
    }
    let m = Manifest {
        version: 1,
        subvolume: "data".into(),
        kind,
        created_at: "20250101T020000Z".into(),
        snapshot: SnapshotRef {
            name: name.into(),
            path: "/nonexistent/snapshot".into(),
            uuid: None,
            parent_uuid: None,
            extra: Default::default(),
        },
        parent_manifest: parent.map(str::to_string),
        total_bytes: stream.len() as u64,
        chunks,
        chunk_size: 20,
        s3: S3Info {
            storage_class: class.into(),
            extra: Default::default(),
        },
        stream_sha256: None,
        send_protocol: None,
        compressed_data: None,
        encryption: None,
        extra: Default::default(),
    };
    s.insert(key, &m.to_json(), opts("STANDARD"));
    stream
}

struct Rig {
    dir: Scratch,
    cfg: Config,
    btrfs: FakeBtrfs,
    store: Arc<MemoryStore>,
}

impl Rig {
    fn new() -> Rig {
        let dir = Scratch::new("restore");
        let cfg = config(&dir.0);
        Rig {
            dir,
            cfg,
            btrfs: FakeBtrfs::default(),
            store: Arc::new(MemoryStore::new()),
        }
    }

    fn run(&self, target: &Path, key: Option<&str>, wait: bool) -> Result<Report, RestoreError> {
        let retrier = Arc::new(crate::testing::retrier());
        let repo = Repo::new(&self.cfg, self.store.clone(), retrier.clone());
        let r = Restorer {
            cfg: &self.cfg,
            btrfs: &self.btrfs,
            repo: &repo,
            retrier,
        };
        r.run(&Request {
            subvolume: "data".into(),
            manifest_key: key.map(str::to_string),
            target: target.to_path_buf(),
            wait,
            timeout: Duration::from_secs(10),
            verify: VerifyMode::Full,
            skip_space_check: false,
            identity_files: Vec::new(),
        })
    }
}

#[test]
fn replays_oldest_first_and_places_the_newest() {
    let rig = Rig::new();
    let s1 = put_backup(
        &rig.store,
        "p/subvol/data/full/m1",
        "data__20250101T020000Z__full",
        Kind::Full,
        None,
        "STANDARD",
    );
    let s2 = put_backup(
        &rig.store,
        "p/subvol/data/incremental/m2",
        "data__20250102T020000Z__inc",
        Kind::Incremental,
        Some("p/subvol/data/full/m1"),
        "STANDARD",
    );
    rig.store.insert(
        "p/subvol/data/current.json",
        br#"{"manifest_key": "p/subvol/data/incremental/m2", "kind": "incremental", "created_at": "x"}"#,
        opts("STANDARD"),
    );
    let target = rig.dir.0.join("restored");
    let rep = rig.run(&target, None, true).unwrap();
    assert_eq!(rep.manifests, 2);
    assert_eq!(rep.bytes, (s1.len() + s2.len()) as u64);
    let got = rig.btrfs.received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, s1);
    assert_eq!(got[1].1, s2);
    assert!(target.is_dir());
    let calls = rig.btrfs.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("writable") && c.ends_with("data__20250102T020000Z__inc")),
        "{calls:?}"
    );
    // The full went as soon as the incremental was received, its space waited for.
    let pos = |pred: &dyn Fn(&String) -> bool| calls.iter().position(pred).unwrap();
    let del = pos(&|c| c.starts_with("delete") && c.ends_with("data__20250101T020000Z__full"));
    let sync = pos(&|c| c.starts_with("sync"));
    let writable = pos(&|c| c.starts_with("writable"));
    assert!(del < sync && sync < writable, "{calls:?}");
    // The staging directory and the intermediate subvolume are gone.
    let left: Vec<_> = std::fs::read_dir(&rig.dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("restored")]);
    // The target now exists: a second restore is refused before anything is read.
    let before = rig.store.log().len();
    assert!(format!("{:#}", rig.run(&target, None, true).unwrap_err()).contains("already exists"));
    assert_eq!(rig.store.log().len(), before);
}

#[test]
fn tampered_chunk_leaves_nothing() {
    let rig = Rig::new();
    put_backup(
        &rig.store,
        "p/subvol/data/full/m1",
        "data__20250101T020000Z__full",
        Kind::Full,
        None,
        "STANDARD",
    );
    put_backup(
        &rig.store,
        "p/subvol/data/incremental/m2",
        "data__20250102T020000Z__inc",
        Kind::Incremental,
        Some("p/subvol/data/full/m1"),
        "STANDARD",
    );
    rig.store
        .corrupt("p/subvol/data/incremental/m2.chunk2", 3, 1);
    let target = rig.dir.0.join("restored");
    let e = format!(
        "{:#}",
        rig.run(&target, Some("p/subvol/data/incremental/m2"), true)
            .unwrap_err()
    );
    assert!(
        e.contains("chunk p/subvol/data/incremental/m2.chunk2: SHA-256 mismatch"),
        "{e}"
    );
    let left: Vec<_> = std::fs::read_dir(&rig.dir.0).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn archive_chunks_pending_without_wait() {
    let rig = Rig::new();
    put_backup(
        &rig.store,
        "p/subvol/data/full/m1",
        "data__20250101T020000Z__full",
        Kind::Full,
        None,
        "DEEP_ARCHIVE",
    );
    rig.store.set_restore_delay_heads(1);
    let target = rig.dir.0.join("restored");
    let e = rig
        .run(&target, Some("p/subvol/data/full/m1"), false)
        .unwrap_err();
    let RestoreError::Pending(p) = &e else {
        panic!("not ArchivePending: {e:#}")
    };
    assert_eq!(p.chunks, 4);
    assert_eq!(
        crate::exit::Failure::from(e).code(),
        crate::app::exit::RESTORE_PENDING
    );
    assert!(!target.exists());
    // Waiting: HEAD reports ongoing once, then done; the restore completes.
    let rep = rig
        .run(&target, Some("p/subvol/data/full/m1"), true)
        .unwrap();
    assert_eq!(rep.chunks, 4);
    assert!(target.is_dir());
}

#[test]
fn target_checks() {
    let rig = Rig::new();
    let base = Path::new("/nonexistent-base");
    let e = check_target(&rig.dir.0.join("no/such/parent/t"), base).unwrap_err();
    assert!(
        e.to_string().contains("does not exist; create it first"),
        "{e}"
    );
    assert!(check_target(&rig.dir.0, base)
        .unwrap_err()
        .to_string()
        .contains("already exists"));
    // A relative target goes under restore.target_base_dir.
    assert_eq!(
        check_target(Path::new("new-target"), &rig.dir.0).unwrap(),
        rig.dir.0.join("new-target")
    );
    let e = check_target(Path::new("data"), base).unwrap_err();
    assert!(
        e.to_string()
            .contains("--target /nonexistent-base/data does not exist; create it first"),
        "{e}"
    );
}

#[test]
fn a_protocol_2_chain_needs_a_receive_that_reads_it() {
    let rig = Rig::new();
    let key = "p/subvol/data/full/m1";
    put_backup(
        &rig.store,
        key,
        "data__20250101T020000Z__full",
        Kind::Full,
        None,
        "STANDARD",
    );
    // Mark it as sent with protocol 2.
    let mut m: Manifest = serde_json::from_slice(&rig.store.object(key).unwrap().data).unwrap();
    m.send_protocol = Some(2);
    m.compressed_data = Some(true);
    rig.store.insert(key, &m.to_json(), opts("STANDARD"));
    *rig.btrfs.support.lock().unwrap() = Some(crate::btrfs::SendSupport {
        kernel_proto: 2,
        progs: (5, 16),
    });
    let before = rig.store.log().len();
    let target = rig.dir.0.join("restored");
    let e = format!("{:#}", rig.run(&target, Some(key), true).unwrap_err());
    assert!(
        e.contains("send protocol 2") && e.contains("btrfs-progs 6.0 or later"),
        "{e}"
    );
    // Nothing was downloaded.
    assert!(
        !rig.store.log()[before..]
            .iter()
            .any(|l| l.contains(".chunk")),
        "{:?}",
        rig.store.log()
    );
    // With a receive that reads it, the same restore works.
    *rig.btrfs.support.lock().unwrap() = None;
    rig.run(&target, Some(key), true).unwrap();
}

#[test]
fn a_doctored_stream_is_refused_before_receive_and_staging_is_left_clean() {
    let rig = Rig::new();
    let name = "data__20250101T020000Z__full";
    // A host directory the attacker's symlink (`../victim`, beside the received
    // subvolume in staging) points at.
    let victim = rig.dir.0.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "keep").unwrap();
    let stream = Stream::new(1)
        .subvol(name, [3; 16])
        .write("f", b"some data")
        .symlink("../victim-link", victim.to_str().unwrap())
        .write("g", "y".repeat(200).as_bytes())
        .end()
        .bytes();
    put_stream(
        &rig.store,
        "p/subvol/data/full/m1",
        name,
        Kind::Full,
        None,
        "STANDARD",
        stream,
    );
    let target = rig.dir.0.join("restored");
    let e = format!(
        "{:#}",
        rig.run(&target, Some("p/subvol/data/full/m1"), true)
            .unwrap_err()
    );
    assert!(
        e.contains("chunk p/subvol/data/full/m1.chunk") && e.contains("command 3 (symlink)"),
        "{e}"
    );
    assert!(e.contains("\"../victim-link\" has a `..` component"), "{e}");
    // Nothing at the target, the staging directory gone, the victim whole, and the only
    // subvolume deleted is the one the stream created.
    let mut left: Vec<_> = std::fs::read_dir(&rig.dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["victim".to_string()]);
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "keep"
    );
    let deletes: Vec<_> = rig
        .btrfs
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("delete"))
        .collect();
    assert!(deletes.iter().all(|c| c.ends_with(name)), "{deletes:?}");
}
