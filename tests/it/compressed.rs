//! `btrfs send --compressed-data` (send protocol 2) on a `compress=zstd` filesystem:
//! smaller streams, restored and verified; a chain mixing protocols; `false` keeps
//! today's protocol-1 stream byte for byte.

use std::io::Read;

use btrfs_to_s3::btrfs::{Btrfs, BtrfsCli};
use btrfs_to_s3::store::get_all;

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn setup(tag: &str, s3_extra: &'static str) -> Option<Setup> {
    if !require_root(tag) {
        return None;
    }
    let s = Setup::new(SetupOpts {
        mount_options: "compress=zstd",
        storage_class_chunks: "STANDARD",
        s3_extra,
        ..Default::default()
    });
    // Text-like data (compresses well) and random data (does not).
    let v = s.vol("data");
    run(&format!(
        "for i in $(seq 1 120000); do echo \"$i GET /index.html 200 text text text\"; done > {}/access.log",
        v.display()
    ));
    random_file(&v.join("random.bin"), 3 * MIB);
    run("sync");
    Some(s)
}

fn current(s: &Setup) -> serde_json::Value {
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    s.get_json(&key)
}

/// Restores the current chain and compares it with the snapshot of manifest `m`.
fn restore_and_compare(s: &Setup, m: &serde_json::Value, manifests: usize) {
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=verify_ok mode=full"), "{r:?}");
    assert!(
        r.stderr.contains(&format!("manifests={manifests}")),
        "{r:?}"
    );
    assert_same_tree(
        &std::path::PathBuf::from(m["snapshot"]["path"].as_str().unwrap()),
        &t,
    );
}

fn send_len(snapshot: &std::path::Path, compressed: bool) -> (usize, Vec<u8>) {
    let mut st = BtrfsCli::default()
        .send(snapshot, None, compressed)
        .unwrap();
    let mut v = Vec::new();
    st.read_to_end(&mut v).unwrap();
    st.finish().unwrap();
    (v.len(), v)
}

#[test]
fn compressed_full_and_incremental_restore_and_verify() {
    let Some(s) = setup("compressed_full_and_incremental_restore_and_verify", "") else {
        return;
    };
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("event=send_protocol protocol=2 compressed_data=true"),
        "{r:?}"
    );
    assert!(r.stderr.contains("compressed_data=true"), "{r:?}");
    let m = current(&s);
    assert_eq!(m["send_protocol"], 2);
    assert_eq!(m["compressed_data"], true);
    let snap = std::path::PathBuf::from(m["snapshot"]["path"].as_str().unwrap());
    let (plain, _) = send_len(&snap, false);
    let total = m["total_bytes"].as_u64().unwrap() as usize;
    eprintln!("stream: {total} bytes compressed, {plain} bytes with protocol 1");
    assert!(total * 10 < plain * 8, "{total} vs {plain}");
    // An incremental, compressed too.
    run(&format!(
        "for i in $(seq 1 20000); do echo \"$i POST /form 302 more text\"; done >> {}/access.log",
        s.vol("data").display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(s.backup(&["--once"]).code, 0);
    let m2 = current(&s);
    assert_eq!(
        (m2["kind"].as_str(), m2["send_protocol"].as_u64()),
        (Some("incremental"), Some(2))
    );
    restore_and_compare(&s, &m2, 2);
}

#[test]
fn a_chain_of_a_protocol_1_full_and_a_protocol_2_incremental_restores() {
    let Some(s) = setup(
        "a_chain_of_a_protocol_1_full_and_a_protocol_2_incremental_restores",
        "send_compressed_data = false",
    ) else {
        return;
    };
    assert_eq!(s.backup(&[]).code, 0);
    let m1 = current(&s);
    assert_eq!(
        (
            m1["send_protocol"].as_u64(),
            m1["compressed_data"].as_bool()
        ),
        (Some(1), Some(false))
    );
    // `false` is today's stream, byte for byte.
    let snap = std::path::PathBuf::from(m1["snapshot"]["path"].as_str().unwrap());
    let mut all = Vec::new();
    for c in m1["chunks"].as_array().unwrap() {
        all.extend(get_all(&s.moto.store(), c["key"].as_str().unwrap()).unwrap());
    }
    assert!(all == send_len(&snap, false).1, "protocol-1 stream differs");
    // The next backup with compressed data on.
    let text = std::fs::read_to_string(&s.cfg).unwrap().replace(
        "send_compressed_data = false",
        "send_compressed_data = true",
    );
    std::fs::write(&s.cfg, text).unwrap();
    run(&format!(
        "echo appended >> {}/access.log",
        s.vol("data").display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(s.backup(&["--once"]).code, 0);
    let m2 = current(&s);
    assert_eq!(
        (m2["kind"].as_str(), m2["send_protocol"].as_u64()),
        (Some("incremental"), Some(2))
    );
    restore_and_compare(&s, &m2, 2);
}
