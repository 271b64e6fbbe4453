//! The run lock between two real processes: the second fails at once naming the holder's
//! PID, and `kill -9` of the holder releases the lock.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A config whose state file is a FIFO: a backup that got the lock blocks reading the
/// state (the next step after the lock) until a writer appears, which never happens.
fn blocking_config(dir: &TempDir) -> (String, std::path::PathBuf) {
    run(&format!("mkfifo {}/state.json", dir.path().display()));
    let lock = dir.path().join("lock/btrfs_to_s3.lock");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[global]
state_path = "{d}/state.json"
lock_path = "{lock}"
[snapshots]
base_dir = "{d}/snaps"
[subvolumes]
paths = ["/nonexistent/data"]
[s3]
bucket = "b"
region = "us-east-1"
prefix = "p"
endpoint_url = "http://127.0.0.1:9"
"#,
            d = dir.path().display(),
            lock = lock.display()
        ),
    )
    .unwrap();
    (cfg.display().to_string(), lock)
}

fn spawn_holder(cfg: &str) -> Child {
    btrfs_to_s3()
        .args(["backup", "--config", cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for_pid_in(lock: &std::path::Path, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::fs::read_to_string(lock)
            .map(|s| s.trim() == pid.to_string())
            .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("pid {pid} never appeared in {}", lock.display());
}

#[test]
fn second_run_fails_at_once_and_kill_9_releases() {
    let dir = TempDir::new("lock");
    let (cfg, lock) = blocking_config(&dir);

    let mut a = spawn_holder(&cfg);
    wait_for_pid_in(&lock, a.id());
    let started = Instant::now();
    let r = run_bin(&["backup", "--config", &cfg]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("lock already held by pid {}", a.id())),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not fail at once"
    );
    assert!(a.try_wait().unwrap().is_none(), "holder ended early");

    a.kill().unwrap(); // SIGKILL: no cleanup code runs
    a.wait().unwrap();
    assert!(lock.exists(), "the lock file is never deleted");
    let mut c = spawn_holder(&cfg);
    wait_for_pid_in(&lock, c.id());
    c.kill().unwrap();
    c.wait().unwrap();
}
