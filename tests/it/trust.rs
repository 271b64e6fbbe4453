//! What an attacker or a lying endpoint can make root do (issue "Trust"): doctored
//! manifests, planted spool and lock files, redirects and replies without an ETag, a
//! prefix with `..`, secrets in the logs, and config values that would overflow. Each
//! test fails on the code before the fix.

use std::path::Path;

use btrfs_to_s3::store::{Body, ObjectStore, PutOptions};

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn json_opts() -> PutOptions {
    PutOptions {
        storage_class: "STANDARD".into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/json",
        kms_key_id: None,
        lock: None,
    }
}

fn current_manifest(s: &Setup) -> (String, serde_json::Value) {
    let key = s.get_json("backups/subvol/data/current.json")["manifest_key"]
        .as_str()
        .unwrap()
        .to_string();
    let m = s.get_json(&key);
    (key, m)
}

fn is_readonly(p: &Path) -> bool {
    run(&format!("btrfs property get {} ro", p.display())).trim() == "ro=true"
}

/// Publishes a doctored backup of subvolume `data` at timestamp 20990101T000000Z: a
/// copy of manifest `base` made a `kind` backup of snapshot `name` (on `parent`, for an
/// incremental) whose one chunk is `stream`, correctly hashed. Returns the manifest's
/// key and the chunk's.
fn publish_doctored(
    s: &Setup,
    base: &serde_json::Value,
    kind: &str,
    name: &str,
    parent: Option<&str>,
    stream: &[u8],
) -> (String, String) {
    use sha2::{Digest, Sha256};
    let store = s.moto.store();
    let chunk = format!("backups/subvol/data/{kind}/chunk-20990101T000000Z-0.bin");
    let chunk_opts = PutOptions {
        content_type: "application/octet-stream",
        ..json_opts()
    };
    store
        .put_object(&chunk, Body::Bytes(stream), &chunk_opts)
        .unwrap();
    let mut d = base.clone();
    d["kind"] = serde_json::json!(kind);
    d["snapshot"]["name"] = serde_json::json!(name);
    d["parent_manifest"] = serde_json::json!(parent);
    d["chunks"] = serde_json::json!([{
        "key": chunk,
        "size": stream.len(),
        "sha256": format!("{:x}", Sha256::digest(stream)),
        "etag": null,
    }]);
    d["total_bytes"] = serde_json::json!(stream.len());
    d.as_object_mut().unwrap().remove("stream_sha256");
    let key = format!("backups/subvol/data/{kind}/manifest-20990101T000000Z.json");
    let body = serde_json::to_vec(&d).unwrap();
    store
        .put_object(&key, Body::Bytes(&body), &json_opts())
        .unwrap();
    (key, chunk)
}

#[test]
fn doctored_manifests_are_refused_and_touch_nothing_outside_staging() {
    if !require_root("doctored_manifests_are_refused_and_touch_nothing_outside_staging") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), 3 * MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, m) = current_manifest(&s);

    // A host subvolume the attacker would like root to make writable, move and delete.
    let victim = s.fs.path("victim");
    run(&format!("btrfs subvolume create {}", victim.display()));
    std::fs::write(victim.join("precious"), "keep me").unwrap();
    run(&format!(
        "btrfs property set -ts {} ro true",
        victim.display()
    ));
    let victim_tree = describe_tree(&victim);

    let store = s.moto.store();
    let target = s.fs.path("restored");
    let t = target.to_str().unwrap().to_string();
    let restore_doctored = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut d = m.clone();
        edit(&mut d);
        let key = format!("backups/subvol/data/full/{name}");
        let body = serde_json::to_vec(&d).unwrap();
        store
            .put_object(&key, Body::Bytes(&body), &json_opts())
            .unwrap();
        let r = s.restore(&[
            "--subvolume",
            "data",
            "--target",
            &t,
            "--manifest-key",
            &key,
        ]);
        (key, r)
    };
    let victim_abs = victim.display().to_string();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "abs-name.json",
            Box::new(move |d| d["snapshot"]["name"] = serde_json::json!(victim_abs.clone())),
            "snapshot.name",
        ),
        (
            "dotdot-name.json",
            Box::new(|d| d["snapshot"]["name"] = serde_json::json!("../../victim")),
            "snapshot.name",
        ),
        (
            "other-subvol-name.json",
            Box::new(|d| d["snapshot"]["name"] = serde_json::json!("home__20250101T020000Z__full")),
            "snapshot.name",
        ),
        (
            "outside-chunk.json",
            Box::new(|d| d["chunks"][0]["key"] = serde_json::json!("elsewhere/chunk.bin")),
            "chunks[0].key",
        ),
        (
            "outside-parent.json",
            Box::new(|d| {
                d["kind"] = serde_json::json!("incremental");
                d["parent_manifest"] = serde_json::json!("backups/subvol/home/full/m.json");
            }),
            "parent_manifest",
        ),
    ];
    for (name, edit, field) in &cases {
        let (key, r) = restore_doctored(name, edit.as_ref());
        assert_eq!(r.code, 1, "{name}: {r:?}");
        let last = r.stderr.trim().lines().last().unwrap_or("").to_string();
        assert!(
            last.contains(&key) && last.contains(field) && last.contains("refusing"),
            "{name}: the error names the key and the field: {r:?}"
        );
        assert!(!target.exists(), "{name}");
        assert!(s.staging_left(&s.fs.mnt).is_empty(), "{name}");
        assert!(
            victim.is_dir() && is_readonly(&victim),
            "{name}: victim touched"
        );
        assert_eq!(describe_tree(&victim), victim_tree, "{name}");
    }

    // --manifest-key outside the subvolume's prefix.
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        &t,
        "--manifest-key",
        "backups/subvol/../elsewhere/manifest.json",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("--manifest-key")
            && r.stderr.contains("not a key under backups/subvol/data/"),
        "{r:?}"
    );
    // A --subvolume that is not one plain name.
    let r = s.restore(&["--subvolume", "../data", "--target", &t]);
    assert_eq!(r.code, 2, "{r:?}");

    // snapshot.path elsewhere: the restore works, content verification says why it skipped
    // (before: it compared /etc with the restore and deleted a good restore).
    let (_, r) = restore_doctored("path-elsewhere.json", &|d| {
        d["snapshot"]["path"] = serde_json::json!("/etc")
    });
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("event=verify_content_skipped")
            && r.stderr.contains("is not trusted")
            && r.stderr.contains("source=/etc"),
        "{r:?}"
    );
    assert!(target.is_dir());
    assert!(victim.is_dir() && is_readonly(&victim));
}

#[test]
fn planted_spool_files_are_never_followed() {
    if !require_root("planted_spool_files_are_never_followed") {
        return;
    }
    let spool = TempDir::new("spool-planted");
    let global = format!(
        "spool_dir = \"{}\"\nspool_size_bytes = 104857600",
        spool.path().display()
    );
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        extra: &global,
        s3_extra: "spool_enabled = true",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), 8 * MIB);
    let victim = TempDir::new("spool-victim");
    let victim_file = victim.path().join("passwd-like");
    std::fs::write(&victim_file, "root:x:0:0\n").unwrap();
    // The old code named spool files .btrfs_to_s3-<pid>-<n>.part: plant them for the pid
    // the backup will have (exec keeps the shell's pid).
    let script = format!(
        "for n in 1 2 3 4 5 6; do ln -s {v} {d}/.btrfs_to_s3-$$-$n.part; done; exec {bin} backup --config {cfg}",
        v = victim_file.display(),
        d = spool.path().display(),
        bin = bin().display(),
        cfg = s.cfg.display()
    );
    let r = output(
        test_env(&mut std::process::Command::new("sh"))
            .arg("-c")
            .arg(&script),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(&victim_file).unwrap(),
        "root:x:0:0\n",
        "a planted spool name was followed"
    );
    // Only the planted links are left: our spool files never had names.
    let left: Vec<String> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 6, "{left:?}");
    // And the backup is whole.
    let t = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_redirect_or_a_reply_without_etag_is_a_failure_not_a_backup() {
    if !require_root("a_redirect_or_a_reply_without_etag_is_a_failure_not_a_backup") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "hello").unwrap();
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let redirect = CannedServer::start(
        "301 Moved Permanently",
        &[
            ("x-amz-bucket-region", "eu-west-1"),
            ("Content-Type", "application/xml"),
        ],
        "<?xml version=\"1.0\"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are \
         attempting to access must be addressed using the specified endpoint.</Message></Error>",
    );
    let no_etag = CannedServer::start("200 OK", &[], "");
    for (server, words) in [
        (&redirect, &["HTTP 301", "set s3.region =", "eu-west-1"][..]),
        (&no_etag, &["no ETag"][..]),
    ] {
        let cfg = s.fs.dir.path().join("lying.toml");
        std::fs::write(&cfg, text.replace(&s.moto.endpoint, &server.endpoint)).unwrap();
        let r = output_within(
            btrfs_to_s3().args(["backup", "--config", cfg.to_str().unwrap()]),
            120,
        );
        assert_eq!(r.code, 1, "{r:?}");
        for w in words {
            assert!(r.stderr.contains(w), "{w}: {r:?}");
        }
        assert!(!r.stderr.contains("backup_published"), "{r:?}");
        assert!(
            !s.state.exists(),
            "the state names a backup that was never stored"
        );
        // At most the one snapshot kept for a resume once the endpoint is fixed.
        assert!(s.snapshot_names().len() <= 1, "{:?}", s.snapshot_names());
    }
}

#[test]
fn a_prefix_with_dot_dot_is_refused_before_anything_runs() {
    if !require_root("a_prefix_with_dot_dot_is_refused_before_anything_runs") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "hello").unwrap();
    let text = std::fs::read_to_string(&s.cfg)
        .unwrap()
        .replace("prefix = \"backups/\"", "prefix = \"../other/p\"");
    std::fs::write(&s.cfg, text).unwrap();
    let r = s.backup(&[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("s3.prefix = \"../other/p\""), "{r:?}");
    assert!(s.moto.list_keys().is_empty(), "{:?}", s.moto.list_keys());
    let other = s.moto.store_for(OTHER_BUCKET).list_objects("").unwrap();
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn secrets_never_reach_the_log_at_any_level() {
    if !require_root("secrets_never_reach_the_log_at_any_level") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), 6 * MIB);
    // Real temporary credentials: moto checks the signature and the session token.
    let (id, secret, token) = s.moto.assume_role(3600);
    let with_secrets = |c: &mut std::process::Command| {
        c.env("AWS_ACCESS_KEY_ID", &id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_SESSION_TOKEN", &token)
            .env("RUST_LOG", "trace");
    };
    let mut b = s.backup_cmd(&["--log-level", "debug"]);
    with_secrets(&mut b);
    let r1 = output(&mut b);
    assert_eq!(r1.code, 0, "{r1:?}");
    let t = s.fs.path("restored");
    let mut c = btrfs_to_s3();
    c.args(["restore", "--config"]).arg(&s.cfg).args([
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
    ]);
    with_secrets(&mut c);
    let r2 = output(&mut c);
    assert_eq!(r2.code, 0, "{r2:?}");
    // A failing run prints its error line too.
    let mut f = btrfs_to_s3();
    f.args(["restore", "--config"]).arg(&s.cfg).args([
        "--subvolume",
        "data",
        "--target",
        t.to_str().unwrap(),
    ]);
    with_secrets(&mut f);
    let r3 = output(&mut f);
    assert_eq!(r3.code, 1);
    let all = format!(
        "{}{}{}{}{}{}",
        r1.stdout, r1.stderr, r2.stdout, r2.stderr, r3.stdout, r3.stderr
    );
    // The run really logged the requests (the HTTP library's own lines included).
    assert!(
        all.contains("x-amz-security-token"),
        "trace output lacks the headers"
    );
    for (what, v) in [
        ("access key id", &id),
        ("secret key", &secret),
        ("session token", &token),
    ] {
        assert!(!all.contains(v.as_str()), "the {what} is in the output");
    }
}

#[test]
fn config_values_that_would_overflow_are_refused() {
    let dir = TempDir::new("overflow");
    for (line, key) in [
        (
            "[schedule]\nfull_every_days = 9223372036854775807",
            "schedule.full_every_days",
        ),
        ("[s3]\nconcurrency = 100000", "s3.concurrency"),
        (
            "[snapshots]\nretain = 9223372036854775807",
            "snapshots.retain",
        ),
        (
            "[restore]\nrestore_timeout_seconds = 9223372036854775807",
            "restore.restore_timeout_seconds",
        ),
    ] {
        let (section, kv) = line.split_once('\n').unwrap();
        let base = [
            (
                "[global]",
                format!("state_path = \"{}/s.json\"", dir.path().display()),
            ),
            (
                "[subvolumes]",
                "paths = [\"/nonexistent/data\"]".to_string(),
            ),
            (
                "[s3]",
                "bucket = \"b\"\nregion = \"us-east-1\"\nprefix = \"p\"".to_string(),
            ),
            ("[schedule]", String::new()),
            ("[snapshots]", String::new()),
            ("[restore]", String::new()),
        ];
        let mut text = String::new();
        for (sec, body) in base {
            text.push_str(&format!("{sec}\n{body}\n"));
            if sec == section {
                text.push_str(&format!("{kv}\n"));
            }
        }
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, text).unwrap();
        let r = run_bin(&["backup", "--config", cfg.to_str().unwrap(), "--dry-run"]);
        assert_eq!(r.code, 2, "{key}: {r:?}");
        assert!(
            r.stderr.contains(key) && r.stderr.contains("at most"),
            "{key}: {r:?}"
        );
    }
}

#[test]
fn a_skewed_clock_is_corrected_from_the_reply_and_the_request_retried() {
    if !require_root("a_skewed_clock_is_corrected_from_the_reply_and_the_request_retried") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "x").unwrap();
    // The service's clock is an hour ahead of ours.
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let server_time = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        ahead.year(),
        u8::from(ahead.month()),
        ahead.day(),
        ahead.hour(),
        ahead.minute(),
        ahead.second()
    );
    let skew_body = format!(
        "<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request \
         time and the current time is too large.</Message><ServerTime>{server_time}</ServerTime>\
         </Error>"
    );
    let server = CannedServer::sequence(&[
        (
            "403 Forbidden",
            &[("Content-Type", "application/xml")],
            &skew_body,
        ),
        ("200 OK", &[("ETag", "\"e\"")], ""),
    ]);
    let cfg = s.fs.dir.path().join("skewed.toml");
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&cfg, text.replace(&s.moto.endpoint, &server.endpoint)).unwrap();
    let r = output(btrfs_to_s3().args(["backup", "--config", cfg.to_str().unwrap()]));
    assert!(
        r.stderr.contains("event=clock_skew_corrected") && r.stderr.contains("offset_seconds=3"),
        "{r:?}"
    );
    let reqs = server.requests();
    let date = |h: &str| -> String {
        h.lines()
            .find_map(|l| l.strip_prefix("x-amz-date: "))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    // The second request is signed with the service's time (to the hour).
    let want = format!(
        "{:04}{:02}{:02}t{:02}",
        ahead.year(),
        u8::from(ahead.month()),
        ahead.day(),
        ahead.hour()
    );
    assert!(
        date(&reqs[1]).starts_with(&want),
        "{} vs {want}",
        date(&reqs[1])
    );
    assert!(!date(&reqs[0]).starts_with(&want), "{}", date(&reqs[0]));
}

#[test]
fn the_server_checks_every_signature_so_a_wrong_secret_fails_cleanly() {
    if !require_root("the_server_checks_every_signature_so_a_wrong_secret_fails_cleanly") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    std::fs::write(s.vol("data").join("f"), "hello").unwrap();
    // The rig's moto verifies SigV4: the right key with a wrong secret is refused...
    let mut c = s.backup_cmd(&[]);
    c.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let r = output(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("SignatureDoesNotMatch"), "{r:?}");
    assert!(!r.stderr.contains("backup_published"), "{r:?}");
    assert!(s.moto.list_keys().is_empty(), "{:?}", s.moto.list_keys());
    assert!(!s.state.exists());
    // ...and so is a key moto never issued, while the real one works.
    let mut c = s.backup_cmd(&[]);
    c.env("AWS_ACCESS_KEY_ID", "AKIANEVERISSUED00000");
    let r = output(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("InvalidAccessKeyId"), "{r:?}");
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// Issue "Trust, round 2", item 1: a bucket writer uploads a valid, correctly hashed send
/// stream whose `symlink` command places `../victim-link` (beside the received subvolume,
/// in staging) pointing at a host subvolume. Before: `btrfs receive --chroot` made the
/// link, the staging clean-up ran `btrfs subvolume delete` on it, which followed it, and
/// the host subvolume was gone while the restore exited 0. Now the guard refuses the
/// command before receive sees it (naming the chunk and the command), the clean-up acts
/// only on the subvolume the stream created, and `verify --deep` finds it beforehand.
#[test]
fn a_doctored_send_stream_cannot_make_restore_delete_a_host_subvolume() {
    if !require_root("a_doctored_send_stream_cannot_make_restore_delete_a_host_subvolume") {
        return;
    }
    use btrfs_to_s3::sendstream::build::Stream;

    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, m) = current_manifest(&s);
    let name = m["snapshot"]["name"].as_str().unwrap().to_string();

    let victim = s.fs.path("victim");
    run(&format!("btrfs subvolume create {}", victim.display()));
    std::fs::write(victim.join("precious"), "keep me").unwrap();
    let victim_tree = describe_tree(&victim);

    let stream = Stream::new(1)
        .subvol(&name, [0x42; 16])
        .symlink("../victim-link", victim.to_str().unwrap())
        .end()
        .bytes();
    let (key, chunk) = publish_doctored(&s, &m, "full", &name, None, &stream);
    let (key, chunk) = (key.as_str(), chunk.as_str());

    // verify --deep finds it before the bad day.
    let cfg = s.cfg.display().to_string();
    let r = run_bin(&[
        "verify",
        "--config",
        &cfg,
        "--subvolume",
        "data",
        "--manifest-key",
        key,
        "--deep",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains(chunk) && all.contains("(symlink)") && all.contains("../victim-link"),
        "{r:?}"
    );

    let target = s.fs.path("restored");
    let r = s.restore(&[
        "--subvolume",
        "data",
        "--target",
        target.to_str().unwrap(),
        "--manifest-key",
        key,
        "--verify",
        "none",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.trim().lines().last().unwrap_or("").to_string();
    assert!(
        last.contains(chunk)
            && last.contains("send stream command 2 (symlink)")
            && last.contains("\"../victim-link\" has a `..` component"),
        "the error names the chunk and the command: {r:?}"
    );
    assert!(victim.is_dir(), "the host subvolume was deleted: {r:?}");
    assert_eq!(describe_tree(&victim), victim_tree);
    assert!(!target.exists());
    assert!(s.staging_left(&s.fs.mnt).is_empty());
    assert!(s.fs.path("victim-link").symlink_metadata().is_err());

    // The real backup still restores.
    let r = s.restore(&["--subvolume", "data", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &target);
}

/// `btrfs receive` finds a `snapshot`'s source (and a `clone`'s) by UUID anywhere on the
/// target filesystem. A bucket writer who learns a subvolume's UUID (any local user can
/// read it with `btrfs subvolume show`) published a doctored incremental whose stream
/// snapshots that subvolume instead of its parent and makes a private file in it world
/// readable: before, the restore received a copy of the victim at `--target` (with the
/// file opened up) and exited 0; a doctored full that starts with such a snapshot did the
/// same. Now the guard refuses the first command before receive sees it, and `verify
/// --deep` (which reads the chain from its full) finds both.
#[test]
fn a_doctored_stream_cannot_copy_another_subvolume_into_the_restore() {
    if !require_root("a_doctored_stream_cannot_copy_another_subvolume_into_the_restore") {
        return;
    }
    use btrfs_to_s3::sendstream::build::Stream;

    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let (full_key, m) = current_manifest(&s);

    let victim = s.fs.path("victim");
    run(&format!("btrfs subvolume create {}", victim.display()));
    let secret = victim.join("secret");
    std::fs::write(&secret, "the victim's secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let victim_tree = describe_tree(&victim);
    let show = run(&format!("btrfs subvolume show {}", victim.display()));
    let uuid_text = show
        .lines()
        .find_map(|l| l.trim().strip_prefix("UUID:"))
        .expect("btrfs subvolume show prints the UUID")
        .trim()
        .replace('-', "");
    let victim_uuid: [u8; 16] = (0..16)
        .map(|i| u8::from_str_radix(&uuid_text[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();

    // Publishes a manifest of `kind` whose one chunk is `stream`; returns its key and the
    // chunk's.
    let doctor = |kind: &str, name: &str, stream: &[u8]| {
        let parent = (kind != "full").then_some(full_key.as_str());
        publish_doctored(&s, &m, kind, name, parent, stream)
    };
    // snapshot the victim, open the secret up.
    let steal = |name: &str| {
        Stream::new(1)
            .snapshot(name, [0x42; 16], victim_uuid)
            .command(18, &[(15, b"secret"), (5, &0o644u64.to_le_bytes())])
            .end()
            .bytes()
    };
    let target = s.fs.path("restored");
    let cfg = s.cfg.display().to_string();
    for (kind, name, why) in [
        (
            "incremental",
            "data__20990101T000000Z__inc",
            "not the previous backup's",
        ),
        (
            "full",
            "data__20990101T000000Z__full",
            "a full backup's stream must create a new subvolume",
        ),
    ] {
        let (key, chunk) = doctor(kind, name, &steal(name));
        let r = s.restore(&[
            "--subvolume",
            "data",
            "--target",
            target.to_str().unwrap(),
            "--manifest-key",
            &key,
            "--verify",
            "none",
        ]);
        assert_eq!(r.code, 1, "{kind}: {r:?}");
        let last = r.stderr.trim().lines().last().unwrap_or("").to_string();
        assert!(
            last.contains(&chunk) && last.contains("command 1 (snapshot)") && last.contains(why),
            "{kind}: the error names the chunk, the command and why: {r:?}"
        );
        assert!(
            !target.exists(),
            "{kind}: a copy of the victim was restored"
        );
        assert!(s.staging_left(&s.fs.mnt).is_empty(), "{kind}");
        assert_eq!(describe_tree(&victim), victim_tree, "{kind}");

        let r = run_bin(&[
            "verify",
            "--config",
            &cfg,
            "--subvolume",
            "data",
            "--manifest-key",
            &key,
            "--deep",
        ]);
        assert_eq!(r.code, 1, "{kind}: {r:?}");
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(all.contains(&chunk) && all.contains(why), "{kind}: {r:?}");
    }

    // The real backup still restores.
    let r = s.restore(&["--subvolume", "data", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &target);
}

/// `btrfs receive` takes an incremental's parent as the first subvolume of the target
/// filesystem with the received UUID the stream names, so a read-only subvolume received
/// earlier from the same UUID (here: the full's stream, received by hand as the README's
/// manual recovery does; a bucket writer could also claim such a subvolume's UUID in a
/// doctored full) is used instead of the one the restore just received. The restore
/// checks the snapshot's parent after each link and refuses, naming the way out; once
/// that subvolume is writable (its received UUID cleared) the same restore succeeds.
#[test]
fn an_incremental_built_on_another_subvolume_with_the_same_received_uuid_is_refused() {
    if !require_root(
        "an_incremental_built_on_another_subvolume_with_the_same_received_uuid_is_refused",
    ) {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), MIB);
    assert_eq!(s.backup(&[]).code, 0);
    let (full_key, full) = current_manifest(&s);
    std::fs::write(s.vol("data").join("g.txt"), "changed").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.backup(&["--once"]);
    assert_eq!(r.code, 0, "{r:?}");
    let (inc_key, _) = current_manifest(&s);
    assert_ne!(inc_key, full_key);

    // The full's stream, received by hand beside the restore's target.
    let store = s.moto.store();
    let mut stream = Vec::new();
    for c in full["chunks"].as_array().unwrap() {
        let k = c["key"].as_str().unwrap();
        stream.extend(btrfs_to_s3::store::get_all(&store, k).unwrap());
    }
    let by_hand = s.fs.path("by-hand");
    std::fs::create_dir(&by_hand).unwrap();
    let f = s.fs.path("full.stream");
    std::fs::write(&f, &stream).unwrap();
    run(&format!(
        "btrfs receive -q -f {} {}",
        f.display(),
        by_hand.display()
    ));
    let name = full["snapshot"]["name"].as_str().unwrap();
    let other = by_hand.join(name);
    assert!(is_readonly(&other));

    let target = s.fs.path("restored");
    let r = s.restore(&["--subvolume", "data", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.trim().lines().last().unwrap_or("").to_string();
    assert!(
        last.contains(&format!("restoring manifest {inc_key}"))
            && last.contains("another subvolume of this filesystem holds received UUID")
            && last.contains("btrfs property set -f PATH ro false"),
        "{r:?}"
    );
    assert!(!target.exists());
    assert!(s.staging_left(&s.fs.mnt).is_empty());
    assert!(
        other.join("f.bin").exists(),
        "the other subvolume was touched"
    );

    run(&format!(
        "btrfs property set -f {} ro false",
        other.display()
    ));
    let r = s.restore(&["--subvolume", "data", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &target);
}
