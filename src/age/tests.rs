//! Unit tests of the age format: round trips at the block edges, reproducible ciphertext,
//! every region tampered, truncation and extension, wrong identities, swapped files, key
//! text parsing and the identity file's permission check.

use super::primitives::Aead;
use super::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

fn identity() -> Identity {
    Identity::generate().expect("OS RNG")
}

fn sealing_for(ids: &[&Identity]) -> Sealing {
    let recipients: Vec<Recipient> = ids.iter().map(|i| i.recipient().clone()).collect();
    Sealing::new(&recipients).expect("sealing")
}

/// Decrypts a whole file; the error is the age error, whether `new` or `read` failed.
fn decrypt(file: &[u8], ids: &[Identity]) -> Result<Vec<u8>, AgeError> {
    let mut d = Decryptor::new(file, ids)?;
    let mut out = Vec::new();
    d.read_to_end(&mut out)
        .map_err(|e| AgeError::from_io(&e).cloned().expect("an age error"))?;
    Ok(out)
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

#[test]
fn round_trips_at_block_edges_with_the_predicted_size() {
    let id = identity();
    for len in [0, 1, 65535, 65536, 65537, 3 * 65536, 5 * 1024 * 1024 + 123] {
        let s = sealing_for(&[&id]);
        let p = plaintext(len);
        let c = encrypt_to_vec(&s, &p);
        let header_len = s.header().as_bytes().len() as u64;
        assert_eq!(
            c.len() as u64,
            ciphertext_size(len as u64, header_len),
            "{len}"
        );
        assert_eq!(plaintext_size(c.len() as u64, header_len), Some(len as u64));
        assert_eq!(
            decrypt(&c, std::slice::from_ref(&id)).expect("decrypts"),
            p,
            "{len}"
        );
    }
}

#[test]
fn an_empty_plaintext_is_one_empty_final_block_and_a_block_multiple_ends_full() {
    let id = identity();
    let s = sealing_for(&[&id]);
    let h = s.header().as_bytes().len();
    assert_eq!(encrypt_to_vec(&s, b"").len(), h + 16 + 16);
    assert_eq!(
        encrypt_to_vec(&s, &plaintext(65536)).len(),
        h + 16 + 65536 + 16
    );
    assert_eq!(
        encrypt_to_vec(&s, &plaintext(2 * 65536)).len(),
        h + 16 + 2 * (65536 + 16)
    );
    assert_eq!(plaintext_size(h as u64 + 16, h as u64), None);
    assert_eq!(plaintext_size(h as u64 + 16 + 15, h as u64), None);
    assert_eq!(plaintext_size(h as u64 + 16 + 65552 + 16, h as u64), None);
    assert_eq!(plaintext_size(3, h as u64), None);
}

#[test]
fn the_same_sealing_gives_the_same_bytes_however_the_writes_are_split() {
    let id = identity();
    let s = sealing_for(&[&id]);
    let p = plaintext(3 * 65536 + 77);
    let whole = encrypt_to_vec(&s, &p);
    // Rebuilt from what a journal keeps: key bytes, header bytes, nonce.
    let kept = Sealing::from_parts(
        FileKey::from_bytes(*s.file_key().expose_secret()),
        s.header().as_bytes(),
        s.nonce(),
    )
    .expect("rebuilds");
    for piece in [1usize, 1000, 65536, 65537, 200_000] {
        let mut enc = Encryptor::new(&kept, Vec::new()).expect("header");
        for part in p.chunks(piece) {
            enc.write_all(part).expect("write");
        }
        enc.write_all(b"").expect("empty write");
        assert!(enc.finish().expect("finish") == whole, "pieces of {piece}");
    }
    // A fresh sealing (new key, header, nonce) gives other bytes.
    assert_ne!(encrypt_to_vec(&sealing_for(&[&id]), &p), whole);
}

#[test]
fn a_kept_sealing_is_refused_when_key_and_header_do_not_belong_together() {
    let id = identity();
    let a = sealing_for(&[&id]);
    let b = sealing_for(&[&id]);
    let mixed = Sealing::from_parts(
        FileKey::from_bytes(*a.file_key().expose_secret()),
        b.header().as_bytes(),
        a.nonce(),
    );
    assert_eq!(mixed.err(), Some(AgeError::HeaderMac));
    let mut cut = a.header().as_bytes().to_vec();
    cut.pop();
    assert_eq!(
        Sealing::from_parts(a.file_key().clone(), &cut, a.nonce()).err(),
        Some(AgeError::TruncatedHeader)
    );
}

#[test]
fn a_built_header_parses_back_to_itself() {
    let (x, y) = (identity(), identity());
    let s = sealing_for(&[&x, &y]);
    let h = Header::parse(s.header().as_bytes()).expect("parses");
    assert_eq!(&h, s.header());
    assert_eq!(h.stanzas().len(), 2);
    assert!(h.stanzas().iter().all(|st| st.args[0] == "X25519"));
    let text = std::str::from_utf8(h.as_bytes()).expect("ASCII");
    assert!(
        text.starts_with("age-encryption.org/v1\n-> X25519 "),
        "{text}"
    );
    assert!(text.ends_with('\n') && text.contains("\n--- "), "{text}");
}

#[test]
fn every_recipient_of_a_multi_recipient_file_decrypts_it_and_others_cannot() {
    let (x, y, z) = (identity(), identity(), identity());
    let s = sealing_for(&[&x, &y]);
    let c = encrypt_to_vec(&s, &plaintext(100_000));
    assert_eq!(
        decrypt(&c, std::slice::from_ref(&x)).expect("x"),
        plaintext(100_000)
    );
    assert_eq!(
        decrypt(&c, std::slice::from_ref(&y)).expect("y"),
        plaintext(100_000)
    );
    assert_eq!(
        decrypt(&c, &[z.clone(), y]).expect("z, y"),
        plaintext(100_000)
    );
    let err = decrypt(&c, &[z]).expect_err("wrong identity");
    assert_eq!(
        err,
        AgeError::NoIdentityMatches {
            identities: 1,
            stanzas: 2
        }
    );
    assert!(
        err.to_string().contains("cannot decrypt this file"),
        "{err}"
    );
}

#[test]
fn every_region_tampered_fails() {
    let id = identity();
    let s = sealing_for(&[&id]);
    let p = plaintext(3 * 65536 + 500);
    let c = encrypt_to_vec(&s, &p);
    let h = s.header().as_bytes().len();
    let text = std::str::from_utf8(s.header().as_bytes()).expect("ASCII");
    let share_at = text.find("X25519 ").expect("stanza") + 7;
    let body_at = share_at + text[share_at..].find('\n').expect("line end") + 1;
    let mac_at = text.find("--- ").expect("mac") + 4;
    let payload = h + 16;
    let cases: Vec<(&str, usize)> = vec![
        ("version line", 3),
        ("stanza type", share_at - 3),
        ("ephemeral share", share_at + 5),
        ("wrapped file key", body_at + 2),
        ("MAC line marker", mac_at - 2),
        ("MAC", mac_at + 10),
        ("payload nonce", h + 3),
        ("block 0", payload + 10),
        ("block 0 tag", payload + 65536 + 3),
        ("block 1", payload + 65552 + 65000),
        ("block 2 tag", payload + 3 * 65552 - 1),
        ("final block", payload + 3 * 65552 + 100),
        ("last byte", c.len() - 1),
    ];
    for (region, at) in cases {
        let mut bad = c.clone();
        // A change that keeps base64 text base64: swap two letters.
        bad[at] = match bad[at] {
            b'A' => b'B',
            b'a' => b'b',
            x if at < h && x.is_ascii_alphanumeric() => {
                if x == b'Z' {
                    b'Y'
                } else {
                    b'Z'
                }
            }
            x => x ^ 0x01,
        };
        let err = decrypt(&bad, std::slice::from_ref(&id)).expect_err(region);
        let expected_block = match region {
            "payload nonce" | "block 0" | "block 0 tag" => Some(0),
            "block 1" => Some(1),
            "block 2 tag" => Some(2),
            "final block" | "last byte" => Some(3),
            _ => None,
        };
        match expected_block {
            Some(b) => assert_eq!(err, AgeError::Block { block: b }, "{region}"),
            None => assert!(
                !matches!(err, AgeError::Block { .. }),
                "{region}: a header change is caught in the header: {err}"
            ),
        }
    }
}

#[test]
fn a_truncated_or_extended_file_fails_and_never_reads_as_complete() {
    let id = identity();
    let s = sealing_for(&[&id]);
    let p = plaintext(2 * 65536 + 10);
    let c = encrypt_to_vec(&s, &p);
    let h = s.header().as_bytes().len();
    let payload = h + 16;
    let mut cuts: Vec<usize> = (0..payload + 20).step_by(7).collect();
    cuts.extend([
        payload - 1,
        payload,
        payload + 1,
        payload + 65552 - 1,
        payload + 65552,
        payload + 2 * 65552,
        payload + 2 * 65552 + 16,
        c.len() - 1,
    ]);
    for cut in cuts {
        let err = decrypt(&c[..cut], std::slice::from_ref(&id)).expect_err("cut short");
        if cut == payload {
            assert_eq!(err, AgeError::NoPayload);
        } else if cut == payload + 65552 {
            assert_eq!(err, AgeError::NoFinalBlock { after: 0 });
        } else if cut == payload + 2 * 65552 {
            assert_eq!(err, AgeError::NoFinalBlock { after: 1 });
        } else if cut == payload + 2 * 65552 + 16 {
            assert_eq!(err, AgeError::EmptyFinalBlock { block: 2 });
        } else if cut > payload {
            assert!(matches!(err, AgeError::Block { .. }), "{cut}: {err}");
        }
        assert!(!err.to_string().is_empty());
    }
    for extra in [&b"x"[..], &[0u8; 16][..], &[7u8; 65552][..]] {
        let mut long = c.clone();
        long.extend_from_slice(extra);
        assert!(matches!(
            decrypt(&long, std::slice::from_ref(&id)),
            Err(AgeError::Block { block: 2 })
        ));
    }
    // A full final block followed by more data.
    let full = encrypt_to_vec(&s, &plaintext(65536));
    let mut long = full.clone();
    long.push(0);
    assert_eq!(
        decrypt(&long, std::slice::from_ref(&id)),
        Err(AgeError::Block { block: 0 })
    );
}

#[test]
fn the_verified_plaintext_before_a_bad_block_is_all_that_is_released() {
    let id = identity();
    let s = sealing_for(&[&id]);
    let p = plaintext(3 * 65536);
    let mut c = encrypt_to_vec(&s, &p);
    let at = s.header().as_bytes().len() + 16 + 65552 + 5;
    c[at] ^= 0x80;
    let mut d = Decryptor::new(&c[..], std::slice::from_ref(&id)).expect("header fine");
    let mut out = Vec::new();
    let err = d.read_to_end(&mut out).expect_err("block 1 altered");
    assert_eq!(AgeError::from_io(&err), Some(&AgeError::Block { block: 1 }));
    assert_eq!(out, p[..65536]);
    // The failure sticks.
    let mut more = [0u8; 10];
    assert!(d.read(&mut more).is_err());
}

#[test]
fn a_header_spliced_onto_another_files_payload_or_a_swapped_file_is_refused() {
    let id = identity();
    let a = sealing_for(&[&id]);
    let b = sealing_for(&[&id]);
    let ca = encrypt_to_vec(&a, &plaintext(70_000));
    let cb = encrypt_to_vec(&b, &plaintext(70_000));
    let ha = a.header().as_bytes().len();
    let hb = b.header().as_bytes().len();
    // Header (and nonce) of A, payload of B.
    let mut spliced = ca[..ha + 16].to_vec();
    spliced.extend_from_slice(&cb[hb + 16..]);
    assert_eq!(
        decrypt(&spliced, std::slice::from_ref(&id)),
        Err(AgeError::Block { block: 0 })
    );
    // Header of A, nonce and payload of B.
    let mut spliced = ca[..ha].to_vec();
    spliced.extend_from_slice(&cb[hb..]);
    assert_eq!(
        decrypt(&spliced, std::slice::from_ref(&id)),
        Err(AgeError::Block { block: 0 })
    );
    // B's whole file where A was expected: valid age, caught by the recorded digest.
    let d = Decryptor::new(&cb[..], std::slice::from_ref(&id)).expect("valid file");
    assert_eq!(
        d.expect_header(&a.header().digest()),
        Err(AgeError::OtherFile)
    );
    assert_eq!(d.expect_header(&b.header().digest()), Ok(()));
}

#[test]
fn an_empty_final_block_after_a_full_one_is_refused() {
    // Built by hand with the payload key: our encryptor never writes this shape.
    let id = identity();
    let s = sealing_for(&[&id]);
    let aead = Aead::new(&s.file_key().payload_key(&s.nonce()));
    let mut file = s.header().as_bytes().to_vec();
    file.extend_from_slice(&s.nonce().0);
    let mut block = plaintext(65536);
    aead.seal([0; 12], &mut block);
    file.extend_from_slice(&block);
    let mut last = Vec::new();
    let mut nonce = [0u8; 12];
    nonce[10] = 1;
    nonce[11] = 1;
    aead.seal(nonce, &mut last);
    file.extend_from_slice(&last);
    assert_eq!(
        decrypt(&file, std::slice::from_ref(&id)),
        Err(AgeError::EmptyFinalBlock { block: 1 })
    );
}

#[test]
fn malformed_headers_are_refused_with_bounded_reads() {
    let id = identity();
    let ids = std::slice::from_ref(&id);
    let s = sealing_for(&[&id]);
    let c = encrypt_to_vec(&s, b"hello");
    let text = String::from_utf8_lossy(s.header().as_bytes()).into_owned();
    assert_eq!(decrypt(b"", ids), Err(AgeError::TruncatedHeader));
    assert_eq!(
        decrypt(b"age-encryption", ids),
        Err(AgeError::TruncatedHeader)
    );
    assert_eq!(decrypt(b"\x7fELF\x02\x01", ids), Err(AgeError::NotAge));
    assert_eq!(decrypt(&[b'x'; 100_000], ids), Err(AgeError::NotAge));
    assert_eq!(
        decrypt(b"age-encryption.org/v2\n", ids),
        Err(AgeError::UnsupportedVersion)
    );
    // CRLF line ends.
    let crlf = c
        .iter()
        .take(text.len())
        .flat_map(|&b| {
            if b == b'\n' {
                vec![b'\r', b'\n']
            } else {
                vec![b]
            }
        })
        .collect::<Vec<u8>>();
    assert!(matches!(
        decrypt(&crlf, ids),
        Err(AgeError::Header { line: 1, .. })
    ));
    // An endless stanza line and an endless header stop at their bounds.
    let mut long = b"age-encryption.org/v1\n-> X25519 ".to_vec();
    long.extend(std::iter::repeat_n(b'A', 20_000));
    assert!(matches!(
        decrypt(&long, ids),
        Err(AgeError::Header { line: 2, .. })
    ));
    let mut many = b"age-encryption.org/v1\n".to_vec();
    while many.len() <= MAX_HEADER_LEN {
        many.extend_from_slice(b"-> grease\n\n");
    }
    let err = decrypt(&many, ids).expect_err("too large");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    // Unknown stanzas are skipped; the X25519 one still opens the file.
    let mut grease = b"age-encryption.org/v1\n-> some-other-type x y\nAAAA\n".to_vec();
    grease.extend_from_slice(&c["age-encryption.org/v1\n".len()..]);
    // The MAC covers the header, so the added stanza is caught there.
    assert_eq!(decrypt(&grease, ids), Err(AgeError::HeaderMac));
    // A malformed X25519 stanza is fatal.
    let bad = text.replacen("-> X25519 ", "-> X25519 extra ", 1);
    let mut file = bad.into_bytes();
    file.extend_from_slice(&c[text.len()..]);
    assert!(matches!(decrypt(&file, ids), Err(AgeError::Stanza { .. })));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let id = identity();
    let s = sealing_for(&[&id]);
    let key_hex: String = s
        .file_key()
        .expose_secret()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secret = id.expose_secret_text();
    let shown = format!("{:?} {:?} {:?} {:?}", s, s.file_key(), id, [&id]);
    assert!(!shown.contains(&key_hex), "{shown}");
    assert!(!shown.contains(&*format!("{:?}", s.file_key().expose_secret())));
    assert!(!shown.contains(secret.as_str()), "{shown}");
    assert!(!shown.contains(&secret[16..40]), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

// --- key text ---

const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

#[test]
fn recipients_parse_and_have_a_sha256_fingerprint() {
    let r = Recipient::parse(RECIPIENT).expect("valid");
    assert_eq!(r.as_str(), RECIPIENT);
    assert_eq!(r.to_string(), RECIPIENT);
    // `printf %s age1… | sha256sum | cut -c1-16`
    use sha2::Digest as _;
    let full: String = sha2::Sha256::digest(RECIPIENT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r.fingerprint(), full[..16]);
    let id = identity();
    let again = Recipient::parse(id.recipient().as_str()).expect("own recipient");
    assert_eq!(&again, id.recipient());
    assert_eq!(
        Identity::parse(&id.expose_secret_text())
            .expect("own text")
            .recipient(),
        id.recipient()
    );
}

#[test]
fn bad_recipients_say_what_is_wrong_without_quoting_the_value() {
    let id = identity();
    let secret = id.expose_secret_text();
    let mut flipped = RECIPIENT.to_string();
    flipped.replace_range(10..11, "q");
    let low_order = {
        let hrp = bech32::Hrp::parse("age").expect("hrp");
        bech32::encode_lower::<bech32::Bech32>(hrp, &[0u8; 32]).expect("encodes")
    };
    let bech32m = {
        let hrp = bech32::Hrp::parse("age").expect("hrp");
        bech32::encode_lower::<bech32::Bech32m>(hrp, &[9u8; 32]).expect("encodes")
    };
    let cases: Vec<(String, &str)> = vec![
        (secret.to_string(), "is an identity (a secret key)"),
        (secret.to_lowercase(), "is an identity (a secret key)"),
        (
            "ssh-ed25519 AAAAC3Nz".into(),
            "SSH recipients are not supported",
        ),
        (RECIPIENT.to_uppercase(), "expected age1"),
        (flipped, "bad Bech32"),
        (RECIPIENT[..40].into(), "bad Bech32"),
        (low_order, "low-order"),
        (bech32m, "bad Bech32"),
        (
            "age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t".into(),
            "plugin",
        ),
        (String::new(), "expected age1"),
    ];
    for (value, want) in cases {
        let err = Recipient::parse(&value).expect_err(&value);
        let text = err.to_string();
        assert!(text.contains(want), "{value}: {text}");
        if value.len() > 8 {
            assert!(!text.contains(&value[4..]), "{text}");
        }
    }
}

#[test]
fn recipient_lists_and_files_name_the_position() {
    let id = identity();
    let other = id.recipient().to_string();
    let list = parse_recipient_list(&[RECIPIENT, &other]).expect("two");
    assert_eq!(list.len(), 2);
    let err = parse_recipient_list(&[RECIPIENT, "nope"]).expect_err("bad");
    assert_eq!(err.position, Position::Index(1));
    assert!(err.to_string().starts_with("[1]: "), "{err}");
    let err = parse_recipient_list(&[RECIPIENT, RECIPIENT]).expect_err("dup");
    assert_eq!(err.to_string(), "[1]: the same recipient as [0]");
    assert!(parse_recipient_list::<&str>(&[])
        .expect_err("empty")
        .to_string()
        .contains("no recipients"));

    let file = format!("# backup keys\n\n{RECIPIENT}\r\n  {other}  \n# recovery\n");
    assert_eq!(parse_recipients_file(&file).expect("file").len(), 2);
    let err = parse_recipients_file(&format!("# a\n{RECIPIENT}\n\nage1bad\n")).expect_err("bad");
    assert_eq!(err.position, Position::Line(4));
    assert!(err.to_string().starts_with("line 4: "), "{err}");
    let err = parse_recipients_file(&format!("{RECIPIENT}\n{RECIPIENT}\n")).expect_err("dup");
    assert_eq!(err.to_string(), "line 2: the same recipient as line 1");
    assert!(parse_recipients_file("# nothing\n\n").is_err());

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("recipients.txt");
    std::fs::write(&path, "# x\nage1nope\n").expect("write");
    let err = read_recipients_file(&path).expect_err("bad");
    assert_eq!(
        err.to_string(),
        format!(
            "recipients file {}: line 2: not a valid age1… recipient (bad Bech32 encoding or checksum)",
            path.display()
        )
    );
}

#[test]
fn an_identity_file_is_read_only_when_only_its_owner_can_read_it() {
    let (x, y) = (identity(), identity());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key.txt");
    let text = format!(
        "# created: 2024-01-01T00:00:00Z\n# public key: {}\n{}\n\n{}\n",
        x.recipient(),
        &*x.expose_secret_text(),
        &*y.expose_secret_text()
    );
    std::fs::write(&path, &text).expect("write");
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = read_identity_file(&path).expect_err("too open");
        assert_eq!(
            err.to_string(),
            format!(
                "identity file {}: readable or writable by group or others (mode {mode:04o}): \
                 run `chmod 600` on it",
                path.display()
            )
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ids = read_identity_file(&path).expect("0600 is fine");
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0].recipient(), x.recipient());
    assert_eq!(ids[1].recipient(), y.recipient());

    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let err = read_identity_file(&link).expect_err("symlink");
    assert!(err.to_string().contains("a symbolic link"), "{err}");
    let err = read_identity_file(dir.path()).expect_err("directory");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // A FIFO planted at the path is refused at once, for both kinds of key file (an
    // open that waited for a writer would hang the run).
    let fifo = dir.path().join("fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    let err = read_identity_file(&fifo).expect_err("fifo");
    assert!(err.to_string().ends_with(": not a regular file"), "{err}");
    let err = read_recipients_file(&fifo).expect_err("fifo");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = read_recipients_file(dir.path()).expect_err("directory");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = read_identity_file(&dir.path().join("missing")).expect_err("missing");
    assert!(err.to_string().contains("cannot open"), "{err}");

    // A damaged line is named, not quoted.
    let mut damaged = x.expose_secret_text().to_string();
    damaged.replace_range(20..21, if &damaged[20..21] == "Q" { "P" } else { "Q" });
    std::fs::write(&path, format!("# key\n{damaged}\n")).expect("write");
    let err = read_identity_file(&path).expect_err("damaged");
    let shown = err.to_string();
    assert!(
        shown.contains(": line 2: not a valid AGE-SECRET-KEY-1"),
        "{shown}"
    );
    assert!(!shown.contains(&damaged[16..]), "{shown}");
    std::fs::write(&path, "# only comments\n").expect("write");
    assert!(read_identity_file(&path)
        .expect_err("empty")
        .to_string()
        .contains("no identities"));
    std::fs::write(&path, format!("{RECIPIENT}\n")).expect("write");
    assert!(read_identity_file(&path)
        .expect_err("a recipient")
        .to_string()
        .contains("line 1: not an age X25519 identity"));
}
