//! The cryptographic primitives the age format names, as thin calls into maintained crates:
//! ChaCha20-Poly1305, HKDF-SHA-256, HMAC-SHA-256 and the OS random generator from ring,
//! X25519 from x25519-dalek (in `keys.rs`). Nothing here is a cipher, MAC or KDF of our own.

use ring::{aead, hkdf, hmac, rand::SecureRandom};
use std::io;
use zeroize::Zeroizing;

/// Fills `out` from the operating system's random generator (getrandom(2)).
pub(super) fn fill_random(out: &mut [u8]) -> io::Result<()> {
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| io::Error::other("the operating system's random generator failed"))
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (RFC 5869) with a 32-byte output, the only length age derives.
pub(super) fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(32))
        .expect("32 bytes is within HKDF-SHA-256's output limit");
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(&mut out[..])
        .expect("the buffer has the length asked for");
    out
}

/// HMAC-SHA-256 of `data` under `key`.
pub(super) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Compares an HMAC-SHA-256 in constant time.
pub(super) fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), data, tag).is_ok()
}

/// ChaCha20-Poly1305 (RFC 8439) under one key, with a caller-built 12-byte nonce.
pub(super) struct Aead(aead::LessSafeKey);

/// The Poly1305 tag's length.
pub(super) const TAG_LEN: usize = 16;

impl Aead {
    pub(super) fn new(key: &[u8; 32]) -> Aead {
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .expect("a 32-byte key is ChaCha20-Poly1305's key length");
        Aead(aead::LessSafeKey::new(key))
    }

    /// Encrypts `buf` in place and appends the tag.
    pub(super) fn seal(&self, nonce: [u8; 12], buf: &mut Vec<u8>) {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                buf,
            )
            .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Encrypts `data` in place and writes the tag into `tag` (`TAG_LEN` bytes).
    pub(super) fn seal_separate(&self, nonce: [u8; 12], data: &mut [u8], tag: &mut [u8]) {
        let t = self
            .0
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                data,
            )
            .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
        tag.copy_from_slice(t.as_ref());
    }

    /// Checks the tag at the end of `buf` and decrypts in place: the plaintext is
    /// `buf[..buf.len() - TAG_LEN]` on success, and nothing is released on failure.
    pub(super) fn open(&self, nonce: [u8; 12], buf: &mut [u8]) -> bool {
        self.0
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                buf,
            )
            .is_ok()
    }
}
