//! Unit tests of config parsing: defaults, `~`, the environment, and one case per rule.

use super::*;
use std::collections::HashMap;

pub struct MapEnv(pub HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn env() -> MapEnv {
    MapEnv(HashMap::from([("HOME".to_string(), "/home/u".to_string())]))
}

const MINIMAL: &str = r#"
[subvolumes]
paths = ["/data"]
[s3]
bucket = "b"
region = "eu-west-1"
prefix = "backups/"
"#;

fn with(extra: &str) -> String {
    // Later keys in the same section are appended by re-opening the section, which TOML
    // forbids; so tests build whole documents from a minimal base plus other sections.
    format!("{MINIMAL}\n{extra}")
}

/// The message of a config error, after checking it maps to exit code 2.
fn parse_err(text: &str) -> String {
    match Config::parse(text, &env()) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => {
            let msg = e.0.clone();
            let wrapped = crate::exit::Failure::from(e).context("loading the config");
            assert_eq!(wrapped.code(), 2, "{msg}");
            msg
        }
    }
}

#[test]
fn defaults_match_contract() {
    let c = Config::parse(MINIMAL, &env()).unwrap();
    assert_eq!(c.global.log_level, LogLevel::Info);
    assert_eq!(
        c.global.state_path,
        PathBuf::from("/home/u/.local/state/btrfs_to_s3/state.json")
    );
    assert_eq!(
        c.global.lock_path,
        PathBuf::from("/var/lock/btrfs_to_s3.lock")
    );
    assert_eq!(
        c.global.spool_dir,
        PathBuf::from("/mnt/ssd/btrfs_to_s3_spool")
    );
    assert_eq!(c.global.spool_size_bytes, 200 * GIB);
    assert_eq!(c.global.metrics_path, None);
    assert_eq!(c.schedule.full_every_days, 180);
    assert_eq!(c.schedule.incremental_every_days, 7);
    assert_eq!(c.schedule.run_at, (2, 0));
    assert_eq!(c.snapshots.base_dir, PathBuf::from("/srv/snapshots"));
    assert_eq!(c.snapshots.retain, 2);
    assert_eq!(
        c.subvolumes,
        vec![Subvolume {
            name: "data".into(),
            path: "/data".into()
        }]
    );
    assert_eq!(c.s3.chunk_size_bytes, 200 * GIB);
    assert_eq!(c.s3.storage_class_chunks.as_str(), "DEEP_ARCHIVE");
    assert_eq!(c.s3.storage_class_manifest.as_str(), "STANDARD");
    assert_eq!(c.s3.concurrency, 4);
    assert!(!c.s3.spool_enabled);
    assert_eq!(c.s3.sse.as_str(), "AES256");
    assert_eq!(c.s3.endpoint_url, None);
    assert_eq!(c.s3.part_size_bytes, DEFAULT_PART_SIZE);
    assert_eq!(c.s3.outage_patience_seconds, 4 * 3600);
    assert_eq!(c.restore.target_base_dir, PathBuf::from("/srv/restore"));
    assert_eq!(c.restore.verify_mode, VerifyMode::Full);
    assert_eq!(c.restore.sample_max_files, 1000);
    assert!(c.restore.wait_for_restore);
    assert_eq!(c.restore.restore_timeout_seconds, 259_200);
    assert_eq!(c.restore.restore_tier, RestoreTier::Standard);
    assert_eq!(
        crate::manifest::Layout::new(&c.s3.prefix).prefix,
        "backups/"
    );
}

#[test]
fn every_key_set() {
    let text = r#"
[global]
log_level = "debug"
state_path = "~/state.json"
lock_path = "/run/l.lock"
spool_dir = "/spool"
spool_size_bytes = 1000
metrics_path = "/var/lib/node_exporter/b.prom"
[schedule]
full_every_days = 30
incremental_every_days = 1
run_at = "23:59"
[snapshots]
base_dir = "/snaps"
retain = 5
[subvolumes]
paths = ["/mnt/pool/home", "~/data/"]
[s3]
bucket = "b"
region = "us-east-1"
prefix = ""
chunk_size_bytes = 1048576
storage_class_chunks = "GLACIER_IR"
storage_class_manifest = "STANDARD_IA"
concurrency = 8
spool_enabled = true
sse = "aws:kms"
endpoint_url = "http://127.0.0.1:9000/"
part_size_bytes = 8388608
outage_patience_seconds = 0
[restore]
target_base_dir = "/restore"
verify_mode = "sample"
sample_max_files = 10
wait_for_restore = false
restore_timeout_seconds = 60
restore_tier = "Bulk"
"#;
    let c = Config::parse(text, &env()).unwrap();
    assert_eq!(c.global.log_level, LogLevel::Debug);
    assert_eq!(c.global.state_path, PathBuf::from("/home/u/state.json"));
    assert_eq!(c.global.spool_size_bytes, 1000);
    assert_eq!(
        c.global.metrics_path,
        Some(PathBuf::from("/var/lib/node_exporter/b.prom"))
    );
    assert_eq!(c.schedule.run_at, (23, 59));
    assert_eq!(c.snapshots.retain, 5);
    assert_eq!(c.subvolumes[0].name, "home");
    assert_eq!(c.subvolumes[1].name, "data");
    assert_eq!(c.subvolumes[1].path, PathBuf::from("/home/u/data/"));
    assert_eq!(c.s3.concurrency, 8);
    assert!(c.s3.spool_enabled);
    assert_eq!(c.s3.sse.as_str(), "aws:kms");
    assert_eq!(c.s3.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(c.s3.part_size_bytes, 8 * MIB);
    assert_eq!(c.s3.outage_patience_seconds, 0);
    assert_eq!(c.restore.verify_mode, VerifyMode::Sample);
    assert!(!c.restore.wait_for_restore);
    assert_eq!(c.restore.restore_tier, RestoreTier::Bulk);
    assert_eq!(crate::manifest::Layout::new(&c.s3.prefix).prefix, "");
}

#[test]
fn endpoint_from_environment() {
    let mut e = env();
    e.0.insert("AWS_ENDPOINT_URL".into(), "http://generic:1".into());
    let c = Config::parse(MINIMAL, &e).unwrap();
    assert_eq!(c.s3.endpoint_url.as_deref(), Some("http://generic:1"));
    e.0.insert("AWS_ENDPOINT_URL_S3".into(), "https://s3only:2".into());
    let c = Config::parse(MINIMAL, &e).unwrap();
    assert_eq!(c.s3.endpoint_url.as_deref(), Some("https://s3only:2"));
    // The config key wins over both.
    let text = MINIMAL.replace(
        "prefix = \"backups/\"",
        "prefix = \"x\"\nendpoint_url = \"http://cfg:3\"",
    );
    let c = Config::parse(&text, &e).unwrap();
    assert_eq!(c.s3.endpoint_url.as_deref(), Some("http://cfg:3"));
    assert_eq!(crate::manifest::Layout::new(&c.s3.prefix).prefix, "x/");
    e.0.insert("AWS_ENDPOINT_URL_S3".into(), "ftp://nope".into());
    let msg = Config::parse(MINIMAL, &e).unwrap_err().0;
    assert!(msg.contains("AWS_ENDPOINT_URL_S3"), "{msg}");
}

#[test]
fn tilde_without_home_is_an_error() {
    let e = MapEnv(HashMap::new());
    let msg = Config::parse(MINIMAL, &e).unwrap_err().0;
    assert!(
        msg.contains("global.state_path") && msg.contains("HOME"),
        "{msg}"
    );
}

/// One bad value per rule: (extra TOML or whole document, words the message must hold).
#[test]
fn each_rule_names_key_and_value() {
    let base_s3 = "[subvolumes]\npaths = [\"/data\"]\n";
    let cases: Vec<(String, &[&str])> = vec![
        (
            with("[global]\nlog_level = \"loud\""),
            &["global.log_level", "loud"],
        ),
        (
            with("[global]\nstate_path = \"rel/state.json\""),
            &["global.state_path", "rel/state.json", "absolute"],
        ),
        (
            with("[global]\nlock_path = \"lock\""),
            &["global.lock_path", "absolute"],
        ),
        (
            with("[global]\nspool_dir = \"spool\""),
            &["global.spool_dir", "absolute"],
        ),
        (
            with("[global]\nspool_size_bytes = 0"),
            &["global.spool_size_bytes", "0", "greater than 0"],
        ),
        (
            with("[global]\nspool_size_bytes = -5"),
            &["global.spool_size_bytes", "-5"],
        ),
        (
            with("[global]\nmetrics_path = \"m.prom\""),
            &["global.metrics_path", "absolute"],
        ),
        (
            with("[global]\nstate_path = 3"),
            &["global.state_path", "string"],
        ),
        (
            with("[schedule]\nfull_every_days = 0"),
            &["schedule.full_every_days", "0"],
        ),
        (
            with("[schedule]\nfull_every_days = 1.5"),
            &["schedule.full_every_days", "1.5"],
        ),
        (
            with("[schedule]\nincremental_every_days = -1"),
            &["schedule.incremental_every_days", "-1"],
        ),
        (
            with("[schedule]\nrun_at = \"24:00\""),
            &["schedule.run_at", "24:00"],
        ),
        (
            with("[schedule]\nrun_at = \"2:00\""),
            &["schedule.run_at", "2:00"],
        ),
        (
            with("[schedule]\nrun_at = \"02:60\""),
            &["schedule.run_at", "02:60"],
        ),
        (with("[schedule]\nrun_at = \"ab:cd\""), &["schedule.run_at"]),
        (
            with("[snapshots]\nbase_dir = \"snaps\""),
            &["snapshots.base_dir", "absolute"],
        ),
        (with("[snapshots]\nretain = 0"), &["snapshots.retain", "0"]),
        (
            with("[restore]\ntarget_base_dir = \"r\""),
            &["restore.target_base_dir", "absolute"],
        ),
        (
            with("[restore]\nverify_mode = \"quick\""),
            &["restore.verify_mode", "quick", "full, sample, none"],
        ),
        (
            with("[restore]\nsample_max_files = 0"),
            &["restore.sample_max_files"],
        ),
        (
            with("[restore]\nwait_for_restore = \"yes\""),
            &["restore.wait_for_restore", "true or false"],
        ),
        (
            with("[restore]\nrestore_timeout_seconds = 0"),
            &["restore.restore_timeout_seconds"],
        ),
        (
            with("[restore]\nrestore_tier = \"Fast\""),
            &["restore.restore_tier", "Fast", "Standard, Bulk, Expedited"],
        ),
        (
            with("[global]\nlogg_level = \"info\""),
            &["unknown key global.logg_level", "log_level"],
        ),
        (with("[backup]\nx = 1"), &["unknown section [backup]"]),
        (
            format!("global = 3\n{MINIMAL}"),
            &["global must be a table"],
        ),
        (
            format!("{base_s3}[s3]\nregion = \"r\"\nprefix = \"p\""),
            &["s3.bucket", "required"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b\"\nprefix = \"p\""),
            &["s3.region", "required"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b\"\nregion = \"r\""),
            &["s3.prefix", "required"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"\"\nregion = \"r\"\nprefix = \"p\""),
            &["s3.bucket"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b\"\nregion = \"\"\nprefix = \"p\""),
            &["s3.region"],
        ),
        (
            s3_with("chunk_size_bytes = 0"),
            &["s3.chunk_size_bytes", "0"],
        ),
        // A floor: a lost digit must not make billions of objects.
        (
            s3_with("chunk_size_bytes = 1000"),
            &["s3.chunk_size_bytes = 1000", "at least 1048576 (1 MiB)"],
        ),
        (
            s3_with("chunk_size_bytes = 1048575"),
            &["s3.chunk_size_bytes = 1048575", "at least 1048576"],
        ),
        (
            s3_with("storage_class_chunks = \"COLD\""),
            &["s3.storage_class_chunks", "COLD", "DEEP_ARCHIVE"],
        ),
        (
            s3_with("storage_class_manifest = \"glacier\""),
            &["s3.storage_class_manifest", "glacier"],
        ),
        (s3_with("concurrency = 0"), &["s3.concurrency", "0"]),
        (
            s3_with("outage_patience_seconds = -1"),
            &["s3.outage_patience_seconds = -1", "from 0", "604800"],
        ),
        (
            s3_with("outage_patience_seconds = 604801"),
            &["s3.outage_patience_seconds = 604801", "to 604800"],
        ),
        (
            s3_with("outage_patience_seconds = \"4h\""),
            &["s3.outage_patience_seconds", "whole number of seconds"],
        ),
        (s3_with("spool_enabled = 1"), &["s3.spool_enabled"]),
        (s3_with("sse = \"rot13\""), &["s3.sse", "rot13", "AES256"]),
        (
            s3_with("endpoint_url = \"localhost:9000\""),
            &["s3.endpoint_url", "localhost:9000"],
        ),
        (
            s3_with("part_size_bytes = 1024"),
            &["s3.part_size_bytes", "1024", "5 MiB"],
        ),
        (
            s3_with("part_size_bytes = 6442450944"),
            &["s3.part_size_bytes", "5 GiB"],
        ),
        (s3_with("colour = \"blue\""), &["unknown key s3.colour"]),
        (
            s3_with("sse_kms_key_id = \"alias/backups\""),
            &["s3.sse_kms_key_id is set but s3.sse = \"AES256\""],
        ),
        (
            s3_with("sse = \"aws:kms\"\nsse_kms_key_id = \"bad key\\n\""),
            &["s3.sse_kms_key_id", "not a KMS key id"],
        ),
        (
            s3_with("send_compressed_data = \"yes\""),
            &["s3.send_compressed_data", "\"auto\", true or false"],
        ),
        (
            s3_only("[subvolumes]\npaths = []"),
            &["subvolumes.paths", "at least one"],
        ),
        (
            s3_only("[subvolumes]\npaths = \"/data\""),
            &["subvolumes.paths", "list"],
        ),
        (
            s3_only("[subvolumes]\npaths = [\"data\"]"),
            &["subvolumes.paths", "\"data\"", "absolute"],
        ),
        (
            s3_only("[subvolumes]\npaths = [1]"),
            &["subvolumes.paths", "string"],
        ),
        (
            s3_only("[subvolumes]\npaths = [\"/\"]"),
            &["subvolumes.paths", "\"/\""],
        ),
        (
            s3_only("[subvolumes]\npaths = [\"/a/data\", \"/b/data\"]"),
            &["subvolumes.paths", "\"data\"", "unique"],
        ),
        ("this is = = not toml".to_string(), &["not valid TOML"]),
        // Keys are exactly the contract's: nothing URL handling could collapse.
        (
            format!("{base_s3}[s3]\nbucket = \"b1\"\nregion = \"r\"\nprefix = \"../other/p\""),
            &["s3.prefix", "../other/p", ". or .."],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b1\"\nregion = \"r\"\nprefix = \"a/./b\""),
            &["s3.prefix", ". or .."],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b1\"\nregion = \"r\"\nprefix = \"a//b\""),
            &["s3.prefix", "empty segment"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b1\"\nregion = \"r\"\nprefix = \"/abs\""),
            &["s3.prefix", "start with /"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"../x\"\nregion = \"r\"\nprefix = \"p\""),
            &["s3.bucket", "not a bucket name"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"b/c\"\nregion = \"r\"\nprefix = \"p\""),
            &["s3.bucket", "not a bucket name"],
        ),
        (
            format!("{base_s3}[s3]\nbucket = \"bkt\"\nregion = \"evil.example/x\"\nprefix = \"p\""),
            &["s3.region", "not a region name"],
        ),
        // Upper bounds, so that no arithmetic on a value can overflow.
        (
            with("[schedule]\nfull_every_days = 9223372036854775807"),
            &["schedule.full_every_days", "at most 36500"],
        ),
        (
            with("[schedule]\nincremental_every_days = 36501"),
            &["schedule.incremental_every_days", "at most 36500"],
        ),
        (
            with("[snapshots]\nretain = 10001"),
            &["snapshots.retain", "at most"],
        ),
        (
            s3_with("chunk_size_bytes = 5497558138881"),
            &["s3.chunk_size_bytes", "at most 5497558138880"],
        ),
        (
            s3_with("concurrency = 65"),
            &["s3.concurrency", "at most 64"],
        ),
        (
            s3_with("concurrency = 64\npart_size_bytes = 536870912"),
            &["s3.concurrency = 64", "memory", "spool_enabled"],
        ),
        (
            with("[global]\nspool_size_bytes = 9223372036854775807"),
            &["global.spool_size_bytes", "at most"],
        ),
        (
            with("[restore]\nrestore_timeout_seconds = 9223372036854775807"),
            &["restore.restore_timeout_seconds", "at most 2592000"],
        ),
        (
            with("[restore]\nsample_max_files = 1000000001"),
            &["restore.sample_max_files", "at most"],
        ),
    ];
    for (text, words) in cases {
        let msg = parse_err(&text);
        for w in words {
            assert!(msg.contains(w), "message {msg:?} lacks {w:?} for:\n{text}");
        }
        assert!(!msg.contains('\n'), "multi-line message {msg:?}");
    }
}

fn s3_with(line: &str) -> String {
    format!("[subvolumes]\npaths = [\"/data\"]\n[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n{line}\n")
}

fn s3_only(extra: &str) -> String {
    format!("[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n{extra}\n")
}

#[test]
fn load_names_the_file() {
    let msg = Config::load(Path::new("/nonexistent/btrfs_to_s3.toml"), &env())
        .unwrap_err()
        .0;
    assert!(msg.contains("/nonexistent/btrfs_to_s3.toml"), "{msg}");
    let dir = std::env::temp_dir().join(format!("b2s3-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, "[subvolumes]\npaths = [\"/d\"]\n[s3]\nbucket = 1").unwrap();
    let msg = Config::load(&f, &env()).unwrap_err().0;
    assert!(msg.contains("c.toml") && msg.contains("s3.bucket"), "{msg}");
    std::fs::write(&f, MINIMAL).unwrap();
    assert!(Config::load(&f, &env()).is_ok());
    // Not a regular file, or too large to be one of ours: refused at once, not read
    // forever or waited on (a FIFO has no writer here).
    let fifo = dir.join("fifo.toml");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    for p in [fifo.as_path(), dir.as_path(), Path::new("/dev/zero")] {
        let msg = Config::load(p, &env()).unwrap_err().0;
        assert!(
            msg.contains(&format!(
                "cannot read config file {}: not a regular file",
                p.display()
            )),
            "{msg}"
        );
    }
    std::fs::write(&f, "#".repeat((1 << 20) + 1)).unwrap();
    let msg = Config::load(&f, &env()).unwrap_err().0;
    assert!(
        msg.contains("larger than 1 MiB, not a config file"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_documented_name_is_accepted_through_the_config() {
    // Each name the docs list is accepted by the config and gives its own value; a
    // misspelling is refused. (Guards the NAMES lists and the parsers agreeing.)
    let mut levels = Vec::new();
    for n in LogLevel::NAMES {
        let c = Config::parse(&with(&format!("[global]\nlog_level = \"{n}\"")), &env()).unwrap();
        levels.push(c.global.log_level);
    }
    assert_eq!(
        levels,
        [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warning,
            LogLevel::Error,
            LogLevel::Critical
        ]
    );
    assert_eq!(LogLevel::parse("WARNING"), Some(LogLevel::Warning));
    assert_eq!(LogLevel::Critical.to_filter(), log::LevelFilter::Error);
    for n in RestoreTier::NAMES {
        let c =
            Config::parse(&with(&format!("[restore]\nrestore_tier = \"{n}\"")), &env()).unwrap();
        assert_eq!(c.restore.restore_tier.as_str(), *n);
    }
    for n in VerifyMode::NAMES {
        let c = Config::parse(&with(&format!("[restore]\nverify_mode = \"{n}\"")), &env()).unwrap();
        assert_eq!(Some(c.restore.verify_mode), VerifyMode::parse(n));
    }
    assert!(Config::parse(&with("[restore]\nrestore_tier = \"standard\""), &env()).is_err());
}

#[test]
fn bounds_and_prefixes_that_are_accepted() {
    // At the limits, and a spool lifts the memory bound.
    for extra in [
        "concurrency = 64\nspool_enabled = true\npart_size_bytes = 536870912",
        "concurrency = 64",
        "chunk_size_bytes = 5497558138880",
    ] {
        let text = s3_with(extra);
        assert!(Config::parse(&text, &env()).is_ok(), "{extra}");
    }
    for p in ["", "/", "backups/", "a/b", "a/b/", "host.example/x-1"] {
        assert_eq!(prefix_problem(p), None, "{p:?}");
    }
    for p in ["..", "a/../b", "./a", "a//b", "/a", "a/.", "a\u{7}b"] {
        assert!(prefix_problem(p).is_some(), "{p:?}");
    }
}

#[test]
fn send_compressed_data_values() {
    for (line, want) in [
        ("", SendCompressed::Auto),
        ("send_compressed_data = \"auto\"", SendCompressed::Auto),
        ("send_compressed_data = true", SendCompressed::On),
        ("send_compressed_data = false", SendCompressed::Off),
    ] {
        let c = Config::parse(&s3_with(line), &env()).unwrap();
        assert_eq!(c.s3.send_compressed_data, want, "{line}");
    }
}

#[test]
fn sse_none_and_kms_key_id() {
    let c = Config::parse(&s3_with("sse = \"none\""), &env()).unwrap();
    assert_eq!(c.s3.sse.as_str(), "none");
    let c = Config::parse(
        &s3_with("sse = \"aws:kms\"\nsse_kms_key_id = \"arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab\""),
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.s3.sse_kms_key_id.as_deref(),
        Some("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab")
    );
}

#[test]
fn sizes_take_units_and_plain_numbers_keep_working() {
    let c = Config::parse(
        &s3_with("chunk_size_bytes = \"2GiB\"\npart_size_bytes = \"16MiB\""),
        &env(),
    )
    .unwrap();
    assert_eq!(
        (c.s3.chunk_size_bytes, c.s3.part_size_bytes),
        (2 << 30, 16 << 20)
    );
    let c = Config::parse(&s3_with("chunk_size_bytes = 2147483648"), &env()).unwrap();
    assert_eq!(c.s3.chunk_size_bytes, 2 << 30);
    let c = Config::parse(
        &format!("[global]\nspool_size_bytes = \"1.5 TB\"\n{}", s3_with("")),
        &env(),
    )
    .unwrap();
    assert_eq!(c.global.spool_size_bytes, 1_500_000_000_000);
    for (line, words) in [
        (
            "chunk_size_bytes = \"16 Mb\"",
            &["s3.chunk_size_bytes", "\"16 Mb\"", "unknown unit", "MiB"][..],
        ),
        (
            "chunk_size_bytes = \"0GiB\"",
            &["s3.chunk_size_bytes", "greater than 0"],
        ),
        (
            "chunk_size_bytes = \"6TiB\"",
            &["s3.chunk_size_bytes", "at most"],
        ),
        (
            "part_size_bytes = \"1MiB\"",
            &["s3.part_size_bytes", "5 MiB"],
        ),
        (
            "concurrency = \"4MiB\"",
            &["s3.concurrency", "whole number"],
        ),
    ] {
        let e = parse_err(&s3_with(line));
        for w in words {
            assert!(e.contains(w), "{line}: {e} lacks {w}");
        }
    }
}

#[test]
fn a_config_with_only_s3_serves_restore_list_and_verify() {
    let c = Config::parse(
        "[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"",
        &env(),
    )
    .unwrap();
    assert!(c.subvolumes.is_empty());
    let e = c.require_subvolumes("backup").unwrap_err().0;
    assert!(
        e.contains("subvolumes.paths is required for backup")
            && e.contains("restore, list and verify"),
        "{e}"
    );
    let c = Config::parse(&s3_with(""), &env()).unwrap();
    assert!(c.require_subvolumes("backup").is_ok());
}

#[test]
fn object_lock_section() {
    assert_eq!(Config::parse(MINIMAL, &env()).unwrap().object_lock, None);
    let c = Config::parse(
        &with("[object_lock]\nmode = \"COMPLIANCE\"\nretain_days = 200"),
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.object_lock,
        Some(ObjectLock {
            mode: LockMode::parse("COMPLIANCE").unwrap(),
            retain_days: 200
        })
    );
    for (section, want) in [
        (
            "mode = \"GOVERNANCE\"",
            "object_lock.retain_days is required",
        ),
        ("retain_days = 3", "object_lock.mode is required"),
        (
            "mode = \"compliance\"\nretain_days = 3",
            "must be one of GOVERNANCE, COMPLIANCE",
        ),
        ("mode = \"GOVERNANCE\"\nretain_days = 0", "greater than 0"),
        (
            "mode = \"GOVERNANCE\"\nretain_days = 36501",
            "at most 36500",
        ),
        (
            "mode = \"GOVERNANCE\"\nretain_days = 3\nextend = true",
            "unknown key object_lock.extend",
        ),
    ] {
        let msg = parse_err(&with(&format!("[object_lock]\n{section}")));
        assert!(msg.contains(want), "{section}: {msg}");
    }
    let msg = parse_err(&format!(
        "{}\n[object_lock]\nmode = \"GOVERNANCE\"\nretain_days = 3",
        s3_with("checksum = \"none\"")
    ));
    assert!(
        msg.contains("s3.checksum = \"none\" with [object_lock]"),
        "{msg}"
    );
}

#[test]
fn encryption_table_is_checked_and_absent_means_off() {
    let plain = Config::parse(MINIMAL, &env()).unwrap();
    assert!(!plain.encryption.enabled());
    let a = crate::age::Identity::generate().unwrap();
    let b = crate::age::Identity::generate().unwrap();
    let (ra, rb) = (a.recipient().as_str(), b.recipient().as_str());
    let c = Config::parse(
        &with(&format!("[encryption]\nrecipients = [\"{ra}\", \"{rb}\"]")),
        &env(),
    )
    .unwrap();
    assert_eq!(c.encryption.recipients.len(), 2);
    assert_eq!(
        c.encryption.fingerprints(),
        vec![a.recipient().fingerprint(), b.recipient().fingerprint()]
    );
    // A recipients file adds to the list; the identity files are paths only.
    let d = crate::testing::Scratch::new("enc-config");
    let file = d.0.join("recipients.txt");
    std::fs::write(&file, format!("# ours\n{rb}\n")).unwrap();
    let c = Config::parse(
        &with(&format!(
            "[encryption]\nrecipients = [\"{ra}\"]\nrecipients_file = \"{}\"\nidentity_files = [\"/root/key.txt\"]",
            file.display()
        )),
        &env(),
    )
    .unwrap();
    assert_eq!(c.encryption.recipients.len(), 2);
    assert_eq!(
        c.encryption.identity_files,
        vec![std::path::PathBuf::from("/root/key.txt")]
    );

    let e = parse_err(&with(&format!(
        "[encryption]\nrecipients = [\"{ra}\", \"age1notakey\"]"
    )));
    assert!(e.contains("encryption.recipients[1]"), "{e}");
    assert!(!e.contains("age1notakey"), "never quotes the value: {e}");
    let e = parse_err(&with("[encryption]\nrecipients = []"));
    assert!(e.contains("encryption.recipients = []"), "{e}");
    let e = parse_err(&with(
        "[encryption]\nrecipients_file = \"/nonexistent/r.txt\"",
    ));
    assert!(
        e.contains("encryption.recipients_file") && e.contains("/nonexistent/r.txt"),
        "{e}"
    );
    std::fs::write(&file, format!("{ra}\nAGE-SECRET-KEY-1X\n")).unwrap();
    let e = parse_err(&with(&format!(
        "[encryption]\nrecipients_file = \"{}\"",
        file.display()
    )));
    assert!(e.contains("line 2") && !e.contains("AGE-SECRET"), "{e}");
    let e = parse_err(&with("[encryption]\nrecipients = [\"x\"]\ncolour = 1"));
    assert!(e.contains("unknown key encryption.colour"), "{e}");
}

#[test]
fn schema_is_the_file_structs() {
    // The sections listed for unknown-key detection are exactly the file's sections, in
    // its order; each lists its struct's keys.
    let sections: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
    assert_eq!(sections, file::keys_of::<file::File>());
    let s3 = SCHEMA.iter().find(|(s, _)| *s == "s3").unwrap().1;
    assert_eq!(s3, file::keys_of::<file::S3Keys>());
    assert!(s3.contains(&"checksum") && s3.len() == 19, "{s3:?}");
}

#[test]
fn spellings_round_trip_and_sse_none_sends_no_header() {
    for n in StorageClass::NAMES {
        assert_eq!(StorageClass::parse(n).map(StorageClass::as_str), Some(*n));
    }
    for n in Sse::NAMES {
        assert_eq!(Sse::parse(n).map(|s| s.to_string()).as_deref(), Some(*n));
    }
    for n in Checksum::NAMES.iter().chain(LockMode::NAMES) {
        let ok = Checksum::parse(n).map(Checksum::as_str) == Some(*n)
            || LockMode::parse(n).map(LockMode::as_str) == Some(*n);
        assert!(ok, "{n}");
    }
    assert_eq!(Sse::None.header_value(), None);
    assert_eq!(Sse::AwsKmsDsse.header_value(), Some("aws:kms:dsse"));
    assert!(Sse::AwsKms.uses_kms() && !Sse::Aes256.uses_kms());
    let c = Config::parse(
        &s3_with("storage_class_chunks = \"GLACIER\"\nchecksum = \"sha256\""),
        &env(),
    )
    .unwrap();
    assert_eq!(c.s3.storage_class_chunks, StorageClass::Glacier);
    assert_eq!(c.s3.checksum, Checksum::Sha256);
    assert_eq!(c.s3.sse, Sse::Aes256);
}

#[test]
fn inline_tables_and_dotted_keys_read_like_sections() {
    let c = Config::parse(
        "subvolumes.paths = [\"/data\"]\ns3 = { bucket = \"b\", region = \"r\", prefix = \"p\", concurrency = 2 }",
        &env(),
    )
    .unwrap();
    assert_eq!((c.s3.bucket.as_str(), c.s3.concurrency), ("b", 2));
    assert_eq!(c.subvolumes[0].name, "data");
}

#[test]
fn rate_caps_for_uploads_and_downloads() {
    use crate::ratelimit::Cap;
    let c = Config::parse(MINIMAL, &env()).unwrap();
    assert_eq!(c.s3.upload_cap, Cap::Off);
    assert_eq!(c.s3.download_cap, Cap::Off);
    for (line, want) in [
        ("max_upload_rate = \"20MiB\"", Cap::Fixed(20 << 20)),
        ("max_upload_rate = \"20MiB/s\"", Cap::Fixed(20 << 20)),
        ("max_upload_rate = 2500000", Cap::Fixed(2_500_000)),
        ("max_upload_rate = \"off\"", Cap::Off),
        ("max_upload_rate = 0", Cap::Off),
    ] {
        let c = Config::parse(&s3_with(line), &env()).unwrap();
        assert_eq!(c.s3.upload_cap, want, "{line}");
    }
    let c = Config::parse(
        &s3_with("upload_rate_schedule = \"23:00,off 08:00,20MiB\"\nmax_download_rate = \"50MiB\""),
        &env(),
    )
    .unwrap();
    assert_eq!(c.s3.upload_cap.at(9 * 60), Some(20 << 20));
    assert_eq!(c.s3.upload_cap.at(60), None);
    assert_eq!(c.s3.download_cap, Cap::Fixed(50 << 20));
    let c = Config::parse(&s3_with("download_rate_schedule = \"01:00,1MiB\""), &env()).unwrap();
    assert_eq!(c.s3.download_cap.lowest(), Some(1 << 20));
    for (line, want) in [
        (
            "max_upload_rate = \"fast\"",
            "s3.max_upload_rate = \"fast\": not a number; write off, 0 or a size",
        ),
        ("max_upload_rate = -5", "s3.max_upload_rate = -5: must be bytes per second"),
        ("max_upload_rate = 100", "s3.max_upload_rate = 100: 100 bytes/s is below"),
        ("max_download_rate = true", "s3.max_download_rate = true: must be bytes"),
        (
            "upload_rate_schedule = \"8:00,1MiB\"",
            "s3.upload_rate_schedule = \"8:00,1MiB\": entry \"8:00,1MiB\": \"8:00\" is not a 24-hour time",
        ),
        (
            "upload_rate_schedule = 5",
            "s3.upload_rate_schedule = 5: must be a string such as \"08:00,20MiB 23:00,off\"",
        ),
        (
            "download_rate_schedule = \"\"",
            "s3.download_rate_schedule = \"\": no entries",
        ),
        (
            "max_upload_rate = \"1MiB\"\nupload_rate_schedule = \"08:00,2MiB\"",
            "s3.max_upload_rate and s3.upload_rate_schedule are both set",
        ),
    ] {
        let e = parse_err(&s3_with(line));
        assert!(e.contains(want), "{line}: {e}");
    }
}

/// S3's limits hold for the largest chunk an encrypted config allows: its age file (with
/// the largest header this tool accepts) is at most 5 TiB, in at most 10,000 parts of at
/// most 5 GiB; one byte more is refused, naming the key and the largest value.
#[test]
fn the_largest_encrypted_chunk_fits_s3s_object_and_part_limits() {
    use crate::age::{ciphertext_size, max_plaintext, MAX_HEADER_LEN};
    const TIB: u64 = 1024 * GIB;
    let header = MAX_HEADER_LEN as u64;
    let max = encryption::max_encrypted_chunk_size();
    let stored = ciphertext_size(max, header);
    assert!(stored <= 5 * TIB, "{stored}");
    assert!(ciphertext_size(max + 1, header) > 5 * TIB);
    // 16 bytes of tag per 64 KiB block (1.25 GiB in 5 TiB) and the header.
    assert!((GIB..2 * GIB).contains(&(5 * TIB - max)), "{max}");
    let part = crate::parts::effective_part_size(5 * MIB, stored).expect("a part size");
    assert!(part <= 5 * GIB, "{part}");
    assert!(stored.div_ceil(part) <= 10_000, "{part}");
    // The bound is exact around block edges, tiny limits and real header sizes.
    for h in [0u64, 1, 168, 266, header] {
        for limit in [
            0u64,
            h + 31,
            h + 32,
            h + 33,
            h + 16 + 65_536,
            h + 16 + 65_552,
            h + 16 + 65_553,
            h + 16 + 65_569,
            h + 16 + 3 * 65_552 + 17,
            5 * TIB,
        ] {
            let p = max_plaintext(limit, h);
            if ciphertext_size(0, h) > limit {
                assert_eq!(p, 0, "{limit} {h}");
                continue;
            }
            assert!(ciphertext_size(p, h) <= limit, "{limit} {h}: {p}");
            assert!(ciphertext_size(p + 1, h) > limit, "{limit} {h}: {p}");
        }
    }

    let r = crate::age::Identity::generate()
        .unwrap()
        .recipient()
        .as_str()
        .to_string();
    let config = |size: u64, enc: bool| {
        let mut text = s3_with(&format!("chunk_size_bytes = {size}"));
        if enc {
            text.push_str(&format!("[encryption]\nrecipients = [\"{r}\"]\n"));
        }
        text
    };
    let c = Config::parse(&config(max, true), &env()).unwrap();
    assert_eq!(c.s3.chunk_size_bytes, max);
    let e = parse_err(&config(max + 1, true));
    assert!(
        e.contains(&format!(
            "s3.chunk_size_bytes = {} with [encryption]",
            max + 1
        )) && e.contains(&format!("at most {max}")),
        "{e}"
    );
    // Unencrypted, the chunk is the object: up to 5 TiB.
    Config::parse(&config(5 * TIB, false), &env()).unwrap();
}

#[test]
fn notify_ping_url_is_checked_and_never_quoted() {
    let c = Config::parse(
        &with("[notify]\nping_url = \"https://hc-ping.com/secret-uuid\""),
        &env(),
    )
    .unwrap();
    let url = c.notify.ping_url.expect("a ping URL");
    assert_eq!(url.shown(), "https://hc-ping.com/…");
    for (line, want) in [
        ("ping_url = 5", "notify.ping_url: must be a string"),
        (
            "ping_url = \"\"",
            "notify.ping_url = \"\": give the check's URL",
        ),
        (
            "ping_url = \"ftp://h/x\"",
            "notify.ping_url: must start with http://",
        ),
        (
            "ping_url = \"https://u:secret@h/x\"",
            "notify.ping_url: must not hold a user name or password",
        ),
        ("colour = 1", "unknown key notify.colour"),
    ] {
        let e = parse_err(&with(&format!("[notify]\n{line}")));
        assert!(e.contains(want), "{line}: {e}");
        assert!(!e.contains("secret"), "{line}: {e}");
    }
}
