//! The network outage one run shares among its threads. When a request gets no reply at
//! all (refused, reset, timed out, the name not resolving: [`StoreError::is_network`]),
//! the retry loop (`retry`) hands it here instead of failing the run: the thread keeps
//! its part buffer and waits. One waiting thread at a time probes the service (a cheap
//! request, `ObjectStore::probe`) with a backoff from 1 s doubling to 60 s; the others
//! wait on it. The first probe or request that gets any reply ends the outage, and every
//! waiter sends its request again. After the patience (`s3.outage_patience_seconds`) the
//! waiters give up and the run fails as before (the next run resumes it).
//!
//! Events: `event=s3_outage state=start|end|gave_up` (with the duration), and the
//! state for progress lines and the stall watchdog ([`Outage::status`]). Time is
//! injectable ([`Clock`]) so the state machine is tested without sleeping.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event;
use crate::store::{StoreError, StoreResult};

/// The probe's backoff: the first probe this long after the outage begins, each next one
/// twice as far, at most [`Backoff::cap`] apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait after `failed` probes failed (the first probe: `failed = 0`).
    pub fn delay(&self, failed: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << failed.min(20))
            .min(self.cap)
    }
}

/// Where the outage's time comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    /// Lets `d` pass at once and says so (a fake clock); `false`: the caller waits for
    /// real (on the outage's condition variable, so it wakes when the outage ends).
    fn skip(&self, d: Duration) -> bool;
}

/// The real clock.
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn skip(&self, _: Duration) -> bool {
        false
    }
}

/// The probe: `Err` with a network error while the service does not answer.
pub type Probe = Arc<dyn Fn() -> StoreResult<()> + Send + Sync>;

/// How a ride through an outage ended for one waiting request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ride {
    /// The service answers again: send the request again.
    Back,
    /// The outage outlasted the patience: fail the request (`since` it began, in s).
    Expired { seconds: u64 },
    /// The run is being stopped.
    Stopped,
}

/// What the outage looks like now (for progress lines and the watchdog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// When it began (wall clock).
    pub since: crate::ts::Ts,
    pub down_for: Duration,
    /// Until the next probe; `None` while one is in flight.
    pub next_probe_in: Option<Duration>,
    /// How long the probe in flight has taken so far.
    pub probing_for: Option<Duration>,
}

impl Status {
    /// `waiting for the network since T (N s), next probe in M s`
    pub fn describe(&self) -> String {
        let next = match (self.next_probe_in, self.probing_for) {
            (Some(d), _) => format!("next probe in {} s", d.as_secs()),
            (None, Some(p)) => format!("probing for {} s", p.as_secs()),
            (None, None) => "probing".to_string(),
        };
        format!(
            "waiting for the network since {} ({} s), {next}",
            self.since.iso(),
            self.down_for.as_secs()
        )
    }
}

struct Down {
    since: Instant,
    wall: crate::ts::Ts,
    next_probe: Instant,
    /// Probes that failed in this outage.
    failed: u32,
    /// Since when a probe is in flight.
    probing: Option<Instant>,
    /// The last failure: the request's, then the last probe's.
    error: String,
    gave_up: bool,
}

pub struct Outage {
    /// Milliseconds; 0 rides nothing out (the bounded retries only, as before).
    patience_ms: AtomicU64,
    probe: Mutex<Option<Probe>>,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    state: Mutex<Option<Down>>,
    cond: Condvar,
    /// Fast path of [`Outage::online`]: whether `state` holds an outage.
    down: AtomicBool,
    /// A reply came from the service in this run: a link that failed after that is an
    /// outage; one that never worked is a configuration (or a start without a link), and
    /// fails after the bounded retries.
    reached: AtomicBool,
    /// Probes ended (either way), over the run.
    probes: AtomicU64,
    /// Outages that began, over the run.
    outages: AtomicU64,
}

/// The slice a real wait lasts at most before it looks at the stop flags again.
const SLICE: Duration = Duration::from_millis(100);

impl Default for Outage {
    fn default() -> Self {
        Outage::new(Duration::ZERO, Backoff::default(), Arc::new(RealClock))
    }
}

impl Outage {
    pub fn new(patience: Duration, backoff: Backoff, clock: Arc<dyn Clock>) -> Outage {
        Outage {
            patience_ms: AtomicU64::new(patience.as_millis() as u64),
            probe: Mutex::new(None),
            backoff,
            clock,
            state: Mutex::new(None),
            cond: Condvar::new(),
            down: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            probes: AtomicU64::new(0),
            outages: AtomicU64::new(0),
        }
    }

    /// Rides outages out for up to `patience` (zero: never), probing with `probe`.
    pub fn enable(&self, patience: Duration, probe: Probe) {
        if let Ok(mut p) = self.probe.lock() {
            *p = Some(probe);
        }
        self.patience_ms
            .store(patience.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn patience(&self) -> Duration {
        Duration::from_millis(self.patience_ms.load(Ordering::SeqCst))
    }

    fn probe_fn(&self) -> Option<Probe> {
        self.probe.lock().ok().and_then(|p| p.clone())
    }

    /// Whether a network failure now is ridden out: riding is on, and the service has
    /// answered this run before.
    pub fn engaged(&self) -> bool {
        !self.patience().is_zero()
            && self.reached.load(Ordering::SeqCst)
            && self.probe_fn().is_some()
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Probes ended so far (the watchdog counts them as movement).
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::SeqCst)
    }

    /// Outages this run has had.
    #[cfg(test)]
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Down>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The service answered (a request or a probe got a reply, whatever its status): an
    /// outage in progress ends.
    pub fn online(&self) {
        self.reached.store(true, Ordering::SeqCst);
        if !self.is_down() {
            return;
        }
        let mut g = self.lock();
        self.end(&mut g, "a request got a reply");
    }

    fn end(&self, g: &mut Option<Down>, how: &str) {
        if let Some(d) = g.take() {
            let took = self.clock.now().saturating_duration_since(d.since);
            event!(
                Warn,
                "s3_outage",
                state = "end",
                seconds = format!("{:.1}", took.as_secs_f64()),
                since = d.wall.iso(),
                failed_probes = d.failed,
                how = how
            );
        }
        self.down.store(false, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// The outage now, if there is one.
    pub fn status(&self) -> Option<Status> {
        let g = self.lock();
        let d = g.as_ref()?;
        let now = self.clock.now();
        Some(Status {
            since: d.wall,
            down_for: now.saturating_duration_since(d.since),
            next_probe_in: d
                .probing
                .is_none()
                .then(|| d.next_probe.saturating_duration_since(now)),
            probing_for: d.probing.map(|p| now.saturating_duration_since(p)),
        })
    }

    /// Waits out the outage `e` is part of (beginning it if none is in progress) until the
    /// service answers again, the patience is spent, or `stopped` says so.
    pub fn ride(&self, e: &StoreError, stopped: &dyn Fn() -> bool) -> Ride {
        let patience = self.patience();
        let Some(probe) = self.probe_fn() else {
            return Ride::Expired { seconds: 0 };
        };
        let mut g = self.lock();
        if g.is_none() {
            let now = self.clock.now();
            *g = Some(Down {
                since: now,
                wall: crate::ts::Ts::now(),
                next_probe: now + self.backoff.delay(0),
                failed: 0,
                probing: None,
                error: e.to_string(),
                gave_up: false,
            });
            self.down.store(true, Ordering::SeqCst);
            self.outages.fetch_add(1, Ordering::SeqCst);
            event!(
                Warn,
                "s3_outage",
                state = "start",
                op = e.op,
                error = e.message,
                patience_seconds = patience.as_secs(),
                note = "no reply from the service: waiting for the network, probing it"
            );
        }
        loop {
            if stopped() {
                return Ride::Stopped;
            }
            let now = self.clock.now();
            let Some(d) = g.as_mut() else {
                return Ride::Back;
            };
            let down_for = now.saturating_duration_since(d.since);
            if down_for >= patience {
                if !d.gave_up {
                    d.gave_up = true;
                    event!(
                        Error,
                        "s3_outage",
                        state = "gave_up",
                        seconds = down_for.as_secs(),
                        since = d.wall.iso(),
                        patience_seconds = patience.as_secs(),
                        error = d.error
                    );
                }
                return Ride::Expired {
                    seconds: down_for.as_secs(),
                };
            }
            let until_patience = patience - down_for;
            let wait = match d.probing {
                // Another thread probes: wait for its answer.
                Some(_) => SLICE,
                None if now >= d.next_probe => {
                    d.probing = Some(now);
                    drop(g);
                    let r = crate::worker::catch(|| probe())
                        .unwrap_or_else(|m| Err(StoreError::network("outage probe", m)));
                    self.probes.fetch_add(1, Ordering::SeqCst);
                    g = self.lock();
                    match r {
                        Ok(()) => {
                            self.reached.store(true, Ordering::SeqCst);
                            self.end(&mut g, "a probe got a reply");
                            return Ride::Back;
                        }
                        Err(pe) => {
                            let now = self.clock.now();
                            if let Some(d) = g.as_mut() {
                                d.probing = None;
                                d.failed += 1;
                                d.next_probe = now + self.backoff.delay(d.failed);
                                d.error = pe.to_string();
                                event!(
                                    Info,
                                    "s3_outage_probe",
                                    failed = d.failed,
                                    error = pe.message,
                                    next_probe_seconds = self.backoff.delay(d.failed).as_secs()
                                );
                            }
                            self.cond.notify_all();
                            continue;
                        }
                    }
                }
                None => d.next_probe - now,
            };
            let wait = wait.min(until_patience);
            if self.clock.skip(wait) {
                continue;
            }
            g = self
                .cond
                .wait_timeout(g, wait.min(SLICE))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// A clock that only moves when told to (and when a wait skips ahead).
    pub struct FakeClock {
        base: Instant,
        offset: Mutex<Duration>,
    }

    impl FakeClock {
        pub fn new() -> Arc<FakeClock> {
            Arc::new(FakeClock {
                base: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            })
        }
        fn elapsed(&self) -> Duration {
            *self.offset.lock().unwrap()
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + *self.offset.lock().unwrap()
        }
        fn skip(&self, d: Duration) -> bool {
            *self.offset.lock().unwrap() += d;
            true
        }
    }

    fn net() -> StoreError {
        StoreError::network("UploadPart k part 3", "connection refused")
    }

    /// An outage with a fake clock whose probe fails until `back_at` (fake time) and
    /// records when it ran.
    fn outage(
        patience: u64,
        back_at: Option<Duration>,
    ) -> (Arc<Outage>, Arc<FakeClock>, Arc<Mutex<Vec<Duration>>>) {
        let clock = FakeClock::new();
        let o = Arc::new(Outage::new(
            Duration::ZERO,
            Backoff::default(),
            clock.clone(),
        ));
        let probed = Arc::new(Mutex::new(Vec::new()));
        let (c, p) = (clock.clone(), probed.clone());
        o.enable(
            Duration::from_secs(patience),
            Arc::new(move || {
                let t = c.elapsed();
                p.lock().unwrap().push(t);
                match back_at {
                    Some(b) if t >= b => Ok(()),
                    _ => Err(StoreError::network("HeadBucket", "connection refused")),
                }
            }),
        );
        o.online();
        (o, clock, probed)
    }

    #[test]
    fn the_backoff_doubles_from_one_second_to_a_minute() {
        let b = Backoff::default();
        let d: Vec<u64> = (0..9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn a_probe_that_gets_a_reply_ends_the_outage() {
        let (o, clock, probed) = outage(3600, Some(Duration::from_secs(20)));
        assert!(o.engaged());
        assert_eq!(o.ride(&net(), &|| false), Ride::Back);
        // Probes at 1, 3, 7, 15 s fail; the one at 31 s gets the reply.
        let at: Vec<u64> = probed.lock().unwrap().iter().map(|d| d.as_secs()).collect();
        assert_eq!(at, [1, 3, 7, 15, 31]);
        assert!(!o.is_down());
        assert_eq!(o.status(), None);
        assert_eq!(o.probes(), 5);
        assert_eq!(o.outages(), 1);
        assert_eq!(clock.elapsed(), Duration::from_secs(31));
    }

    #[test]
    fn probes_stay_a_minute_apart_at_most() {
        let (o, _, probed) = outage(86_400, Some(Duration::from_secs(3600)));
        assert_eq!(o.ride(&net(), &|| false), Ride::Back);
        let at = probed.lock().unwrap().clone();
        let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert!(gaps.iter().all(|g| *g <= 60), "{gaps:?}");
        // The reply came within a minute of the link's return.
        assert!(*at.last().unwrap() < Duration::from_secs(3660), "{at:?}");
    }

    #[test]
    fn the_patience_ends_the_wait() {
        let (o, clock, _) = outage(300, None);
        assert_eq!(o.ride(&net(), &|| false), Ride::Expired { seconds: 300 });
        assert_eq!(clock.elapsed(), Duration::from_secs(300));
        // Every other waiter gives up at once too; the outage is still on.
        assert_eq!(o.ride(&net(), &|| false), Ride::Expired { seconds: 300 });
        assert!(o.is_down());
    }

    #[test]
    fn a_stop_ends_the_wait_and_a_request_reply_ends_the_outage() {
        let (o, _, probed) = outage(300, None);
        let n = AtomicU32::new(0);
        // Stopped after three looks.
        let r = o.ride(&net(), &|| n.fetch_add(1, Ordering::SeqCst) >= 3);
        assert_eq!(r, Ride::Stopped);
        assert!(o.is_down());
        let s = o.status().unwrap();
        assert!(
            s.describe().starts_with("waiting for the network since "),
            "{s:?}"
        );
        assert!(s.describe().contains("next probe in"), "{}", s.describe());
        // Another request got a reply: the outage is over, a waiter goes on at once.
        let probes = probed.lock().unwrap().len();
        o.online();
        assert!(!o.is_down());
        assert_eq!(o.status(), None);
        assert_eq!(probed.lock().unwrap().len(), probes);
    }

    #[test]
    fn nothing_is_ridden_out_before_the_first_reply_or_with_zero_patience() {
        let clock = FakeClock::new();
        let o = Outage::new(Duration::ZERO, Backoff::default(), clock);
        o.enable(Duration::from_secs(60), Arc::new(|| Ok(())));
        assert!(!o.engaged(), "the service never answered this run");
        o.online();
        assert!(o.engaged());
        o.enable(Duration::ZERO, Arc::new(|| Ok(())));
        assert!(!o.engaged());
        assert!(!Outage::default().engaged());
    }

    #[test]
    fn one_thread_probes_while_the_others_wait_and_all_go_on_when_it_answers() {
        // The real clock, with a short backoff.
        let o = Arc::new(Outage::new(
            Duration::ZERO,
            Backoff {
                first: Duration::from_millis(50),
                cap: Duration::from_millis(100),
            },
            Arc::new(RealClock),
        ));
        let up = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (u, f, m) = (up.clone(), in_flight.clone(), most.clone());
        o.enable(
            Duration::from_secs(30),
            Arc::new(move || {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                f.fetch_sub(1, Ordering::SeqCst);
                if u.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(StoreError::network("HeadBucket", "timed out"))
                }
            }),
        );
        o.online();
        let started = Instant::now();
        let waiters: Vec<_> = (0..6)
            .map(|_| {
                let o = o.clone();
                std::thread::spawn(move || o.ride(&net(), &|| false))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        assert!(o.is_down());
        assert!(o.probes() >= 2, "{}", o.probes());
        up.store(true, Ordering::SeqCst);
        for w in waiters {
            assert_eq!(w.join().unwrap(), Ride::Back);
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(most.load(Ordering::SeqCst), 1, "one prober at a time");
        assert_eq!(o.outages(), 1);
    }
}
