//! A link emulator: a TCP proxy on 127.0.0.1 in front of one server that behaves as a
//! home uplink can (`tc netem` is not in every kernel): a rate cap per direction shared by
//! all connections, added latency per direction, refused connections, resets (RST) of the
//! live connections, a blackhole (connections in flight freeze for good, new ones are
//! accepted and never answered), pause/resume, and a server that trickles one byte every
//! N seconds. Triggers fire an action at an exact point of the client's byte stream (say,
//! 1 MiB into the body of a request on a reused connection). The integration tests drive
//! it in-process (`Link`); `examples/link_emulator.rs` includes this same file and drives
//! it from text commands ([`Link::command`]) for `contrib/bench.sh`.
//!
//! Memory is bounded (a window per direction and connection), and every thread it starts
//! ends when the `Link` is dropped.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often an idle thread looks at the controls.
const TICK: Duration = Duration::from_millis(10);
/// The most one read takes in, and the most one write gives out.
const SLICE: usize = 64 << 10;
/// The window of one direction of one connection without added latency.
const WINDOW: usize = 256 << 10;
/// The largest window (with latency, a window of twice the rate × delay is kept, as a TCP
/// window would; Linux's default `tcp_wmem` maximum is 4 MiB).
const MAX_WINDOW: usize = 4 << 20;
/// The request line's end: how a trigger counts the requests of a connection.
const REQUEST_LINE_END: &[u8] = b" HTTP/1.1\r\n";

/// What the link does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards (with the rate caps, latency and trickle set).
    Pass,
    /// New connections are refused (the listening socket is closed); live ones go on.
    Refuse,
    /// Live connections freeze and stay frozen after the blackhole lifts (a router that
    /// lost its NAT table); new ones are accepted and never answered, nor ever closed.
    Blackhole,
    /// Nothing moves; new connections are accepted and wait. [`Link::pass`] resumes all.
    Pause,
}

/// One direction: `Up` is client to server (request bodies), `Down` server to client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

/// What a trigger does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Blackhole,
    /// Resets every live connection (RST).
    Reset,
    Pause,
    /// Resets every live connection and refuses new ones (the route or the far end is
    /// gone and says so).
    Refuse,
}

/// Fires `action` once, when `after` more client bytes have gone through after `pattern`
/// (on a connection that already carried a request, with `reused_only`).
#[derive(Clone, Debug)]
pub struct Trigger {
    pub pattern: Vec<u8>,
    pub after: u64,
    pub reused_only: bool,
    pub action: Action,
}

#[derive(Clone, Copy, Debug, Default)]
struct Way {
    rate: Option<u64>,
    delay: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Ctl {
    mode: Mode,
    up: Way,
    down: Way,
    trickle: Option<Duration>,
}

impl Ctl {
    fn way(&self, d: Dir) -> Way {
        match d {
            Dir::Up => self.up,
            Dir::Down => self.down,
        }
    }
}

/// A token bucket shared by one direction of every connection.
struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Conn {
    client: TcpStream,
    server: Option<TcpStream>,
    /// Frozen for good (blackholed): nothing is read or written, nothing is closed.
    dead: AtomicBool,
    /// Being reset: both pumps end and the sockets close with an RST.
    reset: AtomicBool,
    /// Pumps still running; the last one out removes the connection.
    pumps: AtomicU32,
}

impl Conn {
    fn rst(&self) {
        self.reset.store(true, Ordering::SeqCst);
        for s in std::iter::once(&self.client).chain(self.server.as_ref()) {
            // SO_LINGER 0: the close sends an RST instead of a FIN.
            let _ = rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO));
        }
    }
}

struct Shared {
    listen: SocketAddr,
    target: SocketAddr,
    stop: AtomicBool,
    ctl: Mutex<Ctl>,
    conns: Mutex<Vec<Arc<Conn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    buckets: [Mutex<Bucket>; 2],
    triggers: Mutex<Vec<Trigger>>,
    fired: AtomicU32,
    accepted: AtomicU64,
    bytes: [AtomicU64; 2],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn ctl(&self) -> Ctl {
        *lock(&self.ctl)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: Mode) {
        lock(&self.ctl).mode = mode;
        if mode == Mode::Blackhole {
            for c in lock(&self.conns).iter() {
                c.dead.store(true, Ordering::SeqCst);
            }
        }
    }

    fn reset_all(&self) {
        let mut conns = lock(&self.conns);
        for c in conns.iter() {
            c.rst();
        }
        // Frozen ones have no pump to close them: dropping them here sends the RST.
        conns.retain(|c| !c.dead.load(Ordering::SeqCst));
    }

    fn act(&self, a: Action) {
        self.fired.fetch_add(1, Ordering::SeqCst);
        match a {
            Action::Blackhole => self.set_mode(Mode::Blackhole),
            Action::Pause => self.set_mode(Mode::Pause),
            Action::Reset => self.reset_all(),
            Action::Refuse => {
                self.set_mode(Mode::Refuse);
                self.reset_all();
            }
        }
    }

    /// Waits until `n` bytes may go `dir`; false when the wait was cut short (stop, reset,
    /// a blackhole or pause meanwhile).
    fn take(&self, dir: Dir, n: usize, conn: &Conn) -> bool {
        loop {
            let ctl = self.ctl();
            let Some(rate) = ctl.way(dir).rate else {
                return true;
            };
            let rate = rate.max(1) as f64;
            let wait = {
                let mut b = lock(&self.buckets[dir as usize]);
                let now = Instant::now();
                // A burst of 20 ms of the rate (at least one slice) keeps the rate smooth.
                let burst = (rate / 50.0).max(SLICE as f64);
                b.tokens = (b.tokens + rate * now.duration_since(b.last).as_secs_f64()).min(burst);
                b.last = now;
                if b.tokens >= n as f64 {
                    b.tokens -= n as f64;
                    return true;
                }
                Duration::from_secs_f64((n as f64 - b.tokens) / rate)
            };
            std::thread::sleep(wait.min(TICK));
            let mode = self.ctl().mode;
            if self.stopped()
                || conn.reset.load(Ordering::SeqCst)
                || matches!(mode, Mode::Pause | Mode::Blackhole)
            {
                return false;
            }
        }
    }
}

/// The emulator. Dropping it stops every thread and closes every socket.
pub struct Link {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Link {
    /// A link on a free port of 127.0.0.1 in front of `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Link> {
        Link::start_on("127.0.0.1:0".parse().expect("an address"), target)
    }

    /// A link listening on `listen` (port 0: a free one).
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let bucket = || {
            Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            })
        };
        let shared = Arc::new(Shared {
            listen,
            target,
            stop: AtomicBool::new(false),
            ctl: Mutex::new(Ctl {
                mode: Mode::Pass,
                up: Way::default(),
                down: Way::default(),
                trickle: None,
            }),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            buckets: [bucket(), bucket()],
            triggers: Mutex::new(Vec::new()),
            fired: AtomicU32::new(0),
            accepted: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("link-accept".into())
            .spawn(move || accept_loop(sh, listener))?;
        Ok(Link {
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.listen
    }

    pub fn port(&self) -> u16 {
        self.shared.listen.port()
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.listen)
    }

    pub fn mode(&self) -> Mode {
        self.shared.ctl().mode
    }

    pub fn set_mode(&self, m: Mode) {
        self.shared.set_mode(m)
    }

    /// Forwards again (ends a refusal, a pause or a blackhole; blackholed connections
    /// stay frozen).
    pub fn pass(&self) {
        self.set_mode(Mode::Pass)
    }

    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse)
    }

    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole)
    }

    pub fn pause(&self) {
        self.set_mode(Mode::Pause)
    }

    /// Resets (RST) every live connection now, frozen ones included.
    pub fn reset(&self) {
        self.shared.reset_all()
    }

    /// Caps `dir` at `bytes_per_second` (None: no cap), shared by all connections.
    pub fn set_rate(&self, dir: Dir, bytes_per_second: Option<u64>) {
        let mut c = lock(&self.shared.ctl);
        match dir {
            Dir::Up => c.up.rate = bytes_per_second,
            Dir::Down => c.down.rate = bytes_per_second,
        }
    }

    /// Delays every byte going `dir` by `delay` (half the round trip added, each way).
    pub fn set_delay(&self, dir: Dir, delay: Duration) {
        let mut c = lock(&self.shared.ctl);
        match dir {
            Dir::Up => c.up.delay = delay,
            Dir::Down => c.down.delay = delay,
        }
    }

    /// The server's bytes reach the client one every `every` (None: as they come).
    pub fn set_trickle(&self, every: Option<Duration>) {
        lock(&self.shared.ctl).trickle = every;
    }

    /// Arms a one-shot trigger.
    pub fn arm(&self, t: Trigger) {
        lock(&self.shared.triggers).push(t);
    }

    /// How many triggers have fired.
    pub fn fired(&self) -> u32 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far in `dir`.
    pub fn bytes(&self, dir: Dir) -> u64 {
        self.shared.bytes[dir as usize].load(Ordering::SeqCst)
    }

    /// Connections held (live or frozen).
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Runs one text command (the example binary's control interface) and says what it
    /// did. Rates take a unit (`25MB`, `10MiB`, `800k`; bytes/s) or `off`.
    ///
    ///   pass | refuse | blackhole | pause | resume | reset | status
    ///   rate up|down|both RATE|off      latency up|down|both MS   rtt MS (half each way)
    ///   trickle SECONDS|off
    ///   blackhole-after|reset-after|pause-after|refuse-after BYTES PATTERN [reused]
    pub fn command(&self, line: &str) -> Result<String, String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let dirs = |s: &str| match s {
            "up" => Ok(vec![Dir::Up]),
            "down" => Ok(vec![Dir::Down]),
            "both" => Ok(vec![Dir::Up, Dir::Down]),
            _ => Err(format!("{s:?}: say up, down or both")),
        };
        let ms = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
                .map(|v| Duration::from_secs_f64(v / 1000.0))
                .ok_or_else(|| format!("{s:?} is not a number of milliseconds"))
        };
        match w.as_slice() {
            [] => Ok(String::new()),
            ["pass"] | ["resume"] => {
                self.pass();
                Ok("pass".into())
            }
            ["refuse"] => {
                self.refuse();
                Ok("refusing new connections".into())
            }
            ["blackhole"] => {
                self.blackhole();
                Ok("blackhole".into())
            }
            ["pause"] => {
                self.pause();
                Ok("paused".into())
            }
            ["reset"] => {
                let n = self.connections();
                self.reset();
                Ok(format!("reset {n} connections"))
            }
            ["status"] => {
                let c = self.shared.ctl();
                Ok(format!(
                    "mode={:?} up_rate={:?} down_rate={:?} up_delay_ms={} down_delay_ms={} trickle={:?} \
                     connections={} accepted={} up_bytes={} down_bytes={} fired={}",
                    c.mode,
                    c.up.rate,
                    c.down.rate,
                    c.up.delay.as_millis(),
                    c.down.delay.as_millis(),
                    c.trickle,
                    self.connections(),
                    self.accepted(),
                    self.bytes(Dir::Up),
                    self.bytes(Dir::Down),
                    self.fired()
                ))
            }
            ["rate", d, r] => {
                let rate = match *r {
                    "off" => None,
                    r => Some(parse_rate(r)?),
                };
                for d in dirs(d)? {
                    self.set_rate(d, rate);
                }
                Ok(format!("rate {d} {rate:?}"))
            }
            ["latency", d, v] => {
                let v = ms(v)?;
                for d in dirs(d)? {
                    self.set_delay(d, v);
                }
                Ok(format!("latency {d} {v:?}"))
            }
            ["rtt", v] => {
                let v = ms(v)? / 2;
                self.set_delay(Dir::Up, v);
                self.set_delay(Dir::Down, v);
                Ok(format!("latency both {v:?}"))
            }
            ["trickle", "off"] => {
                self.set_trickle(None);
                Ok("trickle off".into())
            }
            ["trickle", s] => {
                let v = ms(s)? * 1000;
                self.set_trickle(Some(v));
                Ok(format!("trickle one byte every {v:?}"))
            }
            [what @ ("blackhole-after" | "reset-after" | "pause-after" | "refuse-after"), n, pat, rest @ ..] =>
            {
                let action = match *what {
                    "blackhole-after" => Action::Blackhole,
                    "reset-after" => Action::Reset,
                    "refuse-after" => Action::Refuse,
                    _ => Action::Pause,
                };
                let after = parse_rate(n)?;
                let reused_only = match rest {
                    [] => false,
                    ["reused"] => true,
                    _ => return Err("the last word may only be \"reused\"".into()),
                };
                self.arm(Trigger {
                    pattern: pat.as_bytes().to_vec(),
                    after,
                    reused_only,
                    action,
                });
                Ok(format!("armed {action:?} {after} bytes after {pat:?}"))
            }
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        lock(&self.shared.conns).clear();
    }
}

/// `25MB`, `10MiB`, `800k`, `1000`: a number of bytes (per second, for rates).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a byte count (say 1000, 800k, 25MB or 10MiB)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_lowercase().trim_end_matches("/s") {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1048576.0,
        "gi" | "gib" => 1073741824.0,
        _ => return Err(bad()),
    };
    let v = num * mult;
    if !v.is_finite() || !(0.0..=1e15).contains(&v) {
        return Err(bad());
    }
    Ok(v as u64)
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    let mut listener = Some(listener);
    while !sh.stopped() {
        let mode = sh.ctl().mode;
        if mode == Mode::Refuse {
            // Closing the listening socket makes the kernel refuse (RST) new connections.
            listener = None;
            std::thread::sleep(TICK);
            continue;
        }
        let Some(l) = &listener else {
            // SO_REUSEADDR (std sets it) lets the same port be bound again.
            match TcpListener::bind(sh.listen) {
                Ok(l) if l.set_nonblocking(true).is_ok() => listener = Some(l),
                _ => std::thread::sleep(TICK),
            }
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                open(&sh, client, mode);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

fn open(sh: &Arc<Shared>, client: TcpStream, mode: Mode) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    if mode == Mode::Blackhole {
        // Accepted (the kernel answered the handshake) and never answered, never closed.
        lock(&sh.conns).push(Arc::new(Conn {
            client,
            server: None,
            dead: AtomicBool::new(true),
            reset: AtomicBool::new(false),
            pumps: AtomicU32::new(0),
        }));
        return;
    }
    let server = match TcpStream::connect_timeout(&sh.target, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => {
            // The server is not there: the client sees a reset.
            let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        server: Some(server),
        dead: AtomicBool::new(false),
        reset: AtomicBool::new(false),
        pumps: AtomicU32::new(2),
    });
    lock(&sh.conns).push(conn.clone());
    let mut threads = lock(&sh.threads);
    threads.retain(|t| !t.is_finished());
    for dir in [Dir::Up, Dir::Down] {
        let (sh2, c2) = (sh.clone(), conn.clone());
        let spawned = std::thread::Builder::new()
            .name("link-pump".into())
            .spawn(move || {
                Pump::new(&sh2, &c2, dir).run();
                if c2.pumps.fetch_sub(1, Ordering::SeqCst) == 1 && !c2.dead.load(Ordering::SeqCst) {
                    lock(&sh2.conns).retain(|c| !Arc::ptr_eq(c, &c2));
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) => conn.rst(),
        }
    }
}

/// One direction of one connection: reads into a window of timestamped slices and writes
/// each out once its delay has passed and the rate allows.
struct Pump<'a> {
    sh: &'a Shared,
    conn: &'a Conn,
    dir: Dir,
    src: &'a TcpStream,
    dst: &'a TcpStream,
    queue: VecDeque<(Instant, Vec<u8>)>,
    queued: usize,
    eof: bool,
    read_off: u64,
    sent_off: u64,
    /// A trigger armed on this connection: its action, and the offset it fires at.
    armed: Option<(Action, u64)>,
    /// Scanning state for triggers (the tail of what was read, requests counted).
    tail: Vec<u8>,
    requests: u64,
    last_trickle: Option<Instant>,
    read_timeout: Option<Duration>,
}

enum Step {
    Go,
    /// The source ended and all it sent went through (its FIN is passed on).
    Done,
    /// An error, a reset or the link's end: both sockets are shut.
    End,
    /// Frozen: return without closing anything.
    Freeze,
}

impl<'a> Pump<'a> {
    fn new(sh: &'a Shared, conn: &'a Conn, dir: Dir) -> Pump<'a> {
        let server = conn
            .server
            .as_ref()
            .expect("a pumped connection has a server");
        let (src, dst) = match dir {
            Dir::Up => (&conn.client, server),
            Dir::Down => (server, &conn.client),
        };
        let _ = dst.set_write_timeout(Some(TICK));
        Pump {
            sh,
            conn,
            dir,
            src,
            dst,
            queue: VecDeque::new(),
            queued: 0,
            eof: false,
            read_off: 0,
            sent_off: 0,
            armed: None,
            tail: Vec::new(),
            requests: 0,
            last_trickle: None,
            read_timeout: None,
        }
    }

    fn run(mut self) {
        loop {
            match self.step() {
                Step::Go => {}
                Step::Freeze | Step::Done => return,
                Step::End => {
                    if self.conn.reset.load(Ordering::SeqCst) {
                        // Wake the other pump; the last close sends the RST (linger 0).
                        let _ = self.src.shutdown(Shutdown::Read);
                        let _ = self.dst.shutdown(Shutdown::Read);
                    } else {
                        let _ = self.src.shutdown(Shutdown::Both);
                        let _ = self.dst.shutdown(Shutdown::Both);
                    }
                    return;
                }
            }
        }
    }

    fn step(&mut self) -> Step {
        if self.sh.stopped() || self.conn.reset.load(Ordering::SeqCst) {
            return Step::End;
        }
        if self.conn.dead.load(Ordering::SeqCst) {
            return Step::Freeze;
        }
        let ctl = self.sh.ctl();
        match ctl.mode {
            Mode::Pause => {
                std::thread::sleep(TICK);
                return Step::Go;
            }
            // A blackhole set while no connection was live freezes this one too.
            Mode::Blackhole => {
                self.conn.dead.store(true, Ordering::SeqCst);
                return Step::Freeze;
            }
            Mode::Pass | Mode::Refuse => {}
        }
        let now = Instant::now();
        if let Some(due) = self.queue.front().map(|(d, _)| *d) {
            if due <= now {
                return self.send(&ctl);
            }
        } else if self.eof {
            // Everything the source sent has gone through: pass its FIN on.
            let _ = self.dst.shutdown(Shutdown::Write);
            return Step::Done;
        }
        let window = match ctl.way(self.dir) {
            Way { delay, .. } if delay.is_zero() => WINDOW,
            Way { rate, delay } => {
                let bdp = rate.map_or(MAX_WINDOW as f64, |r| 2.0 * r as f64 * delay.as_secs_f64());
                (bdp as usize).clamp(WINDOW, MAX_WINDOW)
            }
        };
        let wait = self
            .queue
            .front()
            .map_or(TICK, |(d, _)| d.saturating_duration_since(now).min(TICK))
            .max(Duration::from_millis(1));
        if self.eof || self.queued >= window {
            std::thread::sleep(wait);
            return Step::Go;
        }
        if self.read_timeout != Some(wait) {
            let _ = self.src.set_read_timeout(Some(wait));
            self.read_timeout = Some(wait);
        }
        let mut buf = vec![0u8; SLICE.min(window - self.queued)];
        let mut src = self.src;
        match src.read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                buf.truncate(n);
                if self.dir == Dir::Up {
                    self.scan(&buf);
                }
                self.read_off += n as u64;
                self.queued += n;
                // The delay as it is now (it may have changed during the read).
                let delay = self.sh.ctl().way(self.dir).delay;
                self.queue.push_back((Instant::now() + delay, buf));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::End,
        }
        Step::Go
    }

    /// Writes out (part of) the first due slice.
    fn send(&mut self, ctl: &Ctl) -> Step {
        let Some((_, front)) = self.queue.front() else {
            return Step::Go;
        };
        let mut n = front.len().min(SLICE);
        if self.dir == Dir::Down {
            if let Some(every) = ctl.trickle {
                if self.last_trickle.is_some_and(|t| t.elapsed() < every) {
                    std::thread::sleep(TICK);
                    return Step::Go;
                }
                n = 1;
            }
        }
        if let Some((_, at)) = self.armed {
            if at > self.sent_off {
                n = n.min((at - self.sent_off) as usize);
            }
        }
        if !self.sh.take(self.dir, n, self.conn) {
            // A blackhole, pause or reset came meanwhile: look again.
            return Step::Go;
        }
        let mut dst = self.dst;
        let written = match dst.write(&front[..n]) {
            Ok(0) => return Step::End,
            Ok(k) => k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(_) => return Step::End,
        };
        if written < n {
            // Give back what was not sent (the rate counts bytes that moved).
            let mut b = lock(&self.sh.buckets[self.dir as usize]);
            b.tokens += (n - written) as f64;
        }
        if written > 0 {
            self.last_trickle = Some(Instant::now());
            self.sh.bytes[self.dir as usize].fetch_add(written as u64, Ordering::SeqCst);
            self.sent_off += written as u64;
            self.queued -= written;
            let front = &mut self.queue.front_mut().expect("a front slice").1;
            if written == front.len() {
                self.queue.pop_front();
            } else {
                front.drain(..written);
            }
        }
        if let Some((action, at)) = self.armed {
            if self.sent_off >= at {
                self.armed = None;
                self.sh.act(action);
            }
        }
        Step::Go
    }

    /// Looks for a trigger's pattern in what was just read (client to server).
    fn scan(&mut self, buf: &[u8]) {
        // Only while triggers wait (arm them before the traffic they aim at).
        let triggers = lock(&self.sh.triggers).clone();
        if triggers.is_empty() {
            self.tail.clear();
            return;
        }
        let keep = triggers
            .iter()
            .map(|t| t.pattern.len())
            .chain([REQUEST_LINE_END.len()])
            .max()
            .unwrap_or(0);
        let mut hay = std::mem::take(&mut self.tail);
        let base = self.read_off - hay.len() as u64;
        let old = hay.len();
        hay.extend_from_slice(buf);
        // Request line ends found in the new bytes, by their end offset.
        let ends: Vec<u64> = find_all(&hay, REQUEST_LINE_END)
            .into_iter()
            .map(|i| i + REQUEST_LINE_END.len())
            .filter(|&e| e > old)
            .map(|e| base + e as u64)
            .collect();
        if self.armed.is_none() {
            let before = self.requests;
            for t in &triggers {
                let hit = find_all(&hay, &t.pattern)
                    .into_iter()
                    .filter(|&i| i + t.pattern.len() > old)
                    .find(|&i| {
                        let start = base + i as u64;
                        let done = before + ends.iter().filter(|&&e| e <= start).count() as u64;
                        !t.reused_only || done >= 1
                    });
                if let Some(i) = hit {
                    let end = base + (i + t.pattern.len()) as u64;
                    let mut all = lock(&self.sh.triggers);
                    // Another connection may have taken it meanwhile.
                    let same = |x: &Trigger| {
                        x.pattern == t.pattern && x.after == t.after && x.action == t.action
                    };
                    if let Some(pos) = all.iter().position(same) {
                        all.remove(pos);
                        self.armed = Some((t.action, end + t.after));
                    }
                    break;
                }
            }
        }
        self.requests += ends.len() as u64;
        let from = hay.len().saturating_sub(keep.saturating_sub(1));
        self.tail = hay.split_off(from);
    }
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return Vec::new();
    }
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}
