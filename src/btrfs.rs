//! The `Btrfs` trait and the real `btrfs` CLI behind it (and `findmnt`, for the mount
//! options): the code that spawns the btrfs tools. (The one other child process is an AWS
//! `credential_process`, in `store/creds/remote.rs`.) Child processes are finished, not forgotten: after EOF we wait for them,
//! check the exit status and report their stderr (kept in a bounded buffer); on failure
//! downstream they are killed and reaped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};

/// What `btrfs subvolume show` tells about a subvolume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubvolInfo {
    /// `UUID:` (`None` when `-`).
    pub uuid: Option<String>,
    /// `Parent UUID:` (`None` when `-`).
    pub parent_uuid: Option<String>,
    /// `Received UUID:` (`None` when `-`).
    pub received_uuid: Option<String>,
}

/// A running `btrfs send`: read it to EOF, then [`SendStream::finish`].
pub trait SendStream: Read + Send {
    /// Waits for the process and fails with its stderr if it did not succeed.
    fn finish(self: Box<Self>) -> Result<()>;
    /// Kills and reaps the process (after a failure downstream).
    fn kill(self: Box<Self>);
}

/// A running `btrfs receive`: write the stream, then [`ReceiveSink::finish`].
pub trait ReceiveSink: Write + Send {
    /// Closes stdin, waits, and fails with stderr if the receive did not succeed.
    fn finish(self: Box<Self>) -> Result<()>;
    /// Kills and reaps the process (after a failure); returns what it had written to
    /// stderr besides its progress lines, on one line, empty if nothing. When the receive
    /// died on its own (a full disk, say), that is why the stream stopped being taken.
    fn kill(self: Box<Self>) -> String;
}

/// The btrfs operations this tool needs; [`BtrfsCli`] runs the `btrfs` tool, tests use a fake.
pub trait Btrfs: Send + Sync {
    /// `btrfs subvolume snapshot -r SOURCE DEST`.
    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<()>;
    /// `btrfs subvolume delete PATH`.
    fn delete_subvolume(&self, path: &Path) -> Result<()>;
    /// `btrfs subvolume show PATH`; fails if PATH is not a subvolume.
    fn show(&self, path: &Path) -> Result<SubvolInfo>;
    /// `btrfs send [-p PARENT] SNAPSHOT`, with `--proto 2 --compressed-data` when
    /// `compressed` (compressed extents pass through as they are on disk).
    fn send(
        &self,
        snapshot: &Path,
        parent: Option<&Path>,
        compressed: bool,
    ) -> Result<Box<dyn SendStream>>;
    /// What this machine's kernel and `btrfs` can do with send streams.
    fn send_support(&self) -> Result<SendSupport>;
    /// `btrfs receive DIR`.
    fn receive(&self, dir: &Path) -> Result<Box<dyn ReceiveSink>>;
    /// `btrfs property set -ts PATH ro false` (after a receive).
    fn make_writable(&self, path: &Path) -> Result<()>;
    /// `btrfs subvolume sync PATH`: waits until the subvolumes deleted on PATH's
    /// filesystem are cleaned up and their space is free again.
    fn wait_cleaned(&self, path: &Path) -> Result<()>;
    /// The subvolumes directly below the subvolume at PATH, as paths relative to it
    /// (`btrfs subvolume list -o`): `btrfs send` leaves them out.
    fn nested_subvolumes(&self, path: &Path) -> Result<Vec<String>>;
    /// The filesystem PATH (which must exist) is on: its type and source device, from
    /// `findmnt` (on btrfs the statfs fsid differs from subvolume to subvolume, so it
    /// cannot tell whether two paths share a filesystem).
    fn filesystem(&self, path: &Path) -> Result<Filesystem>;
}

/// Send-stream support here: the kernel's send protocol
/// (`/sys/fs/btrfs/features/send_stream_version`) and btrfs-progs' version (6.0 sends and
/// receives protocol 2 with `--compressed-data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendSupport {
    /// The highest send protocol the kernel writes.
    pub kernel_proto: u32,
    /// `(major, minor)` of btrfs-progs.
    pub progs: (u32, u32),
}

impl SendSupport {
    /// btrfs-progs 6.0 is the first that sends and receives protocol 2.
    pub const PROGS_PROTO2: (u32, u32) = (6, 0);

    /// Whether `btrfs send --proto 2 --compressed-data` works here.
    pub fn can_send_compressed(&self) -> bool {
        self.kernel_proto >= 2 && self.progs >= Self::PROGS_PROTO2
    }

    /// Whether `btrfs receive` here reads protocol-2 streams.
    pub fn can_receive_proto2(&self) -> bool {
        self.progs >= Self::PROGS_PROTO2
    }

    /// `kernel send protocol N, btrfs-progs X.Y`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "kernel send protocol {}, btrfs-progs {}.{}",
            self.kernel_proto, self.progs.0, self.progs.1
        )
    }
}

/// Parses `btrfs --version` (`btrfs-progs v6.2`, `btrfs-progs v5.16.2`).
pub fn parse_progs_version(out: &str) -> Option<(u32, u32)> {
    let v = out.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((
        it.next()?.parse().ok()?,
        it.next().and_then(|m| m.parse().ok()).unwrap_or(0),
    ))
}

/// A mounted filesystem, as `findmnt` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filesystem {
    /// The filesystem type (`btrfs`, `ext4`, …).
    pub fstype: String,
    /// The device, without the `[/subvolume]` findmnt appends for btrfs.
    pub source: String,
}

/// The `btrfs` command line tool.
#[derive(Clone, Debug)]
pub struct BtrfsCli {
    /// The `btrfs` binary (`btrfs`, found on `PATH`, by default).
    pub program: PathBuf,
}

impl Default for BtrfsCli {
    fn default() -> Self {
        BtrfsCli {
            program: PathBuf::from("btrfs"),
        }
    }
}

/// The last `STDERR_KEEP` bytes of a child's stderr are kept for error messages.
const STDERR_KEEP: usize = 16 * 1024;

fn collect_stderr(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * STDERR_KEEP {
                        kept.drain(..kept.len() - STDERR_KEEP);
                    }
                }
            }
        }
        if kept.len() > STDERR_KEEP {
            kept.drain(..kept.len() - STDERR_KEEP);
        }
        kept
    })
}

/// The kept stderr's non-blank lines, trimmed.
fn stderr_lines(h: Option<JoinHandle<Vec<u8>>>) -> Vec<String> {
    let bytes = h.and_then(|h| h.join().ok()).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The kept stderr on one line (lines joined with " | ").
fn stderr_text(h: Option<JoinHandle<Vec<u8>>>) -> String {
    let lines = stderr_lines(h);
    if lines.is_empty() {
        "no output on stderr".to_string()
    } else {
        lines.join(" | ")
    }
}

fn check_status(what: &str, status: ExitStatus, stderr: String) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("{what} failed ({status}): {stderr}")
    }
}

impl BtrfsCli {
    fn command(&self) -> Command {
        Command::new(&self.program)
    }

    fn spawn_err(&self, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "cannot run {}: not found (install btrfs-progs, e.g. apt-get install btrfs-progs)",
                self.program.display()
            )
        } else {
            anyhow!("cannot run {}: {e}", self.program.display())
        }
    }

    /// Runs to completion; returns stdout, or an error with stderr.
    fn run(&self, args: &[&std::ffi::OsStr]) -> Result<String> {
        let what = format!(
            "btrfs {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_err(e))?;
        let stderr = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " | ");
        check_status(&what, out.status, stderr)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Pipe buffer asked for on the send pipe: fewer, larger transfers and wake-ups than the
/// default 64 KiB (the kernel may give less; that only costs speed).
const PIPE_SIZE: usize = 1 << 20;

fn grow_pipe(fd: &impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
}

/// The children in `btrfs subvolume list -o` output, relative to the subvolume `me` (its
/// path from `btrfs subvolume show`, `/` for the top level).
pub fn parse_nested(me: &str, list: &str) -> Vec<String> {
    let prefix = match me.trim_matches('/') {
        "" => String::new(),
        m => format!("{m}/"),
    };
    list.lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.trim()))
        .map(|p| {
            let p = p.strip_prefix("<FS_TREE>/").unwrap_or(p);
            p.strip_prefix(&prefix).unwrap_or(p).to_string()
        })
        .collect()
}

/// Parses `findmnt -n -o FSTYPE,SOURCE` output: `btrfs /dev/loop0[/vol]`.
pub fn parse_findmnt(out: &str) -> Result<Filesystem> {
    let mut f = out.split_whitespace();
    match (f.next(), f.next()) {
        (Some(t), Some(src)) => Ok(Filesystem {
            fstype: t.to_string(),
            source: src.split('[').next().unwrap_or(src).to_string(),
        }),
        _ => bail!("unexpected findmnt output {out:?}"),
    }
}

/// Parses `btrfs subvolume show` output.
pub fn parse_show(out: &str) -> SubvolInfo {
    let field = |name: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let uuid = |v: Option<String>| v.filter(|s| !s.is_empty() && s != "-");
    SubvolInfo {
        uuid: uuid(field("UUID")),
        parent_uuid: uuid(field("Parent UUID")),
        received_uuid: uuid(field("Received UUID")),
    }
}

impl Btrfs for BtrfsCli {
    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<()> {
        self.run(&[
            "subvolume".as_ref(),
            "snapshot".as_ref(),
            "-r".as_ref(),
            source.as_os_str(),
            dest.as_os_str(),
        ])
        .map(|_| ())
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        // --commit-after: the transaction commits now, so the cleaner frees the space at
        // once and `subvolume sync` returns in milliseconds, not at the next 30 s commit.
        self.run(&[
            "subvolume".as_ref(),
            "delete".as_ref(),
            "--commit-after".as_ref(),
            path.as_os_str(),
        ])
        .map(|_| ())
    }

    fn show(&self, path: &Path) -> Result<SubvolInfo> {
        let out = self.run(&["subvolume".as_ref(), "show".as_ref(), path.as_os_str()])?;
        Ok(parse_show(&out))
    }

    fn send(
        &self,
        snapshot: &Path,
        parent: Option<&Path>,
        compressed: bool,
    ) -> Result<Box<dyn SendStream>> {
        let mut cmd = self.command();
        cmd.arg("send");
        if compressed {
            cmd.args(["--proto", "2", "--compressed-data"]);
        }
        if let Some(p) = parent {
            cmd.arg("-p").arg(p);
        }
        cmd.arg(snapshot)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_err(e))?;
        let stdout = child.stdout.take().context("btrfs send: no stdout")?;
        grow_pipe(&stdout);
        let stderr = child.stderr.take().map(collect_stderr);
        Ok(Box::new(ChildSend {
            stdout,
            proc: Proc {
                what: format!("btrfs send of {}", snapshot.display()),
                child,
                stderr,
            },
        }))
    }

    fn receive(&self, dir: &Path) -> Result<Box<dyn ReceiveSink>> {
        let mut child = self
            .command()
            .arg("receive")
            // Confined to the staging directory: a doctored stream cannot write elsewhere.
            .arg("--chroot")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        let stdin = child.stdin.take().context("btrfs receive: no stdin")?;
        grow_pipe(&stdin);
        let stderr = child.stderr.take().map(collect_stderr);
        Ok(Box::new(ChildReceive {
            stdin: Some(stdin),
            proc: Proc {
                what: format!("btrfs receive into {}", dir.display()),
                child,
                stderr,
            },
        }))
    }

    fn send_support(&self) -> Result<SendSupport> {
        let out = self.run(&["--version".as_ref()])?;
        let progs = parse_progs_version(&out)
            .ok_or_else(|| anyhow!("cannot read the btrfs-progs version from {out:?}"))?;
        // Absent on kernels before 5.x: protocol 1 only.
        let kernel_proto = std::fs::read_to_string("/sys/fs/btrfs/features/send_stream_version")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1);
        Ok(SendSupport {
            kernel_proto,
            progs,
        })
    }

    fn wait_cleaned(&self, path: &Path) -> Result<()> {
        self.run(&["subvolume".as_ref(), "sync".as_ref(), path.as_os_str()])
            .map(|_| ())
    }

    fn nested_subvolumes(&self, path: &Path) -> Result<Vec<String>> {
        // `show` names the subvolume relative to the top level, `list -o` its children
        // the same way.
        let show = self.run(&["subvolume".as_ref(), "show".as_ref(), path.as_os_str()])?;
        let me = show.lines().next().unwrap_or("").trim().to_string();
        let list = self.run(&[
            "subvolume".as_ref(),
            "list".as_ref(),
            "-o".as_ref(),
            path.as_os_str(),
        ])?;
        Ok(parse_nested(&me, &list))
    }

    fn filesystem(&self, path: &Path) -> Result<Filesystem> {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE,SOURCE", "--target"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .context("running findmnt (util-linux): install it with apt-get install util-linux")?;
        check_status(
            &format!("findmnt --target {}", path.display()),
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )?;
        parse_findmnt(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("reading the filesystem of {}", path.display()))
    }

    fn make_writable(&self, path: &Path) -> Result<()> {
        self.run(&[
            "property".as_ref(),
            "set".as_ref(),
            "-f".as_ref(),
            "-ts".as_ref(),
            path.as_os_str(),
            "ro".as_ref(),
            "false".as_ref(),
        ])
        .map(|_| ())
    }
}

/// A running child: waited for and checked by `finish`, killed and reaped by `kill`, and
/// killed on drop if neither happened (an early return).
struct Proc {
    what: String,
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Proc {
    fn finish(&mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for {}", self.what))?;
        check_status(&self.what, status, stderr_text(self.stderr.take()))
    }

    /// Kills and reaps; returns the kept stderr's lines.
    fn kill(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        stderr_lines(self.stderr.take())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct ChildSend {
    stdout: ChildStdout,
    proc: Proc,
}

impl Read for ChildSend {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
    /// `readv` on the pipe (the encrypted pipeline reads many blocks at once).
    fn read_vectored(&mut self, bufs: &mut [std::io::IoSliceMut<'_>]) -> std::io::Result<usize> {
        self.stdout.read_vectored(bufs)
    }
}

impl SendStream for ChildSend {
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.proc.finish()
    }

    fn kill(mut self: Box<Self>) {
        self.proc.kill();
    }
}

/// Fields drop in order: stdin closes before the process is reaped.
struct ChildReceive {
    stdin: Option<ChildStdin>,
    proc: Proc,
}

impl Write for ChildReceive {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.stdin {
            Some(s) => s.write(buf),
            None => Err(std::io::Error::other("stdin closed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.stdin {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

impl ReceiveSink for ChildReceive {
    fn finish(mut self: Box<Self>) -> Result<()> {
        drop(self.stdin.take());
        self.proc.finish()
    }

    fn kill(mut self: Box<Self>) -> String {
        drop(self.stdin.take());
        let lines = self.proc.kill();
        // Without its progress lines ("At subvol NAME", "At snapshot NAME"), what is left
        // is why it stopped, if it stopped on its own.
        lines
            .into_iter()
            .filter(|l| !l.starts_with("At subvol ") && !l.starts_with("At snapshot "))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_and_support() {
        assert_eq!(parse_progs_version("btrfs-progs v6.2\n"), Some((6, 2)));
        assert_eq!(parse_progs_version("btrfs-progs v5.16.2"), Some((5, 16)));
        assert_eq!(parse_progs_version("btrfs-progs v6"), Some((6, 0)));
        assert_eq!(parse_progs_version("nonsense"), None);
        let s = SendSupport {
            kernel_proto: 2,
            progs: (6, 2),
        };
        assert!(s.can_send_compressed() && s.can_receive_proto2());
        let old_progs = SendSupport {
            kernel_proto: 2,
            progs: (5, 16),
        };
        assert!(!old_progs.can_send_compressed() && !old_progs.can_receive_proto2());
        let old_kernel = SendSupport {
            kernel_proto: 1,
            progs: (6, 2),
        };
        assert!(!old_kernel.can_send_compressed() && old_kernel.can_receive_proto2());
    }

    #[test]
    fn parses_nested() {
        let list = "ID 257 gen 7 top level 256 path data/nested\nID 258 gen 7 top level 256 path data/snaps/s1\n";
        assert_eq!(parse_nested("data", list), ["nested", "snaps/s1"]);
        assert_eq!(
            parse_nested("/", "ID 256 gen 9 top level 5 path <FS_TREE>/vol\n"),
            ["vol"]
        );
        assert!(parse_nested("data", "").is_empty());
    }

    #[test]
    fn parses_findmnt() {
        let f = parse_findmnt("btrfs  /dev/loop3[/vol/data]\n").unwrap();
        assert_eq!(
            (f.fstype.as_str(), f.source.as_str()),
            ("btrfs", "/dev/loop3")
        );
        assert_eq!(parse_findmnt("ext4 /dev/vda\n").unwrap().source, "/dev/vda");
        assert!(parse_findmnt("").is_err());
    }

    #[test]
    fn parses_show() {
        let out = "data\n\tName: \t\t\tdata\n\tUUID: \t\t\t1c0b1f0e-aaaa-bbbb-cccc-000000000001\n\
                   \tParent UUID: \t\t-\n\tReceived UUID: \t\t-\n\tCreation time: \t\t2025-01-01 02:00:00 +0000\n";
        let i = parse_show(out);
        assert_eq!(
            i.uuid.as_deref(),
            Some("1c0b1f0e-aaaa-bbbb-cccc-000000000001")
        );
        assert_eq!(i.parent_uuid, None);
        assert_eq!(i.received_uuid, None);
        let out2 = "\tUUID: a\n\tParent UUID: b\n\tReceived UUID: c\n";
        let i = parse_show(out2);
        assert_eq!(
            (
                i.uuid.as_deref(),
                i.parent_uuid.as_deref(),
                i.received_uuid.as_deref()
            ),
            (Some("a"), Some("b"), Some("c"))
        );
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let b = BtrfsCli {
            program: "/nonexistent/btrfs".into(),
        };
        let e = b.show(Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("apt-get install btrfs-progs"), "{e}");
        let e = b.send(Path::new("/x"), None, false).err().unwrap();
        assert!(e.to_string().contains("not found"));
    }

    #[test]
    fn child_failure_reports_stderr() {
        // `sh` stands in for btrfs: the status and stderr handling are what is tested.
        let b = BtrfsCli {
            program: "/bin/sh".into(),
        };
        let e = b
            .run(&["-c".as_ref(), "echo bad thing >&2; exit 3".as_ref()])
            .unwrap_err();
        assert!(
            e.to_string().contains("bad thing") && e.to_string().contains("3"),
            "{e}"
        );
        assert_eq!(b.run(&["-c".as_ref(), "echo ok".as_ref()]).unwrap(), "ok\n");
    }

    #[test]
    fn a_receive_that_dies_on_its_own_says_why_when_killed() {
        // A script stands in for btrfs: it takes a little of the stream, then fails as
        // `btrfs receive` does on a full disk.
        let dir = std::env::temp_dir().join(format!("btrfs_to_s3-recv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake-btrfs");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'At subvol data__20261124T000000Z__full' >&2\nhead -c 10 >/dev/null\necho 'ERROR: write failed: No space left on device' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let b = BtrfsCli { program: script };
        let mut r = b.receive(&dir).unwrap();
        let block = vec![0u8; 64 * 1024];
        let mut failed = false;
        // The pipe takes up to 1 MiB before the write that fails.
        for _ in 0..10_000 {
            if r.write_all(&block).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writes to a dead receive fail");
        let said = r.kill();
        assert_eq!(said, "ERROR: write failed: No space left on device");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stderr_is_bounded() {
        let h = collect_stderr(std::io::repeat(b'x').take(200_000));
        let kept = h.join().unwrap();
        assert_eq!(kept.len(), STDERR_KEEP);
        assert_eq!(stderr_text(None), "no output on stderr");
    }
}
