//! The Debian package (`contrib/deb.sh`), on this machine: built from the binary under
//! test (not a release build: the script, the layout and the maintainer scripts are what
//! is tested, and a release build would add minutes on 2 cores; the release path runs
//! the same script after `cargo build --release`), installed with `dpkg -i`, checked
//! (`--version`, `systemd-analyze verify` of the installed units, the man page with
//! `man -l`, completions, the conffile), removed and purged. The purge also runs on drop,
//! so a failed assertion leaves nothing installed.

use std::path::Path;

use crate::support::*;

const PKG: &str = "btrfs-to-s3";

/// Purges the package on drop (a failed test leaves nothing installed).
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = sh(&format!("dpkg --purge {PKG} >/dev/null 2>&1"));
    }
}

fn installed() -> bool {
    let out = sh(&format!("dpkg-query -W -f='${{Status}}' {PKG} 2>/dev/null"));
    String::from_utf8_lossy(&out.stdout).contains("installed")
}

/// Every file the package installs (dpkg's own list, directories left out).
const FILES: &[&str] = &[
    "/usr/bin/btrfs_to_s3",
    "/lib/systemd/system/btrfs_to_s3.service",
    "/lib/systemd/system/btrfs_to_s3.timer",
    "/lib/systemd/system/btrfs_to_s3-failure@.service",
    "/etc/btrfs_to_s3/config.toml.example",
    "/usr/share/man/man1/btrfs_to_s3.1.gz",
    "/usr/share/man/man1/btrfs_to_s3-backup.1.gz",
    "/usr/share/man/man1/btrfs_to_s3-restore.1.gz",
    "/usr/share/bash-completion/completions/btrfs_to_s3",
    "/usr/share/zsh/vendor-completions/_btrfs_to_s3",
    "/usr/share/fish/vendor_completions.d/btrfs_to_s3.fish",
    "/usr/share/doc/btrfs-to-s3/copyright",
    "/usr/share/doc/btrfs-to-s3/changelog.Debian.gz",
];

#[test]
fn deb_package_installs_verifies_and_purges() {
    if !require_root("deb_package_installs_verifies_and_purges") {
        return;
    }
    for (tool, pkg) in [
        ("dpkg-deb", "dpkg"),
        ("objdump", "binutils"),
        ("strip", "binutils"),
        ("systemd-analyze", "systemd"),
        ("man", "man-db"),
    ] {
        assert!(
            sh(&format!("command -v {tool}")).status.success(),
            "{tool} is missing: apt-get install {pkg}"
        );
    }
    assert!(
        !installed(),
        "the package {PKG} is installed on this machine: this test installs and purges it; \
         remove it first (dpkg --purge {PKG})"
    );
    assert!(
        !Path::new("/usr/bin/btrfs_to_s3").exists(),
        "/usr/bin/btrfs_to_s3 exists outside the package: move it away first"
    );
    let out = TempDir::new("deb");
    let built = std::process::Command::new("bash")
        .arg(repo().join("contrib/deb.sh"))
        .arg("--bin")
        .arg(bin())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("running contrib/deb.sh");
    let (so, se) = (
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr),
    );
    assert!(built.status.success(), "deb.sh failed:\n{so}\n{se}");
    let deb = so.lines().last().unwrap_or("").to_string();
    let version = env!("CARGO_PKG_VERSION");
    let arch = run("dpkg --print-architecture").trim().to_string();
    assert_eq!(
        deb,
        out.path()
            .join(format!("{PKG}_{version}-1_{arch}.deb"))
            .display()
            .to_string()
    );
    let control = run(&format!("dpkg-deb -f {deb}"));
    for want in [
        &format!("Package: {PKG}")[..],
        &format!("Version: {version}-1"),
        "Depends: libc6 (>= 2.",
        "btrfs-progs",
        "Section: admin",
    ] {
        assert!(control.contains(want), "control lacks {want}:\n{control}");
    }
    let listing = run(&format!("dpkg-deb -c {deb}"));
    for f in FILES {
        assert!(
            listing.contains(&format!(".{f}")),
            "{f} not in the package:\n{listing}"
        );
    }
    assert!(
        !listing.contains("/usr/local"),
        "nothing under /usr/local:\n{listing}"
    );
    // Owned by root, whoever built it.
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "{listing}"
    );

    let _purge = Purge;
    let r = sh(&format!("DEBIAN_FRONTEND=noninteractive dpkg -i {deb}"));
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "dpkg -i failed: {err}");
    assert!(installed());
    // The conffile is an example: the postinst says what to do with it.
    assert!(
        err.contains("copy config.toml.example")
            || Path::new("/etc/btrfs_to_s3/config.toml").exists(),
        "{err}"
    );
    for f in FILES {
        assert!(Path::new(f).exists(), "{f} missing after install");
    }
    assert_eq!(
        run("/usr/bin/btrfs_to_s3 --version").trim(),
        format!("btrfs_to_s3 {version}")
    );
    // Stripped, as Debian ships binaries.
    let file_info = run("objdump -h /usr/bin/btrfs_to_s3");
    assert!(!file_info.contains(".debug_info"), "not stripped");
    // The installed units name the installed binary and pass systemd-analyze verify.
    let service = std::fs::read_to_string("/lib/systemd/system/btrfs_to_s3.service").unwrap();
    assert!(service
        .contains("ExecStart=/usr/bin/btrfs_to_s3 backup --config /etc/btrfs_to_s3/config.toml"));
    assert!(
        !service
            .lines()
            .any(|l| l.starts_with("ConditionPathExists")),
        "a missing config must fail loudly, not skip"
    );
    let v = sh(
        "cd /lib/systemd/system && systemd-analyze verify ./btrfs_to_s3.service \
                ./btrfs_to_s3.timer btrfs_to_s3-failure@btrfs_to_s3.service.service",
    );
    let verr = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "systemd-analyze verify failed: {verr}");
    assert!(
        verr.trim().is_empty(),
        "systemd-analyze verify warned: {verr}"
    );
    // The man pages render and are the binary's own.
    let page = run("MANWIDTH=100 man -P cat -l /usr/share/man/man1/btrfs_to_s3.1.gz 2>&1");
    assert!(
        page.contains("btrfs_to_s3") && page.contains("backup"),
        "{page}"
    );
    assert!(page.contains("--config"), "{page}");
    let backup = run("zcat /usr/share/man/man1/btrfs_to_s3-backup.1.gz");
    assert!(
        backup.starts_with(".ie") || backup.contains(".TH"),
        "{backup}"
    );
    assert!(backup.contains("dry\\-run"), "{backup}");
    // bash loads the completion and binds it to the command.
    let complete = run(
        "bash -c 'source /usr/share/bash-completion/completions/btrfs_to_s3 && complete -p btrfs_to_s3'",
    );
    assert!(complete.contains("btrfs_to_s3"), "{complete}");
    // The conffile is the example config, registered as a conffile, and parses.
    let conffiles = run(&format!("dpkg-query -W -f='${{Conffiles}}' {PKG}"));
    assert!(
        conffiles.contains("/etc/btrfs_to_s3/config.toml.example"),
        "{conffiles}"
    );
    assert_eq!(
        std::fs::read("/etc/btrfs_to_s3/config.toml.example").unwrap(),
        std::fs::read(repo().join("contrib/config.example.toml")).unwrap()
    );
    btrfs_to_s3::config::Config::load(
        Path::new("/etc/btrfs_to_s3/config.toml.example"),
        &btrfs_to_s3::config::ProcessEnv,
    )
    .expect("the installed example config parses");

    // Remove: the files go, the conffile stays (dpkg's rule for conffiles) ...
    let r = sh(&format!("dpkg -r {PKG}"));
    assert!(
        r.status.success(),
        "dpkg -r: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    for f in FILES.iter().filter(|f| !f.starts_with("/etc/")) {
        assert!(!Path::new(f).exists(), "{f} left after dpkg -r");
    }
    assert!(Path::new("/etc/btrfs_to_s3/config.toml.example").exists());
    // ... and purge takes the conffile too.
    let r = sh(&format!("dpkg --purge {PKG}"));
    assert!(
        r.status.success(),
        "dpkg --purge: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!installed());
    assert!(!Path::new("/etc/btrfs_to_s3/config.toml.example").exists());
}
