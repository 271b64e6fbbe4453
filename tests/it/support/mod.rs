//! Test rig: real btrfs filesystems on loop devices, a real S3 server (moto) on
//! 127.0.0.1, and a runner for the built binary. Every fixture undoes itself on drop
//! (unmount, detach, kill), also when the test panics.
//!
//! Tests that need root, btrfs or moto fail with a message saying how to get them. They
//! are skipped only when BTRFS_TO_S3_SKIP_ROOT_TESTS=1 is set, which CI never does.

#![allow(dead_code)]

pub mod keepalive;
pub mod link;
pub mod sdk;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use btrfs_to_s3::store::s3::{Endpoint, S3Store};

pub const BUCKET: &str = "itest";
pub const REGION: &str = "us-east-1";
/// A second bucket on every moto server, for tests that check nothing leaks into it.
pub const OTHER_BUCKET: &str = "other";
/// A third, created with Object Lock enabled (and so versioning).
pub const LOCK_BUCKET: &str = "itest-locked";

/// The keys the binary gets when no moto server was started on this thread (tests of
/// config and flags that never reach S3).
const NO_SERVER_KEYS: (&str, &str) = ("testing", "testing-secret");

thread_local! {
    /// The IAM access key of the moto server this test thread started last: moto checks
    /// signatures, and its keys are made by its IAM API, so each server has its own.
    static KEYS: std::cell::RefCell<Option<(String, String)>> = const { std::cell::RefCell::new(None) };
}

/// The access key and secret the binary gets on this thread.
pub fn test_keys() -> (String, String) {
    KEYS.with(|k| k.borrow().clone())
        .unwrap_or_else(|| (NO_SERVER_KEYS.0.into(), NO_SERVER_KEYS.1.into()))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh scratch directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("b2s3-it-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a scratch directory under /tmp");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when root-only tests should run; false (with a note) only when explicitly skipped.
pub fn require_root(test: &str) -> bool {
    if std::env::var("BTRFS_TO_S3_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: BTRFS_TO_S3_SKIP_ROOT_TESTS=1");
        return false;
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "{test} needs root (mkfs.btrfs, mount -o loop): run the suite as root with `bash contrib/test.sh`, \
         or set BTRFS_TO_S3_SKIP_ROOT_TESTS=1 to skip it knowingly"
    );
    for tool in [
        "mkfs.btrfs",
        "btrfs",
        "losetup",
        "mount",
        "getfattr",
        "setfattr",
    ] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{test} needs {tool}: install it with `apt-get install btrfs-progs util-linux attr` (contrib/test.sh does)"
        );
    }
    true
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// Runs a shell command and panics with its output if it fails.
pub fn run(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A btrfs filesystem in a sparse file, loop-mounted; unmounted and detached on drop.
pub struct BtrfsFs {
    pub dir: TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
}

impl BtrfsFs {
    pub fn new(size_mib: u64) -> BtrfsFs {
        BtrfsFs::with_options(size_mib, "")
    }

    /// With extra mount options, e.g. `compress=zstd`.
    pub fn with_options(size_mib: u64, options: &str) -> BtrfsFs {
        let dir = TempDir::new("btrfs");
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        run(&format!("truncate -s {size_mib}M {}", image.display()));
        run(&format!("mkfs.btrfs -q -f {}", image.display()));
        let fs = BtrfsFs { dir, image, mnt };
        let opts = if options.is_empty() {
            "loop".to_string()
        } else {
            format!("loop,{options}")
        };
        run(&format!(
            "mount -o {opts} {} {}",
            fs.image.display(),
            fs.mnt.display()
        ));
        fs
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn subvolume(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir for subvolume");
        }
        run(&format!("btrfs subvolume create {}", p.display()));
        p
    }
}

impl Drop for BtrfsFs {
    fn drop(&mut self) {
        let m = self.mnt.display().to_string();
        for _ in 0..20 {
            if sh(&format!("umount {m}")).status.success() {
                break;
            }
            if !sh(&format!("mountpoint -q {m}")).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if sh(&format!("mountpoint -q {m}")).status.success() {
            let _ = sh(&format!("umount -l {m}"));
        }
        // mount -o loop sets autoclear; detach anything still bound to the image.
        let _ = sh(&format!(
            "losetup -j {} -O NAME -n | xargs -r -n1 losetup -d",
            self.image.display()
        ));
    }
}

/// A moto S3 server on a free 127.0.0.1 port with two buckets ([`BUCKET`],
/// [`OTHER_BUCKET`]) that checks every SigV4 signature and IAM policy: it starts with
/// authentication off (`INITIAL_NO_AUTH_ACTION_COUNT=inf`), [`Moto::turn_on_auth`] makes
/// an IAM user with an access key, a role it may assume and the buckets (as
/// `moto_iam.py` does for the scripts), then turns checking on (`/moto-api/reset-auth`).
/// A wrong key or a broken signer gets 403. Killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// An IAM role the user may assume (STS AssumeRole through the same server).
    pub role_arn: String,
    _log: TempDir,
}

pub fn moto_server_path() -> PathBuf {
    if let Ok(p) = std::env::var("BTRFS_TO_S3_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    repo().join(".test-tools/venv/bin/moto_server")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port on 127.0.0.1")
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let bin = moto_server_path();
        assert!(
            bin.exists(),
            "moto server not found at {}: run `bash contrib/test.sh` (it installs moto[server]==5.1.22 \
             into .test-tools/venv), or set BTRFS_TO_S3_MOTO_SERVER",
            bin.display()
        );
        let log = TempDir::new("moto");
        let port = free_port();
        let out = std::fs::File::create(log.path().join("moto.log")).expect("moto log file");
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "inf");
        let child = cmd.spawn().expect("starting moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut m = Moto {
            child,
            port,
            endpoint,
            access_key: String::new(),
            secret_key: String::new(),
            role_arn: String::new(),
            _log: log,
        };
        m.wait_ready();
        m.turn_on_auth();
        KEYS.with(|k| *k.borrow_mut() = Some((m.access_key.clone(), m.secret_key.clone())));
        m
    }

    /// What `moto_iam.py` does, without starting Python for every server: while
    /// authentication is still off, IAM calls need only name their service in the
    /// Authorization header's scope (moto routes by it).
    fn turn_on_auth(&mut self) {
        let iam = |params: &[(&str, &str)]| -> String {
            let mut body = String::from("Version=2010-05-08");
            for (k, v) in params {
                body.push_str(&format!("&{k}={}", urlencode(v)));
            }
            ureq::post(&format!("{}/", self.endpoint))
                .header(
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=bootstrap/20260101/us-east-1/iam/aws4_request, \
                     SignedHeaders=host, Signature=0",
                )
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(&body)
                .unwrap_or_else(|e| panic!("moto IAM {params:?}: {e}"))
                .into_body()
                .read_to_string()
                .expect("moto IAM reply")
        };
        let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*","sts:AssumeRole"],"Resource":"*"}]}"#;
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
        iam(&[("Action", "CreateUser"), ("UserName", "btrfs-to-s3")]);
        let policy = xml_text(
            &iam(&[
                ("Action", "CreatePolicy"),
                ("PolicyName", "backup"),
                ("PolicyDocument", allow),
            ]),
            "Arn",
        );
        iam(&[
            ("Action", "AttachUserPolicy"),
            ("UserName", "btrfs-to-s3"),
            ("PolicyArn", &policy),
        ]);
        self.role_arn = xml_text(
            &iam(&[
                ("Action", "CreateRole"),
                ("RoleName", "backup"),
                ("AssumeRolePolicyDocument", trust),
            ]),
            "Arn",
        );
        iam(&[
            ("Action", "AttachRolePolicy"),
            ("RoleName", "backup"),
            ("PolicyArn", &policy),
        ]);
        let key = iam(&[("Action", "CreateAccessKey"), ("UserName", "btrfs-to-s3")]);
        self.access_key = xml_text(&key, "AccessKeyId");
        self.secret_key = xml_text(&key, "SecretAccessKey");
        for b in [BUCKET, OTHER_BUCKET] {
            let r = ureq::put(&format!("{}/{b}", self.endpoint)).send_empty();
            assert!(r.is_ok(), "creating bucket {b} on moto: {r:?}");
        }
        let r = ureq::put(&format!("{}/{LOCK_BUCKET}", self.endpoint))
            .header("x-amz-bucket-object-lock-enabled", "true")
            .send_empty();
        assert!(r.is_ok(), "creating bucket {LOCK_BUCKET} on moto: {r:?}");
        let r = ureq::post(&format!("{}/moto-api/reset-auth", self.endpoint))
            .header("Content-Type", "text/plain")
            .send("0");
        assert!(r.is_ok(), "turning on moto's signature checks: {r:?}");
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not answer on port {} within 60 s",
            self.port
        );
    }

    /// Temporary credentials `(id, secret, session token)` of the IAM role, from STS
    /// AssumeRole on this server, valid for `seconds` (at least 900).
    pub fn assume_role(&self, seconds: u32) -> (String, String, String) {
        let words = run_moto_iam(&[
            "--assume",
            &self.endpoint,
            &self.access_key,
            &self.secret_key,
            &self.role_arn,
            &seconds.to_string(),
        ]);
        (words[0].clone(), words[1].clone(), words[2].clone())
    }

    pub fn store(&self) -> S3Store {
        self.store_for(BUCKET)
    }

    /// A signed client of `bucket` with this server's IAM key.
    pub fn store_for(&self, bucket: &str) -> S3Store {
        S3Store::with_keys(
            &Endpoint {
                bucket: bucket.into(),
                region: REGION.into(),
                endpoint_url: Some(self.endpoint.clone()),
                ..Default::default()
            },
            4,
            &self.access_key,
            &self.secret_key,
        )
        .expect("S3 store for moto")
    }

    /// Every key in the bucket (ListObjectsV2, signed).
    pub fn list_keys(&self) -> Vec<String> {
        use btrfs_to_s3::store::ObjectStore;
        self.store()
            .list_objects("")
            .expect("listing the test bucket")
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the first `<name>` element of a (small, trusted) moto reply.
fn xml_text(doc: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("no <{name}> in moto's reply: {doc}"))
        + open.len();
    let end = doc[start..].find('<').expect("closing tag") + start;
    doc[start..end].to_string()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `moto_iam.py` with the venv's python (next to moto_server); its three words.
fn run_moto_iam(args: &[&str]) -> Vec<String> {
    let python = moto_server_path().with_file_name("python");
    let script = repo().join("tests/it/support/moto_iam.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (run bash contrib/test.sh)",
                python.display()
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    assert!(
        out.status.success() && words.len() == 3,
        "moto_iam.py {args:?} failed (boto3 comes with moto[server] in the venv): {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    words
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_btrfs_to_s3"))
}

/// A command for the binary with test credentials and a clean S3 environment.
pub fn btrfs_to_s3() -> Command {
    let mut c = Command::new(bin());
    test_env(&mut c);
    c
}

/// The environment every run of the binary gets here (also through a wrapper such as
/// `sh -c '...; exec btrfs_to_s3 ...'`).
pub fn test_env(c: &mut Command) -> &mut Command {
    let (access, secret) = test_keys();
    c.env("AWS_ACCESS_KEY_ID", access)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_ENDPOINT_URL_STS")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        // The endpoints here are plain http; the TLS test sets its own bundle.
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG")
        .env_remove("BTRFS_TO_S3_CONFIG")
        // Retries happen as in production (five attempts), with millisecond backoff so
        // that the suite does not sleep for real; a test may override it.
        .env("BTRFS_TO_S3_RETRY_BASE_MS", "20")
        // Production request deadlines unless a test shortens them.
        .env_remove("BTRFS_TO_S3_TEST_DEADLINE_MS")
        .stdin(Stdio::null())
}

pub struct RunResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for RunResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn run_bin(args: &[&str]) -> RunResult {
    output(btrfs_to_s3().args(args))
}

pub fn output(cmd: &mut Command) -> RunResult {
    let out = cmd.output().expect("running btrfs_to_s3");
    RunResult {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A btrfs filesystem, a moto server and a config file for them.
pub struct Setup {
    pub moto: Moto,
    pub fs: BtrfsFs,
    pub cfg: PathBuf,
    pub state: PathBuf,
    pub snaps: PathBuf,
    pub lock: PathBuf,
    pub prefix: String,
}

pub struct SetupOpts<'a> {
    pub subvolumes: &'a [&'a str],
    pub fs_mib: u64,
    pub chunk_size: u64,
    pub part_size: u64,
    pub storage_class_chunks: &'a str,
    pub concurrency: u32,
    pub retain: u32,
    /// Extra lines for [global].
    pub extra: &'a str,
    /// Extra lines for [s3].
    pub s3_extra: &'a str,
    /// Extra mount options of the test filesystem (`compress=zstd`).
    pub mount_options: &'a str,
    /// Extra environment of the moto server (`MOTO_RECORDER_FILEPATH`).
    pub moto_env: &'a [(&'a str, &'a str)],
}

impl Default for SetupOpts<'_> {
    fn default() -> Self {
        SetupOpts {
            subvolumes: &["data"],
            fs_mib: 512,
            chunk_size: 12 * 1024 * 1024,
            part_size: 5 * 1024 * 1024,
            storage_class_chunks: "GLACIER_IR",
            concurrency: 3,
            retain: 2,
            extra: "",
            s3_extra: "",
            mount_options: "",
            moto_env: &[],
        }
    }
}

impl Setup {
    pub fn new(o: SetupOpts<'_>) -> Setup {
        let moto = Moto::start_with_env(o.moto_env);
        let fs = BtrfsFs::with_options(o.fs_mib, o.mount_options);
        let paths: Vec<String> = o
            .subvolumes
            .iter()
            .map(|s| format!("\"{}\"", fs.subvolume(&format!("vol/{s}")).display()))
            .collect();
        let work = fs.dir.path().to_path_buf();
        let state = work.join("state/state.json");
        let lock = work.join("run/btrfs_to_s3.lock");
        let snaps = fs.path("snapshots");
        let prefix = "backups/".to_string();
        let cfg = work.join("config.toml");
        let text = format!(
            r#"[global]
log_level = "debug"
state_path = "{state}"
lock_path = "{lock}"
{extra}
[schedule]
full_every_days = 30
incremental_every_days = 1
[snapshots]
base_dir = "{snaps}"
retain = {retain}
[subvolumes]
paths = [{paths}]
[s3]
bucket = "{BUCKET}"
region = "{REGION}"
prefix = "{prefix}"
endpoint_url = "{endpoint}"
chunk_size_bytes = {chunk}
part_size_bytes = {part}
storage_class_chunks = "{class}"
concurrency = {conc}
{s3_extra}
[restore]
target_base_dir = "{mnt}"
"#,
            state = state.display(),
            lock = lock.display(),
            extra = o.extra,
            snaps = snaps.display(),
            paths = paths.join(", "),
            endpoint = moto.endpoint,
            chunk = o.chunk_size,
            part = o.part_size,
            class = o.storage_class_chunks,
            conc = o.concurrency,
            retain = o.retain,
            s3_extra = o.s3_extra,
            mnt = fs.mnt.display(),
        );
        std::fs::write(&cfg, text).expect("writing config");
        Setup {
            moto,
            fs,
            cfg,
            state,
            snaps,
            lock,
            prefix,
        }
    }

    pub fn vol(&self, name: &str) -> PathBuf {
        self.fs.path(&format!("vol/{name}"))
    }

    pub fn backup(&self, extra: &[&str]) -> RunResult {
        let cfg = self.cfg.display().to_string();
        let mut args = vec!["backup", "--config", &cfg];
        args.extend_from_slice(extra);
        run_bin(&args)
    }

    pub fn backup_cmd(&self, extra: &[&str]) -> Command {
        let mut c = btrfs_to_s3();
        c.args(["backup", "--config"]).arg(&self.cfg).args(extra);
        c
    }

    pub fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.state).expect("reading state"))
            .expect("state JSON")
    }

    pub fn get_json(&self, key: &str) -> serde_json::Value {
        use btrfs_to_s3::store::get_all;
        serde_json::from_slice(&get_all(&self.moto.store(), key).expect("GET")).expect("JSON")
    }

    pub fn snapshot_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.snaps)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Writes `len` pseudo-random bytes to `path`.
pub fn random_file(path: &Path, len: usize) {
    run(&format!("head -c {len} /dev/urandom > {}", path.display()));
}

impl Setup {
    pub fn restore(&self, extra: &[&str]) -> RunResult {
        let cfg = self.cfg.display().to_string();
        let mut args = vec!["restore", "--config", &cfg];
        args.extend_from_slice(extra);
        run_bin(&args)
    }

    /// Leftover restore staging directories in `dir`.
    pub fn staging_left(&self, dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".btrfs_to_s3-restore"))
            .collect()
    }
}

/// A description of a tree by tools independent of btrfs_to_s3: types, modes, owners,
/// sizes, link counts, mtimes and symlink targets (find), and extended attributes
/// (getfattr).
pub fn describe_tree(dir: &Path) -> String {
    let d = dir.display();
    let files = run(&format!(
        "cd {d} && find . -mindepth 1 ! -type d -printf '%p %y %m %U:%G %s %n %T@ %l\\n' | sort"
    ));
    let dirs = run(&format!(
        "cd {d} && find . -mindepth 1 -type d -printf '%p %m %U:%G\\n' | sort"
    ));
    let xattrs = run(&format!(
        "cd {d} && find . | sort | xargs -d '\\n' getfattr -h -d -m - 2>/dev/null || true"
    ));
    format!("{files}\n--dirs--\n{dirs}\n--xattrs--\n{xattrs}")
}

/// Fails unless `a` and `b` hold the same tree: `diff -r` on contents plus
/// [`describe_tree`] on metadata.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = sh(&format!(
        "diff -r --no-dereference {} {}",
        a.display(),
        b.display()
    ));
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (x, y) = (describe_tree(a), describe_tree(b));
    if x != y {
        let only = |p: &str, q: &str| -> Vec<String> {
            let other: std::collections::HashSet<&str> = q.lines().collect();
            p.lines()
                .filter(|l| !other.contains(l))
                .map(str::to_string)
                .collect()
        };
        panic!(
            "metadata differs between {} and {}:\nonly in the source: {:#?}\nonly restored: {:#?}",
            a.display(),
            b.display(),
            only(&x, &y),
            only(&y, &x)
        );
    }
}

/// One canned reply: status line, headers, body.
pub type Canned<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// A fake "S3" endpoint on 127.0.0.1 that answers with canned replies (status line,
/// headers, body): the n-th request gets the n-th reply, the last one repeats. A
/// redirecting proxy, a lying server. Keeps every request's head. Stopped on drop.
pub struct CannedServer {
    pub endpoint: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CannedServer {
    pub fn start(status: &str, headers: &[(&str, &str)], body: &str) -> CannedServer {
        CannedServer::sequence(&[(status, headers, body)])
    }

    pub fn sequence(replies: &[Canned<'_>]) -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let replies: Vec<String> = replies
            .iter()
            .map(|(status, headers, body)| {
                let mut reply = format!("HTTP/1.1 {status}\r\n");
                for (k, v) in headers.iter() {
                    reply.push_str(&format!("{k}: {v}\r\n"));
                }
                reply.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ));
                reply
            })
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, seen) = (stop.clone(), heads.clone());
        let thread = std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                // Read the head, then as many body bytes as Content-Length says.
                let mut buf = Vec::new();
                let mut b = [0u8; 65536];
                let head_end = loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break None,
                        Ok(k) => buf.extend_from_slice(&b[..k]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                if let Ok(mut h) = seen.lock() {
                    h.push(head.clone());
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut have = buf.len() - head_end;
                while have < len {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => have += k,
                    }
                }
                let reply = &replies[n.min(replies.len() - 1)];
                let reply = if head.starts_with("head ") {
                    // HEAD: the same head, no body.
                    reply.split("\r\n\r\n").next().unwrap_or("").to_string() + "\r\n\r\n"
                } else {
                    reply.clone()
                };
                let _ = s.write_all(reply.as_bytes());
            }
        });
        CannedServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            stop,
            port,
            thread: Some(thread),
            heads,
        }
    }

    /// The heads of the requests so far (lower-cased), in order.
    pub fn requests(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `cmd` and kills it if it has not ended within `secs` (the result then says so).
pub fn output_within(cmd: &mut Command, secs: u64) -> RunResult {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning btrfs_to_s3");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            return RunResult {
                code: -9,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: format!(
                    "KILLED after {secs} s (it hung)\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    RunResult {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server (the link emulator, `link.rs`): forwards
/// while up; while down, new connections are refused and every live one is reset (a dead
/// network, as the client sees it). Stopped on drop.
pub struct Proxy {
    pub endpoint: String,
    pub link: link::Link,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
        let link = link::Link::start(std::net::SocketAddr::from(([127, 0, 0, 1], target_port)))
            .expect("starting the link emulator on 127.0.0.1");
        Proxy {
            endpoint: link.endpoint(),
            link,
        }
    }

    pub fn set_up(&self, up: bool) {
        if up {
            self.link.pass();
        } else {
            self.link.refuse();
            self.link.reset();
        }
    }
}

/// The `key=value` field of the last `event=NAME` line in `log`.
pub fn event_field(log: &str, event: &str, key: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(&format!("event={event} ")))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}
