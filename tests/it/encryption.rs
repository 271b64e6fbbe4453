//! Client-side encryption (issue 23) on the real rig: an encrypted full and incremental
//! restored to the same tree; the README's manual recovery (Debian's `age -d` on each
//! chunk, `cat`, `btrfs receive`) followed literally; a marker written into the source
//! appearing in no stored object; a wrong identity, a readable identity file, a tampered
//! chunk and swapped chunks refused with nothing left at the target; resume after
//! `kill -9` within the bound with encryption on; list and verify with recipients only;
//! no secret in trace-level logs.

use std::path::{Path, PathBuf};
use std::process::Command;

use btrfs_to_s3::store::{get_all, Body, ObjectStore, PutOptions};

use crate::support::*;

const MIB: usize = 1024 * 1024;
/// 64 bytes written many times into the source: no stored object may contain them.
const MARKER: &str = "MARKER-7f3a-plaintext-must-never-reach-the-bucket-0123456789abcd";

/// Fails (never skips) when Debian's age tools are missing, saying how to get them.
fn require_age() {
    for tool in ["age", "age-keygen"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "the encryption tests need `{tool}` (the Go reference implementation): \
             install it with `apt-get install -y age`"
        );
    }
}

/// `age-keygen -o DIR/NAME`: the identity file and its recipient.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run(&format!("age-keygen -o {} 2>/dev/null", path.display()));
    let public = run(&format!("age-keygen -y {}", path.display()));
    (path, public.trim().to_string())
}

fn fingerprint(recipient: &str) -> String {
    btrfs_to_s3::age::Recipient::parse(recipient)
        .expect("recipient")
        .fingerprint()
}

fn manifest_key(s: &Setup) -> String {
    s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .expect("manifest_key")
        .to_string()
}

/// Appends `[encryption]` with these recipients to the setup's config.
fn encrypt_to(s: &Setup, recipients: &[&str]) {
    let list: Vec<String> = recipients.iter().map(|r| format!("\"{r}\"")).collect();
    let mut text = std::fs::read_to_string(&s.cfg).expect("config");
    text.push_str(&format!(
        "[encryption]\nrecipients = [{}]\n",
        list.join(", ")
    ));
    std::fs::write(&s.cfg, text).expect("config");
}

fn put(store: &dyn ObjectStore, key: &str, bytes: &[u8]) {
    store
        .put_object(
            key,
            Body::Bytes(bytes),
            &PutOptions {
                storage_class: "STANDARD".into(),
                sse: btrfs_to_s3::config::Sse::Aes256,
                content_type: "application/octet-stream",
                kms_key_id: None,
                lock: None,
            },
        )
        .expect("PUT");
}

fn source_tree(v: &Path) {
    random_file(&v.join("random.bin"), 14 * MIB);
    let line = format!("{MARKER}\n");
    std::fs::write(v.join("marker.txt"), line.repeat(20_000)).expect("marker");
    run(&format!(
        "cd {} && mkdir -p d && echo one > d/a && ln -s a d/link && setfattr -n user.k -v secret-ish d/a",
        v.display()
    ));
}

#[test]
fn encrypted_backups_restore_and_recover_with_age_and_hold_only_ciphertext() {
    if !require_root("encrypted_backups_restore_and_recover_with_age_and_hold_only_ciphertext") {
        return;
    }
    require_age();
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        chunk_size: 6 * MIB as u64,
        ..Default::default()
    });
    let keys = TempDir::new("keys");
    let (id1, r1) = keygen(keys.path(), "key.txt");
    let (id2, r2) = keygen(keys.path(), "recovery.txt");
    let (other, _) = keygen(keys.path(), "other.txt");
    encrypt_to(&s, &[&r1, &r2]);
    let v = s.vol("data");
    source_tree(&v);

    let dry = s.backup(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains(&format!(
            "encrypted (age) to 2 recipients: {}, {}",
            fingerprint(&r1),
            fingerprint(&r2)
        )),
        "{dry:?}"
    );

    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let full = manifest_key(&s);
    let m = s.get_json(&full);
    assert_eq!(m["encryption"]["scheme"], "age-v1");
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([fingerprint(&r1), fingerprint(&r2)])
    );
    assert!(m.get("stream_sha256").is_none(), "{m}");
    let chunks = m["chunks"].as_array().expect("chunks").clone();
    assert!(chunks.len() >= 3, "{m}");

    run(&format!(
        "echo two >> {}/d/a && rm {}/d/link",
        v.display(),
        v.display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    let inc = manifest_key(&s);
    assert!(inc.contains("/incremental/"), "{inc}");
    assert!(s.get_json(&inc)["encryption"].is_object());

    // No stored object holds the marker (nor the manifests, nor current.json).
    let store = s.moto.store();
    let all = s.moto.list_keys();
    assert!(all.len() > chunks.len(), "{all:?}");
    for key in &all {
        let body = get_all(&store, key).expect("GET");
        assert!(
            !body.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{key} holds the plaintext marker"
        );
    }

    // Restore the chain with the main key, then the full with the recovery key.
    let t = s.fs.path("restored");
    let id1s = id1.display().to_string();
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
        "--identity",
        &id1s,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=verify_ok mode=full"), "{r:?}");
    let snap = |key: &str| PathBuf::from(s.get_json(key)["snapshot"]["path"].as_str().unwrap());
    assert_same_tree(&snap(&inc), &t);
    let t2 = s.fs.path("restored-full");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t2.to_str().unwrap(),
        "--manifest-key",
        &full,
        "--identity",
        id2.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&snap(&full), &t2);

    // The README's recovery: each chunk in manifest order through `age -d`, then cat,
    // then btrfs receive.
    let work = TempDir::new("recover");
    let mut files = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let enc = work.path().join(format!("{i}.age"));
        std::fs::write(&enc, get_all(&store, c["key"].as_str().unwrap()).unwrap()).unwrap();
        let plain = work.path().join(format!("{i}.bin"));
        run(&format!(
            "age -d -i {} -o {} {}",
            id1.display(),
            plain.display(),
            enc.display()
        ));
        files.push(plain.display().to_string());
    }
    let into = s.fs.path("manual");
    std::fs::create_dir_all(&into).unwrap();
    run(&format!(
        "cat {} | btrfs receive {} 2>&1",
        files.join(" "),
        into.display()
    ));
    let received = into.join(snap(&full).file_name().unwrap());
    assert_same_tree(&snap(&full), &received);
    run(&format!(
        "btrfs subvolume delete {} >/dev/null",
        received.display()
    ));

    // A wrong identity: refused before anything is downloaded, nothing at the target.
    let bad = s.fs.path("bad");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        bad.to_str().unwrap(),
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("this identity cannot decrypt backups for recipients")
            && r.stderr.contains(&fingerprint(&r1)),
        "{r:?}"
    );
    assert!(!bad.exists() && s.staging_left(&s.fs.mnt).is_empty());
    // An identity file others may read is refused.
    run(&format!("chmod 0644 {}", id1.display()));
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        bad.to_str().unwrap(),
        "--identity",
        &id1s,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&id1s) && r.stderr.contains("others"),
        "{r:?}"
    );
    run(&format!("chmod 0600 {}", id1.display()));

    // The doctored chain below must fail the restore from the full, leaving nothing.
    let restore_full = || {
        s.restore(&[
            "--subvolume",
            "data",
            "--target",
            bad.to_str().unwrap(),
            "--manifest-key",
            &full,
            "--identity",
            &id1s,
        ])
    };
    // A tampered chunk (one ciphertext byte) fails naming it.
    let k0 = chunks[1]["key"].as_str().unwrap().to_string();
    let original = get_all(&store, &k0).unwrap();
    let mut changed = original.clone();
    let at = changed.len() / 2;
    changed[at] ^= 1;
    put(&store, &k0, &changed);
    let r = restore_full();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&k0), "{r:?}");
    assert!(!bad.exists() && s.staging_left(&s.fs.mnt).is_empty());
    put(&store, &k0, &original);

    // Two whole chunks swapped in the manifest's clear part (each entry still matches
    // its object): the sealed header digests catch it, naming the chunk.
    let mut edited = s.get_json(&full);
    let arr = edited["chunks"].as_array_mut().unwrap();
    arr.swap(0, 1);
    let key0 = arr[0]["key"].as_str().unwrap().to_string();
    put(&store, &full, &serde_json::to_vec_pretty(&edited).unwrap());
    let r = restore_full();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&key0) && r.stderr.contains("not the one recorded"),
        "{r:?}"
    );
    assert!(!bad.exists() && s.staging_left(&s.fs.mnt).is_empty());
    put(&store, &full, &serde_json::to_vec_pretty(&m).unwrap());

    // A truncated chunk whose clear entry was made to match: the age file is cut short.
    let last = chunks.len() - 1;
    let kl = chunks[last]["key"].as_str().unwrap().to_string();
    let whole = get_all(&store, &kl).unwrap();
    let cut = &whole[..whole.len() - 100];
    put(&store, &kl, cut);
    let mut edited = m.clone();
    edited["chunks"][last]["size"] = serde_json::json!(cut.len());
    edited["chunks"][last]["sha256"] = serde_json::json!(sha256_hex(cut));
    edited["chunks"][last]["etag"] = serde_json::Value::Null;
    put(&store, &full, &serde_json::to_vec_pretty(&edited).unwrap());
    let r = restore_full();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&kl), "{r:?}");
    assert!(!bad.exists() && s.staging_left(&s.fs.mnt).is_empty());
    put(&store, &kl, &whole);
    put(&store, &full, &serde_json::to_vec_pretty(&m).unwrap());

    // With recipients only: list and verify --deep (ciphertext), and verify --deep with
    // the identity (plaintext too).
    let cfg = s.cfg.display().to_string();
    let r = run_bin(&["list", "--config", &cfg]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&fingerprint(&r1)), "{r:?}");
    let r = run_bin(&["verify", "--config", &cfg, "--deep"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run_bin(&["verify", "--config", &cfg, "--deep", "--identity", &id1s]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("plaintext"), "{r:?}");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Every `file_key` the journal at `path` holds (hex).
fn journal_file_keys(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("journal")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["record"] == "sealed")
        .map(|r| r["file_key"].as_str().expect("file_key").to_string())
        .collect()
}

#[test]
fn encrypted_resume_after_kill_9_stays_within_the_bound_and_leaks_no_key() {
    if !require_root("encrypted_resume_after_kill_9_stays_within_the_bound_and_leaks_no_key") {
        return;
    }
    require_age();
    const CHUNK: u64 = 10 * MIB as u64;
    const PART: u64 = 5 * MIB as u64;
    const CONC: u64 = 3;
    let s = Setup::new(SetupOpts {
        chunk_size: CHUNK,
        part_size: PART,
        concurrency: CONC as u32,
        retain: 1,
        storage_class_chunks: "STANDARD",
        fs_mib: 768,
        ..Default::default()
    });
    // The setup logs at debug, the most verbose level: no key may reach it.
    let keys = TempDir::new("keys");
    let (id, r1) = keygen(keys.path(), "key.txt");
    encrypt_to(&s, &[&r1]);
    random_file(&s.vol("data").join("a.bin"), 29 * MIB);
    random_file(&s.vol("data").join("b.bin"), 3 * MIB);
    let journal = s.state.with_file_name("state.json.resume-data.jsonl");
    let secret = std::fs::read_to_string(&id).unwrap();
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("secret line")
        .to_string();
    let cfg = s.cfg.display().to_string();
    let ids = id.display().to_string();
    let mut report = Vec::new();
    for point in [
        "after_part_journaled:3",
        "after_upload_created:2",
        "after_chunk_journaled:2",
        "after_part_request:6",
    ] {
        let _ = std::fs::remove_file(&s.state);
        let killed = output(s.backup_cmd(&[]).env("BTRFS_TO_S3_FAILPOINT", point));
        assert_eq!(killed.code, -1, "{point}: not killed: {killed:?}");
        let mode = std::fs::metadata(&journal).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "{point}"
        );
        let file_keys = journal_file_keys(&journal);
        assert!(!file_keys.is_empty(), "{point}: no sealed record");
        let stored = btrfs_to_s3::journal::load(&journal)
            .unwrap()
            .unwrap()
            .stored_bytes();
        let r = s.backup(&[]);
        assert_eq!(r.code, 0, "{point}: {r:?}");
        assert!(r.stderr.contains("event=backup_resumed"), "{point}: {r:?}");
        assert!(
            !journal.exists(),
            "{point}: the journal outlived the publish"
        );
        let m = s.get_json(&manifest_key(&s));
        assert!(m["encryption"].is_object());
        let total = m["total_bytes"].as_u64().unwrap();
        let uploaded = event_field(&r.stderr, "backup_metrics", "uploaded_bytes")
            .map(|v| v.parse::<u64>().unwrap())
            .unwrap_or(0);
        assert!(
            uploaded <= total - stored + CONC * PART,
            "{point}: uploaded {uploaded} of {total} with {stored} stored before"
        );
        // The stored parts and the re-sent ones make valid age files of the stream.
        let v = run_bin(&["verify", "--config", &cfg, "--deep", "--identity", &ids]);
        assert_eq!(v.code, 0, "{point}: {v:?}");
        for k in &file_keys {
            for (what, out) in [("killed", &killed), ("resumed", &r), ("verify", &v)] {
                assert!(
                    !out.stderr.contains(k.as_str()) && !out.stdout.contains(k.as_str()),
                    "{point}: a file key in the {what} run's output"
                );
            }
        }
        report.push(format!(
            "{point}: stored before {stored}, uploaded {uploaded} of {total}"
        ));
    }
    eprintln!("{}", report.join("\n"));
    let t = s.fs.path("restored");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
        "--identity",
        &ids,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let snap = PathBuf::from(
        s.get_json(&manifest_key(&s))["snapshot"]["path"]
            .as_str()
            .unwrap(),
    );
    assert_same_tree(&snap, &t);
    let list = run_bin(&["list", "--config", &cfg, "--json"]);
    for out in [&r, &list] {
        assert!(
            !out.stderr.contains(&secret) && !out.stdout.contains(&secret),
            "the identity in an output: {out:?}"
        );
    }
}

/// The backups of `data` as `list --json` gives them: (manifest key, encrypted_to).
fn listed(cfg: &str) -> Vec<(String, Option<serde_json::Value>)> {
    let r = run_bin(&["list", "--config", cfg, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("list --json");
    let subvols = v["subvolumes"].as_array().expect("subvolumes");
    let data = subvols
        .iter()
        .find(|s| s["name"] == "data")
        .expect("data listed");
    data["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| {
            (
                b["manifest_key"].as_str().unwrap().to_string(),
                b.get("encrypted_to").cloned(),
            )
        })
        .collect()
}

/// Turning encryption on under an existing plain full: the next incremental is encrypted
/// and chains to the plain full (README: a chain may mix both; turning encryption on does
/// not re-encrypt what is stored, `backup --full` starts an all-encrypted chain). `list`,
/// `verify` and `verify --deep` work with the recipients only; restore of the mixed chain
/// refuses without an identity (naming the fix, nothing at the target) and restores with
/// one. Then an encrypted generation, and `prune --confirm` with the recipients only
/// deletes the old mixed one and keeps the encrypted chain restorable.
#[test]
fn a_mixed_chain_and_list_verify_prune_with_recipients_only() {
    if !require_root("a_mixed_chain_and_list_verify_prune_with_recipients_only") {
        return;
    }
    require_age();
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        chunk_size: 6 * MIB as u64,
        ..Default::default()
    });
    let keys = TempDir::new("keys");
    let (id, r1) = keygen(keys.path(), "key.txt");
    let ids = id.display().to_string();
    let cfg = s.cfg.display().to_string();
    let v = s.vol("data");
    source_tree(&v);

    // A plain full.
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let plain_full = manifest_key(&s);
    assert!(s.get_json(&plain_full).get("encryption").is_none());

    // Encryption turned on: the incremental on the plain full is encrypted.
    encrypt_to(&s, &[&r1]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    random_file(&v.join("after.bin"), 7 * MIB);
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    let enc_inc = manifest_key(&s);
    assert!(enc_inc.contains("/incremental/"), "{enc_inc}");
    let m = s.get_json(&enc_inc);
    assert_eq!(m["parent_manifest"], plain_full.as_str());
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([fingerprint(&r1)])
    );
    // The new file's bytes went up only as ciphertext; the plain full stays as it was.
    let store = s.moto.store();
    let after = std::fs::read(v.join("after.bin")).unwrap();
    let probe = &after[MIB..MIB + 64];
    for c in m["chunks"].as_array().unwrap() {
        let body = get_all(&store, c["key"].as_str().unwrap()).unwrap();
        assert!(!body.windows(64).any(|w| w == probe), "{c}");
        assert!(body.starts_with(b"age-encryption.org/v1\n"), "{c}");
    }

    // list shows which backups are encrypted, and to whom.
    let backups = listed(&cfg);
    assert_eq!(
        backups,
        vec![
            (plain_full.clone(), None),
            (enc_inc.clone(), Some(serde_json::json!([fingerprint(&r1)])))
        ]
    );
    let r = run_bin(&["list", "--config", &cfg]);
    assert!(
        r.stdout
            .contains(&format!("encrypted (age) to {}", fingerprint(&r1))),
        "{r:?}"
    );
    // verify (cheap) and verify --deep (the ciphertext) with the recipients only.
    for args in [&["verify"][..], &["verify", "--deep"][..]] {
        let mut a = vec![args[0], "--config", &cfg];
        a.extend_from_slice(&args[1..]);
        let r = run_bin(&a);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stdout.contains("subvolume data: ok"), "{args:?}: {r:?}");
    }

    // Restore of the mixed chain: without an identity it is refused before anything is
    // written; with one, the tree is the incremental's snapshot.
    let t = s.fs.path("restored-mixed");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("the backup is encrypted: pass the identity file with --identity"),
        "{r:?}"
    );
    assert!(!t.exists() && s.staging_left(&s.fs.mnt).is_empty());
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
        "--identity",
        &ids,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let snap = |key: &str| PathBuf::from(s.get_json(key)["snapshot"]["path"].as_str().unwrap());
    assert_same_tree(&snap(&enc_inc), &t);
    // The plain full alone needs no identity.
    let t0 = s.fs.path("restored-plain");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t0.to_str().unwrap(),
        "--manifest-key",
        &plain_full,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&snap(&plain_full), &t0);

    // A new, encrypted generation, then prune with the recipients only (remote_generations
    // = 1): the mixed generation goes, the encrypted chain stays whole.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--full"]);
    assert_eq!(r.code, 0, "{r:?}");
    let enc_full = manifest_key(&s);
    assert!(enc_full.contains("/full/"), "{enc_full}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run(&format!("echo three >> {}/d/a", v.display()));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    let enc_inc2 = manifest_key(&s);
    let old: Vec<String> = [&plain_full, &enc_inc]
        .iter()
        .flat_map(|k| {
            let m = s.get_json(k);
            std::iter::once(k.to_string()).chain(
                m["chunks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["key"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let r = run_bin(&["prune", "--config", &cfg]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run_bin(&["prune", "--config", &cfg, "--confirm"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("deleted {} objects", old.len())),
        "{r:?}"
    );
    let left = s.moto.list_keys();
    for k in &old {
        assert!(!left.contains(k), "{k} survived the prune");
    }
    assert_eq!(
        listed(&cfg),
        vec![
            (
                enc_full.clone(),
                Some(serde_json::json!([fingerprint(&r1)]))
            ),
            (
                enc_inc2.clone(),
                Some(serde_json::json!([fingerprint(&r1)]))
            )
        ]
    );
    let r = run_bin(&["verify", "--config", &cfg, "--deep"]);
    assert_eq!(r.code, 0, "{r:?}");
    let t2 = s.fs.path("restored-after-prune");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t2.to_str().unwrap(),
        "--identity",
        &ids,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&snap(&enc_inc2), &t2);
    // Nothing in any output carries the identity.
    let secret = std::fs::read_to_string(&id).unwrap();
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap()
        .to_string();
    assert!(!r.stderr.contains(&secret) && !r.stdout.contains(&secret));
}
