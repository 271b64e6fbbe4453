//! The stall watchdog of a backup's upload: a thread that reads the progress meter and,
//! when nothing has moved for the stall limit (no byte read from `btrfs send` and hashed,
//! no request queued, ended or stored, no retry), stops the run as SIGTERM would, so that
//! it exits 1 naming the stall and the unit's `Restart=on-failure` resumes it. Should the
//! run not stop within a grace period (its thread blocked in a read from a `btrfs send`
//! that hangs), the process exits 1 there and then: the resume journal is already
//! durable.
//!
//! A network outage the run rides out (`outage`) is not a stall: while it waits for its
//! next probe the run counts as moving, and each probe that ends is movement; a probe
//! that hangs past the limit is a stall like any request.
//!
//! The limit is above every request deadline, so a request that is only slow ends on its
//! own first; a CompleteMultipartUpload, which a service may answer only after assembling
//! the object, gets the longer [`COMPLETION_LIMIT`] while one is in flight.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::event;
use crate::progress::Meter;

/// Nothing moved for this long: the run is stalled (every request deadline is shorter).
pub const STALL_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The limit while a CompleteMultipartUpload is in flight: the hour `store::s3` allows
/// the service for its reply, and a minute.
pub const COMPLETION_LIMIT: Duration = Duration::from_secs(61 * 60);

/// How long a stopped run may take to end before the process exits (a stopping pipeline
/// gives requests in flight 5 s).
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// Sets both limits to N seconds (1 to 86,400), and the grace to N seconds within 8 to
/// 20: a test knob, and a way out for a link so slow that a request legitimately moves
/// nothing for longer.
pub const ENV: &str = "BTRFS_TO_S3_STALL_SECONDS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub stall: Duration,
    pub completion: Duration,
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stall: STALL_LIMIT,
            completion: COMPLETION_LIMIT,
            grace: STOP_GRACE,
        }
    }
}

impl Limits {
    /// The defaults, or both limits from [`ENV`] when it holds a whole number of seconds
    /// from 1 to 86,400 (anything else is said and ignored).
    pub fn from_env() -> Limits {
        Limits::from_value(std::env::var(ENV).ok().as_deref())
    }

    fn from_value(v: Option<&str>) -> Limits {
        let mut l = Limits::default();
        let Some(v) = v else { return l };
        match v.trim().parse::<u64>() {
            Ok(n @ 1..=86_400) => {
                l.stall = Duration::from_secs(n);
                l.completion = l.stall;
                l.grace = Duration::from_secs(n.clamp(8, STOP_GRACE.as_secs()));
            }
            _ => event!(
                Warn,
                "stall_limit_ignored",
                variable = ENV,
                value = format!("{v:?}"),
                note = "not a whole number of seconds from 1 to 86400; the default applies"
            ),
        }
        l
    }
}

/// What the watchdog does when it fires: stop the run (as SIGTERM does), and, when the
/// run has not ended within the grace period, end the process.
pub struct Actions {
    pub stop: Box<dyn Fn() + Send>,
    pub exit: Box<dyn Fn() + Send>,
}

impl Actions {
    /// The real ones: the run's cancel flag (`signals::stop_run`), then exit code 1.
    pub fn process() -> Actions {
        Actions {
            stop: Box::new(|| {
                crate::signals::stop_run();
            }),
            exit: Box::new(|| std::process::exit(i32::from(crate::exit::FAILED))),
        }
    }
}

/// Watches a meter on its own thread until [`Watchdog::finish`] (or drop).
pub struct Watchdog {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
    fired: Arc<Mutex<Option<String>>>,
}

impl Watchdog {
    pub fn start(meter: Arc<Meter>, limits: Limits, actions: Actions) -> Watchdog {
        let (tx, rx) = bounded::<()>(1);
        let fired = Arc::new(Mutex::new(None));
        let said = fired.clone();
        let tick = (limits.stall.min(limits.completion) / 20)
            .clamp(Duration::from_millis(20), Duration::from_secs(5));
        let handle = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut retries = meter.retries();
                let mut probes = meter.outage().probes();
                loop {
                    match rx.recv_timeout(tick) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    // A retry is a request that ended (in failure): the run is alive.
                    let r = meter.retries();
                    if r != retries {
                        retries = r;
                        meter.touch();
                    }
                    // An outage ridden out: waiting for the next probe is not a stall,
                    // and a probe that ended is movement; one in flight is not.
                    let p = meter.outage().probes();
                    let waiting = meter
                        .outage()
                        .status()
                        .is_some_and(|o| o.next_probe_in.is_some());
                    if p != probes || waiting {
                        probes = p;
                        meter.touch();
                    }
                    let completing = meter.completions_in_flight() > 0;
                    let limit = if completing {
                        limits.completion.max(limits.stall)
                    } else {
                        limits.stall
                    };
                    let idle = meter.idle();
                    if idle < limit {
                        continue;
                    }
                    let msg = format!(
                        "the backup of {} stalled: nothing moved for {} s (no byte read from \
                         btrfs send, no request ended or stored; the limit is {} s{}, {ENV} \
                         sets it): stopped, keeping what is stored for the next run to resume",
                        meter.subvolume(),
                        idle.as_secs(),
                        limit.as_secs(),
                        if completing {
                            " while a multipart upload completes"
                        } else {
                            ""
                        },
                    );
                    event!(
                        Error,
                        "backup_stalled",
                        subvolume = meter.subvolume(),
                        idle_seconds = idle.as_secs(),
                        limit_seconds = limit.as_secs()
                    );
                    if let Ok(mut f) = said.lock() {
                        *f = Some(msg.clone());
                    }
                    (actions.stop)();
                    if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limits.grace) {
                        event!(
                            Error,
                            "backup_stall_exit",
                            subvolume = meter.subvolume(),
                            grace_seconds = limits.grace.as_secs()
                        );
                        eprintln!(
                            "btrfs_to_s3: error: {} (it did not end within {} s of the stop; \
                             exiting)",
                            crate::term::inert(&msg),
                            limits.grace.as_secs()
                        );
                        (actions.exit)();
                    }
                    return;
                }
            })
            .ok();
        Watchdog {
            stop: Some(tx),
            handle,
            fired,
        }
    }

    /// Stops watching; what the stall was when it fired.
    pub fn finish(mut self) -> Option<String> {
        self.halt();
        self.fired.lock().ok().and_then(|f| f.clone())
    }

    fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    fn meter() -> Arc<Meter> {
        Meter::new(
            "backup_progress",
            "data",
            Arc::new(crate::testing::retrier()),
            None,
        )
    }

    fn limits(ms: u64) -> Limits {
        Limits {
            stall: Duration::from_millis(ms),
            completion: Duration::from_millis(ms * 20),
            grace: Duration::from_millis(300),
        }
    }

    /// Actions that count instead of stopping and exiting.
    fn counting() -> (Actions, Arc<AtomicU32>, Arc<AtomicU32>) {
        let (stops, exits) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (s, e) = (stops.clone(), exits.clone());
        (
            Actions {
                stop: Box::new(move || {
                    s.fetch_add(1, Ordering::SeqCst);
                }),
                exit: Box::new(move || {
                    e.fetch_add(1, Ordering::SeqCst);
                }),
            },
            stops,
            exits,
        )
    }

    #[test]
    fn a_meter_that_stops_moving_stops_the_run_and_then_the_process() {
        let m = meter();
        let (actions, stops, exits) = counting();
        let t = Instant::now();
        let w = Watchdog::start(m.clone(), limits(200), actions);
        while stops.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never fired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t.elapsed() >= Duration::from_millis(200));
        // Not finished within the grace: the process would exit.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(exits.load(Ordering::SeqCst), 1);
        let msg = w.finish().expect("the stall is said");
        assert!(
            msg.contains("the backup of data stalled") && msg.contains(ENV),
            "{msg}"
        );
        assert_eq!(stops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_run_that_ends_within_the_grace_is_not_exited() {
        let (actions, stops, exits) = counting();
        let w = Watchdog::start(meter(), limits(100), actions);
        let t = Instant::now();
        while stops.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never fired");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.finish().is_some());
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(exits.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn moving_bytes_requests_and_retries_keep_it_quiet() {
        let m = meter();
        let (actions, stops, _) = counting();
        let w = Watchdog::start(m.clone(), limits(150), actions);
        for i in 0..30 {
            std::thread::sleep(Duration::from_millis(30));
            match i % 3 {
                0 => m.add_through(1),
                1 => m.request_ok(),
                _ => m.touch(),
            }
        }
        assert!(w.finish().is_none());
        assert_eq!(stops.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_completion_in_flight_gets_the_longer_limit() {
        let m = meter();
        let mut sink = crate::pipeline::NoProgress;
        let mut metered = crate::progress::Metered {
            inner: &mut sink,
            meter: &m,
        };
        crate::pipeline::Progress::completions_in_flight(&mut metered, 1);
        let (actions, stops, _) = counting();
        // Stall 100 ms, completion 2 s: quiet at 500 ms.
        let w = Watchdog::start(m.clone(), limits(100), actions);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(stops.load(Ordering::SeqCst), 0);
        crate::pipeline::Progress::completions_in_flight(&mut metered, 0);
        let t = Instant::now();
        while stops.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never fired");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.finish().is_some());
    }

    /// A meter whose run is in a network outage: its probe fails after `probe_ms`, and the
    /// next one is due `gap_ms` later. Dropping the flag ends the ride.
    fn in_outage(probe_ms: u64, gap_ms: u64) -> (Arc<Meter>, Arc<std::sync::atomic::AtomicBool>) {
        use crate::outage::{Backoff, Outage, RealClock};
        use crate::store::StoreError;
        let r = Arc::new(crate::testing::retrier().with_outage(Outage::new(
            Duration::ZERO,
            Backoff {
                first: Duration::from_millis(gap_ms),
                cap: Duration::from_millis(gap_ms),
            },
            Arc::new(RealClock),
        )));
        r.outage().enable(
            Duration::from_secs(3600),
            Arc::new(move || {
                std::thread::sleep(Duration::from_millis(probe_ms));
                Err(StoreError::network("HeadBucket", "timed out"))
            }),
        );
        r.outage().online();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r2, d) = (r.clone(), done.clone());
        std::thread::spawn(move || {
            r2.outage().ride(
                &StoreError::network("UploadPart k part 1", "connection refused"),
                &|| d.load(Ordering::SeqCst),
            )
        });
        let m = Meter::new("backup_progress", "data", r.clone(), None);
        while !r.outage().is_down() {
            std::thread::sleep(Duration::from_millis(5));
        }
        (m, done)
    }

    #[test]
    fn an_outage_waiting_for_its_probes_is_no_stall_but_a_probe_that_hangs_is() {
        // Probes of 10 ms, 300 ms apart: nothing else moves for 1.5 s, no stall (150 ms).
        let (m, done) = in_outage(10, 300);
        let (actions, stops, _) = counting();
        let w = Watchdog::start(m.clone(), limits(150), actions);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(m.outage().probes() >= 2);
        assert!(w.finish().is_none());
        assert_eq!(stops.load(Ordering::SeqCst), 0);
        done.store(true, Ordering::SeqCst);
        // A probe that hangs (10 s) past the stall limit: the watchdog fires.
        let (m, done) = in_outage(10_000, 10);
        let (actions, stops, _) = counting();
        let t = Instant::now();
        let w = Watchdog::start(m.clone(), limits(150), actions);
        while stops.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never fired");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.finish().is_some());
        done.store(true, Ordering::SeqCst);
    }

    #[test]
    fn the_knob_is_checked() {
        assert_eq!(Limits::from_value(None), Limits::default());
        let l = Limits::from_value(Some("3"));
        assert_eq!(l.stall, Duration::from_secs(3));
        assert_eq!(l.completion, Duration::from_secs(3));
        assert_eq!(l.grace, Duration::from_secs(8));
        assert_eq!(Limits::from_value(Some("3600")).grace, STOP_GRACE);
        for bad in ["0", "-1", "86401", "1e3", "", "ten"] {
            assert_eq!(Limits::from_value(Some(bad)), Limits::default(), "{bad}");
        }
    }
}
