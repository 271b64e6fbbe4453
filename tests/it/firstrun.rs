//! First-run correctness on the real rig: a wrong bucket is an error, not a missing
//! parent; the harness hook writes the file the earlier tool's harness reads.

use crate::support::*;

#[test]
fn a_wrong_bucket_fails_instead_of_planning_a_full() {
    if !require_root("a_wrong_bucket_fails_instead_of_planning_a_full") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "x").unwrap();
    assert_eq!(s.backup(&[]).code, 0);
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        text.replace(
            &format!("bucket = \"{BUCKET}\""),
            "bucket = \"nosuchbucket\"",
        ),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("the bucket does not answer")
            && r.stderr.contains("HeadBucket: HTTP 404"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("action=full"), "{r:?}");
    assert_eq!(s.snapshot_names().len(), 1, "{:?}", s.snapshot_names());
}

#[test]
fn the_harness_hook_writes_the_first_selected_subvolume_s_manifest_file() {
    if !require_root("the_harness_hook_writes_the_first_selected_subvolume_s_manifest_file") {
        return;
    }
    let s = Setup::new(SetupOpts {
        subvolumes: &["alpha", "beta"],
        ..Default::default()
    });
    random_file(&s.vol("alpha").join("f"), 13 * 1024 * 1024);
    std::fs::write(s.vol("beta").join("g"), "beta").unwrap();
    let dir = s.fs.dir.path().join("harness-run");
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
    };
    // Unset: nothing is written.
    assert_eq!(s.backup(&["--subvolume", "beta"]).code, 0);
    assert!(!dir.exists());
    let r = output(
        s.backup_cmd(&["--subvolume", "alpha", "--subvolume", "beta"])
            .env("BTRFS_TO_S3_HARNESS_RUN_DIR", &dir),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let h = read();
    let key = s.get_json("backups/subvol/alpha/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let m = s.get_json(&key);
    assert_eq!(h["backup_type"], "full");
    let want: Vec<serde_json::Value> = m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::json!({"index": i, "key": c["key"], "sha256": c["sha256"]}))
        .collect();
    assert!(want.len() >= 2);
    assert_eq!(h["chunks"], serde_json::Value::Array(want));
    // The next run's first selected subvolume is beta, incremental: replaced.
    std::fs::write(s.vol("beta").join("g2"), "more").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = output(
        s.backup_cmd(&["--once", "--subvolume", "beta"])
            .env("BTRFS_TO_S3_HARNESS_RUN_DIR", &dir),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let h = read();
    assert_eq!(h["backup_type"], "incremental");
    let key = s.get_json("backups/subvol/beta/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(h["chunks"][0]["key"], s.get_json(&key)["chunks"][0]["key"]);
    // A relative directory is refused.
    let r = output(
        s.backup_cmd(&["--once"])
            .env("BTRFS_TO_S3_HARNESS_RUN_DIR", "rel/dir"),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("must be an absolute directory path"),
        "{r:?}"
    );
}

/// Used bytes of the filesystem at `mnt` (`df`, 1 KiB blocks).
fn used_bytes(mnt: &std::path::Path) -> u64 {
    let out = run(&format!(
        "df --output=used -k {} | tail -n 1",
        mnt.display()
    ));
    out.trim().parse::<u64>().unwrap_or(0) * 1024
}

#[test]
fn a_20_manifest_chain_restores_in_about_the_space_of_its_result() {
    if !require_root("a_20_manifest_chain_restores_in_about_the_space_of_its_result") {
        return;
    }
    const MIB: u64 = 1024 * 1024;
    let s = Setup::new(SetupOpts {
        fs_mib: 1024,
        storage_class_chunks: "STANDARD",
        retain: 1,
        ..Default::default()
    });
    // Each backup rewrites the whole 8 MiB file: every received snapshot of the chain
    // holds its own 8 MiB, 160 MiB for all twenty.
    let f = s.vol("data").join("rewritten.bin");
    for i in 0..20 {
        random_file(&f, 8 * MIB as usize);
        let r = s.backup(if i == 0 { &[][..] } else { &["--once"][..] });
        assert_eq!(r.code, 0, "backup {i}: {r:?}");
    }
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut n = 1;
    let mut m = s.get_json(&key);
    while let Some(p) = m["parent_manifest"].as_str() {
        n += 1;
        m = s.get_json(p);
    }
    assert_eq!(n, 20);
    // A target filesystem that holds the result several times but not the whole chain.
    let small = BtrfsFs::new(160);
    let base = used_bytes(&small.mnt);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, mnt) = (stop.clone(), small.mnt.clone());
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(used_bytes(&mnt));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        peak
    });
    let t = small.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = watcher.join().unwrap() - base;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("manifests=20"), "{r:?}");
    eprintln!(
        "20-manifest chain of an 8 MiB file: peak {:.1} MiB used on the target (all versions: 160 MiB)",
        peak as f64 / MIB as f64
    );
    assert!(peak < 48 * MIB, "peak {peak} bytes");
}

#[test]
fn a_state_that_cannot_be_written_after_publishing_is_named_on_the_last_line() {
    if !require_root("a_state_that_cannot_be_written_after_publishing_is_named_on_the_last_line") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "x").unwrap();
    // The state on the btrfs itself, where chattr +i works whatever /tmp is.
    let state = s.fs.path("state/state.json");
    let text = std::fs::read_to_string(&s.cfg)
        .unwrap()
        .replace(&s.state.display().to_string(), &state.display().to_string());
    std::fs::write(&s.cfg, text).unwrap();
    assert_eq!(s.backup(&[]).code, 0);
    // The file cannot be replaced, even by root; its directory still takes new files.
    run(&format!("chattr +i {}", state.display()));
    struct Mutable(std::path::PathBuf);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = sh(&format!("chattr -i {}", self.0.display()));
        }
    }
    let _guard = Mutable(state.clone());
    std::fs::write(s.vol("data").join("g"), "y").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 1, "{r:?}");
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.contains("/incremental/"), "published: {key}");
    let last = r.stderr.trim().lines().last().unwrap().to_string();
    assert!(
        last.contains(&format!("the backup is published as {key}"))
            && last.contains("was not updated"),
        "{last}"
    );
    assert!(r.stderr.contains("event=backup_summary"), "{r:?}");
    // Once the state can be written, the next run records it without sending anything.
    drop(_guard);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=backup_recovered"), "{r:?}");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["subvolumes"]["data"]["last_manifest"], key.as_str());
}

#[test]
fn a_metrics_textfile_that_cannot_be_written_fails_the_run() {
    if !require_root("a_metrics_textfile_that_cannot_be_written_fails_the_run") {
        return;
    }
    let s = Setup::new(SetupOpts {
        extra: "metrics_path = \"/proc/btrfs_to_s3/metrics.prom\"",
        ..Default::default()
    });
    std::fs::write(s.vol("data").join("f"), "x").unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.trim().lines().last().unwrap();
    assert!(
        last.contains("metrics textfile /proc/btrfs_to_s3/metrics.prom (global.metrics_path)"),
        "{last}"
    );
    // The backup itself is published and recorded.
    assert!(r.stderr.contains("event=backup_published"), "{r:?}");
    assert!(s.state.exists());
}

#[test]
fn dry_run_is_the_config_check() {
    if !require_root("dry_run_is_the_config_check") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let vol = s.vol("data").display().to_string();
    let try_cfg = |edit: &dyn Fn(&str) -> String| {
        let cfg = s.fs.dir.path().join("check.toml");
        std::fs::write(&cfg, edit(&text)).unwrap();
        output(btrfs_to_s3().env("BTRFS_TO_S3_RETRY_BASE_MS", "10").args([
            "backup",
            "--config",
            cfg.to_str().unwrap(),
            "--dry-run",
        ]))
    };
    // A real run would start: exit 0 with the plan.
    let r = try_cfg(&|t| t.to_string());
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("data: full (no previous backup"), "{r:?}");

    let plain = s.fs.path("plain-dir");
    std::fs::create_dir_all(&plain).unwrap();
    let not_btrfs = TempDir::new("not-btrfs");
    let other_fs = BtrfsFs::new(128);
    for (what, edit, words) in [
        (
            "missing",
            Box::new(|t: &str| t.replace(&vol, "/nonexistent/data")) as Box<dyn Fn(&str) -> String>,
            &["subvolumes.paths: /nonexistent/data does not exist"][..],
        ),
        (
            "plain directory",
            Box::new(|t: &str| t.replace(&vol, &plain.display().to_string())),
            &["is not a btrfs subvolume"][..],
        ),
        (
            "not btrfs",
            Box::new(|t: &str| t.replace(&vol, &not_btrfs.path().display().to_string())),
            &["is not a btrfs subvolume"][..],
        ),
        (
            "base_dir elsewhere",
            Box::new(|t: &str| {
                t.replace(
                    &s.snaps.display().to_string(),
                    &other_fs.path("snaps").display().to_string(),
                )
            }),
            &["snapshots.base_dir", "not on the btrfs filesystem of"][..],
        ),
        (
            "spool below a part",
            Box::new(|t: &str| {
                t.replace("[global]", "[global]\nspool_size_bytes = 1048576")
                    .replace("[s3]", "[s3]\nspool_enabled = true")
            }),
            &["global.spool_size_bytes = 1048576 cannot hold one part"][..],
        ),
    ] {
        let r = try_cfg(edit.as_ref());
        assert_eq!(r.code, 2, "{what}: {r:?}");
        for w in words {
            assert!(
                r.stderr.contains(w) && r.stdout.contains(w),
                "{what}: {w}: {r:?}"
            );
        }
    }
    // S3 out of reach: not a config problem, exit 1.
    let r = try_cfg(&|t| {
        t.replace(
            &s.moto.endpoint,
            &format!("http://127.0.0.1:{}", free_port()),
        )
    });
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("S3 cannot be reached"), "{r:?}");
    // Not root: said plainly.
    let r = output(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args(["backup", "--config", s.cfg.to_str().unwrap(), "--dry-run"]),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("must run as root"), "{r:?}");
}

#[test]
fn nested_subvolumes_and_a_base_dir_inside_the_subvolume_restore_and_verify() {
    if !require_root("nested_subvolumes_and_a_base_dir_inside_the_subvolume_restore_and_verify") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    let v = s.vol("data");
    std::fs::write(v.join("top.txt"), "top").unwrap();
    run(&format!("btrfs subvolume create {}/nested", v.display()));
    std::fs::write(v.join("nested/inner.txt"), "inner").unwrap();
    // Snapshots inside the subvolume they are of: each is a nested subvolume of the next.
    let text = std::fs::read_to_string(&s.cfg).unwrap().replace(
        &s.snaps.display().to_string(),
        &v.join(".snapshots").display().to_string(),
    );
    std::fs::write(&s.cfg, text).unwrap();

    let r = s.backup(&["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(
            "data: not included (nested subvolumes, which btrfs send leaves out): nested"
        ),
        "{r:?}"
    );
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("event=nested_subvolumes_not_included subvolume=data count=1"),
        "{r:?}"
    );
    std::fs::write(v.join("top.txt"), "changed").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Now the first snapshot is nested too.
    assert!(r.stderr.contains("count=2"), "{r:?}");

    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("event=verify_ok mode=full")
            && r.stderr.contains("nested_subvolumes_left_out="),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(t.join("top.txt")).unwrap(),
        "changed"
    );
    assert!(!t.join("nested/inner.txt").exists());
}
