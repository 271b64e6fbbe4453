//! age X25519 keys as text: recipients (`age1…`, one value or age's `-R` recipients-file
//! format) with a display fingerprint, identities (`AGE-SECRET-KEY-1…`) read from an age
//! identity file that only its owner can read, and the X25519 wrap and unwrap of a file
//! key into an `X25519` header stanza (age v1 specification, "X25519 recipient stanza").

use super::error::{AgeError, KeyError, Position};
use super::filekey::{FileKey, Stanza, FILE_KEY_LEN};
use super::primitives::{fill_random, hkdf_sha256, Aead, TAG_LEN};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

const RECIPIENT_HRP: &str = "age";
const IDENTITY_HRP: &str = "AGE-SECRET-KEY-";
/// The `X25519` stanza's HKDF label (the spec's "age-encryption.org/v1/X25519").
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
pub(super) const X25519_TAG: &str = "X25519";
/// Identity and recipients files are a few lines; anything larger is not one.
const MAX_KEY_FILE: u64 = 1 << 20;

/// An age X25519 recipient (a public key): what the backup host holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient {
    key: PublicKey,
    text: String,
}

impl Recipient {
    /// Parses one `age1…` recipient (lower-case Bech32, as `age-keygen` prints it).
    /// The error says what is wrong and never quotes the value (a mistyped secret key
    /// must not reach a log).
    pub fn parse(text: &str) -> Result<Recipient, KeyError> {
        let problem = |p: &str| KeyError::new(Position::None, p);
        if text.to_ascii_uppercase().starts_with(IDENTITY_HRP) {
            return Err(problem(
                "this is an identity (a secret key), not a recipient: put its recipient \
                 (`age-keygen -y FILE`) here and keep the identity off this host",
            ));
        }
        if text.starts_with("ssh-") {
            return Err(problem(
                "SSH recipients are not supported: use an age X25519 recipient (age1…)",
            ));
        }
        if !text.starts_with("age1") {
            return Err(problem("not an age X25519 recipient (expected age1…)"));
        }
        let bytes = decode_bech32(text, RECIPIENT_HRP).ok_or_else(|| {
            if text[4..].contains('1') {
                problem(
                    "not an age X25519 recipient: plugin and post-quantum recipients \
                     (age1NAME1…) are not supported",
                )
            } else {
                problem("not a valid age1… recipient (bad Bech32 encoding or checksum)")
            }
        })?;
        let bytes: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| problem("not an age X25519 recipient (the key is not 32 bytes)"))?;
        let key = PublicKey::from(bytes);
        // A low-order point makes every shared secret zero: a file "encrypted" to it
        // would be readable by anyone. Any clamped scalar shows it.
        let probe = StaticSecret::from([1u8; 32]);
        if !probe.diffie_hellman(&key).was_contributory() {
            return Err(problem(
                "not a usable X25519 public key (a low-order point)",
            ));
        }
        Ok(Recipient {
            key,
            text: text.to_string(),
        })
    }

    /// The `age1…` string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A short name for display: the first 16 hex digits (64 bits) of the SHA-256 of the
    /// `age1…` string, so a recipient can be named in logs and `list` without its
    /// 62 characters (`echo -n age1… | sha256sum | cut -c1-16` gives the same).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.text.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Wraps `file_key` to this recipient: a fresh ephemeral key, the `X25519` stanza.
    pub(super) fn wrap(&self, file_key: &FileKey) -> Result<Stanza, AgeError> {
        let mut ephemeral = Zeroizing::new([0u8; 32]);
        fill_random(&mut ephemeral[..]).map_err(|e| AgeError::Random(e.to_string()))?;
        let mut secret = StaticSecret::from(*ephemeral);
        let share = PublicKey::from(&secret);
        let mut shared = secret.diffie_hellman(&self.key);
        secret.zeroize();
        if !shared.was_contributory() {
            return Err(AgeError::LowOrderRecipient);
        }
        let wrap_key = wrap_key(shared.as_bytes(), share.as_bytes(), self.key.as_bytes());
        shared.zeroize();
        let mut body = Zeroizing::new(file_key.expose_secret().to_vec());
        Aead::new(&wrap_key).seal([0u8; 12], &mut body);
        Ok(Stanza {
            args: vec![
                X25519_TAG.to_string(),
                STANDARD_NO_PAD.encode(share.as_bytes()),
            ],
            body: body.to_vec(),
        })
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.text)
    }
}

/// `HKDF-SHA-256(ikm = shared secret, salt = ephemeral share || recipient, info = label)`.
fn wrap_key(shared: &[u8; 32], share: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(share);
    salt[32..].copy_from_slice(recipient);
    hkdf_sha256(shared, &salt, X25519_LABEL)
}

/// Decodes canonical Bech32 (not Bech32m) with the given human-readable part: the
/// string must be exactly what encoding its bytes gives (one case, zero padding bits).
fn decode_bech32(text: &str, hrp: &str) -> Option<Zeroizing<Vec<u8>>> {
    let checked = CheckedHrpstring::new::<Bech32>(text).ok()?;
    if !checked.hrp().as_str().eq_ignore_ascii_case(hrp) {
        return None;
    }
    checked.validate_segwit_padding().ok()?;
    let bytes = Zeroizing::new(checked.byte_iter().collect::<Vec<u8>>());
    let hrp = Hrp::parse(hrp).ok()?;
    let again = Zeroizing::new(if text.bytes().any(|b| b.is_ascii_uppercase()) {
        bech32::encode_upper::<Bech32>(hrp, &bytes).ok()?
    } else {
        bech32::encode_lower::<Bech32>(hrp, &bytes).ok()?
    });
    (*again == text).then_some(bytes)
}

/// Parses recipients given one per value (a config list): errors name the 0-based index.
pub fn parse_recipient_list<S: AsRef<str>>(values: &[S]) -> Result<Vec<Recipient>, KeyError> {
    let mut out: Vec<Recipient> = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let r = Recipient::parse(value.as_ref().trim()).map_err(|e| e.at(Position::Index(i)))?;
        if let Some(j) = out.iter().position(|o| o == &r) {
            return Err(KeyError::new(
                Position::Index(i),
                &format!("the same recipient as [{j}]"),
            ));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(KeyError::new(Position::None, "no recipients"));
    }
    Ok(out)
}

/// Parses age's recipients-file format (`age -R`): one `age1…` recipient per line,
/// blank lines and lines starting with `#` ignored, surrounding spaces and a CR before
/// the newline tolerated. Errors name the 1-based line.
pub fn parse_recipients_file(text: &str) -> Result<Vec<Recipient>, KeyError> {
    let mut out: Vec<Recipient> = Vec::new();
    let mut lines_of = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r = Recipient::parse(line).map_err(|e| e.at(Position::Line(n + 1)))?;
        if let Some(j) = out.iter().position(|o| o == &r) {
            return Err(KeyError::new(
                Position::Line(n + 1),
                &format!("the same recipient as line {}", lines_of[j]),
            ));
        }
        out.push(r);
        lines_of.push(n + 1);
    }
    if out.is_empty() {
        return Err(KeyError::new(
            Position::None,
            "no recipients (only blank lines and comments)",
        ));
    }
    Ok(out)
}

/// Reads and parses a recipients file (see [`parse_recipients_file`]); errors name the
/// file. It must be a regular file (a link to one is followed).
pub fn read_recipients_file(path: &Path) -> Result<Vec<Recipient>, KeyError> {
    let named = |e: KeyError| e.in_file(path, "recipients file");
    let file = crate::regular::open(path, false)
        .map_err(|e| named(KeyError::new(Position::None, &format!("cannot open: {e}"))))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| named(KeyError::new(Position::None, &format!("cannot read: {e}"))))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(named(KeyError::new(
            Position::None,
            "larger than 1 MiB: not a recipients file",
        )));
    }
    parse_recipients_file(&text).map_err(named)
}

/// An age X25519 identity (a secret key). Never printed: `Debug` shows its recipient's
/// fingerprint only; the key bytes are wiped when it is dropped.
#[derive(Clone)]
pub struct Identity {
    secret: Zeroizing<[u8; 32]>,
    recipient: Recipient,
}

impl Identity {
    /// Parses one `AGE-SECRET-KEY-1…` line (upper-case Bech32, as `age-keygen` prints
    /// it). The error never quotes the value.
    pub fn parse(text: &str) -> Result<Identity, KeyError> {
        let problem = |p: &str| KeyError::new(Position::None, p);
        if !text.starts_with("AGE-SECRET-KEY-1") {
            return Err(problem(
                "not an age X25519 identity (expected AGE-SECRET-KEY-1…)",
            ));
        }
        let bytes = decode_bech32(text, IDENTITY_HRP).ok_or_else(|| {
            problem("not a valid AGE-SECRET-KEY-1… identity (bad Bech32 encoding or checksum)")
        })?;
        if bytes.len() != 32 {
            return Err(problem(
                "not an age X25519 identity (the key is not 32 bytes)",
            ));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&bytes);
        Ok(Identity::from_secret(secret))
    }

    /// A new random identity (what `age-keygen` makes); for tests and tools.
    pub fn generate() -> std::io::Result<Identity> {
        let mut secret = Zeroizing::new([0u8; 32]);
        fill_random(&mut secret[..])?;
        Ok(Identity::from_secret(secret))
    }

    fn from_secret(secret: Zeroizing<[u8; 32]>) -> Identity {
        let mut s = StaticSecret::from(*secret);
        let public = PublicKey::from(&s);
        s.zeroize();
        let hrp = Hrp::parse(RECIPIENT_HRP).expect("a valid human-readable part");
        let text = bech32::encode_lower::<Bech32>(hrp, public.as_bytes())
            .expect("32 bytes fit a Bech32 string");
        Identity {
            secret,
            recipient: Recipient { key: public, text },
        }
    }

    /// The recipient (public key) this identity decrypts for.
    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The `AGE-SECRET-KEY-1…` text, for writing an identity file in tests and tools.
    pub fn expose_secret_text(&self) -> Zeroizing<String> {
        let hrp = Hrp::parse(IDENTITY_HRP).expect("a valid human-readable part");
        Zeroizing::new(
            bech32::encode_upper::<Bech32>(hrp, &self.secret[..])
                .expect("32 bytes fit a Bech32 string"),
        )
    }

    /// Tries to unwrap the file key from one stanza: `Ok(None)` when the stanza is of
    /// another type or for another recipient, an error when an `X25519` stanza is
    /// malformed (the spec makes that fatal, not skippable).
    pub(super) fn unwrap(&self, stanza: &Stanza) -> Result<Option<FileKey>, AgeError> {
        if stanza.args.first().map(String::as_str) != Some(X25519_TAG) {
            return Ok(None);
        }
        let bad = |what: &'static str| AgeError::Stanza { what };
        if stanza.args.len() != 2 {
            return Err(bad("an X25519 stanza must have exactly one argument"));
        }
        let share: [u8; 32] = STANDARD_NO_PAD
            .decode(&stanza.args[1])
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(bad(
                "an X25519 stanza's share is not 32 bytes of canonical base64",
            ))?;
        if stanza.body.len() != FILE_KEY_LEN + TAG_LEN {
            return Err(bad("an X25519 stanza's body is not 32 bytes"));
        }
        let share = PublicKey::from(share);
        let mut secret = StaticSecret::from(*self.secret);
        let mut shared = secret.diffie_hellman(&share);
        secret.zeroize();
        if !shared.was_contributory() {
            return Err(bad("an X25519 stanza's share is a low-order point"));
        }
        let wrap_key = wrap_key(
            shared.as_bytes(),
            share.as_bytes(),
            self.recipient.key.as_bytes(),
        );
        shared.zeroize();
        let mut body = Zeroizing::new(stanza.body.clone());
        if !Aead::new(&wrap_key).open([0u8; 12], &mut body) {
            return Ok(None);
        }
        let mut key = [0u8; FILE_KEY_LEN];
        key.copy_from_slice(&body[..FILE_KEY_LEN]);
        let file_key = FileKey::from_bytes(key);
        key.zeroize();
        Ok(Some(file_key))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identity(for recipient {}, secret redacted)",
            self.recipient.fingerprint()
        )
    }
}

/// Parses the text of an age identity file: `AGE-SECRET-KEY-1…` lines, blank lines and
/// `#` comments (as `age-keygen` writes them). Errors name the 1-based line and never
/// quote it.
pub fn parse_identity_file(text: &str) -> Result<Vec<Identity>, KeyError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = Position::Line(n + 1);
        if line.starts_with("-----BEGIN AGE ENCRYPTED FILE") {
            return Err(KeyError::new(
                at,
                "the identity file is itself age-encrypted (a passphrase-protected \
                 identity): decrypt it to a 0600 file first",
            ));
        }
        if line.starts_with("-----BEGIN") || line.starts_with("ssh-") {
            return Err(KeyError::new(
                at,
                "SSH keys are not supported: use an age X25519 identity (age-keygen)",
            ));
        }
        out.push(Identity::parse(line).map_err(|e| e.at(at))?);
    }
    if out.is_empty() {
        return Err(KeyError::new(
            Position::None,
            "no identities (only blank lines and comments)",
        ));
    }
    Ok(out)
}

/// Reads an age identity file: opened without following a symbolic link, it must be a
/// regular file that neither group nor others can read or write (checked on the opened
/// descriptor), at most 1 MiB. Its contents are wiped from memory after parsing. Errors
/// name the file and the fix.
pub fn read_identity_file(path: &Path) -> Result<Vec<Identity>, KeyError> {
    let named = |e: KeyError| e.in_file(path, "identity file");
    let fail = |what: String| named(KeyError::new(Position::None, &what));
    let file = crate::regular::open(path, true).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            fail("a symbolic link: name the file itself".to_string())
        } else if e.kind() == std::io::ErrorKind::Other {
            fail(e.to_string())
        } else {
            fail(format!("cannot open: {e}"))
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot stat: {e}")))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "readable or writable by group or others (mode {mode:04o}): \
             run `chmod 600` on it"
        )));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(fail("larger than 1 MiB: not an identity file".to_string()));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(fail("larger than 1 MiB: not an identity file".to_string()));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| fail("not UTF-8 text: not an age identity file".to_string()))?;
    parse_identity_file(text).map_err(named)
}
