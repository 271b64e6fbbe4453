//! `btrfs_to_s3 backup` end to end on a loop-mounted btrfs and moto: full backups of three
//! subvolumes, an incremental chain, fallback to full, SSE and storage classes read back
//! with HEAD, chunk bytes equal to a fresh `btrfs send`, and failures (kill -9, a stopped
//! server, SIGTERM) that publish nothing.

use std::io::Read;
use std::time::{Duration, Instant};

use btrfs_to_s3::btrfs::{Btrfs, BtrfsCli};
use btrfs_to_s3::store::{get_all, ObjectStore};

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn chunks_of(m: &serde_json::Value) -> Vec<(String, u64)> {
    m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_string(),
                c["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The stream a fresh `btrfs send` of `snapshot` (with `parent`) yields, with the
/// protocol the manifest `m` records.
pub fn fresh_send(
    snapshot: &std::path::Path,
    parent: Option<&std::path::Path>,
    m: &serde_json::Value,
) -> Vec<u8> {
    let compressed = m["compressed_data"].as_bool().unwrap_or(false);
    let mut s = BtrfsCli::default()
        .send(snapshot, parent, compressed)
        .unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    s.finish().unwrap();
    v
}

#[test]
fn full_and_incremental_chain_of_three_subvolumes() {
    if !require_root("full_and_incremental_chain_of_three_subvolumes") {
        return;
    }
    let s = Setup::new(SetupOpts {
        subvolumes: &["alpha", "beta", "gamma"],
        ..Default::default()
    });
    // alpha: 26 MiB (chunks of 12 MiB, each a multipart of 5 MiB parts); beta, gamma small.
    random_file(&s.vol("alpha").join("big.bin"), 26 * MIB);
    std::fs::write(s.vol("beta").join("note.txt"), "beta\n").unwrap();
    std::fs::create_dir_all(s.vol("gamma").join("dir")).unwrap();
    std::fs::write(s.vol("gamma").join("dir/x"), vec![7u8; 100_000]).unwrap();

    let dry = s.backup(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("alpha: full (no previous backup"),
        "{dry:?}"
    );
    assert!(
        !s.state.exists() && !s.lock.exists(),
        "dry run wrote something"
    );

    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("event=backup_metrics subvolume=alpha total_bytes="),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("event=backup_summary subvolumes=3 failed=0"),
        "{r:?}"
    );
    let store = s.moto.store();
    let state = s.state_json();
    for name in ["alpha", "beta", "gamma"] {
        let ptr = s.get_json(&format!("backups/subvol/{name}/current.json"));
        assert_eq!(ptr["kind"], "full");
        let mkey = ptr["manifest_key"].as_str().unwrap().to_string();
        assert!(
            mkey.starts_with(&format!("backups/subvol/{name}/full/manifest-")),
            "{mkey}"
        );
        assert_eq!(state["subvolumes"][name]["last_manifest"], mkey.as_str());
        let m = s.get_json(&mkey);
        assert_eq!(m["version"], 1);
        assert_eq!(m["subvolume"], name);
        assert!(m["parent_manifest"].is_null());
        assert!(m["snapshot"]["uuid"].as_str().unwrap().len() >= 32);
        assert_eq!(m["s3"]["storage_class"], "GLACIER_IR");
        assert_eq!(m["chunk_size"], 12 * MIB as u64);
        // HEAD every object: SSE on all, chunk class on chunks, STANDARD on the rest.
        for (key, size) in chunks_of(&m) {
            let h = store.head(&key).unwrap().expect("chunk exists");
            assert_eq!(h.size, size);
            assert_eq!(h.sse.as_deref(), Some("AES256"), "{key}");
            assert_eq!(h.storage_class.as_deref(), Some("GLACIER_IR"), "{key}");
        }
        for key in [mkey.clone(), format!("backups/subvol/{name}/current.json")] {
            let h = store.head(&key).unwrap().unwrap();
            assert_eq!(h.sse.as_deref(), Some("AES256"), "{key}");
            assert_eq!(h.storage_class_or_standard(), "STANDARD", "{key}");
        }
        // The chunks, concatenated, are exactly a fresh btrfs send of the snapshot.
        let mut all = Vec::new();
        for (key, _) in chunks_of(&m) {
            all.extend(get_all(&store, &key).unwrap());
        }
        let snap = std::path::PathBuf::from(m["snapshot"]["path"].as_str().unwrap());
        assert_eq!(all.len() as u64, m["total_bytes"].as_u64().unwrap());
        assert!(
            all == fresh_send(&snap, None, &m),
            "{name}: chunks differ from btrfs send"
        );
    }
    // alpha: chunks smaller than the data and larger than a part, in one run.
    let alpha = s.get_json(
        s.get_json("backups/subvol/alpha/current.json")["manifest_key"]
            .as_str()
            .unwrap(),
    );
    let sizes: Vec<u64> = chunks_of(&alpha).iter().map(|c| c.1).collect();
    assert!(sizes.len() >= 3 && sizes[0] == 12 * MIB as u64, "{sizes:?}");
    // Nothing else under the prefix.
    for k in s.moto.list_keys() {
        assert!(
            k.ends_with("/current.json")
                || k.contains("/full/chunk-")
                || k.contains("/full/manifest-"),
            "unexpected key {k}"
        );
    }

    // Change data, incremental chain of two (--once: the schedule says not due yet).
    std::fs::write(s.vol("alpha").join("new.txt"), "new\n").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("action=skip"), "{r:?}");
    let r = s.backup(&["--once", "--subvolume", "alpha"]);
    assert_eq!(r.code, 0, "{r:?}");
    let inc1 = s.get_json("backups/subvol/alpha/current.json");
    assert_eq!(inc1["kind"], "incremental");
    let m1 = s.get_json(inc1["manifest_key"].as_str().unwrap());
    assert_eq!(
        m1["parent_manifest"],
        state["subvolumes"]["alpha"]["last_manifest"]
    );
    // The incremental stream equals a fresh send against the full's snapshot.
    let mut all = Vec::new();
    for (key, _) in chunks_of(&m1) {
        all.extend(get_all(&store, &key).unwrap());
    }
    let parent = std::path::PathBuf::from(alpha["snapshot"]["path"].as_str().unwrap());
    let snap1 = std::path::PathBuf::from(m1["snapshot"]["path"].as_str().unwrap());
    assert!(all == fresh_send(&snap1, Some(&parent), &m1));

    std::fs::remove_file(s.vol("alpha").join("big.bin")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&["--once", "--subvolume", "alpha"]);
    assert_eq!(r.code, 0, "{r:?}");
    let inc2 = s.get_json("backups/subvol/alpha/current.json");
    let m2 = s.get_json(inc2["manifest_key"].as_str().unwrap());
    assert_eq!(m2["kind"], "incremental");
    assert_eq!(m2["parent_manifest"], inc1["manifest_key"]);
    // Retention: 2 kept for alpha (the two incrementals), the others untouched.
    let names = s.snapshot_names();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("alpha__")).count(),
        2,
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("beta__")));

    // Parent snapshot deleted -> the next backup is a full.
    let last = s.state_json()["subvolumes"]["alpha"]["last_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    BtrfsCli::default()
        .delete_subvolume(std::path::Path::new(&last))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&["--once", "--subvolume", "alpha"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("parent snapshot is missing on disk"),
        "{r:?}"
    );
    assert_eq!(
        s.get_json("backups/subvol/alpha/current.json")["kind"],
        "full"
    );

    // --no-s3 makes a snapshot and uploads nothing.
    let keys_before = s.moto.list_keys();
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&["--once", "--no-s3", "--subvolume", "beta"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.moto.list_keys(), keys_before);
    assert_eq!(
        s.snapshot_names()
            .iter()
            .filter(|n| n.starts_with("beta__"))
            .count(),
        2
    );
}

/// Waits until the bucket has an open multipart upload; panics after `secs`.
fn wait_for_open_upload(
    store: &dyn ObjectStore,
    prefix: &str,
    child: &mut std::process::Child,
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if !store.list_multipart_uploads(prefix).unwrap().is_empty() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("backup ended ({st}) before a multipart upload was seen");
        }
        assert!(
            Instant::now() < deadline,
            "no multipart upload seen within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the backup's journal records a stored part of an open upload.
fn wait_for_journal_part(journal: &std::path::Path, child: &mut std::process::Child, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(journal).unwrap_or_default();
        if text.contains("\"record\":\"part\"") {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("backup ended ({st}) before its journal recorded a part");
        }
        assert!(
            Instant::now() < deadline,
            "no part in {} within {secs} s",
            journal.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a backup in the background with its log going to a file (a pipe could fill up).
fn spawn_logged(s: &Setup, args: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    let log =
        s.fs.dir
            .path()
            .join(format!("backup-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let child = s
        .backup_cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (child, log)
}

fn big_setup(tag: &str) -> Option<Setup> {
    if !require_root(tag) {
        return None;
    }
    let s = Setup::new(SetupOpts {
        chunk_size: 40 * MIB as u64,
        concurrency: 1,
        ..Default::default()
    });
    random_file(&s.vol("data").join("big.bin"), 120 * MIB);
    Some(s)
}

#[test]
fn kill_9_mid_upload_keeps_old_pointer_and_next_run_succeeds() {
    let Some(s) = big_setup("kill_9_mid_upload_keeps_old_pointer_and_next_run_succeeds") else {
        return;
    };
    std::fs::write(s.vol("data").join("small"), "x").unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let old = s.get_json("backups/subvol/data/current.json");
    let old_state = std::fs::read(&s.state).unwrap();
    std::fs::write(s.vol("data").join("more"), "y").unwrap();
    std::thread::sleep(Duration::from_millis(1100));

    // Force a full (big) run by removing the parent snapshot, and kill it while a
    // multipart upload is open.
    let parent = s.state_json()["subvolumes"]["data"]["last_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    BtrfsCli::default()
        .delete_subvolume(std::path::Path::new(&parent))
        .unwrap();
    // The killed run goes at 20 MiB/s (a 40 MiB chunk takes 2 s), and the kill waits for
    // the journal's first part: a kill between CreateMultipartUpload and the journal's
    // record of it leaves an upload no journal owns, which the next run rightly aborts.
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let capped = text.replacen(
        "[s3]\n",
        "[s3]\nupload_rate_schedule = \"00:00,20MiB\"\n",
        1,
    );
    assert_ne!(capped, text);
    std::fs::write(&s.cfg, &capped).unwrap();
    let journal = s.state.with_file_name("state.json.resume-data.jsonl");
    let (mut child, _log) = spawn_logged(&s, &["--once"]);
    let store = s.moto.store();
    wait_for_journal_part(&journal, &mut child, 60);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::write(&s.cfg, &text).unwrap();
    assert_eq!(
        s.get_json("backups/subvol/data/current.json"),
        old,
        "pointer moved"
    );
    assert_eq!(std::fs::read(&s.state).unwrap(), old_state, "state changed");
    assert!(!store.list_multipart_uploads("backups/").unwrap().is_empty());
    // The killed run's snapshot and journal are kept for the next run.
    assert!(journal.exists());

    // The next run resumes that backup (whatever the schedule says) and succeeds, with
    // its upload completed, not aborted.
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=backup_resumed"), "{r:?}");
    assert!(!r.stderr.contains("event=stale_upload_aborted"), "{r:?}");
    assert!(store.list_multipart_uploads("backups/").unwrap().is_empty());
    assert_ne!(s.get_json("backups/subvol/data/current.json"), old);
    assert!(!journal.exists());
    // Restore verifies the resumed backup.
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn server_stopped_mid_run_fails_and_publishes_nothing() {
    let Some(mut s) = big_setup("server_stopped_mid_run_fails_and_publishes_nothing") else {
        return;
    };
    // No outage patience: a dead server is an outage, which a run would otherwise wait
    // out for hours (tests/it/outage.rs has the patience's own tests).
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let text = text.replacen("[s3]\n", "[s3]\noutage_patience_seconds = 0\n", 1);
    assert!(text.contains("outage_patience_seconds = 0"), "{text}");
    std::fs::write(&s.cfg, text).unwrap();
    let (mut child, log) = spawn_logged(&s, &[]);
    let store = s.moto.store();
    wait_for_open_upload(&store, "backups/", &mut child, 60);
    s.moto.kill();
    let started = Instant::now();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("event=backup_failed subvolume=data"),
        "{stderr}"
    );
    assert!(stderr.contains("event=s3_retry"), "retried first: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    // Nothing published locally: the state file untouched (a first run: none at all);
    // the new snapshot and the journal are kept for the next run to resume.
    assert!(
        !s.state.exists(),
        "the state file was written: {}",
        s.state_json()
    );
    assert_eq!(s.snapshot_names().len(), 1, "{:?}", s.snapshot_names());
    assert!(s
        .state
        .with_file_name("state.json.resume-data.jsonl")
        .exists());
    assert!(stderr.contains("event=backup_kept_for_resume"), "{stderr}");
}

#[test]
fn sigterm_stops_within_seconds_publishes_nothing_and_the_next_run_resumes() {
    let Some(s) =
        big_setup("sigterm_stops_within_seconds_publishes_nothing_and_the_next_run_resumes")
    else {
        return;
    };
    let (mut child, log) = spawn_logged(&s, &[]);
    let store = s.moto.store();
    wait_for_open_upload(&store, "backups/", &mut child, 60);
    let signalled = Instant::now();
    run(&format!("kill -TERM {}", child.id()));
    let status = child.wait().unwrap();
    let took = signalled.elapsed();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "stopped {took:?} after SIGTERM"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(store
        .head("backups/subvol/data/current.json")
        .unwrap()
        .is_none());
    assert!(!s.moto.list_keys().iter().any(|k| k.contains("manifest")));
    // Kept for the resume: the snapshot, the journal, the open upload.
    assert_eq!(s.snapshot_names().len(), 1, "{:?}", s.snapshot_names());
    assert!(!store.list_multipart_uploads("backups/").unwrap().is_empty());
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=backup_resumed"), "{r:?}");
    assert!(store.list_multipart_uploads("backups/").unwrap().is_empty());
    assert!(store
        .head("backups/subvol/data/current.json")
        .unwrap()
        .is_some());
}

#[test]
fn sse_none_backs_up_and_restores_without_sse_headers() {
    if !require_root("sse_none_backs_up_and_restores_without_sse_headers") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        s3_extra: "sse = \"none\"",
        ..Default::default()
    });
    std::fs::write(s.vol("data").join("f"), "no sse").unwrap();
    let r = s.backup(&["--log-level", "debug"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The s3_request debug line names every header sent: no SSE header at all.
    assert!(r.stderr.contains("x-amz-storage-class"), "{r:?}");
    assert!(!r.stderr.contains("x-amz-server-side-encryption"), "{r:?}");
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read_to_string(t.join("f")).unwrap(), "no sse");
}
