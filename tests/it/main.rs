//! The one integration test binary (see DESIGN.md, "Tests"): `support` is the rig; each
//! module tests one area against the built binary, real btrfs and a real S3 server.

mod support;

mod age_interop;
mod backup;
mod cli;
mod compressed;
mod contrib;
mod encryption;
mod firstrun;
mod hostile_bucket;
mod limits;
mod link;
mod lock;
mod object_lock;
mod operate;
mod outage;
mod restore;
mod resume;
mod rig;
mod sdk;
mod trust;
mod trust_local;
mod unattended;
