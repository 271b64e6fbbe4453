//! SHA-256 for the chunker, with a state of our own so that two hashes over the same
//! bytes (the whole stream's and the current chunk's) can share one pass.
//!
//! Compressing blocks is sha2's `compress256`, except in [`compress_pair`]: on x86-64
//! CPUs with the SHA extensions it runs both hashes' rounds interleaved over one shared
//! message schedule. One SHA-256 is a chain of dependent `sha256rnds2` instructions, which
//! leaves a core room for a second, independent chain: measured on this project's 2-core
//! EPYC test machine, both hashes of a buffer cost 0.79 CPU s/GiB in one pass against
//! 1.37 s/GiB for two `sha2` passes. Without those CPU features it is two `compress256`
//! calls. Every path is tested against `sha2::Sha256`.

use sha2::digest::generic_array::{typenum::U64, GenericArray};

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A streaming SHA-256: the chaining state, the byte count and the bytes of a partial block.
#[derive(Clone)]
pub struct Hasher {
    state: [u32; 8],
    len: u64,
    /// The first `len % 64` bytes are the pending partial block.
    buf: [u8; 64],
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher {
            state: H0,
            len: 0,
            buf: [0; 64],
        }
    }

    fn pending(&self) -> usize {
        (self.len % 64) as usize
    }

    pub fn update(&mut self, data: &[u8]) {
        let pending = self.pending();
        let Some(rest) = self.fill_buf(data) else {
            return;
        };
        if pending > 0 {
            // `fill_buf` completed the buffered block.
            let block = self.buf;
            compress(&mut self.state, &block);
        }
        let full = rest.len() - rest.len() % 64;
        compress(&mut self.state, &rest[..full]);
        self.buf[..rest.len() - full].copy_from_slice(&rest[full..]);
    }

    /// Counts `data` and tops up a pending partial block from it. Returns the bytes that are
    /// left once that block is complete (all of `data` if nothing was pending), or `None`
    /// when `data` only extended the partial block.
    fn fill_buf<'a>(&mut self, data: &'a [u8]) -> Option<&'a [u8]> {
        let pending = self.pending();
        self.len += data.len() as u64;
        if pending == 0 {
            return Some(data);
        }
        let take = (64 - pending).min(data.len());
        self.buf[pending..pending + take].copy_from_slice(&data[..take]);
        (pending + take == 64).then(|| &data[take..])
    }

    /// The digest of the bytes so far; the hasher can go on.
    pub fn finalize(&self) -> [u8; 32] {
        let mut state = self.state;
        let pending = self.pending();
        let mut tail = [0u8; 128];
        tail[..pending].copy_from_slice(&self.buf[..pending]);
        tail[pending] = 0x80;
        let end = if pending < 56 { 64 } else { 128 };
        tail[end - 8..end].copy_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress(&mut state, &tail[..end]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// The hashes of a stream cut into chunks: the whole stream's and the current chunk's, over
/// bytes fed once. The first chunk is a prefix of the stream, so while in it the stream
/// hasher serves both; later chunks go through [`update_both`].
#[derive(Clone, Default)]
pub struct StreamHashes {
    stream: Hasher,
    /// `None` while in the first chunk.
    chunk: Option<Hasher>,
}

impl StreamHashes {
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.chunk {
            Some(h) => update_both(&mut self.stream, h, bytes),
            None => self.stream.update(bytes),
        }
    }

    /// The current chunk's digest; the next bytes start a new chunk.
    pub fn end_chunk(&mut self) -> [u8; 32] {
        match self.chunk.replace(Hasher::new()) {
            Some(h) => h.finalize(),
            None => self.stream.finalize(),
        }
    }

    /// The digest of the current chunk's bytes so far (the chunk goes on).
    pub fn chunk_so_far(&self) -> [u8; 32] {
        match &self.chunk {
            Some(h) => h.finalize(),
            None => self.stream.finalize(),
        }
    }

    /// The digest of the whole stream so far.
    pub fn stream(&self) -> [u8; 32] {
        self.stream.finalize()
    }
}

/// Feeds `data` to both hashers; in one pass when their partial blocks are the same bytes
/// (true for the stream and a chunk that starts at a multiple of 64 bytes), else in two.
pub fn update_both(a: &mut Hasher, b: &mut Hasher, data: &[u8]) {
    let pending = a.pending();
    if pending != b.pending() || a.buf[..pending] != b.buf[..pending] {
        a.update(data);
        b.update(data);
        return;
    }
    a.fill_buf(data);
    let Some(rest) = b.fill_buf(data) else {
        return;
    };
    if pending > 0 {
        // Both buffers now hold the same completed block.
        let block = a.buf;
        compress_pair(&mut a.state, &mut b.state, &block);
    }
    let full = rest.len() - rest.len() % 64;
    compress_pair(&mut a.state, &mut b.state, &rest[..full]);
    let tail = rest.len() - full;
    a.buf[..tail].copy_from_slice(&rest[full..]);
    b.buf[..tail].copy_from_slice(&rest[full..]);
}

// `compress` views bytes as blocks; this holds the layout it relies on to the compiler.
const _: () = assert!(
    std::mem::size_of::<GenericArray<u8, U64>>() == 64
        && std::mem::align_of::<GenericArray<u8, U64>>() == 1
);

/// Compresses whole 64-byte blocks into one state with sha2's `compress256`.
fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % 64, 0);
    let n = blocks.len() / 64;
    // SAFETY: `GenericArray<u8, U64>` has the layout of `[u8; 64]` (it is
    // `#[repr(transparent)]` over nested `#[repr(C)]` halves of `u8`s; size 64 and
    // alignment 1, asserted above), which is how generic-array's own `from_slice` casts.
    // `blocks` holds exactly `n * 64` initialised bytes that outlive the borrow.
    let blocks: &[GenericArray<u8, U64>] =
        unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), n) };
    sha2::compress256(state, blocks);
}

/// Compresses the same whole blocks into two states.
fn compress_pair(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % 64, 0);
    if blocks.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        // SAFETY: the CPU has the features `shani::pair` is compiled for.
        unsafe { shani::pair(a, b, blocks) };
        return;
    }
    compress(a, blocks);
    compress(b, blocks);
}

#[cfg(target_arch = "x86_64")]
mod shani {
    //! Two SHA-256 states over the same blocks with the x86 SHA extensions. The steps are
    //! those of Intel's "New Instructions Supporting the Secure Hash Algorithm on Intel
    //! Architecture Processors" (2013), with each `sha256rnds2` issued once per state.
    use std::arch::x86_64::*;

    /// SHA-256's round constants (FIPS 180-4, 4.2.2).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    pub fn available() -> bool {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }

    /// The state as the two registers `sha256rnds2` works on: (ABEF, CDGH).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load(s: &[u32; 8]) -> (__m128i, __m128i) {
        // SAFETY: both 16-byte unaligned loads are within the 32 bytes of `s`.
        let (dcba, hgfe) = unsafe {
            (
                _mm_loadu_si128(s.as_ptr().cast()),
                _mm_loadu_si128(s.as_ptr().add(4).cast()),
            )
        };
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        (
            _mm_alignr_epi8(cdab, efgh, 8),
            _mm_blend_epi16(efgh, cdab, 0xF0),
        )
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn store(s: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgef = _mm_alignr_epi8(dchg, feba, 8);
        // SAFETY: both 16-byte unaligned stores are within the 32 bytes of `s`.
        unsafe {
            _mm_storeu_si128(s.as_mut_ptr().cast(), dcba);
            _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), hgef);
        }
    }

    /// # Safety
    /// The CPU must have the SHA, SSE2, SSSE3 and SSE4.1 extensions ([`available`]).
    /// `blocks.len()` must be a multiple of 64 (a shorter tail is ignored).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn pair(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[u8]) {
        // Byte swap of each 32-bit word: the message is big-endian.
        let swap = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
        let (mut abef_a, mut cdgh_a) = load(a);
        let (mut abef_b, mut cdgh_b) = load(b);
        for block in blocks.chunks_exact(64) {
            let saved = (abef_a, cdgh_a, abef_b, cdgh_b);
            // The message schedule, four words per register, computed once for both.
            let mut w = [_mm_setzero_si128(); 4];
            for (i, w) in w.iter_mut().enumerate() {
                // SAFETY: bytes 16 i .. 16 i + 16 of a 64-byte block.
                *w = _mm_shuffle_epi8(
                    unsafe { _mm_loadu_si128(block.as_ptr().add(16 * i).cast()) },
                    swap,
                );
            }
            for i in 0..16 {
                if i >= 4 {
                    // W[4i..4i+4] from the previous 16 words; w[i % 4] holds the oldest.
                    let (w0, w1, w2, w3) =
                        (w[i % 4], w[(i + 1) % 4], w[(i + 2) % 4], w[(i + 3) % 4]);
                    let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4));
                    w[i % 4] = _mm_sha256msg2_epu32(t, w3);
                }
                // SAFETY: `K` has 64 words; words 4i .. 4i + 4 are in range for i < 16.
                let k = unsafe { _mm_loadu_si128(K.as_ptr().add(4 * i).cast()) };
                let wk = _mm_add_epi32(w[i % 4], k);
                let wk_hi = _mm_shuffle_epi32(wk, 0x0E);
                cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, wk);
                cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, wk);
                abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, wk_hi);
                abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, wk_hi);
            }
            abef_a = _mm_add_epi32(abef_a, saved.0);
            cdgh_a = _mm_add_epi32(cdgh_a, saved.1);
            abef_b = _mm_add_epi32(abef_b, saved.2);
            cdgh_b = _mm_add_epi32(cdgh_b, saved.3);
        }
        store(a, abef_a, cdgh_a);
        store(b, abef_b, cdgh_b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Deterministic bytes that are not a short period.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn reference(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn known_answers() {
        let empty = Hasher::new().finalize();
        assert_eq!(
            crate::chunker::hex(&empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Hasher::new();
        h.update(b"abc");
        assert_eq!(
            crate::chunker::hex(&h.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn every_length_around_the_padding_edges_matches_sha2() {
        let data = bytes(300, 1);
        for n in 0..data.len() {
            let mut h = Hasher::new();
            h.update(&data[..n]);
            assert_eq!(h.finalize(), reference(&data[..n]), "length {n}");
        }
    }

    #[test]
    fn any_split_of_the_input_matches_sha2() {
        let data = bytes(4096 + 77, 2);
        for step in [1, 3, 63, 64, 65, 100, 127, 1000, 5000] {
            let mut h = Hasher::new();
            for piece in data.chunks(step) {
                h.update(piece);
                // finalize does not disturb the running state.
                let _ = h.finalize();
            }
            assert_eq!(h.finalize(), reference(&data), "pieces of {step}");
        }
    }

    /// The stream hasher `a` over all of `data`; `b` starts at `offset`, as a chunk does.
    fn both(data: &[u8], offset: usize, step: usize) -> ([u8; 32], [u8; 32]) {
        let mut a = Hasher::new();
        a.update(&data[..offset]);
        let mut b = Hasher::new();
        for piece in data[offset..].chunks(step) {
            update_both(&mut a, &mut b, piece);
        }
        (a.finalize(), b.finalize())
    }

    #[test]
    fn both_hashes_match_sha2_aligned_or_not() {
        let data = bytes(64 * 40 + 13, 3);
        // 0, 64, 128: one pass (same partial blocks); the others: two passes.
        for offset in [0, 1, 63, 64, 65, 128, 200] {
            for step in [1, 7, 64, 100, 1024, 4096] {
                let (a, b) = both(&data, offset, step);
                assert_eq!(a, reference(&data), "stream, offset {offset} step {step}");
                assert_eq!(
                    b,
                    reference(&data[offset..]),
                    "chunk, offset {offset} step {step}"
                );
            }
        }
    }

    #[test]
    fn stream_hashes_give_each_chunk_and_the_stream() {
        let data = bytes(1000, 9);
        // Chunk ends: 0 (an empty first chunk), 128, 128 (empty), 640, 777 (unaligned), 1000.
        let ends = [0, 128, 128, 640, 777, 1000];
        let mut h = StreamHashes::default();
        let mut start = 0;
        for end in ends {
            for piece in data[start..end].chunks(50) {
                h.update(piece);
            }
            assert_eq!(
                h.end_chunk(),
                reference(&data[start..end]),
                "chunk {start}..{end}"
            );
            start = end;
        }
        assert_eq!(h.stream(), reference(&data));
    }

    #[test]
    fn a_pair_with_different_partial_blocks_of_the_same_length_is_kept_apart() {
        let x = bytes(10, 4);
        let y = bytes(10, 5);
        let z = bytes(500, 6);
        let (mut a, mut b) = (Hasher::new(), Hasher::new());
        a.update(&x);
        b.update(&y);
        update_both(&mut a, &mut b, &z);
        assert_eq!(a.finalize(), reference(&[x, z.clone()].concat()));
        assert_eq!(b.finalize(), reference(&[y, z].concat()));
    }

    #[test]
    fn the_pair_compression_matches_compress256_on_distinct_states() {
        let blocks = bytes(64 * 33, 7);
        let mut a = H0;
        let mut b = [1, 2, 3, 4, 5, 6, 7, 8];
        let (mut ra, mut rb) = (a, b);
        compress_pair(&mut a, &mut b, &blocks);
        compress(&mut ra, &blocks);
        compress(&mut rb, &blocks);
        assert_eq!((a, b), (ra, rb));
    }

    /// The SHA-extension path itself, called directly. On a CPU without the extensions
    /// `compress_pair` never takes it, and the test says so instead of passing quietly.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_sha_extension_kernel_matches_compress256() {
        // Not a silent skip: without the extensions the kernel is not used and cannot be
        // checked here, and that has to be said out loud.
        if !shani::available() {
            assert!(
                std::env::var("BTRFS_TO_S3_NO_SHA_NI").as_deref() == Ok("1"),
                "this CPU has no SHA extensions, so the paired kernel cannot be tested here; \
                 set BTRFS_TO_S3_NO_SHA_NI=1 to accept that (the fallback is tested anyway)"
            );
            return;
        }
        for n in [0, 1, 2, 17] {
            let blocks = bytes(64 * n, 8 + n as u64);
            let mut a = [9, 8, 7, 6, 5, 4, 3, 2];
            let mut b = H0;
            let (mut ra, mut rb) = (a, b);
            // SAFETY: `available()` said the CPU has the features.
            unsafe { shani::pair(&mut a, &mut b, &blocks) };
            compress(&mut ra, &blocks);
            compress(&mut rb, &blocks);
            assert_eq!((a, b), (ra, rb), "{n} blocks");
        }
    }
}
