//! Network outages ridden out in-process (issue 21 item 2), through the link emulator in
//! front of moto: a 20 s blackhole or refusal in the middle of a part on a reused
//! connection or of CompleteMultipartUpload → the backup finishes in the same process,
//! re-sending at most `concurrency × part`; an outage longer than the patience → exit 1
//! within the patience and a deadline, and the next run resumes; SIGTERM during an
//! outage → exit within 5 s; a 403 still fails at once; a restore rides out an outage
//! in its downloads. Request deadlines are shortened with `BTRFS_TO_S3_TEST_DEADLINE_MS`
//! (1.5 s instead of minutes) so a blackholed request fails in seconds.

use std::time::{Duration, Instant};

use crate::link::{
    assert_published_and_restored, finish, linked, sigterm, spawn, wait_fired, KNOB, MIB,
};
use crate::support::link::{Action, Dir, Link, Trigger};
use crate::support::*;
use btrfs_to_s3::store::ObjectStore;

/// The part size the rig configures.
const PART: u64 = 5 << 20;

/// Sets `s3.outage_patience_seconds` in the setup's config.
fn patience(s: &Setup, secs: u64) {
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    assert!(text.contains("[s3]\n"), "{text}");
    std::fs::write(
        &s.cfg,
        text.replacen(
            "[s3]\n",
            &format!("[s3]\noutage_patience_seconds = {secs}\n"),
            1,
        ),
    )
    .unwrap();
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// An outage (`action`: a blackhole, or every connection reset and new ones refused)
/// that begins at `pattern` (+`after` bytes) and lasts `hole`: the backup must finish in
/// the same process, having logged the outage, and re-sent at most one part.
fn ride_out(tag: &str, pattern: &[u8], after: u64, reused_only: bool, action: Action) {
    let Some((s, link, _front)) = linked(tag, 14) else {
        return;
    };
    link.arm(Trigger {
        pattern: pattern.to_vec(),
        after,
        reused_only,
        action,
    });
    let started = Instant::now();
    let (mut child, log) = spawn(
        &s,
        s.backup_cmd(&[])
            .env(KNOB, "1500")
            .env("BTRFS_TO_S3_RETRY_BASE_MS", "200"),
        "backup",
    );
    wait_fired(&link, &mut child, &log, 120);
    let fired = started.elapsed();
    // 20 s: far beyond the bounded retries of 1.5 s requests (five attempts ≈ 8 s).
    std::thread::sleep(Duration::from_secs(20));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("event=s3_outage state=start"),
        "no outage began: {text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "it gave up: {text}");
    link.pass();
    let back = started.elapsed();
    let (code, log) = finish(child, &log, 120);
    let took = started.elapsed();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("event=s3_outage state=end"), "{log}");
    assert!(!log.contains("state=gave_up"), "{log}");
    // The next probe comes at most 16 s after the link's return (the backoff's step at
    // 20 s), then the rest of a small backup.
    assert!(
        took < back + Duration::from_secs(16 + 20),
        "{took:?}: {log}"
    );
    // Re-sent: at most concurrency (1) × part, besides the stream and a little for
    // requests and manifests.
    let total: u64 = event_field(&log, "backup_metrics", "total_bytes")
        .unwrap()
        .parse()
        .unwrap();
    let up = link.bytes(Dir::Up);
    assert!(
        up <= total + PART + MIB as u64,
        "{up} bytes went up for a stream of {total}: {log}"
    );
    eprintln!(
        "{tag}: the outage came {fired:?} in, the link returned {back:?} in, the run ended \
         {took:?} in; {up} bytes up for {total}; {} outage line(s)",
        count(&log, "event=s3_outage ")
    );
    assert_published_and_restored(&s);
}

#[test]
fn a_20_s_blackhole_in_a_part_on_a_reused_connection_is_ridden_out_in_the_same_process() {
    ride_out(
        "a_20_s_blackhole_in_a_part_on_a_reused_connection_is_ridden_out_in_the_same_process",
        b"partNumber=2&",
        MIB as u64,
        true,
        Action::Blackhole,
    );
}

#[test]
fn a_20_s_refusal_in_a_part_on_a_reused_connection_is_ridden_out_in_the_same_process() {
    ride_out(
        "a_20_s_refusal_in_a_part_on_a_reused_connection_is_ridden_out_in_the_same_process",
        b"partNumber=2&",
        MIB as u64,
        true,
        Action::Refuse,
    );
}

#[test]
fn a_20_s_blackhole_during_complete_multipart_upload_is_ridden_out_in_the_same_process() {
    ride_out(
        "a_20_s_blackhole_during_complete_multipart_upload_is_ridden_out_in_the_same_process",
        b"<CompleteMultipartUpload>",
        0,
        false,
        Action::Blackhole,
    );
}

#[test]
fn a_20_s_refusal_during_complete_multipart_upload_is_ridden_out_in_the_same_process() {
    ride_out(
        "a_20_s_refusal_during_complete_multipart_upload_is_ridden_out_in_the_same_process",
        b"<CompleteMultipartUpload>",
        0,
        false,
        Action::Refuse,
    );
}

/// Starts a backup whose link fails (`action`) in part 2, and waits until the run says
/// the outage began.
fn in_outage(
    s: &Setup,
    link: &Link,
    action: Action,
    name: &str,
) -> (std::process::Child, std::path::PathBuf, Instant) {
    link.arm(Trigger {
        pattern: b"partNumber=2&".to_vec(),
        after: MIB as u64,
        reused_only: false,
        action,
    });
    let (mut child, log) = spawn(
        s,
        s.backup_cmd(&[])
            .env(KNOB, "1500")
            .env("BTRFS_TO_S3_RETRY_BASE_MS", "200"),
        name,
    );
    wait_fired(link, &mut child, &log, 120);
    let fired = Instant::now();
    let deadline = fired + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("event=s3_outage state=start") {
            return (child, log, fired);
        }
        assert!(Instant::now() < deadline, "no outage began: {text}");
        assert!(child.try_wait().unwrap().is_none(), "it ended: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_outage_longer_than_the_patience_exits_1_and_the_next_run_resumes() {
    let Some((s, link, _front)) = linked(
        "an_outage_longer_than_the_patience_exits_1_and_the_next_run_resumes",
        14,
    ) else {
        return;
    };
    patience(&s, 5);
    let (child, log, fired) = in_outage(&s, &link, Action::Refuse, "patience");
    let (code, log) = finish(child, &log, 60);
    let took = fired.elapsed();
    assert_eq!(code, 1, "{log}");
    // The patience (5 s) from the outage's start, and one request deadline (1.5 s) for a
    // request still in flight, with some slack for the start and the shutdown.
    assert!(took < Duration::from_secs(5 + 2 + 4), "{took:?}: {log}");
    assert!(took >= Duration::from_secs(5), "{took:?}: {log}");
    assert!(log.contains("event=s3_outage state=gave_up"), "{log}");
    assert!(log.contains("s3.outage_patience_seconds"), "{log}");
    assert!(log.contains("event=backup_kept_for_resume"), "{log}");
    assert!(s
        .moto
        .store()
        .head("backups/subvol/data/current.json")
        .unwrap()
        .is_none());
    // The link is back: the next run resumes what the first stored, and finishes.
    link.pass();
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let resumed: u64 = event_field(&r.stderr, "backup_metrics", "resumed_bytes")
        .unwrap()
        .parse()
        .unwrap();
    assert!(resumed >= PART, "{r:?}");
}

#[test]
fn sigterm_during_an_outage_ends_the_backup_within_5_s() {
    let Some((s, link, _front)) = linked("sigterm_during_an_outage_ends_the_backup_within_5_s", 14)
    else {
        return;
    };
    for (action, name) in [
        (Action::Refuse, "refused"),
        (Action::Blackhole, "blackhole"),
    ] {
        link.pass();
        let (child, log, _) = in_outage(&s, &link, action, name);
        // Into the wait (and, blackholed, a probe in flight).
        std::thread::sleep(Duration::from_secs(2));
        let (took, code, log) = sigterm(child, &log);
        assert_eq!(code, 1, "{name}: {log}");
        assert!(
            took < Duration::from_secs(5),
            "{name}: {took:?} after SIGTERM: {log}"
        );
        assert!(log.contains("interrupted"), "{name}: {log}");
    }
}

#[test]
fn a_403_still_fails_at_once() {
    let Some((s, _link, _front)) = linked("a_403_still_fails_at_once", 1) else {
        return;
    };
    let started = Instant::now();
    let (child, log) = spawn(
        &s,
        s.backup_cmd(&[])
            .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
            .env("BTRFS_TO_S3_RETRY_BASE_MS", "200"),
        "forbidden",
    );
    let (code, log) = finish(child, &log, 60);
    assert_ne!(code, 0, "{log}");
    assert!(started.elapsed() < Duration::from_secs(5), "{log}");
    assert!(log.contains("SignatureDoesNotMatch"), "{log}");
    assert!(!log.contains("event=s3_outage"), "{log}");
    assert!(!log.contains("event=s3_retry"), "{log}");
}

#[test]
fn a_restore_rides_out_an_outage_in_its_downloads() {
    let Some((s, link, _front)) = linked("a_restore_rides_out_an_outage_in_its_downloads", 14)
    else {
        return;
    };
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    // The second GET on a connection (a manifest or a chunk download): every connection
    // is reset and new ones are refused for 12 s, beyond the bounded retries.
    link.arm(Trigger {
        pattern: b"GET /".to_vec(),
        after: 0,
        reused_only: true,
        action: Action::Refuse,
    });
    let t = s.fs.path("restored");
    let cfg = s.cfg.display().to_string();
    let (mut child, log) = spawn(
        &s,
        btrfs_to_s3()
            .args([
                "restore",
                "--config",
                &cfg,
                "--subvolume",
                "data",
                "--target",
            ])
            .arg(&t)
            .env(KNOB, "1500")
            .env("BTRFS_TO_S3_RETRY_BASE_MS", "200"),
        "restore",
    );
    wait_fired(&link, &mut child, &log, 120);
    std::thread::sleep(Duration::from_secs(12));
    assert!(child.try_wait().unwrap().is_none(), "it gave up");
    link.pass();
    let (code, log) = finish(child, &log, 120);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("event=s3_outage state=start"), "{log}");
    assert!(log.contains("event=s3_outage state=end"), "{log}");
    assert_same_tree(&s.vol("data"), &t);
}
