//! One clear line per fact (issue 25 item 5): a backup run's last line, at every log
//! level, says what happened; after an outage or a stop it says the backup is kept and how
//! it goes on ("the next run resumes it; backup --restart starts over"); the run's
//! `uploaded_bytes` counts what the stopped run stored and `retries` its `s3_retry` lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::link::Dir;
use crate::support::*;

const MIB: u64 = 1024 * 1024;
const PART: u64 = 5 * MIB;

fn journal(s: &Setup) -> PathBuf {
    s.state.with_file_name("state.json.resume-data.jsonl")
}

fn stored(s: &Setup) -> u64 {
    btrfs_to_s3::journal::load(&journal(s))
        .ok()
        .flatten()
        .map(|p| p.stored_bytes())
        .unwrap_or(0)
}

/// Runs a backup in the background (log to a file) until the journal says `at_least`
/// bytes are stored, then calls `then`; returns the exit code and the log.
fn run_until_stored(
    s: &Setup,
    args: &[&str],
    at_least: u64,
    then: impl FnOnce(&std::process::Child),
) -> (i32, String) {
    let log = s.fs.dir.path().join(format!("run-{at_least}.log"));
    let mut child = s
        .backup_cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawning the backup");
    let deadline = Instant::now() + Duration::from_secs(90);
    while stored(s) < at_least {
        if let Ok(Some(st)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the backup ended ({st}) before {at_least} bytes were stored:\n{text}");
        }
        assert!(Instant::now() < deadline, "no progress within 90 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    then(&child);
    let status = child.wait().expect("waiting for the backup");
    let text = std::fs::read_to_string(&log).expect("reading the log");
    (status.code().unwrap_or(-1), text)
}

fn last_line(log: &str) -> String {
    log.trim_end().lines().last().unwrap_or("").to_string()
}

const KEPT: &str = "-- data is kept: the next run resumes it; backup --restart starts over";

#[test]
fn the_last_line_says_what_happened_and_how_a_stopped_backup_goes_on() {
    if !require_root("the_last_line_says_what_happened_and_how_a_stopped_backup_goes_on") {
        return;
    }
    let s = Setup::new(SetupOpts {
        chunk_size: 10 * MIB,
        part_size: PART,
        concurrency: 2,
        storage_class_chunks: "STANDARD",
        fs_mib: 768,
        ..Default::default()
    });
    random_file(&s.vol("data").join("a.bin"), 32 * MIB as usize);
    let proxy = Proxy::start(s.moto.port);
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    // No outage patience: the link's death below ends the run after the bounded retries
    // (a run with patience waits it out: tests/it/outage.rs).
    let text = text.replacen("[s3]\n", "[s3]\noutage_patience_seconds = 0\n", 1);
    assert!(text.contains("outage_patience_seconds = 0"), "{text}");
    std::fs::write(&s.cfg, text.replace(&s.moto.endpoint, &proxy.endpoint)).unwrap();
    // Slow enough that the run is still sending when the test acts.
    proxy.link.set_rate(Dir::Up, Some(16_000_000));

    // An outage: the link dies after a part is stored.
    let (code, log) = run_until_stored(&s, &[], PART, |_| proxy.set_up(false));
    assert_eq!(code, 1, "{log}");
    let last = last_line(&log);
    assert!(
        last.starts_with("btrfs_to_s3: error: backup failed for 1 of 1 subvolumes: data: nothing published; this run stored ")
            && last.ends_with(KEPT),
        "{last}"
    );
    // Counters: what this run stored (the journal's parts), every s3_retry line.
    let first_stored = stored(&s);
    let uploaded: u64 = event_field(&log, "backup_summary", "uploaded_bytes")
        .expect("a summary")
        .parse()
        .unwrap();
    assert_eq!(uploaded, first_stored, "{log}");
    let upload_seconds: f64 = event_field(&log, "backup_summary", "upload_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        upload_seconds > 0.0,
        "the stopped upload's time counts: {log}"
    );
    assert!(last.contains(&format!("({first_stored} bytes)")), "{last}");
    let retry_lines = log
        .lines()
        .filter(|l| l.contains("event=s3_retry "))
        .count() as u64;
    assert!(retry_lines > 0, "{log}");
    let retries: u64 = event_field(&log, "backup_summary", "retries")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retries, retry_lines, "{log}");
    let said = if retry_lines == 1 {
        "after 1 retry".to_string()
    } else {
        format!("after {retry_lines} retries")
    };
    assert!(
        last.contains(&format!("({first_stored} bytes) {said}: ")),
        "{last}"
    );

    // The link is back; the resumed run is stopped with SIGTERM (systemctl stop) at the
    // default log level: its last line says the same, and counts only its own bytes.
    proxy.set_up(true);
    let (code, log) = run_until_stored(&s, &["--log-level", "info"], first_stored + PART, |c| {
        run(&format!("kill -TERM {}", c.id()));
    });
    assert_eq!(code, 1, "{log}");
    let last = last_line(&log);
    assert!(last.ends_with(KEPT), "{last}");
    assert!(
        last.contains("nothing published; this run stored "),
        "{last}"
    );
    let uploaded: u64 = event_field(&log, "backup_summary", "uploaded_bytes")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(uploaded, stored(&s) - first_stored, "{log}");
    assert!(!log.contains("DEBUG"), "{log}");

    // The next run finishes it; at --log-level error its one line is the closing one.
    proxy.link.set_rate(Dir::Up, None);
    let r = s.backup(&["--log-level", "error"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    let last = last_line(&r.stderr);
    assert!(
        last.starts_with("btrfs_to_s3: backup finished: data: backed up, ")
            && last.contains("already stored)"),
        "{last}"
    );
    // Nothing due: said too.
    let r = s.backup(&["--log-level", "error"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stderr.trim(),
        "btrfs_to_s3: backup finished: data: not due",
        "{r:?}"
    );
}

#[test]
fn list_verify_prune_print_tables_without_repeating_them_and_restore_says_its_target() {
    if !require_root(
        "list_verify_prune_print_tables_without_repeating_them_and_restore_says_its_target",
    ) {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "one").unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let current = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = s.cfg.display().to_string();
    // The default log level (the rig's config says debug).
    let at_info = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--config", &cfg, "--log-level", "info"]);
        run_bin(&a)
    };
    let r = at_info(&["list"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("    manifest {current}")),
        "the table names the key restore --manifest-key takes: {r:?}"
    );
    // Only what the table does not say (where the credentials came from).
    assert!(
        r.stderr
            .lines()
            .all(|l| l.contains(" INFO event=credentials_loaded ")),
        "{r:?}"
    );
    let r = at_info(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("subvolume data: ok"), "{r:?}");
    assert!(!r.stderr.contains("event=verify_"), "{r:?}");
    let r = at_info(&["prune"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.is_empty(), "{r:?}");
    assert!(!r.stderr.contains("event=prune_"), "{r:?}");

    // A relative --target: the resolved path is the first thing said, at any level.
    let r = run_bin(&[
        "restore",
        "--config",
        &cfg,
        "--log-level",
        "error",
        "--subvolume",
        "data",
        "--target",
        "back",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let resolved = s.fs.mnt.join("back");
    assert_eq!(
        r.stderr.lines().next().unwrap_or(""),
        format!(
            "btrfs_to_s3: restoring into {} (--target back is relative: taken under \
             restore.target_base_dir {})",
            resolved.display(),
            s.fs.mnt.display()
        ),
        "{r:?}"
    );
    assert!(resolved.join("f").exists());
}
