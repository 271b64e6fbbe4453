//! Pings against a local HTTP server on 127.0.0.1: paths, methods, the failure body, and
//! every way a ping fails being an error that names no secret.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

struct MapEnv(HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn env(knob_ms: Option<u64>) -> MapEnv {
    let mut m = HashMap::new();
    m.insert("HOME".to_string(), "/root".to_string());
    if let Some(ms) = knob_ms {
        m.insert(DEADLINE_KNOB.to_string(), ms.to_string());
    }
    MapEnv(m)
}

/// One request as the server saw it: "METHOD PATH", and the body.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Serves `n` connections on 127.0.0.1, answering each with `status` (None: never
/// answers, holds the connection for 3 s).
fn server(n: usize, status: Option<&'static str>) -> (u16, Seen, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let t = std::thread::spawn(move || {
        for conn in l.incoming().take(n) {
            let Ok(mut c) = conn else { continue };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
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
            seen.lock().unwrap().push((req, body));
            match status {
                Some(s) => {
                    let _ = c.write_all(
                        format!("HTTP/1.1 {s}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
                            .as_bytes(),
                    );
                }
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        }
    });
    (port, s2, t)
}

fn url(port: u16, path: &str) -> PingUrl {
    PingUrl::parse(&format!("http://127.0.0.1:{port}{path}")).unwrap()
}

#[test]
fn start_success_and_fail_go_to_the_conventional_urls() {
    let (port, seen, t) = server(3, Some("200 OK"));
    let p = Pinger::new(&url(port, "/ping/abc-123"), &env(None)).unwrap();
    p.send(Ping::Start).unwrap();
    p.send(Ping::Success).unwrap();
    p.send(Ping::Fail(
        "backup failed for 1 of 1 subvolumes: data: HeadBucket ...",
    ))
    .unwrap();
    t.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("GET /ping/abc-123/start".to_string(), String::new()),
            ("GET /ping/abc-123".to_string(), String::new()),
            (
                "POST /ping/abc-123/fail".to_string(),
                "backup failed for 1 of 1 subvolumes: data: HeadBucket ...".to_string()
            ),
        ]
    );
}

#[test]
fn suffixes_keep_the_query_and_drop_a_trailing_slash() {
    let u = url::Url::parse("https://kuma.example/api/push/TOKEN/?status=up#x").unwrap();
    assert_eq!(
        Pinger::url_for(&u, Ping::Start).as_str(),
        "https://kuma.example/api/push/TOKEN/start?status=up"
    );
    assert_eq!(
        Pinger::url_for(&u, Ping::Fail("x")).as_str(),
        "https://kuma.example/api/push/TOKEN/fail?status=up"
    );
    assert_eq!(
        Pinger::url_for(&u, Ping::Success).as_str(),
        "https://kuma.example/api/push/TOKEN/?status=up"
    );
}

#[test]
fn a_failure_body_is_cut_to_its_cap() {
    let (port, seen, t) = server(1, Some("200 OK"));
    let p = Pinger::new(&url(port, "/c"), &env(None)).unwrap();
    let long = "é".repeat(MAX_BODY);
    p.send(Ping::Fail(&long)).unwrap();
    t.join().unwrap();
    let body = seen.lock().unwrap()[0].1.clone();
    assert!(
        body.len() <= MAX_BODY && body.len() > MAX_BODY - 2,
        "{}",
        body.len()
    );
}

#[test]
fn a_ping_that_fails_is_an_error_without_the_secret_path() {
    // An error status.
    let (port, _seen, t) = server(1, Some("500 Internal Server Error"));
    let p = Pinger::new(&url(port, "/secret-check-uuid-0001"), &env(None)).unwrap();
    let e = p.send(Ping::Start).unwrap_err();
    assert_eq!(e, "the server answered HTTP 500");
    t.join().unwrap();
    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Pinger::new(&url(port, "/secret-check-uuid-0002"), &env(None)).unwrap();
    let e = p.send(Ping::Success).unwrap_err();
    assert!(!e.contains("secret-check-uuid"), "{e}");
    // A server that never answers: bounded by the timeout (shortened by the knob here).
    let (port, _seen, t) = server(1, None);
    let p = Pinger::new(&url(port, "/secret-check-uuid-0003"), &env(Some(300))).unwrap();
    let started = Instant::now();
    let e = p.send(Ping::Fail("x")).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(e.contains("timed out"), "{e}");
    assert!(!e.contains("secret-check-uuid"), "{e}");
    t.join().unwrap();
}

#[test]
fn ping_urls_are_checked_and_shown_without_their_path() {
    for (bad, why) in [
        ("ftp://h/x", "must start with http:// or https://"),
        ("hc-ping.com/uuid", "not a URL"),
        ("https://user:pw@hc-ping.com/uuid", "user name or password"),
        ("file:///etc/passwd", "must start with http:// or https://"),
    ] {
        let e = PingUrl::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
        assert!(!e.contains("uuid") && !e.contains("pw"), "{bad}: {e}");
    }
    let u = PingUrl::parse("https://hc-ping.com/0b7a-secret").unwrap();
    assert_eq!(u.shown(), "https://hc-ping.com/…");
    assert!(!format!("{u:?}").contains("secret"));
    let u = PingUrl::parse("http://127.0.0.1:8000/p").unwrap();
    assert_eq!(u.shown(), "http://127.0.0.1:8000/…");
}

#[test]
fn config_notify_table() {
    use crate::config::{Config, ConfigError};
    let base = "[s3]\nbucket = \"b\"\nregion = \"eu-west-1\"\nprefix = \"p\"\n";
    let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), &env(None));
    assert!(parse("").unwrap().notify.ping_url.is_none());
    let c = parse("[notify]\nping_url = \"https://hc-ping.com/abc\"\n").unwrap();
    assert_eq!(c.notify.ping_url.unwrap().url().path(), "/abc");
    for (extra, want) in [
        (
            "[notify]\nping_url = 3\n",
            "notify.ping_url: must be a string",
        ),
        ("[notify]\nping_url = \"\"\n", "notify.ping_url = \"\""),
        (
            "[notify]\nping_url = \"ftp://x/secretpath\"\n",
            "notify.ping_url: must start with",
        ),
        (
            "[notify]\nping_urls = \"https://x/y\"\n",
            "unknown key notify.ping_urls",
        ),
    ] {
        let ConfigError(e) = parse(extra).unwrap_err();
        assert!(e.contains(want), "{extra}: {e}");
        assert!(!e.contains("secretpath"), "{e}");
    }
}
