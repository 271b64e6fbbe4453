//! The `[encryption]` table: the age recipients backups are encrypted to (`recipients`,
//! a list of `age1…`, and/or `recipients_file`, age's `-R` format, read at load) and the
//! identity files restore and `verify --deep` decrypt with (`identity_files`, read only
//! when used). Absent: backups are not encrypted.

use std::path::PathBuf;

use super::file::EncryptionKeys;
use super::{err, expand, ConfigError, Env};
use crate::age::{read_recipients_file, Recipient};

/// Client-side encryption settings.
#[derive(Clone, Debug, Default)]
pub struct Encryption {
    /// Every recipient new chunks are encrypted to (empty: backups are not encrypted).
    pub recipients: Vec<Recipient>,
    /// Identity files for restore and `verify --deep` (paths only; read when used).
    pub identity_files: Vec<PathBuf>,
}

impl Encryption {
    pub fn enabled(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// The recipients' display fingerprints, in order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.recipients.iter().map(|r| r.fingerprint()).collect()
    }

    /// The table's keys resolved: the recipients file read and merged (duplicates once),
    /// identity paths expanded.
    pub(super) fn resolve(keys: EncryptionKeys, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut recipients = keys.recipients.map(|r| r.0).unwrap_or_default();
        if let Some(raw) = keys.recipients_file {
            let path = expand(env, "encryption.recipients_file", &raw.0)?;
            // An empty file is an error there too (it names the file).
            let from_file = read_recipients_file(&path)
                .map_err(|e| ConfigError(format!("encryption.recipients_file: {e}")))?;
            for r in from_file {
                if !recipients.contains(&r) {
                    recipients.push(r);
                }
            }
        }
        let mut identity_files = Vec::new();
        for (i, raw) in keys
            .identity_files
            .map(|l| l.0)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            identity_files.push(expand(
                env,
                &format!("encryption.identity_files[{i}]"),
                raw,
            )?);
        }
        Ok(Encryption {
            recipients,
            identity_files,
        })
    }
}

/// The largest `s3.chunk_size_bytes` with encryption: a chunk's age file (the chunk, 16
/// bytes of tag per 64 KiB block, the 16-byte nonce and a header of at most
/// [`crate::age::MAX_HEADER_LEN`]) must fit in S3's largest object, 5 TiB.
pub fn max_encrypted_chunk_size() -> u64 {
    crate::age::max_plaintext(
        super::limits::MAX_CHUNK_SIZE,
        crate::age::MAX_HEADER_LEN as u64,
    )
}

/// Refuses a chunk size whose encrypted objects would exceed S3's 5 TiB.
pub(super) fn check_chunk_size(s3: &super::S3, e: &Encryption) -> Result<(), ConfigError> {
    let max = max_encrypted_chunk_size();
    if e.enabled() && s3.chunk_size_bytes > max {
        return err(format!(
            "s3.chunk_size_bytes = {} with [encryption]: each chunk is stored as an age file, \
             16 bytes per 64 KiB larger than the chunk plus its header, and S3's largest \
             object is 5 TiB: set it to at most {max}",
            s3.chunk_size_bytes
        ));
    }
    Ok(())
}
