//! Read-only commands need no root and no lock (issue 25 item 8): `list`, `verify` and
//! `status` run as `nobody` (setpriv), with a config and credentials that user can read,
//! while root holds the run lock; `prune` keeps the lock and says so in one line.

use std::process::Command;

use crate::support::*;

/// The binary as `nobody` (uid/gid 65534), with the test's credentials in its environment.
fn as_nobody(args: &[&str]) -> RunResult {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(args);
    test_env(&mut c);
    output(&mut c)
}

#[test]
fn list_verify_and_status_run_as_nobody_while_root_holds_the_lock() {
    if !require_root("list_verify_and_status_run_as_nobody_while_root_holds_the_lock") {
        return;
    }
    assert!(
        sh("command -v setpriv").status.success(),
        "setpriv is missing: apt-get install util-linux"
    );
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "x").unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    // What an operator grants a reader: the config (0644 here) and the state's directory
    // and file, readable by all; the bucket credentials come from the environment.
    run(&format!(
        "chmod 0644 {cfg} && chmod 0755 {dir} && chmod 0644 {state}",
        cfg = s.cfg.display(),
        dir = s.state.parent().unwrap().display(),
        state = s.state.display()
    ));
    // Root's run holds the lock meanwhile.
    let _held = btrfs_to_s3::lock::RunLock::acquire(&s.lock).expect("taking the run lock");
    let cfg = s.cfg.display().to_string();
    for args in [
        &["list", "--config", &cfg][..],
        &["verify", "--config", &cfg],
        &["status", "--config", &cfg],
        &["status", "--config", &cfg, "--remote"],
    ] {
        let r = as_nobody(args);
        assert_eq!(r.code, 0, "{args:?} as nobody: {r:?}");
        assert!(!r.stdout.is_empty(), "{args:?}: {r:?}");
        assert!(
            !r.stderr.contains("lock"),
            "{args:?} touched the lock: {r:?}"
        );
    }
    // The lock file is untouched by them: still root's.
    let owner = run(&format!("stat -c %u {}", s.lock.display()));
    assert_eq!(owner.trim(), "0");
    // prune keeps the lock: as nobody it stops with one line naming the lock file.
    let r = as_nobody(&["prune", "--config", &cfg]);
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.trim().lines().last().unwrap_or("").to_string();
    assert!(
        last.starts_with("btrfs_to_s3: error: ") && last.contains(&s.lock.display().to_string()),
        "{r:?}"
    );
}
