//! The sockets under every request (`http.rs` builds its agents on them): a name lookup
//! and a TCP connect that a stop cuts short, TCP keepalive and `TCP_USER_TIMEOUT` on every
//! socket (a peer gone silent, as behind a router that lost its NAT table, is found out
//! by the kernel), our rustls configuration on top for https, and the shutdown of every
//! connection of the registered agents when the run is stopped (SIGINT/SIGTERM), so that
//! no request blocked on a socket holds the process.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport, TransportAdapter,
};
use ureq::Error;

/// How often a wait (a connect, a name lookup, the stop watcher) looks at the stop flag.
const SLICE: Duration = Duration::from_millis(50);

/// The error of a connect or lookup cut short by the stop flag.
fn stopped() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "the run is stopping",
    ))
}

/// The TCP options of every socket, from how long a silent peer may take (the stall
/// timeout): keepalive probes after half of it idle, and `TCP_USER_TIMEOUT` (sent data
/// unacknowledged, or probes unanswered, for that long ends the connection).
#[derive(Clone, Copy, Debug)]
pub struct TcpOpts {
    pub silence: Duration,
}

impl TcpOpts {
    fn apply(&self, s: &TcpStream) -> std::io::Result<()> {
        use rustix::net::sockopt;
        let clamp = |d: Duration, lo: u64, hi: u64| {
            d.clamp(Duration::from_secs(lo), Duration::from_secs(hi))
        };
        s.set_nodelay(true)?;
        sockopt::set_socket_keepalive(s, true)?;
        sockopt::set_tcp_keepidle(s, clamp(self.silence / 2, 1, 15))?;
        sockopt::set_tcp_keepintvl(s, clamp(self.silence / 6, 1, 5))?;
        sockopt::set_tcp_keepcnt(s, 3)?;
        let ms = self.silence.as_millis().clamp(1000, u32::MAX as u128) as u32;
        sockopt::set_tcp_user_timeout(s, ms)?;
        Ok(())
    }
}

/// Connects to `addr` within `budget`, looking at `stop` every [`SLICE`].
fn connect_one(addr: SocketAddr, budget: Duration, stop: &AtomicBool) -> Result<TcpStream, Error> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::INPROGRESS) => {
            let deadline = Instant::now() + budget;
            loop {
                if stop.load(Ordering::SeqCst) {
                    return Err(stopped());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(ureq::Timeout::Connect));
                }
                let wait = left.min(SLICE);
                let ts = Timespec {
                    tv_sec: wait.as_secs() as _,
                    tv_nsec: wait.subsec_nanos() as _,
                };
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match poll(&mut fds, Some(&ts)) {
                    Ok(0) => continue,
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(Error::Io(e.into())),
                }
            }
            if let Err(e) = rustix::net::sockopt::socket_error(&fd).map_err(std::io::Error::from)? {
                return Err(Error::Io(e.into()));
            }
        }
        Err(e) => return Err(Error::Io(e.into())),
    }
    let s = TcpStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(s)
}

/// The TCP connector: each resolved address in turn within the connect budget, cut
/// short by the stop flag; the socket gets [`TcpOpts`] and is registered for the
/// agent's shutdown.
pub struct Tcp {
    pub opts: TcpOpts,
    pub stop: Arc<AtomicBool>,
}

impl fmt::Debug for Tcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tcp").finish()
    }
}

/// A TCP connection: every read and write is bounded by what ureq's timeouts leave (the
/// per-read/per-write stall and the request's deadlines), on every use of the connection.
#[derive(Debug)]
pub struct TcpConn {
    /// Shared with the shutdown handle (a stop shuts the socket down under a blocked call).
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// Whether an I/O error is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` give EAGAIN).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// What is left of `t`: None when it never happens.
fn budget(t: &NextTimeout) -> Option<Duration> {
    (!t.after.is_not_happening()).then(|| *t.after)
}

impl TcpConn {
    fn set(&self, write: bool, d: Option<Duration>) -> Result<(), Error> {
        // A zero timeout would mean "none" to the kernel.
        let d = d.map(|d| d.max(Duration::from_millis(1)));
        if write {
            self.stream.set_write_timeout(d)?;
        } else {
            self.stream.set_read_timeout(d)?;
        }
        Ok(())
    }
}

impl Transport for TcpConn {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let t = timeout.for_write();
        let budget = budget(&t);
        let started = Instant::now();
        let mut done = 0;
        while done < amount {
            let left = match budget {
                Some(b) => {
                    let left = b.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(Error::Timeout(t.reason));
                    }
                    Some(left)
                }
                None => None,
            };
            // Each write gets what is left, so a peer that takes a byte at a time cannot
            // stretch the transmission; set again only when it shrank noticeably.
            let stale = match (left, self.write_timeout) {
                (Some(l), Some(w)) => l + Duration::from_millis(500) < w,
                (l, w) => l != w,
            };
            if stale {
                self.set(true, left)?;
                self.write_timeout = left;
            }
            let out = &self.buffers.output()[done..amount];
            match (&*self.stream).write(out) {
                Ok(0) => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(Error::Timeout(t.reason)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let t = timeout.for_read();
        let left = budget(&t);
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::Timeout(t.reason));
        }
        if left != self.read_timeout {
            self.set(false, left)?;
            self.read_timeout = left;
        }
        loop {
            let input = self.buffers.input_append_buf();
            match (&*self.stream).read(input) {
                Ok(n) => {
                    self.buffers.input_appended(n);
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(Error::Timeout(t.reason)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn is_open(&mut self) -> bool {
        // Nothing may be waiting on an idle connection: EOF, bytes or an error close it.
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let open = matches!(self.stream.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        open && self.stream.set_nonblocking(false).is_ok()
    }
}

impl<In: Transport> Connector<In> for Tcp {
    type Out = Either<In, TcpConn>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if let Some(t) = chained {
            // A CONNECT proxy's tunnel (its own socket came from this connector).
            return Ok(Some(Either::A(t)));
        }
        let budget = details
            .timeout
            .not_zero()
            .map(|d| *d)
            .unwrap_or(Duration::from_secs(30));
        let started = Instant::now();
        let mut last = None;
        for addr in details.addrs.iter() {
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match connect_one(*addr, left, &self.stop) {
                Ok(s) => {
                    self.opts.apply(&s)?;
                    let stream = Arc::new(s);
                    (details.register_shutdown)(
                        Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>
                    )?;
                    let config = details.config;
                    let buffers =
                        LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size());
                    return Ok(Some(Either::B(TcpConn {
                        stream,
                        buffers,
                        read_timeout: None,
                        write_timeout: None,
                    })));
                }
                Err(e) if self.stop.load(Ordering::SeqCst) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Timeout(ureq::Timeout::Connect)))
    }
}

/// TLS with our rustls configuration (the trust store of `http.rs`), for https.
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").finish()
    }
}

pub struct TlsConn {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn").finish()
    }
}

impl<In: Transport> Connector<In> for Tls {
    type Out = Either<In, TlsConn>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .ok_or_else(|| Error::BadUri("no host to check the certificate for".into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let name = rustls_pki_types::ServerName::try_from(host)
            .map_err(|_| Error::Tls("the host is not a valid TLS server name"))?;
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsConn {
            buffers,
            stream: rustls::StreamOwned { conn, sock },
        })))
    }
}

impl Transport for TlsConn {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// Name lookups (the system resolver, which cannot be interrupted) on a thread of their
/// own, waited for within the budget ureq gives and cut short by the stop flag.
pub struct Lookup {
    pub stop: Arc<AtomicBool>,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup").finish()
    }
}

impl Resolver for Lookup {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        // An address needs no lookup.
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        if host.parse::<std::net::IpAddr>().is_ok() {
            return DefaultResolver::default().resolve(uri, config, NextTimeout::default());
        }
        let budget = timeout.not_zero().map(|d| *d);
        let (tx, rx) = std::sync::mpsc::channel();
        let (u, c) = (uri.clone(), config.clone());
        std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                let _ = tx.send(DefaultResolver::default().resolve(&u, &c, NextTimeout::default()));
            })
            .map_err(Error::Io)?;
        let started = Instant::now();
        loop {
            match rx.recv_timeout(SLICE) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::HostNotFound)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(stopped());
            }
            if budget.is_some_and(|b| started.elapsed() >= b) {
                return Err(Error::Timeout(timeout.reason));
            }
        }
    }
}

/// Shuts down every connection of the registered agents once the stop flag is set: a
/// thread looks at the flag every [`SLICE`] while any [`Stopper`] clone lives.
#[derive(Clone)]
pub struct Stopper {
    inner: Arc<StopperInner>,
}

struct StopperInner {
    flag: Arc<AtomicBool>,
    agents: Mutex<Vec<ureq::Agent>>,
}

impl Stopper {
    pub fn new(flag: Arc<AtomicBool>) -> Stopper {
        let inner = Arc::new(StopperInner {
            flag,
            agents: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("stop-watch".into())
            .spawn(move || loop {
                std::thread::sleep(SLICE);
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if inner.flag.load(Ordering::SeqCst) {
                    inner.shutdown();
                    return;
                }
            });
        if spawned.is_err() {
            crate::event!(Warn, "stop_watch_not_started");
        }
        Stopper { inner }
    }

    pub fn flag(&self) -> Arc<AtomicBool> {
        self.inner.flag.clone()
    }

    /// Registers an agent: its connections close when the flag is set (at once, when it
    /// is already set).
    pub fn watch(&self, agent: &ureq::Agent) {
        let mut agents = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.push(agent.clone());
        drop(agents);
        if self.inner.flag.load(Ordering::SeqCst) {
            self.inner.shutdown();
        }
    }
}

impl StopperInner {
    fn shutdown(&self) {
        let agents: Vec<_> = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        if !agents.is_empty() {
            crate::event!(Debug, "connections_shut", agents = agents.len());
        }
        for a in agents {
            a.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_gets_keepalive_and_a_user_timeout() {
        use rustix::net::sockopt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stop = AtomicBool::new(false);
        let s = connect_one(l.local_addr().unwrap(), Duration::from_secs(2), &stop).unwrap();
        TcpOpts {
            silence: Duration::from_secs(30),
        }
        .apply(&s)
        .unwrap();
        assert!(sockopt::socket_keepalive(&s).unwrap());
        assert_eq!(sockopt::tcp_keepidle(&s).unwrap(), Duration::from_secs(15));
        assert_eq!(sockopt::tcp_keepintvl(&s).unwrap(), Duration::from_secs(5));
        assert_eq!(sockopt::tcp_keepcnt(&s).unwrap(), 3);
        assert_eq!(sockopt::tcp_user_timeout(&s).unwrap(), 30_000);
        assert!(s.nodelay().unwrap());
    }

    #[test]
    fn a_stop_cuts_a_connect_short() {
        // A listener whose backlog is full leaves the next connect pending (the SYN is
        // dropped), as a blackholed address does.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut held = Vec::new();
        let pending = loop {
            match connect_one(addr, Duration::from_millis(300), &stop) {
                Ok(s) => held.push(s),
                Err(Error::Timeout(_)) => break true,
                Err(_) => break false,
            }
            if held.len() > 4096 {
                break false;
            }
        };
        assert!(pending, "could not fill the backlog");
        let s2 = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            s2.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let e = connect_one(addr, Duration::from_secs(30), &stop).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{e}");
        assert!(e.to_string().contains("stopping"), "{e}");
    }
}
