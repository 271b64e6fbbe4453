//! Opening a named file the user pointed us at (the config file, an identity or
//! recipients file) for reading, without waiting: `O_NONBLOCK`, so a FIFO or a device
//! planted at the path is refused as not a regular file instead of blocking the open or
//! being read forever. Reading a regular file is unaffected by the flag.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading if it is a regular file; `nofollow` also refuses a symbolic
/// link (`ELOOP`). Anything else is an error "not a regular file" (`ErrorKind::Other`).
pub fn open(path: &Path, nofollow: bool) -> std::io::Result<File> {
    use rustix::fs::OFlags;
    let mut flags = OFlags::NONBLOCK | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}
