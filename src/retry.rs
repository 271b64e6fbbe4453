//! Our retry policy for every S3 request: up to 5 attempts, exponential backoff from 1 s,
//! capped at 30 s, with jitter, and only for transient failures (5xx, 429, timeouts,
//! resets). A 4xx such as 403 fails at once. The sleep is injectable for tests. Retrying
//! stops at once when the run is cancelled (a signal) or, with [`Retrier::run_until`], when
//! the caller's own stop flag is set (the pipeline, once one request has failed); the
//! real backoff sleeps in short slices so neither waits out a 30 s delay.
//!
//! A request that gets no reply at all (the link is down: refused, reset, timed out, no
//! name) is retried once as above; when it fails so again, or an outage is already on,
//! the request waits in the run's shared [`Outage`] until the service answers again (no
//! attempt is counted for that), or the outage's patience is spent. With no patience set
//! (`Outage::enable`), or before the service has answered this run once, a network
//! failure is a transient one like any other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::event;
use crate::outage::{Outage, Ride};
use crate::store::{StoreError, StoreResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

impl Policy {
    /// Delay before attempt `failed + 1`: half of `min(cap, base * 2^(failed-1))` fixed,
    /// the other half random.
    pub fn delay(&self, failed: u32, random: u64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (failed.saturating_sub(1)).min(20))
            .min(self.cap);
        let half = exp / 2;
        let span = half.as_millis() as u64;
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        half + Duration::from_millis(jitter)
    }
}

pub type Sleep = Arc<dyn Fn(Duration) + Send + Sync>;

/// Runs requests under a [`Policy`], counting retries; stops early once `cancel` is set.
/// The slice the real backoff sleeps in between looks at the stop flags.
const SLICE: Duration = Duration::from_millis(100);

pub struct Retrier {
    policy: Policy,
    /// `None`: the real sleep, in slices that watch the stop flags.
    sleep: Option<Sleep>,
    retries: AtomicU64,
    cancel: Arc<AtomicBool>,
    seed: AtomicU64,
    /// The run's outage, shared by every thread that sends through this retrier.
    outage: Outage,
}

impl Retrier {
    pub fn new(policy: Policy, cancel: Arc<AtomicBool>) -> Retrier {
        Retrier::build(policy, cancel, None)
    }

    #[cfg(test)]
    pub fn with_sleep(policy: Policy, cancel: Arc<AtomicBool>, sleep: Sleep) -> Retrier {
        Retrier::build(policy, cancel, Some(sleep))
    }

    fn build(policy: Policy, cancel: Arc<AtomicBool>, sleep: Option<Sleep>) -> Retrier {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        Retrier {
            policy,
            sleep,
            retries: AtomicU64::new(0),
            cancel,
            seed: AtomicU64::new(seed),
            outage: Outage::default(),
        }
    }

    /// As [`Self::with_sleep`], with an outage of its own (a fake clock, in tests).
    #[cfg(test)]
    pub fn with_outage(mut self, outage: Outage) -> Retrier {
        self.outage = outage;
        self
    }

    /// The run's outage state: riding outages out is off until `Outage::enable`.
    pub fn outage(&self) -> &Outage {
        &self.outage
    }

    /// Retries done so far (attempts beyond the first).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// The run's cancel flag, for what must stop with it: the store's listings (between
    /// pages) and requests in flight.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn random(&self) -> u64 {
        // xorshift64*: jitter only, not security.
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn run<T>(&self, request: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
        self.run_until(&AtomicBool::new(false), request)
    }

    /// As [`Self::run`], and no retry once `stop` is set.
    pub fn run_until<T>(
        &self,
        stop: &AtomicBool,
        mut request: impl FnMut() -> StoreResult<T>,
    ) -> StoreResult<T> {
        let stopped = || self.cancelled() || stop.load(Ordering::SeqCst);
        let mut failed = 0;
        // Network failures of this request in a row.
        let mut unreached = 0;
        loop {
            match request() {
                Ok(v) => {
                    self.outage.online();
                    return Ok(v);
                }
                Err(e) => {
                    if !e.is_network() {
                        // A reply, whatever it said: the link works.
                        self.outage.online();
                        unreached = 0;
                    } else if !stopped()
                        && self.outage.engaged()
                        && (unreached > 0 || self.outage.is_down())
                    {
                        match self.outage.ride(&e, &stopped) {
                            Ride::Back => {
                                self.retries.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ride::Expired { seconds } => {
                                return Err(outlasted(e, seconds, self.outage.patience()));
                            }
                            Ride::Stopped => return Err(exhausted(e, failed + 1)),
                        }
                    } else {
                        unreached += 1;
                    }
                    failed += 1;
                    if !e.is_transient() || failed >= self.policy.attempts || stopped() {
                        return Err(exhausted(e, failed));
                    }
                    let delay = self.policy.delay(failed, self.random());
                    event!(
                        Warn,
                        "s3_retry",
                        op = e.op,
                        attempt = failed,
                        of = self.policy.attempts,
                        delay_ms = delay.as_millis(),
                        error = e.message,
                    );
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    match &self.sleep {
                        Some(sleep) => sleep(delay),
                        None => {
                            let mut left = delay;
                            while !left.is_zero() && !stopped() {
                                let d = left.min(SLICE);
                                std::thread::sleep(d);
                                left -= d;
                            }
                        }
                    }
                    if stopped() {
                        return Err(exhausted(e, failed));
                    }
                }
            }
        }
    }
}

/// The request's last error, saying how long the network was down.
fn outlasted(mut e: StoreError, seconds: u64, patience: Duration) -> StoreError {
    e.message = format!(
        "{} (no reply from the service for {seconds} s, the outage patience of {} s \
         (s3.outage_patience_seconds): giving up; the next run resumes)",
        e.message,
        patience.as_secs()
    );
    e
}

fn exhausted(mut e: StoreError, attempts: u32) -> StoreError {
    if attempts > 1 {
        e.message = format!("{} (after {attempts} attempts)", e.message);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ErrorKind;
    use std::sync::Mutex;

    fn retrier() -> (Retrier, Arc<Mutex<Vec<Duration>>>) {
        let slept = Arc::new(Mutex::new(Vec::new()));
        let s = slept.clone();
        let r = Retrier::with_sleep(
            Policy::default(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(move |d| s.lock().unwrap().push(d)),
        );
        (r, slept)
    }

    fn fail(kind: ErrorKind) -> StoreError {
        StoreError::new(kind, "PUT k", "boom")
    }

    #[test]
    fn transient_then_success() {
        let (r, slept) = retrier();
        let mut n = 0;
        let v = r
            .run(|| {
                n += 1;
                if n < 3 {
                    Err(fail(ErrorKind::Transient))
                } else {
                    Ok(n)
                }
            })
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(r.retries(), 2);
        let s = slept.lock().unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0] >= Duration::from_millis(500) && s[0] <= Duration::from_secs(1));
        assert!(s[1] >= Duration::from_secs(1) && s[1] <= Duration::from_secs(2));
    }

    #[test]
    fn exhaustion_after_five_attempts() {
        let (r, slept) = retrier();
        let mut n = 0;
        let e = r
            .run(|| -> StoreResult<()> {
                n += 1;
                Err(fail(ErrorKind::Transient))
            })
            .unwrap_err();
        assert_eq!(n, 5);
        assert_eq!(slept.lock().unwrap().len(), 4);
        assert!(e.message.contains("after 5 attempts"), "{}", e.message);
    }

    #[test]
    fn permanent_is_not_retried() {
        for kind in [
            ErrorKind::Permanent,
            ErrorKind::NotFound,
            ErrorKind::Archived,
        ] {
            let (r, slept) = retrier();
            let mut n = 0;
            let e = r
                .run(|| -> StoreResult<()> {
                    n += 1;
                    Err(fail(kind))
                })
                .unwrap_err();
            assert_eq!(n, 1);
            assert_eq!(e.kind, kind);
            assert!(slept.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn cancel_stops_retrying() {
        let (r, _) = retrier();
        r.cancel.store(true, Ordering::SeqCst);
        let mut n = 0;
        let _ = r.run(|| -> StoreResult<()> {
            n += 1;
            Err(fail(ErrorKind::Transient))
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn a_stop_flag_ends_retrying_and_the_real_sleep_is_cut_short() {
        let stop = AtomicBool::new(true);
        let (r, slept) = retrier();
        let mut n = 0;
        let _ = r.run_until(&stop, || -> StoreResult<()> {
            n += 1;
            Err(fail(ErrorKind::Transient))
        });
        assert_eq!(n, 1);
        assert!(slept.lock().unwrap().is_empty());
        // The real sleep watches the flags: a cancel during a 10-20 s backoff ends it.
        let cancel = Arc::new(AtomicBool::new(false));
        let slow = Policy {
            base: Duration::from_secs(20),
            ..Policy::default()
        };
        let r = Retrier::new(slow, cancel.clone());
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.store(true, Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        let e = r
            .run(|| -> StoreResult<()> { Err(fail(ErrorKind::Transient)) })
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.kind, ErrorKind::Transient);
    }

    /// A clock the outage and the retrier's backoff both move.
    struct Fake(std::time::Instant, Mutex<Duration>);

    impl crate::outage::Clock for Fake {
        fn now(&self) -> std::time::Instant {
            self.0 + *self.1.lock().unwrap()
        }
        fn skip(&self, d: Duration) -> bool {
            *self.1.lock().unwrap() += d;
            true
        }
    }

    /// A retrier riding outages of up to `patience` s with a fake clock, and a link that
    /// comes back at `back_at` (fake time; never with `None`): the probe and `request`
    /// fail with a network error until then.
    fn riding(
        patience: u64,
        back_at: Option<u64>,
    ) -> (Retrier, Arc<Fake>, Arc<dyn Fn() -> bool + Send + Sync>) {
        let clock = Arc::new(Fake(std::time::Instant::now(), Mutex::new(Duration::ZERO)));
        let c = clock.clone();
        let r = Retrier::with_sleep(
            Policy::default(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(move |d| *c.1.lock().unwrap() += d),
        )
        .with_outage(crate::outage::Outage::new(
            Duration::ZERO,
            crate::outage::Backoff::default(),
            clock.clone(),
        ));
        let c = clock.clone();
        let up: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || {
            back_at.is_some_and(|b| *c.1.lock().unwrap() >= Duration::from_secs(b))
        });
        let u = up.clone();
        r.outage().enable(
            Duration::from_secs(patience),
            Arc::new(move || {
                if u() {
                    Ok(())
                } else {
                    Err(StoreError::network("HeadBucket", "connection refused"))
                }
            }),
        );
        (r, clock, up)
    }

    fn refused() -> StoreError {
        StoreError::network("UploadPart k part 2", "connection refused")
    }

    #[test]
    fn a_network_outage_is_ridden_out_without_spending_attempts() {
        let (r, clock, up) = riding(3600, Some(600));
        // The service answered this run before.
        r.outage().online();
        let mut n = 0;
        let v = r
            .run(|| {
                n += 1;
                if up() {
                    Ok("stored")
                } else {
                    Err(refused())
                }
            })
            .unwrap();
        assert_eq!(v, "stored");
        // The first failure is retried as any other, the second waits for the link;
        // the request goes again once a probe got its reply (within a minute of 600 s).
        assert_eq!(n, 3, "sent once, retried once, sent again after the outage");
        let t = *clock.1.lock().unwrap();
        assert!(
            t >= Duration::from_secs(600) && t < Duration::from_secs(661),
            "{t:?}"
        );
        assert!(!r.outage().is_down());
        assert_eq!(r.outage().outages(), 1);
    }

    #[test]
    fn an_outage_longer_than_the_patience_fails_the_request_saying_so() {
        let (r, clock, _) = riding(300, None);
        r.outage().online();
        let e = r.run(|| -> StoreResult<()> { Err(refused()) }).unwrap_err();
        assert!(e.is_network());
        assert!(
            e.message.contains("no reply from the service for 300 s")
                && e.message.contains("s3.outage_patience_seconds")
                && e.message.contains("the next run resumes"),
            "{}",
            e.message
        );
        // The patience, and the first retry's backoff before the outage began.
        let t = *clock.1.lock().unwrap();
        assert!(
            t >= Duration::from_secs(300) && t <= Duration::from_secs(302),
            "{t:?}"
        );
    }

    #[test]
    fn what_is_not_the_network_fails_as_before_during_an_outage_too() {
        let (r, _, _) = riding(3600, None);
        r.outage().online();
        // A 403 (a reply) fails at once, and no probe runs.
        for kind in [ErrorKind::Permanent, ErrorKind::NotFound] {
            let mut n = 0;
            let e = r
                .run(|| -> StoreResult<()> {
                    n += 1;
                    Err(fail(kind))
                })
                .unwrap_err();
            assert_eq!((n, e.kind), (1, kind));
        }
        // A 503 (a reply too) keeps the five attempts.
        let mut n = 0;
        let e = r
            .run(|| -> StoreResult<()> {
                n += 1;
                Err(fail(ErrorKind::Transient))
            })
            .unwrap_err();
        assert_eq!(n, 5);
        assert!(e.message.contains("after 5 attempts"), "{}", e.message);
        assert_eq!(r.outage().probes(), 0);
        assert_eq!(r.outage().outages(), 0);
    }

    #[test]
    fn a_service_never_reached_or_no_patience_keeps_the_bounded_retries() {
        // No reply yet in this run: a wrong endpoint, or no link from the start.
        let (r, _, _) = riding(3600, None);
        let mut n = 0;
        let e = r
            .run(|| -> StoreResult<()> {
                n += 1;
                Err(refused())
            })
            .unwrap_err();
        assert_eq!(n, 5);
        assert!(e.message.contains("after 5 attempts"), "{}", e.message);
        assert_eq!(r.outage().outages(), 0);
        // Patience 0: as before.
        let (r, _, _) = riding(0, None);
        r.outage().online();
        let mut n = 0;
        let _ = r.run(|| -> StoreResult<()> {
            n += 1;
            Err(refused())
        });
        assert_eq!(n, 5);
        assert_eq!(r.outage().outages(), 0);
    }

    #[test]
    fn a_cancel_ends_a_ride_at_once() {
        let cancel = Arc::new(AtomicBool::new(false));
        let r = Retrier::with_sleep(Policy::default(), cancel.clone(), Arc::new(|_| {}));
        r.outage()
            .enable(Duration::from_secs(3600), Arc::new(|| Err(refused())));
        r.outage().online();
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.store(true, Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        let e = r.run(|| -> StoreResult<()> { Err(refused()) }).unwrap_err();
        assert!(e.is_network());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn delays_grow_and_cap() {
        let p = Policy::default();
        for failed in 1..=10 {
            for random in [0, 1, 12345, u64::MAX] {
                let d = p.delay(failed, random);
                let exp = Duration::from_secs(1 << (failed - 1).min(5)).min(p.cap);
                assert!(d >= exp / 2 && d <= exp, "failed={failed} d={d:?}");
            }
        }
        assert_eq!(p.delay(20, 0), Duration::from_secs(15));
    }
}
