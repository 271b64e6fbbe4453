//! The pipeline's input when backups are encrypted: the plaintext send stream turned into
//! one age file per `chunk_size` bytes of plaintext, written back to back, so the
//! pipeline cuts, hashes and uploads ciphertext chunks exactly as it does plain ones.
//! Each file's [`Sealing`] is handed in before its chunk's first byte is read
//! ([`AgeChunks::start`]); plaintext is read straight into the caller's buffer and
//! sealed there, block by block (only a block that straddles the end of a part, and the
//! header, go through a side buffer). Up to [`READ_BLOCKS`] blocks are read with one
//! vectored read (`readv`: each block's plaintext straight into its place, and one byte
//! of look-ahead that tells a final full block from a non-final one), then sealed, while
//! they are in cache (one 64 KiB read per block and a 1-byte read after each, as before,
//! cost more system time: twice the calls, and `btrfs send` woken as often).

use std::io::{self, IoSliceMut, Read};

use crate::age::{BlockSealer, Sealing, BLOCK_LEN, TAG_BYTES};

/// Blocks read (and then sealed) at a time: 1 MiB of plaintext, the send pipe's size
/// (`btrfs.rs`), and within a core's L2 cache for the sealing and hashing that follow.
pub const READ_BLOCKS: usize = 16;

/// A sealed block's bytes: its plaintext and its tag.
const SEALED: usize = BLOCK_LEN + TAG_BYTES;

/// The age files of one stream, one per chunk.
pub struct AgeChunks<'a> {
    inner: &'a mut dyn Read,
    chunk_size: u64,
    /// The sealing of the next chunk's file, until its first byte is read.
    next: Option<Sealing>,
    /// The current file's sealer and plaintext still to take; `None` between files.
    current: Option<(BlockSealer, u64)>,
    /// Bytes to hand out before anything else (a header, a straddling block).
    side: Vec<u8>,
    side_pos: usize,
    /// One plaintext byte read ahead (to tell a final full block from a non-final one).
    carry: Option<u8>,
    eof: bool,
    /// Plaintext bytes taken from `inner`.
    plain_total: u64,
}

impl<'a> AgeChunks<'a> {
    /// `chunk_size` plaintext bytes per file (> 0).
    pub fn new(inner: &'a mut dyn Read, chunk_size: u64) -> AgeChunks<'a> {
        AgeChunks {
            inner,
            chunk_size: chunk_size.max(1),
            next: None,
            current: None,
            side: Vec::with_capacity(BLOCK_LEN + TAG_BYTES),
            side_pos: 0,
            carry: None,
            eof: false,
            plain_total: 0,
        }
    }

    /// The sealing of the next chunk (set before that chunk's first byte is read).
    pub fn start(&mut self, sealing: Sealing) {
        self.next = Some(sealing);
    }

    /// True between files: the next byte read starts a new chunk's file.
    pub fn between_files(&self) -> bool {
        self.current.is_none() && self.side_pos == self.side.len()
    }

    /// Plaintext bytes read so far.
    pub fn plain_total(&self) -> u64 {
        self.plain_total
    }

    /// Reads until `buf` is full or the input ends; the carried byte comes first.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        if let (Some(b), false) = (self.carry, buf.is_empty()) {
            buf[0] = b;
            self.carry = None;
            n = 1;
        }
        while n < buf.len() && !self.eof {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => self.eof = true,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.plain_total += n as u64;
        Ok(n)
    }

    /// True when more plaintext follows (keeping one byte of it in `carry`).
    fn more(&mut self) -> io::Result<bool> {
        if self.carry.is_some() {
            return Ok(true);
        }
        let mut b = [0u8; 1];
        if self.read_plain(&mut b)? == 1 {
            self.plain_total -= 1;
            self.carry = Some(b[0]);
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads and seals the current file's next blocks into `out`, as many whole sealed
    /// blocks as it has room for (at most [`READ_BLOCKS`]; at least one, for which the
    /// caller leaves room: its plaintext and tag): returns the bytes written there.
    fn blocks_into(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.current.as_ref().map(|c| c.1) else {
            return Ok(0);
        };
        let room = (out.len() / SEALED).clamp(1, READ_BLOCKS);
        let want = left.min((room * BLOCK_LEN) as u64) as usize;
        let blocks = want.div_ceil(BLOCK_LEN).max(1);
        // The carried byte first; then one vectored read per turn into what is still
        // empty of each block's plaintext, and one byte more.
        let mut have = 0;
        if let (Some(b), true) = (self.carry, want > 0) {
            out[0] = b;
            self.carry = None;
            have = 1;
        }
        let mut ahead = [0u8; 1];
        let mut got = 0;
        if !self.eof {
            let mut slices: Vec<IoSliceMut<'_>> = out
                .chunks_mut(SEALED)
                .take(blocks)
                .enumerate()
                .map(|(i, c)| {
                    let len = (want - i * BLOCK_LEN).min(BLOCK_LEN);
                    IoSliceMut::new(&mut c[if i == 0 { have } else { 0 }..len])
                })
                .collect();
            slices.push(IoSliceMut::new(&mut ahead));
            let mut bufs = &mut slices[..];
            while !bufs.is_empty() {
                match self.inner.read_vectored(bufs) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(k) => {
                        got += k;
                        IoSliceMut::advance_slices(&mut bufs, k);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let n = have + got.min(want - have);
        if got > want - have {
            self.carry = Some(ahead[0]);
        }
        self.plain_total += n as u64;
        let left = left - n as u64;
        // Final: the input ended (within the blocks, or right after them), or the chunk.
        let last = n < want || left == 0 || self.carry.is_none();
        let Some((sealer, l)) = &mut self.current else {
            return Ok(0);
        };
        *l = left;
        let sealed = n.div_ceil(BLOCK_LEN).max(1);
        for i in 0..sealed {
            let len = (n - i * BLOCK_LEN).min(BLOCK_LEN);
            let at = i * SEALED;
            sealer.seal_in_place(&mut out[at..at + len + TAG_BYTES], last && i + 1 == sealed);
        }
        if last {
            self.current = None;
        }
        Ok(n + sealed * TAG_BYTES)
    }
}

impl Read for AgeChunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if out.is_empty() {
                return Ok(0);
            }
            if self.side_pos < self.side.len() {
                let n = out.len().min(self.side.len() - self.side_pos);
                out[..n].copy_from_slice(&self.side[self.side_pos..self.side_pos + n]);
                self.side_pos += n;
                return Ok(n);
            }
            self.side.clear();
            self.side_pos = 0;
            let Some(left) = self.current.as_ref().map(|c| c.1) else {
                // Between files: a new one only when plaintext follows.
                if !self.more()? {
                    return Ok(0);
                }
                let sealing = self.next.take().ok_or_else(|| {
                    io::Error::other("internal: a chunk's age file began without a sealing")
                })?;
                self.side.extend_from_slice(sealing.header().as_bytes());
                self.side.extend_from_slice(&sealing.nonce().0);
                self.current = Some((BlockSealer::new(&sealing), self.chunk_size));
                continue;
            };
            let room = left.min(BLOCK_LEN as u64) as usize + TAG_BYTES;
            if out.len() >= room {
                return self.blocks_into(out);
            }
            let mut side = std::mem::take(&mut self.side);
            side.resize(room, 0);
            let r = self.blocks_into(&mut side);
            side.truncate(*r.as_ref().unwrap_or(&0));
            self.side = side;
            r?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age::{ciphertext_size, encrypt_to_vec, Recipient, Sealing};

    fn recipient() -> Recipient {
        crate::age::Identity::generate()
            .expect("identity")
            .recipient()
            .clone()
    }

    /// Reads everything with reads of `step` bytes, starting a fresh sealing whenever a
    /// file may begin; returns the output and the sealings used.
    fn run(data: &[u8], chunk: u64, step: usize) -> (Vec<u8>, Vec<Sealing>) {
        let r = recipient();
        let mut input = data;
        let mut a = AgeChunks::new(&mut input, chunk);
        let (out, mut used) = drain(&mut a, &r, step);
        // The last sealing was never used when the stream ended between files.
        if a.next.is_some() {
            used.pop();
        }
        (out, used)
    }

    /// Reads `a` to its end with reads of `step` bytes, starting a fresh sealing to `r`
    /// whenever a file may begin; returns the output and the sealings started.
    fn drain(a: &mut AgeChunks, r: &Recipient, step: usize) -> (Vec<u8>, Vec<Sealing>) {
        let (mut out, mut used) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; step];
        loop {
            if a.between_files() && a.next.is_none() {
                let s = Sealing::new(std::slice::from_ref(r)).expect("sealing");
                used.push(s.clone());
                a.start(s);
            }
            let n = a.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, used)
    }

    #[test]
    fn each_chunk_is_the_age_file_encryptor_writes() {
        let data: Vec<u8> = (0..(3 * BLOCK_LEN + 77)).map(|i| (i % 253) as u8).collect();
        for (chunk, step) in [
            (BLOCK_LEN as u64, 1000),
            (2 * BLOCK_LEN as u64, 200_000),
            (100_000, 7),
            (1 << 30, BLOCK_LEN + TAG_BYTES),
            (3 * BLOCK_LEN as u64 + 77, 70_000),
        ] {
            let (out, used) = run(&data, chunk, step);
            let mut want = Vec::new();
            for (i, piece) in data.chunks(chunk as usize).enumerate() {
                want.extend(encrypt_to_vec(&used[i], piece));
            }
            assert_eq!(
                used.len(),
                data.len().div_ceil(chunk as usize),
                "chunk {chunk}"
            );
            assert!(out == want, "chunk {chunk} step {step}: ciphertext differs");
            let h = used[0].header().as_bytes().len() as u64;
            assert_eq!(
                out.len() as u64,
                data.chunks(chunk as usize)
                    .map(|p| ciphertext_size(p.len() as u64, h))
                    .sum::<u64>()
            );
        }
    }

    /// A pipe-like input: at most `most` bytes per read or `readv`, counting them.
    struct Pipe<'a> {
        data: &'a [u8],
        most: usize,
        reads: usize,
    }

    impl Read for Pipe<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.read_vectored(&mut [IoSliceMut::new(buf)])
        }
        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            self.reads += 1;
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.most - n).min(self.data.len());
                b[..k].copy_from_slice(&self.data[..k]);
                self.data = &self.data[k..];
                n += k;
            }
            Ok(n)
        }
    }

    #[test]
    fn the_send_pipe_is_read_a_mebibyte_at_a_time() {
        // 8 MiB and a bit, in 1 MiB chunks: about one read per READ_BLOCKS blocks (and
        // per file, the look-ahead and the end), not two per 64 KiB block as before.
        let data: Vec<u8> = (0..(8 << 20) + 77).map(|i| (i % 251) as u8).collect();
        let r = recipient();
        let mut pipe = Pipe {
            data: &data,
            most: usize::MAX,
            reads: 0,
        };
        let mut a = AgeChunks::new(&mut pipe, 1 << 20);
        let (got, used) = drain(&mut a, &r, 16 << 20);
        drop(a);
        let want: Vec<u8> = data
            .chunks(1 << 20)
            .zip(&used)
            .flat_map(|(p, s)| encrypt_to_vec(s, p))
            .collect();
        assert!(got == want, "ciphertext differs");
        let most = data.len().div_ceil(READ_BLOCKS * BLOCK_LEN) + 2 * used.len();
        assert!(
            pipe.reads <= most,
            "{} reads of the pipe, want <= {most}",
            pipe.reads
        );
    }

    #[test]
    fn short_pipe_reads_give_the_same_files() {
        let data: Vec<u8> = (0..(3 * BLOCK_LEN + 5)).map(|i| (i % 241) as u8).collect();
        let r = recipient();
        let mut pipe = Pipe {
            data: &data,
            most: 1000,
            reads: 0,
        };
        let mut a = AgeChunks::new(&mut pipe, 2 * BLOCK_LEN as u64);
        let (got, used) = drain(&mut a, &r, 70_000);
        let want: Vec<u8> = data
            .chunks(2 * BLOCK_LEN)
            .zip(&used)
            .flat_map(|(p, s)| encrypt_to_vec(s, p))
            .collect();
        assert!(got == want, "ciphertext differs");
    }

    #[test]
    fn an_empty_stream_makes_no_file() {
        let (out, used) = run(&[], 100, 10);
        assert!(out.is_empty() && used.is_empty());
    }
}
