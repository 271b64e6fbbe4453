//! Verified streaming download: the chunks of one manifest are fetched in stream order as
//! ranged GETs of at most `piece_size` bytes by `concurrency` threads, with a window of
//! `concurrency + 1` pieces in flight and one being written: `concurrency + 2` buffers,
//! allocated once and reused (the memory bound). Each chunk is hashed as it streams into
//! the writer (`btrfs receive`, behind the send-stream guard); a size or SHA-256 mismatch
//! stops the restore at once, and is reported even when the writer already failed on the
//! bad bytes (or the guard refused them: its refusal is reported at the chunk's end when
//! the chunk's hash is right). When the manifest
//! records `stream_sha256`, the whole stream is hashed too (in the same pass, see
//! `sha256x2`) and checked at its end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::bounded;

use crate::chunker::hex;
use crate::manifest::ChunkEntry;
use crate::retry::Retrier;
use crate::sha256x2::StreamHashes;
use crate::store::{ErrorKind, ObjectStore, StoreError};

/// Why a verified download stopped, decided where it is known: `verify --deep` reports a
/// chunk as damaged unless its GET failed.
#[derive(Debug)]
pub enum DownloadError {
    /// A GET failed after its retries (not a missing object): nothing was learnt about
    /// the chunk.
    Request(anyhow::Error),
    /// Anything else: wrong bytes (size, SHA-256, the stream's hash, the send-stream
    /// guard's refusal), a missing chunk, a writer that stopped, a stop.
    Other(anyhow::Error),
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadError::Request(e) | DownloadError::Other(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

impl From<anyhow::Error> for DownloadError {
    fn from(e: anyhow::Error) -> Self {
        DownloadError::Other(e)
    }
}

impl From<DownloadError> for anyhow::Error {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::Request(e) | DownloadError::Other(e) => e,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub chunk: usize,
    pub key: Arc<str>,
    pub offset: u64,
    pub len: u64,
}

/// The chunks' ranged reads of at most `piece_size` bytes, in stream order, each made when
/// it is asked for: the sizes a manifest claims (up to 5 TiB a chunk) cost one number per
/// chunk here, never memory per piece.
pub struct Pieces<'a> {
    chunks: &'a [ChunkEntry],
    piece_size: u64,
    /// The sequence number of each chunk's first piece; zero-length chunks have none.
    first: Vec<u64>,
    total: u64,
}

impl<'a> Pieces<'a> {
    pub fn new(chunks: &'a [ChunkEntry], piece_size: u64) -> Pieces<'a> {
        let piece_size = piece_size.max(1);
        let mut first = Vec::with_capacity(chunks.len());
        let mut total = 0u64;
        for c in chunks {
            first.push(total);
            total = total.saturating_add(c.size.div_ceil(piece_size));
        }
        Pieces {
            chunks,
            piece_size,
            first,
            total,
        }
    }

    /// How many pieces there are.
    pub fn len(&self) -> usize {
        usize::try_from(self.total).unwrap_or(usize::MAX)
    }

    /// Piece number `seq`, if there is one.
    pub fn get(&self, seq: usize) -> Option<Piece> {
        let seq = seq as u64;
        if seq >= self.total {
            return None;
        }
        // The last chunk whose first piece is at or before `seq` (skipping empty ones).
        let i = self.first.partition_point(|f| *f <= seq).checked_sub(1)?;
        let c = &self.chunks[i];
        let offset = (seq - self.first[i]) * self.piece_size;
        Some(Piece {
            chunk: i,
            key: c.key.as_str().into(),
            offset,
            len: self.piece_size.min(c.size - offset),
        })
    }
}

/// Fetches one piece into `buf` (resized to exactly the piece: no over-allocation).
fn fetch(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    p: &Piece,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let op = || format!("GET {}", p.key);
    retrier.run(|| {
        let mut r = store.get(&p.key, Some((p.offset, p.len)))?;
        buf.resize(p.len as usize, 0);
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A link that fails mid-body is an outage the restore rides out.
                Err(e) => return Err(crate::store::body_error(op(), &e)),
            }
        }
        let extra = r.read(&mut [0u8; 1]).unwrap_or(0);
        if n != buf.len() || extra != 0 {
            let msg = format!(
                "expected {} bytes at offset {}, got {}",
                p.len,
                p.offset,
                n + extra
            );
            return Err(StoreError::new(ErrorKind::Transient, op(), msg));
        }
        Ok(())
    })
}

type Job = (usize, Piece, Vec<u8>);
type Fetched = (usize, Result<(), StoreError>, Vec<u8>);

/// Downloads `chunks` in order into `out`, verifying each chunk's size and SHA-256, and
/// the whole stream's SHA-256 against `stream_sha256` when the manifest has one.
/// Returns the bytes written.
pub fn stream_chunks(
    store: Arc<dyn ObjectStore>,
    retrier: Arc<Retrier>,
    chunks: &[ChunkEntry],
    stream_sha256: Option<&str>,
    piece_size: u64,
    concurrency: usize,
    out: &mut dyn Write,
) -> Result<u64, DownloadError> {
    let pieces = Pieces::new(chunks, piece_size);
    let window = concurrency.max(1) + 1;
    let (job_tx, job_rx) = bounded::<Job>(window);
    let (res_tx, res_rx) = bounded::<Fetched>(window);
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|i| {
            let (rx, tx) = (job_rx.clone(), res_tx.clone());
            let (store, retrier) = (store.clone(), retrier.clone());
            std::thread::Builder::new()
                .name(format!("downloader-{i}"))
                .spawn(move || {
                    for (seq, p, mut buf) in rx {
                        // A panic is this piece's error, never a reply that never comes.
                        let r =
                            crate::worker::catch(|| fetch(store.as_ref(), &retrier, &p, &mut buf))
                                .unwrap_or_else(|m| {
                                    Err(StoreError::new(
                                        ErrorKind::Permanent,
                                        format!("GET {}", p.key),
                                        m,
                                    ))
                                });
                        if tx.send((seq, r, buf)).is_err() {
                            return;
                        }
                    }
                })
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| anyhow!("starting downloader threads: {e}"))?;
    drop((job_rx, res_tx));

    let mut job_tx = Some(job_tx);
    let result = consume(&pieces, chunks, window, &mut job_tx, &res_rx, &retrier, out)
        .and_then(|(written, got)| match stream_sha256 {
            Some(want) if !got.eq_ignore_ascii_case(want) => Err(anyhow!(
                "the whole stream's SHA-256 is {got}, but the manifest's stream_sha256 is {want}: every chunk matched its own hash, so the manifest itself is inconsistent (damaged or edited)"
            )
            .into()),
            _ => Ok(written),
        });
    drop(job_tx);
    for _ in res_rx.iter() {}
    let joined = crate::worker::join_all(workers, "downloading");
    match (result, joined) {
        (Ok(_), Err(e)) => Err(e.into()),
        (r, _) => r,
    }
}

fn consume(
    pieces: &Pieces,
    chunks: &[ChunkEntry],
    window: usize,
    job_tx: &mut Option<crossbeam_channel::Sender<Job>>,
    res_rx: &crossbeam_channel::Receiver<Fetched>,
    retrier: &Retrier,
    out: &mut dyn Write,
) -> Result<(u64, String), DownloadError> {
    // Buffers are allocated here, at most `window + 1`, and reused: no allocator churn
    // across threads.
    let mut free: Vec<Vec<u8>> = Vec::new();
    let send = |tx: &Option<crossbeam_channel::Sender<Job>>,
                free: &mut Vec<Vec<u8>>,
                seq: usize|
     -> Result<()> {
        if let (Some(tx), Some(p)) = (tx, pieces.get(seq)) {
            let buf = free.pop().unwrap_or_default();
            tx.send((seq, p, buf))
                .map_err(|_| anyhow!("downloader threads stopped unexpectedly"))?;
        }
        Ok(())
    };
    for seq in 0..window.min(pieces.len()) {
        send(job_tx, &mut free, seq)?;
    }
    let mut ready: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut written = 0u64;
    let mut check = ChunkCheck {
        chunks,
        next: 0,
        hashes: StreamHashes::default(),
        in_chunk: 0,
        write_error: None,
    };
    for seq in 0..pieces.len() {
        let Some(p) = pieces.get(seq) else { break };
        // Zero-length chunks have no pieces: they are checked as they come up.
        check.finish_until(p.chunk)?;
        let buf = loop {
            if let Some(b) = ready.remove(&seq) {
                break b;
            }
            if retrier.cancelled() {
                return Err(anyhow!("interrupted by a signal").into());
            }
            let (s, r, b) = res_rx
                .recv()
                .map_err(|_| anyhow!("downloader threads stopped unexpectedly"))?;
            r.map_err(|e| {
                // A missing chunk is a fact about the bucket; any other failed GET (a
                // panic in the fetch is one) says nothing about the bytes.
                let missing = e.kind == ErrorKind::NotFound;
                let key = pieces.get(s).map(|p| p.key).unwrap_or_default();
                let e = anyhow::Error::from(e).context(format!("downloading chunk {key}"));
                match missing {
                    true => DownloadError::Other(e),
                    false => DownloadError::Request(e),
                }
            })?;
            ready.insert(s, b);
        };
        send(job_tx, &mut free, seq + window)?;
        check.hashes.update(&buf);
        check.in_chunk += buf.len() as u64;
        if check.write_error.is_none() {
            match out.write_all(&buf) {
                Ok(()) => written += buf.len() as u64,
                Err(e) => check.write_error = Some(e),
            }
        }
        free.push(buf);
        if check.in_chunk == chunks[p.chunk].size {
            check.finish_until(p.chunk + 1)?;
        }
    }
    check.finish_until(chunks.len())?;
    Ok((written, hex(&check.hashes.stream())))
}

/// Verification state while streaming: the running hashes of the stream and of the current
/// chunk, the chunk's bytes so far, and whether the writer has failed.
struct ChunkCheck<'a> {
    chunks: &'a [ChunkEntry],
    next: usize,
    hashes: StreamHashes,
    in_chunk: u64,
    write_error: Option<std::io::Error>,
}

impl ChunkCheck<'_> {
    /// Checks size and SHA-256 of every chunk before index `end` not checked yet.
    fn finish_until(&mut self, end: usize) -> Result<()> {
        while self.next < end {
            let c = &self.chunks[self.next];
            self.next += 1;
            let got = hex(&self.hashes.end_chunk());
            let size = std::mem::replace(&mut self.in_chunk, 0);
            if size != c.size {
                bail!(
                    "chunk {}: size mismatch (manifest {} bytes, downloaded {size})",
                    c.key,
                    c.size
                );
            }
            if !got.eq_ignore_ascii_case(&c.sha256) {
                bail!(
                    "chunk {}: SHA-256 mismatch (manifest {}, downloaded {got}): the object was changed or damaged",
                    c.key,
                    c.sha256
                );
            }
            if let Some(e) = &self.write_error {
                // The send-stream guard's refusal names the chunk and the command itself.
                if let Some(r) = crate::sendstream::refusal(e) {
                    return Err(r.clone().into());
                }
                bail!(
                    "btrfs receive stopped taking the stream at chunk {} ({e})",
                    c.key
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use sha2::{Digest, Sha256};

    fn retrier() -> Arc<Retrier> {
        Arc::new(crate::testing::retrier())
    }

    fn setup(sizes: &[usize]) -> (Arc<MemoryStore>, Vec<ChunkEntry>, Vec<u8>) {
        let s = Arc::new(MemoryStore::new());
        let mut all = Vec::new();
        let mut chunks = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| ((i * 7 + j * 3) % 256) as u8).collect();
            let key = format!("c{i}");
            s.insert(&key, &data, crate::testing::put_opts("STANDARD"));
            chunks.push(ChunkEntry {
                key,
                size: *n as u64,
                sha256: hex(&Sha256::digest(&data)),
                etag: None,
                extra: Default::default(),
            });
            all.extend(data);
        }
        (s, chunks, all)
    }

    #[test]
    fn pieces_cover_chunks() {
        let (_, chunks, _) = setup(&[10, 0, 3]);
        let p = Pieces::new(&chunks, 4);
        let v: Vec<(usize, u64, u64)> = (0..p.len() + 2)
            .filter_map(|s| p.get(s))
            .map(|p| (p.chunk, p.offset, p.len))
            .collect();
        assert_eq!(v, [(0, 0, 4), (0, 4, 4), (0, 8, 2), (2, 0, 3)]);
        let (_, chunks, _) = setup(&[0, 0, 5, 0, 4, 0]);
        let p = Pieces::new(&chunks, 2);
        let v: Vec<(usize, u64, u64)> = (0..p.len())
            .filter_map(|s| p.get(s))
            .map(|p| (p.chunk, p.offset, p.len))
            .collect();
        assert_eq!(v, [(2, 0, 2), (2, 2, 2), (2, 4, 1), (4, 0, 2), (4, 2, 2)]);
        assert_eq!(p.get(5), None);
    }

    /// A doctored manifest's sizes (here a thousand 5 TiB chunks, 16 MiB pieces: 327
    /// million pieces, 13 GB as a list) cost nothing until a piece is asked for.
    #[test]
    fn claimed_sizes_cost_no_memory_per_piece() {
        let (_, mut chunks, _) = setup(&[1]);
        let one = chunks[0].clone();
        chunks = (0..1000)
            .map(|_| ChunkEntry {
                size: 5 << 40,
                ..one.clone()
            })
            .collect();
        let p = Pieces::new(&chunks, 16 << 20);
        assert_eq!(p.len(), 1000 * (5 << 20) / 16);
        let last = p.get(p.len() - 1).expect("the last piece");
        assert_eq!(
            (last.chunk, last.offset, last.len),
            (999, (5 << 40) - (16 << 20), 16 << 20)
        );
    }

    #[test]
    fn a_failed_get_is_a_request_failure_and_wrong_or_missing_bytes_are_not() {
        let stream = |s: &Arc<MemoryStore>, chunks: &[ChunkEntry]| {
            stream_chunks(s.clone(), retrier(), chunks, None, 100, 2, &mut Vec::new())
        };
        // A GET that fails after its retries: nothing was learnt about the chunk.
        let (s, chunks, _) = setup(&[300, 200]);
        s.fail("GET c1", ErrorKind::Permanent, 1);
        let e = stream(&s, &chunks).unwrap_err();
        assert!(matches!(e, DownloadError::Request(_)), "{e:#}");
        assert!(format!("{e:#}").contains("downloading chunk c1"), "{e:#}");
        // A missing chunk is a fact about the bucket.
        let (s, chunks, _) = setup(&[300, 200]);
        s.remove("c1");
        let e = stream(&s, &chunks).unwrap_err();
        assert!(matches!(e, DownloadError::Other(_)), "{e:#}");
        // So are bytes that do not hash to the manifest's SHA-256.
        let (s, mut chunks, _) = setup(&[300, 200]);
        chunks[0].sha256 = "0".repeat(64);
        let e = stream(&s, &chunks).unwrap_err();
        assert!(matches!(e, DownloadError::Other(_)), "{e:#}");
        assert!(format!("{e:#}").contains("SHA-256 mismatch"), "{e:#}");
    }

    #[test]
    fn streams_in_order_and_verifies() {
        let (s, chunks, all) = setup(&[1000, 0, 333, 4096, 1]);
        for conc in [1, 2, 4] {
            let mut out = Vec::new();
            let n =
                stream_chunks(s.clone(), retrier(), &chunks, None, 100, conc, &mut out).unwrap();
            assert_eq!(n, all.len() as u64);
            assert!(out == all);
        }
    }

    #[test]
    fn the_stream_hash_is_checked_when_the_manifest_has_one() {
        // 640 and 128 bytes: later chunks start on 64-byte boundaries (one pass); 77: not.
        for sizes in [&[640, 128, 0, 77, 64][..], &[1000, 333, 4096, 1][..]] {
            let (s, chunks, all) = setup(sizes);
            let want = hex(&Sha256::digest(&all));
            for w in [want.clone(), want.to_uppercase()] {
                let mut out = Vec::new();
                stream_chunks(s.clone(), retrier(), &chunks, Some(&w), 100, 2, &mut out).unwrap();
                assert!(out == all);
            }
            // Chunks that are each intact, listed in the wrong order.
            let mut swapped = chunks.clone();
            swapped.swap(0, 1);
            let e = format!(
                "{:#}",
                stream_chunks(s, retrier(), &swapped, Some(&want), 100, 2, &mut Vec::new())
                    .unwrap_err()
            );
            assert!(
                e.contains("manifest's stream_sha256") && e.contains(&want),
                "{e}"
            );
        }
    }

    #[test]
    fn tampered_chunk_is_named() {
        let (s, mut chunks, _) = setup(&[500, 500]);
        s.corrupt("c1", 250, 1);
        let mut out = Vec::new();
        let e = format!(
            "{:#}",
            stream_chunks(s.clone(), retrier(), &chunks, None, 64, 3, &mut out).unwrap_err()
        );
        assert!(
            e.contains("chunk c1: SHA-256 mismatch") && e.contains(&chunks[1].sha256),
            "{e}"
        );
        assert_eq!(
            out.len(),
            1000,
            "the bad chunk was streamed, the error came at its end"
        );
        // A manifest that says a chunk is bigger than it is.
        chunks[0].size = 501;
        let e = format!(
            "{:#}",
            stream_chunks(s, retrier(), &chunks, None, 64, 2, &mut Vec::new()).unwrap_err()
        );
        assert!(e.contains("c0"), "{e}");
    }

    #[test]
    fn hash_mismatch_wins_over_writer_failure() {
        struct Dies(usize);
        impl Write for Dies {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "broken pipe",
                    ));
                }
                self.0 -= 1;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (s, chunks, _) = setup(&[300, 300]);
        s.corrupt("c0", 0, 0xff);
        let e = format!(
            "{:#}",
            stream_chunks(s.clone(), retrier(), &chunks, None, 50, 2, &mut Dies(1)).unwrap_err()
        );
        assert!(e.contains("chunk c0: SHA-256 mismatch"), "{e}");
        // With good data the writer's failure is reported.
        let (s, chunks, _) = setup(&[300]);
        let e = format!(
            "{:#}",
            stream_chunks(s, retrier(), &chunks, None, 50, 2, &mut Dies(1)).unwrap_err()
        );
        assert!(
            e.contains("btrfs receive stopped") && e.contains("broken pipe"),
            "{e}"
        );
    }

    #[test]
    fn missing_chunk_and_retries() {
        let (s, chunks, all) = setup(&[200, 200]);
        s.fail("GET c1 bytes", ErrorKind::Transient, 2);
        let mut out = Vec::new();
        stream_chunks(s.clone(), retrier(), &chunks, None, 64, 2, &mut out).unwrap();
        assert!(out == all);
        s.remove("c1");
        let e = format!(
            "{:#}",
            stream_chunks(s, retrier(), &chunks, None, 64, 2, &mut Vec::new()).unwrap_err()
        );
        assert!(e.contains("downloading chunk c1"), "{e}");
    }

    #[test]
    fn a_panicking_downloader_fails_the_restore_instead_of_hanging_it() {
        let (s, chunks, _) = setup(&[200, 200, 200]);
        s.panic_on("GET c1 bytes 64");
        let e = crate::pipeline::tests::within(20, move || {
            stream_chunks(s, retrier(), &chunks, None, 64, 2, &mut Vec::new())
                .map_err(|e| format!("{e:#}"))
        })
        .unwrap_err();
        assert!(
            e.contains("downloading chunk c1") && e.contains("panicked: injected panic"),
            "{e}"
        );
    }
}
