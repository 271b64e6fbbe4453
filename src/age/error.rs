//! The age module's two error types: [`KeyError`] for recipients and identities given as
//! text (it names the position and the file, never the value), and [`AgeError`] for
//! encrypting and decrypting age files (it never quotes bytes from the file).

use std::fmt;
use std::path::Path;

/// Where in a list or file a key was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Not from a list or a file.
    None,
    /// 0-based index in a list of values (a config array).
    Index(usize),
    /// 1-based line in a file.
    Line(usize),
}

/// A recipient or identity that cannot be used, with where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    /// `identity file /path` or `recipients file /path` (made inert for a terminal).
    pub file: Option<String>,
    /// Where in the list or file.
    pub position: Position,
    /// What is wrong, without the value.
    pub problem: String,
}

impl KeyError {
    pub(super) fn new(position: Position, problem: &str) -> KeyError {
        KeyError {
            file: None,
            position,
            problem: problem.to_string(),
        }
    }

    pub(super) fn at(mut self, position: Position) -> KeyError {
        self.position = position;
        self
    }

    pub(super) fn in_file(mut self, path: &Path, kind: &str) -> KeyError {
        self.file = Some(format!(
            "{kind} {}",
            crate::term::inert(&path.display().to_string())
        ));
        self
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match self.position {
            Position::None => {}
            Position::Index(i) => write!(f, "[{i}]: ")?,
            Position::Line(n) => write!(f, "line {n}: ")?,
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for KeyError {}

/// Why an age file could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgeError {
    /// The OS random generator failed (no file key or ephemeral key could be made).
    Random(String),
    /// No recipients to encrypt to.
    NoRecipients,
    /// A recipient key is a low-order point (every shared secret would be zero).
    LowOrderRecipient,
    /// The data does not start with `age-encryption.org/v1`.
    NotAge,
    /// An `age-encryption.org/` version other than v1.
    UnsupportedVersion,
    /// The header does not parse (1-based line of the header).
    Header {
        /// 1-based line of the header.
        line: usize,
        /// What is wrong there.
        what: &'static str,
    },
    /// A stanza this implementation reads (X25519) is malformed.
    Stanza {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The header ended before its MAC line, or the payload nonce is cut short.
    TruncatedHeader,
    /// The reader failed (the I/O error's text).
    Read(String),
    /// The file ends right after the payload nonce.
    NoPayload,
    /// None of the identities unwraps a file key from any stanza.
    NoIdentityMatches {
        /// Identities tried.
        identities: usize,
        /// Stanzas in the header.
        stanzas: usize,
    },
    /// A file key was unwrapped but the header MAC does not match it.
    HeaderMac,
    /// The header is not the one the caller expected (another file).
    OtherFile,
    /// A payload block does not authenticate.
    Block {
        /// The block's index, from 0.
        block: u64,
    },
    /// The payload ends at a block boundary with no final block.
    NoFinalBlock {
        /// Full blocks read before the end.
        after: u64,
    },
    /// An empty final block after a full block (age writes a full final block instead).
    EmptyFinalBlock {
        /// The empty block's index, from 0.
        block: u64,
    },
}

impl fmt::Display for AgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgeError::Random(e) => write!(f, "cannot make an age file key: {e}"),
            AgeError::NoRecipients => write!(f, "no age recipients to encrypt to"),
            AgeError::LowOrderRecipient => {
                write!(
                    f,
                    "an age recipient is not a usable X25519 key (a low-order point)"
                )
            }
            AgeError::NotAge => write!(
                f,
                "not an age file (it does not start with age-encryption.org/v1)"
            ),
            AgeError::UnsupportedVersion => write!(
                f,
                "unsupported age format version (only age-encryption.org/v1 is read)"
            ),
            AgeError::Header { line, what } => {
                write!(f, "malformed age header at line {line}: {what}")
            }
            AgeError::Stanza { what } => write!(f, "malformed age header: {what}"),
            AgeError::TruncatedHeader => {
                write!(f, "age file cut short inside its header or payload nonce")
            }
            AgeError::Read(e) => write!(f, "cannot read the age file: {e}"),
            AgeError::NoPayload => {
                write!(
                    f,
                    "age file cut short: it ends before its first payload block"
                )
            }
            AgeError::NoIdentityMatches {
                identities,
                stanzas,
            } => write!(
                f,
                "the {identities} age identit{} given cannot decrypt this file \
                 (none matches any of its {stanzas} recipient stanza{})",
                if *identities == 1 { "y" } else { "ies" },
                if *stanzas == 1 { "" } else { "s" }
            ),
            AgeError::HeaderMac => {
                write!(f, "age header MAC does not match: the header was altered")
            }
            AgeError::OtherFile => write!(
                f,
                "age header is not the one recorded for this object: it is another age \
                 file (swapped or replaced)"
            ),
            AgeError::Block { block } => write!(
                f,
                "age payload block {block} does not authenticate: the file was altered, \
                 cut short or extended, or its payload belongs to another file key"
            ),
            AgeError::NoFinalBlock { after } => write!(
                f,
                "age file cut short: it ends after payload block {after} without a final block"
            ),
            AgeError::EmptyFinalBlock { block } => write!(
                f,
                "age payload block {block} is an empty final block after a full one: \
                 the file was cut short, or is not a valid age file"
            ),
        }
    }
}

impl std::error::Error for AgeError {}

impl AgeError {
    /// The age error inside an I/O error from [`super::Decryptor`]'s `Read`, if any.
    /// A downcast, and the right tool: `Read` can only return an `io::Error`, whose one
    /// slot for a cause of our own is a boxed `dyn Error`.
    pub fn from_io(e: &std::io::Error) -> Option<&AgeError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<AgeError>())
    }

    pub(super) fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}
