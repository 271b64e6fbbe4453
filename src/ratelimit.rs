//! The user's cap on the upload (and download) rate: the values of `s3.max_upload_rate`,
//! `s3.upload_rate_schedule` (a timetable in rclone's style, `"08:00,20MiB 23:00,off"`,
//! local time) and their download twins parsed into a [`Cap`], and the one token bucket
//! ([`Throttle`]) that every request body of a run goes through ([`Throttled`]), shared by
//! all threads. The bucket re-reads the cap's rate at least every second, so a timetable
//! boundary takes effect within a second; a wait for tokens ends at once when the run is
//! stopped. Deadlines that follow from a cap are the store's (`store::http::Deadlines`).

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lowest cap accepted: below it a 16 MiB part takes hours.
pub const MIN_RATE: u64 = 1024;

/// The most a full bucket holds: 256 KiB, or one second of the rate when that is less.
pub const MAX_BURST: u64 = 256 << 10;

/// The most one wait grants: 64 KiB, or 1/64 s of the rate when that is less, so that 64
/// threads queued for tokens are served within a second of a change of rate.
pub const MAX_GRANT: u64 = 64 << 10;

/// How often a wait for tokens looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// How often the bucket asks the cap for its rate (a timetable's rate changes by the clock).
const RECHECK: Duration = Duration::from_secs(1);

/// A rate as written: `off` or `0` (no cap), or a size per second (`"20MiB"`,
/// `"20MiB/s"`, `2500000`); `None` is no cap.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let t = t.strip_suffix("/s").unwrap_or(t);
    match crate::size::parse(t) {
        Ok(0) => Ok(None),
        Ok(n) if n < MIN_RATE => Err(format!(
            "{n} bytes/s is below the lowest cap of {MIN_RATE} bytes/s (1KiB/s): a 16 MiB part \
             would take hours; write at least 1KiB, or off"
        )),
        Ok(n) => Ok(Some(n)),
        Err(why) => Err(format!(
            "{why}; write off, 0 or a size per second such as 20MiB (KiB, MiB, GiB are \
             1024-based; KB, MB, GB 1000-based)"
        )),
    }
}

/// `--limit-upload` / `--limit-download`: a rate for one run (clap's value parser).
pub fn parse_flag(text: &str) -> Result<Cap, String> {
    Ok(match parse_rate(text)? {
        None => Cap::Off,
        Some(r) => Cap::Fixed(r),
    })
}

/// A rate for people: `20.0MiB/s`, `512.0KiB/s`.
pub fn describe(rate: u64) -> String {
    if rate >= 1 << 20 {
        format!("{:.1}MiB/s", rate as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1}KiB/s", rate as f64 / 1024.0)
    }
}

/// A timetable: from each entry's minute of the (local) day its rate holds until the next
/// entry's; before the first entry of a day, the day before's last entry holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timetable {
    /// (minute of the day, rate; None: no cap), sorted by minute, minutes distinct.
    entries: Vec<(u32, Option<u64>)>,
}

impl Timetable {
    /// Parses `"08:00,20MiB 23:00,off"`: entries `HH:MM,RATE` apart by spaces, in any
    /// order. The error says what is wrong (the caller names the key).
    pub fn parse(text: &str) -> Result<Timetable, String> {
        const FORM: &str = "write entries HH:MM,RATE apart by spaces, such as \
                            \"08:00,20MiB 23:00,off\"";
        let mut entries: Vec<(u32, Option<u64>)> = Vec::new();
        for entry in text.split_whitespace() {
            let Some((time, rate)) = entry.split_once(',') else {
                return Err(format!("entry {entry:?} has no rate; {FORM}"));
            };
            if rate.contains(',') {
                return Err(format!("entry {entry:?} has more than one comma; {FORM}"));
            }
            if time.contains('-') || time.chars().any(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "entry {entry:?}: days of the week are not supported, only a time of day \
                     (the timetable repeats every day); {FORM}"
                ));
            }
            let Some(minute) = parse_hhmm(time) else {
                return Err(format!(
                    "entry {entry:?}: {time:?} is not a 24-hour time HH:MM from 00:00 to 23:59"
                ));
            };
            let rate = parse_rate(rate).map_err(|why| format!("entry {entry:?}: {why}"))?;
            if entries.iter().any(|(m, _)| *m == minute) {
                return Err(format!(
                    "{time} appears twice: give each time of day one rate"
                ));
            }
            entries.push((minute, rate));
        }
        if entries.is_empty() {
            return Err(format!("no entries; {FORM}, or remove the key"));
        }
        entries.sort_by_key(|(m, _)| *m);
        Ok(Timetable { entries })
    }

    /// The rate at `minute` of the day (0..1440), wrapping over midnight.
    pub fn at(&self, minute: u32) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|(m, _)| *m <= minute)
            .or(self.entries.last())
            .and_then(|(_, r)| *r)
    }

    fn lowest(&self) -> Option<u64> {
        self.entries.iter().filter_map(|(_, r)| *r).min()
    }

    fn describe(&self) -> String {
        let e: Vec<String> = self
            .entries
            .iter()
            .map(|(m, r)| {
                format!(
                    "{:02}:{:02},{}",
                    m / 60,
                    m % 60,
                    r.map(describe).unwrap_or_else(|| "off".into())
                )
            })
            .collect();
        e.join(" ")
    }
}

fn parse_hhmm(v: &str) -> Option<u32> {
    let (h, m) = v.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// What caps a direction's rate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Cap {
    #[default]
    Off,
    /// Bytes per second.
    Fixed(u64),
    /// By the local time of day.
    Timetable(Timetable),
}

impl Cap {
    /// The rate at `minute` of the local day (None: no cap).
    pub fn at(&self, minute: u32) -> Option<u64> {
        match self {
            Cap::Off => None,
            Cap::Fixed(r) => Some(*r),
            Cap::Timetable(t) => t.at(minute),
        }
    }

    /// The lowest rate this cap ever sets (None: it never caps): what request deadlines
    /// must allow for.
    pub fn lowest(&self) -> Option<u64> {
        match self {
            Cap::Off => None,
            Cap::Fixed(r) => Some(*r),
            Cap::Timetable(t) => t.lowest(),
        }
    }

    pub fn is_off(&self) -> bool {
        self.lowest().is_none()
    }

    /// For logs: `off`, `20.0MiB/s`, `timetable 08:00,20.0MiB/s 23:00,off`.
    pub fn describe(&self) -> String {
        match self {
            Cap::Off => "off".into(),
            Cap::Fixed(r) => describe(*r),
            Cap::Timetable(t) => format!("timetable {}", t.describe()),
        }
    }
}

/// Time as the bucket sees it (a fake one in tests).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    /// The minute of the local day (0..1440).
    fn minute_of_day(&self) -> u32;
    fn sleep(&self, d: Duration);
}

/// The system clock and the local time zone (`TZ`, else `/etc/localtime`, read once; UTC
/// when neither can be read, which is said in the log).
pub struct SystemClock {
    zone: Option<tz::TimeZone>,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let zone = match tz::TimeZone::local() {
            Ok(z) => Some(z),
            Err(e) => {
                crate::event!(
                    Warn,
                    "local_time_zone_unknown",
                    error = e.to_string(),
                    note = "rate timetables follow UTC; set TZ (e.g. TZ=Europe/Berlin) to fix"
                );
                None
            }
        };
        SystemClock { zone }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn minute_of_day(&self) -> u32 {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let offset = self
            .zone
            .as_ref()
            .and_then(|z| z.find_local_time_type(unix).ok())
            .map(|t| i64::from(t.ut_offset()))
            .unwrap_or(0);
        ((unix + offset).rem_euclid(86_400) / 60) as u32
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

struct State {
    /// The rate now (None: no cap) and when it was read from the cap.
    rate: Option<u64>,
    checked: Option<Instant>,
    /// When every byte granted so far will have gone at the rate (the bucket is full when
    /// this is a burst's time or more in the past).
    tat: Instant,
}

/// One token bucket for a direction of a run, shared by all its threads: bytes are granted
/// in the order asked for (no thread's share is lost to another's idling), at most a
/// small burst ([`MAX_BURST`]) ahead of the rate.
pub struct Throttle {
    cap: Cap,
    clock: Arc<dyn Clock>,
    stop: Option<Arc<AtomicBool>>,
    state: Mutex<State>,
    started: Instant,
    /// Milliseconds after `started` when bytes last went (0: never).
    moved_ms: AtomicU64,
}

impl Throttle {
    /// A bucket for `cap` (None when it never caps); a wait for tokens ends with an error
    /// once `stop` is set.
    pub fn new(cap: &Cap, stop: Option<Arc<AtomicBool>>) -> Option<Arc<Throttle>> {
        if cap.is_off() {
            return None;
        }
        Some(Arc::new(Throttle::with_clock(
            cap.clone(),
            Arc::new(SystemClock::new()),
            stop,
        )))
    }

    pub fn with_clock(cap: Cap, clock: Arc<dyn Clock>, stop: Option<Arc<AtomicBool>>) -> Throttle {
        let now = clock.now();
        Throttle {
            cap,
            stop,
            state: Mutex::new(State {
                rate: None,
                checked: None,
                tat: now,
            }),
            started: now,
            clock,
            moved_ms: AtomicU64::new(0),
        }
    }

    pub fn cap(&self) -> &Cap {
        &self.cap
    }

    /// The rate in force now (None: none).
    pub fn rate_now(&self) -> Option<u64> {
        self.cap.at(self.clock.minute_of_day())
    }

    /// How long no byte has gone through the bucket (since its creation when none has).
    pub fn idle(&self) -> Duration {
        let since = Duration::from_millis(self.moved_ms.load(Ordering::Relaxed));
        self.clock
            .now()
            .saturating_duration_since(self.started)
            .saturating_sub(since)
    }

    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Waits until up to `want` bytes may go; returns how many (at least 1 when `want` is).
    /// Fails when the run is stopped during the wait.
    pub fn take(&self, want: usize) -> std::io::Result<usize> {
        if want == 0 {
            return Ok(0);
        }
        let (n, go) = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| std::io::Error::other("the rate cap's bucket is poisoned"))?;
            let now = self.clock.now();
            if st
                .checked
                .is_none_or(|c| now.saturating_duration_since(c) >= RECHECK)
            {
                st.rate = self.cap.at(self.clock.minute_of_day());
                st.checked = Some(now);
            }
            let Some(rate) = st.rate else {
                // No cap now: a later cap starts with an empty debt.
                st.tat = now;
                return Ok(want);
            };
            let grant = (want as u64).min(MAX_GRANT.min(rate / 64).max(1));
            let burst = Duration::from_secs_f64(MAX_BURST.min(rate) as f64 / rate as f64);
            let start = st.tat.max(now);
            st.tat = start + Duration::from_secs_f64(grant as f64 / rate as f64);
            (grant as usize, st.tat.checked_sub(burst).unwrap_or(now))
        };
        loop {
            let now = self.clock.now();
            if now >= go {
                break;
            }
            if self.stopped() {
                return Err(std::io::Error::other(
                    "the run was stopped while waiting under the rate cap",
                ));
            }
            self.clock.sleep((go - now).min(STOP_POLL));
        }
        Ok(n)
    }

    /// `n` bytes of a grant did not go (a short read): they are given back.
    pub fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            if let Some(rate) = st.rate {
                let back = Duration::from_secs_f64(n as f64 / rate as f64);
                // Below now is harmless: a grant starts at now at the earliest.
                st.tat = st.tat.checked_sub(back).unwrap_or(st.tat);
            }
        }
    }

    /// Bytes went (the reader says so once they have).
    fn moved(&self) {
        let ms = self
            .clock
            .now()
            .saturating_duration_since(self.started)
            .as_millis()
            .max(1) as u64;
        self.moved_ms.store(ms, Ordering::Relaxed);
    }
}

/// The caps of a run's two directions (None: no cap).
#[derive(Clone, Default)]
pub struct Throttles {
    pub upload: Option<Arc<Throttle>>,
    pub download: Option<Arc<Throttle>>,
}

/// A body (or a response body) read through a [`Throttle`]: each read moves only the
/// bytes granted, so what is read is what the socket may carry.
pub struct Throttled<R> {
    inner: R,
    throttle: Arc<Throttle>,
}

impl<R> Throttled<R> {
    pub fn new(inner: R, throttle: Arc<Throttle>) -> Throttled<R> {
        Throttled { inner, throttle }
    }
}

impl<R: Read> Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return self.inner.read(buf);
        }
        let n = self.throttle.take(buf.len())?;
        let got = match self.inner.read(&mut buf[..n]) {
            Ok(got) => got,
            Err(e) => {
                self.throttle.give_back(n);
                return Err(e);
            }
        };
        self.throttle.give_back(n - got);
        if got > 0 {
            self.throttle.moved();
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests;
