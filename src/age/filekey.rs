//! The values a header and a recipient exchange: the [`FileKey`] (and the payload key it
//! derives with a [`PayloadNonce`]) and the [`Stanza`] that carries it wrapped. A module
//! of its own so that `header` (which holds stanzas) and `keys` (which wraps and unwraps
//! file keys) need not import each other.

use super::error::AgeError;
use super::primitives::{fill_random, hkdf_sha256};
use std::fmt;
use zeroize::Zeroizing;

/// Bytes in a file key.
pub(super) const FILE_KEY_LEN: usize = 16;

/// The 16-byte key of one age file, from the OS random generator. Never printed; wiped
/// when dropped.
#[derive(Clone)]
pub struct FileKey(Zeroizing<[u8; FILE_KEY_LEN]>);

impl FileKey {
    /// A fresh random file key.
    pub fn generate() -> Result<FileKey, AgeError> {
        let mut key = Zeroizing::new([0u8; FILE_KEY_LEN]);
        fill_random(&mut key[..]).map_err(|e| AgeError::Random(e.to_string()))?;
        Ok(FileKey(key))
    }

    /// A file key kept earlier (the resume journal).
    pub fn from_bytes(bytes: [u8; FILE_KEY_LEN]) -> FileKey {
        FileKey(Zeroizing::new(bytes))
    }

    /// The key bytes, to keep in a 0600 journal; nothing else should need them.
    pub fn expose_secret(&self) -> &[u8; FILE_KEY_LEN] {
        &self.0
    }

    pub(super) fn mac_key(&self) -> Zeroizing<[u8; 32]> {
        hkdf_sha256(&self.0[..], b"", b"header")
    }

    /// `HKDF-SHA-256(ikm = file key, salt = nonce, info = "payload")`.
    pub(super) fn payload_key(&self, nonce: &PayloadNonce) -> Zeroizing<[u8; 32]> {
        hkdf_sha256(&self.0[..], &nonce.0, b"payload")
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(redacted)")
    }
}

/// The 16 bytes between the header and the payload, the payload key's HKDF salt. Not
/// secret (it is stored in the clear in the file).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PayloadNonce(pub [u8; 16]);

impl PayloadNonce {
    /// A fresh random nonce.
    pub fn generate() -> Result<PayloadNonce, AgeError> {
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce).map_err(|e| AgeError::Random(e.to_string()))?;
        Ok(PayloadNonce(nonce))
    }
}

/// One recipient stanza: arguments (the first is the type) and the body bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stanza {
    /// The arguments; the first is the stanza's type (`X25519`).
    pub args: Vec<String>,
    /// The body bytes (base64-decoded).
    pub body: Vec<u8>,
}
