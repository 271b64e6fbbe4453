//! The restore's staging directory beside `--target`: created mode 0700, pinned by a
//! descriptor opened `O_NOFOLLOW`, and the one place that deletes, makes writable or moves
//! out what `btrfs receive` put there. Each of those acts only on an entry that `lstat`
//! shows is a real directory (not a link) under the staging directory we created, that
//! `btrfs subvolume show` calls a subvolume, and whose received UUID is the one the
//! stream's first command carried (`sendstream::Received`; a receive cut short has none
//! yet). Anything else there is left alone and reported.

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::btrfs::Btrfs;
use crate::event;
use crate::sendstream::Received;

pub struct Staging {
    path: PathBuf,
    dir: OwnedFd,
    /// The directory we created (device, inode): the path must still name it.
    id: (u64, u64),
}

/// Whether a received subvolume must have finished (its received UUID set).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Yes,
    MaybeNot,
}

impl Staging {
    /// Creates `path` (which must not exist) and pins it.
    pub fn create(path: &Path) -> Result<Staging> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating the staging directory {}", path.display()))?;
        let dir = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the staging directory {}", path.display()))?;
        let st = rustix::fs::fstat(&dir)
            .with_context(|| format!("reading the staging directory {}", path.display()))?;
        Ok(Staging {
            path: path.to_path_buf(),
            dir,
            id: (st.st_dev, st.st_ino),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The staging path still names the directory we created (not a link, not another).
    fn pinned(&self) -> Result<()> {
        let st = rustix::fs::lstat(&self.path)
            .with_context(|| format!("reading the staging directory {}", self.path.display()))?;
        if (st.st_dev, st.st_ino) != self.id {
            bail!(
                "the staging directory {} was replaced while the restore ran: leaving it alone",
                self.path.display()
            );
        }
        Ok(())
    }

    /// The path of `r` in staging, when it is the subvolume we received (see the module
    /// comment); otherwise why not.
    pub fn subvolume(&self, btrfs: &dyn Btrfs, r: &Received, done: Finished) -> Result<PathBuf> {
        self.pinned()?;
        let path = self.path.join(&r.name);
        let st = rustix::fs::statat(&self.dir, r.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("{} is not there", path.display()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            bail!(
                "{} is not a directory (a link or a file), so not the subvolume the stream \
                 created: left alone",
                path.display()
            );
        }
        let info = btrfs
            .show(&path)
            .with_context(|| format!("{} is not a subvolume: left alone", path.display()))?;
        match (&info.received_uuid, done) {
            (Some(u), _) if u.eq_ignore_ascii_case(&r.uuid) => Ok(path),
            (None, Finished::MaybeNot) => Ok(path),
            (got, _) => bail!(
                "{} has received UUID {}, but the stream created {}: not ours, left alone",
                path.display(),
                got.as_deref().unwrap_or("(none)"),
                r.uuid
            ),
        }
    }

    /// Moves `r` to `target` (an absolute path on the same filesystem), from the pinned
    /// directory. Called right after [`Staging::subvolume`] checked it and it was made
    /// writable (which clears its received UUID), so only its place and type are
    /// checked again here.
    pub fn move_out(&self, r: &Received, target: &Path) -> Result<()> {
        self.pinned()?;
        let from = self.path.join(&r.name);
        let st = rustix::fs::statat(&self.dir, r.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("{} is not there", from.display()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            bail!("{} is no longer a directory: left alone", from.display());
        }
        rustix::fs::renameat(&self.dir, r.name.as_str(), rustix::fs::CWD, target)
            .with_context(|| format!("moving {} to {}", from.display(), target.display()))
    }

    /// Deletes the subvolume `r` (finished or not) and waits for its space.
    pub fn delete(&self, btrfs: &dyn Btrfs, r: &Received, done: Finished) -> Result<()> {
        let p = self.subvolume(btrfs, r, done)?;
        btrfs
            .delete_subvolume(&p)
            .with_context(|| format!("deleting {} from staging", p.display()))
    }

    /// Deletes what we received (`received`), reports anything else, and removes the
    /// directory when it is empty.
    pub fn clean(self, btrfs: &dyn Btrfs, received: &[Received]) {
        if let Err(e) = self.pinned() {
            event!(
                Warn,
                "staging_left",
                path = self.path.display(),
                error = format!("{e:#}")
            );
            return;
        }
        let mut left = 0usize;
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let name = e.file_name();
                let ours = received
                    .iter()
                    .find(|r| name.as_os_str() == r.name.as_str());
                let outcome = match ours {
                    Some(r) => self.delete(btrfs, r, Finished::MaybeNot),
                    None => Err(anyhow::anyhow!(
                        "{} is not a subvolume this restore received: left alone",
                        e.path().display()
                    )),
                };
                if let Err(err) = outcome {
                    left += 1;
                    event!(
                        Warn,
                        "staging_entry_left",
                        path = e.path().display(),
                        error = format!("{err:#}")
                    );
                }
            }
        }
        if left > 0 {
            event!(
                Warn,
                "staging_left",
                path = self.path.display(),
                entries = left,
                hint = "inspect and remove it by hand"
            );
        } else if let Err(e) = std::fs::remove_dir(&self.path) {
            event!(
                Warn,
                "staging_remove_failed",
                path = self.path.display(),
                error = e
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeBtrfs, Scratch};

    fn received(name: &str) -> Received {
        Received {
            name: name.into(),
            uuid: "00000000-0000-0000-0000-000000000001".into(),
        }
    }

    #[test]
    fn a_link_or_a_stranger_in_staging_is_left_alone() {
        let dir = Scratch::new("staging");
        let victim = dir.0.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), "keep").unwrap();
        let st = Staging::create(&dir.0.join("staging")).unwrap();
        let mode = std::fs::metadata(st.path()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        let btrfs = FakeBtrfs::default();
        // The name the stream created is a link to a host directory.
        std::os::unix::fs::symlink(&victim, st.path().join("snap")).unwrap();
        let e = st
            .subvolume(&btrfs, &received("snap"), Finished::MaybeNot)
            .unwrap_err();
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
        // A real directory with another received UUID is not ours either.
        std::fs::create_dir(st.path().join("other")).unwrap();
        btrfs.received_uuids.lock().unwrap().insert(
            st.path().join("other"),
            "00000000-0000-0000-0000-000000000002".into(),
        );
        let e = st
            .subvolume(&btrfs, &received("other"), Finished::Yes)
            .unwrap_err();
        assert!(format!("{e:#}").contains("not ours"), "{e:#}");
        // Ours, cut short (no received UUID yet): deleted.
        std::fs::create_dir(st.path().join("partial")).unwrap();
        let path = st.path().to_path_buf();
        st.clean(
            &btrfs,
            &[received("snap"), received("other"), received("partial")],
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("precious")).unwrap(),
            "keep"
        );
        let calls = btrfs.calls();
        assert_eq!(
            calls,
            vec![format!("delete {}", path.join("partial").display())]
        );
        // What is not ours stays for a person to look at, and so does the directory.
        assert!(path.join("snap").symlink_metadata().is_ok());
        assert!(path.join("other").is_dir());
    }

    #[test]
    fn a_replaced_staging_directory_is_not_used() {
        let dir = Scratch::new("staging-moved");
        let st = Staging::create(&dir.0.join("staging")).unwrap();
        std::fs::create_dir(dir.0.join("elsewhere")).unwrap();
        std::fs::create_dir(dir.0.join("elsewhere/snap")).unwrap();
        std::fs::rename(st.path(), dir.0.join("moved")).unwrap();
        std::os::unix::fs::symlink(dir.0.join("elsewhere"), st.path()).unwrap();
        let btrfs = FakeBtrfs::default();
        let e = st
            .subvolume(&btrfs, &received("snap"), Finished::MaybeNot)
            .unwrap_err();
        assert!(format!("{e:#}").contains("was replaced"), "{e:#}");
        st.clean(&btrfs, &[received("snap")]);
        assert!(btrfs.calls().is_empty());
        assert!(dir.0.join("elsewhere/snap").is_dir());
    }
}
