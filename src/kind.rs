//! [`Kind`], full or incremental: one type for manifests, keys, snapshot names and plans.
//! A leaf, so that `manifest` (which checks snapshot names) and `snapshots` (whose names
//! end in the kind) need not import each other.

use serde::{Deserialize, Serialize};

/// Full or incremental: one type for manifests, keys, snapshot names and plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A whole `btrfs send` of the snapshot.
    Full,
    /// A `btrfs send -p PARENT`: the difference from the previous snapshot.
    Incremental,
}

impl Kind {
    /// As in manifests, `current.json` and keys: `full`, `incremental`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }

    /// As at the end of snapshot names: `full`, `inc`.
    pub fn snap_suffix(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "inc",
        }
    }
}
