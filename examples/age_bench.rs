//! CPU cost of the age layer (not part of the tool): encrypts MIB MiB of plaintext as
//! chunks of CHUNK_MIB MiB, each its own age file with a fresh `Sealing` (as the
//! backup pipeline would), written in 1 MiB pieces through `Encryptor`; then decrypts
//! them with `Decryptor`; and, for scale, hashes the same bytes with SHA-256 (what the
//! pipeline already does per chunk) and copies them into a chunk-sized buffer (the
//! encryptor's own copies are part of its row). Prints CPU seconds (user + system) per GiB for each.
//!
//!   cargo run --release --example age_bench [MIB [CHUNK_MIB]]     (default 1024 64)

use std::io::{Read, Write};
use std::time::Instant;

use btrfs_to_s3::age::{Decryptor, Encryptor, Identity, Sealing};
use sha2::Digest;

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

struct Measure {
    cpu: f64,
    wall: f64,
}

fn timed<T>(total: &mut Measure, f: impl FnOnce() -> T) -> T {
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let out = f();
    total.cpu += cpu_seconds() - c0;
    total.wall += w0.elapsed().as_secs_f64();
    out
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let mib = args.first().copied().unwrap_or(1024);
    let chunk_mib = args.get(1).copied().unwrap_or(64).max(1);
    let id = Identity::generate()?;
    let recipients = [id.recipient().clone()];
    let piece: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let new = || Measure {
        cpu: 0.0,
        wall: 0.0,
    };
    let (mut enc, mut dec, mut sha, mut copy) = (new(), new(), new(), new());
    let mut file =
        Vec::with_capacity(((chunk_mib << 20) + (chunk_mib << 20) / 4096 + 4096) as usize);
    let mut out = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < mib {
        let this = chunk_mib.min(mib - done);
        file.clear();
        timed(&mut enc, || -> anyhow::Result<()> {
            let sealing = Sealing::new(&recipients)?;
            let mut e = Encryptor::new(&sealing, &mut file)?;
            for _ in 0..this {
                e.write_all(&piece)?;
            }
            e.finish()?;
            Ok(())
        })?;
        let got = timed(&mut dec, || -> anyhow::Result<u64> {
            let mut d = Decryptor::new(&file[..], std::slice::from_ref(&id))?;
            let mut got = 0;
            loop {
                let n = d.read(&mut out)?;
                if n == 0 {
                    return Ok(got);
                }
                got += n as u64;
            }
        })?;
        anyhow::ensure!(got == this << 20, "decrypted {got} bytes of {}", this << 20);
        timed(&mut copy, || {
            file.clear();
            for _ in 0..this {
                file.extend_from_slice(&piece);
            }
            std::hint::black_box(&file);
        });
        timed(&mut sha, || {
            for _ in 0..this {
                std::hint::black_box(sha2::Sha256::digest(&piece));
            }
        });
        done += this;
    }
    let gib = mib as f64 / 1024.0;
    println!("| step | CPU s/GiB | wall s/GiB |");
    println!("| --- | --- | --- |");
    for (name, m) in [
        ("age encrypt (Encryptor)", &enc),
        ("age decrypt (Decryptor)", &dec),
        ("SHA-256 (for scale)", &sha),
        ("copy into a chunk buffer (for scale)", &copy),
    ] {
        println!("| {name} | {:.3} | {:.3} |", m.cpu / gib, m.wall / gib);
    }
    println!("{mib} MiB in {chunk_mib} MiB age files");
    Ok(())
}
