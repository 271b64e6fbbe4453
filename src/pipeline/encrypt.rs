//! The pipeline's input when backups are encrypted: the plaintext send stream turned into
//! one age file per `chunk_size` bytes of plaintext, written back to back, so the
//! pipeline cuts, hashes and uploads ciphertext chunks exactly as it does plain ones.
//! Each file's [`Sealing`] is handed in before its chunk's first byte is read
//! ([`AgeChunks::start`]); plaintext is read straight into the caller's buffer and
//! sealed there, block by block (only a block that straddles the end of a part, and the
//! header, go through a side buffer). The send pipe itself is read [`PLAIN_READ`] bytes
//! at a time: one 64 KiB read per block (and a 1-byte look-ahead read after each) cost
//! more in system calls and `btrfs send` wake-ups than copying out of a buffer costs.

use std::io::{self, BufReader, Read};

use crate::age::{BlockSealer, Sealing, BLOCK_LEN, TAG_BYTES};

/// Bytes of plaintext asked of the send pipe at a time (the pipe holds 1 MiB, see
/// `btrfs.rs`): the memory this adds to the pipeline's bound.
pub const PLAIN_READ: usize = 1 << 20;

/// The age files of one stream, one per chunk.
pub struct AgeChunks<'a> {
    inner: BufReader<&'a mut dyn Read>,
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
            inner: BufReader::with_capacity(PLAIN_READ, inner),
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

    /// Seals the current file's next block into `out` (plaintext length + tag room):
    /// returns the bytes written there.
    fn block_into(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.current.as_ref().map(|c| c.1) else {
            return Ok(0);
        };
        let want = left.min(BLOCK_LEN as u64) as usize;
        let n = self.read_plain(&mut out[..want])?;
        let left = left - n as u64;
        let last = n < want || left == 0 || !self.more()?;
        let Some((sealer, l)) = &mut self.current else {
            return Ok(0);
        };
        *l = left;
        sealer.seal_in_place(&mut out[..n + TAG_BYTES], last);
        if last {
            self.current = None;
        }
        Ok(n + TAG_BYTES)
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
                return self.block_into(out);
            }
            let mut side = std::mem::take(&mut self.side);
            side.resize(room, 0);
            let r = self.block_into(&mut side);
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
        let mut out = Vec::new();
        let mut used = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            if a.between_files() && a.next.is_none() {
                let s = Sealing::new(std::slice::from_ref(&r)).expect("sealing");
                used.push(s.clone());
                a.start(s);
            }
            let n = a.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        // The last sealing was never used when the stream ended between files.
        if a.next.is_some() {
            used.pop();
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

    #[test]
    fn an_empty_stream_makes_no_file() {
        let (out, used) = run(&[], 100, 10);
        assert!(out.is_empty() && used.is_empty());
    }
}
