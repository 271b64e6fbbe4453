//! What someone who can write the bucket (but not the host) can make the tool do, end to
//! end on loop btrfs + moto: terminal controls planted in manifest and pointer strings
//! never reach stdout or stderr raw (`list`, `verify`, `prune`, a failing `restore`), and
//! a `current.json` repointed at a forged full does not make `prune --confirm` delete the
//! real chain unless `--force`.

use std::time::Duration;

use btrfs_to_s3::store::{Body, ObjectStore, PutOptions};
use btrfs_to_s3::ts::Ts;

use crate::support::*;

const MIB: usize = 1024 * 1024;

/// A title change, a bell, a one-character CSI screen clear, a right-to-left override.
const EVIL: &str = "\u{1b}]0;pwned\u{7}\u{9b}2J\u{202e}gpj.exe";
/// How it is shown.
const SHOWN: &str = r"\x1b]0;pwned\x07\u{9b}2J\u{202e}gpj.exe";

fn put(s: &Setup, key: &str, body: &[u8]) {
    s.moto
        .store()
        .put_object(
            key,
            Body::Bytes(body),
            &PutOptions {
                storage_class: "STANDARD".into(),
                sse: btrfs_to_s3::config::Sse::Aes256,
                content_type: "application/json",
                kms_key_id: None,
                lock: None,
            },
        )
        .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
}

impl Setup {
    fn run_cmd(&self, args: &[&str]) -> RunResult {
        let cfg = self.cfg.display().to_string();
        let mut v = vec![args[0], "--config", &cfg];
        v.extend_from_slice(&args[1..]);
        run_bin(&v)
    }

    fn pointer_target(&self) -> String {
        self.get_json("backups/subvol/data/current.json")["manifest_key"]
            .as_str()
            .expect("manifest_key in current.json")
            .to_string()
    }

    /// A backup after a change (and a second, so its timestamp is new); its manifest key.
    fn changed_backup(&self) -> String {
        std::thread::sleep(Duration::from_millis(1100));
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        random_file(&self.vol("data").join(format!("f{n}")), MIB);
        let r = self.backup(&["--once"]);
        assert_eq!(r.code, 0, "{r:?}");
        self.pointer_target()
    }

    fn set_state_last_manifest(&self, key: &str) {
        let mut st = self.state_json();
        st["subvolumes"]["data"]["last_manifest"] = key.into();
        std::fs::write(&self.state, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    }
}

/// What raw terminal controls `text` holds (none: empty).
fn raw_controls(text: &str) -> Vec<&'static str> {
    [
        ('\u{1b}', "ESC"),
        ('\u{7}', "BEL"),
        ('\u{9b}', "CSI (U+009B)"),
        ('\u{202e}', "RIGHT-TO-LEFT OVERRIDE"),
    ]
    .into_iter()
    .filter(|(c, _)| text.contains(*c))
    .map(|(_, name)| name)
    .chain(
        text.bytes()
            .any(|b| b == 0x1b || b == 0x07 || b == 0x9b)
            .then_some("a control byte"),
    )
    .collect()
}

#[test]
fn terminal_controls_from_the_bucket_are_printed_inert() {
    if !require_root("terminal_controls_from_the_bucket_are_printed_inert") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("a.bin"), MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let full = s.pointer_target();
    let real = s.get_json(&full);

    // A newer manifest whose strings carry controls (its chunks are the real ones, so it
    // reads as a sound backup): list prints its storage class.
    let later = Ts::now().add_secs(3600);
    let planted = format!("backups/subvol/data/full/manifest-{later}.json");
    let mut m = real.clone();
    m["created_at"] = later.to_string().into();
    m["snapshot"]["name"] = format!("data__{later}__full").into();
    m["snapshot"]["path"] = format!("/snapshots/{EVIL}").into();
    m["s3"]["storage_class"] = EVIL.into();
    m["chunks"][0]["etag"] = EVIL.into();
    put(&s, &planted, &serde_json::to_vec_pretty(&m).unwrap());
    // An unreadable manifest whose parse error quotes a control-laden value.
    let mut bad = real.clone();
    bad["kind"] = EVIL.into();
    let bad_key = format!(
        "backups/subvol/data/full/manifest-{}.json",
        later.add_secs(60)
    );
    put(&s, &bad_key, &serde_json::to_vec_pretty(&bad).unwrap());
    // current.json whose `kind` is not a kind: every command that reads it quotes the
    // value in its error (serde's "unknown variant `...`").
    let pointer = serde_json::json!({
        "manifest_key": full,
        "kind": EVIL,
        "created_at": "20250101T020000Z",
    });
    put(
        &s,
        "backups/subvol/data/current.json",
        &serde_json::to_vec_pretty(&pointer).unwrap(),
    );

    let mut leaks = Vec::new();
    for (args, code) in [
        (&["list"][..], 0),
        (&["verify"][..], 1),
        (&["prune"][..], 1),
        (
            &[
                "restore",
                "--subvolume",
                "data",
                "--target",
                "restored-inert",
            ][..],
            1,
        ),
    ] {
        let r = s.run_cmd(args);
        assert_eq!(r.code, code, "{args:?}: {r:?}");
        for (stream, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
            let raw = raw_controls(text);
            if !raw.is_empty() {
                leaks.push(format!("{args:?} {stream} holds a raw {raw:?}: {text:?}"));
            }
        }
        // The values are shown, escaped: the test saw them go through.
        let all = format!("{}{}", r.stdout, r.stderr);
        if !all.contains(SHOWN) {
            leaks.push(format!(
                "{args:?} does not show the planted value escaped: {r:?}"
            ));
        }
    }
    // On a terminal (a pty from `script`) the logger strips nothing: what a person
    // running prune or verify by hand sees.
    for args in [&["verify"][..], &["prune"][..]] {
        let r = on_a_terminal(&s, args);
        assert_eq!(r.code, 1, "{args:?} on a terminal: {r:?}");
        assert!(r.stdout.contains(SHOWN), "{args:?} on a terminal: {r:?}");
        let raw = raw_controls(&r.stdout);
        if !raw.is_empty() {
            leaks.push(format!(
                "{args:?} on a terminal shows a raw {raw:?}: {:?}",
                r.stdout
            ));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
}

/// Runs the binary with a terminal as stdout and stderr (`script` makes a pty; its
/// output is what the terminal got).
fn on_a_terminal(s: &Setup, args: &[&str]) -> RunResult {
    let ok = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "this test needs script: apt-get install util-linux");
    let line = format!(
        "{} {} --config {}",
        bin().display(),
        args.join(" "),
        s.cfg.display()
    );
    let mut c = std::process::Command::new("script");
    test_env(&mut c).args(["-qec", &line, "/dev/null"]);
    output(&mut c)
}

#[test]
fn prune_refuses_a_forged_current_json_unless_forced() {
    if !require_root("prune_refuses_a_forged_current_json_unless_forced") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("a.bin"), MIB);
    let r = s.backup(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let f1 = s.pointer_target();
    let i1 = s.changed_backup();
    let i2 = s.changed_backup();
    assert!(f1.contains("/full/") && i1.contains("/incremental/") && i2.contains("/incremental/"));
    assert_eq!(
        s.state_json()["subvolumes"]["data"]["last_manifest"],
        i2.as_str()
    );

    // The state one backup behind (a crash before it was saved): current.json chains back
    // to it, so prune goes ahead (one generation: nothing to delete).
    s.set_state_last_manifest(&i1);
    let r = s.run_cmd(&["prune", "--confirm"]);
    assert_eq!(r.code, 0, "a legitimate newer backup was refused: {r:?}");
    s.set_state_last_manifest(&i2);

    // A bucket writer publishes a newer "full" that reuses one real chunk and repoints
    // current.json at it.
    let real = s.get_json(&f1);
    let reused = real["chunks"][0].clone();
    let later = Ts::now().add_secs(3600);
    let forged = format!("backups/subvol/data/full/manifest-{later}.json");
    let mut m = real.clone();
    m["created_at"] = later.to_string().into();
    m["snapshot"]["name"] = format!("data__{later}__full").into();
    m["snapshot"]["path"] = format!("/snapshots/data__{later}__full").into();
    m["total_bytes"] = reused["size"].clone();
    m["chunks"] = serde_json::json!([reused]);
    m.as_object_mut().unwrap().remove("stream_sha256");
    put(&s, &forged, &serde_json::to_vec_pretty(&m).unwrap());
    let pointer = serde_json::json!({
        "manifest_key": forged,
        "kind": "full",
        "created_at": later.to_string(),
    });
    put(
        &s,
        "backups/subvol/data/current.json",
        &serde_json::to_vec_pretty(&pointer).unwrap(),
    );

    // prune --confirm refuses, naming both keys; nothing is deleted.
    let before = s.moto.list_keys();
    let r = s.run_cmd(&["prune", "--confirm"]);
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("btrfs_to_s3: error: ")
            && last.contains(&forged)
            && last.contains(&i2)
            && last.contains("--force"),
        "{r:?}"
    );
    assert!(r.stdout.contains("refused: "), "{r:?}");
    assert_eq!(
        s.moto.list_keys(),
        before,
        "a refused prune deleted something"
    );
    // The same with retention.prune_after_backup's path is covered by the unit test of
    // prune_all; here the dry run says the same.
    let r = s.run_cmd(&["prune"]);
    assert_eq!(r.code, 1, "{r:?}");

    // --force goes past it (a host whose state is lost): the real chain goes, the
    // reused chunk stays.
    let r = s.run_cmd(&["prune", "--confirm", "--force"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("event=prune_forced"), "{r:?}");
    let after = s.moto.list_keys();
    for k in [&f1, &i1, &i2] {
        assert!(!after.contains(k), "{k} survived prune --force");
    }
    let reused_key = reused["key"].as_str().unwrap().to_string();
    assert!(
        after.contains(&forged) && after.contains(&reused_key),
        "{after:?}"
    );
}
