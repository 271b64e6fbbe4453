//! Smoke test of the rig itself: a loop-mounted btrfs, a subvolume, a read-only snapshot,
//! `btrfs send` bytes PUT to moto and read back with GET.

use std::io::Read;

use btrfs_to_s3::btrfs::{Btrfs, BtrfsCli};
use btrfs_to_s3::store::{get_all, Body, ObjectStore, PutOptions};

use crate::support::*;

#[test]
fn btrfs_send_bytes_round_trip_through_moto() {
    if !require_root("btrfs_send_bytes_round_trip_through_moto") {
        return;
    }
    let fs = BtrfsFs::new(256);
    let vol = fs.subvolume("data");
    std::fs::write(vol.join("hello.txt"), b"hello btrfs\n").unwrap();
    std::fs::create_dir_all(fs.path("snaps")).unwrap();
    let snap = fs.path("snaps/data__20250101T020000Z__full");
    let b = BtrfsCli::default();
    b.snapshot_readonly(&vol, &snap).unwrap();
    let info = b.show(&snap).unwrap();
    assert!(info.uuid.is_some(), "{info:?}");

    let mut send = b.send(&snap, None, false).unwrap();
    let mut stream = Vec::new();
    send.read_to_end(&mut stream).unwrap();
    send.finish().unwrap();
    assert!(stream.starts_with(b"btrfs-stream\0"), "not a send stream");

    let moto = Moto::start();
    let store = moto.store();
    let opts = PutOptions {
        storage_class: "STANDARD".into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/octet-stream",
        kms_key_id: None,
        lock: None,
    };
    let etag = store
        .put_object("smoke/stream.bin", Body::Bytes(&stream), &opts)
        .unwrap();
    assert!(!etag.is_empty());
    assert_eq!(get_all(&store, "smoke/stream.bin").unwrap(), stream);
    let meta = store.head("smoke/stream.bin").unwrap().unwrap();
    assert_eq!(meta.size, stream.len() as u64);
    assert_eq!(meta.sse.as_deref(), Some("AES256"));
    assert_eq!(store.head("smoke/missing").unwrap(), None);
    assert_eq!(moto.list_keys(), vec!["smoke/stream.bin".to_string()]);

    // A failed send (no such snapshot) reports btrfs's own stderr.
    let mut bad = b.send(&fs.path("snaps/nope"), None, false).unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink);
    let e = bad.finish().unwrap_err().to_string();
    assert!(e.contains("btrfs send of") && e.contains("nope"), "{e}");
}
