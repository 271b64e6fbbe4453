use super::*;
use std::sync::atomic::AtomicU32;

/// Time that moves only when slept through; the minute of the day is set by the test.
struct FakeClock {
    base: Instant,
    elapsed: Mutex<Duration>,
    minute: AtomicU32,
    /// Set this flag once this much time has been slept (a SIGTERM during a wait).
    stop_after: Option<(Duration, Arc<AtomicBool>)>,
}

impl FakeClock {
    fn new(minute: u32) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            base: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
            minute: AtomicU32::new(minute),
            stop_after: None,
        })
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }
    fn minute_of_day(&self) -> u32 {
        self.minute.load(Ordering::SeqCst)
    }
    fn sleep(&self, d: Duration) {
        let mut e = self.elapsed.lock().unwrap();
        *e += d;
        if let Some((after, flag)) = &self.stop_after {
            if *e >= *after {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

const MIB: u64 = 1 << 20;

/// Takes `bytes` through `t` in reads of `buf` bytes; the grants.
fn drain(t: &Throttle, bytes: u64, buf: usize) -> Vec<usize> {
    let mut left = bytes;
    let mut grants = Vec::new();
    while left > 0 {
        let n = t.take(buf.min(left as usize)).unwrap();
        assert!(n >= 1);
        left -= n as u64;
        grants.push(n);
    }
    grants
}

#[test]
fn rates_as_written() {
    for (t, want) in [
        ("off", None),
        ("OFF", None),
        ("0", None),
        ("20MiB", Some(20 * MIB)),
        ("20MiB/s", Some(20 * MIB)),
        (" 2.5MB ", Some(2_500_000)),
        ("1KiB", Some(1024)),
        ("1048576", Some(MIB)),
    ] {
        assert_eq!(parse_rate(t), Ok(want), "{t}");
    }
    for (t, why) in [
        ("fast", "not a number"),
        ("20Mb", "unknown unit"),
        ("-1MiB", "not a number"),
        ("100", "below the lowest cap"),
        ("", "not a number"),
    ] {
        let e = parse_rate(t).unwrap_err();
        assert!(e.contains(why), "{t}: {e}");
        assert!(e.contains("off"), "{t}: the fix is named: {e}");
    }
    assert_eq!(parse_flag("off"), Ok(Cap::Off));
    assert_eq!(parse_flag("10MiB"), Ok(Cap::Fixed(10 * MIB)));
}

#[test]
fn a_timetable_in_any_order() {
    let t = Timetable::parse("23:00,off  08:00,20MiB\t12:30,512KiB").unwrap();
    assert_eq!(
        t.entries,
        vec![(480, Some(20 * MIB)), (750, Some(512 << 10)), (1380, None)]
    );
    assert_eq!(t.lowest(), Some(512 << 10));
    assert_eq!(
        Cap::Timetable(t).describe(),
        "timetable 08:00,20.0MiB/s 12:30,512.0KiB/s 23:00,off"
    );
    assert_eq!(
        Timetable::parse("00:00,1MiB").unwrap().entries,
        vec![(0, Some(MIB))]
    );
}

#[test]
fn bad_timetables_say_what_is_wrong() {
    for (text, want) in [
        ("", "no entries"),
        ("   ", "no entries"),
        ("08:00", "has no rate"),
        ("08:00 20MiB", "has no rate"),
        ("8:00,1MiB", "\"8:00\" is not a 24-hour time HH:MM"),
        ("24:00,1MiB", "is not a 24-hour time"),
        ("08:60,1MiB", "is not a 24-hour time"),
        ("08:00,20Mb", "unknown unit \"Mb\""),
        ("08:00,fast", "not a number"),
        ("08:00,100", "below the lowest cap"),
        ("08:00,1MiB 08:00,2MiB", "08:00 appears twice"),
        ("Mon-08:00,1MiB", "days of the week are not supported"),
        ("08:00,1MiB,2MiB", "more than one comma"),
    ] {
        let e = Timetable::parse(text).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn the_timetable_wraps_over_midnight() {
    let t = Timetable::parse("08:00,20MiB 23:00,off").unwrap();
    let at = |h: u32, m: u32| t.at(h * 60 + m);
    assert_eq!(at(0, 0), None, "23:00's off holds past midnight");
    assert_eq!(at(7, 59), None);
    assert_eq!(at(8, 0), Some(20 * MIB));
    assert_eq!(at(22, 59), Some(20 * MIB));
    assert_eq!(at(23, 0), None);
    // A cap that holds overnight.
    let night = Timetable::parse("06:00,off 22:00,1MiB").unwrap();
    assert_eq!(night.at(23 * 60), Some(MIB));
    assert_eq!(night.at(0), Some(MIB));
    assert_eq!(night.at(5 * 60 + 59), Some(MIB));
    assert_eq!(night.at(6 * 60), None);
    // One entry holds all day.
    let one = Timetable::parse("12:00,2MiB").unwrap();
    assert_eq!(one.at(0), Some(2 * MIB));
    assert_eq!(one.at(1439), Some(2 * MIB));
}

#[test]
fn the_bucket_holds_the_rate_after_a_small_burst() {
    let clock = FakeClock::new(0);
    let t = Throttle::with_clock(Cap::Fixed(MIB), clock.clone(), None);
    // The first burst (256 KiB) goes at once.
    drain(&t, 256 << 10, 64 << 10);
    assert_eq!(clock.elapsed(), Duration::ZERO);
    // 10 MiB more take 10 s at 1 MiB/s.
    let grants = drain(&t, 10 * MIB, 1 << 20);
    assert!(
        grants.iter().all(|g| *g <= (MIB / 64) as usize),
        "{grants:?}"
    );
    let secs = clock.elapsed().as_secs_f64();
    assert!((secs - 10.0).abs() < 0.01, "{secs}");
    // Idle for a minute: the bucket refills to its burst, no more.
    clock.sleep(Duration::from_secs(60));
    let before = clock.elapsed();
    drain(&t, 256 << 10, 64 << 10);
    assert_eq!(clock.elapsed(), before);
    drain(&t, MIB, 64 << 10);
    let secs = (clock.elapsed() - before).as_secs_f64();
    assert!((secs - 1.0).abs() < 0.01, "{secs}");
}

#[test]
fn a_low_rate_bursts_at_most_a_second() {
    let clock = FakeClock::new(0);
    let t = Throttle::with_clock(Cap::Fixed(4096), clock.clone(), None);
    drain(&t, 4096, 4096);
    assert_eq!(clock.elapsed(), Duration::ZERO);
    drain(&t, 40960, 65536);
    let secs = clock.elapsed().as_secs_f64();
    assert!((secs - 10.0).abs() < 0.01, "{secs}");
}

#[test]
fn threads_share_one_bucket() {
    // Four readers taking in turn get the rate between them, not four times it.
    let clock = FakeClock::new(0);
    let t = Throttle::with_clock(Cap::Fixed(2 * MIB), clock.clone(), None);
    drain(&t, 256 << 10, 64 << 10);
    let mut got = [0u64; 4];
    while got.iter().sum::<u64>() < 20 * MIB {
        for g in got.iter_mut() {
            *g += t.take(1 << 20).unwrap() as u64;
        }
    }
    let secs = clock.elapsed().as_secs_f64();
    assert!((secs - 10.0).abs() < 0.05, "{secs}");
    // Each got its turn: the same share.
    assert!(got.iter().all(|g| *g == got[0]), "{got:?}");
}

#[test]
fn a_timetable_boundary_takes_effect_within_a_second() {
    let clock = FakeClock::new(8 * 60 - 1);
    let cap = Cap::Timetable(Timetable::parse("08:00,4MiB 23:00,1MiB").unwrap());
    let t = Throttle::with_clock(cap, clock.clone(), None);
    assert_eq!(t.rate_now(), Some(MIB));
    drain(&t, 2 * MIB, 1 << 20);
    // 08:00: the next second's bytes go at 4 MiB/s.
    clock.minute.store(8 * 60, Ordering::SeqCst);
    assert_eq!(t.rate_now(), Some(4 * MIB));
    let start = clock.elapsed();
    drain(&t, MIB, 1 << 20);
    let one_mib = (clock.elapsed() - start).as_secs_f64();
    assert!(one_mib <= 1.0 + 0.25 + 0.01, "{one_mib}");
    let start = clock.elapsed();
    drain(&t, 8 * MIB, 1 << 20);
    let secs = (clock.elapsed() - start).as_secs_f64();
    assert!((secs - 2.0).abs() < 0.01, "at 4 MiB/s: {secs}");
    // 23:00 and off: nothing waits.
    let off = Cap::Timetable(Timetable::parse("08:00,4MiB 23:00,off").unwrap());
    let clock = FakeClock::new(12 * 60);
    let t = Throttle::with_clock(off, clock.clone(), None);
    drain(&t, 4 * MIB, 1 << 20);
    clock.minute.store(23 * 60, Ordering::SeqCst);
    clock.sleep(Duration::from_secs(1));
    let start = clock.elapsed();
    let grants = drain(&t, 100 * MIB, 1 << 20);
    assert_eq!(clock.elapsed(), start);
    assert_eq!(grants.len(), 100, "whole reads without a cap");
}

#[test]
fn a_stop_ends_a_wait() {
    let flag = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(FakeClock {
        base: Instant::now(),
        elapsed: Mutex::new(Duration::ZERO),
        minute: AtomicU32::new(0),
        stop_after: Some((Duration::from_secs(3), flag.clone())),
    });
    // 1 KiB/s: 1 MiB would take 17 minutes.
    let t = Throttle::with_clock(Cap::Fixed(1024), clock.clone(), Some(flag));
    let mut left = MIB as usize;
    let e = loop {
        match t.take(left) {
            Ok(n) => left -= n,
            Err(e) => break e,
        }
    };
    assert!(e.to_string().contains("stopped"), "{e}");
    let secs = clock.elapsed().as_secs_f64();
    assert!((3.0..=3.2).contains(&secs), "{secs}");
}

#[test]
fn idle_counts_only_bytes_that_move() {
    let clock = FakeClock::new(0);
    let t = Throttle::with_clock(Cap::Fixed(MIB), clock.clone(), None);
    let t = Arc::new(t);
    clock.sleep(Duration::from_secs(5));
    assert_eq!(t.idle(), Duration::from_secs(5));
    // A grant whose bytes never came (a read that fails) is no movement.
    struct Stuck;
    impl Read for Stuck {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("the link is gone"))
        }
    }
    let mut buf = [0u8; 1000];
    assert!(Throttled::new(Stuck, t.clone()).read(&mut buf).is_err());
    assert_eq!(t.idle(), Duration::from_secs(5));
    assert_eq!(
        Throttled::new(&[1u8; 1000][..], t.clone())
            .read(&mut buf)
            .unwrap(),
        1000
    );
    assert!(t.idle() < Duration::from_millis(2));
    clock.sleep(Duration::from_secs(2));
    assert!(t.idle() >= Duration::from_secs(2));
}

#[test]
fn a_throttled_reader_gives_every_byte_in_order() {
    let clock = FakeClock::new(0);
    let t = Arc::new(Throttle::with_clock(
        Cap::Fixed(64 << 10),
        clock.clone(),
        None,
    ));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    Throttled::new(&data[..], t.clone())
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, data);
    // 300,000 bytes at 64 KiB/s, the first 64 KiB (a second of the rate) at once.
    let secs = clock.elapsed().as_secs_f64();
    let want = (300_000.0 - 65536.0) / 65536.0;
    assert!((secs - want).abs() < 0.05, "{secs} vs {want}");
}

#[test]
fn no_cap_makes_no_bucket() {
    assert!(Throttle::new(&Cap::Off, None).is_none());
    let all_off = Cap::Timetable(Timetable::parse("08:00,off").unwrap());
    assert!(all_off.is_off());
    assert!(Throttle::new(&all_off, None).is_none());
    assert!(Throttle::new(&Cap::Fixed(MIB), None).is_some());
}
