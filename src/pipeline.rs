//! The upload pipeline: the calling thread reads the send stream, cuts and hashes it
//! (`chunker`), and hands parts to a pool of `concurrency` uploader threads over
//! crossbeam channels. Buffers circulate: at most `concurrency + 1` part buffers exist,
//! which is the memory bound. A chunk that fits in one part is one PutObject; a larger one
//! is a multipart upload whose parts go up in parallel. Completing a multipart upload is a
//! job for the pool too, so the reader goes on with the next chunk while the service
//! assembles the last one. Only part jobs carry a buffer; the channels are unbounded because
//! the buffers, not the queue, bound memory (a queued completion is a list of part ETags).
//! On any failure the pool drains, every open multipart upload is aborted, and the first
//! error is returned. With a spool, part buffers are unlinked files in the spool directory
//! instead of memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::chunker::{ChunkDone, Cutter, StreamSummary};
use crate::config::{MAX_PART_SIZE, MIB, MIN_PART_SIZE};
use crate::event;
use crate::retry::Retrier;
use crate::store::{Body, ObjectStore, PutOptions, StoreResult};

/// S3's limit on parts per multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// Part size for a chunk size: the configured one, raised (to whole MiB) so a chunk needs
/// at most 10,000 parts, and never above 5 GiB. `None` when even 5 GiB parts are too few.
pub fn effective_part_size(configured: u64, chunk_size: u64) -> Option<u64> {
    let needed = chunk_size.div_ceil(MAX_PARTS);
    let mut p = configured.max(MIN_PART_SIZE);
    if needed > p {
        p = needed.div_ceil(MIB) * MIB;
    }
    (p <= MAX_PART_SIZE).then_some(p)
}

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
}

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub chunks: Vec<ChunkRecord>,
    pub summary: StreamSummary,
    pub parts: u64,
}

enum Job {
    Put {
        chunk: u64,
        key: Arc<str>,
        buf: PartBuf,
    },
    Part {
        chunk: u64,
        key: Arc<str>,
        upload_id: Arc<str>,
        part: u32,
        buf: PartBuf,
    },
    Complete {
        chunk: u64,
        key: Arc<str>,
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
    result: Result<String>,
    buf: Option<PartBuf>,
}

#[derive(Default)]
struct OpenChunk {
    key: Arc<str>,
    upload_id: Option<Arc<str>>,
    etags: BTreeMap<u32, String>,
    outstanding: usize,
    next_part: u32,
    closed: Option<ChunkDone>,
    etag: Option<String>,
    /// A CompleteMultipartUpload job is queued or running.
    completing: bool,
    finished: bool,
}

/// Uploads everything `input` yields; `key_for(i)` names chunk `i`.
pub fn upload_stream(
    input: &mut dyn Read,
    store: Arc<dyn ObjectStore>,
    retrier: Arc<Retrier>,
    cfg: &PipelineConfig,
    key_for: &dyn Fn(u64) -> String,
) -> Result<Outcome> {
    if cfg.max_buffers() < 1 {
        let spool = cfg.spool.as_ref().map(|s| s.max_bytes).unwrap_or(0);
        return Err(anyhow!(
            "global.spool_size_bytes = {spool} cannot hold one part of {} bytes; raise it",
            cfg.part_size
        ));
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
                .spawn(move || worker(rx, tx, store.as_ref(), &retrier, &opts, &stop))
        })
        .collect::<std::io::Result<_>>()
        .context("starting uploader threads")?;
    drop((job_rx, done_tx));

    let mut run = Run {
        store: store.as_ref(),
        retrier: &retrier,
        cfg,
        jobs: Some(job_tx),
        done: done_rx,
        free: Vec::new(),
        allocated: 0,
        bounce: Vec::new(),
        open: BTreeMap::new(),
        in_flight: 0,
        parts: AtomicU64::new(0),
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
    run.drain();
    let joined = crate::worker::join_all(workers, "uploading");
    let result = match (result, joined) {
        (Ok(_), Err(e)) => Err(e),
        (r, _) => r,
    };
    match result {
        Ok(o) => Ok(o),
        Err(e) => {
            run.abort_open();
            Err(e)
        }
    }
}

fn worker(
    jobs: Receiver<Job>,
    done: Sender<Done>,
    store: &dyn ObjectStore,
    retrier: &Retrier,
    opts: &PutOptions,
    stop: &AtomicBool,
) {
    // One request under the retry policy, unless the run is being stopped. A panic in it
    // is this job's error: the reader then stops the run instead of waiting forever.
    let attempt = |request: &mut dyn FnMut() -> StoreResult<String>| -> Result<String> {
        if stop.load(Ordering::SeqCst) {
            return Err(anyhow!("cancelled"));
        }
        crate::worker::catch(|| retrier.run(request))
            .map_err(|m| anyhow!(m))?
            .map_err(anyhow::Error::from)
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
                (chunk, Did::Part(part), key, r, Some(buf))
            }
            Job::Complete {
                chunk,
                key,
                upload_id,
                parts,
            } => {
                let r = attempt(&mut || store.complete_multipart(&key, &upload_id, &parts));
                (chunk, Did::Complete, key, r, None)
            }
        };
        let result = result.with_context(|| match did {
            Did::Put => format!("uploading chunk {key}"),
            Did::Part(n) => format!("uploading part {n} of chunk {key}"),
            Did::Complete => format!("completing the multipart upload of chunk {key}"),
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
    store: &'a dyn ObjectStore,
    retrier: &'a Retrier,
    cfg: &'a PipelineConfig,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    free: Vec<PartBuf>,
    allocated: usize,
    bounce: Vec<u8>,
    open: BTreeMap<u64, OpenChunk>,
    in_flight: usize,
    parts: AtomicU64,
    error: Option<anyhow::Error>,
}

/// The input with one byte of look-ahead.
struct Peek<'a> {
    inner: &'a mut dyn Read,
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

impl Run<'_> {
    fn read_all(
        &mut self,
        input: &mut dyn Read,
        key_for: &dyn Fn(u64) -> String,
    ) -> Result<Outcome> {
        let mut cutter = Cutter::new(self.cfg.chunk_size, self.cfg.part_size);
        let mut input = Peek {
            inner: input,
            byte: None,
        };
        loop {
            if self.error.is_some() {
                return Err(anyhow!("upload failed"));
            }
            if self.retrier.cancelled() {
                return Err(anyhow!("interrupted by a signal; uploads aborted"));
            }
            let want = cutter.next_part_len();
            let index = cutter.chunk_index();
            let first_part = cutter.in_chunk() == 0;
            let mut buf = self.buffer()?;
            let (n, done) = fill(&mut input, &mut buf, want, &mut cutter, &mut self.bounce)?;
            if n == 0 {
                self.free.push(buf);
                break;
            }
            let eof = n < want;
            if first_part {
                // A chunk that fits in this one part is a single PUT. When the part is full
                // and the chunk could go on, one byte of look-ahead tells.
                let single = done.is_some()
                    || eof
                    || input.at_eof().context("reading the btrfs send stream")?;
                if single {
                    self.put(index, key_for(index), buf)?;
                } else {
                    self.start_multipart(index, key_for(index))?;
                    self.part(index, buf)?;
                }
            } else {
                self.part(index, buf)?;
            }
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
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut chunks = Vec::with_capacity(self.open.len());
        for (i, c) in std::mem::take(&mut self.open) {
            let d = c
                .closed
                .ok_or_else(|| anyhow!("internal: chunk {i} was never closed"))?;
            if !c.finished {
                return Err(anyhow!("internal: chunk {} was never finished", c.key));
            }
            chunks.push(ChunkRecord {
                key: c.key.to_string(),
                size: d.len,
                sha256: d.sha256,
                etag: c.etag,
            });
        }
        Ok(Outcome {
            chunks,
            summary,
            parts: self.parts.load(Ordering::Relaxed),
        })
    }

    /// A free buffer, allocating up to the bound, else waiting for an upload to finish.
    fn buffer(&mut self) -> Result<PartBuf> {
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
                    Some(s) => spool_file(&s.dir),
                };
            }
            self.wait_one()?;
            if self.error.is_some() {
                return Err(anyhow!("upload failed"));
            }
        }
    }

    fn send(&mut self, job: Job) -> Result<()> {
        let tx = self
            .jobs
            .as_ref()
            .ok_or_else(|| anyhow!("internal: job channel closed"))?;
        if !matches!(job, Job::Complete { .. }) {
            self.parts.fetch_add(1, Ordering::Relaxed);
        }
        tx.send(job)
            .map_err(|_| anyhow!("uploader threads stopped unexpectedly"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn put(&mut self, index: u64, key: String, buf: PartBuf) -> Result<()> {
        let key: Arc<str> = key.into();
        let c = self.open.entry(index).or_default();
        c.key = key.clone();
        c.outstanding += 1;
        self.send(Job::Put {
            chunk: index,
            key,
            buf,
        })
    }

    fn start_multipart(&mut self, index: u64, key: String) -> Result<()> {
        let opts = self.cfg.chunk_opts.clone();
        let id = self
            .retrier
            .run(|| self.store.create_multipart(&key, &opts))
            .with_context(|| format!("starting the multipart upload of chunk {key}"))?;
        event!(Debug, "multipart_started", key = key, upload_id = id);
        let c = self.open.entry(index).or_default();
        c.key = key.into();
        c.upload_id = Some(id.into());
        c.next_part = 1;
        Ok(())
    }

    fn part(&mut self, index: u64, buf: PartBuf) -> Result<()> {
        let c = self
            .open
            .get_mut(&index)
            .ok_or_else(|| anyhow!("internal: part for unknown chunk {index}"))?;
        let upload_id = c
            .upload_id
            .clone()
            .ok_or_else(|| anyhow!("internal: part for chunk {index} without an upload"))?;
        let part = c.next_part;
        c.next_part += 1;
        c.outstanding += 1;
        let key = c.key.clone();
        self.send(Job::Part {
            chunk: index,
            key,
            upload_id,
            part,
            buf,
        })
    }

    fn close(&mut self, d: ChunkDone) -> Result<()> {
        let index = d.index;
        if let Some(c) = self.open.get_mut(&index) {
            c.closed = Some(d);
        }
        self.try_finish(index)
    }

    /// Queues the completion of a multipart chunk once it is closed and all its parts are
    /// in; a chunk that was a single PUT is finished then.
    fn try_finish(&mut self, index: u64) -> Result<()> {
        let Some(c) = self.open.get_mut(&index) else {
            return Ok(());
        };
        if c.finished || c.completing || c.closed.is_none() || c.outstanding > 0 {
            return Ok(());
        }
        let Some(upload_id) = c.upload_id.clone() else {
            c.finished = true;
            return Ok(());
        };
        c.completing = true;
        let parts: Vec<(u32, String)> = c.etags.iter().map(|(n, e)| (*n, e.clone())).collect();
        let key = c.key.clone();
        self.send(Job::Complete {
            chunk: index,
            key,
            upload_id,
            parts,
        })
    }

    /// Takes one finished job off the done channel.
    fn wait_one(&mut self) -> Result<()> {
        let d = self
            .done
            .recv()
            .map_err(|_| anyhow!("uploader threads stopped unexpectedly"))?;
        let index = d.chunk;
        if self.record(d) && self.error.is_none() {
            if let Err(e) = self.try_finish(index) {
                self.error = Some(e);
            }
        }
        Ok(())
    }

    /// Books a finished job: frees its buffer, files its ETag, keeps the first error.
    /// Returns true when the job succeeded.
    fn record(&mut self, d: Done) -> bool {
        self.in_flight -= 1;
        if let Some(buf) = d.buf {
            self.free.push(buf);
        }
        let etag = match d.result {
            Ok(etag) => etag,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
                return false;
            }
        };
        let Some(c) = self.open.get_mut(&d.chunk) else {
            return true;
        };
        match d.did {
            Did::Put => {
                c.outstanding -= 1;
                c.etag = Some(etag);
            }
            Did::Part(n) => {
                c.outstanding -= 1;
                c.etags.insert(n, etag);
            }
            Did::Complete => {
                // Completed: nothing left to abort for this chunk.
                c.etag = Some(etag);
                c.upload_id = None;
                c.completing = false;
                c.finished = true;
            }
        }
        true
    }

    /// After the job channel is closed: collect what is still in flight.
    fn drain(&mut self) {
        while self.in_flight > 0 {
            match self.done.recv() {
                Ok(d) => {
                    self.record(d);
                }
                Err(_) => break,
            }
        }
    }

    /// Aborts every multipart upload this run started and did not complete.
    fn abort_open(&mut self) {
        for c in self.open.values() {
            if let Some(id) = &c.upload_id {
                match self.retrier.run(|| self.store.abort_multipart(&c.key, id)) {
                    Ok(()) => event!(Info, "multipart_aborted", key = c.key, upload_id = id),
                    Err(e) => event!(
                        Error,
                        "multipart_abort_failed",
                        key = c.key,
                        upload_id = id,
                        error = e
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
