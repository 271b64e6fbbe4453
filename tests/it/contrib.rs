//! The files in contrib/: the systemd units pass `systemd-analyze verify`, and every
//! config file in the repository parses (the example with exactly the documented defaults).

use std::path::{Path, PathBuf};

use btrfs_to_s3::config::{Config, ProcessEnv};

use crate::support::*;

#[test]
fn systemd_units_verify() {
    let ok = sh("command -v systemd-analyze").status.success();
    assert!(
        ok,
        "systemd-analyze is missing: apt-get install systemd (contrib/test.sh does)"
    );
    let dir = TempDir::new("units");
    let unit = std::fs::read_to_string(repo().join("contrib/systemd/btrfs_to_s3.service")).unwrap();
    assert!(unit.contains("Type=oneshot"));
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/btrfs_to_s3 backup --config /etc/btrfs_to_s3/config.toml"
    ));
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/usr/local/bin/btrfs_to_s3", &bin().display().to_string());
    std::fs::write(dir.path().join("btrfs_to_s3.service"), unit).unwrap();
    let timer = std::fs::read_to_string(repo().join("contrib/systemd/btrfs_to_s3.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*-*-* 02:00:00") && timer.contains("Persistent=true"));
    std::fs::write(dir.path().join("btrfs_to_s3.timer"), timer).unwrap();
    let failure = "btrfs_to_s3-failure@.service";
    let text = std::fs::read_to_string(repo().join("contrib/systemd").join(failure)).unwrap();
    assert!(text.contains("journalctl -u %i"));
    std::fs::write(dir.path().join(failure), text).unwrap();
    let instance = dir
        .path()
        .join("btrfs_to_s3-failure@btrfs_to_s3.service.service");
    std::os::unix::fs::symlink(dir.path().join(failure), &instance).unwrap();
    let out = sh(&format!(
        "cd {d} && SYSTEMD_UNIT_PATH={d}: systemd-analyze verify ./btrfs_to_s3.service ./btrfs_to_s3.timer \
         ./btrfs_to_s3-failure@btrfs_to_s3.service.service",
        d = dir.path().display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
}

fn config_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | ".test-tools") {
                config_files(&p, out);
            }
        } else if name.ends_with(".toml") && name != "Cargo.toml" && name != "rustfmt.toml" {
            out.push(p);
        }
    }
}

#[test]
fn every_config_file_parses() {
    let mut files = Vec::new();
    config_files(&repo(), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("contrib/config.example.toml")),
        "{files:?}"
    );
    for f in &files {
        if let Err(e) = Config::load(f, &ProcessEnv) {
            panic!("{}: {e}", f.display());
        }
    }
}

#[test]
fn example_config_shows_the_defaults() {
    let example = Config::load(&repo().join("contrib/config.example.toml"), &ProcessEnv).unwrap();
    let minimal = Config::parse(
        "[subvolumes]\npaths = [\"/srv/data\"]\n[s3]\nbucket = \"my-backups\"\nregion = \"eu-west-1\"\nprefix = \"hosts/myhost\"\n",
        &ProcessEnv,
    )
    .unwrap();
    assert_eq!(
        format!("{:?}", example.global),
        format!("{:?}", minimal.global)
    );
    assert_eq!(
        format!("{:?}", example.schedule),
        format!("{:?}", minimal.schedule)
    );
    assert_eq!(
        format!("{:?}", example.snapshots),
        format!("{:?}", minimal.snapshots)
    );
    assert_eq!(format!("{:?}", example.s3), format!("{:?}", minimal.s3));
    assert_eq!(
        format!("{:?}", example.restore),
        format!("{:?}", minimal.restore)
    );
    // Every key of the schema appears in the example (set or commented out).
    let text = std::fs::read_to_string(repo().join("contrib/config.example.toml")).unwrap();
    for key in btrfs_to_s3::config::SCHEMA
        .iter()
        .flat_map(|(_, keys)| keys.iter())
    {
        assert!(text.contains(&format!("{key} = ")), "example lacks {key}");
    }
}

#[test]
fn e2e_harness_runs_against_the_local_server() {
    if !require_root("e2e_harness_runs_against_the_local_server") {
        return;
    }
    let out = std::process::Command::new("bash")
        .arg(repo().join("contrib/e2e.sh"))
        .env("E2E_BIN", bin())
        .env("E2E_DATA_MIB", "8")
        .env_remove("E2E_BUCKET")
        .env_remove("E2E_ENDPOINT_URL")
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && o.contains("E2E OK"),
        "stdout:\n{o}\nstderr:\n{e}"
    );
    assert!(
        o.contains("action=incremental") && o.contains("event=verify_ok"),
        "{o}"
    );
}

#[test]
fn e2e_and_demo_build_into_cargo_target_dir_and_say_what_they_install() {
    if !require_root("e2e_and_demo_build_into_cargo_target_dir_and_say_what_they_install") {
        return;
    }
    // The plan alone installs nothing and says what would be installed, and where.
    let plan = std::process::Command::new("bash")
        .arg(repo().join("contrib/install-test-tools.sh"))
        .arg("--plan")
        .output()
        .unwrap();
    let pe = String::from_utf8_lossy(&plan.stderr);
    assert!(plan.status.success(), "{pe}");
    assert!(
        pe.contains("==> test tools: nothing to install")
            || pe.contains("==> will install Debian packages with apt-get: ")
            || pe.contains("==> will create a Python venv with moto[server]==5.1.22"),
        "{pe}"
    );
    // A stand-in cargo records how it was called and "builds" a binary that fails, so
    // e2e.sh stops right after its build step.
    let dir = TempDir::new("target-dir");
    let fake_bin = dir.path().join("bin");
    std::fs::create_dir_all(&fake_bin).unwrap();
    let calls = dir.path().join("cargo-calls");
    let target = dir.path().join("elsewhere");
    std::fs::write(
        fake_bin.join("cargo"),
        format!(
            "#!/bin/sh\necho \"$*\" >> {calls}\nmkdir -p \"$CARGO_TARGET_DIR/release\"\n\
             printf '#!/bin/sh\\necho fake-built-binary; exit 1\\n' > \"$CARGO_TARGET_DIR/release/btrfs_to_s3\"\n\
             chmod +x \"$CARGO_TARGET_DIR/release/btrfs_to_s3\"\necho '   Compiling btrfs_to_s3' >&2\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    run(&format!("chmod +x {}", fake_bin.join("cargo").display()));
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .arg(repo().join("contrib/demo.sh"))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("E2E_BIN")
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "the fake binary fails: {o}\n{e}");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap().trim(),
        "build --release",
        "cargo's progress is shown (no --quiet)"
    );
    assert!(e.contains("   Compiling btrfs_to_s3"), "{e}");
    let said = format!("binary: cargo build --release into {}", target.display());
    let what = o.find("==> what this needs").expect("the plan step");
    let build = o.find("==> build").expect("the build step");
    assert!(what < build && o.contains(&said), "{o}");
    assert!(
        o.contains("fake-built-binary"),
        "the binary from CARGO_TARGET_DIR ran: {o}"
    );
    assert!(e.contains("E2E FAILED at step: build"), "{e}");
}

/// Writes a crate's `src/` whose files hold `files` (path under src/, text).
fn fake_src(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let src = dir.join("src");
    for (path, text) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    src
}

fn check_layers(src: &Path) -> std::process::Output {
    std::process::Command::new("python3")
        .arg(repo().join("contrib/check-layers.py"))
        .arg("--src")
        .arg(src)
        .output()
        .expect("python3 is missing: apt-get install python3")
}

#[test]
fn the_layer_check_passes_on_src_and_fails_on_a_cycle_or_an_upward_import() {
    // The real tree passes (contrib/test.sh runs the same before cargo test).
    let out = check_layers(&repo().join("src"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let dir = TempDir::new("layers");
    // A cycle between two leaves: found and printed, with where each edge is.
    let src = fake_src(
        &dir.path().join("cycle"),
        &[
            ("lib.rs", "pub mod manifest;\npub mod snapshots;\n"),
            ("manifest.rs", "use crate::snapshots::SnapName;\n"),
            (
                "snapshots.rs",
                "// use crate::kind::Kind; (a comment is not an import)\n\
                 use crate::manifest::{Kind, Manifest};\n",
            ),
        ],
    );
    let out = check_layers(&src);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cycle between top-level modules manifest -> snapshots -> manifest")
            && err.contains("src/manifest.rs:1")
            && err.contains("src/snapshots.rs:2"),
        "{err}"
    );
    // An upward import (the store naming a command), one engine calling another, and a
    // cycle between sibling submodules; test code is left out.
    let src = fake_src(
        &dir.path().join("upward"),
        &[
            (
                "lib.rs",
                "mod store;\nmod cmd;\nmod backup;\nmod restore;\n",
            ),
            ("cmd/mod.rs", "use crate::backup::Backup;\n"),
            (
                "store/mod.rs",
                "mod a;\nmod b;\nfn f() { crate::cmd::run(); }\n\
                 #[cfg(test)]\nmod tests { use crate::backup::X; }\n",
            ),
            ("store/a.rs", "use super::b::B;\n"),
            ("store/b.rs", "use super::a::A;\n"),
            ("store/tests.rs", "use crate::cmd::X;\n"),
            (
                "backup.rs",
                "use crate::{restore::{self, Restorer}, store};\n",
            ),
            ("restore.rs", "use crate::store::ObjectStore;\n"),
        ],
    );
    let out = check_layers(&src);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("src/store/mod.rs:3: `store` imports `cmd`, a higher layer"),
        "{err}"
    );
    assert!(
        err.contains("src/backup.rs:1: `backup` imports `restore`, another module of its layer"),
        "{err}"
    );
    assert!(
        err.contains("cycle inside `store`: store::a -> store::b -> store::a"),
        "{err}"
    );
    // The gateway rule (issue 22 item 1): only repo/ names the store.
    assert!(
        err.contains("src/restore.rs:1: `restore` names `ObjectStore`"),
        "{err}"
    );
    assert!(!err.contains("`store` imports `backup`"), "{err}");
    assert_eq!(err.matches("check-layers: ").count(), 6, "{err}");
}
