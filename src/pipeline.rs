//! The upload pipeline: the calling thread reads the send stream, cuts and hashes it
//! (`chunker`), and hands parts to a pool of `concurrency` uploader threads over
//! crossbeam channels. Buffers circulate: at most `concurrency + 1` part buffers exist,
//! which is the memory bound. A chunk that fits in one part is one PutObject; a larger one
//! is a multipart upload whose parts go up in parallel. Completing a multipart upload is a
//! job for the pool too, so the reader goes on with the next chunk while the service
//! assembles the last one. Only part jobs carry a buffer; the channels are unbounded because
//! the buffers, not the queue, bound memory (a queued completion is a list of part ETags).
//! Each chunk's upload is a small state machine ([`Life`]): put, or open → parts stored →
//! completing → stored. A resumed backup passes what an earlier run stored: those parts
//! and chunks are read and hashed as usual but not sent again, and a fresh hash that
//! differs from the earlier one is a [`ResumeMismatch`]. A stored part takes no part buffer
//! and does no upload-path work: it is read through one small buffer that stays in cache,
//! hashed, compared and forgotten. Every upload opened, part stored and chunk stored is
//! reported to a [`Progress`] sink (the resume journal, the progress meter) on this thread,
//! and so are the bytes verified and sent, which the run's timings come from.
//! On failure the pool stops (no retries, no new jobs), requests in flight get a short
//! grace period, and open multipart uploads are kept for the resume or aborted
//! (`keep_open_on_failure`); the first error is returned, as an [`UploadError`] that says
//! whether a store request failed, the stream differs from a resumed run's, or something
//! else went wrong (decided where each is known: the uploader whose request failed, the
//! comparison that found the difference). With a spool, part buffers are
//! unnamed files in the spool directory instead of memory. With encryption
//! ([`Encrypt`]), the stream is first turned into one age file per chunk
//! (`pipeline/encrypt.rs`), and everything above (parts, hashes, sizes, resume) is about
//! those files; each chunk's [`Sealing`] is reported to the journal before any of its
//! bytes go up, and a resumed chunk reuses the one the journal kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::age::{ciphertext_size, plaintext_size, Recipient, Sealing};
use crate::chunker::{ChunkDone, Cutter, StreamSummary};
use crate::event;
use crate::journal::{ChunkProgress, PartDone};
use crate::manifest::ChunkKey;
use crate::repo::writer::ChunkWriter;
use crate::retry::Retrier;
use crate::store::{Body, ListedPart, PutOptions, StoreResult};

// The part-size arithmetic is the leaf `parts`'s; named here too for older callers.
pub use crate::parts::effective_part_size;

/// Spool parts to files in `dir`, using at most `max_bytes` of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spool {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub chunk_size: u64,
    pub part_size: u64,
    pub concurrency: usize,
    pub chunk_opts: PutOptions,
    pub spool: Option<Spool>,
    /// On failure, leave open multipart uploads for a resume (the journal knows them)
    /// instead of aborting them.
    pub keep_open_on_failure: bool,
    /// Encrypt each chunk to age recipients (`None`: chunks are the stream's bytes).
    pub encryption: Option<Encrypt>,
}

/// Encryption of a backup's chunks: the recipients, and the sealings an earlier run used
/// for the chunks it started (a resume re-encrypts them to the same bytes).
#[derive(Clone, Debug)]
pub struct Encrypt {
    pub recipients: Vec<Recipient>,
    pub resumed: BTreeMap<u64, Sealing>,
    /// Parts of resumed chunks the bucket holds but the journal does not record, as
    /// ListParts showed them (`Repo::stored`): such a part is sent again only when its new
    /// bytes have the listed checksum, or when none is listed the listed ETag as their MD5
    /// (the same ciphertext); otherwise the resume is a [`ResumeMismatch`] (the backup
    /// starts afresh, new keys), never other plaintext under a key and nonce already used.
    pub unrecorded: BTreeMap<u64, BTreeMap<u32, ListedPart>>,
    /// The algorithm of the listed checksums (`s3.checksum`).
    pub checksum: crate::config::Checksum,
}

/// An encrypted chunk, as the manifest's sealed part records it (defined in the leaf
/// `encryption`, which seals the manifest's part from these).
pub use crate::encryption::SealedChunk;

impl PipelineConfig {
    /// Part buffers that can exist at once: one per uploader and one being filled. A spool
    /// holds at most as many as fit in its size.
    pub fn max_buffers(&self) -> usize {
        let n = self.concurrency.max(1) + 1;
        match &self.spool {
            None => n,
            Some(s) => n.min((s.max_bytes / self.part_size.max(1)) as usize),
        }
    }
}

/// One part's bytes: in memory, or in an (already unlinked) spool file.
enum PartBuf {
    Mem(Vec<u8>),
    Spool { file: File, len: u64 },
}

impl PartBuf {
    fn body(&self) -> Body<'_> {
        match self {
            PartBuf::Mem(v) => Body::Bytes(v),
            PartBuf::Spool { file, len } => Body::File { file, len: *len },
        }
    }
}

/// Size of the bounce buffer used to copy the stream into spool files.
const SPOOL_COPY: usize = 1 << 20;

/// One uploaded chunk, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub etag: Option<String>,
    /// With encryption: what the chunk's age file holds.
    pub sealed: Option<SealedChunk>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub chunks: Vec<ChunkRecord>,
    pub summary: StreamSummary,
    pub parts: u64,
    /// Bytes sent to the store by this run.
    pub uploaded_bytes: u64,
    /// Bytes not sent because an earlier run had stored them (resume).
    pub resumed_bytes: u64,
    /// Bytes of the send stream (with encryption: of plaintext; `summary` counts stored
    /// bytes and has no stream hash).
    pub stream_bytes: u64,
    /// From the start of reading to the first byte this run sent (handed to an uploader);
    /// to the end of the stream when it sent nothing. For a resume, the time the stored
    /// prefix took to verify before the link was used again.
    pub first_new_byte: Duration,
    /// From the first byte this run sent to its last upload stored (zero when it sent
    /// nothing): what `uploaded_bytes` took on the link.
    pub upload_time: Duration,
}

/// What the pipeline reports as uploads make progress: the resume journal. Called on the
/// reading thread, in order; an error fails the run.
pub trait Progress {
    fn upload_opened(&mut self, chunk: u64, key: &str, upload_id: &str) -> Result<()>;
    fn part_stored(&mut self, chunk: u64, part: u32, p: &PartDone) -> Result<()>;
    fn chunk_stored(&mut self, chunk: u64, key: &str, d: &ChunkDone, etag: &str) -> Result<()>;
    /// A chunk's age file is sealed with `sealing` (encryption only): called after its
    /// first bytes are read and before any of them is sent.
    fn chunk_sealed(&mut self, chunk: u64, sealing: &Sealing) -> Result<()>;
    /// Requests (parts, puts, completions) now with the uploaders (for progress lines).
    fn requests_in_flight(&mut self, _n: usize) {}
    /// Of those, CompleteMultipartUploads (the service may assemble silently for long).
    fn completions_in_flight(&mut self, _n: usize) {}
    /// A resume begins: `bytes` of the stream are stored already and will be verified.
    fn resuming(&mut self, _bytes: u64) {}
    /// `bytes` more of what an earlier run stored were read and hashed (a stored part, or
    /// part of a stored chunk), not sent.
    fn verified(&mut self, _bytes: u64) {}
    /// The first byte this run sends is handed to the uploaders (once per run).
    fn sending(&mut self) {}
    /// `bytes` of a part or chunk this run sent are stored.
    fn sent(&mut self, _bytes: u64) {}
}

/// No journal (tests).
#[cfg(test)]
pub struct NoProgress;

#[cfg(test)]
impl Progress for NoProgress {
    fn upload_opened(&mut self, _: u64, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    fn part_stored(&mut self, _: u64, _: u32, _: &PartDone) -> Result<()> {
        Ok(())
    }
    fn chunk_stored(&mut self, _: u64, _: &str, _: &ChunkDone, _: &str) -> Result<()> {
        Ok(())
    }
    fn chunk_sealed(&mut self, _: u64, _: &Sealing) -> Result<()> {
        Ok(())
    }
}

/// The fresh stream differs from what an earlier run stored (a part's or chunk's SHA-256
/// or size is not the journal's): nothing of that earlier run can be trusted.
#[derive(Debug)]
pub struct ResumeMismatch(pub String);

impl std::fmt::Display for ResumeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the stream differs from the interrupted run's: {}",
            self.0
        )
    }
}

impl std::error::Error for ResumeMismatch {}

/// Why an upload stopped, decided where it was known; the caller matches on it (keep the
/// backup for a resume, abandon it, start fresh). Each holds the message, context and all.
#[derive(Debug)]
pub enum UploadError {
    /// A request to the store failed after its retries (the network or S3): what is
    /// stored stays good, and the next run can go on from it.
    Store(anyhow::Error),
    /// The fresh stream differs from what the interrupted run stored
    /// ([`ResumeMismatch`]): nothing of that run can be trusted.
    Mismatch(anyhow::Error),
    /// Anything else (the stream could not be read, a journal write, a stop, a bug):
    /// it would fail the same way again.
    Other(anyhow::Error),
}

impl UploadError {
    /// Adds `what` in front of the message (as `anyhow`'s `context`), keeping the cause.
    pub fn context(self, what: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            UploadError::Store(e) => UploadError::Store(e.context(what)),
            UploadError::Mismatch(e) => UploadError::Mismatch(e.context(what)),
            UploadError::Other(e) => UploadError::Other(e.context(what)),
        }
    }

    /// The error, to print or to pass on.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            UploadError::Store(e) | UploadError::Mismatch(e) | UploadError::Other(e) => e,
        }
    }
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.error(), f)
    }
}

impl From<anyhow::Error> for UploadError {
    fn from(e: anyhow::Error) -> Self {
        UploadError::Other(e)
    }
}

impl From<ResumeMismatch> for UploadError {
    fn from(m: ResumeMismatch) -> Self {
        UploadError::Mismatch(m.into())
    }
}

impl From<UploadError> for anyhow::Error {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Store(e) | UploadError::Mismatch(e) | UploadError::Other(e) => e,
        }
    }
}

/// How long a stopping run waits for requests in flight before leaving them behind (the
/// process exits soon after; a resume does not need them).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How often a waiting reader looks at the cancel flag.
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// The buffer stored parts are read through on a resume: small enough to stay in the
/// core's cache between the pipe's copy and the hash (a part buffer is 16 MiB or more).
const VERIFY_READ: usize = 256 << 10;

enum Job {
    Put {
        chunk: u64,
        key: Arc<ChunkKey>,
        buf: PartBuf,
    },
    Part {
        chunk: u64,
        key: Arc<ChunkKey>,
        upload_id: Arc<str>,
        part: u32,
        buf: PartBuf,
    },
    Complete {
        chunk: u64,
        key: Arc<ChunkKey>,
        upload_id: Arc<str>,
        parts: Vec<(u32, String)>,
    },
}

/// What a finished job did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Did {
    Put,
    Part(u32),
    Complete,
}

struct Done {
    chunk: u64,
    did: Did,
    result: Result<String, UploadError>,
    buf: Option<PartBuf>,
}

/// One chunk's upload, from its first part to stored. Reading (the chunk's end, kept in
/// [`Slot::closed`]) runs beside it: a multipart upload completes once both its end was
/// read and its parts are stored.
enum Life {
    /// An earlier run stored it whole (resume): its bytes are only hashed and compared.
    Resumed {
        size: u64,
        sha256: String,
        etag: String,
    },
    /// Its one PutObject is queued or running.
    Putting,
    /// A multipart upload is open and takes parts.
    Open {
        upload_id: Arc<str>,
        /// Stored parts' ETags, by part number.
        etags: BTreeMap<u32, String>,
        /// Parts queued or running.
        in_flight: usize,
        next_part: u32,
        /// Parts an earlier run stored (resume), compared as their bytes come by.
        resumed: BTreeMap<u32, PartDone>,
        /// Size and hash-through of parts queued or running, for the journal.
        sent: BTreeMap<u32, (u64, String)>,
    },
    /// Its CompleteMultipartUpload is queued or running.
    Completing { upload_id: Arc<str> },
    /// Stored whole by this run.
    Stored { etag: String },
}

struct Slot {
    key: Arc<ChunkKey>,
    life: Life,
    /// With encryption: the chunk's sealing.
    sealing: Option<Sealing>,
    /// The chunk's end has been read: its size and SHA-256.
    closed: Option<ChunkDone>,
    /// The journal has been told the chunk is stored.
    reported: bool,
}

impl Slot {
    fn upload_id(&self) -> Option<&Arc<str>> {
        match &self.life {
            Life::Open { upload_id, .. } | Life::Completing { upload_id } => Some(upload_id),
            _ => None,
        }
    }
}

/// The key of chunk `index` that an earlier run stored or opened: `key_for(index)`, which
/// the journal's `key` must be (`Pending::check` held it to that; a differing one is a
/// bug, not a key to write at).
fn resumed_key(
    key_for: &dyn Fn(u64) -> ChunkKey,
    index: u64,
    key: &str,
) -> Result<ChunkKey, UploadError> {
    let want = key_for(index);
    if want != *key {
        return Err(anyhow!(
            "internal: the resume journal names {key:?} for chunk {index}, which is {want}"
        )
        .into());
    }
    Ok(want)
}

/// Uploads everything `input` yields; `key_for(i)` names chunk `i`. What `resume` says is
/// stored is not sent again, only hashed and compared; `progress` hears of every upload
/// opened, part stored and chunk stored.
pub fn upload_stream(
    input: &mut dyn Read,
    store: ChunkWriter,
    retrier: Arc<Retrier>,
    cfg: &PipelineConfig,
    key_for: &dyn Fn(u64) -> ChunkKey,
    resume: &BTreeMap<u64, ChunkProgress>,
    progress: &mut dyn Progress,
) -> Result<Uploaded, UploadError> {
    if cfg.max_buffers() < 1 {
        let spool = cfg.spool.as_ref().map(|s| s.max_bytes).unwrap_or(0);
        return Err(anyhow!(
            "global.spool_size_bytes = {spool} cannot hold one part of {} bytes; raise it",
            cfg.part_size
        )
        .into());
    }
    let (job_tx, job_rx) = unbounded::<Job>();
    let (done_tx, done_rx) = unbounded::<Done>();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|i| {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            let (store, retrier, stop) = (store.clone(), retrier.clone(), stop.clone());
            let opts = cfg.chunk_opts.clone();
            std::thread::Builder::new()
                .name(format!("uploader-{i}"))
                .spawn(move || worker(rx, tx, &store, &retrier, &opts, &stop))
        })
        .collect::<std::io::Result<_>>()
        .context("starting uploader threads")?;
    drop((job_rx, done_tx));

    if !resume.is_empty() {
        progress.resuming(crate::journal::stored_bytes(resume));
    }
    let mut run = Run {
        store: &store,
        retrier: &retrier,
        cfg,
        resume,
        progress,
        jobs: Some(job_tx),
        done: done_rx,
        free: Vec::new(),
        allocated: 0,
        bounce: Vec::new(),
        verify: Vec::new(),
        slots: BTreeMap::new(),
        in_flight: 0,
        completing: 0,
        parts: 0,
        uploaded: 0,
        resumed: 0,
        started: Instant::now(),
        first_send: None,
        error: None,
    };
    let result = run.read_all(input, key_for);
    let result = match (result, run.error.take()) {
        (_, Some(e)) | (Err(e), None) => Err(e),
        (Ok(o), None) => Ok(o),
    };
    if result.is_err() {
        stop.store(true, Ordering::SeqCst);
    }
    run.jobs = None;
    let drained = run.drain(result.is_err());
    let result = if drained {
        match (result, crate::worker::join_all(workers, "uploading")) {
            (Ok(_), Err(e)) => Err(e.into()),
            (r, _) => r,
        }
    } else {
        // Requests still in flight after the grace period: they end on their own (the
        // job channel is closed) or with the process; waiting would make a stop slow.
        event!(
            Warn,
            "uploads_left_in_flight",
            requests = run.in_flight,
            grace_seconds = DRAIN_GRACE.as_secs()
        );
        result
    };
    match result {
        Ok(o) => Ok(o),
        Err(e) => {
            if !cfg.keep_open_on_failure {
                run.abort_open();
            }
            Err(e)
        }
    }
}

fn worker(
    jobs: Receiver<Job>,
    done: Sender<Done>,
    store: &ChunkWriter,
    retrier: &Retrier,
    opts: &PutOptions,
    stop: &AtomicBool,
) {
    // One request under the retry policy, unless the run is being stopped; retrying ends
    // as soon as it is. A panic in it is this job's error: the reader then stops the run
    // instead of waiting forever.
    let attempt = |request: &mut dyn FnMut() -> StoreResult<String>| {
        if stop.load(Ordering::SeqCst) || retrier.cancelled() {
            return Err(UploadError::Other(anyhow!("cancelled")));
        }
        crate::worker::catch(|| retrier.run_until(stop, request))
            .map_err(|m| UploadError::Other(anyhow!(m)))?
            .map_err(|e| UploadError::Store(e.into()))
    };
    for job in jobs {
        let (chunk, did, key, result, buf) = match job {
            Job::Put { chunk, key, buf } => {
                let r = attempt(&mut || store.put_object(&key, buf.body(), opts));
                (chunk, Did::Put, key, r, Some(buf))
            }
            Job::Part {
                chunk,
                key,
                upload_id,
                part,
                buf,
            } => {
                let r = attempt(&mut || store.upload_part(&key, &upload_id, part, buf.body()));
                crate::failpoint::hit("after_part_request");
                (chunk, Did::Part(part), key, r, Some(buf))
            }
            Job::Complete {
                chunk,
                key,
                upload_id,
                parts,
            } => {
                let r = attempt(&mut || store.complete_multipart(&key, &upload_id, &parts));
                crate::failpoint::hit("after_complete_request");
                (chunk, Did::Complete, key, r, None)
            }
        };
        let result = result.map_err(|e| {
            e.context(match did {
                Did::Put => format!("uploading chunk {key}"),
                Did::Part(n) => format!("uploading part {n} of chunk {key}"),
                Did::Complete => format!("completing the multipart upload of chunk {key}"),
            })
        });
        if done
            .send(Done {
                chunk,
                did,
                result,
                buf,
            })
            .is_err()
        {
            return;
        }
    }
}

struct Run<'a> {
    store: &'a ChunkWriter,
    retrier: &'a Retrier,
    cfg: &'a PipelineConfig,
    resume: &'a BTreeMap<u64, ChunkProgress>,
    progress: &'a mut dyn Progress,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    free: Vec<PartBuf>,
    allocated: usize,
    bounce: Vec<u8>,
    /// What stored parts are read through ([`VERIFY_READ`]).
    verify: Vec<u8>,
    slots: BTreeMap<u64, Slot>,
    in_flight: usize,
    /// CompleteMultipartUploads among `in_flight`.
    completing: usize,
    parts: u64,
    uploaded: u64,
    resumed: u64,
    started: Instant,
    /// When the first part or PUT of this run was handed to an uploader.
    first_send: Option<Instant>,
    error: Option<UploadError>,
}

/// The stream as the pipeline reads it: the send stream, or its age files.
enum Src<'a> {
    Plain(&'a mut dyn Read),
    Age(Box<encrypt::AgeChunks<'a>>),
}

impl Read for Src<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Src::Plain(r) => r.read(buf),
            Src::Age(a) => a.read(buf),
        }
    }
}

/// The input with one byte of look-ahead.
struct Peek<'a> {
    inner: Src<'a>,
    byte: Option<u8>,
}

impl Peek<'_> {
    /// True when the input has ended; otherwise keeps the next byte for the next read.
    fn at_eof(&mut self) -> std::io::Result<bool> {
        if self.byte.is_some() {
            return Ok(false);
        }
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(true),
                Ok(_) => {
                    self.byte = Some(b[0]);
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for Peek<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.byte.take() {
            Some(b) => {
                buf[0] = b;
                Ok(1)
            }
            None => self.inner.read(buf),
        }
    }
}

/// A new spool file in `dir` that has no name at all (`O_TMPFILE`; where the filesystem
/// lacks it, a random name opened with `O_EXCL` and unlinked at once, through
/// `tempfile`): no file planted in the directory can be followed, truncated or reused,
/// and its space is freed when the run ends, however it ends.
fn spool_file(dir: &std::path::Path) -> Result<PartBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating global.spool_dir {}", dir.display()))?;
    let file = tempfile::tempfile_in(dir).with_context(|| {
        format!(
            "creating an unnamed spool file in {} (global.spool_dir)",
            dir.display()
        )
    })?;
    Ok(PartBuf::Spool { file, len: 0 })
}

/// Reads until `buf` holds `want` bytes or the input ends, feeding each read's bytes to
/// the cutter at once; returns the bytes read and the chunk they completed, if any.
///
/// Hashing each read while it is still in cache, instead of the whole part after it is
/// full, also lets `btrfs send` refill the pipe meanwhile: the next read finds more bytes,
/// and the two processes wake each other less often.
fn fill_mem(
    input: &mut dyn Read,
    buf: &mut Vec<u8>,
    want: usize,
    cutter: &mut Cutter,
) -> std::io::Result<(usize, Option<ChunkDone>)> {
    // Reuse what the buffer already holds; only growth is zero-filled.
    if buf.len() < want {
        buf.resize(want, 0);
    } else {
        buf.truncate(want);
    }
    let mut n = 0;
    let mut done = None;
    while n < want {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                done = cutter.feed(&buf[n..n + k]);
                n += k;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(n);
                return Err(e);
            }
        }
    }
    buf.truncate(n);
    Ok((n, done))
}

/// Before an encrypted part goes again where the bucket holds one the journal does not
/// record: its bytes must be the listed part's (the same ciphertext, so the same plaintext
/// under the chunk's kept key and nonce), by the listed checksum, or, when the service
/// lists none, by the ETag as the part's MD5 (what S3 and its peers make it, except with
/// SSE-KMS). Otherwise a [`ResumeMismatch`]: the backup starts afresh with new keys.
fn same_as_listed(
    buf: &PartBuf,
    algo: crate::config::Checksum,
    listed: &ListedPart,
    part: u32,
    key: &str,
) -> Result<(), UploadError> {
    let reading = || format!("reading the spooled part {part} of chunk {key}");
    // Positioned reads: a spool file's offset is not moved.
    let (ours, theirs, what) = match &listed.checksum {
        Some(sum) => {
            let ours = match buf {
                PartBuf::Mem(v) => algo.of_bytes(v),
                PartBuf::Spool { .. } => algo
                    .of_reader(&mut buf.body().reader())
                    .with_context(reading)?,
            };
            (ours.unwrap_or_default(), sum.clone(), "checksum")
        }
        None => {
            use md5::{Digest, Md5};
            let mut h = Md5::new();
            std::io::copy(&mut buf.body().reader(), &mut h).with_context(reading)?;
            let ours: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            let etag = listed.etag.trim().trim_matches('"').to_ascii_lowercase();
            (ours, etag, "ETag")
        }
    };
    if ours == theirs {
        return Ok(());
    }
    Err(ResumeMismatch(format!(
        "part {part} of chunk {key} is in the bucket but not in the journal, with {what} \
         {theirs}; encrypted again now it is other bytes ({what} {ours}); not storing other \
         data under the same key"
    ))
    .into())
}

/// Fills one part (memory or spool file) with up to `want` bytes, feeding the cutter;
/// returns the bytes read and the chunk these bytes completed, if any.
fn fill(
    input: &mut dyn Read,
    buf: &mut PartBuf,
    want: usize,
    cutter: &mut Cutter,
    bounce: &mut Vec<u8>,
) -> Result<(usize, Option<ChunkDone>)> {
    match buf {
        PartBuf::Mem(v) => {
            fill_mem(input, v, want, cutter).context("reading the btrfs send stream")
        }
        PartBuf::Spool { file, len } => {
            bounce.resize(SPOOL_COPY, 0);
            let mut n = 0;
            let mut done = None;
            while n < want {
                let (k, d) = fill_mem(input, bounce, (want - n).min(SPOOL_COPY), cutter)
                    .context("reading the btrfs send stream")?;
                if k == 0 {
                    break;
                }
                file.write_all_at(&bounce[..k], n as u64)
                    .context("writing a part to the spool file (global.spool_dir)")?;
                done = d.or(done);
                n += k;
            }
            *len = n as u64;
            Ok((n, done))
        }
    }
}

/// Reads up to `want` bytes of a part an earlier run stored, through `buf` (at most
/// [`VERIFY_READ`] at a time, so it stays in cache), feeding the cutter; returns the bytes
/// read and the chunk they completed, if any. Nothing is kept.
fn verify_fill(
    input: &mut dyn Read,
    buf: &mut Vec<u8>,
    want: usize,
    cutter: &mut Cutter,
) -> Result<(usize, Option<ChunkDone>)> {
    let mut n = 0;
    let mut done = None;
    while n < want {
        let (k, d) = fill_mem(input, buf, (want - n).min(VERIFY_READ), cutter)
            .context("reading the btrfs send stream")?;
        if k == 0 {
            break;
        }
        done = d.or(done);
        n += k;
    }
    Ok((n, done))
}

impl Run<'_> {
    fn read_all(
        &mut self,
        input: &mut dyn Read,
        key_for: &dyn Fn(u64) -> ChunkKey,
    ) -> Result<Uploaded, UploadError> {
        // With encryption the cutter cuts age files: a full chunk's file is its plaintext
        // plus a header (of one length for given recipients), a nonce and block tags.
        let header_len = match &self.cfg.encryption {
            None => None,
            Some(e) => Some(
                Sealing::new(&e.recipients)
                    .context("encrypting to encryption.recipients")?
                    .header()
                    .as_bytes()
                    .len() as u64,
            ),
        };
        let (mut cutter, inner) = match header_len {
            None => (
                Cutter::new(self.cfg.chunk_size, self.cfg.part_size),
                Src::Plain(input),
            ),
            Some(h) => (
                Cutter::chunks_only(ciphertext_size(self.cfg.chunk_size, h), self.cfg.part_size),
                Src::Age(Box::new(encrypt::AgeChunks::new(
                    input,
                    self.cfg.chunk_size,
                ))),
            ),
        };
        let mut input = Peek { inner, byte: None };
        loop {
            if self.error.is_some() {
                return Err(anyhow!("upload failed").into());
            }
            if self.retrier.cancelled() {
                return Err(anyhow!("interrupted by a signal").into());
            }
            let want = cutter.next_part_len();
            let index = cutter.chunk_index();
            let first_part = cutter.in_chunk() == 0;
            let sealing = match (&mut input.inner, first_part, header_len) {
                (Src::Age(a), true, Some(h)) => Some(self.sealing_for(index, h, a)?),
                _ => None,
            };
            // A part an earlier run stored is only read, hashed and compared: no part
            // buffer (none is waited for), no spool file, nothing for the uploaders.
            let (buf, n, done) = if self.is_stored(index, first_part) {
                let (n, done) = verify_fill(&mut input, &mut self.verify, want, &mut cutter)?;
                (None, n, done)
            } else {
                // Where a new chunk would begin, the stream may be over: no buffer then.
                if first_part && input.at_eof().context("reading the btrfs send stream")? {
                    break;
                }
                let mut buf = self.buffer()?;
                let (n, done) = fill(&mut input, &mut buf, want, &mut cutter, &mut self.bounce)?;
                (Some(buf), n, done)
            };
            if n == 0 {
                self.free.extend(buf);
                break;
            }
            let eof = n < want;
            if let (Some(s), false) = (&sealing, self.resume.contains_key(&index)) {
                self.progress.chunk_sealed(index, s)?;
            }
            if first_part {
                match self.resume.get(&index) {
                    Some(ChunkProgress::Stored {
                        key,
                        size,
                        sha256,
                        etag,
                    }) => {
                        let key = resumed_key(key_for, index, key)?;
                        self.begin_resumed(index, key, *size, sha256, etag)
                    }
                    Some(ChunkProgress::Open {
                        key,
                        upload_id,
                        parts,
                    }) => {
                        let key = resumed_key(key_for, index, key)?;
                        self.begin_reopened(index, key, upload_id, parts)
                    }
                    None => {
                        // A chunk that fits in this one part is a single PUT. When the
                        // part is full and the chunk could go on, one byte of look-ahead
                        // tells.
                        let single = done.is_some()
                            || eof
                            || input.at_eof().context("reading the btrfs send stream")?;
                        if single {
                            self.begin_put(index, key_for(index));
                        } else {
                            self.start_multipart(index, key_for(index))?;
                        }
                    }
                }
                self.slot(index)?.sealing = sealing;
            }
            // The chunk's hash through this part: when this part ended the chunk, the
            // cutter has moved on to the next one, and the chunk's hash is in `done`.
            let through = match &done {
                Some(d) => d.sha256.clone(),
                None => cutter.chunk_sha256_so_far(),
            };
            self.part(index, buf, n as u64, through)?;
            if let Some(d) = done {
                self.close(d)?;
            }
            if eof {
                break;
            }
        }
        let (last, summary) = cutter.finish();
        if let Some(d) = last {
            self.close(d)?;
        }
        let stream_bytes = match &input.inner {
            Src::Plain(_) => summary.total_bytes,
            Src::Age(a) => a.plain_total(),
        };
        if let Some((i, _)) = self.resume.range(self.slots.len() as u64..).next() {
            return Err(ResumeMismatch(format!(
                "the interrupted run stored chunk {i}, but the stream now ends before it"
            ))
            .into());
        }
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let end = Instant::now();
        let (first_new_byte, upload_time) = match self.first_send {
            Some(t) => (t - self.started, end - t),
            None => (end - self.started, Duration::ZERO),
        };
        let mut chunks = Vec::with_capacity(self.slots.len());
        for (i, s) in std::mem::take(&mut self.slots) {
            let d = s
                .closed
                .ok_or_else(|| anyhow!("internal: chunk {i} was never closed"))?;
            let etag = match s.life {
                Life::Resumed { etag, .. } | Life::Stored { etag } => etag,
                _ => return Err(anyhow!("internal: chunk {} was never stored", s.key).into()),
            };
            let sealed = match (&s.sealing, header_len) {
                (Some(sealing), Some(h)) => Some(SealedChunk {
                    header_sha256: sealing.header().digest(),
                    plain_size: plaintext_size(d.len, h).ok_or_else(|| {
                        anyhow!("internal: chunk {} is not an age file's size", s.key)
                    })?,
                }),
                (None, None) => None,
                _ => return Err(anyhow!("internal: chunk {} has no sealing", s.key).into()),
            };
            chunks.push(ChunkRecord {
                key: s.key.to_string(),
                size: d.len,
                sha256: d.sha256,
                etag: Some(etag),
                sealed,
            });
        }
        Ok(Uploaded {
            chunks,
            summary,
            parts: self.parts,
            uploaded_bytes: self.uploaded,
            resumed_bytes: self.resumed,
            stream_bytes,
            first_new_byte,
            upload_time,
        })
    }

    /// The sealing of chunk `index`'s age file, handed to `age` before its first byte is
    /// read: the one an earlier run used (resume), else a fresh one.
    fn sealing_for(
        &mut self,
        index: u64,
        header_len: u64,
        age: &mut encrypt::AgeChunks<'_>,
    ) -> Result<Sealing, UploadError> {
        let enc = self
            .cfg
            .encryption
            .as_ref()
            .ok_or_else(|| anyhow!("internal: sealing without encryption"))?;
        if !age.between_files() {
            return Err(anyhow!(
                "internal: chunk {index} begins inside the previous chunk's age file"
            )
            .into());
        }
        let sealing = match (enc.resumed.get(&index), self.resume.contains_key(&index)) {
            (Some(s), true) => s.clone(),
            (None, true) => {
                return Err(ResumeMismatch(format!(
                "the interrupted run stored parts of chunk {index} but kept no age sealing for it"
            ))
                .into())
            }
            // A sealing for a chunk nothing of which was stored is not reused: nothing
            // to match, and a fresh one is never a reuse.
            (_, false) => {
                Sealing::new(&enc.recipients).context("encrypting to encryption.recipients")?
            }
        };
        if sealing.header().as_bytes().len() as u64 != header_len {
            return Err(ResumeMismatch(format!(
                "chunk {index}'s kept age header is not one for today's recipients"
            ))
            .into());
        }
        age.start(sealing.clone());
        Ok(sealing)
    }

    /// True when the next part (of chunk `index`; its first when `first_part`) is one an
    /// earlier run stored: it is then verified, not sent. The same test as [`Self::part`]'s.
    fn is_stored(&self, index: u64, first_part: bool) -> bool {
        if first_part {
            return match self.resume.get(&index) {
                Some(ChunkProgress::Stored { .. }) => true,
                Some(ChunkProgress::Open { parts, .. }) => parts.contains_key(&1),
                None => false,
            };
        }
        match self.slots.get(&index).map(|s| &s.life) {
            Some(Life::Resumed { .. }) => true,
            Some(Life::Open {
                resumed, next_part, ..
            }) => resumed.contains_key(next_part),
            _ => false,
        }
    }

    /// A free buffer, allocating up to the bound, else waiting for an upload to finish.
    fn buffer(&mut self) -> Result<PartBuf, UploadError> {
        loop {
            if let Some(b) = self.free.pop() {
                return Ok(b);
            }
            if self.allocated < self.cfg.max_buffers() {
                self.allocated += 1;
                return match &self.cfg.spool {
                    None => Ok(PartBuf::Mem(Vec::with_capacity(
                        self.cfg.part_size as usize,
                    ))),
                    Some(s) => Ok(spool_file(&s.dir)?),
                };
            }
            self.wait_one()?;
            if self.error.is_some() {
                return Err(anyhow!("upload failed").into());
            }
        }
    }

    fn send(&mut self, job: Job) -> Result<(), UploadError> {
        let tx = self
            .jobs
            .as_ref()
            .ok_or_else(|| anyhow!("internal: job channel closed"))?;
        let complete = matches!(job, Job::Complete { .. });
        if !complete {
            self.parts += 1;
            if self.first_send.is_none() {
                self.first_send = Some(Instant::now());
                self.progress.sending();
            }
        }
        tx.send(job)
            .map_err(|_| anyhow!("uploader threads stopped unexpectedly"))?;
        self.in_flight += 1;
        self.progress.requests_in_flight(self.in_flight);
        if complete {
            self.completing += 1;
            self.progress.completions_in_flight(self.completing);
        }
        Ok(())
    }

    fn slot(&mut self, index: u64) -> Result<&mut Slot> {
        self.slots
            .get_mut(&index)
            .ok_or_else(|| anyhow!("internal: no chunk {index}"))
    }

    fn begin_put(&mut self, index: u64, key: ChunkKey) {
        self.slots.insert(
            index,
            Slot {
                key: key.into(),
                life: Life::Putting,
                closed: None,
                reported: false,
                sealing: None,
            },
        );
    }

    fn begin_resumed(&mut self, index: u64, key: ChunkKey, size: u64, sha256: &str, etag: &str) {
        self.slots.insert(
            index,
            Slot {
                key: key.into(),
                life: Life::Resumed {
                    size,
                    sha256: sha256.to_string(),
                    etag: etag.to_string(),
                },
                closed: None,
                reported: true,
                sealing: None,
            },
        );
    }

    fn begin_reopened(
        &mut self,
        index: u64,
        key: ChunkKey,
        upload_id: &str,
        parts: &BTreeMap<u32, PartDone>,
    ) {
        self.slots.insert(
            index,
            Slot {
                key: key.into(),
                life: Life::Open {
                    upload_id: upload_id.into(),
                    etags: BTreeMap::new(),
                    in_flight: 0,
                    next_part: 1,
                    resumed: parts.clone(),
                    sent: BTreeMap::new(),
                },
                closed: None,
                reported: false,
                sealing: None,
            },
        );
    }

    fn start_multipart(&mut self, index: u64, key: ChunkKey) -> Result<(), UploadError> {
        let opts = self.cfg.chunk_opts.clone();
        let id = self
            .retrier
            .run(|| self.store.create_multipart(&key, &opts))
            .map_err(|e| {
                UploadError::Store(
                    anyhow::Error::from(e)
                        .context(format!("starting the multipart upload of chunk {key}")),
                )
            })?;
        event!(Debug, "multipart_started", key = key, upload_id = id);
        crate::failpoint::hit("after_upload_created");
        self.progress.upload_opened(index, &key, &id)?;
        self.slots.insert(
            index,
            Slot {
                key: key.into(),
                life: Life::Open {
                    upload_id: id.into(),
                    etags: BTreeMap::new(),
                    in_flight: 0,
                    next_part: 1,
                    resumed: BTreeMap::new(),
                    sent: BTreeMap::new(),
                },
                closed: None,
                reported: false,
                sealing: None,
            },
        );
        Ok(())
    }

    /// One part's bytes of chunk `index`: uploaded from `buf`, or (stored by an earlier
    /// run, read without a part buffer) compared with the journal. `through` is the
    /// chunk's SHA-256 through this part.
    fn part(
        &mut self,
        index: u64,
        buf: Option<PartBuf>,
        n: u64,
        through: String,
    ) -> Result<(), UploadError> {
        // With encryption, the parts of this chunk the bucket holds unrecorded.
        let unrecorded = self
            .cfg
            .encryption
            .as_ref()
            .and_then(|e| Some((e.unrecorded.get(&index)?.clone(), e.checksum)));
        let slot = self.slot(index)?;
        let key = slot.key.clone();
        let needed = |buf: Option<PartBuf>| {
            buf.ok_or_else(|| anyhow!("internal: a part of chunk {key} to send was not kept"))
        };
        match &mut slot.life {
            Life::Resumed { .. } => {
                self.resumed += n;
                self.free.extend(buf);
                self.progress.verified(n);
                Ok(())
            }
            Life::Putting => {
                let buf = needed(buf)?;
                self.send(Job::Put {
                    chunk: index,
                    key: key.clone(),
                    buf,
                })
            }
            Life::Open {
                upload_id,
                etags,
                in_flight,
                next_part,
                resumed,
                sent,
            } => {
                let part = *next_part;
                *next_part += 1;
                if let Some(p) = resumed.remove(&part) {
                    if p.size != n || p.sha256_through != through {
                        return Err(ResumeMismatch(format!(
                            "part {part} of chunk {key}: {n} bytes with SHA-256-through {through} now, \
                             {} bytes with {} in the journal",
                            p.size, p.sha256_through
                        ))
                        .into());
                    }
                    etags.insert(part, p.etag);
                    self.resumed += n;
                    self.free.extend(buf);
                    self.progress.verified(n);
                    return Ok(());
                }
                let buf = needed(buf)?;
                if let Some((parts, algo)) = &unrecorded {
                    if let Some(listed) = parts.get(&part) {
                        same_as_listed(&buf, *algo, listed, part, &key)?;
                    }
                }
                *in_flight += 1;
                sent.insert(part, (n, through));
                let upload_id = upload_id.clone();
                self.send(Job::Part {
                    chunk: index,
                    key: key.clone(),
                    upload_id,
                    part,
                    buf,
                })
            }
            Life::Completing { .. } | Life::Stored { .. } => {
                Err(anyhow!("internal: a part for chunk {key}, which is already complete").into())
            }
        }
    }

    fn close(&mut self, d: ChunkDone) -> Result<(), UploadError> {
        let index = d.index;
        let slot = self.slot(index)?;
        if let Life::Resumed { size, sha256, .. } = &slot.life {
            if *size != d.len || *sha256 != d.sha256 {
                return Err(ResumeMismatch(format!(
                    "chunk {}: {} bytes with SHA-256 {} now, {size} bytes with {sha256} in the journal",
                    slot.key, d.len, d.sha256
                ))
                .into());
            }
        }
        slot.closed = Some(d);
        self.advance(index)
    }

    /// Moves chunk `index` on when it can: a multipart upload whose end was read and
    /// whose parts are all stored gets its CompleteMultipartUpload queued; a chunk stored
    /// and read to its end is reported to the journal.
    fn advance(&mut self, index: u64) -> Result<(), UploadError> {
        let slot = self.slot(index)?;
        if let (
            Life::Open {
                upload_id,
                etags,
                in_flight: 0,
                next_part,
                ..
            },
            Some(_),
        ) = (&slot.life, &slot.closed)
        {
            if etags.len() as u32 != next_part - 1 {
                return Err(anyhow!(
                    "internal: chunk {} has {} stored parts of {}",
                    slot.key,
                    etags.len(),
                    next_part - 1
                )
                .into());
            }
            let parts: Vec<(u32, String)> = etags.iter().map(|(n, e)| (*n, e.clone())).collect();
            let upload_id = upload_id.clone();
            let key = slot.key.clone();
            slot.life = Life::Completing {
                upload_id: upload_id.clone(),
            };
            return self.send(Job::Complete {
                chunk: index,
                key,
                upload_id,
                parts,
            });
        }
        if let (Life::Stored { etag }, Some(d), false) = (&slot.life, &slot.closed, slot.reported) {
            slot.reported = true;
            let (key, d, etag) = (slot.key.clone(), d.clone(), etag.clone());
            self.progress.chunk_stored(index, &key, &d, &etag)?;
            crate::failpoint::hit("after_chunk_journaled");
        }
        Ok(())
    }

    /// Takes one finished job off the done channel; gives up when the run is cancelled.
    fn wait_one(&mut self) -> Result<(), UploadError> {
        let d = loop {
            match self.done.recv_timeout(WAIT_SLICE) {
                Ok(d) => break d,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.retrier.cancelled() {
                        return Err(anyhow!("interrupted by a signal").into());
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(anyhow!("uploader threads stopped unexpectedly").into())
                }
            }
        };
        let index = d.chunk;
        if self.record(d) && self.error.is_none() {
            if let Err(e) = self.advance(index) {
                self.error = Some(e);
            }
        }
        Ok(())
    }

    /// Books a finished job: frees its buffer, moves its chunk's life on, tells the
    /// journal of a stored part, keeps the first error. True when the job succeeded.
    fn record(&mut self, d: Done) -> bool {
        self.in_flight -= 1;
        self.progress.requests_in_flight(self.in_flight);
        if d.did == Did::Complete {
            self.completing -= 1;
            self.progress.completions_in_flight(self.completing);
        }
        if let Some(buf) = d.buf {
            self.free.push(buf);
        }
        let etag = match d.result {
            Ok(etag) => etag,
            Err(e) => {
                if self.error.is_none() {
                    // A signal cuts the requests in flight (`store::connect`): what they
                    // report is the signal, not a broken link.
                    self.error = Some(if self.retrier.cancelled() {
                        e.context("interrupted by a signal")
                    } else {
                        e
                    });
                }
                return false;
            }
        };
        let Some(slot) = self.slots.get_mut(&d.chunk) else {
            return true;
        };
        let mut stored_part = None;
        match (d.did, &mut slot.life) {
            (Did::Put, life @ Life::Putting) => {
                if let Some(c) = &slot.closed {
                    self.uploaded += c.len;
                    self.progress.sent(c.len);
                }
                *life = Life::Stored { etag };
            }
            (
                Did::Part(n),
                Life::Open {
                    etags,
                    in_flight,
                    sent,
                    ..
                },
            ) => {
                *in_flight -= 1;
                etags.insert(n, etag.clone());
                if let Some((size, through)) = sent.remove(&n) {
                    self.uploaded += size;
                    self.progress.sent(size);
                    stored_part = Some((
                        n,
                        PartDone {
                            size,
                            sha256_through: through,
                            etag,
                        },
                    ));
                }
            }
            (Did::Complete, life @ Life::Completing { .. }) => {
                *life = Life::Stored { etag };
            }
            _ => {
                self.error.get_or_insert_with(|| {
                    anyhow!("internal: a reply out of order for chunk {}", slot.key).into()
                });
                return false;
            }
        }
        if let Some((n, p)) = stored_part {
            if let Err(e) = self.progress.part_stored(d.chunk, n, &p) {
                self.error.get_or_insert(e.into());
                return false;
            }
            crate::failpoint::hit("after_part_journaled");
        }
        true
    }

    /// After the job channel is closed: collect what is still in flight, for at most
    /// [`DRAIN_GRACE`] when the run is stopping. True when nothing is left in flight.
    fn drain(&mut self, stopping: bool) -> bool {
        let deadline = std::time::Instant::now() + DRAIN_GRACE;
        while self.in_flight > 0 {
            let got = if stopping {
                match deadline.checked_duration_since(std::time::Instant::now()) {
                    Some(left) => self.done.recv_timeout(left).ok(),
                    None => None,
                }
            } else {
                self.done.recv().ok()
            };
            match got {
                Some(d) => {
                    self.record(d);
                }
                None => return false,
            }
        }
        true
    }

    /// Aborts every multipart upload this run holds open (not kept for a resume).
    fn abort_open(&mut self) {
        for s in self.slots.values() {
            if let Some(id) = s.upload_id() {
                match self.retrier.run(|| self.store.abort_multipart(&s.key, id)) {
                    Ok(()) => event!(Info, "multipart_aborted", key = s.key, upload_id = id),
                    Err(e) => event!(
                        Error,
                        "multipart_abort_failed",
                        key = s.key,
                        upload_id = id,
                        error = e
                    ),
                }
            }
        }
    }
}

mod encrypt;

#[cfg(test)]
pub(crate) mod tests;
