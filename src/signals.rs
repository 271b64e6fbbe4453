//! SIGINT and SIGTERM (a systemd stop) set one cancel flag that the pipeline and the
//! retry loop check: `btrfs send` is killed, in-flight uploads are aborted, nothing is
//! published, and the run exits non-zero. A second signal terminates at once. The stall
//! watchdog sets the same flag ([`stop_run`]), as a SIGTERM would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// The flag of the run that installed the handlers last.
static RUN: Mutex<Option<Arc<AtomicBool>>> = Mutex::new(None);

pub fn install() -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional default acts only once the flag is already set.
        flag::register_conditional_shutdown(sig, 130, cancel.clone())
            .context("installing the signal handlers")?;
        flag::register(sig, cancel.clone()).context("installing the signal handlers")?;
    }
    if let Ok(mut r) = RUN.lock() {
        *r = Some(cancel.clone());
    }
    Ok(cancel)
}

/// Stops the run as SIGTERM does (a signal after it then ends the process at once, as a
/// second signal does). False when no run installed the handlers.
pub fn stop_run() -> bool {
    match RUN.lock().ok().and_then(|r| r.clone()) {
        Some(flag) => {
            flag.store(true, Ordering::SeqCst);
            true
        }
        None => false,
    }
}
