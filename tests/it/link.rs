//! A home link that stalls (issue 21): the link emulator's own behaviour (`support/link.rs`,
//! no root needed), then runs of the binary through it against moto: a blackhole in the
//! middle of a part on a reused connection or during CompleteMultipartUpload costs one
//! request deadline and a retry, a trickling server fails its request within its deadline,
//! and SIGTERM ends a backup, a listing or a restore within 5 s whatever the link does.
//! The deadlines are shortened with `BTRFS_TO_S3_TEST_DEADLINE_MS` where a test waits for
//! one (the production values are minutes); the SIGTERM tests keep the production ones.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::keepalive::KeepAlive;
use crate::support::link::{parse_rate, Action, Dir, Link, Mode, Trigger};
use crate::support::*;
use btrfs_to_s3::store::ObjectStore;

pub(crate) const MIB: usize = 1 << 20;
pub(crate) const KNOB: &str = "BTRFS_TO_S3_TEST_DEADLINE_MS";

/// An echo server on 127.0.0.1 (each connection's bytes come back).
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn client(link: &Link) -> TcpStream {
    let c = TcpStream::connect(link.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Sends `n` bytes and reads them back; the time it took.
fn round_trip(c: &mut TcpStream, n: usize) -> Duration {
    let started = Instant::now();
    let data = vec![5u8; n];
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut back = vec![0u8; n];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back.iter().all(|b| *b == 5));
    started.elapsed()
}

/// Whether `c` gets nothing within `ms`.
fn silent(c: &mut TcpStream, ms: u64) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(ms))).unwrap();
    let mut b = [0u8; 1];
    let quiet = matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    quiet
}

#[test]
fn the_link_caps_the_rate_and_adds_latency() {
    let link = Link::start(echo()).unwrap();
    let mut c = client(&link);
    let fast = round_trip(&mut c, 4 * MIB);
    link.set_rate(Dir::Up, Some(8_000_000));
    // 4 MB at 8 MB/s: half a second (the down direction is free).
    let capped = round_trip(&mut c, 4_000_000);
    assert!(
        capped >= Duration::from_millis(450) && capped < Duration::from_secs(2),
        "{capped:?} (unthrottled {fast:?})"
    );
    link.set_rate(Dir::Up, None);
    link.command("rtt 200").unwrap();
    let slow = round_trip(&mut c, 10);
    assert!(
        slow >= Duration::from_millis(200) && slow < Duration::from_secs(1),
        "{slow:?}"
    );
    // The rate is shared by every connection, as an uplink's is.
    link.command("rtt 0").unwrap();
    link.command("rate both 8MB").unwrap();
    let started = Instant::now();
    let pair: Vec<_> = (0..2)
        .map(|_| {
            let mut c = client(&link);
            std::thread::spawn(move || round_trip(&mut c, 2_000_000))
        })
        .collect();
    for t in pair {
        t.join().unwrap();
    }
    let both = started.elapsed();
    assert!(both >= Duration::from_millis(450), "{both:?}");
    assert_eq!(parse_rate("25MB").unwrap(), 25_000_000);
    assert_eq!(parse_rate("10MiB").unwrap(), 10 << 20);
    assert!(parse_rate("fast").is_err());
}

#[test]
fn the_link_refuses_resets_pauses_and_trickles() {
    let link = Link::start(echo()).unwrap();
    let mut live = client(&link);
    round_trip(&mut live, 100);
    link.refuse();
    std::thread::sleep(Duration::from_millis(50));
    let e = TcpStream::connect(link.addr()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // A refusal leaves the live connections alone.
    round_trip(&mut live, 100);
    link.pass();
    std::thread::sleep(Duration::from_millis(50));
    let mut c = client(&link);
    round_trip(&mut c, 100);
    // A reset: the client sees ECONNRESET, not an orderly end.
    link.reset();
    let mut b = [0u8; 1];
    let e = c.read(&mut b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    // A pause holds the bytes, a resume delivers them.
    let mut c = client(&link);
    link.pause();
    c.write_all(b"held").unwrap();
    assert!(silent(&mut c, 300));
    link.pass();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"held");
    // A trickle: one byte per 100 ms from the server.
    link.command("trickle 0.1").unwrap();
    let t = round_trip(&mut c, 8);
    assert!(t >= Duration::from_millis(700), "{t:?}");
    link.command("trickle off").unwrap();
    assert!(link.command("rate sideways 1MB").is_err());
}

#[test]
fn a_blackhole_freezes_live_connections_for_good_and_answers_no_new_one() {
    let link = Link::start(echo()).unwrap();
    let mut live = client(&link);
    round_trip(&mut live, 100);
    link.blackhole();
    live.write_all(b"lost").unwrap();
    assert!(silent(&mut live, 300));
    // New connections are accepted and never answered.
    let mut new = client(&link);
    new.write_all(b"anyone?").unwrap();
    assert!(silent(&mut new, 300));
    link.pass();
    // Those stay frozen (the NAT table is gone); a connection made now works.
    assert!(silent(&mut live, 300));
    assert!(silent(&mut new, 300));
    let mut fresh = client(&link);
    round_trip(&mut fresh, 1000);
    assert_eq!(link.mode(), Mode::Pass);
    // Dropping the link ends every thread, even with frozen connections.
    let started = Instant::now();
    drop(link);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_trigger_fires_at_its_byte_on_a_reused_connection_only() {
    let link = Link::start(echo()).unwrap();
    link.arm(Trigger {
        pattern: b"PUT /x".to_vec(),
        after: 1000,
        reused_only: true,
        action: Action::Reset,
    });
    let mut c = client(&link);
    // The first request on the connection does not count.
    c.write_all(b"PUT /x HTTP/1.1\r\n\r\n").unwrap();
    let mut head = [0u8; 19];
    c.read_exact(&mut head).unwrap();
    assert_eq!(link.fired(), 0);
    // The second does: 1000 bytes after its pattern go through, then the reset.
    c.write_all(b"PUT /x HTTP/1.1\r\n\r\n").unwrap();
    c.write_all(&[1u8; 3000]).unwrap();
    let mut got = Vec::new();
    let e = loop {
        let mut b = [0u8; 4096];
        match c.read(&mut b) {
            Ok(0) => panic!("an orderly end instead of a reset"),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(link.fired(), 1);
    // Both requests, then exactly 1000 bytes after the pattern.
    assert_eq!(link.bytes(Dir::Up), 19 + 6 + 1000);
    assert!(got.len() <= 19 + 6 + 1000, "{}", got.len());
}

/// A backup setup whose S3 endpoint is a link emulator in front of moto (through a
/// keep-alive front: moto closes every connection after one reply, S3 does not). One
/// uploader: its requests go over one pooled connection.
pub(crate) fn linked(tag: &str, data_mib: usize) -> Option<(Setup, Link, KeepAlive)> {
    if !require_root(tag) {
        return None;
    }
    let s = Setup::new(SetupOpts {
        concurrency: 1,
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    if data_mib > 0 {
        random_file(&s.vol("data").join("f"), data_mib * MIB);
    }
    let front = KeepAlive::start(SocketAddr::from(([127, 0, 0, 1], s.moto.port))).unwrap();
    let link = Link::start(front.addr()).unwrap();
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&s.cfg, text.replace(&s.moto.endpoint, &link.endpoint())).unwrap();
    Some((s, link, front))
}

/// Runs `cmd` in the background with its stderr in a file.
pub(crate) fn spawn(
    s: &Setup,
    cmd: &mut std::process::Command,
    name: &str,
) -> (Child, std::path::PathBuf) {
    let log = s.fs.dir.path().join(format!("{name}.log"));
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// Waits for `child` up to `secs`; kills it and fails the test when it is still running.
pub(crate) fn finish(mut child: Child, log: &std::path::Path, secs: u64) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (
                st.code().unwrap_or(-1),
                std::fs::read_to_string(log).unwrap(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {secs} s (it hangs):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn wait_fired(link: &Link, child: &mut Child, log: &std::path::Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    while link.fired() == 0 {
        assert!(
            Instant::now() < deadline,
            "the trigger never fired: {}",
            log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before the trigger: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The s3_retry lines of `log` whose operation starts with `op`.
fn retries<'a>(log: &'a str, op: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("event=s3_retry") && l.contains(&format!("op=\"{op}")))
        .collect()
}

/// A blackhole (the link lost, no RST, no FIN) in the middle of a blackholed request,
/// lifted after `hole`: the run must retry and finish in the same process.
fn blackhole_then_finish(tag: &str, pattern: &[u8], after: u64, reused_only: bool, op: &str) {
    let Some((s, link, _front)) = linked(tag, 14) else {
        return;
    };
    link.arm(Trigger {
        pattern: pattern.to_vec(),
        after,
        reused_only,
        action: Action::Blackhole,
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
    // Longer than one request deadline (1.5 s), shorter than the retry budget.
    std::thread::sleep(Duration::from_secs(3));
    link.pass();
    let (code, log) = finish(child, &log, 120);
    assert_eq!(code, 0, "{log}");
    // The hole, a few request deadlines and the rest of the (small) backup.
    assert!(
        started.elapsed() < fired + Duration::from_secs(3 + 15),
        "{:?}: {log}",
        started.elapsed()
    );
    let r = retries(&log, op);
    assert!(!r.is_empty(), "no retry of {op}: {log}");
    assert!(r[0].contains("timed out"), "{}", r[0]);
    eprintln!(
        "{tag}: the blackhole came {fired:?} in, the run ended {:?} in; {}",
        started.elapsed(),
        r[0]
    );
    assert_published_and_restored(&s);
}

#[test]
fn a_blackhole_in_a_part_on_a_reused_connection_fails_within_its_deadline_and_is_retried() {
    // Part 2 always goes over the connection part 1 used; 1 MiB of it gets through.
    blackhole_then_finish(
        "a_blackhole_in_a_part_on_a_reused_connection_fails_within_its_deadline_and_is_retried",
        b"partNumber=2&",
        MIB as u64,
        true,
        "UploadPart",
    );
}

#[test]
fn a_blackhole_during_complete_multipart_upload_is_bounded_and_retried() {
    blackhole_then_finish(
        "a_blackhole_during_complete_multipart_upload_is_bounded_and_retried",
        b"<CompleteMultipartUpload>",
        0,
        false,
        "CompleteMultipartUpload",
    );
}

#[test]
fn a_trickling_server_fails_each_request_within_its_deadline() {
    let Some((s, link, _front)) = linked(
        "a_trickling_server_fails_each_request_within_its_deadline",
        0,
    ) else {
        return;
    };
    // A byte every 300 ms never trips the 1.5 s stall timeout: only the deadline can.
    link.set_trickle(Some(Duration::from_millis(300)));
    let cfg = s.cfg.display().to_string();
    let started = Instant::now();
    let (child, log) = spawn(
        &s,
        btrfs_to_s3()
            .args(["list", "--config", &cfg])
            .env(KNOB, "1500"),
        "list",
    );
    let (code, log) = finish(child, &log, 60);
    let took = started.elapsed();
    assert_eq!(code, 1, "{log}");
    // Five attempts of 1.5 s each and their backoff.
    assert!(took < Duration::from_secs(20), "{took:?}: {log}");
    assert!(log.contains("after 5 attempts"), "{log}");
    // The deadline of the whole request (1.5 s, no body) or of its response, whichever
    // comes first.
    assert!(
        log.contains("deadline of 1.5 s (timed out)")
            || log.contains("no response within 1.5 s of the request (timed out)"),
        "{log}"
    );
}

/// Sends SIGTERM to `child` and says how long it took to end.
pub(crate) fn sigterm(child: Child, log: &std::path::Path) -> (Duration, i32, String) {
    let signalled = Instant::now();
    run(&format!("kill -TERM {}", child.id()));
    let (code, log) = finish(child, log, 60);
    (signalled.elapsed(), code, log)
}

#[test]
fn sigterm_ends_a_backup_a_listing_and_a_restore_within_5_s_in_a_blackhole() {
    let Some((s, link, _front)) = linked(
        "sigterm_ends_a_backup_a_listing_and_a_restore_within_5_s_in_a_blackhole",
        1,
    ) else {
        return;
    };
    // Production deadlines here: only the stop can end these requests within seconds.
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let cfg = s.cfg.display().to_string();
    let target = s.fs.path("restored").display().to_string();
    link.blackhole();
    for (name, args) in [
        ("list", vec!["list", "--config", &cfg]),
        (
            "restore",
            vec![
                "restore",
                "--config",
                &cfg,
                "--subvolume",
                "data",
                "--target",
                &target,
            ],
        ),
    ] {
        let (child, log) = spawn(&s, btrfs_to_s3().args(&args), name);
        std::thread::sleep(Duration::from_secs(2));
        let (took, code, log) = sigterm(child, &log);
        assert_ne!(code, 0, "{name}: {log}");
        assert!(
            took < Duration::from_secs(5),
            "{name}: {took:?} after SIGTERM: {log}"
        );
    }
    // A backup blackholed in the middle of a part (on a fresh connection: a new process).
    link.pass();
    random_file(&s.vol("data").join("g"), 8 * MIB);
    link.arm(Trigger {
        pattern: b"partNumber=1&".to_vec(),
        after: MIB as u64,
        reused_only: false,
        action: Action::Blackhole,
    });
    let (mut child, log) = spawn(&s, &mut s.backup_cmd(&["--once"]), "backup");
    wait_fired(&link, &mut child, &log, 120);
    std::thread::sleep(Duration::from_secs(1));
    let (took, code, log) = sigterm(child, &log);
    assert_eq!(code, 1, "{log}");
    assert!(
        took < Duration::from_secs(5),
        "{took:?} after SIGTERM: {log}"
    );
    assert!(log.contains("interrupted"), "{log}");
}

/// The backup was published (`current.json`) and restores to the same tree.
pub(crate) fn assert_published_and_restored(s: &Setup) {
    assert!(s
        .moto
        .store()
        .head("backups/subvol/data/current.json")
        .unwrap()
        .is_some());
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &t);
}
