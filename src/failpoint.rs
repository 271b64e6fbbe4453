//! Crash points for the resume tests: with `BTRFS_TO_S3_FAILPOINT=NAME` (or `NAME:N`, the
//! N-th time, from 1) the process sends itself SIGKILL when it reaches the point `NAME`,
//! exactly as `kill -9` at that moment would. Unset (always, outside tests) a point costs
//! one relaxed load. The names are listed in DESIGN.md ("Resume").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("BTRFS_TO_S3_FAILPOINT").ok()?;
            let (name, nth) = match v.split_once(':') {
                Some((n, k)) => (n.to_string(), k.parse().ok()?),
                None => (v, 1),
            };
            Some(Armed {
                name,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// The crash point `name`: SIGKILL to ourselves when it is the armed one, on its N-th hit.
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name != name {
        return;
    }
    if a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
        crate::event!(Warn, "failpoint", name = name);
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; should it not arrive, do not go on.
        std::process::abort();
    }
}
