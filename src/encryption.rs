//! What an encrypted backup's manifest carries beyond the contract's fields, and the keys
//! that read it: [`seal`] makes `encryption` (scheme, recipient fingerprints, and the
//! sealed part: each chunk's age header digest and plaintext size, encrypted to the same
//! recipients), [`open`] decrypts and checks it against the manifest's chunks with the
//! identities from [`load_identities`], which is also the identity check restore makes
//! before it downloads or requests anything.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use std::io::Read;
use std::path::PathBuf;

use crate::age::{self, AgeError, Identity, Recipient, Sealing};
use crate::chunker::hex;
use crate::manifest::{
    EncryptionInfo, Manifest, SealedChunkEntry, SealedPart, AGE_V1, MAX_SEALED_LEN,
};

/// An encrypted chunk, as the manifest's sealed part records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedChunk {
    /// The age header's SHA-256 ([`crate::age::Header::digest`]).
    pub header_sha256: [u8; 32],
    /// Plaintext bytes in the chunk.
    pub plain_size: u64,
}

/// The manifest's `encryption` for chunks sealed as `chunks` say, holding `stream_bytes`.
pub fn seal(
    recipients: &[Recipient],
    chunks: &[SealedChunk],
    stream_bytes: u64,
) -> Result<EncryptionInfo> {
    let part = SealedPart {
        stream_bytes,
        chunks: chunks
            .iter()
            .map(|c| SealedChunkEntry {
                header_sha256: hex(&c.header_sha256),
                size: c.plain_size,
            })
            .collect(),
        extra: Default::default(),
    };
    let json = serde_json::to_vec(&part).context("encoding the manifest's sealed part")?;
    let sealing = Sealing::new(recipients).context("encrypting the manifest's sealed part")?;
    let file = age::encrypt_to_vec(&sealing, &json);
    Ok(EncryptionInfo {
        scheme: AGE_V1.to_string(),
        recipients: recipients.iter().map(|r| r.fingerprint()).collect(),
        sealed: base64::engine::general_purpose::STANDARD.encode(file),
        extra: Default::default(),
    })
}

/// The identity check's refusal: these identities cannot decrypt `key`'s backup.
fn cannot_decrypt(key: &str, info: &EncryptionInfo, identities: &[Identity]) -> anyhow::Error {
    let have: Vec<String> = identities
        .iter()
        .map(|i| i.recipient().fingerprint())
        .collect();
    anyhow!(
        "manifest {key}: this identity cannot decrypt backups for recipients {} (the \
         identities given are for {}): pass the identity file of one of those recipients \
         with --identity",
        info.recipients.join(", "),
        have.join(", ")
    )
}

/// Decrypts and checks `m`'s sealed part (`m` must be encrypted): one entry per chunk,
/// header digests of the right form, plaintext sizes that an age file of each chunk's
/// stored size can hold and that add up to the stream's.
pub fn open(key: &str, m: &Manifest, identities: &[Identity]) -> Result<SealedPart> {
    let info = m
        .encryption
        .as_ref()
        .ok_or_else(|| anyhow!("internal: manifest {key} is not encrypted"))?;
    if info.sealed.len() > MAX_SEALED_LEN {
        bail!("manifest {key}: field encryption.sealed is too long");
    }
    let file = base64::engine::general_purpose::STANDARD
        .decode(&info.sealed)
        .map_err(|_| anyhow!("manifest {key}: field encryption.sealed is not base64"))?;
    let mut dec = match age::Decryptor::new(&file[..], identities) {
        Ok(d) => d,
        Err(AgeError::NoIdentityMatches { .. }) => {
            return Err(cannot_decrypt(key, info, identities))
        }
        Err(e) => bail!("manifest {key}: field encryption.sealed: {e}"),
    };
    let mut json = Vec::new();
    dec.read_to_end(&mut json).map_err(|e| {
        let why = AgeError::from_io(&e).map_or(e.to_string(), |a| a.to_string());
        anyhow!("manifest {key}: field encryption.sealed: {why}")
    })?;
    // Counted before parsing (as manifests are, `repo::chain`): what this tool writes
    // holds about five values a chunk, so this bounds it by the manifest's own chunks.
    let values = crate::manifest::json_values(&json);
    let most = 8 * m.chunks.len() as u64 + 64;
    if values > most {
        bail!(
            "manifest {key}: the sealed part holds {values} JSON values, more than one of {} \
             chunks holds ({most}): not what this tool writes",
            m.chunks.len()
        );
    }
    let part: SealedPart = serde_json::from_slice(&json).map_err(|e| {
        anyhow!("manifest {key}: the sealed part is not what this tool writes: {e}")
    })?;
    if part.chunks.len() != m.chunks.len() {
        bail!(
            "manifest {key}: the sealed part names {} chunks, the manifest {}: the manifest \
             was edited",
            part.chunks.len(),
            m.chunks.len()
        );
    }
    let mut sum = 0u64;
    for (c, s) in m.chunks.iter().zip(&part.chunks) {
        let well_formed = s.header_sha256.len() == 64
            && s.header_sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        // The header is at least ~100 bytes: the plaintext is smaller than the object.
        if !well_formed || s.size >= c.size {
            bail!(
                "manifest {key}: the sealed part's entry for chunk {} does not fit it (size {} \
                 of a {}-byte object): the manifest was edited",
                c.key,
                s.size,
                c.size
            );
        }
        sum = sum.saturating_add(s.size);
    }
    if sum != part.stream_bytes {
        bail!("manifest {key}: the sealed part's chunk sizes do not add up to its stream size");
    }
    Ok(part)
}

/// Reads the identities of every file (each refused when group or others may read it).
pub fn load_identities(files: &[PathBuf]) -> Result<Vec<Identity>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(age::read_identity_file(f).map_err(|e| anyhow!("{e}"))?);
    }
    Ok(out)
}

/// The identity files for a restore or a deep verify: `--identity`, else the config's
/// `encryption.identity_files`; an error when the chain is encrypted and none is given.
pub fn identities_for(flags: &[PathBuf], config: &[PathBuf]) -> Result<Vec<Identity>> {
    let files = if flags.is_empty() { config } else { flags };
    if files.is_empty() {
        bail!(
            "the backup is encrypted: pass the identity file with --identity FILE (or set \
             encryption.identity_files)"
        );
    }
    load_identities(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed part padded with tiny values (a writer who knows the recipients) is
    /// refused before it is parsed; what `seal` writes passes the count.
    #[test]
    fn a_padded_sealed_part_is_refused_before_it_is_parsed() {
        let id = crate::age::Identity::generate().expect("identity");
        let recipients = vec![id.recipient().clone()];
        let mut m: Manifest = serde_json::from_str(
            r#"{"version": 1, "subvolume": "data", "kind": "full", "created_at": "20250101T020000Z",
            "snapshot": {"name": "data__20250101T020000Z__full", "path": "/s", "uuid": null, "parent_uuid": null},
            "parent_manifest": null,
            "chunks": [{"key": "p/subvol/data/full/c", "size": 3, "sha256": "00", "etag": null}],
            "total_bytes": 3, "chunk_size": 1, "s3": {"storage_class": "STANDARD"}}"#,
        )
        .expect("manifest");
        let sealed = |json: &[u8]| {
            let sealing = Sealing::new(&recipients).expect("sealing");
            EncryptionInfo {
                scheme: AGE_V1.to_string(),
                recipients: vec![id.recipient().fingerprint()],
                sealed: base64::engine::general_purpose::STANDARD
                    .encode(age::encrypt_to_vec(&sealing, json)),
                extra: Default::default(),
            }
        };
        let padded = format!(
            r#"{{"stream_bytes":3,"chunks":[{{"header_sha256":"{}","size":3}}],"pad":[{}0]}}"#,
            "0".repeat(64),
            "0,".repeat(100)
        );
        m.encryption = Some(sealed(padded.as_bytes()));
        let e = open("k", &m, std::slice::from_ref(&id))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest k: the sealed part holds 113 JSON values, more than one of 1 chunks holds (72)"),
            "{e}"
        );
        m.encryption = Some(
            seal(
                &recipients,
                &[SealedChunk {
                    header_sha256: [0; 32],
                    plain_size: 3,
                }],
                3,
            )
            .expect("seal"),
        );
        let e = open("k", &m, std::slice::from_ref(&id))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("JSON values"), "{e}");
    }
}
