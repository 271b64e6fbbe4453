//! Transport benchmark for `contrib/bench.sh` (not part of the tool): uploads the same parts
//! to one multipart upload per path, through rust-s3's own request path
//! (`Bucket::put_multipart_chunk`, sync build: attohttpc) and through
//! btrfs_to_s3's `S3Store` (SigV4 from rust-s3's helpers, bytes over a keep-alive `ureq`
//! agent), with the same number of threads. Prints one table row per path: MB/s and the
//! client's own CPU seconds per GiB (the server's CPU is not counted).
//!
//!   transport_bench ENDPOINT BUCKET PARTS PART_MIB THREADS
//!
//! Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use btrfs_to_s3::store::s3::{Endpoint, S3Store};
use btrfs_to_s3::store::{Body, ObjectStore, PutOptions};

/// User plus system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data (all zeroes is valid), and getrusage only writes into
    // the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `upload(part_number)` for parts 1..=parts on `threads` threads; returns seconds.
fn drive(parts: u32, threads: usize, upload: &(dyn Fn(u32) -> Result<()> + Sync)) -> Result<f64> {
    let next = AtomicU32::new(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n > parts {
                            return Ok(());
                        }
                        upload(n)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow!("worker panicked"))?)
    })?;
    Ok(start.elapsed().as_secs_f64())
}

fn row(name: &str, bytes: u64, secs: f64, cpu: f64) {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "| {name} | {:8.1} | {:6.2} |",
        bytes as f64 / 1e6 / secs,
        cpu / gib
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, bucket, parts, part_mib, threads] = args.as_slice() else {
        return Err(anyhow!(
            "usage: transport_bench ENDPOINT BUCKET PARTS PART_MIB THREADS"
        ));
    };
    let parts: u32 = parts.parse().context("PARTS")?;
    let part_len = part_mib.parse::<usize>().context("PART_MIB")? << 20;
    let threads: usize = threads.parse().context("THREADS")?;
    let access = std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?;
    let bytes = parts as u64 * part_len as u64;
    // Incompressible, and the same bytes for both paths.
    let mut body = vec![0u8; part_len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in body.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }

    let ep = Endpoint {
        bucket: bucket.clone(),
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint.clone()),
        ..Default::default()
    };
    let store = S3Store::with_keys(&ep, threads + 1, &access, &secret).map_err(|e| anyhow!(e))?;
    let opts = PutOptions {
        storage_class: "STANDARD".into(),
        sse: btrfs_to_s3::config::Sse::Aes256,
        content_type: "application/octet-stream",
        kms_key_id: None,
        lock: None,
    };

    // rust-s3's own path: a new connection per request, MD5 and SHA-256 of every body.
    let creds = s3::creds::Credentials::new(Some(&access), Some(&secret), None, None, None)
        .context("rust-s3 credentials")?;
    let region = s3::Region::Custom {
        region: "us-east-1".into(),
        endpoint: endpoint.clone(),
    };
    let rb = s3::Bucket::new(bucket, region, creds)
        .context("rust-s3 bucket")?
        .with_path_style();
    // One multipart upload per path, aborted afterwards; prints the path's row.
    let measure = |name: &str, upload: &(dyn Fn(&str, &str, u32) -> Result<()> + Sync)| {
        let key = format!(
            "transport-bench/{}.bin",
            name.split(' ').next().unwrap_or("x")
        );
        let id = store.create_multipart(&key, &opts)?;
        let cpu0 = cpu_seconds();
        let secs = drive(parts, threads, &|n| {
            upload(&key, &id, n).with_context(|| format!("{name}: part {n}"))
        })?;
        row(name, bytes, secs, cpu_seconds() - cpu0);
        store.abort_multipart(&key, &id)?;
        anyhow::Ok(())
    };
    measure("rust-s3 put_multipart_chunk", &|key, id, n| {
        rb.put_multipart_chunk(&body, key, n, id, "application/octet-stream")?;
        Ok(())
    })?;
    measure("btrfs_to_s3 S3Store::upload_part (ureq)", &|key, id, n| {
        store.upload_part(key, id, n, Body::Bytes(&body))?;
        Ok(())
    })?;
    Ok(())
}
