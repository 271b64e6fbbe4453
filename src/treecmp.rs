//! The restored-tree comparison, the last step of a restore (`restore.verify_mode`; not
//! the `verify` command, whose engine is `check`): a restored tree against the source
//! snapshot: the same set of paths,
//! file types, permission bits (with setuid/setgid/sticky), owners, extended attributes,
//! symlink targets and file sizes, and SHA-256 of file contents (every file
//! in `full` mode, up to `sample_max_files` spread evenly in `sample` mode). Walks both
//! trees in lockstep, one directory at a time, so memory stays small. The first
//! difference, in sorted path order, fails with that path.

use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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

fn hash_file(p: &Path) -> Result<([u8; 32], u64)> {
    let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
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
                let (x, n) = match self.prehashed(rel) {
                    Some(h) => h,
                    None => hash_file(&sp)?,
                };
                let (y, _) = hash_file(&dp)?;
                if x != y {
                    return Err(self.fail(rel, "content differs (SHA-256)"));
                }
                self.report.files_hashed += 1;
                self.report.bytes_hashed += n;
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
    };
    // Dropping `pre` (after the walk, whatever its outcome) stops and joins its thread.
    w.dir(Path::new(""))?;
    Ok(w.report)
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
/// `stride`-th in `sample`). The comparison takes the hashes as they come, so the
/// restored tree's hashing overlaps whatever source hashing is left. Dropping it stops
/// the thread (within one read of 1 MiB) and joins it.
pub struct Prehash {
    stride: u64,
    rx: crossbeam_channel::Receiver<Prehashed>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
        let src = source.to_path_buf();
        let halt = stop.clone();
        let thread = std::thread::Builder::new()
            .name("verify-source".into())
            .spawn(move || {
                let mut w = PreWalk {
                    src: &src,
                    stride,
                    files: 0,
                    tx,
                    stop: &halt,
                };
                let _ = w.dir(Path::new(""));
            })
            .ok()?;
        Some(Prehash {
            stride,
            rx,
            stop,
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
                    let h = hash_file_until(&self.src.join(&rel), self.stop);
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

/// [`hash_file`] that gives up (`None`) when `stop` is set or on any error.
fn hash_file_until(p: &Path, stop: &std::sync::atomic::AtomicBool) -> Option<([u8; 32], u64)> {
    let mut f = File::open(p).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let k = f.read(&mut buf).ok()?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Some((h.finalize().into(), n))
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
