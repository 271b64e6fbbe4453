//! S3 Object Lock end to end on loop btrfs + moto with a bucket created with Object Lock
//! enabled (`LOCK_BUCKET`, versioned): a bucket without it fails the backup before any
//! upload; chunks (single PUT and multipart) and manifests carry the mode and the date,
//! `current.json` none; an incremental extends its full's date; a chain that cannot be
//! protected fails the run (exit 1) saying the backup is published but not protected;
//! `prune --confirm` deletes nothing locked and says until when, and a deletion the
//! server refuses (a legal hold) is reported as kept, locked, with the chain whole;
//! after a bucket writer
//! overwrote `current.json` and a manifest, `list --versions` shows the versions and
//! `restore --manifest-key K --version-id V` restores the real backup.
//!
//! moto 5.1.22 as checked (DESIGN.md lists it): it honours the lock headers on PutObject
//! (and demands Content-MD5 or `x-amz-sdk-checksum-algorithm` with them) but ignores them
//! on CreateMultipartUpload, so a multipart chunk is locked here by the chain extension
//! after publish; it refuses a DELETE of a locked or held version (AccessDenied, HTTP
//! 400 where AWS says 403); it accepts a shorter COMPLIANCE date and a retention in the
//! past, which AWS refuses; GetObjectRetention answers 500, so dates are read with HEAD.

use std::process::{Command, Stdio};
use std::time::Duration;

use btrfs_to_s3::store::{get_all, Body, ObjectStore, PutOptions, Retention};
use btrfs_to_s3::ts::Ts;

use crate::support::*;

const MIB: usize = 1024 * 1024;

/// A setup whose config writes to `LOCK_BUCKET` with `[object_lock]`.
fn locked(mode: &str, days: u64) -> Setup {
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    lock_config(&s, LOCK_BUCKET, mode, days);
    s
}

fn lock_config(s: &Setup, bucket: &str, mode: &str, days: u64) {
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let text = text.replace(
        &format!("bucket = \"{BUCKET}\""),
        &format!("bucket = \"{bucket}\""),
    );
    std::fs::write(
        &s.cfg,
        format!("{text}\n[object_lock]\nmode = \"{mode}\"\nretain_days = {days}\n"),
    )
    .unwrap();
}

fn cmd(s: &Setup, args: &[&str]) -> RunResult {
    let cfg = s.cfg.display().to_string();
    let mut v = vec![args[0], "--config", &cfg];
    v.extend_from_slice(&args[1..]);
    run_bin(&v)
}

fn store(s: &Setup) -> impl ObjectStore {
    s.moto.store_for(LOCK_BUCKET)
}

fn json(s: &Setup, key: &str) -> serde_json::Value {
    serde_json::from_slice(&get_all(&store(s), key).expect("GET")).expect("JSON")
}

fn current(s: &Setup) -> String {
    json(s, "backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The manifest key and its chunks' keys.
fn objects(s: &Setup, manifest: &str) -> Vec<String> {
    let m = json(s, manifest);
    std::iter::once(manifest.to_string())
        .chain(
            m["chunks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["key"].as_str().unwrap().to_string()),
        )
        .collect()
}

fn lock_of(s: &Setup, key: &str) -> Option<Retention> {
    store(s)
        .head(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is gone"))
        .lock
}

/// A change in `data` and a second's wait, so the next run has a new timestamp.
fn change(s: &Setup, name: &str, len: usize) {
    std::thread::sleep(Duration::from_millis(1100));
    random_file(&s.vol("data").join(name), len);
}

/// Makes the next run a full, as if the last full were a year old.
fn age_last_full(s: &Setup) {
    let mut st = s.state_json();
    st["subvolumes"]["data"]["last_full_at"] = "20000101T000000Z".into();
    std::fs::write(&s.state, serde_json::to_vec(&st).unwrap()).unwrap();
}

/// boto3 (moto's venv) against this server with its IAM key, for what the tool itself
/// never does: legal holds, and retention set by an administrator.
fn boto3(s: &Setup, code: &str) {
    let python = moto_server_path().with_file_name("python");
    let script = format!(
        "import boto3, datetime\n\
         s3 = boto3.client('s3', endpoint_url='{}', region_name='{REGION}', \
         aws_access_key_id='{}', aws_secret_access_key='{}')\n{code}\n",
        s.moto.endpoint, s.moto.access_key, s.moto.secret_key
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (run bash contrib/test.sh)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "boto3 failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bucket_without_object_lock_fails_the_backup_before_any_upload() {
    if !require_root("a_bucket_without_object_lock_fails_the_backup_before_any_upload") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    lock_config(&s, BUCKET, "COMPLIANCE", 30);
    random_file(&s.vol("data").join("a.bin"), MIB);
    for args in [&["--dry-run"][..], &[][..]] {
        let r = s.backup(args);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr.contains(&format!(
                "bucket {BUCKET} does not have Object Lock enabled"
            )) && r.stderr.contains("--object-lock-enabled-for-bucket")
                && r.stderr.contains("nothing was uploaded"),
            "{r:?}"
        );
    }
    assert!(s.moto.list_keys().is_empty(), "{:?}", s.moto.list_keys());
    assert!(!s.state.exists());
    assert!(s.snapshot_names().is_empty(), "{:?}", s.snapshot_names());
    // No checksum, no lock: refused as a config error naming both keys.
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        text.replace("[s3]\n", "[s3]\nchecksum = \"none\"\n"),
    )
    .unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("s3.checksum = \"none\" with [object_lock]"),
        "{r:?}"
    );
}

#[test]
fn chunks_and_manifests_are_locked_and_an_incremental_extends_its_full() {
    if !require_root("chunks_and_manifests_are_locked_and_an_incremental_extends_its_full") {
        return;
    }
    let s = locked("GOVERNANCE", 2);
    // 26 MiB in 12 MiB chunks of 5 MiB parts: two multipart chunks and one PutObject.
    random_file(&s.vol("data").join("a.bin"), 26 * MIB);
    let r = s.backup(&["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "object_lock: bucket {LOCK_BUCKET} has Object Lock enabled"
        )),
        "{r:?}"
    );
    let t0 = Ts::now();
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let full = current(&s);
    let full_objects = objects(&s, &full);
    assert_eq!(full_objects.len(), 4, "{full_objects:?}");
    // Retention 2 days; the slack of an extension is 2 days / 6 = 8 h. The manifest and
    // the PutObject chunk are locked by their upload; the multipart chunks (moto ignores
    // the headers of CreateMultipartUpload) by the extension after publish.
    let (day, slack) = (86_400, 8 * 3600);
    let mut before = Vec::new();
    for k in &full_objects {
        let l = lock_of(&s, k).unwrap_or_else(|| panic!("{k} is not locked"));
        assert_eq!(l.mode, "GOVERNANCE", "{k}");
        let d = l.until.unix() - t0.unix();
        assert!(
            (2 * day - 5..=2 * day + slack + 120).contains(&d),
            "{k}: {l:?}"
        );
        before.push(l.until);
    }
    assert!(
        before[0].unix() - t0.unix() <= 2 * day + 120,
        "the manifest: {before:?}"
    );
    assert!(
        before[3].unix() - t0.unix() <= 2 * day + 120,
        "the last chunk: {before:?}"
    );
    assert_eq!(lock_of(&s, "backups/subvol/data/current.json"), None);

    change(&s, "b.bin", MIB);
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    let inc = current(&s);
    assert!(inc.contains("/incremental/"), "{inc}");
    for k in objects(&s, &inc) {
        assert_eq!(lock_of(&s, &k).unwrap().mode, "GOVERNANCE", "{k}");
    }
    let inc_until = lock_of(&s, &inc).unwrap().until;
    assert!(inc_until > before[0]);
    let mut short = 0;
    for (k, was) in full_objects.iter().zip(&before) {
        let l = lock_of(&s, k).unwrap();
        assert!(l.until >= inc_until, "{k}: {l:?} < {inc_until:?}");
        if *was < inc_until {
            // Extended to what the incremental needs, plus the slack.
            assert_eq!(l.until.unix(), inc_until.unix() + slack, "{k}");
            short += 1;
        } else {
            assert_eq!(l.until, *was, "{k} was long enough and is left alone");
        }
    }
    assert_eq!(short, 2);
    assert_eq!(
        event_field(&r.stderr, "object_lock_chain", "extended").as_deref(),
        Some("2"),
        "{}",
        r.stderr
    );
}

#[test]
fn prune_deletes_nothing_locked_and_a_refused_deletion_is_kept_locked() {
    if !require_root("prune_deletes_nothing_locked_and_a_refused_deletion_is_kept_locked") {
        return;
    }
    let s = locked("GOVERNANCE", 1);
    random_file(&s.vol("data").join("a.bin"), 14 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let f1 = current(&s);
    let old = objects(&s, &f1);
    change(&s, "b.bin", MIB);
    age_last_full(&s);
    assert_eq!(s.backup(&["--once"]).code, 0);
    let f2 = current(&s);
    assert!(f2.contains("/full/") && f2 != f1, "{f2}");

    // The old generation is due, but locked until tomorrow: nothing goes.
    let r = cmd(&s, &["prune", "--confirm"]);
    assert_eq!(r.code, 0, "{r:?}");
    let until = lock_of(&s, &f1).unwrap().until.iso();
    assert!(
        r.stdout
            .contains(&format!("locked until {until}: Object Lock")),
        "{r:?}"
    );
    assert!(r.stdout.contains("deleted 0 objects"), "{r:?}");
    for k in &old {
        assert!(lock_of(&s, k).is_some(), "{k}");
    }
    let r = cmd(&s, &["prune", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).expect("prune --json");
    let items = plan["plans"][0]["items"].as_array().unwrap();
    let item = items.iter().find(|i| i["key"] == f1.as_str()).unwrap();
    assert_eq!(item["action"], "defer");
    assert_eq!(item["locked_until"], until.as_str());

    // An administrator with s3:BypassGovernanceRetention ends the retention of the old
    // generation, and puts a legal hold on its manifest, which HEAD's dates do not show:
    // the server refuses that deletion; the manifest and the chunks it names stay.
    let past = Ts::from_unix(Ts::now().unix() - 60);
    let store = store(&s);
    for k in &old {
        store
            .put_retention(
                k,
                None,
                &Retention {
                    mode: "GOVERNANCE".into(),
                    until: past,
                },
            )
            .unwrap();
    }
    boto3(
        &s,
        &format!(
            "s3.put_object_legal_hold(Bucket='{LOCK_BUCKET}', Key='{f1}', LegalHold={{'Status': 'ON'}})"
        ),
    );
    let r = cmd(&s, &["prune", "--confirm"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("kept, locked: the service refused the deletion"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!("kept, locked: {f1} needs it")),
        "{r:?}"
    );
    assert!(r.stdout.contains("deleted 0 objects"), "{r:?}");
    for k in &old {
        assert!(store.head(k).unwrap().is_some(), "{k}");
    }
    // The hold lifted, the old generation goes: its versions, not behind delete markers.
    boto3(
        &s,
        &format!(
            "s3.put_object_legal_hold(Bucket='{LOCK_BUCKET}', Key='{f1}', LegalHold={{'Status': 'OFF'}})"
        ),
    );
    let r = cmd(&s, &["prune", "--confirm"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("deleted {} objects", old.len())),
        "{r:?}"
    );
    let versions = store.list_versions("backups/subvol/data/").unwrap();
    assert!(
        !versions.iter().any(|v| old.contains(&v.key)),
        "{versions:?}"
    );
    let r = cmd(&s, &["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_writer_overwriting_current_json_and_manifests_cannot_take_the_restore() {
    if !require_root("a_writer_overwriting_current_json_and_manifests_cannot_take_the_restore") {
        return;
    }
    let s = locked("COMPLIANCE", 1);
    random_file(&s.vol("data").join("a.bin"), 14 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let full = current(&s);
    change(&s, "b.bin", 2 * MIB);
    assert_eq!(s.backup(&["--once"]).code, 0);
    let inc = current(&s);
    let before = describe_tree(&s.vol("data"));
    let full_chunk = objects(&s, &full)[1].clone();
    let inc_chunk = objects(&s, &inc)[1].clone();

    // Last night, with the host's key: garbage over current.json, over both manifests
    // and over a chunk of the full (same size), then a delete marker on the full's
    // manifest. The locked versions are still there underneath.
    let store = store(&s);
    let junk = PutOptions {
        storage_class: "STANDARD".into(),
        sse: "AES256".into(),
        content_type: "application/json",
        kms_key_id: None,
        lock: None,
    };
    for k in ["backups/subvol/data/current.json", &full, &inc] {
        store
            .put_object(k, Body::Bytes(b"{\"pwned\": true}"), &junk)
            .unwrap();
    }
    let size = store.head(&full_chunk).unwrap().unwrap().size as usize;
    store
        .put_object(&full_chunk, Body::Bytes(&vec![0u8; size]), &junk)
        .unwrap();
    store.delete_object(&full).unwrap();
    let t = s.fs.path("restored-plain");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");

    // list --versions shows them; the oldest version of the incremental's manifest is
    // the one the backup wrote.
    let r = cmd(&s, &["list", "--versions"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("versions of subvolume data"), "{r:?}");
    assert!(r.stdout.contains("delete marker (latest)"), "{r:?}");
    let r = cmd(&s, &["list", "--versions", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let versions = doc["subvolumes"][0]["versions"].as_array().unwrap();
    let of = |k: &str| -> Vec<&serde_json::Value> {
        versions.iter().filter(|v| v["key"] == k).collect()
    };
    assert_eq!(
        of("backups/subvol/data/current.json").len(),
        3,
        "{versions:?}"
    );
    assert_eq!(of(&full).len(), 3, "{versions:?}");
    let inc_versions = of(&inc);
    assert_eq!(inc_versions.len(), 2, "{versions:?}");
    assert_eq!(inc_versions[0]["latest"], true);
    let good = inc_versions[1]["version_id"].as_str().unwrap().to_string();
    assert!(!versions.iter().any(|v| v["key"] == inc_chunk.as_str()));

    // verify and restore from that version: the parents and chunks are read at the
    // versions the backups wrote.
    let r = cmd(
        &s,
        &[
            "verify",
            "--subvolume",
            "data",
            "--manifest-key",
            &inc,
            "--version-id",
            &good,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let t = s.fs.path("restored");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
        "--manifest-key",
        &inc,
        "--version-id",
        &good,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("manifests=2"), "{r:?}");
    assert_eq!(describe_tree(&t), before);
    // Without --manifest-key the flag makes no sense.
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        "/tmp/x",
        "--version-id",
        &good,
    ]);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn a_chain_that_cannot_be_protected_fails_the_run_saying_the_backup_is_published() {
    if !require_root(
        "a_chain_that_cannot_be_protected_fails_the_run_saying_the_backup_is_published",
    ) {
        return;
    }
    let s = locked("GOVERNANCE", 1);
    random_file(&s.vol("data").join("a.bin"), 3 * MIB);
    // Killed between current.json and the state: the next run recovers the backup,
    // then protects its chain, and finds a chunk hidden behind a delete marker.
    let r = output(
        s.backup_cmd(&[])
            .env("BTRFS_TO_S3_FAILPOINT", "between_pointer_and_state"),
    );
    assert_eq!(r.code, -1, "not killed: {r:?}");
    let m = current(&s);
    let chunk = objects(&s, &m)[1].clone();
    store(&s).delete_object(&chunk).unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("event=backup_recovered"), "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "backup {m} is published, but its chain is NOT protected by Object Lock"
        )) && r.stderr.contains(&format!(
            "{chunk} of the chain of {m} is missing from the bucket"
        )),
        "{r:?}"
    );
    // Published and recorded: the state names it.
    assert_eq!(
        s.state_json()["subvolumes"]["data"]["last_manifest"],
        m.as_str()
    );
}

/// The PROBLEM lines of a text `verify`, as (key, problem).
fn problems(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PROBLEM "))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect()
}

#[test]
fn verify_names_objects_unlocked_or_locked_shorter_than_the_chain_needs() {
    if !require_root("verify_names_objects_unlocked_or_locked_shorter_than_the_chain_needs") {
        return;
    }
    // A full written into the lock-enabled bucket before [object_lock] was configured:
    // nothing of it is locked.
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        text.replace(
            &format!("bucket = \"{BUCKET}\""),
            &format!("bucket = \"{LOCK_BUCKET}\""),
        ),
    )
    .unwrap();
    random_file(&s.vol("data").join("a.bin"), 26 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let full = current(&s);
    let full_objects = objects(&s, &full);
    for k in &full_objects {
        assert_eq!(lock_of(&s, k), None, "{k}");
    }
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        format!("{text}\n[object_lock]\nmode = \"GOVERNANCE\"\nretain_days = 2\n"),
    )
    .unwrap();

    // verify now names every object, exits 1, and says the chain is restorable.
    let r = cmd(&s, &["verify"]);
    assert_eq!(r.code, 1, "{r:?}");
    let found = problems(&r.stdout);
    let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    let mut want: Vec<&str> = full_objects.iter().map(String::as_str).collect();
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want, "{r:?}");
    assert!(
        found.iter().all(|(_, p)| p.starts_with("not locked")),
        "{r:?}"
    );
    let n = full_objects.len();
    assert!(
        r.stdout
            .contains("subvolume data: restorable, with problems")
            && r.stdout.contains(&format!(
                "Object Lock: {n} of {n} objects not locked as long as the chain needs"
            )),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!("verify found {n} problems")),
        "{r:?}"
    );
    let j = cmd(&s, &["verify", "--json"]);
    assert_eq!(j.code, 1, "{j:?}");
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("verify --json");
    assert_eq!(v["reports"][0]["object_lock"]["short"], n);
    assert_eq!(
        v["reports"][0]["object_lock"]["needed_until"],
        serde_json::Value::Null
    );

    // An incremental locks the whole chain: verify passes and gives the date.
    change(&s, "b.bin", MIB);
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    let inc = current(&s);
    let inc_until = lock_of(&s, &inc).unwrap().until;
    let all = n + objects(&s, &inc).len();
    let r = cmd(&s, &["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("subvolume data: ok")
            && r.stdout.contains(&format!(
                "Object Lock: all {all} objects locked until at least {}",
                inc_until.iso()
            )),
        "{r:?}"
    );

    // One chunk of the full locked for less than the chain needs (moto takes a shorter
    // date; S3 refuses it without s3:BypassGovernanceRetention): named, exit 1.
    let victim = &full_objects[1];
    let shorter = Ts::from_unix(inc_until.unix() - 86_400);
    store(&s)
        .put_retention(
            victim,
            None,
            &Retention {
                mode: "GOVERNANCE".into(),
                until: shorter,
            },
        )
        .unwrap();
    let r = cmd(&s, &["verify"]);
    assert_eq!(r.code, 1, "{r:?}");
    let found = problems(&r.stdout);
    assert_eq!(found.len(), 1, "{r:?}");
    assert_eq!(&found[0].0, victim);
    assert!(
        found[0].1.contains(&format!(
            "locked (GOVERNANCE) only until {}, shorter than the chain needs (until {}",
            shorter.iso(),
            inc_until.iso()
        )),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "Object Lock: 1 of {all} objects not locked as long as the chain needs"
        )),
        "{r:?}"
    );
    // Without [object_lock] in the config, verify does not look at locks.
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let cut = text.find("[object_lock]").unwrap();
    std::fs::write(&s.cfg, &text[..cut]).unwrap();
    let r = cmd(&s, &["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("Object Lock"), "{r:?}");
}
