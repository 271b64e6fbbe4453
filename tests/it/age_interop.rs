//! `src/age` against the reference age implementation (Debian's `age` package, the Go
//! one): files we write decrypt with `age -d -i KEY`, files `age -r`/`age -R` write
//! decrypt with ours, multi-recipient files open with either key both ways, and the key
//! files `age-keygen` writes parse. Needs no root and no S3.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use btrfs_to_s3::age::{
    self, read_identity_file, read_recipients_file, Decryptor, Encryptor, Identity, Recipient,
    Sealing,
};

use crate::support::TempDir;

/// Fails (never skips) when the reference tools are missing, saying how to get them.
fn require_age() {
    for tool in ["age", "age-keygen"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "the age interop tests need `{tool}` (the Go reference implementation): \
             install it with `apt-get install -y age` (contrib/install-test-tools.sh does)"
        );
    }
}

/// `age-keygen -o DIR/NAME`: the identity file and its parsed identity.
fn keygen(dir: &Path, name: &str) -> (PathBuf, Identity) {
    let path = dir.join(name);
    run(Command::new("age-keygen").arg("-o").arg(&path));
    // age-keygen writes 0600 when it creates the file; say so if that ever changes.
    let mode = std::fs::metadata(&path)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode,
        0o600,
        "age-keygen wrote {} with mode {mode:o}",
        path.display()
    );
    let mut ids = read_identity_file(&path).expect("our parser reads age-keygen's file");
    assert_eq!(ids.len(), 1);
    let id = ids.remove(0);
    // `age-keygen -y` prints the recipient we derive.
    let public = run(Command::new("age-keygen").arg("-y").arg(&path));
    assert_eq!(public.trim(), id.recipient().as_str());
    (path, id)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn plaintext(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const SIZES: [usize; 7] = [0, 1, 65535, 65536, 65537, 3 * 65536, 3 * 1024 * 1024 + 5];

/// Our encryptor, streamed to a file through the `Write` adapter in uneven pieces.
fn encrypt_ours(sealing: &Sealing, data: &[u8], path: &Path) {
    let file = std::fs::File::create(path).expect("create");
    let mut enc = Encryptor::new(sealing, std::io::BufWriter::new(file)).expect("header");
    for piece in data.chunks(10_007) {
        enc.write_all(piece).expect("write");
    }
    enc.finish().expect("finish").flush().expect("flush");
}

fn decrypt_ours(path: &Path, ids: &[Identity]) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).expect("open");
    let mut d = Decryptor::new(file, ids).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    d.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn age_decrypt(key: &Path, file: &Path) -> std::process::Output {
    Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(key)
        .arg(file)
        .output()
        .expect("running age -d")
}

#[test]
fn our_age_files_decrypt_with_age_d() {
    require_age();
    let dir = TempDir::new("age-ours");
    let (key, id) = keygen(dir.path(), "key.txt");
    for len in SIZES {
        let data = plaintext(len);
        let sealing = Sealing::new(std::slice::from_ref(id.recipient())).expect("sealing");
        let file = dir.path().join(format!("ours-{len}.age"));
        encrypt_ours(&sealing, &data, &file);
        assert_eq!(
            std::fs::metadata(&file).expect("written").len(),
            age::ciphertext_size(len as u64, sealing.header().as_bytes().len() as u64)
        );
        let out = age_decrypt(&key, &file);
        assert!(
            out.status.success(),
            "age -d refused our {len}-byte file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == data, "age -d gave other bytes for {len}");
    }
    // age -d also refuses what ours refuses: a flipped payload byte.
    let sealing = Sealing::new(std::slice::from_ref(id.recipient())).expect("sealing");
    let file = dir.path().join("tampered.age");
    encrypt_ours(&sealing, &plaintext(1000), &file);
    let mut bytes = std::fs::read(&file).expect("read");
    let at = bytes.len() - 500;
    bytes[at] ^= 1;
    std::fs::write(&file, &bytes).expect("write");
    assert!(!age_decrypt(&key, &file).status.success());
    assert!(decrypt_ours(&file, &[id]).is_err());
}

#[test]
fn age_r_and_age_big_r_files_decrypt_with_ours() {
    require_age();
    let dir = TempDir::new("age-theirs");
    let (_key, id) = keygen(dir.path(), "key.txt");
    let recipients = dir.path().join("recipients.txt");
    std::fs::write(
        &recipients,
        format!("# backup host\n\n{}\n", id.recipient()),
    )
    .expect("write");
    assert_eq!(
        read_recipients_file(&recipients).expect("our -R parser"),
        vec![id.recipient().clone()]
    );
    for len in SIZES {
        let data = plaintext(len);
        let input = dir.path().join(format!("plain-{len}"));
        std::fs::write(&input, &data).expect("write");
        for (flag, value) in [
            ("-r", id.recipient().as_str().to_string()),
            ("-R", recipients.display().to_string()),
        ] {
            let file = dir.path().join(format!("theirs-{len}{flag}.age"));
            run(Command::new("age")
                .arg(flag)
                .arg(&value)
                .arg("-o")
                .arg(&file)
                .arg(&input));
            let got = decrypt_ours(&file, std::slice::from_ref(&id))
                .unwrap_or_else(|e| panic!("ours refused age {flag}'s {len}-byte file: {e}"));
            assert!(got == data, "ours gave other bytes for age {flag}, {len}");
        }
    }
}

#[test]
fn multi_recipient_files_open_with_either_key_both_ways() {
    require_age();
    let dir = TempDir::new("age-multi");
    let (key_a, a) = keygen(dir.path(), "a.txt");
    let (key_b, b) = keygen(dir.path(), "b.txt");
    let (key_c, c) = keygen(dir.path(), "c.txt");
    let data = plaintext(200_000);
    let input = dir.path().join("plain");
    std::fs::write(&input, &data).expect("write");

    let recipients: Vec<Recipient> = vec![a.recipient().clone(), b.recipient().clone()];
    let ours = dir.path().join("ours.age");
    encrypt_ours(&Sealing::new(&recipients).expect("sealing"), &data, &ours);
    for key in [&key_a, &key_b] {
        let out = age_decrypt(key, &ours);
        assert!(
            out.status.success(),
            "age -d -i {}: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == data);
    }
    assert!(!age_decrypt(&key_c, &ours).status.success());

    let theirs = dir.path().join("theirs.age");
    run(Command::new("age")
        .arg("-r")
        .arg(a.recipient().as_str())
        .arg("-r")
        .arg(b.recipient().as_str())
        .arg("-o")
        .arg(&theirs)
        .arg(&input));
    assert!(decrypt_ours(&theirs, std::slice::from_ref(&a)).expect("a") == data);
    assert!(decrypt_ours(&theirs, std::slice::from_ref(&b)).expect("b") == data);
    let err = decrypt_ours(&theirs, std::slice::from_ref(&c)).expect_err("c is no recipient");
    assert!(err.contains("cannot decrypt this file"), "{err}");
}

#[test]
fn an_age_keygen_identity_file_made_readable_by_others_is_refused() {
    require_age();
    let dir = TempDir::new("age-mode");
    let (key, _) = keygen(dir.path(), "key.txt");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = read_identity_file(&key).expect_err("0644");
    assert!(
        err.to_string()
            .starts_with(&format!("identity file {}: readable", key.display())),
        "{err}"
    );
}
