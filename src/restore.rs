//! Restore (in progress).

use anyhow::{bail, Result};

use crate::cli::RestoreArgs;
use crate::config::Config;

pub fn command(config: &Config, args: &RestoreArgs) -> Result<u8> {
    let _lock = crate::lock::RunLock::acquire(&config.global.lock_path)?;
    bail!("restore of {} is not implemented yet", args.subvolume)
}
