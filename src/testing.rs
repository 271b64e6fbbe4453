//! Test doubles shared by unit tests: a `FakeBtrfs` that keeps snapshots as plain
//! directories and send streams in memory, a scratch directory helper, and [`serve`], a
//! local HTTP endpoint with canned replies (S3, STS and metadata stand-ins).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use crate::btrfs::{Btrfs, ReceiveSink, SendStream, SubvolInfo};
use crate::retry::{Policy, Retrier};

/// What the unit tests store objects with: `class`, SSE-S3, no lock.
pub fn put_opts(class: &str) -> crate::store::PutOptions {
    crate::store::PutOptions {
        storage_class: class.into(),
        sse: crate::config::Sse::Aes256,
        content_type: "x",
        kms_key_id: None,
        lock: None,
    }
}

/// The default retry policy, without the sleeping.
pub fn retrier() -> Retrier {
    Retrier::with_sleep(
        Policy::default(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(|_| {}),
    )
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "b2s3-unit-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Streams written to `receive`, by target directory.
pub type Received = Arc<Mutex<Vec<(PathBuf, Vec<u8>)>>>;
/// The received UUID of each subvolume the fake receive created.
pub type ReceivedUuids = Arc<Mutex<HashMap<PathBuf, String>>>;

#[derive(Default)]
pub struct FakeBtrfs {
    /// Bytes `send` yields for a snapshot path (default: derived from the path).
    pub streams: Mutex<HashMap<PathBuf, Vec<u8>>>,
    /// Every call, e.g. `snapshot /a /b`, `send /b parent=/a`.
    pub log: Mutex<Vec<String>>,
    /// When set, `send` ends with this error after yielding its bytes.
    pub send_error: Mutex<Option<String>>,
    /// Streams written to `receive`, by target directory.
    pub received: Received,
    pub received_uuids: ReceivedUuids,
    /// The parent UUID (`show`) of each snapshot the fake receive created.
    pub parent_uuids: ReceivedUuids,
    /// What `send_support` says (default: protocol 2 and btrfs-progs 6.2).
    pub support: Mutex<Option<crate::btrfs::SendSupport>>,
}

impl FakeBtrfs {
    pub fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn push(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }

    /// A deterministic stream of `len` bytes for a snapshot.
    /// The exact bytes `btrfs send` of `snapshot` yields.
    pub fn set_stream_bytes(&self, snapshot: &Path, bytes: Vec<u8>) {
        self.streams
            .lock()
            .unwrap()
            .insert(snapshot.to_path_buf(), bytes);
    }

    pub fn set_stream(&self, snapshot: &Path, len: usize) {
        let seed = snapshot.display().to_string().len();
        let bytes = (0..len).map(|i| ((i * 13 + seed) % 251) as u8).collect();
        self.streams
            .lock()
            .unwrap()
            .insert(snapshot.to_path_buf(), bytes);
    }
}

struct FakeSend {
    data: Cursor<Vec<u8>>,
    error: Option<String>,
}

impl Read for FakeSend {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.data.read(buf)
    }
}

impl SendStream for FakeSend {
    fn finish(self: Box<Self>) -> Result<()> {
        match self.error {
            Some(e) => bail!("btrfs send failed: {e}"),
            None => Ok(()),
        }
    }
    fn kill(self: Box<Self>) {}
}

struct FakeReceive {
    dir: PathBuf,
    buf: Vec<u8>,
    out: Received,
    uuids: ReceivedUuids,
    parents: ReceivedUuids,
}

impl Write for FakeReceive {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ReceiveSink for FakeReceive {
    /// Like `btrfs receive`, creates the subvolume the stream's first command names (read
    /// with the guard) and records its received UUID for `show`; a snapshot's source is
    /// the subvolume of this directory with the received UUID it names, as receive looks
    /// it up, and becomes its parent for `show`.
    fn finish(self: Box<Self>) -> Result<()> {
        if let Some((name, uuid, source)) = first_command(&self.buf) {
            let p = self.dir.join(name);
            std::fs::create_dir_all(&p)?;
            let mut uuids = self.uuids.lock().unwrap();
            if let Some(source) = source {
                let from = uuids
                    .iter()
                    .find(|(q, u)| q.parent() == Some(&self.dir) && **u == source)
                    .map(|(q, _)| q.clone());
                if let Some(from) = from {
                    self.parents
                        .lock()
                        .unwrap()
                        .insert(p.clone(), format!("uuid-{}", from.display()));
                }
            }
            uuids.insert(p, uuid);
        }
        self.out.lock().unwrap().push((self.dir, self.buf));
        Ok(())
    }
    fn kill(self: Box<Self>) -> String {
        String::new()
    }
}

/// The path, UUID and source UUID (of a snapshot; formatted as `btrfs subvolume show`
/// prints them) of a send stream's first command, read without checks (the fake receive
/// trusts the guard before it).
fn first_command(buf: &[u8]) -> Option<(String, String, Option<String>)> {
    let payload = buf.get(27..)?;
    let len = u32::from_le_bytes(buf.get(17..21)?.try_into().ok()?) as usize;
    let payload = payload.get(..len)?;
    let (mut p, mut name, mut uuid, mut source) = (0, None, None, None);
    while p + 4 <= payload.len() {
        let t = u16::from_le_bytes([payload[p], payload[p + 1]]);
        let l = u16::from_le_bytes([payload[p + 2], payload[p + 3]]) as usize;
        let v = payload.get(p + 4..p + 4 + l)?;
        match t {
            15 => name = Some(String::from_utf8_lossy(v).into_owned()),
            1 if v.len() == 16 => uuid = Some(crate::sendstream::format_uuid(v)),
            20 if v.len() == 16 => source = Some(crate::sendstream::format_uuid(v)),
            _ => {}
        }
        p += 4 + l;
    }
    Some((name?, uuid?, source))
}

impl Btrfs for FakeBtrfs {
    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<()> {
        self.push(format!("snapshot {} {}", source.display(), dest.display()));
        if dest.exists() {
            bail!("{} exists", dest.display());
        }
        std::fs::create_dir_all(dest)?;
        if !self.streams.lock().unwrap().contains_key(dest) {
            self.set_stream(dest, 1000);
        }
        Ok(())
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        self.push(format!("delete {}", path.display()));
        std::fs::remove_dir_all(path)?;
        Ok(())
    }

    fn show(&self, path: &Path) -> Result<SubvolInfo> {
        if !path.exists() {
            bail!("ERROR: cannot find {}", path.display());
        }
        Ok(SubvolInfo {
            uuid: Some(format!("uuid-{}", path.display())),
            parent_uuid: Some(
                self.parent_uuids
                    .lock()
                    .unwrap()
                    .get(path)
                    .cloned()
                    .unwrap_or_else(|| "uuid-source".into()),
            ),
            received_uuid: self.received_uuids.lock().unwrap().get(path).cloned(),
        })
    }

    fn send(
        &self,
        snapshot: &Path,
        parent: Option<&Path>,
        compressed: bool,
    ) -> Result<Box<dyn SendStream>> {
        let proto = if compressed { " proto=2" } else { "" };
        self.push(match parent {
            Some(p) => format!("send {}{proto} parent={}", snapshot.display(), p.display()),
            None => format!("send {}{proto}", snapshot.display()),
        });
        let data = self
            .streams
            .lock()
            .unwrap()
            .get(snapshot)
            .cloned()
            .unwrap_or_default();
        Ok(Box::new(FakeSend {
            data: Cursor::new(data),
            error: self.send_error.lock().unwrap().clone(),
        }))
    }

    fn send_support(&self) -> Result<crate::btrfs::SendSupport> {
        Ok(self
            .support
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(crate::btrfs::SendSupport {
                kernel_proto: 2,
                progs: (6, 2),
            }))
    }

    fn wait_cleaned(&self, path: &Path) -> Result<()> {
        self.push(format!("sync {}", path.display()));
        Ok(())
    }

    fn nested_subvolumes(&self, _path: &Path) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn filesystem(&self, path: &Path) -> Result<crate::btrfs::Filesystem> {
        if !path.exists() {
            bail!("findmnt: {} does not exist", path.display());
        }
        Ok(crate::btrfs::Filesystem {
            fstype: "btrfs".into(),
            source: "/dev/fake".into(),
        })
    }

    fn receive(&self, dir: &Path) -> Result<Box<dyn ReceiveSink>> {
        self.push(format!("receive {}", dir.display()));
        Ok(Box::new(FakeReceive {
            dir: dir.to_path_buf(),
            buf: Vec::new(),
            out: self.received.clone(),
            uuids: self.received_uuids.clone(),
            parents: self.parent_uuids.clone(),
        }))
    }

    fn make_writable(&self, path: &Path) -> Result<()> {
        self.push(format!("writable {}", path.display()));
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        // Like `btrfs property set -f ro false`: the received UUID is cleared.
        self.received_uuids.lock().unwrap().remove(path);
        Ok(())
    }
}

/// One recorded request: method, path, headers (lower-case names), body.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A local HTTP endpoint on 127.0.0.1 answering each request with
/// `reply(request) -> (status, body)` (one request per connection), recording them all.
pub struct HttpStub {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Req>>>,
}

/// One HTTP request as read off a socket: request line, headers (lower-case names), the
/// raw head as received, and the body (`Content-Length` bytes).
pub type RawRequest = (String, HashMap<String, String>, Vec<u8>, Vec<u8>);

/// Reads one request from a test client; None at the end of the connection.
pub fn read_request<S: Read>(r: &mut BufReader<S>) -> Option<RawRequest> {
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

/// A canned reply; `(status, body)` converts into one without headers.
pub struct Reply {
    pub status: u16,
    /// Sent as given; a `content-length` here replaces the body's (HEAD replies).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl From<(u16, String)> for Reply {
    fn from((status, body): (u16, String)) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }
}

pub fn serve<R: Into<Reply>>(reply: impl Fn(&Req) -> R + Send + 'static) -> HttpStub {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let Some((line, headers, _, body)) = read_request(&mut r) else {
                continue;
            };
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let req = Req {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let r: Reply = reply(&req).into();
            s2.lock().unwrap().push(req);
            let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", r.status);
            if !r
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                head.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
            }
            for (k, v) in &r.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            let _ = write!(c, "{head}\r\n{}", r.body);
        }
    });
    HttpStub { url, seen }
}
