//! A keep-alive front for a server that closes every connection after one reply (moto's
//! werkzeug always answers `Connection: close`), so that the client reuses its
//! connections as it does against S3: the client's connection stays open across requests,
//! and each request goes to the server on a connection of its own. HTTP/1.1 with
//! `Content-Length` request bodies only (what btrfs_to_s3 sends); test rig only. Every
//! thread ends when it is dropped.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(50);

pub struct KeepAlive {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl KeepAlive {
    pub fn start(target: SocketAddr) -> std::io::Result<KeepAlive> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (st, th) = (stop.clone(), threads.clone());
        let acceptor = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let st = st.clone();
                        let t = std::thread::spawn(move || {
                            let _ = serve(c, target, &st);
                        });
                        let mut all = th.lock().unwrap_or_else(|p| p.into_inner());
                        all.retain(|t: &JoinHandle<()>| !t.is_finished());
                        all.push(t);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK / 10),
                    Err(_) => std::thread::sleep(TICK),
                }
            }
        });
        Ok(KeepAlive {
            addr,
            stop,
            threads,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let all: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in all {
            let _ = t.join();
        }
    }
}

/// A reader whose waits look at the stop flag (the sockets have a short read timeout).
struct Patient<'a> {
    s: &'a TcpStream,
    stop: &'a AtomicBool,
}

impl Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match (&mut &*self.s).read(buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.stop.load(Ordering::SeqCst) {
                        // Not Interrupted: read_line and copy would retry that.
                        return Err(std::io::Error::other("the keep-alive front stops"));
                    }
                }
                r => return r,
            }
        }
    }
}

/// A message head up to its empty line; None at the end of the stream.
fn head<R: BufRead>(r: &mut R) -> std::io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']).to_string();
        if l.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(l);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines[1..].iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve(client: TcpStream, target: SocketAddr, stop: &AtomicBool) -> std::io::Result<()> {
    client.set_read_timeout(Some(TICK))?;
    let mut from_client = BufReader::new(Patient { s: &client, stop });
    let mut to_client = &client;
    loop {
        let Some(req) = head(&mut from_client)? else {
            return Ok(());
        };
        if header(&req, "transfer-encoding").is_some() {
            to_client.write_all(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
        let len: u64 = header(&req, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let method = req[0].split(' ').next().unwrap_or("").to_string();
        let server = TcpStream::connect(target)?;
        server.set_read_timeout(Some(TICK))?;
        let mut to_server = &server;
        to_server.write_all(format!("{}\r\n\r\n", req.join("\r\n")).as_bytes())?;
        std::io::copy(&mut (&mut from_client).take(len), &mut to_server)?;
        let mut from_server = BufReader::new(Patient { s: &server, stop });
        let Some(resp) = head(&mut from_server)? else {
            return Ok(());
        };
        let status: u16 = resp[0]
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
        let bodiless = method == "HEAD" || status < 200 || status == 204 || status == 304;
        // Without a length the body ends with the connection: the client's ends too.
        let keep = bodiless || body.is_some();
        let mut out: Vec<&str> = resp
            .iter()
            .filter(|l| {
                !l.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
            })
            .map(String::as_str)
            .collect();
        if !keep {
            out.push("Connection: close");
        }
        to_client.write_all(format!("{}\r\n\r\n", out.join("\r\n")).as_bytes())?;
        match (bodiless, body) {
            (true, _) => {}
            (false, Some(n)) => {
                std::io::copy(&mut (&mut from_server).take(n), &mut to_client)?;
            }
            (false, None) => {
                std::io::copy(&mut from_server, &mut to_client)?;
                return Ok(());
            }
        }
    }
}
