//! What a hostile endpoint cannot do to [`S3Store`]: keep a listing going (cycling or
//! endless tokens, a flood of keys, past a stop signal), exhaust the stack with a deep
//! reply, or make a bounded GET read more than its cap. Canned replies from local
//! servers; each listing runs on a thread with a deadline, so a loop fails the test
//! instead of hanging it.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::*;
use crate::testing::{serve, HttpStub, Reply, Req};

fn store_at(url: &str, limits: listing::Limits, stop: Arc<AtomicBool>) -> S3Store {
    let ep = Endpoint {
        bucket: "bkt".into(),
        region: "eu-west-1".into(),
        endpoint_url: Some(url.to_string()),
        checksum: Checksum::None,
    };
    let mut s = S3Store::with_keys(&ep, 2, "AKIDEXAMPLE", "secret")
        .unwrap()
        .with_stop(stop);
    s.list_limits = limits;
    s
}

/// Runs `f` on a thread; a listing that does not end within 20 s fails the test.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the listing did not end within 20 s")
}

/// The value of `name=` in the request's query.
fn query(r: &Req, name: &str) -> Option<String> {
    let q = r.path.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map(str::to_string)
}

fn objects_page(keys: &[String], next: Option<&str>) -> String {
    let contents: String = keys
        .iter()
        .map(|k| format!("<Contents><Key>{k}</Key><Size>1</Size></Contents>"))
        .collect();
    let tail = match next {
        Some(t) => format!(
            "<IsTruncated>true</IsTruncated><NextContinuationToken>{t}</NextContinuationToken>"
        ),
        None => "<IsTruncated>false</IsTruncated>".into(),
    };
    format!("<?xml version=\"1.0\"?><ListBucketResult>{contents}{tail}</ListBucketResult>")
}

fn parts_page(n: u32, next: &str) -> String {
    format!(
        "<ListPartsResult><Part><PartNumber>{n}</PartNumber><Size>5</Size><ETag>\"e\"</ETag></Part>\
         <IsTruncated>true</IsTruncated><NextPartNumberMarker>{next}</NextPartNumberMarker></ListPartsResult>"
    )
}

fn uploads_page(key: &str, id: &str) -> String {
    format!(
        "<ListMultipartUploadsResult><Upload><Key>p/{key}</Key><UploadId>{id}</UploadId></Upload>\
         <IsTruncated>true</IsTruncated><NextKeyMarker>p/{key}</NextKeyMarker>\
         <NextUploadIdMarker>{id}</NextUploadIdMarker></ListMultipartUploadsResult>"
    )
}

fn requests(stub: &HttpStub) -> usize {
    stub.seen.lock().unwrap().len()
}

fn unbounded() -> (listing::Limits, Arc<AtomicBool>) {
    (listing::Limits::default(), Arc::new(AtomicBool::new(false)))
}

/// Tokens A, B, A, B, ...: each differs from the one before, so the old check (only
/// the previous token) followed them for ever, growing the result without bound.
#[test]
fn a_listing_whose_tokens_go_round_ends_with_an_error() {
    let stub = serve(|r| {
        let t = query(r, "continuation-token");
        let next = if t.as_deref() == Some("A") { "B" } else { "A" };
        let key = format!("p/{}", t.unwrap_or_default());
        Reply::from((200, objects_page(&[key], Some(next))))
    });
    let (limits, stop) = unbounded();
    let s = store_at(&stub.url, limits, stop);
    let e = bounded(move || s.list_objects("p/")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    let text = e.to_string();
    assert!(text.contains("ListObjectsV2 p/"), "{text}");
    assert!(text.contains("repeats the marker \"A\""), "{text}");
    assert_eq!(requests(&stub), 3);
}

/// The same with ListParts' part-number-marker: 1, 2, 1, 2, ...
#[test]
fn list_parts_whose_markers_go_round_ends_with_an_error() {
    let stub = serve(|r| {
        let next = match query(r, "part-number-marker").as_deref() {
            Some("1") => "2",
            _ => "1",
        };
        Reply::from((200, parts_page(1, next)))
    });
    let (limits, stop) = unbounded();
    let s = store_at(&stub.url, limits, stop);
    let e = bounded(move || s.list_parts("p/k", "up1")).unwrap_err();
    assert!(e.to_string().contains("ListParts p/k"), "{e}");
    assert!(e.to_string().contains("repeats the marker \"1\""), "{e}");
    assert_eq!(requests(&stub), 3);
}

/// The same with ListMultipartUploads' key-marker and upload-id-marker.
#[test]
fn list_uploads_whose_markers_go_round_ends_with_an_error() {
    let stub = serve(|r| {
        let next = match query(r, "upload-id-marker").as_deref() {
            Some("u1") => "u2",
            _ => "u1",
        };
        Reply::from((200, uploads_page("k", next)))
    });
    let (limits, stop) = unbounded();
    let s = store_at(&stub.url, limits, stop);
    let e = bounded(move || s.list_multipart_uploads("p/")).unwrap_err();
    assert!(e.to_string().contains("ListMultipartUploads p/"), "{e}");
    assert!(e.to_string().contains("\"p/k\" / \"u1\""), "{e}");
    assert_eq!(requests(&stub), 3);
}

/// A fresh token on every page and never IsTruncated=false: the page cap ends it.
#[test]
fn a_listing_that_never_ends_hits_the_page_cap() {
    let page = Arc::new(AtomicUsize::new(0));
    let p = page.clone();
    let stub = serve(move |_| {
        let n = p.fetch_add(1, Ordering::SeqCst);
        Reply::from((200, objects_page(&[], Some(&format!("t{n}")))))
    });
    let limits = listing::Limits {
        pages: 20,
        items: 100,
    };
    let s = store_at(&stub.url, limits, Arc::new(AtomicBool::new(false)));
    let e = bounded(move || s.list_objects("p/")).unwrap_err();
    assert!(e.to_string().contains("past 20 pages"), "{e}");
    assert_eq!(requests(&stub), 20);

    // Fresh keys on every page: the key cap ends it as soon as a page passes it.
    let n = Arc::new(AtomicUsize::new(0));
    let stub = serve(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<String> = (0..3).map(|j| format!("p/{i}-{j}")).collect();
        Reply::from((200, objects_page(&keys, Some(&format!("t{i}")))))
    });
    let limits = listing::Limits {
        pages: 50,
        items: 100,
    };
    let s = store_at(&stub.url, limits, Arc::new(AtomicBool::new(false)));
    let e = bounded(move || s.list_objects("p/")).unwrap_err();
    assert!(e.to_string().contains("more than 100 objects"), "{e}");
    assert_eq!(requests(&stub), 34);
}

/// SIGINT/SIGTERM set the run's cancel flag: the listing stops before the next page.
#[test]
fn the_stop_flag_ends_a_listing_between_pages() {
    let stop = Arc::new(AtomicBool::new(false));
    let (st, page) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
    let stub = serve(move |_| {
        let n = page.fetch_add(1, Ordering::SeqCst);
        if n == 2 {
            // The signal arrives while the third page is on its way.
            st.store(true, Ordering::SeqCst);
        }
        Reply::from((200, objects_page(&[], Some(&format!("t{n}")))))
    });
    let s = store_at(&stub.url, listing::Limits::default(), stop);
    let e = bounded(move || s.list_objects("p/")).unwrap_err();
    assert!(
        e.to_string().contains("stopped by a signal after 3 pages"),
        "{e}"
    );
    assert_eq!(requests(&stub), 3);
}

/// 1.4 million nested elements in under 10 MB: the old reader built the tree and the
/// process died of a stack overflow; now the reply is refused with its reason.
#[test]
fn a_deeply_nested_reply_is_refused() {
    let n = 1_400_000;
    let body = format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
    let stub = serve(move |_| Reply::from((200, body.clone())));
    let (limits, stop) = unbounded();
    let s = store_at(&stub.url, limits, stop);
    let e = bounded(move || s.list_objects("p/")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(
        e.to_string()
            .contains("refusing the reply: it nests elements deeper than 64 levels"),
        "{e}"
    );
}

/// A reply larger than any S3 reply is refused after reading the cap, not retried.
#[test]
fn an_oversized_reply_is_refused() {
    let body = format!(
        "<ListBucketResult>{}</ListBucketResult>",
        " ".repeat(MAX_REPLY_BYTES as usize)
    );
    let stub = serve(move |_| Reply::from((200, body.clone())));
    let (limits, stop) = unbounded();
    let s = store_at(&stub.url, limits, stop);
    let e = bounded(move || s.list_objects("p/")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert!(!e.is_transient());
    assert!(e.to_string().contains("larger than 16 MiB"), "{e}");
}

/// A server that sends an endless object: the bounded GET stops after its cap, and the
/// error gives the size the HEAD reports.
#[test]
fn a_bounded_get_reads_no_more_than_its_cap() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let Some((line, ..)) = crate::testing::read_request(&mut r) else {
                continue;
            };
            let head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1073741824\r\n\r\n";
            if c.write_all(head.as_bytes()).is_err() || line.starts_with("HEAD") {
                continue;
            }
            let block = vec![b'{'; 64 << 10];
            while c.write_all(&block).is_ok() {
                sent2.fetch_add(block.len(), Ordering::SeqCst);
            }
        }
    });
    let (limits, stop) = unbounded();
    let s = store_at(&url, limits, stop);
    let key = "p/subvol/a/full/manifest-20240101T000000Z.json";
    let Err(e) = bounded(move || super::super::get_bounded(&s, key, 1 << 20)) else {
        panic!("read over the cap")
    };
    assert_eq!(e.kind, ErrorKind::TooLarge);
    let text = e.to_string();
    assert!(text.contains(&format!("GET {key}")), "{text}");
    assert!(text.contains("the object is 1073741824 bytes"), "{text}");
    assert!(text.contains("the cap of 1048576 bytes (1 MiB)"), "{text}");
    // What the server got out before the client hung up: the cap and the socket buffers.
    std::thread::sleep(Duration::from_millis(200));
    assert!(sent.load(Ordering::SeqCst) < 64 << 20, "{sent:?}");
}
