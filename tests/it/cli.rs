//! The binary's surface without root: version, help, usage and config errors (exit 2 with
//! a one-line message naming the key), and the exit code table.

use crate::support::*;

fn write_config(dir: &TempDir, body: &str) -> String {
    let p = dir.path().join("config.toml");
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"
[global]
state_path = "/tmp/b2s3-never/state.json"
lock_path = "/tmp/b2s3-never/lock"
[subvolumes]
paths = ["/data"]
[s3]
bucket = "b"
region = "us-east-1"
prefix = "p"
"#;

#[test]
fn version_and_help() {
    let r = run_bin(&["--version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("btrfs_to_s3 "), "{r:?}");
    let r = run_bin(&["--help"]);
    assert_eq!(r.code, 0, "{r:?}");
    for word in ["backup", "restore", "--config", "--log-level", "Exit codes"] {
        assert!(r.stdout.contains(word), "help lacks {word}: {r:?}");
    }
    let r = run_bin(&["backup", "--help"]);
    for word in ["--dry-run", "--subvolume", "--once", "--no-s3"] {
        assert!(r.stdout.contains(word), "backup help lacks {word}: {r:?}");
    }
    let r = run_bin(&["restore", "--help"]);
    for word in [
        "--subvolume",
        "--target",
        "--manifest-key",
        "--restore-timeout",
        "--wait-restore",
        "--no-wait-restore",
        "--verify",
    ] {
        assert!(r.stdout.contains(word), "restore help lacks {word}: {r:?}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["backup"][..],
        &["backup", "--bogus"],
        &["backup", "--full", "--once"],
        &["restore", "--config", "/x"],
        &["nonsense"],
    ] {
        let r = run_bin(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
    // Without --config (nor BTRFS_TO_S3_CONFIG) the default path is read; it is missing.
    let r = run_bin(&["backup"]);
    assert!(r.stderr.contains("pass --config PATH"), "{r:?}");
}

#[test]
fn config_errors_exit_2_with_the_key() {
    let dir = TempDir::new("cfg");
    // A config without subvolumes serves restore, list and verify (a new machine), not
    // backup: exit 2, the file and the key named.
    let cfg = write_config(
        &dir,
        "[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n",
    );
    let r = run_bin(&["backup", "--config", &cfg]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("subvolumes.paths") && r.stderr.contains(&cfg),
        "{r:?}"
    );
    let cases: &[(&str, &str)] = &[
        (
            &GOOD.replace("prefix = \"p\"", "prefix = \"p\"\nconcurrency = 0"),
            "s3.concurrency",
        ),
        (
            &GOOD.replace(
                "[subvolumes]",
                "[schedule]\nrun_at = \"25:00\"\n[subvolumes]",
            ),
            "schedule.run_at",
        ),
        (
            &GOOD.replace("state_path", "stat_path"),
            "unknown key global.stat_path",
        ),
        (&GOOD.replace("\"/data\"", "\"data\""), "absolute"),
        (
            &GOOD.replace(
                "[subvolumes]",
                "[restore]\nverify_mode = \"fast\"\n[subvolumes]",
            ),
            "restore.verify_mode",
        ),
        (&GOOD.replace("bucket = \"b\"\n", ""), "s3.bucket"),
    ];
    for (body, word) in cases {
        let cfg = write_config(&dir, body);
        for cmd in [
            &["backup", "--config", &cfg][..],
            &[
                "restore",
                "--config",
                &cfg,
                "--subvolume",
                "data",
                "--target",
                "/tmp/x",
            ],
        ] {
            let r = run_bin(cmd);
            assert_eq!(r.code, 2, "{body}: {r:?}");
            assert!(r.stderr.contains(word), "{body}: {r:?}");
            assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {r:?}");
            assert!(r.stderr.contains(&cfg), "names the file: {r:?}");
        }
    }
    let r = run_bin(&["backup", "--config", "/nonexistent/c.toml"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("/nonexistent/c.toml"), "{r:?}");
    // Nothing was created for a bad config: no lock file, no state.
    assert!(!std::path::Path::new("/tmp/b2s3-never").exists());
}

#[test]
fn log_level_precedence_and_dry_run_output() {
    let dir = TempDir::new("loglevel");
    let body = GOOD
        .replace("/tmp/b2s3-never", &dir.path().display().to_string())
        .replace("[global]", "[global]\nlog_level = \"error\"");
    let cfg = write_config(&dir, &body);
    // Config says error: no debug event. (The dry run is a config check: /data does not
    // exist here, which it reports with exit 2; the log level is what this test is about.)
    let r = run_bin(&["backup", "--config", &cfg, "--dry-run"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stdout
            .contains("config: subvolumes.paths: /data does not exist"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("event=config_loaded"), "{r:?}");
    // --log-level (before the subcommand) overrides the config.
    let r = run_bin(&[
        "--log-level",
        "debug",
        "backup",
        "--config",
        &cfg,
        "--dry-run",
    ]);
    assert!(r.stderr.contains("DEBUG event=config_loaded"), "{r:?}");
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("event=config_loaded"))
        .unwrap();
    let ts = line.split(' ').next().unwrap();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.contains('T'),
        "UTC timestamp: {line}"
    );
    // Secrets never appear in the log, even at debug level.
    assert!(!r.stderr.contains(&test_keys().1), "{r:?}");
    // RUST_LOG overrides both.
    let r = output(btrfs_to_s3().env("RUST_LOG", "error").args([
        "backup",
        "--config",
        &cfg,
        "--dry-run",
        "--log-level",
        "debug",
    ]));
    assert!(!r.stderr.contains("event=config_loaded"), "{r:?}");
    // Dry run wrote nothing: no lock file, no state.
    assert!(!dir.path().join("lock").exists() && !dir.path().join("state.json").exists());
    // An unknown --subvolume is a usage error.
    let r = run_bin(&[
        "backup",
        "--config",
        &cfg,
        "--dry-run",
        "--subvolume",
        "nope",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--subvolume nope") && r.stderr.contains("configured: data"),
        "{r:?}"
    );
}

/// Issue 25 item 4: `-c`, `BTRFS_TO_S3_CONFIG`, and the default path when neither is given.
#[test]
fn the_config_comes_from_c_the_environment_or_the_default() {
    let default = std::path::Path::new("/etc/btrfs_to_s3/config.toml");
    assert!(
        !default.exists(),
        "this test needs no config at {} (move it aside)",
        default.display()
    );
    let r = run_bin(&["list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("no config at /etc/btrfs_to_s3/config.toml (the default)")
            && r.stderr.contains("--config PATH"),
        "{r:?}"
    );
    // A config with a mistake shows which file was read.
    let dir = TempDir::new("cfgsrc");
    let bad = write_config(&dir, &format!("{GOOD}\n[bogus]\n"));
    let r = run_bin(&["list", "-c", &bad]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&bad) && r.stderr.contains("bogus"),
        "{r:?}"
    );
    let r = output(
        btrfs_to_s3()
            .env("BTRFS_TO_S3_CONFIG", &bad)
            .args(["verify"]),
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(&bad), "{r:?}");
    // --config wins over the environment.
    let r = output(
        btrfs_to_s3()
            .env("BTRFS_TO_S3_CONFIG", "/nonexistent/env.toml")
            .args(["verify", "--config", &bad]),
    );
    assert!(r.stderr.contains(&bad), "{r:?}");
}

/// Issue 25 item 3: completions and man pages are generated from the clap definitions.
#[test]
fn completions_and_man_pages_come_from_the_flags() {
    let r = run_bin(&["completions", "bash"]);
    assert_eq!(r.code, 0, "{r:?}");
    for w in ["_btrfs_to_s3()", "--manifest-key", "--full", "--config"] {
        assert!(r.stdout.contains(w), "bash completions lack {w}");
    }
    for sh in ["zsh", "fish"] {
        let r = run_bin(&["completions", sh]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("restore") && r.stdout.contains("manifest-key"),
            "{sh}"
        );
    }
    assert_eq!(run_bin(&["completions", "tcsh"]).code, 2);
    let r = run_bin(&["man"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(".ie") && r.stdout.contains(".TH btrfs_to_s3 1"),
        "{r:?}"
    );
    let dir = TempDir::new("man");
    let d = dir.path().display().to_string();
    let r = run_bin(&["man", "--dir", &d]);
    assert_eq!(r.code, 0, "{r:?}");
    let backup = std::fs::read_to_string(dir.path().join("btrfs_to_s3-backup.1")).unwrap();
    assert!(
        backup.contains("full") && backup.contains("restart"),
        "{backup}"
    );
    assert!(dir.path().join("btrfs_to_s3-restore.1").is_file());
    let r = run_bin(&["man", "--dir", "/nonexistent/man"]);
    assert_eq!(r.code, 2, "{r:?}");
}

/// Issue 25 item 7: under systemd (`JOURNAL_STREAM` naming stderr) each line starts with
/// its syslog priority, so `journalctl -p err` finds failures; otherwise lines are as
/// before.
#[test]
fn journald_gets_a_priority_on_every_line_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("journal");
    let cfg = write_config(
        &dir,
        &GOOD.replace(
            "prefix = \"p\"",
            "prefix = \"p\"\nendpoint_url = \"http://127.0.0.1:9\"",
        ),
    );
    let run_with = |journal: Option<&str>| {
        let log = dir.path().join("stderr.log");
        let f = std::fs::File::create(&log).unwrap();
        let meta = f.metadata().unwrap();
        let mut c = btrfs_to_s3();
        c.args(["verify", "--log-level", "debug", "-c", &cfg])
            .stderr(f);
        match journal {
            Some(v) => c.env("JOURNAL_STREAM", v),
            None => c.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
        };
        let st = c.status().unwrap();
        assert_eq!(st.code(), Some(1));
        std::fs::read_to_string(&log).unwrap()
    };
    let text = run_with(None);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with('<')), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<7>") && l.contains("event=config_loaded")),
        "{text}"
    );
    let last = lines.last().unwrap();
    assert!(last.starts_with("<3>btrfs_to_s3: error: "), "{text}");
    // Another stream's numbers (a child whose stderr was redirected): no prefixes.
    let text = run_with(Some("1:1"));
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");
}
