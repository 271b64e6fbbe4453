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

/// The config of `blocking_config` with its lock at `lock`.
fn config_with_lock(dir: &TempDir, lock: &std::path::Path) -> String {
    let (cfg, old) = blocking_config(dir);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(&old.display().to_string(), &lock.display().to_string()),
    )
    .unwrap();
    cfg
}

#[test]
fn a_planted_lock_file_is_refused_naming_owner_and_fix() {
    if !require_root("a_planted_lock_file_is_refused_naming_owner_and_fix") {
        return;
    }
    let dir = TempDir::new("lock-planted");
    // A world-writable sticky directory, like /var/lock.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    run(&format!("chmod 1777 {}", shared.display()));
    let lock = shared.join("btrfs_to_s3.lock");

    // A symlink to a file root must not write into.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let cfg = config_with_lock(&dir, &lock);
    let r = output_within(btrfs_to_s3().args(["backup", "--config", &cfg]), 20);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("is a symbolic link") && r.stderr.contains("global.lock_path"),
        "{r:?}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");

    // A file another user created first (and could hold forever).
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, "").unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    let r = output_within(btrfs_to_s3().args(["backup", "--config", &cfg]), 20);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("is owned by uid 65534") && r.stderr.contains("remove"),
        "{r:?}"
    );
}

#[test]
fn of_two_runs_started_together_the_loser_names_the_winner() {
    for round in 0..8 {
        let dir = TempDir::new("lock-race");
        let (cfg, lock) = blocking_config(&dir);
        let spawn = || {
            btrfs_to_s3()
                .args(["backup", "--config", &cfg])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut pair = [spawn(), spawn()];
        let deadline = Instant::now() + Duration::from_secs(20);
        let loser = loop {
            if let Some(i) = (0..2).find(|&i| pair[i].try_wait().unwrap().is_some()) {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: neither run ended"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let winner = 1 - loser;
        let winner_pid = pair[winner].id();
        let mut err = String::new();
        use std::io::Read;
        pair[loser]
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        pair[winner].kill().unwrap();
        pair[winner].wait().unwrap();
        assert!(
            err.contains(&format!("lock already held by pid {winner_pid}")),
            "round {round}: {err}"
        );
        assert!(lock.exists());
    }
}
