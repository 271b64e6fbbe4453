//! Archive readiness: chunks in GLACIER or DEEP_ARCHIVE need a RestoreObject request and a
//! wait before they can be read. Every chunk of the whole chain is checked (HEAD: present,
//! right size, storage class) and every restore requested before the first wait, so a
//! Deep Archive restore costs one wait, not one per chunk.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::event;
use crate::retry::Retrier;
use crate::store::{ErrorKind, ObjectStore};

/// Days a restored copy stays readable; enough for a slow Bulk restore plus the download.
pub const RESTORE_DAYS: u32 = 7;

pub fn is_archive(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreHeader {
    /// No `x-amz-restore`: never requested (or expired).
    Absent,
    Ongoing,
    Done,
}

/// Reads `x-amz-restore`, e.g. `ongoing-request="false", expiry-date="..."`.
pub fn parse_restore_header(h: Option<&str>) -> RestoreHeader {
    match h {
        None => RestoreHeader::Absent,
        Some(v) if v.replace(' ', "").contains("ongoing-request=\"true\"") => {
            RestoreHeader::Ongoing
        }
        Some(v) if v.replace(' ', "").contains("ongoing-request=\"false\"") => RestoreHeader::Done,
        Some(_) => RestoreHeader::Absent,
    }
}

/// A chunk to make readable: key, size per manifest, the manifest's storage class.
pub struct ChunkRef<'a> {
    pub key: &'a str,
    pub size: u64,
    pub manifest_class: &'a str,
}

/// One chunk as S3 reports it (HEAD), before anything is requested or read.
#[derive(Clone, Debug)]
pub struct ChunkState {
    pub key: String,
    pub size: u64,
    /// The storage class HEAD names, else the manifest's (`inferred`).
    pub class: String,
    pub inferred: bool,
    pub restore: RestoreHeader,
}

impl ChunkState {
    /// Readable with a plain GET now: not archived, or its restored copy is there.
    pub fn readable(&self) -> bool {
        !is_archive(&self.class) || self.restore == RestoreHeader::Done
    }
}

/// Checks every chunk with HEAD (present, right size, storage class, restore status);
/// read-only: no RestoreObject, no GET. Used by `restore --plan` and before `request`.
pub fn survey(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    chunks: &[ChunkRef<'_>],
) -> Result<Vec<ChunkState>> {
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        let head = retrier
            .run(|| store.head(c.key))
            .with_context(|| format!("checking chunk {}", c.key))?;
        let Some(head) = head else {
            bail!(
                "chunk {} is missing from the bucket; this backup cannot be restored",
                c.key
            );
        };
        if head.size != c.size {
            bail!(
                "chunk {} has {} bytes in S3 but the manifest says {}: the object was changed",
                c.key,
                head.size,
                c.size
            );
        }
        let (class, inferred) = match head.storage_class {
            Some(cls) => (cls, false),
            None => (c.manifest_class.to_string(), true),
        };
        out.push(ChunkState {
            key: c.key.to_string(),
            size: c.size,
            class,
            inferred,
            restore: parse_restore_header(head.restore.as_deref()),
        });
    }
    Ok(out)
}

/// Checks every chunk and requests restores; returns the keys still being restored.
pub fn request_all(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    chunks: &[ChunkRef<'_>],
    tier: &str,
) -> Result<Vec<String>> {
    request(store, retrier, &survey(store, retrier, chunks)?, tier)
}

/// Requests the restore of every surveyed archive-class chunk that has none yet; returns
/// the keys still being restored.
pub fn request(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    chunks: &[ChunkState],
    tier: &str,
) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    for c in chunks {
        let (class, inferred) = (c.class.as_str(), c.inferred);
        if !is_archive(class) {
            continue;
        }
        match c.restore {
            RestoreHeader::Done => {}
            RestoreHeader::Ongoing => pending.push(c.key.to_string()),
            RestoreHeader::Absent => {
                match retrier.run(|| store.restore_object(&c.key, RESTORE_DAYS, tier)) {
                    Ok(()) => {
                        event!(
                            Info,
                            "archive_restore_requested",
                            key = c.key,
                            class = class,
                            tier = tier
                        );
                        pending.push(c.key.to_string());
                    }
                    // The class came from the manifest and the object is not archived after all.
                    Err(e)
                        if inferred
                            && matches!(e.kind, ErrorKind::Archived | ErrorKind::Permanent) => {}
                    Err(e) => {
                        return Err(anyhow::Error::from(e))
                            .with_context(|| format!("requesting the restore of chunk {}", c.key))
                    }
                }
            }
        }
    }
    Ok(pending)
}

/// Polls HEAD until every pending restore is done, with capped backoff, up to `timeout`.
/// Returns the time spent waiting.
pub fn wait_all(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    mut pending: Vec<String>,
    timeout: Duration,
    sleep: &dyn Fn(Duration),
    now: &dyn Fn() -> Instant,
) -> Result<Duration> {
    let start = now();
    let mut delay = Duration::from_secs(5);
    let cap = Duration::from_secs(300);
    loop {
        let mut still = Vec::new();
        for key in pending {
            let head = retrier
                .run(|| store.head(&key))
                .with_context(|| format!("checking the restore of chunk {key}"))?;
            match head.map(|h| parse_restore_header(h.restore.as_deref())) {
                Some(RestoreHeader::Done) => {}
                Some(RestoreHeader::Ongoing) => still.push(key),
                Some(RestoreHeader::Absent) => bail!(
                    "the restore of chunk {key} is no longer reported by S3 (expired or cancelled); rerun the restore"
                ),
                None => bail!("chunk {key} disappeared from the bucket while waiting for its restore"),
            }
        }
        let waited = now().saturating_duration_since(start);
        if still.is_empty() {
            return Ok(waited);
        }
        if retrier.cancelled() {
            bail!("interrupted while waiting for archive restores");
        }
        if waited >= timeout {
            bail!(
                "timed out after {} s waiting for {} archive restores (first: {}); they continue in S3: rerun the restore later or raise --restore-timeout",
                waited.as_secs(),
                still.len(),
                still[0]
            );
        }
        event!(
            Info,
            "archive_restore_waiting",
            pending = still.len(),
            waited_seconds = waited.as_secs(),
            next_check_seconds = delay.as_secs()
        );
        sleep(
            delay
                .min(timeout.saturating_sub(waited))
                .max(Duration::from_millis(1)),
        );
        delay = (delay * 2).min(cap);
        pending = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::cell::Cell;

    fn retrier() -> Retrier {
        crate::testing::retrier()
    }

    fn put(s: &MemoryStore, key: &str, class: &str) {
        s.insert(key, b"abc", crate::testing::put_opts(class));
    }

    fn refs<'a>(keys: &'a [&'a str], class: &'a str) -> Vec<ChunkRef<'a>> {
        keys.iter()
            .map(|k| ChunkRef {
                key: k,
                size: 3,
                manifest_class: class,
            })
            .collect()
    }

    #[test]
    fn headers() {
        assert_eq!(parse_restore_header(None), RestoreHeader::Absent);
        assert_eq!(
            parse_restore_header(Some("ongoing-request=\"true\"")),
            RestoreHeader::Ongoing
        );
        assert_eq!(
            parse_restore_header(Some(
                "ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""
            )),
            RestoreHeader::Done
        );
        assert_eq!(parse_restore_header(Some("garbage")), RestoreHeader::Absent);
        assert!(is_archive("DEEP_ARCHIVE") && is_archive("GLACIER"));
        for c in [
            "GLACIER_IR",
            "STANDARD_IA",
            "STANDARD",
            "ONEZONE_IA",
            "INTELLIGENT_TIERING",
        ] {
            assert!(!is_archive(c));
        }
    }

    #[test]
    fn requests_every_archive_chunk_before_waiting() {
        let s = MemoryStore::new();
        put(&s, "a", "DEEP_ARCHIVE");
        put(&s, "b", "GLACIER");
        put(&s, "c", "GLACIER_IR");
        put(&s, "d", "STANDARD");
        s.set_restore_delay_heads(2);
        let pending = request_all(
            &s,
            &retrier(),
            &refs(&["a", "b", "c", "d"], "DEEP_ARCHIVE"),
            "Bulk",
        )
        .unwrap();
        assert_eq!(pending, ["a", "b"]);
        let log = s.log();
        let restores: Vec<&String> = log
            .iter()
            .filter(|l| l.starts_with("RestoreObject"))
            .collect();
        // d: HEAD names no class (STANDARD), so the manifest's DEEP_ARCHIVE is assumed; S3
        // refuses that restore and d is read at once. c (GLACIER_IR) is never requested.
        assert_eq!(
            restores,
            ["RestoreObject a", "RestoreObject b", "RestoreObject d"]
        );
        // Then one wait for all: HEADs report ongoing twice, then done.
        let slept = Cell::new(0u32);
        let t0 = Instant::now();
        let waited = wait_all(
            &s,
            &retrier(),
            pending,
            Duration::from_secs(3600),
            &|_| slept.set(slept.get() + 1),
            &|| t0,
        )
        .unwrap();
        assert_eq!(waited, Duration::ZERO);
        assert_eq!(slept.get(), 2);
        // A second pass finds them done and requests nothing.
        let before = s.log().len();
        assert!(
            request_all(&s, &retrier(), &refs(&["a", "b"], "DEEP_ARCHIVE"), "Bulk")
                .unwrap()
                .is_empty()
        );
        assert!(!s.log()[before..]
            .iter()
            .any(|l| l.starts_with("RestoreObject")));
    }

    #[test]
    fn missing_and_resized_chunks_are_refused() {
        let s = MemoryStore::new();
        put(&s, "a", "STANDARD");
        let e = format!(
            "{:#}",
            request_all(&s, &retrier(), &refs(&["gone"], "STANDARD"), "Standard").unwrap_err()
        );
        assert!(e.contains("chunk gone is missing"), "{e}");
        let r = [ChunkRef {
            key: "a",
            size: 4,
            manifest_class: "STANDARD",
        }];
        let e = format!(
            "{:#}",
            request_all(&s, &retrier(), &r, "Standard").unwrap_err()
        );
        assert!(
            e.contains("chunk a has 3 bytes in S3 but the manifest says 4"),
            "{e}"
        );
    }

    #[test]
    fn timeout_names_the_chunk() {
        let s = MemoryStore::new();
        put(&s, "a", "DEEP_ARCHIVE");
        s.set_restore_delay_heads(1000);
        let pending =
            request_all(&s, &retrier(), &refs(&["a"], "DEEP_ARCHIVE"), "Standard").unwrap();
        let clock = Cell::new(Instant::now());
        let t0 = clock.get();
        let e = wait_all(
            &s,
            &retrier(),
            pending,
            Duration::from_secs(60),
            &|d| clock.set(clock.get() + d),
            &|| clock.get(),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("timed out after 60 s") && msg.contains("(first: a)"),
            "{msg}"
        );
        assert_eq!(clock.get() - t0, Duration::from_secs(60));
    }

    #[test]
    fn vanished_or_expired_restores_fail() {
        let s = MemoryStore::new();
        put(&s, "a", "DEEP_ARCHIVE");
        let t = Instant::now();
        let e = wait_all(
            &s,
            &retrier(),
            vec!["a".into()],
            Duration::from_secs(1),
            &|_| {},
            &|| t,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no longer reported"), "{e}");
        let e = wait_all(
            &s,
            &retrier(),
            vec!["zz".into()],
            Duration::from_secs(1),
            &|_| {},
            &|| t,
        )
        .unwrap_err();
        assert!(e.to_string().contains("disappeared"), "{e}");
    }
}
