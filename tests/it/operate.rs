//! Operating for years, end to end on loop btrfs + moto: `list` and `verify` of a bucket
//! with two generations, a broken chain, an orphan chunk and stray keys; a truncated
//! chunk (verify names it), a flipped byte (`--deep` names it); `prune` deleting exactly
//! the old generation with a restore of the current chain still verifying; prune
//! deferring DEEP_ARCHIVE chunks; backup falling back to a full on a broken parent chain.

use std::time::Duration;

use btrfs_to_s3::store::{get_all, Body, ObjectStore, PutOptions};

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn opts(class: &str) -> PutOptions {
    PutOptions {
        storage_class: class.into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/octet-stream",
        kms_key_id: None,
        lock: None,
    }
}

impl Setup {
    fn cmd(&self, args: &[&str]) -> RunResult {
        let cfg = self.cfg.display().to_string();
        let mut v = vec![args[0], "--config", &cfg];
        v.extend_from_slice(&args[1..]);
        run_bin(&v)
    }

    /// Makes the next scheduled run a full, as if the last full were a year old.
    fn age_last_full(&self, name: &str) {
        let mut st = self.state_json();
        st["subvolumes"][name]["last_full_at"] = "20000101T000000Z".into();
        std::fs::write(&self.state, serde_json::to_vec(&st).unwrap()).unwrap();
    }

    fn current_key(&self, name: &str) -> String {
        self.get_json(&format!("backups/subvol/{name}/current.json"))["manifest_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Backs up `data` (after a change and a second), as a full or an incremental.
    fn next_backup(&self, full: bool) -> String {
        std::thread::sleep(Duration::from_millis(1100));
        random_file(&self.vol("data").join(format!("f{}", rand_suffix())), MIB);
        if full {
            self.age_last_full("data");
        }
        let r = self.backup(&["--once"]);
        assert_eq!(r.code, 0, "{r:?}");
        let key = self.current_key("data");
        let want = if full { "/full/" } else { "/incremental/" };
        assert!(key.contains(want), "{key}");
        key
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn chunk_keys(s: &Setup, manifest: &str) -> Vec<String> {
    s.get_json(manifest)["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_verify_prune_two_generations() {
    if !require_root("list_verify_prune_two_generations") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    let store = s.moto.store();
    random_file(&s.vol("data").join("big.bin"), 16 * MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let f1 = s.current_key("data");
    let i1 = s.next_backup(false);
    let f2 = s.next_backup(true);
    let i2 = s.next_backup(false);
    // Damage of the kinds a bucket collects: an orphan chunk of a failed run, a manifest
    // whose parent is gone, keys this tool never writes.
    let orphan = "backups/subvol/data/incremental/chunk-20240101T000000Z-0.bin";
    store
        .put_object(
            orphan,
            Body::Bytes(b"left by a failed run"),
            &opts("STANDARD"),
        )
        .unwrap();
    let mut broken = s.get_json(&i1);
    broken["parent_manifest"] = "backups/subvol/data/full/manifest-20230101T000000Z.json".into();
    broken["created_at"] = "20240102T000000Z".into();
    let broken_key = "backups/subvol/data/incremental/manifest-20240102T000000Z.json";
    store
        .put_object(
            broken_key,
            Body::Bytes(&serde_json::to_vec(&broken).unwrap()),
            &opts("STANDARD"),
        )
        .unwrap();
    for stray in ["backups/subvol/data/notes.txt", "backups/README"] {
        store
            .put_object(stray, Body::Bytes(b"x"), &opts("STANDARD"))
            .unwrap();
    }

    // list --json: every backup oldest first, generations, current, what does not fit.
    let r = s.cmd(&["list", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    let data = &doc["subvolumes"][0];
    assert_eq!(data["name"], "data");
    assert_eq!(data["current"], i2.as_str());
    let backups = data["backups"].as_array().unwrap();
    let keys: Vec<&str> = backups
        .iter()
        .map(|b| b["manifest_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            broken_key,
            f1.as_str(),
            i1.as_str(),
            f2.as_str(),
            i2.as_str()
        ]
    );
    let gen: Vec<&serde_json::Value> = backups.iter().map(|b| &b["generation"]).collect();
    assert_eq!(gen[0], &serde_json::Value::Null);
    assert!(backups[0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("manifest-20230101T000000Z.json is missing"));
    assert_eq!((gen[1], gen[2]), (&f1.clone().into(), &f1.clone().into()));
    assert_eq!((gen[3], gen[4]), (&f2.clone().into(), &f2.clone().into()));
    assert_eq!(backups[4]["current"], true);
    assert_eq!(backups[2]["parent_manifest"], f1.as_str());
    assert!(backups[1]["total_bytes"].as_u64().unwrap() > 16 * MIB as u64);
    assert!(backups[1]["chunks"].as_u64().unwrap() >= 2);
    assert_eq!(backups[1]["storage_class"], "STANDARD");
    assert_eq!(data["orphan_chunks"][0]["key"], orphan);
    assert_eq!(
        data["outside_layout"][0]["key"],
        "backups/subvol/data/notes.txt"
    );
    assert_eq!(doc["outside_layout"][0]["key"], "backups/README");
    let text = s.cmd(&["list"]);
    assert_eq!(text.code, 0, "{text:?}");
    for w in [
        "<- current",
        "BROKEN",
        "orphan chunks",
        "NOT OF THE LAYOUT: backups/README",
    ] {
        assert!(text.stdout.contains(w), "{w}: {}", text.stdout);
    }

    // verify: the current chain is sound; a truncated chunk is named; a flipped byte is
    // invisible to the cheap check and named by --deep.
    let r = s.cmd(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("subvolume data: ok"), "{r:?}");
    let victim = chunk_keys(&s, &f2)[0].clone();
    let good = get_all(&store, &victim).unwrap();
    store
        .put_object(
            &victim,
            Body::Bytes(&good[..good.len() - 1]),
            &opts("STANDARD"),
        )
        .unwrap();
    let r = s.cmd(&["verify", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&victim), "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["reports"][0]["findings"][0]["key"], victim.as_str());
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    store
        .put_object(&victim, Body::Bytes(&flipped), &opts("STANDARD"))
        .unwrap();
    let r = s.cmd(&["verify"]);
    assert_eq!(
        r.code, 0,
        "the cheap check cannot see a flipped byte: {r:?}"
    );
    let r = s.cmd(&["verify", "--deep"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains(&format!("PROBLEM {victim}")) && r.stdout.contains("SHA-256"),
        "{r:?}"
    );
    store
        .put_object(&victim, Body::Bytes(&good), &opts("STANDARD"))
        .unwrap();
    let r = s.cmd(&["verify", "--deep"]);
    assert_eq!(r.code, 0, "{r:?}");
    // An older manifest's chain, by key.
    let r = s.cmd(&["verify", "--subvolume", "data", "--manifest-key", &i1]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = s.cmd(&[
        "verify",
        "--subvolume",
        "data",
        "--manifest-key",
        broken_key,
    ]);
    assert_eq!(r.code, 1, "{r:?}");

    // prune: a dry run changes nothing; --confirm deletes exactly the old generation and
    // the broken manifest (manifests first); the young orphan and stray keys stay.
    let before = s.moto.list_keys();
    let r = s.cmd(&["prune"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("nothing was deleted: add --confirm"),
        "{r:?}"
    );
    assert_eq!(s.moto.list_keys(), before);
    let old: Vec<String> = [f1.clone(), i1.clone()]
        .iter()
        .flat_map(|m| chunk_keys(&s, m))
        .chain([f1.clone(), i1.clone(), broken_key.to_string()])
        .collect();
    let r = s.cmd(&["prune", "--confirm", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let deleted: Vec<&str> = doc["plans"][0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "delete")
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert!(
        deleted[..3].iter().all(|k| k.contains("/manifest-")),
        "{deleted:?}"
    );
    let after = s.moto.list_keys();
    let mut gone: Vec<String> = before
        .iter()
        .filter(|k| !after.contains(k))
        .cloned()
        .collect();
    let mut want = old.clone();
    gone.sort();
    want.sort();
    assert_eq!(gone, want);
    for k in [
        orphan,
        "backups/subvol/data/notes.txt",
        "backups/README",
        "backups/subvol/data/current.json",
    ] {
        assert!(after.iter().any(|a| a == k), "{k} was deleted");
    }
    // The current chain restores and verifies.
    let r = s.restore(&["--subvolume", "data", "--target", "restored"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = s.cmd(&["verify", "--deep"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn prune_defers_deep_archive_chunks_and_deep_verify_says_what_it_did_not_read() {
    if !require_root("prune_defers_deep_archive_chunks_and_deep_verify_says_what_it_did_not_read") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "DEEP_ARCHIVE",
        ..Default::default()
    });
    random_file(&s.vol("data").join("big.bin"), 4 * MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let f1 = s.current_key("data");
    let f1_chunks = chunk_keys(&s, &f1);
    s.next_backup(true);
    let r = s.cmd(&["prune", "--confirm"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("deferred until"), "{r:?}");
    let keys = s.moto.list_keys();
    assert!(!keys.contains(&f1), "the STANDARD manifest goes");
    for c in &f1_chunks {
        assert!(keys.contains(c), "{c} deleted before its 180 days");
    }
    // --allow-early-delete deletes them (they are orphans now, but not a day old: kept).
    let r = s.cmd(&["prune", "--confirm", "--allow-early-delete"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("orphan younger than a day"), "{r:?}");

    // verify --deep cannot read DEEP_ARCHIVE chunks: listed as not checked, exit 0;
    // --no-wait-restore requests their restores and exits 3.
    let r = s.cmd(&["verify", "--deep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("not checked (in archive storage"),
        "{r:?}"
    );
    let r = s.cmd(&["verify", "--deep", "--no-wait-restore"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("archive_restore_requested"), "{r:?}");
}

#[test]
fn backup_falls_back_to_a_full_when_the_parent_chain_is_broken() {
    if !require_root("backup_falls_back_to_a_full_when_the_parent_chain_is_broken") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("big.bin"), 2 * MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let f1 = s.current_key("data");
    let i1 = s.next_backup(false);
    // A chunk of the full disappears (a lifecycle rule, a bucket writer).
    let gone = chunk_keys(&s, &f1)[0].clone();
    s.moto.store().delete_object(&gone).unwrap();
    let r = s.cmd(&["backup", "--dry-run", "--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("data: full (") && r.stdout.contains("cannot take an incremental"),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("action=full") && r.stderr.contains(&gone),
        "{r:?}"
    );
    let now = s.current_key("data");
    assert!(now.contains("/full/") && now != i1, "{now}");
    let r = s.cmd(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn progress_lines_textfile_and_prune_after_backup() {
    if !require_root("progress_lines_textfile_and_prune_after_backup") {
        return;
    }
    let work = TempDir::new("metrics");
    let prom = work.path().join("btrfs_to_s3.prom");
    let global = format!(
        "progress_interval_seconds = 1\nmetrics_path = \"{}\"",
        prom.display()
    );
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        chunk_size: 64 * MIB as u64,
        concurrency: 1,
        extra: &global,
        ..Default::default()
    });
    let mut text = std::fs::read_to_string(&s.cfg).unwrap();
    text.push_str("[retention]\nprune_after_backup = true\nremote_generations = 1\n");
    std::fs::write(&s.cfg, text).unwrap();
    random_file(&s.vol("data").join("big.bin"), 160 * MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("event=backup_progress"))
        .unwrap_or_else(|| panic!("no progress line in {}", r.stderr));
    for f in [
        "subvolume=data",
        "bytes=",
        "stored_bytes=",
        "rate=",
        "chunk=",
        "requests_in_flight=",
        "retries=",
        "since_last_success_seconds=",
    ] {
        assert!(line.contains(f), "{f}: {line}");
    }
    // The first full has nothing to estimate from; the prune after it refuses nothing.
    assert!(!line.contains("expected_bytes"), "{line}");
    let f1 = s.current_key("data");
    let t = std::fs::read_to_string(&prom).unwrap();
    for m in [
        "btrfs_to_s3_last_success_timestamp_seconds{subvolume=\"data\"}",
        "btrfs_to_s3_last_run_failed{subvolume=\"data\"} 0",
        "btrfs_to_s3_last_backup_bytes{subvolume=\"data\"} ",
        "btrfs_to_s3_last_run_timestamp_seconds ",
    ] {
        assert!(t.contains(m), "{m}: {t}");
    }

    // A restore knows its total: percent of an exact figure.
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        "restored",
        "--verify",
        "none",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("event=restore_progress"))
        .unwrap_or_else(|| panic!("no progress line in {}", r.stderr));
    assert!(
        line.contains("expected_from=exact") && line.contains("percent="),
        "{line}"
    );

    // The next full estimates from the last one, and the prune after it removes the old
    // generation.
    let f1_chunks = chunk_keys(&s, &f1);
    std::thread::sleep(Duration::from_millis(1100));
    s.age_last_full("data");
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("expected_from=\"estimate from the full of"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("event=prune_deleted"), "{}", r.stderr);
    let keys = s.moto.list_keys();
    assert!(!keys.contains(&f1), "{keys:?}");
    for c in &f1_chunks {
        assert!(!keys.contains(c), "{c}");
    }
    let r = s.cmd(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// A server that lies in its listing: keys outside the prefix asked for, or a truncated
/// listing with no way on. `list` and `prune` fail naming it, and prune deletes nothing.
#[test]
fn a_lying_listing_fails_list_and_prune_and_nothing_is_deleted() {
    let dir = TempDir::new("lying-list");
    let listing = |contents: &str, truncated: &str| {
        format!(
            "<?xml version=\"1.0\"?><ListBucketResult><Name>b</Name><Prefix>p/</Prefix>\
             <IsTruncated>{truncated}</IsTruncated>{contents}</ListBucketResult>"
        )
    };
    let outside = CannedServer::start(
        "200 OK",
        &[("Content-Type", "application/xml")],
        &listing(
            "<Contents><Key>elsewhere/secret</Key><Size>1</Size></Contents>",
            "false",
        ),
    );
    let endless = CannedServer::start(
        "200 OK",
        &[("Content-Type", "application/xml")],
        &listing("", "true"),
    );
    for (server, words) in [
        (
            &outside,
            "\"elsewhere/secret\", which is not under the prefix",
        ),
        (&endless, "truncated but gives no new NextContinuationToken"),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[global]\nstate_path = \"{d}/state.json\"\nlock_path = \"{d}/lock\"\n\
                 [subvolumes]\npaths = [\"/srv/data\"]\n\
                 [s3]\nbucket = \"b\"\nregion = \"us-east-1\"\nprefix = \"p\"\nendpoint_url = \"{e}\"\n",
                d = dir.path().display(),
                e = server.endpoint
            ),
        )
        .unwrap();
        let cfg = cfg.display().to_string();
        for args in [
            &["list", "--config", &cfg][..],
            &["prune", "--config", &cfg, "--confirm"],
        ] {
            let r = output_within(test_env(&mut btrfs_to_s3()).args(args), 60);
            assert_eq!(r.code, 1, "{args:?}: {r:?}");
            assert!(r.stderr.contains(words), "{args:?}: {r:?}");
        }
        let reqs = server.requests();
        assert!(
            reqs.iter()
                .all(|r| r.starts_with("get ") && r.contains("list-type=2")),
            "only listings were sent: {reqs:?}"
        );
    }
}

/// Issue 25 item 4: `backup --full` makes a full whatever the schedule says, and the next
/// run's incremental builds on it.
#[test]
fn backup_full_forces_a_full_and_the_next_incremental_builds_on_it() {
    if !require_root("backup_full_forces_a_full_and_the_next_incremental_builds_on_it") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let f1 = s.current_key("data");
    let i1 = s.next_backup(false);
    assert!(i1.contains("/incremental/"));
    let r = s.cmd(&["backup", "--dry-run", "--full"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("data: full (--full)"), "{r:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&["--full"]);
    assert_eq!(r.code, 0, "{r:?}");
    let f2 = s.current_key("data");
    assert!(f2.contains("/full/") && f2 != f1, "{f2}");
    assert!(r.stderr.contains("reason=--full"), "{r:?}");
    let i2 = s.next_backup(false);
    assert_eq!(s.get_json(&i2)["parent_manifest"], f2.as_str());
    // --full and --once do not go together.
    assert_eq!(s.backup(&["--full", "--once"]).code, 2);
}

/// Issue 25 item 1: README's "Restore on a new machine", step by step: a config with only
/// `[s3]` and `[restore]`; `list` with no `--subvolume` shows every subvolume; `verify`
/// checks them all; `restore` brings one back; `backup` refuses the config.
#[test]
fn restore_on_a_new_machine_from_a_config_with_only_s3() {
    if !require_root("restore_on_a_new_machine_from_a_config_with_only_s3") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        subvolumes: &["data", "home"],
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB);
    random_file(&s.vol("home").join("g.bin"), MIB);
    assert_eq!(s.backup(&[]).code, 0);
    // Step 1: only where the backups are.
    let dr = s.fs.dir.path().join("dr.toml");
    std::fs::write(
        &dr,
        format!(
            "[s3]\nbucket = \"{BUCKET}\"\nregion = \"{REGION}\"\nprefix = \"backups\"\n\
             endpoint_url = \"{}\"\n\n[restore]\ntarget_base_dir = \"{}\"\n",
            s.moto.endpoint,
            s.fs.mnt.display()
        ),
    )
    .unwrap();
    let dr = dr.display().to_string();
    // Step 3.
    let r = run_bin(&["list", "-c", &dr]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("data") && r.stdout.contains("home"),
        "{r:?}"
    );
    // Step 4.
    let r = run_bin(&["verify", "-c", &dr]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("data") && r.stdout.contains("home"),
        "{r:?}"
    );
    // Step 5.
    let r = run_bin(&[
        "restore",
        "-c",
        &dr,
        "--subvolume",
        "data",
        "--target",
        "data",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=verify_content_skipped"), "{r:?}");
    assert_same_tree(&s.vol("data"), &s.fs.mnt.join("data"));
    // What such a config cannot do.
    let r = run_bin(&["backup", "-c", &dr]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("subvolumes.paths is required for backup"),
        "{r:?}"
    );
    let r = run_bin(&["prune", "-c", &dr]);
    assert_eq!(r.code, 2, "{r:?}");
}

/// Issue 25 item 6: `status` reads local files only: the last backup, what is due, a
/// pending resume and the last run's result; `--remote` compares current.json; `--json`;
/// no lock and no root.
#[test]
fn status_tells_the_last_backup_what_is_due_a_pending_resume_and_the_last_run() {
    if !require_root("status_tells_the_last_backup_what_is_due_a_pending_resume_and_the_last_run") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    let r = s.cmd(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("last backup:      none recorded")
            && r.stdout.contains("due now (no backup recorded)")
            && r.stdout.contains("last run: no record"),
        "{r:?}"
    );
    random_file(&s.vol("data").join("f.bin"), 3 * MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let key = s.current_key("data");
    let r = s.cmd(&["status", "--remote"]);
    assert_eq!(r.code, 0, "{r:?}");
    for w in [
        "data:",
        "last backup:      full of ",
        &key,
        "next incremental: 20",
        "resume pending:   no",
        "(the state's last manifest)",
        "last run: ok at ",
    ] {
        assert!(r.stdout.contains(w), "lacks {w}: {r:?}");
    }
    // No S3 request without --remote: a dead endpoint does not matter.
    let r = output(
        btrfs_to_s3()
            .args(["status", "--config"])
            .arg(&s.cfg)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    // An interrupted incremental: pending, with what is stored.
    std::thread::sleep(Duration::from_millis(1100));
    random_file(&s.vol("data").join("g.bin"), 12 * MIB);
    let r = output(
        s.backup_cmd(&["--once"])
            .env("BTRFS_TO_S3_FAILPOINT", "after_chunk_journaled"),
    );
    assert_ne!(r.code, 0, "{r:?}");
    let r = s.cmd(&["status", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let sv = &j["subvolumes"][0];
    assert_eq!(sv["name"], "data");
    assert_eq!(sv["pending"]["kind"], "incremental", "{j}");
    assert!(sv["pending"]["stored_bytes"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(sv["last_backup"]["manifest_key"], key.as_str());
    assert_eq!(j["last_run"]["result"], "ok");
    let r = s.cmd(&["status"]);
    assert!(
        r.stdout
            .contains("resume pending:   incremental backup of ")
            && r.stdout.contains("the next run resumes it"),
        "{r:?}"
    );
    // A failed run is recorded with its error line.
    let r = output(&mut s.backup_cmd(&["--subvolume", "nope"]));
    assert_eq!(r.code, 2, "{r:?}");
    let r = s.cmd(&["status"]);
    assert!(
        r.stdout.contains("last run: failed at ")
            && r.stdout.contains("(exit 2): --subvolume nope"),
        "{r:?}"
    );
    // The run lock is not taken: status works while a run holds it (a run that cannot
    // start for the lock leaves the record of the run that holds it).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.lock)
        .unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = s.cmd(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("(exit 2): --subvolume nope"), "{r:?}");
    drop(f);
}

/// Issue 25 item 8: `--dry-run` checks that the spool has room for the parts a run holds
/// at once (before: a full 8 MiB tmpfs passed the dry run and failed the backup).
#[test]
fn dry_run_checks_that_the_spool_has_room_for_concurrency_plus_one_parts() {
    if !require_root("dry_run_checks_that_the_spool_has_room_for_concurrency_plus_one_parts") {
        return;
    }
    struct Tmpfs(std::path::PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = TempDir::new("spool-tmpfs");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    run(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        spool.display()
    ));
    let _guard = Tmpfs(spool.clone());
    let global = format!(
        "spool_dir = \"{}\"\nspool_size_bytes = 104857600",
        spool.display()
    );
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        extra: &global,
        s3_extra: "spool_enabled = true",
        ..Default::default()
    });
    let r = s.cmd(&["backup", "--dry-run"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stdout.contains("global.spool_dir")
            && r.stdout.contains("bytes free")
            && r.stdout.contains("s3.concurrency + 1"),
        "{r:?}"
    );
}
