//! Progress a person can watch during a long backup or restore. A [`Meter`] is a set of
//! counters the working threads bump (bytes through, bytes stored, bytes sent and their
//! rate, a resume's verified prefix, the chunk, requests in flight, the last successful
//! request, the last time anything moved); a [`Reporter`] thread reads it: a
//! `event=backup_progress` / `restore_progress` log line every
//! `global.progress_interval_seconds`, or, when stderr is a terminal, one live line
//! redrawn every second instead; both show the rate cap when one is active. The total of
//! a backup stream is not known in advance: the estimate (from the previous backup of the
//! same kind) is labelled as one. During a network outage (`outage`) the lines say
//! "waiting for the network since T (N s), next probe in M s". The stall watchdog
//! (`watchdog`) reads [`Meter::idle`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::chunker::ChunkDone;
use crate::journal::PartDone;
use crate::pipeline::Progress;
use crate::ratelimit::Throttle;
use crate::retry::Retrier;

/// The total a run expects, and where the number comes from.
#[derive(Clone, Debug)]
pub struct Expected {
    pub bytes: u64,
    /// `exact` (a restore knows its chain) or what the estimate is based on.
    pub source: String,
}

pub struct Meter {
    event: &'static str,
    subvolume: String,
    started: Instant,
    retrier: Arc<Retrier>,
    retries_before: u64,
    expected: Option<Expected>,
    /// Stream bytes read (backup) or written into `btrfs receive` (restore).
    through: AtomicU64,
    /// Bytes stored in S3 by this run (backup).
    stored: AtomicU64,
    chunk: AtomicU64,
    in_flight: AtomicU64,
    /// Milliseconds after `started` of the last successful request (0: none yet).
    last_ok_ms: AtomicU64,
    /// Part bytes of chunks still being uploaded, so a stored chunk is not counted twice.
    open_parts: Mutex<BTreeMap<u64, u64>>,
    /// Bytes this run sent that are stored (parts and PUTs; a resume's stored bytes not).
    sent: AtomicU64,
    /// Milliseconds after `started` when the first byte was sent (0: not yet).
    first_send_ms: AtomicU64,
    /// A resume: the bytes an earlier run stored (0: not a resume).
    prefix: AtomicU64,
    /// A resume: bytes of that prefix read and hashed again so far.
    verified: AtomicU64,
    /// CompleteMultipartUploads in flight.
    completing: AtomicU64,
    /// Milliseconds after `started` of the last movement: a byte read, a request queued,
    /// ended or stored, a retry (0: none since the start).
    moved_ms: AtomicU64,
    /// The rate cap of this run's transfers, when one is active: shown in progress
    /// lines, and bytes going through it are movement.
    cap: OnceLock<Arc<Throttle>>,
}

impl Meter {
    pub fn new(
        event: &'static str,
        subvolume: &str,
        retrier: Arc<Retrier>,
        expected: Option<Expected>,
    ) -> Arc<Meter> {
        Arc::new(Meter {
            event,
            subvolume: subvolume.to_string(),
            started: Instant::now(),
            retries_before: retrier.retries(),
            retrier,
            expected,
            through: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            chunk: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last_ok_ms: AtomicU64::new(0),
            open_parts: Mutex::new(BTreeMap::new()),
            sent: AtomicU64::new(0),
            first_send_ms: AtomicU64::new(0),
            prefix: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            completing: AtomicU64::new(0),
            moved_ms: AtomicU64::new(0),
            cap: OnceLock::new(),
        })
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis().max(1) as u64
    }

    /// Something moved (bytes, a request queued, ended or stored, a retry).
    pub fn touch(&self) {
        self.moved_ms.store(self.ms(), Ordering::Relaxed);
    }

    /// How long nothing has moved (bytes through the rate cap count).
    pub fn idle(&self) -> Duration {
        let since = self.moved_ms.load(Ordering::Relaxed);
        let own = Duration::from_millis(
            (self.started.elapsed().as_millis() as u64).saturating_sub(since),
        );
        match self.cap.get() {
            Some(t) => own.min(t.idle()),
            None => own,
        }
    }

    /// The run's transfers go through `cap` (no-op for None; the first one set stays).
    pub fn show_cap(&self, cap: Option<Arc<Throttle>>) {
        if let Some(t) = cap {
            let _ = self.cap.set(t);
        }
    }

    /// The rate the cap holds now, when one is active.
    fn cap_now(&self) -> Option<u64> {
        self.cap.get().and_then(|t| t.rate_now())
    }

    /// Retries of this run so far (attempts beyond the first).
    pub fn retries(&self) -> u64 {
        self.retrier.retries().saturating_sub(self.retries_before)
    }

    /// The run's network outage state (shared with the retry loop).
    pub fn outage(&self) -> &crate::outage::Outage {
        self.retrier.outage()
    }

    /// Bytes this run sent that are stored (a resume's earlier bytes not).
    pub fn uploaded_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// From this run's first byte sent until now (zero before it).
    pub fn upload_time(&self) -> Duration {
        let first = self.first_send_ms.load(Ordering::Relaxed);
        if first == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.ms().saturating_sub(first))
    }

    /// CompleteMultipartUploads in flight now.
    pub fn completions_in_flight(&self) -> u64 {
        self.completing.load(Ordering::Relaxed)
    }

    pub fn subvolume(&self) -> &str {
        &self.subvolume
    }

    pub fn add_through(&self, n: u64) {
        self.through.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            self.touch();
        }
    }

    /// A resume begins with `bytes` stored by an earlier run.
    pub fn resuming(&self, bytes: u64) {
        self.prefix.store(bytes, Ordering::Relaxed);
    }

    fn verified(&self, bytes: u64) {
        self.verified.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The first byte of this run goes to the uploaders; on a resume, says how long the
    /// stored prefix took to verify (`event=resume_first_new_byte`).
    fn sending(&self) {
        let ms = self.ms();
        if self
            .first_send_ms
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let prefix = self.prefix.load(Ordering::Relaxed);
        if prefix > 0 {
            let verified = self.verified.load(Ordering::Relaxed);
            let secs = ms as f64 / 1000.0;
            crate::event!(
                Info,
                "resume_first_new_byte",
                subvolume = self.subvolume,
                verified_bytes = verified,
                stored_bytes = prefix,
                seconds = format!("{secs:.1}"),
                verify_rate = format!("{:.1}MB/s", verified as f64 / secs / 1e6)
            );
        }
    }

    /// Still reading again what an earlier run stored, before sending anything.
    fn verifying(&self) -> bool {
        self.prefix.load(Ordering::Relaxed) > 0
            && self.first_send_ms.load(Ordering::Relaxed) == 0
            && self.verified.load(Ordering::Relaxed) < self.prefix.load(Ordering::Relaxed)
    }

    /// Bytes per second of what this run sent, since its first byte went (`None` before).
    fn upload_rate(&self) -> Option<f64> {
        let first = self.first_send_ms.load(Ordering::Relaxed);
        if first == 0 {
            return None;
        }
        let secs = (self.ms().saturating_sub(first)) as f64 / 1000.0;
        Some(if secs > 0.0 {
            self.sent.load(Ordering::Relaxed) as f64 / secs
        } else {
            0.0
        })
    }

    pub fn set_chunk(&self, i: u64) {
        self.chunk.store(i, Ordering::Relaxed);
    }

    pub fn request_ok(&self) {
        let ms = self.ms();
        self.last_ok_ms.store(ms, Ordering::Relaxed);
        self.moved_ms.store(ms, Ordering::Relaxed);
    }

    fn part_stored(&self, chunk: u64, size: u64) {
        self.stored.fetch_add(size, Ordering::Relaxed);
        if let Ok(mut open) = self.open_parts.lock() {
            *open.entry(chunk).or_default() += size;
        }
        self.request_ok();
    }

    fn chunk_stored(&self, chunk: u64, size: u64) {
        let parts = self
            .open_parts
            .lock()
            .ok()
            .and_then(|mut o| o.remove(&chunk))
            .unwrap_or(0);
        self.stored
            .fetch_add(size.saturating_sub(parts), Ordering::Relaxed);
        self.request_ok();
    }

    /// The fields of one progress report, in order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let secs = self.started.elapsed().as_secs_f64();
        let through = self.through.load(Ordering::Relaxed);
        let rate = if secs > 0.0 {
            through as f64 / secs
        } else {
            0.0
        };
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        let mut f = vec![
            ("subvolume", self.subvolume.clone()),
            ("bytes", through.to_string()),
            (
                "stored_bytes",
                self.stored.load(Ordering::Relaxed).to_string(),
            ),
            ("rate", format!("{:.1}MB/s", rate / 1e6)),
            ("elapsed_seconds", format!("{secs:.0}")),
            ("chunk", self.chunk.load(Ordering::Relaxed).to_string()),
            (
                "requests_in_flight",
                self.in_flight.load(Ordering::Relaxed).to_string(),
            ),
            (
                "uploaded_bytes",
                self.sent.load(Ordering::Relaxed).to_string(),
            ),
            (
                "upload_rate",
                format!("{:.1}MB/s", self.upload_rate().unwrap_or(0.0) / 1e6),
            ),
            ("retries", self.retries().to_string()),
            (
                "since_last_success_seconds",
                if last == 0 {
                    "none_yet".into()
                } else {
                    format!(
                        "{:.0}",
                        (self.started.elapsed().as_millis() as u64).saturating_sub(last) as f64
                            / 1000.0
                    )
                },
            ),
        ];
        if let Some(r) = self.cap_now() {
            f.push(("rate_cap", crate::ratelimit::describe(r)));
        }
        if let Some(o) = self.retrier.outage().status() {
            f.push(("network", o.describe()));
            f.push(("outage_seconds", o.down_for.as_secs().to_string()));
        }
        let prefix = self.prefix.load(Ordering::Relaxed);
        if prefix > 0 {
            f.push((
                "phase",
                if self.verifying() {
                    "verifying_stored_prefix"
                } else {
                    "uploading"
                }
                .into(),
            ));
            f.push((
                "resumed_bytes",
                self.verified.load(Ordering::Relaxed).to_string(),
            ));
            f.push(("stored_prefix_bytes", prefix.to_string()));
        }
        if let Some(e) = &self.expected {
            f.push(("expected_bytes", e.bytes.to_string()));
            f.push(("expected_from", e.source.clone()));
            if e.bytes > 0 {
                let pct = (through as f64 / e.bytes as f64 * 100.0).min(999.0);
                f.push(("percent", format!("{pct:.0}")));
                if rate > 0.0 && through < e.bytes {
                    f.push((
                        "eta_seconds",
                        format!("{:.0}", (e.bytes - through) as f64 / rate),
                    ));
                }
            }
        }
        f
    }

    fn log(&self) {
        let mut line = format!("event={}", self.event);
        for (k, v) in self.fields() {
            crate::logging::push_kv(&mut line, k, &v);
        }
        log::info!("{line}");
    }

    fn live_line(&self) -> String {
        let f: BTreeMap<&str, String> = self.fields().into_iter().collect();
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let mb = |k: &str| {
            get(k)
                .parse::<u64>()
                .map(|b| format!("{:.1} MB", b as f64 / 1e6))
                .unwrap_or_default()
        };
        let what = self.event.trim_end_matches("_progress");
        if let Some(o) = self.retrier.outage().status() {
            return format!(
                "{what} {}: {}; {} so far",
                self.subvolume,
                o.describe(),
                mb("bytes")
            );
        }
        if self.verifying() {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return format!(
                "{what} {}: verifying stored prefix: {:.2} of {:.2} GiB at {}",
                self.subvolume,
                gib(self.verified.load(Ordering::Relaxed)),
                gib(self.prefix.load(Ordering::Relaxed)),
                get("rate"),
            );
        }
        let mut s = format!(
            "{what} {}: {} at {}, chunk {}, {} in flight, {} retries",
            self.subvolume,
            mb("bytes"),
            get("rate"),
            get("chunk"),
            get("requests_in_flight"),
            get("retries")
        );
        if self.upload_rate().is_some() {
            s.push_str(&format!(
                ", sent {} at {}",
                mb("uploaded_bytes"),
                get("upload_rate")
            ));
        }
        if let Some(c) = f.get("rate_cap") {
            s.push_str(&format!(" (capped at {c})"));
        }
        if let Some(p) = f.get("percent") {
            let approx = if get("expected_from") == "exact" {
                ""
            } else {
                "~"
            };
            s.push_str(&format!(", {approx}{p}% of {}", mb("expected_bytes")));
        }
        s
    }
}

/// Reads the meter on its own thread until dropped.
pub struct Reporter {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Reporter {
    /// `interval`: between log lines (a terminal gets a live line every second instead).
    pub fn start(meter: Arc<Meter>, interval: Duration) -> Reporter {
        let tty = std::io::stderr().is_terminal();
        let (tx, rx) = bounded::<()>(1);
        let tick = if tty {
            Duration::from_secs(1)
        } else {
            interval.max(Duration::from_secs(1))
        };
        let handle = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || loop {
                match rx.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {
                        if tty {
                            let mut e = std::io::stderr().lock();
                            let _ = write!(e, "\r\x1b[2K{}", meter.live_line());
                            let _ = e.flush();
                        } else {
                            meter.log();
                        }
                    }
                    _ => {
                        if tty {
                            let _ = write!(std::io::stderr(), "\r\x1b[2K");
                        }
                        return;
                    }
                }
            })
            .ok();
        Reporter {
            stop: Some(tx),
            handle,
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A reader that counts what passes through into the meter.
pub struct Counted<'a, R: ?Sized> {
    pub inner: &'a mut R,
    pub meter: &'a Meter,
}

impl<R: Read + ?Sized> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add_through(n as u64);
        Ok(n)
    }
    /// Forwarded: the encrypted pipeline reads many blocks with one `readv`.
    fn read_vectored(&mut self, bufs: &mut [std::io::IoSliceMut<'_>]) -> std::io::Result<usize> {
        let n = self.inner.read_vectored(bufs)?;
        self.meter.add_through(n as u64);
        Ok(n)
    }
}

impl<W: Write + ?Sized> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.add_through(n as u64);
        self.meter.request_ok();
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A pipeline progress sink that also feeds the meter.
pub struct Metered<'a> {
    pub inner: &'a mut dyn Progress,
    pub meter: &'a Meter,
}

impl Progress for Metered<'_> {
    fn upload_opened(&mut self, chunk: u64, key: &str, upload_id: &str) -> Result<()> {
        self.meter.set_chunk(chunk);
        self.meter.request_ok();
        self.inner.upload_opened(chunk, key, upload_id)
    }
    fn part_stored(&mut self, chunk: u64, part: u32, p: &PartDone) -> Result<()> {
        self.meter.part_stored(chunk, p.size);
        self.inner.part_stored(chunk, part, p)
    }
    fn chunk_stored(&mut self, chunk: u64, key: &str, d: &ChunkDone, etag: &str) -> Result<()> {
        self.meter.set_chunk(chunk);
        self.meter.chunk_stored(chunk, d.len);
        self.inner.chunk_stored(chunk, key, d, etag)
    }
    fn chunk_sealed(&mut self, chunk: u64, sealing: &crate::age::Sealing) -> Result<()> {
        self.inner.chunk_sealed(chunk, sealing)
    }
    fn requests_in_flight(&mut self, n: usize) {
        self.meter.in_flight.store(n as u64, Ordering::Relaxed);
        self.meter.touch();
        self.inner.requests_in_flight(n);
    }
    fn completions_in_flight(&mut self, n: usize) {
        self.meter.completing.store(n as u64, Ordering::Relaxed);
        self.inner.completions_in_flight(n);
    }
    fn resuming(&mut self, bytes: u64) {
        self.meter.resuming(bytes);
        self.inner.resuming(bytes);
    }
    fn verified(&mut self, bytes: u64) {
        self.meter.verified(bytes);
        self.inner.verified(bytes);
    }
    fn sending(&mut self) {
        self.meter.sending();
        self.inner.sending();
    }
    fn sent(&mut self, bytes: u64) {
        self.meter.sent(bytes);
        self.inner.sent(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_count_parts_and_whole_chunks_once() {
        let m = Meter::new(
            "backup_progress",
            "data",
            Arc::new(crate::testing::retrier()),
            Some(Expected {
                bytes: 400,
                source: "previous full".into(),
            }),
        );
        m.add_through(200);
        m.part_stored(0, 50);
        m.part_stored(0, 50);
        m.chunk_stored(0, 100);
        m.chunk_stored(1, 30);
        let f: BTreeMap<&str, String> = m.fields().into_iter().collect();
        assert_eq!(f["stored_bytes"], "130");
        assert_eq!(f["bytes"], "200");
        assert_eq!(f["percent"], "50");
        assert_eq!(f["expected_from"], "previous full");
        assert_ne!(f["since_last_success_seconds"], "none_yet");
        assert!(m.live_line().contains("~50% of"), "{}", m.live_line());
        assert!(!f.contains_key("phase"), "not a resume: {f:?}");
    }

    #[test]
    fn a_resume_says_it_verifies_its_stored_prefix_then_counts_sent_bytes_apart() {
        let m = Meter::new(
            "backup_progress",
            "data",
            Arc::new(crate::testing::retrier()),
            None,
        );
        let mut sink = crate::pipeline::NoProgress;
        let mut p = Metered {
            inner: &mut sink,
            meter: &m,
        };
        p.resuming(3 << 30);
        m.add_through(1 << 30);
        p.verified(1 << 30);
        let f: BTreeMap<&str, String> = m.fields().into_iter().collect();
        assert_eq!(f["phase"], "verifying_stored_prefix");
        assert_eq!(f["resumed_bytes"], (1u64 << 30).to_string());
        assert_eq!(f["stored_prefix_bytes"], (3u64 << 30).to_string());
        assert_eq!(f["uploaded_bytes"], "0");
        let live = m.live_line();
        assert!(
            live.contains("verifying stored prefix: 1.00 of 3.00 GiB at"),
            "{live}"
        );
        // A gap: the first new byte goes before the whole prefix is verified.
        p.sending();
        m.add_through(5_000_000);
        p.sent(5_000_000);
        std::thread::sleep(Duration::from_millis(20));
        let f: BTreeMap<&str, String> = m.fields().into_iter().collect();
        assert_eq!(f["phase"], "uploading");
        assert_eq!(f["uploaded_bytes"], "5000000");
        // Sent bytes over the time since the first one went: not the stream's rate.
        let rate: f64 = f["upload_rate"].trim_end_matches("MB/s").parse().unwrap();
        assert!(rate > 0.0 && rate < 5_000.0, "{f:?}");
        assert_ne!(f["upload_rate"], f["rate"]);
        assert!(
            m.live_line().contains("sent 5.0 MB at"),
            "{}",
            m.live_line()
        );
    }

    #[test]
    fn idle_is_the_time_since_anything_moved() {
        let m = Meter::new(
            "backup_progress",
            "data",
            Arc::new(crate::testing::retrier()),
            None,
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(m.idle() >= Duration::from_millis(50));
        m.add_through(0);
        assert!(m.idle() >= Duration::from_millis(50), "no byte is no move");
        m.add_through(1);
        assert!(m.idle() < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        let mut sink = crate::pipeline::NoProgress;
        Metered {
            inner: &mut sink,
            meter: &m,
        }
        .requests_in_flight(1);
        assert!(m.idle() < Duration::from_millis(50));
    }

    #[test]
    fn bytes_through_the_cap_are_movement_and_the_cap_is_shown() {
        use crate::ratelimit::{Cap, Throttle};
        let m = Meter::new(
            "backup_progress",
            "data",
            Arc::new(crate::testing::retrier()),
            None,
        );
        assert!(!m.live_line().contains("capped"));
        let t = Throttle::new(&Cap::Fixed(10 << 20), None).unwrap();
        m.show_cap(Some(t.clone()));
        std::thread::sleep(Duration::from_millis(60));
        // A cap that moves nothing is no movement.
        assert!(m.idle() >= Duration::from_millis(50));
        let mut buf = [0u8; 1000];
        let mut r = crate::ratelimit::Throttled::new(&[0u8; 1000][..], t.clone());
        assert_eq!(std::io::Read::read(&mut r, &mut buf).unwrap(), 1000);
        assert!(m.idle() < Duration::from_millis(50));
        let f: BTreeMap<_, _> = m.fields().into_iter().collect();
        assert_eq!(f["rate_cap"], "10.0MiB/s");
        assert!(
            m.live_line().contains("(capped at 10.0MiB/s)"),
            "{}",
            m.live_line()
        );
    }
}
