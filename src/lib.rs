//! btrfs_to_s3: nightly read-only btrfs snapshots streamed with `btrfs send` into S3, and
//! verified restores. The binary (`main.rs`) is a thin shell around [`app::main`]; see
//! DESIGN.md for the architecture and the invariants each module keeps.

pub mod age;
pub mod app;
pub mod atomic;
pub mod backup;
pub mod btrfs;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod encryption;
pub mod failpoint;
pub mod harness;
pub mod journal;
pub mod lastrun;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod outage;
pub mod pipeline;
pub mod planner;
pub mod progress;
pub mod ratelimit;
pub mod repo;
pub mod restore;
pub mod retry;
pub mod sendstream;
pub mod sha256x2;
pub mod signals;
pub mod size;
pub mod snapshots;
pub mod state;
pub mod store;
pub mod term;
#[cfg(test)]
pub mod testing;
pub mod ts;
pub mod verify;
pub mod watchdog;
pub mod worker;
pub mod xattr;
