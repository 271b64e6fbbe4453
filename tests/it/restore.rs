//! `btrfs_to_s3 restore` end to end: a tree with every kind of file, a full and two
//! incrementals, restored from `current.json` and from an older `--manifest-key`, each
//! checked against its source snapshot by `diff -r`, `find -printf` and `getfattr`; and
//! the refusals: a tampered chunk, a missing chunk, an existing target, archive classes;
//! and the verifier catching a changed owner (chown needs root); a full verification
//! leaving the source's pages out of the page cache.

use btrfs_to_s3::store::{get_all, Body, ErrorKind, ObjectStore, PutOptions};

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn sh_in(dir: &std::path::Path, script: &str) {
    run(&format!("cd {} && {script}", dir.display()));
}

/// Version 1 of the tree: regular, empty, sparse, large files, hardlinks, symlinks,
/// xattrs, odd permissions and ownership.
fn make_tree(v: &std::path::Path) {
    random_file(&v.join("large.bin"), 20 * MIB);
    sh_in(
        v,
        "mkdir -p docs/deep/er empty-dir && echo hello > docs/a.txt && : > docs/empty \
         && truncate -s 64M sparse.img && printf 'middle' | dd of=sparse.img bs=1 seek=33554432 conv=notrunc status=none \
         && ln docs/a.txt docs/hardlink-to-a && ln -s docs/a.txt link-rel && ln -s /etc/hostname link-abs \
         && setfattr -n user.colour -v blue docs/a.txt && setfattr -n user.empty docs/empty \
         && chmod 0600 docs/empty && chmod 4755 large.bin && chmod 1777 empty-dir && chmod 0750 docs/deep \
         && chown 1234:5678 docs/a.txt && chown 42:42 docs/deep/er \
         && for i in $(seq 1 50); do echo file $i > docs/deep/er/f$i; done",
    );
}

/// Version 2: a large file changed in the middle, a rename, a deletion, new files.
fn change_tree_1(v: &std::path::Path) {
    sh_in(
        v,
        "head -c 4096 /dev/urandom | dd of=large.bin bs=1 seek=10485760 conv=notrunc status=none \
         && mv docs/deep/er/f1 docs/renamed && rm docs/deep/er/f2 && echo new > new.txt \
         && setfattr -n user.colour -v green docs/a.txt && chmod 0644 docs/empty",
    );
}

/// Version 3: more renames and deletions, a directory removed, a hardlink added.
fn change_tree_2(v: &std::path::Path) {
    sh_in(
        v,
        "rm -r empty-dir && mv docs/deep docs/moved && ln new.txt new-hard \
         && printf 'tail' >> large.bin && rm link-abs && ln -s new.txt link-abs",
    );
}

fn manifest_key(s: &Setup, name: &str) -> String {
    s.get_json(&format!("backups/subvol/{name}/current.json"))["manifest_key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn full_and_two_incrementals_round_trip() {
    if !require_root("full_and_two_incrementals_round_trip") {
        return;
    }
    // Parts go through the spool in this test (spool_dir is set in [global] below).
    let spool = TempDir::new("spool");
    let global = format!(
        "spool_dir = \"{}\"\nspool_size_bytes = 20971520",
        spool.path().display()
    );
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD_IA",
        retain: 3,
        extra: &global,
        s3_extra: "spool_enabled = true",
        ..Default::default()
    });
    let v = s.vol("data");
    make_tree(&v);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("buffers=4 spool=true"), "{r:?}");
    let full = manifest_key(&s, "data");
    change_tree_1(&v);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(s.backup(&["--once"]).code, 0);
    let inc1 = manifest_key(&s, "data");
    change_tree_2(&v);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(s.backup(&["--once"]).code, 0);
    let inc2 = manifest_key(&s, "data");
    assert!(inc1.contains("/incremental/") && inc2.contains("/incremental/"));

    // From current.json (the chain full -> inc1 -> inc2).
    let t = s.fs.path("restored-current");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("event=restore_metrics subvolume=data"),
        "{r:?}"
    );
    assert!(r.stderr.contains("manifests=3"), "{r:?}");
    assert!(r.stderr.contains("event=verify_ok mode=full"), "{r:?}");
    let src = std::path::PathBuf::from(s.get_json(&inc2)["snapshot"]["path"].as_str().unwrap());
    assert_same_tree(&src, &t);
    let described = describe_tree(&t);
    assert!(
        described.contains("user.colour=\"green\"") && described.contains("4755"),
        "{described}"
    );
    assert_eq!(
        run(&format!("btrfs property get {} ro", t.display())).trim(),
        "ro=false"
    );
    let ino = |p: &str| run(&format!("stat -c %i {}", t.join(p).display()));
    assert_eq!(ino("new.txt"), ino("new-hard"), "hardlink kept");
    assert!(s.staging_left(&s.fs.mnt).is_empty());

    // From older manifests, each against its own snapshot. The inc1 target is relative:
    // it lands under restore.target_base_dir (the test filesystem), not the current dir.
    for (key, tag) in [(&inc1, "inc1"), (&full, "full")] {
        let t = s.fs.path(&format!("restored-{tag}"));
        let arg = match tag {
            "inc1" => format!("restored-{tag}"),
            _ => t.display().to_string(),
        };
        let r = s.restore(&[
            "--subvolume",
            "data",
            "--target",
            &arg,
            "--manifest-key",
            key,
            "--verify",
            "sample",
        ]);
        assert_eq!(r.code, 0, "{tag}: {r:?}");
        let src = std::path::PathBuf::from(s.get_json(key)["snapshot"]["path"].as_str().unwrap());
        assert_same_tree(&src, &t);
    }

    // An existing target is refused, and left alone.
    let before = describe_tree(&t);
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{r:?}");
    assert_eq!(describe_tree(&t), before);

    // A manifest of another subvolume (outside that subvolume's prefix), and a missing
    // manifest key, name the key.
    let r = s.restore(&[
        "--subvolume",
        "other",
        "--target",
        "/tmp/x",
        "--manifest-key",
        &full,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&full)
            && r.stderr
                .contains("is not a key under backups/subvol/other/"),
        "{r:?}"
    );
    let t2 = s.fs.path("never");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t2.to_str().unwrap(),
        "--manifest-key",
        "backups/subvol/data/full/nope.json",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("backups/subvol/data/full/nope.json is missing"),
        "{r:?}"
    );
    assert!(!t2.exists());
}

fn flip_byte(store: &dyn ObjectStore, key: &str, at: usize) {
    let mut data = get_all(store, key).unwrap();
    data[at] ^= 0x01;
    let opts = PutOptions {
        storage_class: "STANDARD".into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/octet-stream",
        kms_key_id: None,
        lock: None,
    };
    store.put_object(key, Body::Bytes(&data), &opts).unwrap();
}

#[test]
fn tampered_or_missing_chunks_fail_and_leave_nothing() {
    if !require_root("tampered_or_missing_chunks_fail_and_leave_nothing") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    make_tree(&s.vol("data"));
    assert_eq!(s.backup(&[]).code, 0);
    let key = manifest_key(&s, "data");
    let m = s.get_json(&key);
    let chunks: Vec<(String, String)> = m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().into(),
                c["sha256"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(chunks.len() >= 2);
    let store = s.moto.store();
    let target = s.fs.path("restored");
    let t = target.to_str().unwrap();

    // One byte flipped in the middle of the second chunk (same size).
    flip_byte(&store, &chunks[1].0, 6 * MIB + 17);
    let r = s.restore(&["--subvolume", "data", "--target", t]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "chunk {}: SHA-256 mismatch (manifest {}",
            chunks[1].0, chunks[1].1
        )),
        "{r:?}"
    );
    assert!(
        !target.exists() && s.staging_left(&s.fs.mnt).is_empty(),
        "{r:?}"
    );
    flip_byte(&store, &chunks[1].0, 6 * MIB + 17);

    // The first byte of the stream: btrfs receive fails before the chunk's hash is known.
    flip_byte(&store, &chunks[0].0, 0);
    let r = s.restore(&["--subvolume", "data", "--target", t]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("chunk {}: SHA-256 mismatch", chunks[0].0)),
        "{r:?}"
    );
    assert!(
        !target.exists() && s.staging_left(&s.fs.mnt).is_empty(),
        "{r:?}"
    );
    flip_byte(&store, &chunks[0].0, 0);

    // A doctored copy of the manifest, under its own key, restored by that key.
    let restore_doctored = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut doctored = m.clone();
        edit(&mut doctored);
        let dkey = format!("backups/subvol/data/full/{name}");
        let opts = PutOptions {
            storage_class: "STANDARD".into(),
            sse: btrfs_to_s3::config::Sse::Aes256,
            content_type: "application/json",
            kms_key_id: None,
            lock: None,
        };
        let body = serde_json::to_vec(&doctored).unwrap();
        store.put_object(&dkey, Body::Bytes(&body), &opts).unwrap();
        s.restore(&[
            "--subvolume",
            "data",
            "--target",
            t,
            "--manifest-key",
            &dkey,
        ])
    };

    // A missing chunk: a manifest naming a chunk that is not in the bucket.
    let r = restore_doctored("manifest-doctored.json", &|d| {
        d["chunks"][1]["key"] = serde_json::json!("backups/subvol/data/full/chunk-gone.bin");
    });
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("chunk backups/subvol/data/full/chunk-gone.bin is missing"),
        "{r:?}"
    );
    assert!(!target.exists());

    // A manifest whose stream hash disagrees with its (intact) chunks.
    let wrong = "0".repeat(64);
    let r = restore_doctored("manifest-bad-stream.json", &|d| {
        d["stream_sha256"] = serde_json::json!(wrong);
    });
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("the manifest's stream_sha256 is {wrong}")),
        "{r:?}"
    );
    assert!(
        !target.exists() && s.staging_left(&s.fs.mnt).is_empty(),
        "{r:?}"
    );

    // With the damage undone the same restore works.
    let r = s.restore(&["--subvolume", "data", "--target", t]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(
        &std::path::PathBuf::from(m["snapshot"]["path"].as_str().unwrap()),
        &target,
    );
}

#[test]
fn deep_archive_chunks_go_through_the_archive_path() {
    if !require_root("deep_archive_chunks_go_through_the_archive_path") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "DEEP_ARCHIVE",
        ..Default::default()
    });
    std::fs::write(s.vol("data").join("f"), vec![5u8; 3 * MIB]).unwrap();
    assert_eq!(s.backup(&[]).code, 0);
    let m = s.get_json(&manifest_key(&s, "data"));
    let chunk = m["chunks"][0]["key"].as_str().unwrap().to_string();
    let store = s.moto.store();
    // moto, like S3, refuses to read an archived object.
    let e = get_all(&store, &chunk).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Archived, "{e}");

    let target = s.fs.path("restored");
    let t = target.to_str().unwrap();
    let r = s.restore(&["--subvolume", "data", "--target", t, "--no-wait-restore"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("rerun the same restore command later"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("event=archive_restore_requested"),
        "{r:?}"
    );
    assert!(!target.exists());

    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t,
        "--restore-timeout",
        "120",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("archive_wait_seconds="), "{r:?}");
    assert_same_tree(
        &std::path::PathBuf::from(m["snapshot"]["path"].as_str().unwrap()),
        &target,
    );
}

/// Bytes of `f` in the page cache (util-linux `fincore`).
fn resident(f: &std::path::Path) -> u64 {
    let out = run(&format!(
        "fincore --bytes --noheadings --output RES {}",
        f.display()
    ));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

#[test]
fn full_verification_leaves_the_source_out_of_the_page_cache() {
    if !require_root("full_verification_leaves_the_source_out_of_the_page_cache") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    let v = s.vol("data");
    random_file(&v.join("big.bin"), 8 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let key = manifest_key(&s, "data");
    let src = std::path::PathBuf::from(s.get_json(&key)["snapshot"]["path"].as_str().unwrap());
    let f = src.join("big.bin");
    run(&format!("cat {} > /dev/null", f.display()));
    assert!(
        resident(&f) >= 4 * MIB as u64,
        "the read put it in the cache"
    );
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=verify_ok mode=full"), "{r:?}");
    // The source was read once, for its hashes, and its pages dropped behind the reads.
    assert_eq!(resident(&f), 0, "source pages left in the page cache");
    // The comparison hashing the source itself (no hashes computed ahead) drops them too,
    // and leaves the restored tree's.
    use btrfs_to_s3::config::VerifyMode;
    run(&format!("cat {} > /dev/null", f.display()));
    run(&format!("cat {} > /dev/null", t.join("big.bin").display()));
    btrfs_to_s3::treecmp::compare(&src, &t, VerifyMode::Full, 5).unwrap();
    assert_eq!(resident(&f), 0, "source pages left by the comparison");
    assert!(
        resident(&t.join("big.bin")) >= 4 * MIB as u64,
        "the restored file's pages were dropped"
    );
    assert_same_tree(&src, &t);
}

#[test]
fn verifier_names_owner_differences() {
    if !require_root("verifier_names_owner_differences") {
        return;
    }
    use btrfs_to_s3::config::VerifyMode;
    use btrfs_to_s3::treecmp::compare;
    let t = TempDir::new("verify-owner");
    let (a, b) = (t.path().join("src"), t.path().join("dst"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), "x").unwrap();
        std::os::unix::fs::symlink("f", d.join("sub/l")).unwrap();
    }
    std::os::unix::fs::chown(a.join("sub/f"), Some(1234), Some(5678)).unwrap();
    let e = format!("{:#}", compare(&a, &b, VerifyMode::Sample, 5).unwrap_err());
    assert!(
        e.contains("sub/f: owner 1234:5678 in the source, 0:0 restored"),
        "{e}"
    );
    std::os::unix::fs::chown(b.join("sub/f"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(a.join("sub/l"), Some(42), Some(42)).unwrap();
    let e = format!("{:#}", compare(&a, &b, VerifyMode::Full, 5).unwrap_err());
    assert!(e.contains("sub/l: owner 42:42 in the source"), "{e}");
    std::os::unix::fs::lchown(b.join("sub/l"), Some(42), Some(42)).unwrap();
    compare(&a, &b, VerifyMode::Full, 5).unwrap();
}

#[test]
fn a_full_target_filesystem_is_named_and_leaves_nothing() {
    if !require_root("a_full_target_filesystem_is_named_and_leaves_nothing") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    let data = s.vol("data");
    random_file(&data.join("big.bin"), 200 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    // The stream is larger than this whole file system: refused before any download.
    let small = BtrfsFs::new(128);
    let target = small.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("bytes free, and this chain needs about")
            && r.stderr.contains("--skip-space-check"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("event=restore_receive"), "{r:?}");
    assert!(!target.exists() && s.staging_left(&small.mnt).is_empty());
    // Told to go on anyway, btrfs receive runs out of space, and says so.
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        target.to_str().unwrap(),
        "--skip-space-check",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("btrfs receive: ") && r.stderr.contains("No space left on device"),
        "the error says what btrfs receive said: {r:?}"
    );
    assert_eq!(
        r.stderr
            .trim()
            .lines()
            .last()
            .map(|l| l.starts_with("btrfs_to_s3: error: ")),
        Some(true),
        "{r:?}"
    );
    assert!(
        !target.exists() && s.staging_left(&small.mnt).is_empty(),
        "{r:?}"
    );
}

#[test]
fn a_target_that_is_not_on_btrfs_is_refused_before_any_download() {
    if !require_root("a_target_that_is_not_on_btrfs_is_refused_before_any_download") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "x").unwrap();
    assert_eq!(s.backup(&[]).code, 0);
    let plain = TempDir::new("not-btrfs-target");
    let target = plain.path().join("restored");
    let r = s.restore(&["--subvolume", "data", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("not btrfs; btrfs receive needs a btrfs filesystem"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("event=restore_receive"), "{r:?}");
    assert!(!target.exists());
}

/// The requests moto recorded (method, path and query) while `f` ran; recording is on
/// only for `f` (`MOTO_RECORDER_FILEPATH` names the file).
fn recorded(s: &Setup, f: impl FnOnce()) -> Vec<(String, String)> {
    let api = |what: &str| {
        ureq::post(&format!("{}/moto-api/recorder/{what}", s.moto.endpoint))
            .send_empty()
            .unwrap_or_else(|e| panic!("moto recorder {what}: {e}"))
            .into_body()
            .read_to_string()
            .expect("moto recorder reply")
    };
    api("reset-recording");
    api("start-recording");
    f();
    api("stop-recording");
    let log = ureq::get(&format!(
        "{}/moto-api/recorder/download-recording",
        s.moto.endpoint
    ))
    .call()
    .expect("moto recording")
    .into_body()
    .with_config()
    .limit(64 << 20)
    .read_to_string()
    .expect("moto recording body");
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("recording line");
            let url = v["url"].as_str().unwrap_or_default();
            let path = url.splitn(4, '/').nth(3).unwrap_or_default();
            (
                v["method"].as_str().unwrap_or_default().to_string(),
                format!("/{path}"),
            )
        })
        .collect()
}

#[test]
fn plan_lists_classes_tiers_and_costs_and_spends_nothing() {
    if !require_root("plan_lists_classes_tiers_and_costs_and_spends_nothing") {
        return;
    }
    let rec = TempDir::new("moto-recording");
    let rec_file = rec.path().join("recording.jsonl");
    let env = [("MOTO_RECORDER_FILEPATH", rec_file.to_str().unwrap())];
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        moto_env: &env,
        ..Default::default()
    });
    // A STANDARD full, then a DEEP_ARCHIVE and a GLACIER incremental.
    random_file(&s.vol("data").join("a"), 20 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let full = manifest_key(&s, "data");
    let cfg = std::fs::read_to_string(&s.cfg).unwrap();
    let mut keys = vec![full];
    for (class, file, size) in [("DEEP_ARCHIVE", "b", 14 * MIB), ("GLACIER", "c", 3 * MIB)] {
        let text = cfg.replace(
            "storage_class_chunks = \"STANDARD\"",
            &format!("storage_class_chunks = \"{class}\""),
        );
        std::fs::write(&s.cfg, text).unwrap();
        random_file(&s.vol("data").join(file), size);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let r = s.backup(&["--once"]);
        assert_eq!(r.code, 0, "{r:?}");
        keys.push(manifest_key(&s, "data"));
    }
    // What the manifests say: objects and bytes per class, stream sizes.
    let mut want: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut chunk_keys = Vec::new();
    let mut totals = Vec::new();
    for k in &keys {
        let m = s.get_json(k);
        let class = m["s3"]["storage_class"].as_str().unwrap().to_string();
        totals.push(m["total_bytes"].as_u64().unwrap());
        for c in m["chunks"].as_array().unwrap() {
            let e = want.entry(class.clone()).or_default();
            e.0 += 1;
            e.1 += c["size"].as_u64().unwrap();
            chunk_keys.push(c["key"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(want.len(), 3, "{want:?}");

    let target = s.fs.path("restored");
    let t = target.to_str().unwrap().to_string();
    let mut out = None;
    let requests = recorded(&s, || {
        out = Some(s.restore(&["--subvolume", "data", "--target", &t, "--plan", "--json"]));
    });
    let r = out.unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    let p: serde_json::Value = serde_json::from_str(&r.stdout).expect("plan JSON");
    let listed: Vec<&str> = p["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, keys, "oldest first");
    for c in p["storage_classes"].as_array().unwrap() {
        let class = c["class"].as_str().unwrap();
        let (n, b) = want[class];
        assert_eq!(
            (c["objects"].as_u64(), c["bytes"].as_u64()),
            (Some(n), Some(b)),
            "{c}"
        );
        let readable = if class == "STANDARD" { n } else { 0 };
        assert_eq!(c["readable_objects"].as_u64(), Some(readable), "{c}");
        assert_eq!(c["to_restore_objects"].as_u64(), Some(n - readable), "{c}");
    }
    let gib = (1u64 << 30) as f64;
    let (deep, glacier) = (want["DEEP_ARCHIVE"], want["GLACIER"]);
    let tier = |name: &str| {
        p["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == name)
            .unwrap()
            .clone()
    };
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-12;
    let standard = tier("Standard");
    assert_eq!(
        standard["restore_requests"].as_u64(),
        Some(deep.0 + glacier.0)
    );
    assert_eq!(standard["thaw_hours_max"].as_f64(), Some(12.0));
    assert!(
        close(
            &standard["retrieval_usd"],
            deep.1 as f64 / gib * 0.02 + glacier.1 as f64 / gib * 0.01
        ),
        "{standard}"
    );
    assert!(
        close(
            &standard["request_usd"],
            deep.0 as f64 * 0.10 / 1000.0 + glacier.0 as f64 * 0.05 / 1000.0
        ),
        "{standard}"
    );
    let bulk = tier("Bulk");
    assert_eq!(bulk["thaw_hours_max"].as_f64(), Some(48.0));
    assert!(
        close(&bulk["retrieval_usd"], deep.1 as f64 / gib * 0.0025),
        "{bulk}"
    );
    let expedited = tier("Expedited");
    assert_eq!(expedited["offered"], false, "{expedited}");
    assert_eq!(expedited["not_offered_for"][0], "DEEP_ARCHIVE");
    assert_eq!(p["tier"], "Standard");
    let need = totals[0] + totals[1].max(totals[2]);
    assert_eq!(p["target"]["needed_bytes"].as_u64(), Some(need));
    assert!(p["target"]["free_bytes"].as_u64().unwrap() > need, "{p}");
    assert_eq!(p["target"]["filesystem"], "btrfs");
    assert_eq!(p["prices"]["region"], "us-east-1");

    // The server saw one HEAD per chunk and no RestoreObject, no GET of a chunk.
    let heads = requests
        .iter()
        .filter(|(m, u)| m == "HEAD" && chunk_keys.iter().any(|k| u.ends_with(k.as_str())))
        .count();
    assert_eq!(heads, chunk_keys.len(), "{requests:?}");
    let spent: Vec<&(String, String)> = requests
        .iter()
        .filter(|(m, u)| {
            u.contains("restore")
                || (m == "GET" && chunk_keys.iter().any(|k| u.contains(k.as_str())))
                || (m != "GET" && m != "HEAD")
        })
        .collect();
    assert!(spent.is_empty(), "{spent:?}");
    assert!(!target.exists());

    // The text form, and a real restore prints the same summary before it spends.
    let r = s.restore(&["--subvolume", "data", "--target", &t, "--plan"]);
    assert_eq!(r.code, 0, "{r:?}");
    let summary = r.stdout.lines().next().unwrap().to_string();
    assert!(
        summary.starts_with("restore plan for data: 3 manifests")
            && summary.contains("tier Standard:")
            && r.stdout.contains("nothing was requested or downloaded"),
        "{r:?}"
    );
    let r = s.restore(&["--subvolume", "data", "--target", &t, "--no-wait-restore"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout.lines().next(), Some(summary.as_str()), "{r:?}");
    // With the restores requested, a new plan sees them under way.
    let r = s.restore(&["--subvolume", "data", "--target", &t, "--plan", "--json"]);
    let p: serde_json::Value = serde_json::from_str(&r.stdout).expect("plan JSON");
    let under_way: u64 = p["storage_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["restoring_objects"].as_u64().unwrap() + c["readable_objects"].as_u64().unwrap())
        .sum();
    assert_eq!(under_way, chunk_keys.len() as u64, "{p}");
}
