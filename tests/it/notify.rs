//! `[notify] ping_url` with real backups against moto: a run pings `URL/start` and `URL`,
//! a failed run `URL/fail` with its last line as the body, and a ping server that is down
//! leaves the backup's result alone (a warning that does not show the URL's path).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// A health-check endpoint on 127.0.0.1 that answers 200 to everything and keeps
/// "METHOD PATH" and the body of each request. Stopped on drop.
struct PingServer {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PingServer {
    fn start() -> PingServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                let head_end = loop {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break None,
                        Ok(k) => buf.extend_from_slice(&b[..k]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&b[..k]),
                    }
                }
                let first = head.lines().next().unwrap_or("").to_string();
                let req = first
                    .rsplit_once(' ')
                    .map(|(a, _)| a.to_string())
                    .unwrap_or(first);
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                if let Ok(mut v) = s2.lock() {
                    v.push((req, body));
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                );
            }
        });
        PingServer {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for PingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn add_ping_url(s: &Setup, url: &str) {
    let mut text = std::fs::read_to_string(&s.cfg).expect("reading config");
    text.push_str(&format!("\n[notify]\nping_url = \"{url}\"\n"));
    std::fs::write(&s.cfg, text).expect("writing config");
}

#[test]
fn backup_pings_start_and_success_then_fail_with_its_last_line() {
    if !require_root("backup_pings_start_and_success_then_fail_with_its_last_line") {
        return;
    }
    let mut s = Setup::new(SetupOpts::default());
    random_file(&s.vol("data").join("f"), 1 << 20);
    let ping = PingServer::start();
    let path = "/ping/check-uuid-5f1e2d";
    add_ping_url(&s, &format!("http://127.0.0.1:{}{path}", ping.port));

    // A dry run pings nothing.
    let r = s.backup(&["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(ping.seen().is_empty(), "{:?}", ping.seen());

    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        ping.seen(),
        vec![
            (format!("GET {path}/start"), String::new()),
            (format!("GET {path}"), String::new()),
        ]
    );
    // The check's path is its secret: no log line shows it.
    assert!(!r.stderr.contains("check-uuid-5f1e2d"), "{r:?}");

    // The S3 server goes away: the run fails, and /fail carries its last line.
    s.moto.kill();
    let r = s.backup(&["--full"]);
    assert_eq!(r.code, 1, "{r:?}");
    let seen = ping.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[2], (format!("GET {path}/start"), String::new()));
    assert_eq!(seen[3].0, format!("POST {path}/fail"));
    let last = r.stderr.lines().last().unwrap_or("").to_string();
    let body = &seen[3].1;
    assert!(
        !body.is_empty() && last == format!("btrfs_to_s3: error: {body}"),
        "body {body:?}, last line {last:?}"
    );
}

#[test]
fn a_ping_server_that_is_down_is_a_warning_and_the_backup_succeeds() {
    if !require_root("a_ping_server_that_is_down_is_a_warning_and_the_backup_succeeds") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    random_file(&s.vol("data").join("f"), 1 << 20);
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("binding")
        .local_addr()
        .expect("addr")
        .port();
    add_ping_url(&s, &format!("http://127.0.0.1:{port}/ping/down-check-77aa"));
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let warned: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("event=ping_failed"))
        .collect();
    assert_eq!(warned.len(), 2, "start and success: {r:?}");
    assert!(warned
        .iter()
        .all(|l| l.contains(" WARNING event=ping_failed")
            && l.contains(&format!("url=http://127.0.0.1:{port}/…"))));
    assert!(!r.stderr.contains("down-check-77aa"), "{r:?}");
    assert!(s.state.exists(), "the backup was published: {r:?}");
}
