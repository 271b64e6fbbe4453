//! Trust, round 2, for what comes from the machine itself (issue 20, items 6, 9, 10): a
//! `credential_process` that never answers or holds its output open, and whose command
//! line holds a token; a resume journal doctored or planted by someone else; a chunk
//! size that would make millions of objects. Each test fails on the code before the fix.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use btrfs_to_s3::store::{ObjectStore, PutOptions};

use crate::support::*;

const MIB: u64 = 1024 * 1024;
const TOKEN: &str = "FAKETOKENf00dfeed1234";

fn chunk_opts() -> PutOptions {
    PutOptions {
        storage_class: "STANDARD".into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/octet-stream",
        kms_key_id: None,
        lock: None,
    }
}

/// A config for `list` against `moto`, in `dir`.
fn list_config(dir: &Path, moto: &Moto) -> PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[global]\nstate_path = \"{d}/state.json\"\nlock_path = \"{d}/lock\"\n\
             [subvolumes]\npaths = [\"{d}/data\"]\n\
             [s3]\nbucket = \"{BUCKET}\"\nregion = \"{REGION}\"\nprefix = \"backups\"\n\
             endpoint_url = \"{e}\"\n",
            d = dir.display(),
            e = moto.endpoint
        ),
    )
    .unwrap();
    cfg
}

/// `list` with `RUST_LOG=trace` and the credentials of profile `p`, whose
/// credential_process is `sh SCRIPT --token=TOKEN`; the result and how long it took.
fn list_with_process(dir: &Path, moto: &Moto, script: &str) -> (RunResult, Duration) {
    let helper = dir.join("helper.sh");
    std::fs::write(&helper, script).unwrap();
    let aws = dir.join("aws-config");
    std::fs::write(
        &aws,
        format!(
            "[profile p]\ncredential_process = sh {} --token={TOKEN}\n",
            helper.display()
        ),
    )
    .unwrap();
    let cfg = list_config(dir, moto);
    let mut cmd = btrfs_to_s3();
    cmd.args(["list", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "trace")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_CONFIG_FILE", &aws)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
        .env("AWS_PROFILE", "p")
        .env("BTRFS_TO_S3_CREDENTIAL_PROCESS_TIMEOUT_MS", "1500");
    let started = Instant::now();
    let r = output_within(&mut cmd, 60);
    (r, started.elapsed())
}

#[test]
fn credential_process_is_bounded_and_its_command_line_is_never_logged() {
    let moto = Moto::start();
    let dir = TempDir::new("credproc");
    let doc = format!(
        "{{\"Version\": 1, \"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\"}}",
        moto.access_key, moto.secret_key
    );

    // A working helper: the run succeeds, and not even the trace log shows its command.
    let (r, _) = list_with_process(dir.path(), &moto, &format!("echo '{doc}'\n"));
    assert_eq!(r.code, 0, "{r:?}");
    // RUST_LOG=trace lets every line through (the HTTP library's debug lines show it).
    assert!(
        r.stderr.contains(" DEBUG ") && r.stderr.contains("profile p (credential_process)"),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains(TOKEN) && !r.stdout.contains(TOKEN),
        "{r:?}"
    );

    // One that sleeps past the deadline, and one that answers but leaves a child
    // holding its stdout: both fail at the deadline (1.5 s here), naming the profile.
    for (script, why) in [
        (format!("sleep 30\necho '{doc}'\n"), "it had not exited"),
        (
            format!("sleep 30 &\necho '{doc}'\n"),
            "its output was still held open",
        ),
    ] {
        let (r, took) = list_with_process(dir.path(), &moto, &script);
        assert_eq!(r.code, 1, "{script}: {r:?}");
        assert!(
            took < Duration::from_secs(10),
            "{script}: took {took:?}: {r:?}"
        );
        assert!(
            r.stderr
                .contains("profile p (credential_process): no answer within 1500 ms")
                && r.stderr.contains(why),
            "{script}: {r:?}"
        );
        assert!(
            !r.stderr.contains(TOKEN) && !r.stdout.contains(TOKEN),
            "{r:?}"
        );
    }
}

/// A resume journal line for `data`'s run at `ts` (the record's JSON fields).
fn line(v: serde_json::Value) -> String {
    format!("{v}\n")
}

fn begin(s: &Setup, ts: &str, kind: &str, snapshot: &str, parent: Option<&str>) -> String {
    line(serde_json::json!({
        "record": "begin", "version": 1, "subvolume": "data", "run_ts": ts,
        "kind": kind, "snapshot": snapshot, "parent": parent,
        "parent_manifest": parent.map(|_| "backups/subvol/data/full/manifest-20250101T020000Z.json"),
        "last_full_at": null, "send_protocol": 1,
        "settings": {"bucket": BUCKET, "prefix": s.prefix, "chunk_size": 1, "part_size": 1,
                     "storage_class": "STANDARD", "sse": "AES256"}
    }))
}

fn upload(chunk: u64, key: &str, id: &str) -> String {
    line(serde_json::json!({"record": "upload", "chunk": chunk, "key": key, "upload_id": id}))
}

#[test]
fn a_doctored_or_planted_journal_fails_the_backup_and_touches_nothing_it_names() {
    if !require_root("a_doctored_or_planted_journal_fails_the_backup_and_touches_nothing_it_names")
    {
        return;
    }
    let s = Setup::new(SetupOpts {
        subvolumes: &["data", "other"],
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB as usize);
    random_file(&s.vol("other").join("f.bin"), MIB as usize);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let state_before = std::fs::read(&s.state).unwrap();
    let other_snap = s
        .snapshot_names()
        .into_iter()
        .find(|n| n.starts_with("other__"))
        .map(|n| s.snaps.join(n))
        .expect("other's snapshot");

    // What the journal names, and must survive: an upload of another subvolume, one
    // outside the prefix, another subvolume's snapshot, a host subvolume.
    let store = s.moto.store();
    let other_key = "backups/subvol/other/full/chunk-20300101T000000Z-0.bin";
    let outside_key = "elsewhere/important.bin";
    let other_id = store.create_multipart(other_key, &chunk_opts()).unwrap();
    let outside_id = store.create_multipart(outside_key, &chunk_opts()).unwrap();
    let victim = s.fs.subvolume("victim");
    std::fs::write(victim.join("precious"), "keep me").unwrap();

    let jpath = PathBuf::from(format!("{}.resume-data.jsonl", s.state.display()));
    let ts = "20300101T000000Z";
    let snap = s.snaps.join(format!("data__{ts}__full"));
    let snap = snap.display().to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a key of another subvolume",
            begin(&s, ts, "full", &snap, None) + &upload(0, other_key, &other_id),
            "which is not under data's prefix backups/subvol/data/",
        ),
        (
            "a key outside the prefix",
            begin(&s, ts, "full", &snap, None) + &upload(0, outside_key, &outside_id),
            "\"elsewhere/important.bin\" for chunk 0",
        ),
        (
            "a snapshot outside snapshots.base_dir",
            begin(&s, ts, "full", &victim.display().to_string(), None),
            "its snapshot",
        ),
        (
            "another subvolume's snapshot",
            begin(&s, ts, "full", &other_snap.display().to_string(), None),
            "its snapshot",
        ),
        (
            "a parent outside snapshots.base_dir",
            begin(
                &s,
                ts,
                "incremental",
                &s.snaps
                    .join(format!("data__{ts}__inc"))
                    .display()
                    .to_string(),
                Some(&victim.display().to_string()),
            ),
            "its parent snapshot",
        ),
    ];
    let check_untouched = |what: &str, r: &RunResult| {
        assert!(
            store.list_parts(other_key, &other_id).is_ok()
                && store.list_parts(outside_key, &outside_id).is_ok(),
            "{what}: an upload the journal names was aborted: {r:?}"
        );
        assert!(
            victim.join("precious").exists() && other_snap.is_dir(),
            "{what}: {r:?}"
        );
        assert_eq!(std::fs::read(&s.state).unwrap(), state_before, "{what}");
    };
    for (what, text, words) in &cases {
        std::fs::write(&jpath, text).unwrap();
        let r = s.backup(&["--once", "--subvolume", "data"]);
        assert_eq!(r.code, 1, "{what}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("resume journal {}", jpath.display()))
                && r.stderr.contains(words)
                && r.stderr.contains("nothing it names was touched"),
            "{what}: {r:?}"
        );
        check_untouched(what, &r);
        assert_eq!(std::fs::read_to_string(&jpath).unwrap(), *text, "{what}");
        // The dry run says the same, and plans nothing for it.
        let d = s.backup(&["--dry-run", "--subvolume", "data"]);
        assert_eq!(d.code, 0, "{what}: {d:?}");
        assert!(d.stdout.contains("data: refused (resume journal"), "{d:?}");
    }

    // Planted files: a symlink to a journal elsewhere, and a group-writable journal.
    let planted = s.fs.dir.path().join("planted.jsonl");
    let text = begin(&s, ts, "full", &snap, None) + &upload(0, other_key, &other_id);
    std::fs::write(&planted, &text).unwrap();
    std::fs::remove_file(&jpath).unwrap();
    std::os::unix::fs::symlink(&planted, &jpath).unwrap();
    let r = s.backup(&["--once", "--subvolume", "data"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is a symbolic link"), "{r:?}");
    check_untouched("symlink", &r);
    assert!(std::fs::symlink_metadata(&jpath).unwrap().is_symlink() && planted.exists());
    std::fs::remove_file(&jpath).unwrap();

    std::fs::write(&jpath, &text).unwrap();
    run(&format!("chmod 0664 {}", jpath.display()));
    let r = s.backup(&["--once", "--subvolume", "data"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("lets group or others write it")
            && r.stderr
                .contains(&format!("chmod go-w {}", jpath.display())),
        "{r:?}"
    );
    check_untouched("group-writable", &r);

    // A refused journal fails only its subvolume: the others go on.
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("backup failed for 1 of 2 subvolumes: data: resume journal"),
        "{r:?}"
    );
    assert_ne!(
        std::fs::read(&s.state).unwrap(),
        state_before,
        "other published"
    );
    // Once removed, the next run backs up.
    std::fs::remove_file(&jpath).unwrap();
    let r = s.backup(&["--once", "--subvolume", "data"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn dry_run_counts_the_chunk_objects_of_a_full_and_a_tiny_chunk_size_is_refused() {
    if !require_root("dry_run_counts_the_chunk_objects_of_a_full_and_a_tiny_chunk_size_is_refused")
    {
        return;
    }
    let s = Setup::new(SetupOpts {
        subvolumes: &["data", "logs"],
        chunk_size: MIB,
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), 6 * MIB as usize);
    run("sync");
    let r = s.backup(&["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    for name in ["data", "logs"] {
        let l = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}: a full now would make about ")))
            .unwrap_or_else(|| panic!("no estimate for {name}: {r:?}"));
        let words: Vec<&str> = l.split_whitespace().collect();
        let n: u64 = words[7].parse().expect(l);
        let used: u64 = l
            .split("estimated from the ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect(l);
        assert!(
            l.contains("chunk objects (s3.chunk_size_bytes = 1048576;")
                && l.contains("bytes used on its filesystem"),
            "{l}"
        );
        assert_eq!(n, used.div_ceil(MIB), "{l}");
        assert!((6 * MIB..512 * MIB).contains(&used), "{l}");
    }

    // A lost digit: refused before anything runs, naming the key (exit 2).
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        text.replace("chunk_size_bytes = 1048576", "chunk_size_bytes = 104857"),
    )
    .unwrap();
    let r = s.backup(&["--dry-run"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("s3.chunk_size_bytes = 104857: must be at least 1048576 (1 MiB)"),
        "{r:?}"
    );
}
