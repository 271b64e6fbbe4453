//! Backup orchestration with fakes: publish order, failure cleanup, incremental parents,
//! retention keeping the parent, and the stale-upload sweep.

use super::*;
use crate::config::{Config, ProcessEnv};
use crate::planner::plan;
use crate::store::memory::MemoryStore;
use crate::store::{get_all, ErrorKind};
use crate::testing::{FakeBtrfs, Scratch};

fn config(dir: &Path) -> Config {
    let text = format!(
        r#"
[global]
state_path = "{d}/state.json"
lock_path = "{d}/lock"
[snapshots]
base_dir = "{d}/snaps"
retain = 2
[subvolumes]
paths = ["{d}/vol/data"]
[s3]
bucket = "b"
region = "r"
prefix = "pre"
chunk_size_bytes = 400
part_size_bytes = 5242880
storage_class_chunks = "GLACIER"
"#,
        d = dir.display()
    );
    Config::parse(&text, &ProcessEnv).unwrap()
}

struct Rig {
    _dir: Scratch,
    cfg: Config,
    btrfs: FakeBtrfs,
    store: Arc<MemoryStore>,
}

impl Rig {
    fn new() -> Rig {
        let dir = Scratch::new("backup");
        let cfg = config(&dir.0);
        std::fs::create_dir_all(&cfg.subvolumes[0].path).unwrap();
        Rig {
            _dir: dir,
            cfg,
            btrfs: FakeBtrfs::default(),
            store: Arc::new(MemoryStore::new()),
        }
    }

    fn backup(&self) -> Backup<'_> {
        Backup {
            cfg: &self.cfg,
            btrfs: &self.btrfs,
            store: Some(self.store.clone()),
            retrier: Arc::new(crate::testing::retrier()),
            layout: Layout::new(&self.cfg.s3.prefix),
        }
    }

    /// Plans and runs one subvolume as the app does; returns the new state entry.
    fn run(&self, entry: &SubvolState, ts: &str, once: bool) -> Result<Outcome> {
        let b = self.backup();
        let sv = &self.cfg.subvolumes[0];
        let now = Ts::parse(ts).unwrap();
        let facts = b.facts(sv, entry)?;
        let d = plan(&facts, &self.cfg.schedule, now, once);
        b.run_one(sv, entry, &d, now)
    }
}

fn published(o: Outcome) -> Published {
    match o {
        Outcome::Published(p) => *p,
        other => panic!("not published: {other:?}"),
    }
}

fn manifest(store: &MemoryStore, key: &str) -> Manifest {
    serde_json::from_slice(&get_all(store, key).unwrap()).unwrap()
}

#[test]
fn full_then_incremental_chain() {
    let rig = Rig::new();
    let p1 = published(
        rig.run(&SubvolState::default(), "20250101T020000Z", false)
            .unwrap(),
    );
    assert_eq!(
        p1.manifest_key,
        "pre/subvol/data/full/manifest-20250101T020000Z.json"
    );
    let m1 = manifest(&rig.store, &p1.manifest_key);
    assert_eq!(m1.kind, Kind::Full);
    assert_eq!(m1.parent_manifest, None);
    assert_eq!(m1.total_bytes, 1000);
    assert_eq!(m1.chunks.len(), 3);
    assert_eq!(
        m1.chunks[2].key,
        "pre/subvol/data/full/chunk-20250101T020000Z-2.bin"
    );
    assert_eq!(m1.chunk_size, 400);
    assert_eq!(m1.s3.storage_class, "GLACIER");
    assert!(m1.snapshot.uuid.as_deref().unwrap().starts_with("uuid-"));
    assert_eq!(m1.snapshot.name, "data__20250101T020000Z__full");
    assert!(m1.stream_sha256.is_some());
    assert_eq!(p1.state.last_full_at.as_deref(), Some("20250101T020000Z"));
    let obj = rig
        .store
        .object("pre/subvol/data/full/chunk-20250101T020000Z-0.bin")
        .unwrap();
    assert_eq!(obj.opts.storage_class, "GLACIER");
    let ptr = rig.store.object("pre/subvol/data/current.json").unwrap();
    assert_eq!(ptr.opts.storage_class, "STANDARD");
    assert_eq!(ptr.opts.sse, "AES256");

    // Eight days later: an incremental against the full.
    let p2 = published(rig.run(&p1.state, "20250109T020000Z", false).unwrap());
    let m2 = manifest(&rig.store, &p2.manifest_key);
    assert_eq!(m2.kind, Kind::Incremental);
    assert_eq!(
        m2.parent_manifest.as_deref(),
        Some(p1.manifest_key.as_str())
    );
    assert_eq!(p2.state.last_full_at.as_deref(), Some("20250101T020000Z"));
    let calls = rig.btrfs.calls();
    assert!(
        calls.iter().any(|c| c.ends_with(&format!(
            "parent={}",
            p1.state.last_snapshot.as_deref().unwrap()
        ))),
        "{calls:?}"
    );
    let ptr: crate::manifest::Pointer = serde_json::from_slice(
        &get_all(rig.store.as_ref(), "pre/subvol/data/current.json").unwrap(),
    )
    .unwrap();
    assert_eq!(ptr.manifest_key, p2.manifest_key);
    assert_eq!(ptr.kind, Kind::Incremental);

    // Not due yet: skipped, nothing created.
    match rig.run(&p2.state, "20250110T020000Z", false).unwrap() {
        Outcome::Skipped(d) => assert!(d.reason.contains("next due")),
        o => panic!("{o:?}"),
    }
}

#[test]
fn chunk_pointer_order_in_log() {
    let rig = Rig::new();
    published(
        rig.run(&SubvolState::default(), "20250101T020000Z", false)
            .unwrap(),
    );
    let log: Vec<String> = rig
        .store
        .log()
        .into_iter()
        .filter(|l| l.starts_with("PUT"))
        .collect();
    let n = log.len();
    assert!(
        log[..n - 2].iter().all(|l| l.contains("/chunk-")),
        "{log:?}"
    );
    assert!(
        log[n - 2].ends_with("manifest-20250101T020000Z.json"),
        "{log:?}"
    );
    assert!(log[n - 1].ends_with("current.json"), "{log:?}");
}

#[test]
fn failure_before_manifest_publishes_nothing_and_removes_snapshot() {
    let rig = Rig::new();
    rig.store
        .fail("chunk-20250101T020000Z-1.bin", ErrorKind::Permanent, 1);
    let e = rig
        .run(&SubvolState::default(), "20250101T020000Z", false)
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("chunk-20250101T020000Z-1.bin"),
        "{e:#}"
    );
    assert!(rig.store.object("pre/subvol/data/current.json").is_none());
    assert!(!rig.store.keys().iter().any(|k| k.contains("manifest")));
    assert!(snapshots::list(&rig.cfg.snapshots.base_dir, "data")
        .unwrap()
        .is_empty());
}

#[test]
fn failure_before_pointer_keeps_old_pointer() {
    let rig = Rig::new();
    let p1 = published(
        rig.run(&SubvolState::default(), "20250101T020000Z", false)
            .unwrap(),
    );
    let old = rig
        .store
        .object("pre/subvol/data/current.json")
        .unwrap()
        .data;
    rig.store
        .fail("PUT pre/subvol/data/current.json", ErrorKind::Permanent, 1);
    let e = rig.run(&p1.state, "20250109T020000Z", false).unwrap_err();
    assert!(
        format!("{e:#}").contains("publishing pre/subvol/data/current.json"),
        "{e:#}"
    );
    assert_eq!(
        rig.store
            .object("pre/subvol/data/current.json")
            .unwrap()
            .data,
        old
    );
    // The new snapshot is gone, the parent stays.
    let snaps = snapshots::list(&rig.cfg.snapshots.base_dir, "data").unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].ts.to_string(), "20250101T020000Z");
    // And a manifest failure means no pointer PUT at all.
    rig.store
        .fail("manifest-20250110T020000Z.json", ErrorKind::Permanent, 1);
    let before = rig.store.log().len();
    assert!(rig.run(&p1.state, "20250110T020000Z", false).is_err());
    assert!(!rig.store.log()[before..]
        .iter()
        .any(|l| l.contains("current.json")));
}

#[test]
fn send_failure_publishes_nothing() {
    let rig = Rig::new();
    *rig.btrfs.send_error.lock().unwrap() = Some("ERROR: send ioctl failed".into());
    let e = rig
        .run(&SubvolState::default(), "20250101T020000Z", false)
        .unwrap_err();
    assert!(format!("{e:#}").contains("send ioctl failed"));
    assert!(rig.store.object("pre/subvol/data/current.json").is_none());
    assert!(!rig.store.keys().iter().any(|k| k.contains("manifest")));
}

#[test]
fn parent_missing_falls_back_to_full() {
    let rig = Rig::new();
    let p1 = published(
        rig.run(&SubvolState::default(), "20250101T020000Z", false)
            .unwrap(),
    );
    // Parent manifest gone from S3.
    rig.store.remove(&p1.manifest_key);
    let p2 = published(rig.run(&p1.state, "20250109T020000Z", false).unwrap());
    assert!(p2.manifest_key.contains("/full/"), "{}", p2.manifest_key);
    // Parent snapshot gone from disk.
    std::fs::remove_dir_all(p2.state.last_snapshot.as_deref().unwrap()).unwrap();
    let p3 = published(rig.run(&p2.state, "20250117T020000Z", false).unwrap());
    assert!(p3.manifest_key.contains("/full/"), "{}", p3.manifest_key);
}

#[test]
fn retention_keeps_parent() {
    let rig = Rig::new();
    let b = rig.backup();
    let sv = &rig.cfg.subvolumes[0];
    let base = &rig.cfg.snapshots.base_dir;
    for n in [
        "data__20250101T020000Z__full",
        "data__20250102T020000Z__inc",
        "data__20250103T020000Z__inc",
        "data__20250104T020000Z__inc",
        "unrelated",
    ] {
        std::fs::create_dir_all(base.join(n)).unwrap();
    }
    let parent = base.join("data__20250101T020000Z__full");
    let deleted = b.prune(sv, Some(&parent)).unwrap();
    assert_eq!(deleted, vec![base.join("data__20250102T020000Z__inc")]);
    assert!(parent.exists() && base.join("unrelated").exists());
}

#[test]
fn sweep_aborts_stale_uploads() {
    let rig = Rig::new();
    let opts = PutOptions {
        storage_class: "STANDARD".into(),
        sse: "AES256".into(),
        content_type: "x",
    };
    rig.store
        .create_multipart("pre/subvol/data/full/chunk-20240101T000000Z-0.bin", &opts)
        .unwrap();
    rig.store
        .create_multipart("pre/subvol/other/full/chunk-20240101T000000Z-0.bin", &opts)
        .unwrap();
    rig.backup()
        .sweep_stale_uploads(&rig.cfg.subvolumes[0])
        .unwrap();
    assert_eq!(rig.store.open_uploads(), 1);
}

#[test]
fn no_s3_makes_snapshot_only() {
    let rig = Rig::new();
    let mut b = rig.backup();
    b.store = None;
    let sv = &rig.cfg.subvolumes[0];
    let d = Decision {
        action: Action::Full,
        reason: "test".into(),
    };
    match b
        .run_one(
            sv,
            &SubvolState::default(),
            &d,
            Ts::parse("20250101T020000Z").unwrap(),
        )
        .unwrap()
    {
        Outcome::SnapshotOnly(p) => assert!(p.exists()),
        o => panic!("{o:?}"),
    }
    assert!(rig.store.log().is_empty());
}

#[test]
fn run_timestamp_waits_past_existing_snapshot() {
    let rig = Rig::new();
    let sv = &rig.cfg.subvolumes[0];
    let t = Ts::parse("20250101T020000Z").unwrap();
    std::fs::create_dir_all(
        rig.cfg
            .snapshots
            .base_dir
            .join("data__20250101T020000Z__full"),
    )
    .unwrap();
    let calls = std::cell::Cell::new(0);
    let now = || {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            t
        } else {
            t.add_secs(1)
        }
    };
    assert_eq!(run_timestamp(&rig.cfg, &[sv], &now).unwrap(), t.add_secs(1));
    let far = || t.add_secs(-60);
    assert!(
        format!("{:#}", run_timestamp(&rig.cfg, &[sv], &far).unwrap_err())
            .contains("newer than the clock")
    );
}
