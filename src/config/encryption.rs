//! The `[encryption]` table: the age recipients backups are encrypted to (`recipients`,
//! a list of `age1…`, and/or `recipients_file`, age's `-R` format, read at load) and the
//! identity files restore and `verify --deep` decrypt with (`identity_files`, read only
//! when used). Absent: backups are not encrypted.

use std::path::PathBuf;

use super::{err, ConfigError, Reader};
use crate::age::{parse_recipient_list, read_recipients_file, Recipient};

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

impl Reader<'_> {
    pub(super) fn encryption(&self) -> Result<Encryption, ConfigError> {
        let mut recipients = Vec::new();
        let listed = self.get("encryption", "recipients");
        if let Some(v) = listed {
            let Some(arr) = v.as_array() else {
                return err(format!(
                    "encryption.recipients = {}: must be a list of age recipients (\"age1…\")",
                    type_name_of(v)
                ));
            };
            let mut values = Vec::with_capacity(arr.len());
            for (i, item) in arr.iter().enumerate() {
                let Some(s) = item.as_str() else {
                    return err(format!(
                        "encryption.recipients[{i}]: must be a string \"age1…\", not a {}",
                        type_name_of(item)
                    ));
                };
                values.push(s.to_string());
            }
            if values.is_empty() {
                return err(
                    "encryption.recipients = []: list at least one age recipient (\"age1…\", \
                     from age-keygen -y), or remove the key",
                );
            }
            recipients = parse_recipient_list(&values)
                .map_err(|e| ConfigError(format!("encryption.recipients{e}")))?;
        }
        if let Some(path) = self.opt_path("encryption", "recipients_file")? {
            // An empty file is an error there too (it names the file).
            let from_file = read_recipients_file(&path)
                .map_err(|e| ConfigError(format!("encryption.recipients_file: {e}")))?;
            for r in from_file {
                if !recipients.contains(&r) {
                    recipients.push(r);
                }
            }
        }
        let identity_files = match self.get("encryption", "identity_files") {
            None => Vec::new(),
            Some(v) => {
                let Some(arr) = v.as_array() else {
                    return err(format!(
                        "encryption.identity_files = {}: must be a list of absolute paths",
                        type_name_of(v)
                    ));
                };
                let mut out = Vec::new();
                for (i, item) in arr.iter().enumerate() {
                    let Some(raw) = item.as_str() else {
                        return err(format!(
                            "encryption.identity_files[{i}]: must be a string path"
                        ));
                    };
                    out.push(self.expand("encryption", &format!("identity_files[{i}]"), raw)?);
                }
                out
            }
        };
        Ok(Encryption {
            recipients,
            identity_files,
        })
    }
}

fn type_name_of(v: &toml::Value) -> String {
    format!("a {}", v.type_str())
}
