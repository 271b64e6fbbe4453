//! The restored-tree comparison, the last step of a restore (`restore.verify_mode`; not
//! the `verify` command, whose engine is `check`): a restored tree against the source
//! snapshot: the same set of paths,
//! file types, permission bits (with setuid/setgid/sticky), owners, extended attributes,
//! symlink targets and file sizes, and SHA-256 of file contents (every file
//! in `full` mode, up to `sample_max_files` spread evenly in `sample` mode). Walks both
//! trees in lockstep, one directory at a time, so memory stays small; the files' contents
//! are hashed on a few threads of their own (`Hashers`), files in parallel, and their
//! results are taken in walk order. The first difference, in sorted path order, fails
//! with that path.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use sha2::{Digest, Sha256};

use crate::config::VerifyMode;
use crate::xattr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
/// What a comparison covered.
pub struct Report {
    /// Paths compared.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Files whose contents were hashed and compared.
    pub files_hashed: u64,
    /// Bytes hashed, on each side.
    pub bytes_hashed: u64,
    /// Nested subvolumes' placeholders in the source, expected to be absent.
    pub nested_placeholders: u64,
}

fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

/// The inode number btrfs gives the empty directory that stands in a snapshot for a
/// nested subvolume (`BTRFS_EMPTY_SUBVOL_DIR_OBJECTID`); no real file has it.
const NESTED_PLACEHOLDER_INO: u64 = 2;

/// True for a nested subvolume's placeholder in a snapshot: `btrfs send` leaves those out,
/// so the restored tree rightly lacks them.
fn is_nested_placeholder(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.ino() == NESTED_PLACEHOLDER_INO)
}

fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// Bytes read at once when hashing a file.
const HASH_READ: usize = 1 << 20;

/// Drops `len` bytes at `at` of `f` from the page cache once they are hashed: the source
/// snapshot is read once, while `btrfs receive` writes the restored tree, and its pages
/// (clean, of a read-only snapshot) would only evict the host's working set and crowd
/// the receive's writes (DESIGN.md, *Restore*, has the numbers). Advice only: a
/// filesystem that ignores it costs nothing but cache.
fn drop_behind(f: &File, at: u64, len: usize) {
    let _ = rustix::fs::fadvise(
        f,
        at,
        std::num::NonZeroU64::new(len as u64),
        rustix::fs::Advice::DontNeed,
    );
}

/// Whose file [`hash_file`] reads: the source's pages are dropped behind the reads, the
/// restored tree's (just written, likely wanted next) are left.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Source,
    Restored,
}

/// SHA-256 and length of the file at `p`; gives up (an error nobody reads) once `stop` is
/// set.
fn hash_file(p: &Path, side: Side, stop: &AtomicBool) -> Result<([u8; 32], u64)> {
    hash_file_with(p, side, stop, &|| {})
}

/// [`hash_file`], calling `before_read` before each read (the prehash's priority check).
fn hash_file_with(
    p: &Path,
    side: Side,
    stop: &AtomicBool,
    before_read: &dyn Fn(),
) -> Result<([u8; 32], u64)> {
    let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut n = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("hashing {} stopped", p.display());
        }
        before_read();
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        if side == Side::Source {
            drop_behind(&f, n, k);
        }
        n += k as u64;
    }
    Ok((h.finalize().into(), n))
}

struct Walk<'a> {
    src: &'a Path,
    dst: &'a Path,
    /// Hash every `stride`-th regular file (1 = all, 0 = none).
    stride: u64,
    report: Report,
    /// The source's hashes, computed ahead in the same order (see [`Prehash`]).
    pre: Option<crossbeam_channel::Receiver<Prehashed>>,
    /// Where the chosen files' contents are hashed and compared.
    hashers: Hashers,
}

impl Walk<'_> {
    fn fail(&self, rel: &Path, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "verification failed at {}: {what}",
            if rel.as_os_str().is_empty() {
                Path::new("/")
            } else {
                rel
            }
            .display()
        )
    }

    /// The next hash the source's [`Prehash`] computed, when it is for `rel`; `None` (and
    /// no more taken from it) when it ended, failed or went out of step: the file is then
    /// hashed here, and a failure reads as it always did.
    fn prehashed(&mut self, rel: &Path) -> Option<([u8; 32], u64)> {
        let got = self.pre.as_ref()?.recv().ok();
        match got {
            Some((fp, Some(h))) if fp == fingerprint(rel) => Some(h),
            _ => {
                self.pre = None;
                None
            }
        }
    }

    fn dir(&mut self, rel: &Path) -> Result<()> {
        let src_dir = self.src.join(rel);
        let mut a = sorted_names(&src_dir)?;
        let before = a.len();
        a.retain(|n| !is_nested_placeholder(&src_dir.join(n)));
        self.report.nested_placeholders += (before - a.len()) as u64;
        let b = sorted_names(&self.dst.join(rel))?;
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    self.entry(&rel.join(x))?;
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x < y => {
                    return Err(self.fail(&rel.join(x), "missing from the restored tree"))
                }
                (Some(_), Some(y)) => {
                    return Err(self.fail(&rel.join(y), "not in the source snapshot"))
                }
                (Some(x), None) => {
                    return Err(self.fail(&rel.join(x), "missing from the restored tree"))
                }
                (None, Some(y)) => {
                    return Err(self.fail(&rel.join(y), "not in the source snapshot"))
                }
                (None, None) => break,
            }
        }
        Ok(())
    }

    fn entry(&mut self, rel: &Path) -> Result<()> {
        let (sp, dp) = (self.src.join(rel), self.dst.join(rel));
        let sm = fs::symlink_metadata(&sp).with_context(|| format!("stat {}", sp.display()))?;
        let dm = fs::symlink_metadata(&dp).with_context(|| format!("stat {}", dp.display()))?;
        self.report.entries += 1;
        if kind(&sm) != kind(&dm) {
            return Err(self.fail(
                rel,
                &format!("a {} in the source, a {} restored", kind(&sm), kind(&dm)),
            ));
        }
        if (sm.uid(), sm.gid()) != (dm.uid(), dm.gid()) {
            return Err(self.fail(
                rel,
                &format!(
                    "owner {}:{} in the source, {}:{} restored",
                    sm.uid(),
                    sm.gid(),
                    dm.uid(),
                    dm.gid()
                ),
            ));
        }
        let t = sm.file_type();
        // Symlink permission bits carry no meaning on Linux.
        if !t.is_symlink() && sm.mode() & 0o7777 != dm.mode() & 0o7777 {
            return Err(self.fail(
                rel,
                &format!(
                    "mode {:04o} in the source, {:04o} restored",
                    sm.mode() & 0o7777,
                    dm.mode() & 0o7777
                ),
            ));
        }
        let xa = xattr::list(&sp).with_context(|| format!("listing xattrs of {}", sp.display()))?;
        let xb = xattr::list(&dp).with_context(|| format!("listing xattrs of {}", dp.display()))?;
        if let Some(n) = xattr::first_difference(&xa, &xb) {
            return Err(self.fail(
                rel,
                &format!(
                    "extended attribute {} differs or is missing on one side",
                    xattr::name(&n)
                ),
            ));
        }
        if t.is_dir() {
            return self.dir(rel);
        }
        if t.is_symlink() {
            let (x, y) = (fs::read_link(&sp)?, fs::read_link(&dp)?);
            if x != y {
                return Err(self.fail(
                    rel,
                    &format!(
                        "symlink to {} in the source, to {} restored",
                        x.display(),
                        y.display()
                    ),
                ));
            }
            return Ok(());
        }
        if t.is_file() {
            if sm.len() != dm.len() {
                return Err(self.fail(
                    rel,
                    &format!("{} bytes in the source, {} restored", sm.len(), dm.len()),
                ));
            }
            self.report.files += 1;
            if self.stride > 0 && (self.report.files - 1).is_multiple_of(self.stride) {
                let src = match self.prehashed(rel) {
                    Some(h) => Source::Hashed(h),
                    None => Source::Path(sp),
                };
                self.hashers.submit(
                    HashJob {
                        rel: rel.to_path_buf(),
                        src,
                        dst: dp,
                    },
                    &mut self.report,
                )?;
            }
        }
        Ok(())
    }
}

fn count_files(dir: &Path) -> Result<u64> {
    let mut n = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading directory {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

fn stride(source: &Path, mode: VerifyMode, sample_max_files: u64) -> Result<u64> {
    Ok(match mode {
        VerifyMode::None => 0,
        VerifyMode::Full => 1,
        VerifyMode::Sample => {
            let files = count_files(source)?;
            files.div_ceil(sample_max_files.max(1)).max(1)
        }
    })
}

/// Compares `restored` with `source`; `VerifyMode::None` checks nothing.
pub fn compare(
    source: &Path,
    restored: &Path,
    mode: VerifyMode,
    sample_max_files: u64,
) -> Result<Report> {
    compare_with(source, restored, mode, sample_max_files, None)
}

/// [`compare`], taking the source's hashes from `pre` (started with the same source,
/// mode and `sample_max_files`) as far as it got.
pub fn compare_with(
    source: &Path,
    restored: &Path,
    mode: VerifyMode,
    sample_max_files: u64,
    pre: Option<Prehash>,
) -> Result<Report> {
    if mode == VerifyMode::None {
        return Ok(Report::default());
    }
    if let Some(p) = &pre {
        // The download is over: what is left of the source is wanted now.
        p.urgent.store(true, Ordering::Relaxed);
    }
    let (stride, pre) = match pre {
        Some(p) if p.stride > 0 => (p.stride, Some(p)),
        _ => (stride(source, mode, sample_max_files)?, None),
    };
    if !restored.is_dir() {
        bail!(
            "verification failed: {} is not a directory",
            restored.display()
        );
    }
    let mut w = Walk {
        src: source,
        dst: restored,
        stride,
        report: Report::default(),
        pre: pre.as_ref().map(|p| p.rx.clone()),
        hashers: Hashers::start(hash_threads()),
    };
    // Dropping `pre` (after the walk, whatever its outcome) stops and joins its thread.
    let walked = w.dir(Path::new(""));
    // Every file still being hashed comes before the walk's position: a difference among
    // them is the first one.
    w.hashers.finish(&mut w.report)?;
    walked?;
    Ok(w.report)
}

/// Threads hashing files for one comparison: as many as the CPUs (several reads in flight
/// help a disk too), at least 2, at most 8.
fn hash_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Files handed to [`Hashers`] and not yet checked, at most: their paths (about 100
/// bytes each) are all the memory this takes.
const HASH_IN_FLIGHT: u64 = 256;

/// The source side of a [`HashJob`]: hashed ahead by [`Prehash`], or to hash here.
enum Source {
    Hashed(([u8; 32], u64)),
    Path(PathBuf),
}

/// One file to compare by content: its path relative to both trees, the source's hash
/// or path, the restored file's path.
struct HashJob {
    rel: PathBuf,
    src: Source,
    dst: PathBuf,
}

/// A job's outcome: whether the contents are equal and the source's length, or the
/// error hashing one side gave (the source's first, as the walk always read it first).
type HashDone = (u64, PathBuf, Result<(bool, u64)>);

fn compare_contents(job: &HashJob, stop: &AtomicBool) -> Result<(bool, u64)> {
    let (x, n) = match &job.src {
        Source::Hashed(h) => *h,
        Source::Path(p) => hash_file(p, Side::Source, stop)?,
    };
    let (y, _) = hash_file(&job.dst, Side::Restored, stop)?;
    Ok((x == y, n))
}

/// The comparison's file hashing on a pool of threads: jobs numbered in walk order, at
/// most [`HASH_IN_FLIGHT`] unchecked, their results checked strictly in that order, so
/// the first difference reported is the first in sorted path order, as on one thread.
/// Without threads (none could start) each job runs in place.
struct Hashers {
    tx: Option<Sender<(u64, HashJob)>>,
    rx: Option<Receiver<HashDone>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Jobs submitted, and checked (in order).
    sent: u64,
    checked: u64,
    /// Results that came before an earlier one.
    early: BTreeMap<u64, HashDone>,
    /// A difference was reported: nothing more is checked.
    failed: bool,
}

impl Hashers {
    fn start(n: usize) -> Hashers {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, jobs) = crossbeam_channel::unbounded::<(u64, HashJob)>();
        let (done, rx) = crossbeam_channel::unbounded::<HashDone>();
        let mut threads = Vec::new();
        for i in 0..n {
            let (jobs, done, stop) = (jobs.clone(), done.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || {
                    for (seq, job) in jobs {
                        let r = if stop.load(Ordering::Relaxed) {
                            Err(anyhow!("stopped"))
                        } else {
                            // A panic is this file's error, never a result that never comes.
                            crate::worker::catch(|| compare_contents(&job, &stop)).unwrap_or_else(
                                |m| Err(anyhow!("hashing {}: {m}", job.rel.display())),
                            )
                        };
                        if done.send((seq, job.rel, r)).is_err() {
                            return;
                        }
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(_) => break,
            }
        }
        let pooled = !threads.is_empty();
        Hashers {
            tx: pooled.then_some(tx),
            rx: pooled.then_some(rx),
            threads,
            stop,
            sent: 0,
            checked: 0,
            early: BTreeMap::new(),
            failed: false,
        }
    }

    /// Hands `job` to the pool (waiting while [`HASH_IN_FLIGHT`] are unchecked), checking
    /// whatever results are in; the first difference among them is the error.
    fn submit(&mut self, job: HashJob, report: &mut Report) -> Result<()> {
        let seq = self.sent;
        self.sent += 1;
        let Some(tx) = &self.tx else {
            let r = compare_contents(&job, &self.stop);
            return self.check((seq, job.rel, r), report);
        };
        if tx.send((seq, job)).is_err() {
            bail!("verification: the hashing threads stopped unexpectedly");
        }
        while let Some(d) = self.next(self.sent - self.checked > HASH_IN_FLIGHT)? {
            self.check(d, report)?;
        }
        Ok(())
    }

    /// The result due next (number `checked`) when it is in; waits for results when
    /// `wait`, else `None` when it is not in yet.
    fn next(&mut self, wait: bool) -> Result<Option<HashDone>> {
        let Some(rx) = &self.rx else {
            return Ok(None);
        };
        loop {
            if let Some(d) = self.early.remove(&self.checked) {
                return Ok(Some(d));
            }
            let d = if wait {
                rx.recv().ok()
            } else {
                rx.try_recv().ok()
            };
            match d {
                Some(d) => {
                    self.early.insert(d.0, d);
                }
                None if wait => bail!("verification: the hashing threads stopped unexpectedly"),
                None => return Ok(None),
            }
        }
    }

    fn check(&mut self, (seq, rel, r): HashDone, report: &mut Report) -> Result<()> {
        debug_assert_eq!(seq, self.checked);
        self.checked += 1;
        let r = r.and_then(|(same, n)| {
            if !same {
                self.failed = true;
                bail!(
                    "verification failed at {}: content differs (SHA-256)",
                    rel.display()
                );
            }
            Ok(n)
        });
        match r {
            Ok(n) => {
                report.files_hashed += 1;
                report.bytes_hashed += n;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Checks every job still out, in order; the first difference is the error. When the
    /// walk failed, every job out is for an earlier file, so its difference comes first;
    /// after a difference the rest are abandoned. Stops and joins the threads.
    fn finish(&mut self, report: &mut Report) -> Result<()> {
        let mut r = Ok(());
        while !self.failed && self.checked < self.sent {
            match self.next(true) {
                Ok(Some(d)) => {
                    if let Err(e) = self.check(d, report) {
                        r = Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        self.stop_and_join();
        r
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        self.rx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Hashers {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// One file's hash from a [`Prehash`]: the fingerprint of its path relative to the
/// source, and its SHA-256 and length (`None`: hashing it failed; the walk hashes it
/// again and reports that failure in place).
type Prehashed = (u64, Option<([u8; 32], u64)>);

/// Files whose hashes a [`Prehash`] holds ahead of the comparison: about 56 bytes each in
/// the queue (allocated as it fills), so at most about 56 MiB; past it the hashing thread
/// waits for the comparison.
const PREHASH_QUEUE: usize = 1 << 20;

fn fingerprint(rel: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rel.hash(&mut h);
    h.finish()
}

/// The source snapshot hashed on a thread of its own while the restore downloads and
/// receives (the CPU `btrfs receive` leaves idle), in the order the comparison walk
/// visits files and with the same choice of files (every one in `full` mode, every
/// `stride`-th in `sample`). It runs at nice [`PREHASH_NICE`], so on a busy machine the
/// download, `btrfs receive` and the object store's server come first; once the
/// comparison starts it is back at the process's priority. The comparison takes the
/// hashes as they come, so the restored tree's hashing overlaps whatever source hashing
/// is left. Dropping it stops the thread (within one read of 1 MiB) and joins it.
pub struct Prehash {
    stride: u64,
    rx: crossbeam_channel::Receiver<Prehashed>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set when the comparison starts: the thread goes back to normal priority.
    urgent: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prehash {
    /// Starts hashing `source`; `None` for `VerifyMode::None` or when the source cannot
    /// be counted or the thread cannot start (the comparison then hashes it itself and
    /// reports any error in place).
    pub fn start(source: &Path, mode: VerifyMode, sample_max_files: u64) -> Option<Prehash> {
        let stride = stride(source, mode, sample_max_files).ok()?;
        if stride == 0 {
            return None;
        }
        // Unbounded (a bounded channel allocates all its slots at once); `PreWalk` keeps
        // it within PREHASH_QUEUE.
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let urgent = Arc::new(AtomicBool::new(false));
        let src = source.to_path_buf();
        let (halt, hurry) = (stop.clone(), urgent.clone());
        let thread = std::thread::Builder::new()
            .name("verify-source".into())
            .spawn(move || {
                // On Linux the nice value is per thread (pid 0: the calling thread). A
                // failure costs only the priority.
                let _ = rustix::process::setpriority_process(None, PREHASH_NICE);
                let mut w = PreWalk {
                    src: &src,
                    stride,
                    files: 0,
                    tx,
                    stop: &halt,
                    nice: Nice {
                        urgent: &hurry,
                        done: std::cell::Cell::new(false),
                    },
                };
                let _ = w.dir(Path::new(""));
            })
            .ok()?;
        Some(Prehash {
            stride,
            rx,
            stop,
            urgent,
            thread: Some(thread),
        })
    }
}

impl Drop for Prehash {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The source side of [`Walk`] alone: same order, same files; ends (`Err(())`) at the
/// first thing it cannot read, when stopped, or when nobody takes its hashes.
struct PreWalk<'a> {
    src: &'a Path,
    stride: u64,
    files: u64,
    tx: crossbeam_channel::Sender<Prehashed>,
    stop: &'a std::sync::atomic::AtomicBool,
    nice: Nice<'a>,
}

/// The nice value of [`Prehash`]'s thread until the comparison starts: below the
/// download, `btrfs receive` and a local object store, which the restore waits for.
const PREHASH_NICE: i32 = 10;

/// The prehash thread's way back to normal priority once `urgent` is set.
struct Nice<'a> {
    urgent: &'a AtomicBool,
    done: std::cell::Cell<bool>,
}

impl Nice<'_> {
    fn check(&self) {
        if !self.done.get() && self.urgent.load(Ordering::Relaxed) {
            self.done.set(true);
            // Raising a thread's priority needs CAP_SYS_NICE (restore runs as root);
            // without it the hashing only stays slower.
            let _ = rustix::process::setpriority_process(None, 0);
        }
    }
}

impl PreWalk<'_> {
    fn dir(&mut self, rel: &Path) -> Result<(), ()> {
        let src_dir = self.src.join(rel);
        let mut names = sorted_names(&src_dir).map_err(|_| ())?;
        names.retain(|n| !is_nested_placeholder(&src_dir.join(n)));
        for n in names {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(());
            }
            let rel = rel.join(&n);
            let m = fs::symlink_metadata(self.src.join(&rel)).map_err(|_| ())?;
            let t = m.file_type();
            if t.is_dir() {
                self.dir(&rel)?;
            } else if t.is_file() {
                self.files += 1;
                if (self.files - 1).is_multiple_of(self.stride) {
                    while self.tx.len() >= PREHASH_QUEUE {
                        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return Err(());
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    let h = hash_file_until(&self.src.join(&rel), self.stop, &self.nice);
                    let failed = h.is_none();
                    self.tx.send((fingerprint(&rel), h)).map_err(|_| ())?;
                    if failed {
                        return Err(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// [`hash_file`] of a source file that gives up (`None`) when `stop` is set or on any
/// error, checking the thread's priority before each read.
fn hash_file_until(
    p: &Path,
    stop: &std::sync::atomic::AtomicBool,
    nice: &Nice,
) -> Option<([u8; 32], u64)> {
    hash_file_with(p, Side::Source, stop, &|| nice.check()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scratch;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("a.txt"), "alpha").unwrap();
        fs::write(root.join("d/b.bin"), vec![1u8; 5000]).unwrap();
        fs::write(root.join("d/e/empty"), "").unwrap();
        symlink("../a.txt", root.join("d/link")).unwrap();
        for i in 0..20 {
            fs::write(root.join(format!("d/e/f{i:02}")), format!("file {i}")).unwrap();
        }
    }

    fn pair() -> (Scratch, PathBuf, PathBuf) {
        let s = Scratch::new("verify");
        let (a, b) = (s.0.join("src"), s.0.join("dst"));
        tree(&a);
        tree(&b);
        (s, a, b)
    }

    fn err(a: &Path, b: &Path, mode: VerifyMode) -> String {
        format!("{:#}", compare(a, b, mode, 5).unwrap_err())
    }

    #[test]
    fn identical_trees_pass() {
        let (_s, a, b) = pair();
        let r = compare(&a, &b, VerifyMode::Full, 5).unwrap();
        assert_eq!(r.files, 23);
        assert_eq!(r.files_hashed, 23);
        let r = compare(&a, &b, VerifyMode::Sample, 5).unwrap();
        assert!(r.files_hashed <= 5 && r.files_hashed >= 4, "{r:?}");
        assert_eq!(
            compare(&a, &b, VerifyMode::None, 5).unwrap(),
            Report::default()
        );
    }

    #[test]
    fn differences_name_the_first_path() {
        let (_s, a, b) = pair();
        fs::write(b.join("d/e/f03"), "file X").unwrap();
        assert!(err(&a, &b, VerifyMode::Full).contains("d/e/f03: content differs"));
        fs::write(b.join("d/e/f03"), "file 3").unwrap();
        fs::write(b.join("d/b.bin"), vec![1u8; 4999]).unwrap();
        assert!(err(&a, &b, VerifyMode::Sample)
            .contains("d/b.bin: 5000 bytes in the source, 4999 restored"));
        fs::write(b.join("d/b.bin"), vec![1u8; 5000]).unwrap();
        fs::remove_file(b.join("d/link")).unwrap();
        symlink("a.txt", b.join("d/link")).unwrap();
        assert!(err(&a, &b, VerifyMode::Sample)
            .contains("d/link: symlink to ../a.txt in the source, to a.txt restored"));
        fs::remove_file(b.join("d/link")).unwrap();
        assert!(err(&a, &b, VerifyMode::Full).contains("d/link: missing from the restored tree"));
        symlink("../a.txt", b.join("d/link")).unwrap();
        fs::write(b.join("extra"), "").unwrap();
        assert!(err(&a, &b, VerifyMode::Full).contains("extra: not in the source snapshot"));
        fs::remove_file(b.join("extra")).unwrap();
        fs::remove_file(b.join("a.txt")).unwrap();
        fs::create_dir(b.join("a.txt")).unwrap();
        assert!(err(&a, &b, VerifyMode::Full)
            .contains("a.txt: a file in the source, a directory restored"));
        assert!(compare(&a, &b.join("nope"), VerifyMode::Full, 5).is_err());
    }

    #[test]
    fn hashes_computed_ahead_give_the_same_results_and_errors() {
        let (_s, a, b) = pair();
        for mode in [VerifyMode::Full, VerifyMode::Sample] {
            let plain = compare(&a, &b, mode, 5).unwrap();
            let pre = Prehash::start(&a, mode, 5);
            assert!(pre.is_some());
            assert_eq!(compare_with(&a, &b, mode, 5, pre).unwrap(), plain);
        }
        assert!(Prehash::start(&a, VerifyMode::None, 5).is_none());
        fs::write(b.join("d/e/f03"), "file X").unwrap();
        let e = compare_with(
            &a,
            &b,
            VerifyMode::Full,
            5,
            Prehash::start(&a, VerifyMode::Full, 5),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("d/e/f03: content differs"),
            "{e:#}"
        );
        fs::write(b.join("d/e/f03"), "file 3").unwrap();
        // Hashes out of step with the walk (the source changed under it) are not used.
        let pre = Prehash::start(&a, VerifyMode::Full, 5);
        std::thread::sleep(std::time::Duration::from_millis(50));
        fs::write(a.join("d/e/f03"), "file Y").unwrap();
        fs::write(b.join("d/e/f03"), "file Y").unwrap();
        fs::rename(a.join("a.txt"), a.join("z.txt")).unwrap();
        fs::rename(b.join("a.txt"), b.join("z.txt")).unwrap();
        let r = compare_with(&a, &b, VerifyMode::Full, 5, pre).unwrap();
        assert_eq!(r.files_hashed, 23);
        // Dropped before the comparison (a failed restore): the thread stops and is joined.
        drop(Prehash::start(&a, VerifyMode::Full, 5));
    }

    #[test]
    fn files_hashed_in_parallel_report_the_first_difference_in_path_order() {
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::new("verify-parallel");
        let (a, b) = (s.0.join("src"), s.0.join("dst"));
        for root in [&a, &b] {
            fs::create_dir_all(root.join("many")).unwrap();
            // More files than HASH_IN_FLIGHT, so submitting waits for results.
            for i in 0..600 {
                fs::write(root.join(format!("many/f{i:04}")), format!("file {i:04}")).unwrap();
            }
            fs::write(root.join("big"), vec![7u8; 3 << 20]).unwrap();
        }
        let r = compare(&a, &b, VerifyMode::Full, 5).unwrap();
        assert_eq!((r.files, r.files_hashed), (601, 601));
        assert_eq!(r.bytes_hashed, (3 << 20) + 600 * 9);
        // "big" sorts first and takes longest to hash; later files differ too.
        let mut big = vec![7u8; 3 << 20];
        big[(3 << 20) - 1] = 8;
        fs::write(b.join("big"), &big).unwrap();
        fs::write(b.join("many/f0100"), "file X100").unwrap();
        fs::write(b.join("many/f0500"), "file X500").unwrap();
        for _ in 0..3 {
            let e = err(&a, &b, VerifyMode::Full);
            assert!(e.contains("at big: content differs"), "{e}");
        }
        fs::write(b.join("big"), vec![7u8; 3 << 20]).unwrap();
        assert!(err(&a, &b, VerifyMode::Full).contains("at many/f0100: content differs"));
        // A later difference in metadata does not hide an earlier one in content...
        fs::remove_file(b.join("many/f0599")).unwrap();
        let e = err(&a, &b, VerifyMode::Full);
        assert!(e.contains("at many/f0100: content differs"), "{e}");
        // ...and an earlier one in metadata comes first.
        fs::set_permissions(b.join("many/f0050"), fs::Permissions::from_mode(0o600)).unwrap();
        let e = err(&a, &b, VerifyMode::Full);
        assert!(e.contains("at many/f0050: mode"), "{e}");
        // A different file type, earlier still.
        fs::set_permissions(b.join("many/f0050"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(a.join("many/f0050"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::remove_file(b.join("many/f0020")).unwrap();
        symlink("f0021", b.join("many/f0020")).unwrap();
        let e = err(&a, &b, VerifyMode::Full);
        assert!(
            e.contains("at many/f0020: a file in the source, a symlink restored"),
            "{e}"
        );
    }

    #[test]
    fn extended_attributes_are_compared() {
        let (_s, a, b) = pair();
        crate::xattr::set(&a.join("d/b.bin"), "user.tag", b"one").unwrap();
        assert!(err(&a, &b, VerifyMode::Sample)
            .contains("d/b.bin: extended attribute user.tag differs or is missing"));
        crate::xattr::set(&b.join("d/b.bin"), "user.tag", b"two").unwrap();
        assert!(err(&a, &b, VerifyMode::Sample).contains("extended attribute user.tag"));
        crate::xattr::set(&b.join("d/b.bin"), "user.tag", b"one").unwrap();
        crate::xattr::set(&b.join("d"), "user.dir", b"").unwrap();
        assert!(err(&a, &b, VerifyMode::Sample).contains("d: extended attribute user.dir"));
        crate::xattr::set(&a.join("d"), "user.dir", b"").unwrap();
        compare(&a, &b, VerifyMode::Full, 5).unwrap();
    }

    #[test]
    fn permission_bits_are_compared() {
        use std::os::unix::fs::PermissionsExt;
        let (_s, a, b) = pair();
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        set(&a.join("d/e/f05"), 0o4755);
        set(&b.join("d/e/f05"), 0o0755);
        assert!(err(&a, &b, VerifyMode::Sample)
            .contains("d/e/f05: mode 4755 in the source, 0755 restored"));
        set(&b.join("d/e/f05"), 0o4755);
        set(&a.join("d/e"), 0o1777);
        assert!(err(&a, &b, VerifyMode::Sample).contains("d/e: mode 1777 in the source"));
        set(&b.join("d/e"), 0o1777);
        compare(&a, &b, VerifyMode::Full, 5).unwrap();
    }
}
