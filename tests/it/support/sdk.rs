//! Rig pieces for talking to S3 the way the SDKs do: a private CA and a TLS front
//! (stunnel4) for moto, an HTTP CONNECT proxy that records where it was asked to go, a
//! credentials endpoint (the ECS/EKS container protocol) handing out credentials with
//! an expiry it chooses, and a gatekeeper in front of moto that answers `ExpiredToken`
//! to requests signed with credentials past the expiry it was told. All on 127.0.0.1,
//! all stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{free_port, TempDir};

fn sh_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made for this test and a certificate for 127.0.0.1 signed by it.
pub struct PrivateCa {
    pub dir: TempDir,
    pub ca_pem: PathBuf,
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
}

impl PrivateCa {
    pub fn new() -> PrivateCa {
        let dir = TempDir::new("ca");
        let p = |n: &str| dir.path().join(n);
        let openssl = |args: &[&str]| {
            sh_ok(
                Command::new("openssl").args(args).current_dir(dir.path()),
                &format!("openssl {args:?} (apt-get install openssl)"),
            )
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=btrfs_to_s3 test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        PrivateCa {
            ca_pem: p("ca.pem"),
            server_pem: p("server.pem"),
            server_key: p("server.key"),
            dir,
        }
    }
}

/// stunnel4 terminating TLS on 127.0.0.1 in front of a plain-HTTP port.
pub struct TlsFront {
    child: Child,
    pub endpoint: String,
    _dir: TempDir,
}

impl TlsFront {
    pub fn start(ca: &PrivateCa, target_port: u16) -> TlsFront {
        let dir = TempDir::new("stunnel");
        let port = free_port();
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\n[s3]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{target_port}\ncert = {cert}\nkey = {key}\n",
                log = dir.path().join("stunnel.log").display(),
                cert = ca.server_pem.display(),
                key = ca.server_key.display()
            ),
        )
        .unwrap();
        let bin = ["/usr/bin/stunnel4", "/usr/bin/stunnel"]
            .into_iter()
            .find(|b| Path::new(b).exists())
            .expect(
                "stunnel4 is not installed: run bash contrib/test.sh (apt-get install stunnel4)",
            );
        let child = Command::new(bin)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting stunnel4");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel4 did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsFront {
            child,
            endpoint: format!("https://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request: request line, headers with lower-case names, raw head, body.
type Request = (String, HashMap<String, String>, Vec<u8>, Vec<u8>);

/// Reads one HTTP request head (and its Content-Length body).
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut raw = Vec::new();
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    raw.extend_from_slice(line.as_bytes());
    let request_line = line.trim_end().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        raw.extend_from_slice(h.as_bytes());
        let t = h.trim_end();
        if t.is_empty() {
            break;
        }
        if let Some((k, v)) = t.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let n: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; n];
    r.read_exact(&mut body).ok()?;
    Some((request_line, headers, raw, body))
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// An HTTP proxy that serves CONNECT only (what an https endpoint needs) and records
/// every target it was asked for.
pub struct ConnectProxy {
    pub url: String,
    pub targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let targets = Arc::new(Mutex::new(Vec::new()));
        let t2 = targets.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(c) = conn else { return };
                let t2 = t2.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let Some((line, _, _, _)) = read_request(&mut r) else {
                        return;
                    };
                    let mut w = c;
                    let mut parts = line.split_whitespace();
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    t2.lock().unwrap().push(format!("{method} {target}"));
                    if method != "CONNECT" {
                        let _ =
                            w.write_all(b"HTTP/1.1 405 Only CONNECT\r\nContent-Length: 0\r\n\r\n");
                        return;
                    }
                    let Ok(up) = TcpStream::connect(target) else {
                        let _ = w.write_all(b"HTTP/1.1 502 No\r\nContent-Length: 0\r\n\r\n");
                        return;
                    };
                    let _ = w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (a, b) = (w.try_clone().unwrap(), up.try_clone().unwrap());
                    std::thread::spawn(move || pipe(a, b));
                    pipe(up, w);
                });
            }
        });
        ConnectProxy { url, targets }
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn iso(unix: i64) -> String {
    // Days since the epoch to a civil date (proleptic Gregorian), as the SDKs print it.
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Which credentials were handed out, and when the S3 side must start refusing them.
#[derive(Default)]
pub struct Ledger {
    /// access key -> unix time after which the gatekeeper answers ExpiredToken.
    pub refuse_after: HashMap<String, i64>,
    /// How often the endpoint was asked.
    pub fetches: usize,
    /// How many requests the gatekeeper refused as expired.
    pub refused: usize,
    /// Requests the gatekeeper passed on.
    pub passed: usize,
}

/// A container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`): hands out
/// the next of `pool` each time, saying it expires `told_secs` from now, and records in
/// the ledger that S3 must refuse it after `real_secs`.
pub struct CredsEndpoint {
    pub url: String,
    pub ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
}

impl CredsEndpoint {
    pub fn start(
        pool: Vec<(String, String, String)>,
        told_secs: i64,
        real_secs: i64,
        ledger: Arc<Mutex<Ledger>>,
    ) -> CredsEndpoint {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v2/credentials", l.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (lg, st) = (ledger.clone(), stop.clone());
        std::thread::spawn(move || {
            for (i, conn) in l.incoming().enumerate() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = conn else { return };
                let mut r = BufReader::new(c.try_clone().unwrap());
                if read_request(&mut r).is_none() {
                    continue;
                }
                let (id, secret, token) = &pool[i % pool.len()];
                let now = unix_now();
                {
                    let mut g = lg.lock().unwrap();
                    g.fetches += 1;
                    g.refuse_after.insert(id.clone(), now + real_secs);
                }
                let body = format!(
                    "{{\"AccessKeyId\":\"{id}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"{token}\",\"Expiration\":\"{}\"}}",
                    iso(now + told_secs)
                );
                let mut w = c;
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        CredsEndpoint { url, ledger, stop }
    }
}

impl Drop for CredsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(
            self.url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or(""),
        );
    }
}

/// What a [`Front`] does with one request: answer it itself, or pass it on.
pub enum Verdict {
    Answer(u16, String),
    Forward,
}

/// A request as a [`Front`] hook sees it; the hook may change the body (damage it).
pub struct Seen<'a> {
    pub line: &'a str,
    pub headers: &'a HashMap<String, String>,
    pub body: &'a mut Vec<u8>,
}

type Hook = dyn Fn(&mut Seen<'_>) -> Verdict + Send + Sync;

/// A plain-HTTP front for moto on 127.0.0.1: each request goes to `hook` first, which
/// answers it (as the service would) or lets it through to moto, one upstream
/// connection per request, the reply passed back whole with `Connection: close`.
pub struct Front {
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Front {
    pub fn start(target_port: u16, hook: Arc<Hook>) -> Front {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = conn else { continue };
                let hook = hook.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    while let Some((line, headers, raw, mut body)) = read_request(&mut r) {
                        let verdict = hook(&mut Seen {
                            line: &line,
                            headers: &headers,
                            body: &mut body,
                        });
                        if let Verdict::Answer(status, b) = verdict {
                            // As S3: a HEAD reply has no body.
                            let b = if line.starts_with("HEAD ") {
                                ""
                            } else {
                                b.as_str()
                            };
                            let _ = write!(
                                w,
                                "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{b}",
                                b.len()
                            );
                            continue;
                        }
                        let Ok(mut up) = TcpStream::connect(("127.0.0.1", target_port)) else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&raw)
                            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
                        let head: String = head
                            .split("\r\n")
                            .filter(|l| {
                                !l.to_ascii_lowercase().starts_with("connection: keep-alive")
                            })
                            .collect::<Vec<_>>()
                            .join("\r\n");
                        if up
                            .write_all(head.as_bytes())
                            .and_then(|_| up.write_all(&body))
                            .is_err()
                        {
                            return;
                        }
                        let mut reply = Vec::new();
                        let _ = up.read_to_end(&mut reply);
                        let split = reply
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .unwrap_or(reply.len());
                        let (h, rest) = reply.split_at(split);
                        let h: Vec<String> = String::from_utf8_lossy(h)
                            .split("\r\n")
                            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                            .map(str::to_string)
                            .collect();
                        let _ = w.write_all(
                            format!("{}\r\nConnection: close", h.join("\r\n")).as_bytes(),
                        );
                        let _ = w.write_all(rest);
                        return;
                    }
                });
            }
        });
        Front {
            endpoint: format!("http://127.0.0.1:{port}"),
            stop,
            port,
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// In front of moto: a request signed with an access key past its `refuse_after` gets
/// `400 ExpiredToken` (as AWS answers); any other is passed on after `delay` (so that a
/// run lasts long enough to outlive its credentials).
pub fn gatekeeper(target_port: u16, ledger: Arc<Mutex<Ledger>>, delay: Duration) -> Front {
    Front::start(
        target_port,
        Arc::new(move |r: &mut Seen<'_>| {
            let key = r
                .headers
                .get("authorization")
                .and_then(|a| a.split("Credential=").nth(1))
                .and_then(|c| c.split('/').next())
                .unwrap_or("")
                .to_string();
            let expired = {
                let mut g = ledger.lock().unwrap();
                let e = g.refuse_after.get(&key).is_some_and(|&t| unix_now() > t);
                if e {
                    g.refused += 1;
                } else {
                    g.passed += 1;
                }
                e
            };
            if expired {
                return Verdict::Answer(
                    400,
                    "<?xml version=\"1.0\"?><Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>".into(),
                );
            }
            std::thread::sleep(delay);
            Verdict::Forward
        }),
    )
}

/// What [`checksum_checker`] saw.
#[derive(Default, Debug)]
pub struct WireLog {
    /// PUTs with a body (PutObject, UploadPart), and those with an x-amz-checksum-crc32c.
    pub puts: usize,
    pub puts_with_checksum: usize,
    /// Bodies refused because they did not match their checksum.
    pub refused: usize,
    /// CreateMultipartUpload requests declaring CRC32C.
    pub creates_declaring: usize,
    /// CompleteMultipartUpload bodies listing part checksums.
    pub completes_listing: usize,
    pub completes: usize,
}

/// In front of moto, the part of S3 that moto lacks: a body whose
/// `x-amz-checksum-crc32c` does not match is refused with `400 BadDigest`. Before the
/// check, the first `damage` PUT bodies of at least 1 MiB get one byte flipped, as a bad
/// link would.
pub fn checksum_checker(target_port: u16, damage: usize, log: Arc<Mutex<WireLog>>) -> Front {
    use base64::Engine;
    let damaged = std::sync::atomic::AtomicUsize::new(0);
    Front::start(
        target_port,
        Arc::new(move |r: &mut Seen<'_>| {
            let mut g = log.lock().unwrap();
            if r.line.starts_with("POST ") && r.line.contains("?uploads") {
                if r.headers
                    .get("x-amz-checksum-algorithm")
                    .map(String::as_str)
                    == Some("CRC32C")
                {
                    g.creates_declaring += 1;
                }
            } else if r.line.starts_with("POST ") && r.line.contains("uploadId=") {
                g.completes += 1;
                if String::from_utf8_lossy(r.body).contains("<ChecksumCRC32C>") {
                    g.completes_listing += 1;
                }
            }
            if !r.line.starts_with("PUT ") || r.body.is_empty() {
                return Verdict::Forward;
            }
            g.puts += 1;
            if r.body.len() >= 1 << 20 && damaged.fetch_add(1, Ordering::SeqCst) < damage {
                let mid = r.body.len() / 2;
                r.body[mid] ^= 0x5a;
            }
            let Some(sum) = r.headers.get("x-amz-checksum-crc32c") else {
                return Verdict::Forward;
            };
            g.puts_with_checksum += 1;
            let actual = base64::engine::general_purpose::STANDARD
                .encode(crc32c::crc32c(r.body).to_be_bytes());
            if &actual != sum {
                g.refused += 1;
                return Verdict::Answer(
                    400,
                    "<?xml version=\"1.0\"?><Error><Code>BadDigest</Code><Message>The CRC32C you specified did not match the calculated checksum.</Message></Error>".into(),
                );
            }
            Verdict::Forward
        }),
    )
}
