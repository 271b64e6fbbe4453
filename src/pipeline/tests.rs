//! Pipeline tests against the in-memory store: single PUTs, multipart chunks, boundaries,
//! retries, abort on failure, and resumes (what is sent, what is only verified, and that
//! verifying takes no part buffer or spool file).

use super::*;
use crate::config::{MAX_PART_SIZE, MIB};
use crate::store::memory::MemoryStore;
use crate::store::ErrorKind;
use crate::store::ObjectStore;
use sha2::{Digest, Sha256};

fn retrier() -> Arc<Retrier> {
    Arc::new(crate::testing::retrier())
}

fn cfg(chunk: u64, part: u64, conc: usize) -> PipelineConfig {
    PipelineConfig {
        chunk_size: chunk,
        part_size: part,
        concurrency: conc,
        chunk_opts: PutOptions {
            storage_class: "DEEP_ARCHIVE".into(),
            sse: crate::config::Sse::Aes256,
            content_type: "application/octet-stream",
            kms_key_id: None,
            lock: None,
        },
        spool: None,
        keep_open_on_failure: false,
        encryption: None,
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 253) as u8).collect()
}

fn key(i: u64) -> crate::manifest::ChunkKey {
    crate::manifest::Layout::test_chunk_key(&format!("p/chunk-{i}.bin"))
}

fn run(store: &Arc<MemoryStore>, d: &[u8], c: &PipelineConfig) -> Result<Uploaded, UploadError> {
    let s = ChunkWriter::new(store.clone());
    upload_stream(
        &mut &d[..],
        s,
        retrier(),
        c,
        &key,
        &BTreeMap::new(),
        &mut NoProgress,
    )
}

fn reassemble(store: &MemoryStore, o: &Uploaded) -> Vec<u8> {
    let mut all = Vec::new();
    for c in &o.chunks {
        let obj = store.object(&c.key).unwrap();
        assert_eq!(obj.data.len() as u64, c.size);
        assert_eq!(crate::chunker::hex(&Sha256::digest(&obj.data)), c.sha256);
        assert_eq!(obj.opts.storage_class, "DEEP_ARCHIVE");
        assert_eq!(obj.opts.sse.as_str(), "AES256");
        assert_eq!(Some(obj.etag.clone()), c.etag);
        all.extend_from_slice(&obj.data);
    }
    all
}

fn count(log: &[String], what: &str) -> usize {
    log.iter().filter(|l| l.starts_with(what)).count()
}

#[test]
fn small_chunks_are_single_puts() {
    let store = Arc::new(MemoryStore::new());
    let d = data(1000);
    let o = run(&store, &d, &cfg(300, 512, 3)).unwrap();
    assert_eq!(o.chunks.len(), 4);
    assert_eq!(o.chunks[3].size, 100);
    assert_eq!(reassemble(&store, &o), d);
    assert_eq!(o.summary.total_bytes, 1000);
    assert_eq!(o.summary.sha256, crate::chunker::hex(&Sha256::digest(&d)));
    let log = store.log();
    assert_eq!(count(&log, "PUT "), 4);
    assert_eq!(count(&log, "CreateMultipartUpload"), 0);
    assert_eq!(o.parts, 4);
}

#[test]
fn large_chunks_are_multipart() {
    let store = Arc::new(MemoryStore::new());
    let d = data(2500);
    let o = run(&store, &d, &cfg(1000, 300, 4)).unwrap();
    assert_eq!(
        o.chunks.iter().map(|c| c.size).collect::<Vec<_>>(),
        vec![1000, 1000, 500]
    );
    assert_eq!(reassemble(&store, &o), d);
    let log = store.log();
    assert_eq!(count(&log, "CreateMultipartUpload"), 3);
    assert_eq!(count(&log, "CompleteMultipartUpload"), 3);
    // 1000 = 300+300+300+100 (4 parts) twice, 500 = 300+200.
    assert_eq!(count(&log, "UploadPart"), 10);
    assert_eq!(store.open_uploads(), 0);
}

#[test]
fn last_chunk_of_exactly_one_part_is_a_put() {
    let store = Arc::new(MemoryStore::new());
    // Chunk 0 is multipart (1000 > 300); chunk 1 holds exactly one full part and then EOF.
    let d = data(1300);
    let o = run(&store, &d, &cfg(1000, 300, 2)).unwrap();
    assert_eq!(reassemble(&store, &o), d);
    let log = store.log();
    assert_eq!(count(&log, "CreateMultipartUpload"), 1);
    assert!(log.contains(&"PUT p/chunk-1.bin".to_string()), "{log:?}");
}

#[test]
fn exact_multiple_and_one_byte_over() {
    for (n, chunks) in [(2000usize, 2usize), (2001, 3)] {
        let store = Arc::new(MemoryStore::new());
        let d = data(n);
        let o = run(&store, &d, &cfg(1000, 250, 1)).unwrap();
        assert_eq!(o.chunks.len(), chunks);
        assert_eq!(reassemble(&store, &o), d);
    }
}

#[test]
fn empty_stream_uploads_nothing() {
    let store = Arc::new(MemoryStore::new());
    let o = run(&store, &[], &cfg(1000, 250, 2)).unwrap();
    assert!(o.chunks.is_empty());
    assert_eq!(o.summary.total_bytes, 0);
    assert!(store.log().is_empty());
}

#[test]
fn transient_part_failure_is_retried() {
    let store = Arc::new(MemoryStore::new());
    store.fail("UploadPart p/chunk-0.bin part 2", ErrorKind::Transient, 2);
    store.fail("PUT p/chunk-1.bin", ErrorKind::Transient, 1);
    let d = data(1100);
    let r = retrier();
    let s = ChunkWriter::new(store.clone());
    let o = upload_stream(
        &mut &d[..],
        s,
        r.clone(),
        &cfg(1000, 300, 3),
        &key,
        &BTreeMap::new(),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(reassemble(&store, &o), d);
    assert_eq!(r.retries(), 3);
}

#[test]
fn exhausted_part_aborts_the_upload() {
    let store = Arc::new(MemoryStore::new());
    store.fail("UploadPart p/chunk-1.bin part 1", ErrorKind::Transient, 5);
    let d = data(5000);
    let e = run(&store, &d, &cfg(1000, 300, 2)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("part 1 of chunk p/chunk-1.bin"), "{msg}");
    assert!(msg.contains("after 5 attempts"), "{msg}");
    assert_eq!(store.open_uploads(), 0, "{:?}", store.log());
    assert!(count(&store.log(), "AbortMultipartUpload") >= 1);
}

#[test]
fn forbidden_is_not_retried() {
    let store = Arc::new(MemoryStore::new());
    store.fail("PUT p/chunk-0.bin", ErrorKind::Permanent, 1);
    let r = retrier();
    let s = ChunkWriter::new(store.clone());
    let e = upload_stream(
        &mut &data(10)[..],
        s,
        r.clone(),
        &cfg(100, 50, 2),
        &key,
        &BTreeMap::new(),
        &mut NoProgress,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("HTTP 403"), "{e:#}");
    assert_eq!(r.retries(), 0);
}

#[test]
fn failing_create_and_complete_abort() {
    let store = Arc::new(MemoryStore::new());
    store.fail(
        "CreateMultipartUpload p/chunk-1.bin",
        ErrorKind::Permanent,
        1,
    );
    let e = run(&store, &data(3000), &cfg(1000, 300, 2)).unwrap_err();
    assert!(format!("{e:#}").contains("starting the multipart upload of chunk p/chunk-1.bin"));
    // A failed request, from the reader's own call: the backup is worth resuming.
    assert!(matches!(e, UploadError::Store(_)), "{e:#}");
    assert_eq!(store.open_uploads(), 0);

    let store = Arc::new(MemoryStore::new());
    store.fail(
        "CompleteMultipartUpload p/chunk-0.bin",
        ErrorKind::Permanent,
        1,
    );
    let e = run(&store, &data(3000), &cfg(1000, 300, 2)).unwrap_err();
    assert!(format!("{e:#}").contains("completing the multipart upload of chunk p/chunk-0.bin"));
    // A failed request, from an uploader thread: the same.
    assert!(matches!(e, UploadError::Store(_)), "{e:#}");
    assert_eq!(store.open_uploads(), 0);
}

#[test]
fn read_error_fails_and_aborts() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    let store = Arc::new(MemoryStore::new());
    let s = ChunkWriter::new(store.clone());
    let e = upload_stream(
        &mut Broken(700),
        s,
        retrier(),
        &cfg(1000, 300, 2),
        &key,
        &BTreeMap::new(),
        &mut NoProgress,
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("reading the btrfs send stream") && msg.contains("disk on fire"),
        "{msg}"
    );
    assert_eq!(store.open_uploads(), 0);
}

#[test]
fn part_size_raise() {
    assert_eq!(effective_part_size(16 * MIB, 100 * MIB), Some(16 * MIB));
    assert_eq!(effective_part_size(MIB, 10 * MIB), Some(5 * MIB));
    // 200 GiB / 10,000 = 20.48 MiB -> 21 MiB.
    assert_eq!(
        effective_part_size(16 * MIB, 200 * 1024 * MIB),
        Some(21 * MIB)
    );
    assert_eq!(
        effective_part_size(16 * MIB, 10_000 * 16 * MIB),
        Some(16 * MIB)
    );
    assert_eq!(
        effective_part_size(16 * MIB, 10_000 * 16 * MIB + 1),
        Some(17 * MIB)
    );
    assert_eq!(
        effective_part_size(16 * MIB, MAX_PART_SIZE * 10_000),
        Some(MAX_PART_SIZE)
    );
    assert_eq!(
        effective_part_size(16 * MIB, MAX_PART_SIZE * 10_000 + 1),
        None
    );
}

fn spooled(
    chunk: u64,
    part: u64,
    conc: usize,
    dir: &std::path::Path,
    max_bytes: u64,
) -> PipelineConfig {
    PipelineConfig {
        spool: Some(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
        }),
        ..cfg(chunk, part, conc)
    }
}

#[test]
fn spool_carries_parts_through_unlinked_files() {
    let dir = crate::testing::Scratch::new("spool");
    let spool = dir.0.join("spool");
    for (n, chunk, part) in [(2500usize, 1000u64, 300u64), (1000, 300, 512), (0, 100, 50)] {
        let store = Arc::new(MemoryStore::new());
        let d = data(n);
        // A transient failure makes the file body be sent twice.
        store.fail("part 2", ErrorKind::Transient, 1);
        let c = spooled(chunk, part, 3, &spool, 10 * part);
        let o = run(&store, &d, &c).unwrap();
        assert_eq!(reassemble(&store, &o), d);
        assert_eq!(o.summary.total_bytes, n as u64);
        // The spool files were unlinked when created: nothing stays behind.
        if spool.exists() {
            assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
        }
    }
}

#[test]
fn spool_size_bounds_the_buffers() {
    let dir = crate::testing::Scratch::new("spool-size");
    // Room for 3 parts: fewer buffers than concurrency + 1, still correct.
    let c = spooled(1000, 100, 4, &dir.0, 300);
    assert_eq!(c.max_buffers(), 3);
    let store = Arc::new(MemoryStore::new());
    let d = data(2345);
    let o = run(&store, &d, &c).unwrap();
    assert_eq!(reassemble(&store, &o), d);
    // Room for one part: one buffer, uploads one at a time, still correct.
    let c = spooled(1000, 100, 4, &dir.0, 150);
    assert_eq!(c.max_buffers(), 1);
    let o = run(&store, &d, &c).unwrap();
    assert_eq!(reassemble(&store, &o), d);
    // Room for less than a part is refused with the key to raise.
    let c = spooled(1000, 100, 4, &dir.0, 50);
    let e = run(&Arc::new(MemoryStore::new()), &d, &c).unwrap_err();
    assert!(
        e.to_string().contains("global.spool_size_bytes = 50"),
        "{e}"
    );
    // An unusable spool directory is named.
    let c = spooled(
        1000,
        100,
        2,
        std::path::Path::new("/proc/no-such-dir"),
        1000,
    );
    let e = run(&Arc::new(MemoryStore::new()), &d, &c).unwrap_err();
    assert!(format!("{e:#}").contains("global.spool_dir"), "{e:#}");
    assert_eq!(cfg(1, 1, 4).max_buffers(), 5);
}

/// Set once the input has returned EOF; shared by [`EofReader`] and [`SlowComplete`].
type EofFlag = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

/// The input, raising the flag when it reaches its end.
struct EofReader<'a> {
    data: &'a [u8],
    eof: EofFlag,
}

impl Read for EofReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        if n == 0 && !buf.is_empty() {
            *self.eof.0.lock().unwrap() = true;
            self.eof.1.notify_all();
        }
        Ok(n)
    }
}

/// A store whose CompleteMultipartUpload of chunk 0 holds until the whole input has been
/// read, the way a real service takes its time to assemble a large object. A pipeline
/// whose reader waits for the completion never gets there.
struct SlowComplete {
    inner: MemoryStore,
    eof: EofFlag,
}

impl ObjectStore for SlowComplete {
    fn put_object(
        &self,
        key: &str,
        body: Body<'_>,
        opts: &PutOptions,
    ) -> crate::store::StoreResult<String> {
        self.inner.put_object(key, body, opts)
    }
    fn create_multipart(&self, key: &str, opts: &PutOptions) -> crate::store::StoreResult<String> {
        self.inner.create_multipart(key, opts)
    }
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body<'_>,
    ) -> crate::store::StoreResult<String> {
        self.inner.upload_part(key, upload_id, part_number, body)
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> crate::store::StoreResult<String> {
        if key == "p/chunk-0.bin" {
            let seen = self.eof.0.lock().unwrap();
            let (seen, _) = self
                .eof
                .1
                .wait_timeout_while(seen, std::time::Duration::from_secs(10), |s| !*s)
                .unwrap();
            if !*seen {
                return Err(crate::store::StoreError::new(
                    ErrorKind::Permanent,
                    "CompleteMultipartUpload",
                    "the input stopped being read while chunk 0 was being completed",
                ));
            }
        }
        self.inner.complete_multipart(key, upload_id, parts)
    }
    fn abort_multipart(&self, key: &str, upload_id: &str) -> crate::store::StoreResult<()> {
        self.inner.abort_multipart(key, upload_id)
    }
    fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::ListedPart>> {
        self.inner.list_parts(key, upload_id)
    }
    fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::OpenUpload>> {
        self.inner.list_multipart_uploads(prefix)
    }
    fn list_objects(
        &self,
        prefix: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::ListedObject>> {
        self.inner.list_objects(prefix)
    }
    fn delete_object(&self, key: &str) -> crate::store::StoreResult<()> {
        self.inner.delete_object(key)
    }
    fn head(&self, key: &str) -> crate::store::StoreResult<Option<crate::store::ObjectMeta>> {
        self.inner.head(key)
    }
    fn head_bucket(&self) -> crate::store::StoreResult<()> {
        self.inner.head_bucket()
    }
    fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> crate::store::StoreResult<Box<dyn Read + Send>> {
        self.inner.get(key, range)
    }
    fn restore_object(&self, key: &str, days: u32, tier: &str) -> crate::store::StoreResult<()> {
        self.inner.restore_object(key, days, tier)
    }
}

#[test]
fn completing_a_chunk_does_not_stop_the_reader() {
    let eof: EofFlag = Default::default();
    let slow = Arc::new(SlowComplete {
        inner: MemoryStore::new(),
        eof: eof.clone(),
    });
    let d = data(1200);
    let mut input = EofReader { data: &d, eof };
    let s = ChunkWriter::new(slow.clone());
    let o = upload_stream(
        &mut input,
        s,
        retrier(),
        &cfg(600, 300, 2),
        &key,
        &BTreeMap::new(),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(reassemble(&slow.inner, &o), d);
    assert_eq!(o.parts, 4);
    assert_eq!(slow.inner.open_uploads(), 0);
}

/// Runs `f` on its own thread and fails the test if it has not returned within `secs`:
/// a hang is a failure, not a stuck test run.
pub(crate) fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the run hung instead of returning")
}

#[test]
fn a_panicking_uploader_fails_the_run_instead_of_hanging_it() {
    for (what, conc) in [
        ("UploadPart p/chunk-1.bin part 2", 3),
        ("PUT p/chunk-4.bin", 2),
        ("CompleteMultipartUpload p/chunk-0.bin", 1),
    ] {
        let store = Arc::new(MemoryStore::new());
        store.panic_on(what);
        let s = store.clone();
        let e = within(20, move || run(&s, &data(4200), &cfg(1000, 300, conc))).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("a worker thread panicked: injected panic in"),
            "{what}: {msg}"
        );
        assert_eq!(store.open_uploads(), 0, "{what}: {:?}", store.log());
    }
}

fn journal_at(dir: &std::path::Path) -> crate::journal::Journal {
    let begin = crate::journal::Begin {
        version: crate::journal::VERSION,
        subvolume: "data".into(),
        run_ts: "20250101T020000Z".into(),
        kind: crate::manifest::Kind::Full,
        snapshot: "/s".into(),
        parent: None,
        parent_manifest: None,
        last_full_at: None,
        send_protocol: 1,
        settings: crate::journal::Settings {
            bucket: "b".into(),
            prefix: "p".into(),
            chunk_size: 1000,
            part_size: 300,
            storage_class: "DEEP_ARCHIVE".into(),
            sse: "AES256".into(),
            encryption: None,
        },
    };
    crate::journal::Journal::create(&dir.join("j"), &begin).unwrap()
}

/// A run of `d` with `c` (parts left open) cut by a failure of part 3 of chunk 1, with
/// a journal: the store as it left it, and the journal as a resume loads it.
fn interrupted_run(
    d: &[u8],
    c: &PipelineConfig,
    tag: &str,
) -> (Arc<MemoryStore>, crate::journal::Pending) {
    let dir = crate::testing::Scratch::new(tag);
    let store = Arc::new(MemoryStore::new());
    store.fail("UploadPart p/chunk-1.bin part 3", ErrorKind::Permanent, 1);
    let mut j = journal_at(&dir.0);
    let progress = &mut crate::backup::JournalProgress(&mut j);
    assert!(run_with(&store, d, c, &BTreeMap::new(), progress).is_err());
    let pending = crate::journal::load(&dir.0.join("j")).unwrap().unwrap();
    (store, pending)
}

/// One run of `d` through the pipeline with `resume` as stored and `progress` told.
fn run_with(
    store: &Arc<MemoryStore>,
    d: &[u8],
    c: &PipelineConfig,
    resume: &BTreeMap<u64, crate::journal::ChunkProgress>,
    progress: &mut dyn Progress,
) -> Result<Uploaded, UploadError> {
    let s = ChunkWriter::new(store.clone());
    upload_stream(&mut &d[..], s, retrier(), c, &key, resume, progress)
}

#[test]
fn a_resume_sends_only_what_is_not_stored_and_gives_the_same_chunks() {
    use crate::backup::JournalProgress;
    let dir = crate::testing::Scratch::new("pipeline-resume");
    let d = data(4200);
    let clean = run(&Arc::new(MemoryStore::new()), &d, &cfg(1000, 300, 2)).unwrap();

    let store = Arc::new(MemoryStore::new());
    store.fail("UploadPart p/chunk-2.bin part 3", ErrorKind::Permanent, 1);
    let mut c = cfg(1000, 300, 1);
    c.keep_open_on_failure = true;
    let mut j = journal_at(&dir.0);
    let none = BTreeMap::new();
    let e = run_with(&store, &d, &c, &none, &mut JournalProgress(&mut j)).unwrap_err();
    assert!(
        format!("{e:#}").contains("part 3 of chunk p/chunk-2.bin"),
        "{e:#}"
    );
    // Kept open for the resume.
    assert_eq!(store.open_uploads(), 1, "{:?}", store.log());
    let pending = crate::journal::load(&dir.0.join("j")).unwrap().unwrap();
    assert!(pending.stored_bytes() >= 2600, "{}", pending.stored_bytes());

    let before = store.log().len();
    let mut j = crate::journal::Journal::reopen(&pending).unwrap();
    let o = run_with(
        &store,
        &d,
        &c,
        &pending.chunks,
        &mut JournalProgress(&mut j),
    )
    .unwrap();
    let brief = |u: &Uploaded| -> Vec<(String, u64, String)> {
        u.chunks
            .iter()
            .map(|c| (c.key.clone(), c.size, c.sha256.clone()))
            .collect()
    };
    assert_eq!(brief(&o), brief(&clean));
    assert_eq!(o.summary, clean.summary);
    assert_eq!(reassemble(&store, &o), d);
    assert_eq!(o.resumed_bytes, pending.stored_bytes());
    assert_eq!(o.uploaded_bytes + o.resumed_bytes, d.len() as u64);
    let log = &store.log()[before..];
    // Chunks 0 and 1 are not sent again, nor chunk 2's first two parts, nor a new upload
    // for chunk 2.
    for l in log {
        assert!(
            ![
                "p/chunk-0.bin",
                "p/chunk-1.bin",
                "p/chunk-2.bin part 1",
                "p/chunk-2.bin part 2",
                "CreateMultipartUpload p/chunk-2.bin",
            ]
            .iter()
            .any(|w| l.contains(w)),
            "{log:?}"
        );
    }
    assert_eq!(store.open_uploads(), 0);
}

#[test]
fn a_stored_part_whose_bytes_differ_is_a_mismatch() {
    let d = data(2500);
    let mut c = cfg(1000, 300, 1);
    c.keep_open_on_failure = true;
    let (store, pending) = interrupted_run(&d, &c, "pipeline-mismatch");
    let flipped = |at: usize| {
        let mut v = d.clone();
        v[at] ^= 1;
        v
    };
    // Other bytes in chunk 1's second part, in stored chunk 0, and a shorter stream.
    for (input, says) in [
        (flipped(1450), "part 2 of chunk p/chunk-1.bin"),
        (flipped(10), "chunk p/chunk-0.bin: 1000 bytes"),
        (d[..900].to_vec(), "chunk p/chunk-0.bin: 900 bytes"),
    ] {
        let e = run_with(&store, &input, &c, &pending.chunks, &mut NoProgress).unwrap_err();
        assert!(matches!(e, UploadError::Mismatch(_)), "{e:#}");
        assert!(format!("{e:#}").contains(says), "{e:#}");
    }
}

/// An encrypted resume uses the journal's sealing for a chunk with stored parts; a kept
/// sealing that was changed (another nonce, or another file key and header) does not
/// reproduce the stored parts, and the resume refuses it (the backup then starts afresh
/// with new keys) instead of encrypting the rest of the chunk under it.
#[test]
fn a_resume_with_a_kept_sealing_that_was_changed_is_a_mismatch() {
    use std::io::Read;
    let id = crate::age::Identity::generate().unwrap();
    let d = data(2500);
    let mut c = cfg(1000, 300, 1);
    c.keep_open_on_failure = true;
    c.encryption = Some(Encrypt {
        recipients: vec![id.recipient().clone()],
        resumed: BTreeMap::new(),
        unrecorded: BTreeMap::new(),
        checksum: crate::config::Checksum::Crc32c,
    });
    let (store, pending) = interrupted_run(&d, &c, "pipeline-sealed");
    let kept = pending.sealings[&1].clone();
    let with = |rec: &crate::journal::SealingRecord| {
        let mut c = c.clone();
        let mut resumed = BTreeMap::new();
        for (i, r) in &pending.sealings {
            resumed.insert(*i, if *i == 1 { rec } else { r }.sealing().unwrap());
        }
        c.encryption = Some(Encrypt {
            recipients: vec![id.recipient().clone()],
            resumed,
            unrecorded: BTreeMap::new(),
            checksum: crate::config::Checksum::Crc32c,
        });
        c
    };
    let mut nonce = kept.clone();
    nonce.nonce = if nonce.nonce.starts_with('0') {
        "1"
    } else {
        "0"
    }
    .to_string()
        + &kept.nonce[1..];
    let other = crate::journal::SealingRecord::of(
        &crate::age::Sealing::new(std::slice::from_ref(id.recipient())).unwrap(),
    );
    for changed in [nonce, other] {
        let e = run_with(
            &store,
            &d,
            &with(&changed),
            &pending.chunks,
            &mut NoProgress,
        )
        .unwrap_err();
        assert!(matches!(e, UploadError::Mismatch(_)), "{e:#}");
        assert!(format!("{e:#}").contains("chunk p/chunk-1.bin"), "{e:#}");
    }
    // The kept sealing as written resumes, and the chunks decrypt to the stream.
    let o = run_with(&store, &d, &with(&kept), &pending.chunks, &mut NoProgress).unwrap();
    assert!(o.resumed_bytes > 0);
    let mut plain = Vec::new();
    for ch in &o.chunks {
        let obj = store.object(&ch.key).unwrap();
        let mut dec = crate::age::Decryptor::new(&obj.data[..], std::slice::from_ref(&id)).unwrap();
        dec.read_to_end(&mut plain).unwrap();
    }
    assert_eq!(plain, d);
}

/// A part the bucket holds but the journal lost (sent, then killed before its record) is
/// sent again under the chunk's kept key and nonce only when its new ciphertext has the
/// checksum ListParts shows for it: the same bytes. Other bytes there (the stream changed
/// after the parts checked), or no checksum to compare, make the resume a mismatch (the
/// backup starts afresh with new keys) before anything of that part is sent.
#[test]
fn a_part_stored_but_not_recorded_is_sent_again_only_as_the_same_ciphertext() {
    use crate::journal::ChunkProgress;
    use crate::store::ListedPart;
    use std::io::Read;
    let id = crate::age::Identity::generate().unwrap();
    let d = data(2500);
    let mut c = cfg(1000, 300, 1);
    c.keep_open_on_failure = true;
    c.encryption = Some(Encrypt {
        recipients: vec![id.recipient().clone()],
        resumed: BTreeMap::new(),
        unrecorded: BTreeMap::new(),
        checksum: crate::config::Checksum::Crc32c,
    });
    // An interrupted run that stored parts 1 and 2 of chunk 1, whose journal lost part 2:
    // the store, the journal's chunks, part 2 as listed, and the resume's config with
    // `listed` (edited from it) as that part.
    let interrupted = |edit: &dyn Fn(&mut ListedPart)| {
        let (store, pending) = interrupted_run(&d, &c, "pipeline-unrecorded");
        let mut chunks = pending.chunks.clone();
        let Some(ChunkProgress::Open {
            key,
            upload_id,
            parts,
        }) = chunks.get_mut(&1)
        else {
            panic!("chunk 1 is open: {chunks:?}");
        };
        assert!(parts.remove(&2).is_some());
        let mut two = store.list_parts(key, upload_id).unwrap().remove(1);
        assert_eq!(two.number, 2);
        assert!(two.checksum.is_some());
        edit(&mut two);
        let mut c = c.clone();
        let resumed = pending
            .sealings
            .iter()
            .map(|(i, r)| (*i, r.sealing().unwrap()));
        c.encryption = Some(Encrypt {
            recipients: vec![id.recipient().clone()],
            resumed: resumed.collect(),
            unrecorded: BTreeMap::from([(1, BTreeMap::from([(2, two)]))]),
            checksum: crate::config::Checksum::Crc32c,
        });
        (store, chunks, c)
    };
    // Other bytes by the checksum; with no checksum listed, by the ETag as their MD5.
    let other_sum = |l: &mut ListedPart| l.checksum = Some("AAAAAA==".into());
    let other_md5 = |l: &mut ListedPart| {
        l.checksum = None;
        l.etag = format!("\"{}\"", "0".repeat(32));
    };
    for (edit, why) in [
        (
            &other_sum as &dyn Fn(&mut ListedPart),
            "with checksum AAAAAA==; encrypted again now it is other bytes",
        ),
        (
            &other_md5,
            "with ETag 00000000000000000000000000000000; encrypted again now",
        ),
    ] {
        let (store, chunks, c) = interrupted(edit);
        let e = run_with(&store, &d, &c, &chunks, &mut NoProgress).unwrap_err();
        assert!(matches!(e, UploadError::Mismatch(_)), "{e:#}");
        let e = format!("{e:#}");
        assert!(
            e.contains("part 2 of chunk p/chunk-1.bin") && e.contains(why),
            "{e}"
        );
    }
    // The same ciphertext goes again (told by its checksum, or by its MD5 when no checksum
    // is listed: moto, Ceph), and the chunks decrypt to the stream.
    let as_listed = |_: &mut ListedPart| {};
    let no_sum = |l: &mut ListedPart| l.checksum = None;
    for edit in [&as_listed as &dyn Fn(&mut ListedPart), &no_sum] {
        let (store, chunks, c) = interrupted(edit);
        let o = run_with(&store, &d, &c, &chunks, &mut NoProgress).unwrap();
        let mut plain = Vec::new();
        for ch in &o.chunks {
            let obj = store.object(&ch.key).unwrap();
            let mut dec =
                crate::age::Decryptor::new(&obj.data[..], std::slice::from_ref(&id)).unwrap();
            dec.read_to_end(&mut plain).unwrap();
        }
        assert_eq!(plain, d);
    }
}

/// A store whose UploadParts and PUTs wait until the gate opens (a slow link): the
/// uploaders hold every part buffer meanwhile.
struct Gated {
    inner: MemoryStore,
    open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Gated {
    fn wait(&self) {
        let g = self.open.0.lock().unwrap();
        let _ = self
            .open
            .1
            .wait_timeout_while(g, std::time::Duration::from_secs(30), |o| !*o)
            .unwrap();
    }
}

impl ObjectStore for Gated {
    fn put_object(
        &self,
        key: &str,
        body: Body<'_>,
        opts: &PutOptions,
    ) -> crate::store::StoreResult<String> {
        self.wait();
        self.inner.put_object(key, body, opts)
    }
    fn create_multipart(&self, key: &str, opts: &PutOptions) -> crate::store::StoreResult<String> {
        self.inner.create_multipart(key, opts)
    }
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body<'_>,
    ) -> crate::store::StoreResult<String> {
        self.wait();
        self.inner.upload_part(key, upload_id, part_number, body)
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> crate::store::StoreResult<String> {
        self.inner.complete_multipart(key, upload_id, parts)
    }
    fn abort_multipart(&self, key: &str, upload_id: &str) -> crate::store::StoreResult<()> {
        self.inner.abort_multipart(key, upload_id)
    }
    fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::ListedPart>> {
        self.inner.list_parts(key, upload_id)
    }
    fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::OpenUpload>> {
        self.inner.list_multipart_uploads(prefix)
    }
    fn list_objects(
        &self,
        prefix: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::ListedObject>> {
        self.inner.list_objects(prefix)
    }
    fn delete_object(&self, key: &str) -> crate::store::StoreResult<()> {
        self.inner.delete_object(key)
    }
    fn head(&self, key: &str) -> crate::store::StoreResult<Option<crate::store::ObjectMeta>> {
        self.inner.head(key)
    }
    fn head_bucket(&self) -> crate::store::StoreResult<()> {
        self.inner.head_bucket()
    }
    fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> crate::store::StoreResult<Box<dyn Read + Send>> {
        self.inner.get(key, range)
    }
    fn restore_object(&self, key: &str, days: u32, tier: &str) -> crate::store::StoreResult<()> {
        self.inner.restore_object(key, days, tier)
    }
}

/// The input, counting what has been read of it.
struct CountingReader {
    data: Vec<u8>,
    at: usize,
    read: Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (&self.data[self.at..]).read(buf)?;
        self.at += n;
        self.read.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

/// What the pipeline told its progress sink.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct Told {
    resuming: u64,
    verified: u64,
    sending: u32,
    sent: u64,
}

impl Progress for Arc<std::sync::Mutex<Told>> {
    fn upload_opened(&mut self, _: u64, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    fn part_stored(&mut self, _: u64, _: u32, _: &PartDone) -> Result<()> {
        Ok(())
    }
    fn chunk_stored(&mut self, _: u64, _: &str, _: &ChunkDone, _: &str) -> Result<()> {
        Ok(())
    }
    fn chunk_sealed(&mut self, _: u64, _: &crate::age::Sealing) -> Result<()> {
        Ok(())
    }
    fn resuming(&mut self, bytes: u64) {
        self.lock().unwrap().resuming += bytes;
    }
    fn verified(&mut self, bytes: u64) {
        self.lock().unwrap().verified += bytes;
    }
    fn sending(&mut self) {
        self.lock().unwrap().sending += 1;
    }
    fn sent(&mut self, bytes: u64) {
        self.lock().unwrap().sent += bytes;
    }
}

/// An open upload of `key` in `store` holding the parts `stored` of `d` (whole parts of
/// `part` bytes, numbered from 1), as a journal would describe it.
fn stored_upload(
    store: &dyn ObjectStore,
    key: &str,
    d: &[u8],
    part: usize,
    stored: impl Iterator<Item = u32>,
) -> ChunkProgress {
    let opts = cfg(1, 1, 1).chunk_opts;
    let upload_id = store.create_multipart(key, &opts).unwrap();
    let mut parts = BTreeMap::new();
    for n in stored {
        let end = (n as usize * part).min(d.len());
        let bytes = &d[(n as usize - 1) * part..end];
        let etag = store
            .upload_part(key, &upload_id, n, Body::Bytes(bytes))
            .unwrap();
        parts.insert(
            n,
            PartDone {
                size: bytes.len() as u64,
                sha256_through: crate::chunker::hex(&Sha256::digest(&d[..end])),
                etag,
            },
        );
    }
    ChunkProgress::Open {
        key: key.into(),
        upload_id,
        parts,
    }
}

#[test]
fn stored_parts_are_verified_while_every_part_buffer_is_with_a_slow_upload() {
    // One uploader, so two part buffers; parts 1 and 2 are new and wait on the link,
    // parts 3 to 10 were stored by an earlier run. Verifying them needs no part buffer:
    // the reader gets through them (and to the end) while the link holds both.
    let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let store = Arc::new(Gated {
        inner: MemoryStore::new(),
        open: open.clone(),
    });
    let d = data(1000);
    let mut resume = BTreeMap::new();
    resume.insert(
        0,
        stored_upload(&store.inner, "p/chunk-0.bin", &d, 100, 3..=10),
    );
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let told = Arc::new(std::sync::Mutex::new(Told::default()));
    let (s, r, t) = (store.clone(), read.clone(), told.clone());
    let input = d.clone();
    let run = std::thread::spawn(move || {
        let mut input = CountingReader {
            data: input,
            at: 0,
            read: r,
        };
        let mut t = t;
        let s = ChunkWriter::new(s);
        upload_stream(
            &mut input,
            s,
            retrier(),
            &cfg(1000, 100, 1),
            &key,
            &resume,
            &mut t,
        )
    });
    // Opens the gate however this test ends, so the run's thread ends too.
    struct Opener(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);
    impl Drop for Opener {
        fn drop(&mut self) {
            *self.0 .0.lock().unwrap() = true;
            self.0 .1.notify_all();
        }
    }
    let opener = Opener(open);
    let t0 = std::time::Instant::now();
    while read.load(Ordering::SeqCst) < d.len() && t0.elapsed().as_secs() < 3 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let got = read.load(Ordering::SeqCst);
    drop(opener);
    let o = run.join().unwrap().unwrap();
    assert_eq!(
        got,
        d.len(),
        "the stored parts waited for a part buffer held by a slow upload"
    );
    assert_eq!(reassemble(&store.inner, &o), d);
    assert_eq!((o.uploaded_bytes, o.resumed_bytes), (200, 800));
    assert!(o.upload_time > Duration::ZERO);
    let t = told.lock().unwrap().clone();
    assert_eq!(
        t,
        Told {
            resuming: 800,
            verified: 800,
            sending: 1,
            sent: 200,
        }
    );
}

#[test]
fn a_resume_with_everything_stored_touches_no_spool_and_sends_nothing() {
    // The spool directory cannot be used: only a part that is sent would need it.
    let store = Arc::new(MemoryStore::new());
    let d = data(1000);
    let mut resume = BTreeMap::new();
    resume.insert(
        0,
        stored_upload(store.as_ref(), "p/chunk-0.bin", &d, 300, 1..=4),
    );
    let c = spooled(
        1000,
        300,
        2,
        std::path::Path::new("/proc/no-such-dir"),
        10_000,
    );
    let told = Arc::new(std::sync::Mutex::new(Told::default()));
    let o = run_with(&store, &d, &c, &resume, &mut told.clone()).unwrap();
    assert_eq!(reassemble(&store, &o), d);
    assert_eq!((o.uploaded_bytes, o.resumed_bytes), (0, 1000));
    assert_eq!(o.upload_time, Duration::ZERO);
    assert!(o.first_new_byte > Duration::ZERO);
    let t = told.lock().unwrap().clone();
    assert_eq!((t.verified, t.sending, t.sent), (1000, 0, 0));
}

#[test]
fn a_network_outage_mid_upload_is_ridden_out_by_the_same_run() {
    let store = Arc::new(MemoryStore::new());
    let r = Arc::new(
        crate::testing::retrier().with_outage(crate::outage::Outage::new(
            std::time::Duration::ZERO,
            crate::outage::Backoff {
                first: std::time::Duration::from_millis(10),
                cap: std::time::Duration::from_millis(40),
            },
            Arc::new(crate::outage::RealClock),
        )),
    );
    let probe = store.clone();
    r.outage().enable(
        std::time::Duration::from_secs(60),
        Arc::new(move || probe.probe()),
    );
    // The service answered this run before (the backup's first listing).
    r.outage().online();
    store.set_offline(true);
    let s2 = store.clone();
    let lift = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        s2.set_offline(false);
    });
    let d = data(5000);
    let s = ChunkWriter::new(store.clone());
    let o = upload_stream(
        &mut &d[..],
        s,
        r.clone(),
        &cfg(1000, 300, 3),
        &key,
        &BTreeMap::new(),
        &mut NoProgress,
    )
    .unwrap();
    lift.join().unwrap();
    assert_eq!(reassemble(&store, &o), d);
    assert_eq!(r.outage().outages(), 1);
    assert!(r.outage().probes() >= 2, "{}", r.outage().probes());
    assert!(!r.outage().is_down());
    // One prober: each uploader sent its request, retried it once, then waited; the
    // probes (HeadBucket) did the asking until the link came back.
    let log = store.log();
    let heads = count(&log, "HeadBucket");
    let sends = log.len() - heads;
    assert!(heads as u64 == r.outage().probes(), "{log:?}");
    // 5 chunks of 4 parts (create, 4 parts, complete) and at most 3 requests × 2 lost.
    assert!(sends <= 5 * 6 + 3 * 2, "{sends}: {log:?}");
}

/// A resumed chunk is written only at the key the pipeline names it (`key_for`): a
/// journal that names another key (which `Pending::check` refuses first) stops the run
/// before anything is sent.
#[test]
fn a_resumed_chunk_at_another_key_is_refused() {
    let store = Arc::new(MemoryStore::new());
    let d = data(1000);
    let mut resume = BTreeMap::new();
    resume.insert(
        0,
        stored_upload(store.as_ref(), "p/elsewhere.bin", &d, 100, 1..=2),
    );
    let before = store.log().len();
    let e = run_with(&store, &d, &cfg(1000, 100, 1), &resume, &mut NoProgress).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("\"p/elsewhere.bin\" for chunk 0, which is p/chunk-0.bin"),
        "{e}"
    );
    assert_eq!(store.log().len(), before, "{:?}", store.log());
}
