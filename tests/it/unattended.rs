//! A backup left to run alone for days (issue 21, items 3, 4 and 6). A run whose bytes
//! stop moving (a `btrfs send` that hangs, a link that turns into a blackhole) ends itself
//! with exit 1 naming the stall, and the next run resumes; `BTRFS_TO_S3_STALL_SECONDS`
//! shortens the 15-minute limit here. A run with nothing due and no pending backup exits 0
//! at once without asking S3 anything, and one with a pending backup resumes it whatever
//! the schedule says: the timer's start after boot relies on both. The units' restart
//! arithmetic rides out a day-long outage. A resumed backup reports the bytes it sent and
//! their rate apart from the bytes it verified.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

const MIB: u64 = 1024 * 1024;
const PART: u64 = 5 * MIB;

fn setup(tag: &str, data_mib: u64, extra: &str) -> Option<Setup> {
    if !require_root(tag) {
        return None;
    }
    let s = Setup::new(SetupOpts {
        chunk_size: 20 * MIB,
        part_size: PART,
        concurrency: 2,
        retain: 1,
        storage_class_chunks: "STANDARD",
        fs_mib: 768,
        extra,
        ..Default::default()
    });
    random_file(&s.vol("data").join("a.bin"), (data_mib * MIB) as usize);
    Some(s)
}

fn journal_path(s: &Setup) -> std::path::PathBuf {
    s.state.with_file_name("state.json.resume-data.jsonl")
}

fn stored(s: &Setup) -> u64 {
    btrfs_to_s3::journal::load(&journal_path(s))
        .ok()
        .flatten()
        .map(|p| p.stored_bytes())
        .unwrap_or(0)
}

/// Starts a backup whose stderr goes to `log`, and waits until it has stored `bytes`.
fn start_until_stored(s: &Setup, env: &[(&str, &str)], log: &std::path::Path, bytes: u64) -> Child {
    let mut cmd = s.backup_cmd(&[]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(s) < bytes {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the backup did not store {bytes} bytes while running: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Waits for `child` at most `secs`; its exit code and how long it took (killed: -9).
fn wait_within(child: &mut Child, secs: u64) -> (i32, Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code().unwrap_or(-1), t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            return (-9, t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next run resumes the kept backup and publishes it.
fn next_run_resumes(s: &Setup) -> RunResult {
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=backup_resumed"), "{r:?}");
    assert!(!journal_path(s).exists());
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.contains("/full/manifest-"), "{key}");
    r
}

/// A stopped (SIGSTOP) process, continued and killed on drop.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = sh(&format!("kill -CONT {p}; kill -KILL {p}", p = self.0));
    }
}

#[test]
fn a_btrfs_send_that_hangs_ends_the_run_with_exit_1() {
    let Some(s) = setup("a_btrfs_send_that_hangs_ends_the_run_with_exit_1", 120, "") else {
        return;
    };
    let log = s.fs.dir.path().join("send-stall.log");
    let mut child = start_until_stored(&s, &[("BTRFS_TO_S3_STALL_SECONDS", "2")], &log, PART);
    // btrfs send stops writing (a hung kernel or disk, as far as the reader can tell):
    // the reader blocks in its read, where no cancel flag reaches it.
    let pids = run(&format!("pgrep -P {} -x btrfs || true", child.id()));
    let Some(pid) = pids
        .split_whitespace()
        .next()
        .map(|p| p.parse::<u32>().unwrap())
    else {
        let _ = child.kill();
        panic!(
            "no btrfs send child: {}",
            std::fs::read_to_string(&log).unwrap()
        );
    };
    run(&format!("kill -STOP {pid}"));
    let stopped = Stopped(pid);
    // Without the watchdog it would hang for ever: 60 s is far beyond 2 s and the grace.
    let (code, took) = wait_within(&mut child, 60);
    drop(stopped);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 1, "{took:?}\n{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(stderr.contains("event=backup_stalled"), "{stderr}");
    assert!(stderr.contains("event=backup_stall_exit"), "{stderr}");
    assert!(
        stderr.contains("btrfs_to_s3: error: the backup of data stalled: nothing moved for"),
        "{stderr}"
    );
    assert!(journal_path(&s).exists(), "the journal is kept");
    next_run_resumes(&s);
}

/// A TCP proxy on 127.0.0.1 in front of a server that can freeze, as a link does when a
/// router loses its NAT table: while frozen, no byte moves either way on any connection
/// and new connections are accepted and never answered (a blackhole, no reset, no
/// refusal). Stopped on drop.
struct FreezingProxy {
    endpoint: String,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl FreezingProxy {
    fn start(target_port: u16) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (fz, st) = (frozen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                for (mut from, mut to) in [(client, server), (s2, c2)] {
                    let (fz, st) = (fz.clone(), st.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            while fz.load(Ordering::SeqCst) && !st.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            if st.load(Ordering::SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    // Bytes read just before a freeze wait for the thaw.
                                    while fz.load(Ordering::SeqCst) && !st.load(Ordering::SeqCst) {
                                        std::thread::sleep(Duration::from_millis(20));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        FreezingProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            frozen,
            stop,
            port,
        }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn a_link_that_blackholes_ends_the_run_with_exit_1_before_any_socket_timeout() {
    let Some(s) = setup(
        "a_link_that_blackholes_ends_the_run_with_exit_1_before_any_socket_timeout",
        120,
        "",
    ) else {
        return;
    };
    let proxy = FreezingProxy::start(s.moto.port);
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&s.cfg, text.replace(&s.moto.endpoint, &proxy.endpoint)).unwrap();
    let log = s.fs.dir.path().join("blackhole.log");
    let mut child = start_until_stored(&s, &[("BTRFS_TO_S3_STALL_SECONDS", "2")], &log, PART);
    proxy.freeze(true);
    // The requests in flight wait for replies that never come; their sockets would time
    // out after 30 s of silence. The watchdog stops the run first, the way SIGTERM does:
    // the run ends on its own, with its summary.
    let (code, took) = wait_within(&mut child, 60);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 1, "{took:?}\n{stderr}");
    assert!(took < Duration::from_secs(20), "{took:?}\n{stderr}");
    assert!(stderr.contains("event=backup_stalled"), "{stderr}");
    assert!(!stderr.contains("event=backup_stall_exit"), "{stderr}");
    assert!(stderr.contains("event=backup_kept_for_resume"), "{stderr}");
    assert!(
        stderr.contains(
            "backup failed for 1 of 1 subvolumes: data: nothing published; this run stored "
        ) && stderr.contains("): the backup of data stalled"),
        "{stderr}"
    );
    assert!(journal_path(&s).exists(), "the journal is kept");
    proxy.freeze(false);
    next_run_resumes(&s);
}

#[test]
fn nothing_due_and_nothing_pending_exits_0_at_once_without_asking_s3() {
    let Some(s) = setup(
        "nothing_due_and_nothing_pending_exits_0_at_once_without_asking_s3",
        8,
        "",
    ) else {
        return;
    };
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    // The same bucket behind a server that records what it is asked and answers 200.
    let canned = CannedServer::start("200 OK", &[("ETag", "\"e\"")], "");
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&s.cfg, text.replace(&s.moto.endpoint, &canned.endpoint)).unwrap();
    let t = Instant::now();
    let r = s.backup(&[]);
    let took = t.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("action=skip"), "{r:?}");
    assert_eq!(canned.requests(), Vec::<String>::new(), "{r:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The unit's pre-check asks the bucket once (HeadBucket), and nothing else.
    let r = s.backup(&["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("data: skip"), "{r:?}");
    let asked = canned.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].starts_with("head /itest "), "{asked:?}");
}

#[test]
fn a_pending_backup_is_resumed_by_a_run_with_nothing_due() {
    let Some(s) = setup(
        "a_pending_backup_is_resumed_by_a_run_with_nothing_due",
        30,
        "",
    ) else {
        return;
    };
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    std::thread::sleep(Duration::from_millis(1100));
    random_file(&s.vol("data").join("b.bin"), 15 * MIB as usize);
    // An incremental (--once) that a reboot cuts short.
    let r = output(
        s.backup_cmd(&["--once"])
            .env("BTRFS_TO_S3_FAILPOINT", "after_part_journaled:1"),
    );
    assert_eq!(r.code, -1, "{r:?}");
    assert!(journal_path(&s).exists());
    // The timer's start after boot: nothing is due by the schedule, but the pending
    // backup is resumed and published.
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=backup_resumed"), "{r:?}");
    assert!(r.stderr.contains("event=backup_published"), "{r:?}");
    assert!(!journal_path(&s).exists());
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.contains("/incremental/manifest-"), "{key}");
}

/// `key=value` of a unit file (the last one; `None` when absent).
fn unit_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_string())
}

/// Seconds of a systemd time span such as `5min`, `1h`, `90`, `2h 30min`.
fn span_seconds(v: &str) -> u64 {
    v.split_whitespace()
        .map(|w| {
            let digits: String = w.chars().take_while(|c| c.is_ascii_digit()).collect();
            let n: u64 = digits.parse().unwrap_or_else(|_| panic!("time span {v:?}"));
            n * match &w[digits.len()..] {
                "" | "s" | "sec" => 1,
                "m" | "min" => 60,
                "h" => 3600,
                "d" => 86_400,
                u => panic!("unit {u:?} in {v:?}"),
            }
        })
        .sum()
}

#[test]
fn the_units_restart_through_a_day_long_outage_and_resume_after_boot() {
    let service =
        std::fs::read_to_string(repo().join("contrib/systemd/btrfs_to_s3.service")).unwrap();
    let timer = std::fs::read_to_string(repo().join("contrib/systemd/btrfs_to_s3.timer")).unwrap();
    // A reboot mid-backup: the timer starts the service minutes after boot.
    let boot = span_seconds(&unit_value(&timer, "OnBootSec").expect("OnBootSec= in the timer"));
    assert!((60..=600).contains(&boot), "OnBootSec= {boot} s");
    assert_eq!(
        unit_value(&service, "Restart").as_deref(),
        Some("on-failure")
    );
    let restart = span_seconds(&unit_value(&service, "RestartSec").unwrap());
    let interval = span_seconds(&unit_value(&service, "StartLimitIntervalSec").unwrap());
    let burst: u64 = unit_value(&service, "StartLimitBurst")
        .unwrap()
        .parse()
        .unwrap();
    assert!(restart >= 60, "RestartSec= {restart} s");
    // Every start failing at once, restarts RestartSec apart: the most starts any window
    // of StartLimitIntervalSec holds, plus the timer's, the boot's and a manual one, stay
    // under the burst, so no outage, however long, hits the limit, and the timer is never
    // refused.
    let most = interval / restart + 1 + 3;
    assert!(
        most < burst,
        "{most} starts fit in {interval} s, StartLimitBurst={burst}"
    );
    // And the unit says that arithmetic.
    assert!(service.contains("24 h outage"), "{service}");
    // The stall watchdog's knob is said where a user would set it.
    assert!(service.contains("BTRFS_TO_S3_STALL_SECONDS"), "{service}");
}

#[test]
fn a_resumed_backup_reports_what_it_sent_apart_from_what_it_verified() {
    let work = TempDir::new("honest");
    let prom = work.path().join("b.prom");
    let global = format!("metrics_path = \"{}\"", prom.display());
    let Some(s) = setup(
        "a_resumed_backup_reports_what_it_sent_apart_from_what_it_verified",
        60,
        &global,
    ) else {
        return;
    };
    let r = output(
        s.backup_cmd(&[])
            .env("BTRFS_TO_S3_FAILPOINT", "after_chunk_journaled:1"),
    );
    assert_eq!(r.code, -1, "{r:?}");
    let before = stored(&s);
    assert!(before >= 20 * MIB, "{before}");
    let r = next_run_resumes(&s);
    let field = |k: &str| {
        event_field(&r.stderr, "backup_metrics", k).unwrap_or_else(|| panic!("{k}: {r:?}"))
    };
    let num = |k: &str| -> f64 { field(k).trim_end_matches("MB/s").parse().unwrap() };
    let (total, uploaded, resumed) = (
        num("total_bytes"),
        num("uploaded_bytes"),
        num("resumed_bytes"),
    );
    assert_eq!(uploaded + resumed, total, "{r:?}");
    assert!(resumed >= before as f64, "{r:?}");
    // throughput is the contract's: the whole stream over the whole run.
    let elapsed = num("elapsed_seconds");
    // (Seconds are printed with 3 decimals: on a run this short that alone is ~1 %.)
    let close = |got: f64, want: f64| (got - want).abs() <= 0.2 + 0.02 * want;
    assert!(close(num("throughput"), total / elapsed / 1e6), "{r:?}");
    // upload_rate is what this run sent over the time it was sending.
    let secs = num("upload_seconds");
    assert!(secs > 0.0 && secs <= elapsed, "{r:?}");
    assert!(close(num("upload_rate"), uploaded / secs / 1e6), "{r:?}");
    assert!(num("first_new_byte_seconds") > 0.0, "{r:?}");
    // The resume said when it reached the link again, and what it had verified by then.
    let verified: u64 = event_field(&r.stderr, "resume_first_new_byte", "verified_bytes")
        .unwrap_or_else(|| panic!("no resume_first_new_byte: {r:?}"))
        .parse()
        .unwrap();
    assert!(verified > 0 && verified as f64 <= resumed, "{r:?}");
    let t = std::fs::read_to_string(&prom).unwrap();
    for m in [
        format!("btrfs_to_s3_last_run_uploaded_bytes{{subvolume=\"data\"}} {uploaded}\n"),
        format!("btrfs_to_s3_last_run_resumed_bytes{{subvolume=\"data\"}} {resumed}\n"),
        "btrfs_to_s3_last_run_upload_rate_bytes_per_second{subvolume=\"data\"} ".to_string(),
        "btrfs_to_s3_last_run_first_new_byte_seconds{subvolume=\"data\"} ".to_string(),
    ] {
        assert!(t.contains(&m), "{m}: {t}");
    }
}
