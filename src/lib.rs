//! btrfs_to_s3: nightly read-only btrfs snapshots streamed with `btrfs send` into S3, and
//! verified restores. The binary (`main.rs`) is a thin shell around [`app::main`]; see
//! DESIGN.md for the architecture (its layers are checked by `contrib/check-layers.py`)
//! and the invariants each module keeps.
//!
//! The public modules are what the binary, the integration tests (`tests/it/`) and the
//! measuring tools (`examples/`) use; everything else is `pub(crate)`. This is not a
//! library with a stable API.

// No unsafe code, except the SHA-NI module (`sha256x2`), which allows it for its
// intrinsics, each block with a SAFETY comment. (`forbid` cannot be lifted for one module,
// so the crate denies it and that one module allows it.)
#![deny(unsafe_code)]

pub mod age;
pub mod app;
pub(crate) mod atomic;
pub(crate) mod backup;
pub mod btrfs;
pub(crate) mod check;
pub(crate) mod chunker;
pub(crate) mod cli;
pub(crate) mod cmd;
// config.rs is being rewritten with serde (issue 22 item 4, in parallel): its public items
// get their docs there; until then this one module is exempt from missing_docs.
#[allow(missing_docs)]
pub mod config;
pub(crate) mod encryption;
pub(crate) mod exit;
pub(crate) mod failpoint;
pub(crate) mod harness;
pub mod journal;
pub(crate) mod kind;
pub(crate) mod lastrun;
pub mod lock;
pub(crate) mod logging;
pub(crate) mod manifest;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod outage;
pub(crate) mod parts;
pub(crate) mod pipeline;
pub(crate) mod planner;
pub(crate) mod progress;
pub(crate) mod ratelimit;
pub(crate) mod regular;
pub(crate) mod repo;
pub(crate) mod restore;
pub(crate) mod retry;
pub mod sendstream;
#[allow(unsafe_code)]
pub(crate) mod sha256x2;
pub(crate) mod signals;
pub(crate) mod size;
pub(crate) mod snapshots;
pub(crate) mod state;
pub mod store;
pub(crate) mod term;
#[cfg(test)]
pub(crate) mod testing;
pub mod treecmp;
pub mod ts;
pub(crate) mod watchdog;
pub(crate) mod worker;
pub(crate) mod xattr;
