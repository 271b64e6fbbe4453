//! Object Lock over an in-memory bucket that honours locks: what is locked when written,
//! the bucket check, and the chain extension — its request count for a chain of 26
//! weekly incrementals is measured here (DESIGN.md quotes it).

use std::sync::Arc;

use super::*;
use crate::config::ProcessEnv;
use crate::manifest::{ChunkEntry, Kind, Manifest, S3Info, SnapshotRef};
use crate::store::memory::MemoryStore;
use crate::store::{Body, ObjectStore};

const T0: i64 = 1_735_696_800; // 2025-01-01T02:00:00Z

fn cfg(lock: &str) -> Config {
    Config::parse(
        &format!(
            r#"
[subvolumes]
paths = ["/srv/data"]
[s3]
bucket = "b"
region = "r"
prefix = "p"
{lock}
"#
        ),
        &ProcessEnv,
    )
    .unwrap()
}

fn locked_cfg(mode: &str, days: u64) -> Config {
    cfg(&format!(
        "[object_lock]\nmode = \"{mode}\"\nretain_days = {days}"
    ))
}

struct World {
    cfg: Config,
    store: Arc<MemoryStore>,
    now: i64,
}

impl World {
    fn new(cfg: Config) -> World {
        let store = Arc::new(MemoryStore::new());
        store.enable_object_lock();
        store.set_clock(T0);
        World {
            cfg,
            store,
            now: T0,
        }
    }

    /// The repository of a run at the clock's time.
    fn repo(&self) -> Repo {
        Repo::new(
            &self.cfg,
            self.store.clone(),
            Arc::new(crate::testing::retrier()),
        )
        .with_lock(retention(&self.cfg, Ts::from_unix(self.now)))
    }

    fn advance_days(&mut self, days: i64) {
        self.now += days * DAY;
        self.store.set_clock(self.now);
    }

    /// A backup of `chunks` chunks published by a run at the clock's time (incrementals
    /// chain to `parent`), written as the backup engine writes it; returns its key.
    fn backup(&self, repo: &Repo, parent: Option<&str>, chunks: u64) -> String {
        let ts = Ts::from_unix(self.now);
        let kind = if parent.is_some() {
            Kind::Incremental
        } else {
            Kind::Full
        };
        let entries: Vec<ChunkEntry> = (0..chunks)
            .map(|i| {
                let key = repo.layout.chunk_key("data", kind, ts, i);
                let data = format!("{key}-bytes");
                self.store
                    .put_object(&key, Body::Bytes(data.as_bytes()), repo.chunk_opts())
                    .unwrap();
                ChunkEntry {
                    key: key.into_string(),
                    size: data.len() as u64,
                    sha256: "0".repeat(64),
                    etag: None,
                    extra: Default::default(),
                }
            })
            .collect();
        let key = repo.layout.manifest_key("data", kind, ts);
        let m = Manifest {
            version: 1,
            subvolume: "data".into(),
            kind,
            created_at: ts.to_string(),
            snapshot: SnapshotRef {
                name: format!("data__{ts}__{}", kind.snap_suffix()),
                path: format!("/srv/snapshots/data__{ts}__{}", kind.snap_suffix()),
                uuid: None,
                parent_uuid: None,
                extra: Default::default(),
            },
            parent_manifest: parent.map(str::to_string),
            total_bytes: entries.iter().map(|c| c.size).sum(),
            chunks: entries,
            chunk_size: 100,
            s3: S3Info {
                storage_class: "STANDARD".into(),
                extra: Default::default(),
            },
            stream_sha256: None,
            send_protocol: None,
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        };
        repo.publish(&key, &m).unwrap();
        key.into_string()
    }

    fn retention_calls(&self) -> usize {
        self.store
            .log()
            .iter()
            .filter(|l| l.starts_with("PutObjectRetention"))
            .count()
    }

    /// Every object of the chain from `key`: its lock date (none: unlocked).
    fn dates(&self, repo: &Repo, key: &str) -> Vec<(String, Option<Ts>)> {
        let chain = repo.chain("data", &mk(repo, key)).unwrap();
        chain
            .links
            .iter()
            .flat_map(|(k, m)| {
                std::iter::once(k.to_string()).chain(m.chunks.iter().map(|c| c.key.clone()))
            })
            .map(|k| {
                let until = self.store.object(&k).unwrap().lock.map(|l| l.until);
                (k, until)
            })
            .collect()
    }
}

#[test]
fn chunks_and_manifests_are_locked_and_the_pointer_is_not() {
    let w = World::new(locked_cfg("COMPLIANCE", 30));
    let repo = w.repo();
    let key = w.backup(&repo, None, 2);
    let want = Retention {
        mode: "COMPLIANCE".into(),
        until: Ts::from_unix(T0 + 30 * DAY),
    };
    let chain = repo.chain("data", &mk(&repo, &key)).unwrap();
    for c in &chain.newest().1.chunks {
        assert_eq!(w.store.object(&c.key).unwrap().lock.as_ref(), Some(&want));
    }
    assert_eq!(w.store.object(&key).unwrap().lock.as_ref(), Some(&want));
    let pointer = repo.layout.pointer_key("data");
    assert_eq!(w.store.object(&pointer).unwrap().lock, None);
    // HEAD reports it, as S3's x-amz-object-lock-* headers do.
    assert_eq!(w.store.head(&key).unwrap().unwrap().lock, Some(want));

    // Without [object_lock] nothing carries a lock.
    let w = World::new(cfg(""));
    let repo = Repo::new(&w.cfg, w.store.clone(), Arc::new(crate::testing::retrier()));
    assert_eq!(repo.lock(), None);
    let key = w.backup(&repo, None, 1);
    assert!(w
        .store
        .keys()
        .iter()
        .all(|k| w.store.object(k).unwrap().lock.is_none()));
    assert!(
        protect_chain(&w.cfg, &repo, "data", &mk(&repo, &key)).unwrap() == Protected::default()
    );
}

#[test]
fn a_bucket_without_object_lock_is_a_config_error_naming_the_fix() {
    let cfg = locked_cfg("GOVERNANCE", 7);
    let plain = Arc::new(MemoryStore::new());
    let repo = Repo::new(&cfg, plain.clone(), Arc::new(crate::testing::retrier()));
    let e = check_bucket(&cfg, &repo).unwrap_err();
    assert_eq!(e.code(), 2, "{e:#}");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("bucket b does not have Object Lock enabled"),
        "{msg}"
    );
    assert!(msg.contains("--object-lock-enabled-for-bucket"), "{msg}");
    assert!(plain.keys().is_empty());
    // A failed request is a run failure (exit 1), not a verdict on the bucket.
    plain.fail("GetObjectLockConfiguration", ErrorKind::Permanent, 1);
    let e = check_bucket(&cfg, &repo).unwrap_err();
    assert_eq!(e.code(), 1, "{e:#}");
    plain.enable_object_lock();
    check_bucket(&cfg, &repo).unwrap();
    // Without [object_lock] nothing is asked.
    let before = plain.log().len();
    check_bucket(&self::cfg(""), &repo).unwrap();
    assert_eq!(plain.log().len(), before);
}

#[test]
fn after_an_incremental_its_parents_are_locked_at_least_as_long() {
    let mut w = World::new(locked_cfg("GOVERNANCE", 60));
    let repo = w.repo();
    let full = w.backup(&repo, None, 2);
    assert_eq!(
        protect_chain(&w.cfg, &repo, "data", &mk(&repo, &full))
            .unwrap()
            .extended,
        0
    );
    w.advance_days(7);
    let repo = w.repo();
    let inc = w.backup(&repo, Some(&full), 1);
    let done = protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc)).unwrap();
    assert_eq!((done.objects, done.extended), (5, 3));
    let needed = Ts::from_unix(w.now + 60 * DAY);
    // Extended by the slack (60 / 6 = 10 days) beyond what is needed.
    let extended = needed.add_secs(10 * DAY);
    for (k, until) in w.dates(&repo, &inc) {
        let want = if k.contains("/full/") {
            extended
        } else {
            needed
        };
        assert_eq!(until, Some(want), "{k}");
    }
    // Run again: nothing is short, nothing is asked.
    let done = protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc)).unwrap();
    assert_eq!(done.extended, 0);
}

#[test]
fn compliance_is_never_weakened_and_a_refusal_names_the_key() {
    let mut w = World::new(locked_cfg("COMPLIANCE", 12));
    let repo = w.repo();
    let full = w.backup(&repo, None, 1);
    w.advance_days(1);
    // The config now says GOVERNANCE: the COMPLIANCE objects keep their mode.
    w.cfg = locked_cfg("GOVERNANCE", 12);
    let repo = w.repo();
    let inc = w.backup(&repo, Some(&full), 1);
    w.store.fail("PutObjectRetention", ErrorKind::Permanent, 1);
    let e = protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("extending the Object Lock of p/subvol/data/full/"),
        "{msg}"
    );
    assert!(msg.contains("s3:PutObjectRetention"), "{msg}");
    protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc)).unwrap();
    let f = w.store.object(&full).unwrap().lock.unwrap();
    assert_eq!(f.mode, "COMPLIANCE");
    assert_eq!(f.until, Ts::from_unix(w.now + 14 * DAY));
}

/// The closing note's measure: PutObjectRetention calls per run for a full and 26 weekly
/// incrementals (`retain_days = 180`, slack 30 days), with 1 and 3 chunks per backup.
#[test]
fn a_chain_of_26_weekly_incrementals_extends_only_short_dates() {
    for chunks in [1u64, 3] {
        let mut w = World::new(locked_cfg("COMPLIANCE", 180));
        let mut per_run = Vec::new();
        let mut key: Option<String> = None;
        for _ in 0..27 {
            let repo = w.repo();
            let before = w.retention_calls();
            let k = w.backup(&repo, key.as_deref(), chunks);
            let done = protect_chain(&w.cfg, &repo, "data", &mk(&repo, &k)).unwrap();
            assert_eq!(done.extended, w.retention_calls() - before);
            per_run.push(done.extended);
            // Every object of the chain now stays at least as long as the new backup.
            let needed = repo.lock().unwrap().until;
            for (o, until) in w.dates(&repo, &k) {
                assert!(until.is_some_and(|u| u >= needed), "{o}: {until:?}");
            }
            key = Some(k);
            w.advance_days(7);
        }
        let objects = 27 * (chunks as usize + 1);
        let total: usize = per_run.iter().sum();
        let max = per_run.iter().copied().max().unwrap_or(0);
        eprintln!(
            "{chunks} chunk(s) per backup: PutObjectRetention per run {per_run:?}, total {total}, \
             max {max}, chain of {objects} objects"
        );
        // Without the slack run n would extend every object of the n backups before it:
        // (chunks + 1) × n calls, 702 × (chunks + 1) / 2 in all.
        let without_slack: usize = (1..27).map(|n| n * (chunks as usize + 1)).sum();
        assert!(total * 3 < without_slack, "{total} vs {without_slack}");
        assert!(max <= objects / 3, "{per_run:?}");
    }
}

#[test]
fn a_resumed_backups_chunks_from_an_earlier_run_get_this_runs_date() {
    let mut w = World::new(locked_cfg("COMPLIANCE", 30));
    let full = {
        let repo = w.repo();
        w.backup(&repo, None, 1)
    };
    // The incremental's first chunk went up in a run a day ago (then the network
    // failed); this run uploads the rest and publishes.
    w.advance_days(1);
    let early = w.repo();
    let ts = Ts::from_unix(w.now + DAY);
    let key = early.layout.chunk_key("data", Kind::Incremental, ts, 0);
    w.advance_days(1);
    let repo = w.repo();
    let inc = w.backup(&repo, Some(&full), 2);
    assert!(
        key == repo
            .chain("data", &mk(&repo, &inc))
            .unwrap()
            .newest()
            .1
            .chunks[0]
            .key
    );
    // (the helper wrote every chunk anew: chunk 0 keeps the earlier run's date, as a
    // resume that finds it stored does not send it again)
    w.store.set_retention(&key, early.lock().cloned());
    let done = protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc)).unwrap();
    // The full (manifest and chunk) and the early chunk were short.
    assert_eq!(done.extended, 3);
    let needed = repo.lock().unwrap().until;
    for (k, until) in w.dates(&repo, &inc) {
        assert!(until.is_some_and(|u| u >= needed), "{k}");
    }
}

/// A store that answers PutObjectRetention and keeps nothing (as a service without
/// Object Lock that ignores what it does not know).
struct Forgetful(Arc<MemoryStore>);

impl ObjectStore for Forgetful {
    fn put_object(
        &self,
        k: &str,
        b: Body<'_>,
        o: &crate::store::PutOptions,
    ) -> crate::store::StoreResult<String> {
        let plain = crate::store::PutOptions {
            lock: None,
            ..o.clone()
        };
        self.0.put_object(k, b, &plain)
    }
    fn create_multipart(
        &self,
        k: &str,
        o: &crate::store::PutOptions,
    ) -> crate::store::StoreResult<String> {
        self.0.create_multipart(k, o)
    }
    fn upload_part(
        &self,
        k: &str,
        u: &str,
        n: u32,
        b: Body<'_>,
    ) -> crate::store::StoreResult<String> {
        self.0.upload_part(k, u, n, b)
    }
    fn complete_multipart(
        &self,
        k: &str,
        u: &str,
        p: &[(u32, String)],
    ) -> crate::store::StoreResult<String> {
        self.0.complete_multipart(k, u, p)
    }
    fn abort_multipart(&self, k: &str, u: &str) -> crate::store::StoreResult<()> {
        self.0.abort_multipart(k, u)
    }
    fn list_parts(
        &self,
        k: &str,
        u: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::ListedPart>> {
        self.0.list_parts(k, u)
    }
    fn list_multipart_uploads(
        &self,
        p: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::OpenUpload>> {
        self.0.list_multipart_uploads(p)
    }
    fn list_objects(&self, p: &str) -> crate::store::StoreResult<Vec<crate::store::ListedObject>> {
        self.0.list_objects(p)
    }
    fn delete_object(&self, k: &str) -> crate::store::StoreResult<()> {
        self.0.delete_object(k)
    }
    fn head(&self, k: &str) -> crate::store::StoreResult<Option<crate::store::ObjectMeta>> {
        self.0.head(k)
    }
    fn head_bucket(&self) -> crate::store::StoreResult<()> {
        self.0.head_bucket()
    }
    fn get(
        &self,
        k: &str,
        r: Option<(u64, u64)>,
    ) -> crate::store::StoreResult<Box<dyn std::io::Read + Send>> {
        self.0.get(k, r)
    }
    fn restore_object(&self, k: &str, d: u32, t: &str) -> crate::store::StoreResult<()> {
        self.0.restore_object(k, d, t)
    }
    fn object_lock_enabled(&self) -> crate::store::StoreResult<bool> {
        Ok(true)
    }
    fn put_retention(
        &self,
        _: &str,
        _: Option<&str>,
        _: &Retention,
    ) -> crate::store::StoreResult<()> {
        Ok(())
    }
}

#[test]
fn a_service_that_keeps_no_dates_fails_the_run_instead_of_leaving_unlocked_objects() {
    let w = World::new(locked_cfg("COMPLIANCE", 30));
    let store = Arc::new(Forgetful(w.store.clone()));
    let repo = Repo::new(&w.cfg, store, Arc::new(crate::testing::retrier()))
        .with_lock(retention(&w.cfg, Ts::from_unix(w.now)));
    check_bucket(&w.cfg, &repo).unwrap();
    let key = w.backup(&repo, None, 1);
    let e = protect_chain(&w.cfg, &repo, "data", &mk(&repo, &key)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("it does not keep Object Lock dates"), "{msg}");
    assert!(
        msg.contains(&format!("PutObjectRetention of {key}")),
        "{msg}"
    );
}

/// `verify`'s lock check (`check::Checker { locks: true }`) over the same bucket, with
/// only its lock findings (the test manifests say STANDARD of DEEP_ARCHIVE chunks).
fn verify_locks(w: &World, repo: &Repo, key: &str) -> crate::check::Report {
    let mut r = crate::check::Checker {
        repo,
        sse: crate::config::Sse::None,
        concurrency: 1,
        piece_size: 1 << 20,
        identities: &[],
        locks: true,
    }
    .run("data", &mk(repo, key), None, "Standard")
    .unwrap_or_else(|e| panic!("{e:#} {:?}", w.store.log()));
    r.findings.retain(|f| !f.problem.contains("storage class"));
    r
}

#[test]
fn verify_names_each_object_unlocked_or_locked_shorter_than_its_chain_needs() {
    let mut w = World::new(locked_cfg("GOVERNANCE", 60));
    let repo = w.repo();
    let full = w.backup(&repo, None, 2);
    w.advance_days(7);
    let repo = w.repo();
    let inc = w.backup(&repo, Some(&full), 1);
    protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc)).unwrap();
    let needed = Ts::from_unix(w.now + 60 * DAY);

    // A protected chain: no finding, every object counted, the newest backup's date.
    let heads_before = w
        .store
        .log()
        .iter()
        .filter(|l| l.starts_with("HEAD"))
        .count();
    let r = verify_locks(&w, &repo, &inc);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    let want = crate::check::LockReport {
        objects: 5,
        needed_until: Some(needed.iso()),
        short: 0,
    };
    assert_eq!(r.object_lock.as_ref(), Some(&want));
    // One HEAD per manifest beyond the cheap check's HEAD per chunk (and its one
    // existence check of the start manifest).
    let heads = w
        .store
        .log()
        .iter()
        .filter(|l| l.starts_with("HEAD"))
        .count()
        - heads_before;
    assert!(heads <= 3 + 2 + 1, "{heads} HEADs");

    // Without locks asked for, nothing about them.
    let mut plain = crate::check::Checker {
        repo: &repo,
        sse: crate::config::Sse::None,
        concurrency: 1,
        piece_size: 1 << 20,
        identities: &[],
        locks: false,
    }
    .run("data", &mk(&repo, &inc), None, "Standard")
    .unwrap();
    assert!(plain.object_lock.take().is_none());
    assert!(plain
        .findings
        .iter()
        .all(|f| f.problem.contains("storage class")));

    // One chunk of the full lost its lock (a bucket without default retention, a
    // copy by another tool), another was locked for less than the chain needs.
    let chain = repo.chain("data", &mk(&repo, &inc)).unwrap();
    let full_chunks: Vec<String> = chain.links[0]
        .1
        .chunks
        .iter()
        .map(|c| c.key.clone())
        .collect();
    w.store.set_retention(&full_chunks[0], None);
    let short = needed.add_secs(-DAY);
    w.store.set_retention(
        &full_chunks[1],
        Some(Retention {
            mode: "GOVERNANCE".into(),
            until: short,
        }),
    );
    let r = verify_locks(&w, &repo, &inc);
    assert_eq!(r.findings.len(), 2, "{:?}", r.findings);
    assert!(r.findings.iter().all(|f| !f.damage), "{:?}", r.findings);
    assert_eq!(r.findings[0].key, full_chunks[0]);
    assert!(
        r.findings[0].problem.starts_with("not locked"),
        "{:?}",
        r.findings
    );
    assert_eq!(r.findings[1].key, full_chunks[1]);
    let p = &r.findings[1].problem;
    assert!(
        p.contains(&format!("GOVERNANCE) only until {}", short.iso()))
            && p.contains(&format!("needs (until {}", needed.iso())),
        "{p}"
    );
    assert_eq!(r.object_lock.as_ref().map(|l| l.short), Some(2));
    assert!(!r.damaged());
    // The next incremental's chain extension heals both.
    w.advance_days(1);
    let repo = w.repo();
    let inc2 = w.backup(&repo, Some(&inc), 1);
    protect_chain(&w.cfg, &repo, "data", &mk(&repo, &inc2)).unwrap();
    let r = verify_locks(&w, &repo, &inc2);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.object_lock.map(|l| l.objects), Some(7));

    // A chain written before [object_lock]: every object is named, and with the newest
    // manifest unlocked there is no date to hold the rest to.
    let w = World::new(locked_cfg("GOVERNANCE", 60));
    let unlocked =
        Repo::new(&w.cfg, w.store.clone(), Arc::new(crate::testing::retrier())).with_lock(None);
    let key = w.backup(&unlocked, None, 2);
    let r = verify_locks(&w, &unlocked, &key);
    assert_eq!(r.findings.len(), 3, "{:?}", r.findings);
    assert_eq!(r.findings[0].key, key);
    assert!(r
        .findings
        .iter()
        .all(|f| f.problem.starts_with("not locked")));
    assert_eq!(
        r.object_lock,
        Some(crate::check::LockReport {
            objects: 3,
            needed_until: None,
            short: 3
        })
    );
}

/// `k` as a manifest key of `data` (the tests' keys are all owned).
fn mk(repo: &Repo, k: &str) -> crate::manifest::ManifestKey {
    repo.manifest_key_of("data", k).unwrap()
}
