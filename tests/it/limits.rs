//! Objects a bucket writer plants to exhaust root's memory (issue 20, item 4): an
//! oversized object at a manifest key or at `current.json` is read no further than its
//! cap (64 MiB, 1 MiB) by `list`, `verify`, `restore` and the backup's parent check, and
//! each names the key, the object's size and the cap. The code before the fix read any
//! size whole (a 400 MB object: 400 MB of memory, then "not valid JSON").

use btrfs_to_s3::store::{Body, ObjectStore, PutOptions};

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn opts() -> PutOptions {
    PutOptions {
        storage_class: "STANDARD".into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/json",
        kms_key_id: None,
        lock: None,
    }
}

#[test]
fn planted_oversized_manifest_and_pointer_are_refused_naming_key_size_and_cap() {
    if !require_root("planted_oversized_manifest_and_pointer_are_refused_naming_key_size_and_cap") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let pointer = "backups/subvol/data/current.json";
    let key = s.get_json(pointer)["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = s.cfg.display().to_string();

    // The manifest current.json names becomes 65 MiB of junk (one over the cap).
    let junk = vec![b'{'; 65 * MIB];
    s.moto
        .store()
        .put_object(&key, Body::Bytes(&junk), &opts())
        .expect("planting the object");
    drop(junk);
    let size = (65 * MIB).to_string();
    let cap = "67108864 bytes (64 MiB)";
    let names_it = |r: &RunResult, what: &str| {
        let all = format!("{}{}", r.stdout, r.stderr);
        for w in [
            format!("{what} is too large"),
            format!("the object is {size} bytes"),
            format!("more than the cap of {cap}"),
        ] {
            assert!(all.contains(&w), "lacks {w:?}: {r:?}");
        }
    };

    // list: the listing shows the size, so the object is not even fetched.
    let r = run_bin(&["list", "--config", &cfg]);
    assert_eq!(r.code, 0, "{r:?}");
    names_it(&r, &format!("manifest {key}"));

    // verify and restore GET it through the bounded read (and HEAD it for the size).
    let r = run_bin(&["verify", "--config", &cfg, "--subvolume", "data"]);
    assert_ne!(r.code, 0, "{r:?}");
    names_it(&r, &format!("manifest {key}"));
    let target = s.fs.path("restored");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        &target.display().to_string(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    names_it(&r, &format!("manifest {key}"));
    assert!(!target.exists());

    // The backup's parent check finds the chain damaged and makes a full instead.
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    names_it(&r, &format!("manifest {key}"));
    let last = s.state_json()["subvolumes"]["data"]["last_manifest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last != key && last.contains("/full/"), "{last}");

    // current.json itself: 1 MiB and one byte.
    let junk = vec![b'{'; MIB + 1];
    s.moto
        .store()
        .put_object(pointer, Body::Bytes(&junk), &opts())
        .expect("planting the pointer");
    let r = run_bin(&["list", "--config", &cfg]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "current.json: DAMAGED: pointer {pointer} is too large: the object is {} bytes, \
             more than the cap of 1048576 bytes (1 MiB)",
            MIB + 1
        )),
        "{r:?}"
    );
}
