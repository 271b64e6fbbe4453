//! The bounds of one paginated listing (ListObjectsV2, ListParts, ListMultipartUploads):
//! a lying server cannot keep it going. Every page token is remembered (as a keyed hash,
//! so a listing's memory does not grow with the tokens' length) and a token seen before
//! ends the listing with an error, whatever cycle the server plays; the pages and the
//! items of one listing are capped; the run's stop flag (SIGINT/SIGTERM) is checked
//! before every page.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{ErrorKind, StoreError, StoreResult};

/// 100,000 pages of 1,000 keys each are ten times [`MAX_ITEMS`].
pub const MAX_PAGES: u64 = 100_000;
/// No prefix of this tool holds ten million objects (a 5 TiB full in the smallest
/// chunks, 1 MiB, is five million), and ten million listed objects take about 2 GB.
pub const MAX_ITEMS: usize = 10_000_000;

/// The caps of one listing; tests lower them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub pages: u64,
    pub items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pages: MAX_PAGES,
            items: MAX_ITEMS,
        }
    }
}

/// One listing in progress.
pub struct Pages<'a> {
    /// `ListObjectsV2 PREFIX`, as errors name it.
    op: &'a str,
    limits: Limits,
    stop: &'a AtomicBool,
    pages: u64,
    seen: HashSet<u64>,
    keyed: RandomState,
}

impl<'a> Pages<'a> {
    pub fn new(op: &'a str, limits: Limits, stop: &'a AtomicBool) -> Pages<'a> {
        Pages {
            op,
            limits,
            stop,
            pages: 0,
            seen: HashSet::new(),
            keyed: RandomState::new(),
        }
    }

    fn error(&self, message: String) -> StoreError {
        StoreError::new(ErrorKind::Permanent, self.op, message)
    }

    /// Before each request: the stop flag, then the page cap.
    pub fn next_page(&mut self) -> StoreResult<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(self.error(format!(
                "stopped by a signal after {} pages of the listing",
                self.pages
            )));
        }
        if self.pages >= self.limits.pages {
            return Err(self.error(format!(
                "the listing goes on past {} pages, more than any listing of this tool \
                 has: the server does not end it (is s3.endpoint_url an S3 service?)",
                self.limits.pages
            )));
        }
        self.pages += 1;
        Ok(())
    }

    /// After each page: `items` listed so far must be within the cap.
    pub fn check_items(&self, items: usize, what: &str) -> StoreResult<()> {
        if items > self.limits.items {
            return Err(self.error(format!(
                "the listing has more than {} {what}, more than this tool reads from one \
                 listing (is the prefix shared with something else?)",
                self.limits.items
            )));
        }
        Ok(())
    }

    /// The token (or markers) of the next page: an error when an earlier page had it,
    /// since the listing would then go round for ever.
    pub fn follow(&mut self, token: &[&str]) -> StoreResult<()> {
        let h = self.keyed.hash_one(token);
        if !self.seen.insert(h) {
            let shown: Vec<String> = token
                .iter()
                .map(|t| format!("{:?}", t.chars().take(80).collect::<String>()))
                .collect();
            return Err(self.error(format!(
                "the listing repeats the marker {} of an earlier page (after {} pages): \
                 the server's pages go round in a circle",
                shown.join(" / "),
                self.pages
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pages_items_and_the_stop_flag() {
        let stop = AtomicBool::new(false);
        let limits = Limits { pages: 5, items: 3 };
        let mut p = Pages::new("ListObjectsV2 p/", limits, &stop);
        p.next_page().unwrap();
        p.follow(&["A"]).unwrap();
        p.next_page().unwrap();
        p.follow(&["B"]).unwrap();
        p.next_page().unwrap();
        let e = p.follow(&["A"]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.to_string().contains("ListObjectsV2 p/"), "{e}");
        assert!(e.to_string().contains("repeats the marker \"A\""), "{e}");
        // A pair of markers is one token: the same key with another upload id is new.
        p.follow(&["k", "u1"]).unwrap();
        p.follow(&["k", "u2"]).unwrap();
        assert!(p.follow(&["k", "u1"]).is_err());
        p.next_page().unwrap();
        p.next_page().unwrap();
        let e = p.next_page().unwrap_err();
        assert!(e.to_string().contains("past 5 pages"), "{e}");
        p.check_items(3, "objects").unwrap();
        let e = p.check_items(4, "objects").unwrap_err();
        assert!(e.to_string().contains("more than 3 objects"), "{e}");
        let mut p = Pages::new("ListParts k", limits, &stop);
        stop.store(true, Ordering::SeqCst);
        let e = p.next_page().unwrap_err();
        assert!(e.to_string().contains("stopped by a signal"), "{e}");
    }
}
