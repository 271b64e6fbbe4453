//! The age v1 payload: the STREAM construction over 64 KiB ChaCha20-Poly1305 blocks.
//! [`Encryptor`] is a `Write` adapter that writes one whole age file (header, nonce,
//! blocks) holding one block in memory; [`Decryptor`] is a `Read` adapter that releases a
//! block's plaintext only after its tag checks and fails on a truncated, extended or
//! altered file; [`ciphertext_size`] and [`plaintext_size`] convert sizes.

use super::error::AgeError;
use super::filekey::PayloadNonce;
use super::header::{Header, Sealing};
use super::keys::Identity;
use super::primitives::{Aead, TAG_LEN};
use std::io::{self, BufReader, Read, Write};

/// Plaintext bytes per payload block.
pub const BLOCK_LEN: usize = 64 * 1024;
/// The payload nonce's length.
pub const NONCE_LEN: usize = 16;
const SEALED_LEN: usize = BLOCK_LEN + TAG_LEN;

/// The STREAM nonce of block `counter`: an 11-byte big-endian counter, then 1 for the
/// final block and 0 for the others.
fn block_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// Number of payload blocks for a plaintext: at least one (an empty plaintext is one
/// empty final block), a full final block when the size is a multiple of 64 KiB.
fn blocks(plaintext: u64) -> u64 {
    plaintext.div_ceil(BLOCK_LEN as u64).max(1)
}

/// The size of the age file holding `plaintext` bytes under a header of `header_len`
/// bytes: header + 16-byte nonce + plaintext + 16 bytes of tag per block.
pub fn ciphertext_size(plaintext: u64, header_len: u64) -> u64 {
    header_len + NONCE_LEN as u64 + plaintext + TAG_LEN as u64 * blocks(plaintext)
}

/// The largest plaintext whose age file, under a header of at most `header_len` bytes,
/// is at most `limit` bytes (0 when not even an empty file fits): the inverse bound of
/// [`ciphertext_size`].
pub fn max_plaintext(limit: u64, header_len: u64) -> u64 {
    let Some(payload) = limit.checked_sub(header_len + NONCE_LEN as u64) else {
        return 0;
    };
    let full = payload / SEALED_LEN as u64;
    let rest = payload % SEALED_LEN as u64;
    full * BLOCK_LEN as u64 + rest.saturating_sub(TAG_LEN as u64)
}

/// The inverse of [`ciphertext_size`]: `None` when no plaintext size gives `ciphertext`.
pub fn plaintext_size(ciphertext: u64, header_len: u64) -> Option<u64> {
    let payload = ciphertext.checked_sub(header_len + NONCE_LEN as u64)?;
    let full = payload / SEALED_LEN as u64;
    let rest = payload % SEALED_LEN as u64;
    let plaintext = match rest {
        0 if full == 0 => return None,
        0 => full * BLOCK_LEN as u64,
        r if r < TAG_LEN as u64 => return None,
        r => full * BLOCK_LEN as u64 + (r - TAG_LEN as u64),
    };
    // An empty final block only when it is the only block.
    (ciphertext_size(plaintext, header_len) == ciphertext).then_some(plaintext)
}

/// Encrypts a plaintext written to it into one age file written to `inner`. The header
/// and nonce are written by [`Encryptor::new`]; [`Encryptor::finish`] writes the final
/// block and must be called (a dropped encryptor leaves a truncated file). The same
/// [`Sealing`] and plaintext give the same bytes, however the writes are split.
pub struct Encryptor<W: Write> {
    inner: W,
    aead: Aead,
    /// Plaintext of the current block; the tag is appended when it is sealed.
    buf: Vec<u8>,
    counter: u64,
    /// Set when `inner` failed mid-block: the output is no longer a prefix of the file.
    poisoned: bool,
}

impl<W: Write> Encryptor<W> {
    /// Writes the sealing's header and nonce to `inner`; the payload follows as written.
    pub fn new(sealing: &Sealing, mut inner: W) -> io::Result<Encryptor<W>> {
        inner.write_all(sealing.header().as_bytes())?;
        inner.write_all(&sealing.nonce().0)?;
        let key = sealing.file_key().payload_key(&sealing.nonce());
        Ok(Encryptor {
            inner,
            aead: Aead::new(&key),
            buf: Vec::with_capacity(SEALED_LEN),
            counter: 0,
            poisoned: false,
        })
    }

    fn check(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "age encryptor: an earlier write failed, the file is incomplete",
            ));
        }
        Ok(())
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        self.aead
            .seal(block_nonce(self.counter, last), &mut self.buf);
        self.poisoned = true;
        self.inner.write_all(&self.buf)?;
        self.poisoned = false;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    /// Writes the final block (empty if nothing was written; full if the plaintext is a
    /// multiple of 64 KiB) and returns the inner writer, not flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        self.seal(true)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        let mut rest = data;
        while !rest.is_empty() {
            // A full block is sealed only once more plaintext arrives: until then it may
            // be the final one.
            if self.buf.len() == BLOCK_LEN {
                self.seal(false)?;
            }
            let take = rest.len().min(BLOCK_LEN - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(data.len())
    }

    /// Flushes `inner`; a partial block stays buffered (it cannot be sealed yet).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Seals payload blocks in a buffer the caller owns, for a writer that reads plaintext
/// straight into the buffer it uploads: the caller writes the header and nonce
/// ([`Sealing::header`], [`Sealing::nonce`]), then hands each block, in order, as
/// `BLOCK_LEN` bytes of plaintext (fewer only in the final block) followed by
/// [`TAG_BYTES`] bytes of room for the tag. The bytes are those [`Encryptor`] writes.
pub struct BlockSealer {
    aead: Aead,
    counter: u64,
}

/// The Poly1305 tag after each payload block.
pub const TAG_BYTES: usize = TAG_LEN;

impl BlockSealer {
    /// A sealer of the payload blocks of `sealing`'s file.
    pub fn new(sealing: &Sealing) -> BlockSealer {
        let key = sealing.file_key().payload_key(&sealing.nonce());
        BlockSealer {
            aead: Aead::new(&key),
            counter: 0,
        }
    }

    /// Encrypts `block[..len - TAG_BYTES]` in place and writes its tag into the last
    /// `TAG_BYTES` bytes. A non-final block must hold exactly `BLOCK_LEN` bytes of
    /// plaintext, and only the final block of a file may be empty.
    pub fn seal_in_place(&mut self, block: &mut [u8], last: bool) {
        let plain = block.len().saturating_sub(TAG_LEN);
        debug_assert!(block.len() >= TAG_LEN && (last || plain == BLOCK_LEN));
        let (data, tag) = block.split_at_mut(plain);
        self.aead
            .seal_separate(block_nonce(self.counter, last), data, tag);
        self.counter += 1;
    }
}

/// Encrypts `plaintext` into a whole age file in memory (for small objects and tests).
pub fn encrypt_to_vec(sealing: &Sealing, plaintext: &[u8]) -> Vec<u8> {
    let size = ciphertext_size(
        plaintext.len() as u64,
        sealing.header().as_bytes().len() as u64,
    );
    let out = Vec::with_capacity(size as usize);
    let write = |out| -> io::Result<Vec<u8>> {
        let mut enc = Encryptor::new(sealing, out)?;
        enc.write_all(plaintext)?;
        enc.finish()
    };
    write(out).expect("writing to a Vec does not fail")
}

/// Decrypts one age file read from `inner` with the given identities. [`Decryptor::new`]
/// reads the header and nonce and unwraps the file key (so a wrong identity or a
/// tampered header fails before any payload is read); `read` then releases each block's
/// plaintext after its tag verifies, and returns 0 only after a valid final block that
/// ends the input. Errors are `InvalidData` I/O errors carrying an [`AgeError`]
/// ([`AgeError::from_io`]). One block of memory.
pub struct Decryptor<R: Read> {
    inner: BufReader<R>,
    header: Header,
    aead: Aead,
    /// The sealed block being read plus one byte of look-ahead (it tells a full
    /// non-final block from a full final one).
    buf: Vec<u8>,
    /// Verified plaintext still to hand out: `buf[pos..end]`.
    pos: usize,
    end: usize,
    counter: u64,
    state: State,
}

enum State {
    Reading,
    Done,
    Failed(AgeError),
}

impl<R: Read> Decryptor<R> {
    /// Reads and checks the header with `identities` (one must unwrap the file key).
    pub fn new(inner: R, identities: &[Identity]) -> Result<Decryptor<R>, AgeError> {
        let mut inner = BufReader::new(inner);
        let header = Header::read_from(&mut inner)?;
        let file_key = header.unwrap_file_key(identities)?;
        let mut nonce = [0u8; NONCE_LEN];
        inner.read_exact(&mut nonce).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                AgeError::TruncatedHeader
            } else {
                AgeError::Read(e.to_string())
            }
        })?;
        let key = file_key.payload_key(&PayloadNonce(nonce));
        Ok(Decryptor {
            inner,
            header,
            aead: Aead::new(&key),
            buf: Vec::with_capacity(SEALED_LEN + 1),
            pos: 0,
            end: 0,
            counter: 0,
            state: State::Reading,
        })
    }

    /// The file's header, e.g. to compare [`Header::digest`] with a recorded one.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Fails with [`AgeError::OtherFile`] unless the header's digest is `expected`.
    pub fn expect_header(&self, expected: &[u8; 32]) -> Result<(), AgeError> {
        if &self.header.digest() == expected {
            Ok(())
        } else {
            Err(AgeError::OtherFile)
        }
    }

    /// Reads, verifies and decrypts the next block into `buf[..end]`.
    fn next_block(&mut self) -> io::Result<()> {
        // Keep the look-ahead byte of the previous round, if any.
        let carry = self.buf.get(SEALED_LEN).copied();
        self.buf.clear();
        self.buf.extend(carry);
        while self.buf.len() < SEALED_LEN + 1 {
            let have = self.buf.len();
            self.buf.resize(SEALED_LEN + 1, 0);
            match self.inner.read(&mut self.buf[have..]) {
                Ok(0) => {
                    self.buf.truncate(have);
                    break;
                }
                Ok(n) => self.buf.truncate(have + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(have),
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            }
        }
        let last = self.buf.len() <= SEALED_LEN;
        let sealed = self.buf.len().min(SEALED_LEN);
        if last && sealed < TAG_LEN {
            // (Nothing at all after a non-final block cannot happen: a block is only
            // non-final when a byte follows it.)
            return Err(self.fail(if sealed == 0 {
                AgeError::NoPayload
            } else {
                AgeError::Block {
                    block: self.counter,
                }
            }));
        }
        if last && sealed == TAG_LEN && self.counter > 0 {
            return Err(self.fail(AgeError::EmptyFinalBlock {
                block: self.counter,
            }));
        }
        // A full block that ends the input may be a valid non-final block of a file cut
        // at a block boundary: keep a copy to say so (one block per file, on the last).
        let copy = (last && sealed == SEALED_LEN).then(|| self.buf[..sealed].to_vec());
        let nonce = block_nonce(self.counter, last);
        if !self.aead.open(nonce, &mut self.buf[..sealed]) {
            let cut_short = copy.is_some_and(|mut copy| {
                self.aead.open(block_nonce(self.counter, false), &mut copy)
            });
            let e = if cut_short {
                AgeError::NoFinalBlock {
                    after: self.counter,
                }
            } else {
                AgeError::Block {
                    block: self.counter,
                }
            };
            return Err(self.fail(e));
        }
        self.pos = 0;
        self.end = sealed - TAG_LEN;
        self.counter += 1;
        if last {
            self.state = State::Done;
            // Nothing to carry: the input ended.
            self.buf.truncate(sealed);
        }
        Ok(())
    }

    fn fail(&mut self, e: AgeError) -> io::Error {
        self.state = State::Failed(e.clone());
        e.into_io()
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.end {
            match &self.state {
                State::Failed(e) => return Err(e.clone().into_io()),
                State::Done => return Ok(0),
                State::Reading => self.next_block()?,
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
