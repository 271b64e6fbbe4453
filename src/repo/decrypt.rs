//! The decrypt step of restoring an encrypted manifest: the verified download
//! (`download::stream_chunks`, ciphertext size and SHA-256 per chunk) runs on a thread of
//! its own and hands its bytes over a bounded channel; this thread reads each chunk's age
//! file, checks its header against the digest the sealed part recorded (a chunk swapped
//! for another one is another file), and writes only authenticated plaintext on (the
//! send-stream guard, then `btrfs receive`). Every failure names the chunk.

use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::age::{AgeError, Decryptor, Identity};
use crate::chunker::hex;
use crate::manifest::{ChunkEntry, SealedPart};
use crate::retry::Retrier;
use crate::store::ObjectStore;

/// The largest message on the channel: a downloaded piece (a whole part, up to 5 GiB) goes
/// over in slices of this size, so the channel's two slots and the reader's current one
/// hold at most 3 MiB whatever the part size.
const SLICE: usize = 1 << 20;

/// The download's end of the channel.
struct ChanWriter(Sender<Vec<u8>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(SLICE);
        self.0
            .send(buf[..n].to_vec())
            .map_err(|_| std::io::Error::other("the decryption stopped"))?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The decrypting end: the downloaded bytes as one stream.
struct ChanReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    /// The download has ended (its end of the channel is gone).
    ended: bool,
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Downloads and decrypts one encrypted manifest's chunks into `out`; returns the
/// plaintext bytes written.
#[allow(clippy::too_many_arguments)]
pub fn stream_decrypted(
    store: Arc<dyn ObjectStore>,
    retrier: Arc<Retrier>,
    chunks: &[ChunkEntry],
    sealed: &SealedPart,
    identities: &[Identity],
    piece_size: u64,
    concurrency: usize,
    out: &mut dyn Write,
) -> Result<u64, super::download::DownloadError> {
    std::thread::scope(|s| {
        let (tx, rx) = bounded::<Vec<u8>>(2);
        let download = std::thread::Builder::new()
            .name("download".into())
            .spawn_scoped(s, move || {
                let mut w = ChanWriter(tx);
                super::download::stream_chunks(
                    store,
                    retrier,
                    chunks,
                    None,
                    piece_size,
                    concurrency,
                    &mut w,
                )
            })
            .map_err(|e| anyhow!("starting the download thread: {e}"))?;
        let mut reader = ChanReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            ended: false,
        };
        let decrypted = decrypt_all(&mut reader, chunks, sealed, identities, out);
        let ran_dry = reader.ended;
        // Dropping our end stops the download at its next write.
        drop(reader);
        let downloaded = download
            .join()
            .map_err(|_| anyhow!("the download thread panicked"))?;
        // The decryption's error names what is wrong with the plaintext, unless the
        // download ended first (a hash mismatch, the network): then that is the cause.
        match (decrypted, downloaded) {
            (Ok(n), Ok(_)) => Ok(n),
            (Err(e), Ok(_)) => Err(e.into()),
            (Ok(_), Err(e)) => Err(e),
            (Err(_), Err(d)) if ran_dry => Err(d),
            (Err(e), Err(_)) => Err(e.into()),
        }
    })
}

fn decrypt_all(
    reader: &mut ChanReader,
    chunks: &[ChunkEntry],
    sealed: &SealedPart,
    identities: &[Identity],
    out: &mut dyn Write,
) -> Result<u64> {
    if chunks.len() != sealed.chunks.len() {
        bail!("internal: the sealed part does not match the chunks");
    }
    let mut written = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    for (c, s) in chunks.iter().zip(&sealed.chunks) {
        let key = &c.key;
        let mut body = (&mut *reader).take(c.size);
        let mut dec = match Decryptor::new(&mut body, identities) {
            Ok(d) => d,
            Err(AgeError::NoIdentityMatches { .. }) => bail!(
                "chunk {key}: this identity cannot decrypt it (it is encrypted to none of \
                 the identities given)"
            ),
            Err(e) => bail!("chunk {key}: {e}"),
        };
        if hex(&dec.header().digest()) != s.header_sha256 {
            bail!("chunk {key}: {}", AgeError::OtherFile);
        }
        let mut n = 0u64;
        loop {
            let k = match dec.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => match AgeError::from_io(&e) {
                    Some(a) => bail!("chunk {key}: {a}"),
                    None => bail!("chunk {key}: reading the download: {e}"),
                },
            };
            if let Err(e) = out.write_all(&buf[..k]) {
                if let Some(r) = crate::sendstream::refusal(&e) {
                    return Err(r.clone().into());
                }
                bail!("btrfs receive stopped taking the stream at chunk {key} ({e})");
            }
            n += k as u64;
        }
        if n != s.size {
            bail!(
                "chunk {key}: it decrypts to {n} bytes, and the manifest's sealed part says {}",
                s.size
            );
        }
        written += n;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_part_crosses_the_channel_in_slices_of_at_most_a_mebibyte() {
        let (tx, rx) = bounded::<Vec<u8>>(8);
        let mut w = ChanWriter(tx);
        let part: Vec<u8> = (0..(3 * SLICE + 5)).map(|i| i as u8).collect();
        w.write_all(&part).unwrap();
        drop(w);
        let got: Vec<Vec<u8>> = rx.iter().collect();
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [SLICE, SLICE, SLICE, 5]
        );
        assert_eq!(got.concat(), part);
    }
}
