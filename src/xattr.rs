//! Reads the extended attributes of a path, without following a symlink (`llistxattr`,
//! `lgetxattr`, through rustix's safe calls), for the restored-tree comparison
//! (`treecmp`); a file system without xattr support reads as having none.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{lgetxattr, lgetxattr_query, llistxattr, llistxattr_query};
use rustix::io::Errno;

/// Asks for the size, then reads; again when the value grew in between (`ERANGE`).
fn read_sized(
    mut query: impl FnMut() -> rustix::io::Result<usize>,
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    loop {
        let mut buf = vec![0u8; query()?];
        if buf.is_empty() {
            return Ok(buf);
        }
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// All `(name, value)` pairs of `p`, sorted by name.
pub fn list(p: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let names = match read_sized(|| llistxattr_query(p), |buf| llistxattr(p, buf)) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let n = OsStr::from_bytes(name);
        let value = match read_sized(|| lgetxattr_query(p, n), |buf| lgetxattr(p, n, buf)) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push((n.to_os_string(), value));
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
    Ok(rustix::fs::lsetxattr(
        p,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
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
