//! The age v1 header and the values that fix a file's ciphertext: the
//! [`Header`] (recipient stanzas and the header MAC; built, written as bytes, parsed
//! strictly and with a size bound) and [`Sealing`]: a file key, a header and a payload nonce
//! together, which re-encrypts the same plaintext to the same bytes.

use super::error::AgeError;
use super::filekey::{FileKey, PayloadNonce, Stanza};
use super::keys::{Identity, Recipient};
use super::primitives::{hmac_sha256, hmac_sha256_verify};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{BufRead, Read};

const VERSION_LINE: &[u8] = b"age-encryption.org/v1";
const VERSION_PREFIX: &[u8] = b"age-encryption.org/";
/// Body lines are wrapped at 64 base64 columns; a shorter line ends the body.
const BODY_COLUMNS: usize = 64;
/// A header larger than this is refused (hundreds of X25519 recipients fit in 64 KiB).
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// The longest header line read (an argument line; body lines are 64 columns).
const MAX_LINE: usize = 16 * 1024;

/// A parsed or built age v1 header: its exact bytes (version line through the MAC
/// line's newline), its stanzas and its MAC.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    bytes: Vec<u8>,
    /// Length of the MAC's input: the bytes through `---`.
    mac_input: usize,
    stanzas: Vec<Stanza>,
    mac: [u8; 32],
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Header({} bytes, {} stanzas, sha256 {})",
            self.bytes.len(),
            self.stanzas.len(),
            hex(&self.digest()[..8])
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Header {
    /// Wraps `file_key` to each recipient (fresh ephemeral keys) and MACs the result.
    pub fn build(file_key: &FileKey, recipients: &[Recipient]) -> Result<Header, AgeError> {
        if recipients.is_empty() {
            return Err(AgeError::NoRecipients);
        }
        let stanzas = recipients
            .iter()
            .map(|r| r.wrap(file_key))
            .collect::<Result<Vec<_>, _>>()?;
        let mut bytes = Vec::with_capacity(64 + 128 * stanzas.len());
        bytes.extend_from_slice(VERSION_LINE);
        bytes.push(b'\n');
        for s in &stanzas {
            write_stanza(&mut bytes, s);
        }
        bytes.extend_from_slice(b"---");
        let mac_input = bytes.len();
        let mac = hmac_sha256(&file_key.mac_key()[..], &bytes);
        bytes.push(b' ');
        bytes.extend_from_slice(STANDARD_NO_PAD.encode(mac).as_bytes());
        bytes.push(b'\n');
        Ok(Header {
            bytes,
            mac_input,
            stanzas,
            mac,
        })
    }

    /// Parses a header given as exactly its bytes (as kept in a journal).
    pub fn parse(bytes: &[u8]) -> Result<Header, AgeError> {
        let mut reader = bytes;
        let header = Header::read_from(&mut reader)?;
        if !reader.is_empty() {
            return Err(AgeError::Header {
                line: header.line_count() + 1,
                what: "bytes after the MAC line",
            });
        }
        Ok(header)
    }

    /// Reads a header from the start of an age file, leaving `input` at the payload
    /// nonce. Strict: LF line ends, canonical base64, 64-column body lines, at most
    /// [`MAX_HEADER_LEN`] bytes.
    pub fn read_from<R: BufRead>(input: &mut R) -> Result<Header, AgeError> {
        let mut bytes = Vec::new();
        let mut line_no = 1;
        let first = read_line(input, &mut bytes, 64);
        if first.as_deref().ok() != Some(VERSION_LINE) {
            let seen = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            return Err(if first.is_err() && VERSION_LINE.starts_with(seen) {
                AgeError::TruncatedHeader
            } else if seen.starts_with(VERSION_LINE) {
                AgeError::Header {
                    line: 1,
                    what: "the version line must be exactly age-encryption.org/v1 and a LF",
                }
            } else if seen.starts_with(VERSION_PREFIX) {
                AgeError::UnsupportedVersion
            } else {
                AgeError::NotAge
            });
        }
        let mut stanzas = Vec::new();
        loop {
            line_no += 1;
            let start = bytes.len();
            let line = read_line(input, &mut bytes, MAX_LINE)?;
            let bad = |what| AgeError::Header {
                line: line_no,
                what,
            };
            if let Some(mac) = line.strip_prefix(b"---") {
                let mac = mac
                    .strip_prefix(b" ")
                    .ok_or(bad("the MAC line must be `--- ` and the MAC"))?;
                let mac: [u8; 32] = STANDARD_NO_PAD
                    .decode(mac)
                    .ok()
                    .and_then(|m| m.try_into().ok())
                    .ok_or(bad("the MAC is not 32 bytes of canonical base64"))?;
                return Ok(Header {
                    mac_input: start + 3,
                    bytes,
                    stanzas,
                    mac,
                });
            }
            let args = line
                .strip_prefix(b"-> ")
                .ok_or(bad("expected a stanza (`-> `) or the MAC line (`--- `)"))?;
            let args = args
                .split(|&b| b == b' ')
                .map(|a| {
                    if a.is_empty() || !a.iter().all(|&c| (33..=126).contains(&c)) {
                        Err(bad(
                            "a stanza argument is empty or has a character outside ASCII 33–126",
                        ))
                    } else {
                        Ok(String::from_utf8_lossy(a).into_owned())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = Vec::new();
            loop {
                line_no += 1;
                let line = read_line(input, &mut bytes, MAX_LINE)?;
                let bad = |what| AgeError::Header {
                    line: line_no,
                    what,
                };
                if line.len() > BODY_COLUMNS {
                    return Err(bad("a stanza body line is longer than 64 columns"));
                }
                let chunk = STANDARD_NO_PAD
                    .decode(&line)
                    .map_err(|_| bad("a stanza body line is not canonical unpadded base64"))?;
                body.extend_from_slice(&chunk);
                if line.len() < BODY_COLUMNS {
                    break;
                }
            }
            stanzas.push(Stanza { args, body });
        }
    }

    /// The header's exact bytes, version line through the MAC line's newline.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the header's bytes: names this age file (a fresh file key and fresh
    /// ephemeral keys make every header different), so a caller that kept it can tell
    /// a swapped object before reading its payload.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// The recipient stanzas, in file order.
    pub fn stanzas(&self) -> &[Stanza] {
        &self.stanzas
    }

    fn line_count(&self) -> usize {
        self.bytes.iter().filter(|&&b| b == b'\n').count()
    }

    /// Checks the header MAC against `file_key`.
    pub fn verify_mac(&self, file_key: &FileKey) -> Result<(), AgeError> {
        if hmac_sha256_verify(
            &file_key.mac_key()[..],
            &self.bytes[..self.mac_input],
            &self.mac,
        ) {
            Ok(())
        } else {
            Err(AgeError::HeaderMac)
        }
    }

    /// Unwraps the file key with the first identity that matches a stanza, then checks
    /// the MAC. A malformed X25519 stanza is an error even if another would match.
    pub fn unwrap_file_key(&self, identities: &[Identity]) -> Result<FileKey, AgeError> {
        let scrypt = self
            .stanzas
            .iter()
            .any(|s| s.args.first().map(String::as_str) == Some("scrypt"));
        if scrypt && self.stanzas.len() > 1 {
            return Err(AgeError::Stanza {
                what: "an scrypt stanza must be the only one",
            });
        }
        for stanza in &self.stanzas {
            for identity in identities {
                if let Some(key) = identity.unwrap(stanza)? {
                    self.verify_mac(&key)?;
                    return Ok(key);
                }
            }
        }
        Err(AgeError::NoIdentityMatches {
            identities: identities.len(),
            stanzas: self.stanzas.len(),
        })
    }
}

/// Reads one LF-terminated line into `all` (the header's bytes) and returns it without
/// the LF. Bounded by [`MAX_LINE`] and [`MAX_HEADER_LEN`].
fn read_line<R: BufRead>(
    input: &mut R,
    all: &mut Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, AgeError> {
    let room = MAX_HEADER_LEN.saturating_sub(all.len()).min(max + 1);
    let mut line = Vec::new();
    input
        .take(room as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| AgeError::Read(e.to_string()))?;
    all.extend_from_slice(&line);
    if line.last() != Some(&b'\n') {
        if line.len() == room {
            return Err(AgeError::Header {
                line: all.iter().filter(|&&b| b == b'\n').count() + 1,
                what: if all.len() >= MAX_HEADER_LEN {
                    "the header is larger than 1 MiB"
                } else {
                    "a header line is longer than 16 KiB"
                },
            });
        }
        return Err(AgeError::TruncatedHeader);
    }
    line.pop();
    Ok(line)
}

fn write_stanza(out: &mut Vec<u8>, stanza: &Stanza) {
    out.extend_from_slice(b"->");
    for arg in &stanza.args {
        out.push(b' ');
        out.extend_from_slice(arg.as_bytes());
    }
    out.push(b'\n');
    let body = STANDARD_NO_PAD.encode(&stanza.body);
    let mut rest = body.as_bytes();
    loop {
        let take = rest.len().min(BODY_COLUMNS);
        out.extend_from_slice(&rest[..take]);
        out.push(b'\n');
        rest = &rest[take..];
        // A full 64-column line says "more follows": a body whose encoding is a
        // multiple of 64 columns (or empty) ends with an empty line.
        if take < BODY_COLUMNS {
            break;
        }
    }
}

/// The file key, header and payload nonce of one age file: with them, the same plaintext
/// always encrypts to the same bytes, so an interrupted upload can be re-encrypted and
/// its stored parts compared. Keep them only where the file key may be (a 0600 journal),
/// and never encrypt *different* plaintext with a `Sealing` already used: make a new one.
#[derive(Clone, Debug)]
pub struct Sealing {
    file_key: FileKey,
    header: Header,
    nonce: PayloadNonce,
}

impl Sealing {
    /// A fresh file key, header (for `recipients`) and nonce.
    pub fn new(recipients: &[Recipient]) -> Result<Sealing, AgeError> {
        let file_key = FileKey::generate()?;
        let header = Header::build(&file_key, recipients)?;
        Ok(Sealing {
            file_key,
            header,
            nonce: PayloadNonce::generate()?,
        })
    }

    /// Rebuilds a sealing kept earlier; fails unless `header` is a well-formed header
    /// whose MAC matches `file_key` (a journal that mixed two files is caught here).
    pub fn from_parts(
        file_key: FileKey,
        header: &[u8],
        nonce: PayloadNonce,
    ) -> Result<Sealing, AgeError> {
        let header = Header::parse(header)?;
        header.verify_mac(&file_key)?;
        Ok(Sealing {
            file_key,
            header,
            nonce,
        })
    }

    /// The file key the header wraps.
    pub fn file_key(&self) -> &FileKey {
        &self.file_key
    }

    /// The header every file of this sealing starts with.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The payload nonce after the header.
    pub fn nonce(&self) -> PayloadNonce {
        self.nonce
    }
}
