//! Cuts a byte stream into chunks of `chunk_size` and parts of at most `part_size`, and
//! hashes as it goes: SHA-256 per chunk and of the whole stream. Bytes in, [`ChunkDone`]
//! out; no threads, no I/O (the pipeline feeds it).
//!
//! Both hashes come from one pass over the bytes ([`StreamHashes`]): the first chunk's
//! hash is the stream's at the chunk's end, and later chunks share the pass when they
//! start on a 64-byte boundary, as they do for any chunk size that is a multiple of 64
//! (and with the default 200 GiB chunks most streams have one chunk).

use crate::sha256x2::StreamHashes;

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A finished chunk: its index in stream order, length and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkDone {
    pub index: u64,
    pub len: u64,
    pub sha256: String,
}

/// Totals of a whole stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    pub total_bytes: u64,
    pub sha256: String,
}

pub struct Cutter {
    chunk_size: u64,
    part_size: u64,
    index: u64,
    in_chunk: u64,
    total: u64,
    hashes: StreamHashes,
    /// False: no whole-stream hash (an encrypted stream's would be of ciphertext, which
    /// nobody checks); every chunk then hashes in one pass, wherever it starts.
    stream_hash: bool,
}

impl Cutter {
    /// `chunk_size` and `part_size` must be > 0 (the config guarantees it).
    pub fn new(chunk_size: u64, part_size: u64) -> Cutter {
        Cutter {
            chunk_size: chunk_size.max(1),
            part_size: part_size.max(1),
            index: 0,
            in_chunk: 0,
            total: 0,
            hashes: StreamHashes::default(),
            stream_hash: true,
        }
    }

    /// A cutter that hashes each chunk but not the whole stream: [`StreamSummary`]'s
    /// `sha256` is then empty.
    pub fn chunks_only(chunk_size: u64, part_size: u64) -> Cutter {
        Cutter {
            stream_hash: false,
            ..Cutter::new(chunk_size, part_size)
        }
    }

    /// How many bytes the next part may hold: a full part, or what is left of the chunk.
    pub fn next_part_len(&self) -> usize {
        self.part_size.min(self.chunk_size - self.in_chunk) as usize
    }

    /// Index of the chunk the next bytes belong to.
    pub fn chunk_index(&self) -> u64 {
        self.index
    }

    /// Bytes already in the current chunk.
    pub fn in_chunk(&self) -> u64 {
        self.in_chunk
    }

    /// SHA-256 (hex) of the current chunk's bytes fed so far: at a part's end, the hash
    /// "through" that part that the resume journal records. Costs one final block.
    pub fn chunk_sha256_so_far(&self) -> String {
        hex(&self.hashes.chunk_so_far())
    }

    /// Takes one part's bytes (at most [`Self::next_part_len`]); returns the chunk when
    /// these bytes complete it.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<ChunkDone> {
        debug_assert!(bytes.len() <= self.next_part_len());
        self.hashes.update(bytes);
        self.in_chunk += bytes.len() as u64;
        self.total += bytes.len() as u64;
        (self.in_chunk == self.chunk_size).then(|| self.close_chunk())
    }

    fn close_chunk(&mut self) -> ChunkDone {
        let hash = self.hashes.end_chunk();
        if !self.stream_hash {
            // The next chunk is a "first" chunk again: one hasher, one pass.
            self.hashes = StreamHashes::default();
        }
        let done = ChunkDone {
            index: self.index,
            len: self.in_chunk,
            sha256: hex(&hash),
        };
        self.index += 1;
        self.in_chunk = 0;
        done
    }

    /// At end of stream: the last, shorter chunk if it has bytes, and the totals.
    pub fn finish(mut self) -> (Option<ChunkDone>, StreamSummary) {
        let last = (self.in_chunk > 0).then(|| self.close_chunk());
        let summary = StreamSummary {
            total_bytes: self.total,
            sha256: if self.stream_hash {
                hex(&self.hashes.stream())
            } else {
                String::new()
            },
        };
        (last, summary)
    }
}

/// Cuts a whole buffer (tests): chunks with their part lengths.
#[cfg(test)]
pub fn cut(
    data: &[u8],
    chunk_size: u64,
    part_size: u64,
) -> (Vec<(ChunkDone, Vec<usize>)>, StreamSummary) {
    let mut c = Cutter::new(chunk_size, part_size);
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = c.next_part_len().min(rest.len());
        parts.push(n);
        if let Some(done) = c.feed(&rest[..n]) {
            out.push((done, std::mem::take(&mut parts)));
        }
        rest = &rest[n..];
    }
    let (last, summary) = c.finish();
    if let Some(done) = last {
        out.push((done, parts));
    }
    (out, summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn check(n: usize, chunk: u64, part: u64, want_lens: &[u64], want_parts: &[&[usize]]) {
        let d = data(n);
        let (chunks, summary) = cut(&d, chunk, part);
        let lens: Vec<u64> = chunks.iter().map(|(c, _)| c.len).collect();
        assert_eq!(
            lens, want_lens,
            "chunk lengths for n={n} chunk={chunk} part={part}"
        );
        let parts: Vec<&[usize]> = chunks.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(parts, want_parts);
        let mut off = 0usize;
        for (i, (c, _)) in chunks.iter().enumerate() {
            assert_eq!(c.index, i as u64);
            assert_eq!(c.sha256, sha(&d[off..off + c.len as usize]));
            off += c.len as usize;
        }
        assert_eq!(summary.total_bytes, n as u64);
        assert_eq!(summary.sha256, sha(&d));
    }

    #[test]
    fn exact_multiple() {
        check(
            30,
            10,
            4,
            &[10, 10, 10],
            &[&[4, 4, 2], &[4, 4, 2], &[4, 4, 2]],
        );
    }

    #[test]
    fn one_byte_over() {
        check(
            31,
            10,
            4,
            &[10, 10, 10, 1],
            &[&[4, 4, 2], &[4, 4, 2], &[4, 4, 2], &[1]],
        );
    }

    #[test]
    fn one_byte_under() {
        check(29, 10, 5, &[10, 10, 9], &[&[5, 5], &[5, 5], &[5, 4]]);
    }

    #[test]
    fn empty_stream() {
        let (chunks, summary) = cut(&[], 10, 4);
        assert!(chunks.is_empty());
        assert_eq!(summary.total_bytes, 0);
        assert_eq!(summary.sha256, sha(&[]));
    }

    #[test]
    fn chunk_smaller_than_part() {
        check(25, 10, 64, &[10, 10, 5], &[&[10], &[10], &[5]]);
    }

    #[test]
    fn single_byte_chunks() {
        check(3, 1, 5, &[1, 1, 1], &[&[1], &[1], &[1]]);
    }

    #[test]
    fn chunks_on_64_byte_boundaries_hash_in_one_pass_and_match() {
        // 256-byte chunks start on block boundaries: later chunks take the paired path.
        check(
            700,
            256,
            100,
            &[256, 256, 188],
            &[&[100, 100, 56], &[100, 100, 56], &[100, 88]],
        );
        // A 4 KiB chunk in parts that are not block multiples.
        let d = data(3 * 4096 + 1);
        let (chunks, summary) = cut(&d, 4096, 1000);
        assert_eq!(chunks.len(), 4);
        for (i, (c, _)) in chunks.iter().enumerate() {
            let start = i * 4096;
            assert_eq!(
                c.sha256,
                sha(&d[start..start + c.len as usize]),
                "chunk {i}"
            );
        }
        assert_eq!(summary.sha256, sha(&d));
    }

    #[test]
    fn chunks_only_hashes_each_chunk_and_not_the_stream() {
        let d = data(1000);
        let mut c = Cutter::chunks_only(300, 128);
        let mut got = Vec::new();
        let mut rest = &d[..];
        while !rest.is_empty() {
            let n = c.next_part_len().min(rest.len());
            got.extend(c.feed(&rest[..n]));
            rest = &rest[n..];
        }
        let (last, summary) = c.finish();
        got.extend(last);
        let want: Vec<String> = d.chunks(300).map(sha).collect();
        assert_eq!(
            got.iter().map(|c| c.sha256.clone()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(summary.total_bytes, 1000);
        assert_eq!(summary.sha256, "");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
