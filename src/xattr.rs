//! Reads the extended attributes of a path, without following a symlink (`llistxattr`,
//! `lgetxattr`), for the verifier. With `F_SETPIPE_SZ` in `btrfs.rs` and the SHA-256
//! kernel in `sha256x2.rs`, the only `unsafe` in the crate; a file system without xattr
//! support reads as having none.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Calls `f(buf)` (a list/get syscall that returns a length or -1) until the value fits:
/// the size can change between the size query and the read.
fn read_sized(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = f(&mut []);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        let m = f(&mut buf);
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// All `(name, value)` pairs of `p`, sorted by name.
pub fn list(p: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let path = c_path(p)?;
    let names = match read_sized(|buf| {
        // SAFETY: `path` is NUL-terminated; the kernel writes at most `buf.len()` bytes.
        unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    }) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad xattr name"))?;
        let value = match read_sized(|buf| {
            // SAFETY: both strings are NUL-terminated; at most `buf.len()` bytes are written.
            unsafe {
                libc::lgetxattr(
                    path.as_ptr(),
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            }
        }) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((OsStr::from_bytes(name).to_os_string(), value));
    }
    out.sort();
    Ok(out)
}

/// The first name whose presence or value differs between two sorted lists.
pub fn first_difference(a: &[(OsString, Vec<u8>)], b: &[(OsString, Vec<u8>)]) -> Option<OsString> {
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return None,
            (Some((n, _)), None) | (None, Some((n, _))) => return Some(n.clone()),
            (Some((x, xv)), Some((y, yv))) => match x.cmp(y) {
                std::cmp::Ordering::Less => return Some(x.clone()),
                std::cmp::Ordering::Greater => return Some(y.clone()),
                std::cmp::Ordering::Equal if xv != yv => return Some(x.clone()),
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            },
        }
    }
}

/// Lossy display of an attribute name for messages.
pub fn name(n: &OsStr) -> String {
    n.to_string_lossy().into_owned()
}

/// Sets one attribute (tests only; the tool never writes xattrs itself).
#[cfg(test)]
pub(crate) fn set(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (c_path(p)?, CString::new(name)?);
    // SAFETY: NUL-terminated strings and a slice with its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scratch;

    fn set(p: &Path, name: &str, value: &[u8]) {
        super::set(p, name, value).unwrap();
    }

    fn v(pairs: &[(&str, &[u8])]) -> Vec<(OsString, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, x)| (OsString::from(n), x.to_vec()))
            .collect()
    }

    #[test]
    fn lists_names_and_values_sorted() {
        let s = Scratch::new("xattr");
        let f = s.0.join("f");
        std::fs::write(&f, "x").unwrap();
        // Some file systems used for /tmp (tmpfs before 6.6) refuse user xattrs.
        if let Err(e) = super::set(&f, "user.probe", b"") {
            panic!("user xattrs unsupported where Scratch lives: {e}");
        }
        set(&f, "user.b", b"2");
        set(&f, "user.a", &[7u8; 3000]);
        let l = list(&f).unwrap();
        let names: Vec<_> = l.iter().map(|(n, _)| name(n)).collect();
        assert_eq!(names, ["user.a", "user.b", "user.probe"]);
        assert_eq!(l[0].1, [7u8; 3000]);
        assert_eq!(l[1].1, b"2");
        assert!(list(&s.0.join("missing")).is_err());
    }

    #[test]
    fn first_difference_names_the_attribute() {
        let a = v(&[("user.a", b"1"), ("user.b", b"2")]);
        assert_eq!(first_difference(&a, &a), None);
        let b = v(&[("user.a", b"1"), ("user.b", b"3")]);
        assert_eq!(first_difference(&a, &b), Some("user.b".into()));
        let c = v(&[("user.b", b"2")]);
        assert_eq!(first_difference(&a, &c), Some("user.a".into()));
        assert_eq!(first_difference(&c, &a), Some("user.a".into()));
        let d = v(&[("user.a", b"1")]);
        assert_eq!(first_difference(&a, &d), Some("user.b".into()));
        assert_eq!(first_difference(&[], &d), Some("user.a".into()));
    }
}
