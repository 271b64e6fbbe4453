//! SIGINT and SIGTERM (a systemd stop) set one cancel flag that the pipeline and the
//! retry loop check: `btrfs send` is killed, in-flight uploads are aborted, nothing is
//! published, and the run exits non-zero. A second signal terminates at once.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

pub fn install() -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional default acts only once the flag is already set.
        flag::register_conditional_shutdown(sig, 130, cancel.clone())
            .context("installing the signal handlers")?;
        flag::register(sig, cancel.clone()).context("installing the signal handlers")?;
    }
    Ok(cancel)
}
