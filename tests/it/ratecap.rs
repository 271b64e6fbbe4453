//! The user's rate cap (issue 21 item 5) end to end against moto: a backup under an
//! upload timetable and a restore under `--limit-download` complete and are correct, take
//! at least about their size at the cap (a loose lower bound only: timing is measured by
//! contrib/bench.sh, not asserted here), and say the cap in their progress lines;
//! `--limit-upload off` lifts it for one run; SIGTERM ends a backup waiting under a very
//! low cap within 5 s; bad rates are usage and config errors naming the flag or key.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const MIB: usize = 1 << 20;

fn timed(cmd: &mut std::process::Command) -> (RunResult, Duration) {
    let started = Instant::now();
    let r = output(cmd);
    (r, started.elapsed())
}

#[test]
fn a_capped_backup_and_a_capped_restore_complete_and_are_correct() {
    if !require_root("a_capped_backup_and_a_capped_restore_complete_and_are_correct") {
        return;
    }
    // One entry: 2 MiB/s all day, whatever the local time of the test.
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        extra: "progress_interval_seconds = 1",
        s3_extra: "upload_rate_schedule = \"00:00,2MiB\"",
        ..Default::default()
    });
    let v = s.vol("data");
    random_file(&v.join("f"), 8 * MIB);
    let (r, took) = timed(&mut s.backup_cmd(&[]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("event=rate_cap upload=\"timetable 00:00,2.0MiB/s\" download=off"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("event=backup_progress") && r.stderr.contains("rate_cap=2.0MiB/s"),
        "the progress lines show the cap: {r:?}"
    );
    let stream: f64 = event_field(&r.stderr, "backup_metrics", "total_bytes")
        .and_then(|b| b.parse().ok())
        .expect("total_bytes");
    let at_cap = stream / (2 * MIB) as f64;
    eprintln!("capped backup: {stream} bytes in {took:?} ({at_cap:.1} s at the cap)");
    assert!(
        took.as_secs_f64() >= 0.5 * at_cap,
        "{stream} bytes in {took:?} under a 2 MiB/s cap"
    );

    // --limit-upload off: no cap for this run.
    run(&format!("echo more > {}/g", v.display()));
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.backup(&["--once", "--limit-upload", "off"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("rate_cap"), "{r:?}");

    // The restore under --limit-download, checked against the source.
    let t = s.fs.path("restored");
    let cfg = s.cfg.display().to_string();
    let (r, took) = timed(btrfs_to_s3().args([
        "restore",
        "--config",
        &cfg,
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
        "--limit-download",
        "2MiB",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    eprintln!("capped restore: {took:?}");
    assert!(r.stderr.contains("event=verify_ok mode=full"), "{r:?}");
    assert!(
        r.stderr
            .contains("event=rate_cap upload=\"timetable 00:00,2.0MiB/s\" download=2.0MiB/s"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("event=restore_progress") && r.stderr.contains("rate_cap=2.0MiB/s"),
        "{r:?}"
    );
    assert!(
        took.as_secs_f64() >= 0.5 * at_cap,
        "restored {stream} bytes and more in {took:?} under a 2 MiB/s cap"
    );
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let src = std::path::PathBuf::from(s.get_json(&key)["snapshot"]["path"].as_str().unwrap());
    assert_same_tree(&src, &t);
}

fn spawn_logged(cmd: &mut std::process::Command, log: &std::path::Path) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn sigterm_ends_a_backup_waiting_under_a_low_cap_within_5_s() {
    if !require_root("sigterm_ends_a_backup_waiting_under_a_low_cap_within_5_s") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f"), 8 * MIB);
    // 16 KiB/s: the first part alone would take minutes.
    let log = s.fs.dir.path().join("backup.log");
    let mut child = spawn_logged(&mut s.backup_cmd(&["--limit-upload", "16KiB"]), &log);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ended before the signal"
    );
    let signalled = Instant::now();
    run(&format!("kill -TERM {}", child.id()));
    let deadline = signalled + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 60 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        took < Duration::from_secs(5),
        "{took:?} after SIGTERM: {text}"
    );
    assert!(text.contains("interrupted"), "{text}");
    // Nothing was published.
    assert!(
        !s.moto
            .list_keys()
            .iter()
            .any(|k| k.ends_with("current.json")),
        "{text}"
    );
}

#[test]
fn bad_rates_are_usage_and_config_errors() {
    let r = run_bin(&["backup", "--limit-upload", "fast"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--limit-upload") && r.stderr.contains("not a number"),
        "{r:?}"
    );
    let r = run_bin(&[
        "restore",
        "--subvolume",
        "d",
        "--target",
        "/x",
        "--limit-download",
        "100",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("below the lowest cap"), "{r:?}");
    let dir = TempDir::new("ratecap-config");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        "[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n\
         upload_rate_schedule = \"08:00,20MiB 25:00,off\"\n",
    )
    .unwrap();
    let r = run_bin(&["list", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("s3.upload_rate_schedule")
            && r.stderr.contains("\"25:00\" is not a 24-hour time HH:MM"),
        "{r:?}"
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
}
