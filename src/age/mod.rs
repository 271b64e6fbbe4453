//! The age v1 file format (age-encryption.org/v1), X25519 recipients only, as a layer the
//! backup pipeline can put around each chunk: every object it writes is one standard age
//! file that `age -d -i KEY` decrypts. Built on ring (ChaCha20-Poly1305, HKDF, HMAC, OS
//! RNG) and x25519-dalek; only the framing is ours (see `primitives.rs`).
//!
//! - Keys (`keys.rs`): [`Recipient::parse`] (`age1…`), [`parse_recipient_list`] (errors
//!   name the index), [`parse_recipients_file`] / [`read_recipients_file`] (age's `-R`
//!   format; errors name the line), [`Recipient::fingerprint`] (16 hex digits of the
//!   SHA-256 of the `age1…` string, for display); [`read_identity_file`]
//!   (`AGE-SECRET-KEY-1…` lines, refused when group or others may read it, opened
//!   `O_NOFOLLOW`, mode checked on the opened descriptor).
//! - Header (`header.rs`): [`FileKey`] (16 bytes from the OS RNG), [`Header`] (built for
//!   the recipients, MACed, as bytes; parsed strictly, at most 1 MiB), [`PayloadNonce`],
//!   and [`Sealing`], the three together. A `Sealing` kept (in a 0600 journal) and
//!   rebuilt with [`Sealing::from_parts`] encrypts the same plaintext to the same bytes:
//!   that is what lets an interrupted upload resume. Never encrypt different plaintext
//!   with a used `Sealing`.
//! - Payload (`stream.rs`): [`Encryptor`] (a `Write` adapter, one 64 KiB block in
//!   memory), [`BlockSealer`] (the same blocks sealed in place in a caller's buffer),
//!   [`Decryptor`] (a `Read` adapter that releases only verified blocks and
//!   fails on a wrong identity, an altered header or block, a truncated or extended file,
//!   or a header spliced onto another file's payload); [`Decryptor::expect_header`]
//!   catches a whole age file swapped for another one encrypted to the same recipients,
//!   given the [`Header::digest`] recorded when it was written. [`ciphertext_size`] and
//!   [`plaintext_size`] convert sizes.
//!
//! Secrets: [`FileKey`] and [`Identity`] print as redacted in `Debug`, have no `Display`,
//! and are wiped from memory when dropped, as is an identity file's text. Errors never
//! quote key text or file bytes.
//!
//! Not here: SSH, scrypt (passphrase), plugin and post-quantum recipients; the ASCII armor.

mod error;
mod filekey;
mod header;
mod keys;
mod primitives;
mod stream;
#[cfg(test)]
mod tests;

pub use error::{AgeError, KeyError, Position};
pub use filekey::{FileKey, PayloadNonce, Stanza};
pub use header::{Header, Sealing, MAX_HEADER_LEN};
pub use keys::{
    parse_identity_file, parse_recipient_list, parse_recipients_file, read_identity_file,
    read_recipients_file, Identity, Recipient,
};
pub use stream::{
    ciphertext_size, encrypt_to_vec, max_plaintext, plaintext_size, BlockSealer, Decryptor,
    Encryptor, BLOCK_LEN, NONCE_LEN, TAG_BYTES,
};
