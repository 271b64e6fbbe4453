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

fn hash_file(p: &Path) -> Result<(String, u64)> {
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
    Ok((crate::chunker::hex(&h.finalize()), n))
}

struct Walk<'a> {
    src: &'a Path,
    dst: &'a Path,
    /// Hash every `stride`-th regular file (1 = all, 0 = none).
    stride: u64,
    report: Report,
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
                let (x, n) = hash_file(&sp)?;
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

/// Compares `restored` with `source`; `VerifyMode::None` checks nothing.
pub fn compare(
    source: &Path,
    restored: &Path,
    mode: VerifyMode,
    sample_max_files: u64,
) -> Result<Report> {
    let stride = match mode {
        VerifyMode::None => return Ok(Report::default()),
        VerifyMode::Full => 1,
        VerifyMode::Sample => {
            let files = count_files(source)?;
            files.div_ceil(sample_max_files.max(1)).max(1)
        }
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
    };
    w.dir(Path::new(""))?;
    Ok(w.report)
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
