//! Resume on the real rig: `kill -9` (a SIGKILL the process sends itself at a named crash
//! point, `BTRFS_TO_S3_FAILPOINT`) at spread points of a multi-chunk, multipart backup,
//! then a normal run: it succeeds, uploads no more than what was not stored plus what was
//! in flight, publishes the manifest an uninterrupted run of the same snapshot would, and
//! leaves no open upload and no stray snapshot. Also a dead network (every connection
//! refused until the retries are spent) and `--restart`.

use std::path::Path;

use sha2::{Digest, Sha256};

use btrfs_to_s3::store::ObjectStore;

use crate::support::*;

const MIB: u64 = 1024 * 1024;
const CHUNK: u64 = 10 * MIB;
const PART: u64 = 5 * MIB;
const CONC: u64 = 3;

fn setup(tag: &str) -> Option<Setup> {
    if !require_root(tag) {
        return None;
    }
    let s = Setup::new(SetupOpts {
        chunk_size: CHUNK,
        part_size: PART,
        concurrency: CONC as u32,
        retain: 1,
        storage_class_chunks: "STANDARD",
        fs_mib: 768,
        ..Default::default()
    });
    // About 33 MiB of stream: three chunks of two parts each, and a last one-PUT chunk.
    random_file(&s.vol("data").join("a.bin"), 29 * MIB as usize);
    random_file(&s.vol("data").join("b.bin"), 3 * MIB as usize);
    Some(s)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What an uninterrupted run of `snapshot` publishes: `(size, sha256)` per chunk, the
/// stream's SHA-256 and size, from a fresh `btrfs send` cut here.
fn expected_chunks(snapshot: &Path, compressed: bool) -> (Vec<(u64, String)>, String, u64) {
    let mut cmd = std::process::Command::new("btrfs");
    cmd.args(["send", "-q"]);
    if compressed {
        cmd.args(["--proto", "2", "--compressed-data"]);
    }
    let out = cmd.arg(snapshot).output().expect("btrfs send");
    assert!(out.status.success(), "btrfs send failed");
    let chunks = out
        .stdout
        .chunks(CHUNK as usize)
        .map(|c| (c.len() as u64, hex(&Sha256::digest(c))))
        .collect();
    (
        chunks,
        hex(&Sha256::digest(&out.stdout)),
        out.stdout.len() as u64,
    )
}

fn journal_path(s: &Setup) -> std::path::PathBuf {
    s.state.with_file_name("state.json.resume-data.jsonl")
}

/// Checks the published backup against a fresh cut of its snapshot, and that nothing is
/// left over: no open upload, no journal, only the state's snapshot.
fn check_published(s: &Setup, store: &dyn ObjectStore) -> serde_json::Value {
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let m = s.get_json(&key);
    let snap = Path::new(m["snapshot"]["path"].as_str().unwrap()).to_path_buf();
    let compressed = m["compressed_data"].as_bool().unwrap_or(false);
    let (chunks, stream, total) = expected_chunks(&snap, compressed);
    let got: Vec<(u64, String)> = m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["size"].as_u64().unwrap(),
                c["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, chunks, "chunks of {key}");
    assert_eq!(m["stream_sha256"], stream.as_str());
    assert_eq!(m["total_bytes"], total);
    let ts = m["created_at"].as_str().unwrap();
    for (i, c) in m["chunks"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            c["key"],
            format!("backups/subvol/data/full/chunk-{ts}-{i}.bin").as_str()
        );
    }
    assert!(store.list_multipart_uploads("backups/").unwrap().is_empty());
    assert!(!journal_path(s).exists());
    let state_snap = s.state_json()["subvolumes"]["data"]["last_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.snapshot_names(),
        vec![Path::new(&state_snap)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()]
    );
    m
}

#[test]
fn kill_9_at_spread_points_then_the_next_run_resumes() {
    let Some(s) = setup("kill_9_at_spread_points_then_the_next_run_resumes") else {
        return;
    };
    let store = s.moto.store();
    let points = [
        "after_journal_begin",
        "after_upload_created:2",
        "after_part_request:2",
        "after_part_journaled:3",
        "after_part_journaled:5",
        "after_complete_request:1",
        "after_chunk_journaled:2",
        "after_complete_request:3",
        "after_part_request:6",
        "between_manifest_and_pointer",
        "between_pointer_and_state",
    ];
    let mut report = Vec::new();
    for point in points {
        // A full each time: without a state the planner starts one.
        let _ = std::fs::remove_file(&s.state);
        let r = output(s.backup_cmd(&[]).env("BTRFS_TO_S3_FAILPOINT", point));
        assert_eq!(r.code, -1, "{point}: not killed: {r:?}");
        assert!(journal_path(&s).exists(), "{point}: no journal");
        let stored = btrfs_to_s3::journal::load(&journal_path(&s))
            .unwrap()
            .unwrap()
            .stored_bytes();
        let r = s.backup(&[]);
        assert_eq!(r.code, 0, "{point}: {r:?}");
        let m = check_published(&s, &store);
        let total = m["total_bytes"].as_u64().unwrap();
        let uploaded = event_field(&r.stderr, "backup_metrics", "uploaded_bytes")
            .map(|v| v.parse::<u64>().unwrap())
            .unwrap_or(0);
        let recovered = r.stderr.contains("event=backup_recovered");
        assert!(
            uploaded <= total - stored + CONC * PART,
            "{point}: uploaded {uploaded} of {total} with {stored} stored before"
        );
        if point.starts_with("between_") {
            assert_eq!(uploaded, 0, "{point}: {r:?}");
        }
        if point == "between_pointer_and_state" {
            assert!(recovered, "{point}: {r:?}");
        } else {
            assert!(r.stderr.contains("event=backup_resumed"), "{point}: {r:?}");
        }
        report.push(format!(
            "{point}: stored before {stored}, uploaded {uploaded} of {total}"
        ));
    }
    eprintln!("{}", report.join("\n"));
    // The last one restores and verifies.
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=verify_ok mode=full"), "{r:?}");
}

#[test]
fn a_dead_network_fails_the_run_keeps_the_work_and_the_next_run_resumes() {
    let Some(s) = setup("a_dead_network_fails_the_run_keeps_the_work_and_the_next_run_resumes")
    else {
        return;
    };
    let proxy = Proxy::start(s.moto.port);
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    // No outage patience: the bounded retries only, as before outages were ridden out
    // (tests/it/outage.rs has the patience's own tests).
    let text = text.replacen("[s3]\n", "[s3]\noutage_patience_seconds = 0\n", 1);
    std::fs::write(&s.cfg, text.replace(&s.moto.endpoint, &proxy.endpoint)).unwrap();
    let store = s.moto.store();
    let log = s.fs.dir.path().join("dead.log");
    let mut child = s
        .backup_cmd(&[])
        .env("BTRFS_TO_S3_RETRY_BASE_MS", "20")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Once some parts are stored, the network dies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while btrfs_to_s3::journal::load(&journal_path(&s))
        .ok()
        .flatten()
        .is_none_or(|p| p.stored_bytes() < PART)
    {
        assert!(std::time::Instant::now() < deadline, "no progress");
        assert!(child.try_wait().unwrap().is_none(), "ended early");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    proxy.set_up(false);
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("after 5 attempts"), "{stderr}");
    assert!(stderr.contains("event=backup_kept_for_resume"), "{stderr}");
    assert!(store
        .head("backups/subvol/data/current.json")
        .unwrap()
        .is_none());
    assert!(!s.state.exists());
    let stored = btrfs_to_s3::journal::load(&journal_path(&s))
        .unwrap()
        .unwrap()
        .stored_bytes();
    assert!(stored >= PART);
    // The link comes back: the next run resumes.
    proxy.set_up(true);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let resumed: u64 = event_field(&r.stderr, "backup_metrics", "resumed_bytes")
        .unwrap()
        .parse()
        .unwrap();
    assert!(resumed >= stored, "{r:?}");
    check_published(&s, &store);
}

#[test]
fn restart_discards_the_pending_backup() {
    let Some(s) = setup("restart_discards_the_pending_backup") else {
        return;
    };
    let store = s.moto.store();
    let r = output(
        s.backup_cmd(&[])
            .env("BTRFS_TO_S3_FAILPOINT", "after_part_journaled:2"),
    );
    assert_eq!(r.code, -1, "{r:?}");
    let pending = btrfs_to_s3::journal::load(&journal_path(&s))
        .unwrap()
        .unwrap();
    assert!(!store.list_multipart_uploads("backups/").unwrap().is_empty());
    // --dry-run says a resume is pending.
    let r = s.backup(&["--dry-run"]);
    assert!(r.stdout.contains("data: resume"), "{r:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--restart"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("event=resume_abandoned") && r.stderr.contains("reason=--restart"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("event=backup_resumed"), "{r:?}");
    let m = check_published(&s, &store);
    assert_ne!(m["created_at"], pending.begin.run_ts.as_str());
    assert!(!Path::new(&pending.begin.snapshot).exists());
}

#[test]
fn a_state_directory_that_takes_no_writes_fails_before_uploading() {
    let Some(s) = setup("a_state_directory_that_takes_no_writes_fails_before_uploading") else {
        return;
    };
    let dir = s.state.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    // Read-only for root too: a read-only bind mount of the directory onto itself.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = sh(&format!("umount {}", self.0.display()));
        }
    }
    run(&format!(
        "mount --bind {d} {d} && mount -o remount,ro,bind {d}",
        d = dir.display()
    ));
    let guard = Unmount(dir.clone());
    let r = s.backup(&[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("does not take writes (global.state_path)"),
        "{r:?}"
    );
    assert!(s.moto.list_keys().is_empty(), "{:?}", s.moto.list_keys());
    assert!(s.snapshot_names().is_empty(), "{:?}", s.snapshot_names());
    drop(guard);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
}
