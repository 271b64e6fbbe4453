//! Atomic file replacement: write a temp file in the same directory, fsync it, rename it
//! over the target, fsync the directory. A crash leaves the old file or the new one,
//! never half of either.
//!
//! The directory may be writable by others (a node_exporter textfile directory): the
//! temporary gets an unpredictable name and is created with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//! so a name planted there (a symlink to `/etc/shadow`, say) is never opened, only
//! stepped around; the rename then replaces the target's directory entry, never a file a
//! symlink at the target points to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Mode of a new file (before the umask), as `File::create` with the usual 022 umask
/// gave: the metrics textfile must stay readable by node_exporter.
const MODE: u32 = 0o644;

pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let prefix = format!(".{}.tmp.", name.to_string_lossy());
    // A random name, created exclusively (an existing name, symlink or not, is skipped
    // for another); the temporary is removed on every error path when `tmp` drops.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(12)
        .make_in(dir, |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE)
                .custom_flags(
                    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
                )
                .open(p)
        })
        .with_context(|| {
            format!(
                "creating a temporary file for {} in {}",
                path.display(),
                dir.display()
            )
        })?;
    let shown = tmp.path().display().to_string();
    tmp.as_file_mut()
        .write_all(bytes)
        .with_context(|| format!("writing {shown}"))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("fsync of {shown}"))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming {shown} to {}", path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of directory {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let d = std::env::temp_dir().join(format!("b2s3-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let p = d.join("deep/f.json");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.join("deep"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
        // Renaming onto a directory fails, and the temp file is removed.
        std::fs::create_dir_all(d.join("deep/dir")).unwrap();
        std::fs::write(d.join("deep/dir/x"), b"x").unwrap();
        assert!(write(&d.join("deep/dir"), b"x").is_err());
        assert_eq!(std::fs::read_dir(d.join("deep")).unwrap().count(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A user who can write the directory plants symlinks at every name the old code
    /// used (`.NAME.tmp.PID`, for our PID and the PIDs around it) and at the target:
    /// the write goes around them, and the files they point to are untouched.
    #[test]
    fn planted_symlinks_are_never_followed() {
        use std::os::unix::fs::symlink;
        let d = crate::testing::Scratch::new("atomic-planted");
        let victim = d.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = d.0.join("textfiles");
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        for pid in me.saturating_sub(200)..=me + 200 {
            symlink(&victim, dir.join(format!(".backup.prom.tmp.{pid}"))).unwrap();
        }
        let other = d.0.join("other-victim");
        std::fs::write(&other, b"also precious").unwrap();
        let target = dir.join("backup.prom");
        symlink(&other, &target).unwrap();
        write(&target, b"metrics\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&other).unwrap(), b"also precious");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the target is a file of its own"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"metrics\n");
        // Nothing but the planted links and the target is left behind.
        let left = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                !e.file_type().unwrap().is_symlink() && e.file_name() != "backup.prom"
            })
            .count();
        assert_eq!(left, 0);
    }
}
