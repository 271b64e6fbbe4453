//! The guard against real streams (captured from btrfs send 6.x: a full with a directory,
//! a hard link, an xattr and an absolute symlink, and an incremental with a rename) and
//! against doctored ones built with [`build`].

use super::build::Stream;
use super::*;

/// `btrfs send snap1` (protocol 1).
const FULL: &str = "62747266732d73747265616d000100000029000000010001494f7c0f000500736e6170310100100082fde361ebd9604b9b43c1737fc3495a0200080007000000000000001c000000130002372d8c0f000000060008000000000000000000070008000000000000000000100000001200595575350f00000005000800ed0100000000000018000000040053a9fb6b0f0008006f3235372d372d30030008000101000000000000110000000900111ccbc70f0008006f3235372d372d3010000100641d0000001300a5d1788d0f00010064060008000000000000000000070008000000000000000000110000001200b209fb130f0001006405000800ed01000000000000180000000300738533b60f0008006f3235382d372d300300080002010000000000001400000009003a6f2a5c0f0008006f3235382d372d3010000400686172640f0000000a00ade397610f000300642f661100040068617264170000000d00ef411fab0f000400686172640d000600757365722e780e000100791b0000000f000cb18ae10f000400686172641200080000000000000000001300030068690a20000000130020fa4d930f00040068617264060008000000000000000000070008000000000000000000140000001200406f70580f0004006861726405000800a4010000000000003800000014009b994fbc0f000400686172640b000c00fa20136b00000000cb426f390a000c00fa20136b00000000cb426f3909000c00fa20136b00000000ca5d263a270000000800c1d66a870f0008006f3235392d372d3003000800030100000000000011000b002f6574632f706173737764110000000900ec5be5bb0f0008006f3235392d372d30100001006c1d0000001300bcfb32f90f0001006c060008000000000000000000070008000000000000000000350000001400465098600f0001006c0b000c00fa20136b00000000cb4bac390a000c00fa20136b00000000cb4bac3909000c00fa20136b00000000cb4bac393400000014002ce38f270f0000000b000c00fa20136b00000000cb30f5380a000c00fa20136b00000000cb54e93909000c00fa20136b00000000cb54e939350000001400e5657a340f000100640b000c00fa20136b00000000cb426f390a000c00fa20136b00000000cb426f3909000c00fa20136b00000000cb426f39000000001500506cc99d";
/// `btrfs send -p snap1 snap2`.
const INCREMENTAL: &str = "62747266732d73747265616d0001000000490000000200e11e950c0f000500736e61703201001000dc63dfb4abac194e92b752089cabd3250200080008000000000000001400100082fde361ebd9604b9b43c1737fc3495a1500080007000000000000000a0000000900c81151990f000100641000010065200000000f001f2017990f000400686172641200080000000000000000001300080068690a6d6f72650a3800000014003d8040bc0f000400686172640b000c00fa20136b00000000cb426f390a000c00fa20136b00000000ca811a3b09000c00fa20136b00000000ca811a3b350000001400f590e9040f000100650b000c00fa20136b00000000cb426f390a000c00fa20136b00000000cb426f3909000c00fa20136b00000000c98a573b340000001400fc43736d0f0000000b000c00fa20136b00000000cb30f5380a000c00fa20136b00000000c98a573b09000c00fa20136b00000000c98a573b000000001500506cc99d";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Feeds `data` in writes of `step` bytes; what came out and the outcome. The origin is
/// the one the first command claims (a snapshot of any parent): see [`pass_from`].
fn pass(data: &[u8], name: &str, step: usize) -> (Vec<u8>, Result<Received, Refused>) {
    let snapshot = data.get(HEADER_LEN + 4..HEADER_LEN + 6) == Some(&[2, 0][..]);
    let origin = if snapshot {
        Origin::After(None)
    } else {
        Origin::Full
    };
    pass_from(data, name, step, origin)
}

/// [`pass`] with the origin given.
fn pass_from(
    data: &[u8],
    name: &str,
    step: usize,
    origin: Origin,
) -> (Vec<u8>, Result<Received, Refused>) {
    let mut g = Guard::new(
        [("c0", data.len() as u64 / 2), ("c1", data.len() as u64)],
        name,
        origin,
    );
    let mut out = Vec::new();
    let mut w = g.writer(&mut out);
    for piece in data.chunks(step) {
        if let Err(e) = w.write_all(piece) {
            let r = refusal(&e).cloned().expect("a refusal");
            return (out, Err(r));
        }
    }
    let r = g.finish().cloned();
    (out, r)
}

#[test]
fn real_streams_pass_whole_and_split_anywhere() {
    for (hex, name, uuid) in [
        (FULL, "snap1", "82fde361-ebd9-604b-9b43-c1737fc3495a"),
        (INCREMENTAL, "snap2", "dc63dfb4-abac-194e-92b7-52089cabd325"),
    ] {
        let data = unhex(hex);
        for step in [1, 2, 3, 7, 10, 17, 64, 100, 4096] {
            let (out, r) = pass(&data, name, step);
            assert_eq!(out, data, "{name} step {step}");
            let r = r.unwrap_or_else(|e| panic!("{name} step {step}: {e}"));
            assert_eq!(
                r,
                Received {
                    name: name.into(),
                    uuid: uuid.into()
                }
            );
        }
    }
}

#[test]
fn the_builder_writes_the_crc_btrfs_send_writes() {
    let real = unhex(FULL);
    // The first command of the real stream: subvol "snap1", its UUID, ctransid 7.
    let uuid: [u8; 16] = real[0x28..0x38].try_into().unwrap();
    let built = Stream::new(1)
        .command(1, &[(15, b"snap1"), (1, &uuid), (2, &7u64.to_le_bytes())])
        .bytes();
    assert_eq!(built, real[..built.len()]);
}

fn good() -> Stream {
    Stream::new(1).subvol("data", [7; 16]).mkfile("o257-1-0")
}

fn refused(s: Vec<u8>) -> String {
    let (_, r) = pass(&s, "data", 5);
    let e = r.expect_err("refused");
    // Whatever the split, the same refusal.
    assert_eq!(pass(&s, "data", s.len()).1.expect_err("refused"), e);
    e.0
}

#[test]
fn the_destructive_symlink_and_every_path_escape_are_refused() {
    for (s, what) in [
        (
            good().symlink("../x", "/srv/victim").end(),
            "\"../x\" has a `..` component",
        ),
        (good().symlink("d/../../x", "/").end(), "`..`"),
        (good().mkfile("/etc/passwd").end(), "is absolute"),
        (good().mkfile("").end(), "path \"\" is empty"),
        (good().mkfile("a//b").end(), "empty component"),
        (good().mkfile("./a").end(), "`.` component"),
        (good().mkfile("a\0b").end(), "NUL"),
        (
            good().command(9, &[(15, b"a"), (16, b"../b")]).end(),
            "path_to \"../b\"",
        ),
        (
            good()
                .command(10, &[(15, b"a"), (17, b"../../etc/shadow")])
                .end(),
            "link target",
        ),
        (
            good()
                .command(16, &[(15, b"a"), (22, b"/x"), (20, &[0; 16])])
                .end(),
            "clone_path \"/x\" is absolute",
        ),
    ] {
        let e = refused(s.bytes());
        assert!(e.contains(what), "{what}: {e}");
        assert!(e.starts_with("chunk c"), "names the chunk: {e}");
        assert!(
            e.contains("send stream command 3 ("),
            "names the command: {e}"
        );
    }
    let e = refused(good().symlink("../x", "/srv/victim").end().bytes());
    assert!(e.contains("command 3 (symlink)"), "{e}");
}

#[test]
fn a_symlink_may_point_anywhere_and_root_metadata_has_an_empty_path() {
    let s = good()
        .symlink("l", "/etc/passwd")
        .command(
            19,
            &[
                (15, b""),
                (6, &0u64.to_le_bytes()),
                (7, &0u64.to_le_bytes()),
            ],
        )
        .command(18, &[(15, b""), (5, &0o755u64.to_le_bytes())])
        .end()
        .bytes();
    assert!(pass(&s, "data", 3).1.is_ok());
}

#[test]
fn the_stream_must_create_the_manifests_subvolume_first_and_only() {
    let e = refused(Stream::new(1).mkfile("victim").end().bytes());
    assert!(e.contains("must start by creating its subvolume"), "{e}");
    let e = refused(Stream::new(1).subvol("other", [1; 16]).end().bytes());
    assert!(e.contains("creates subvolume \"other\""), "{e}");
    let e = refused(Stream::new(1).subvol("../data", [1; 16]).end().bytes());
    assert!(e.contains("`..`"), "{e}");
    let e = refused(good().subvol("data", [2; 16]).end().bytes());
    assert!(e.contains("a second subvolume"), "{e}");
}

/// `btrfs receive` finds a snapshot's and a clone's source by UUID anywhere on the target
/// filesystem: a doctored stream could copy any subvolume there (the root filesystem,
/// another user's) into the restored tree. Only the chain's own subvolumes may be named.
#[test]
fn a_stream_may_build_only_on_its_parent_and_clone_only_from_itself_or_it() {
    const PARENT: &str = "82fde361-ebd9-604b-9b43-c1737fc3495a";
    let incremental = unhex(INCREMENTAL);
    let after = |p: &str| Origin::After(Some(p.to_string()));
    assert!(pass_from(&incremental, "snap2", 7, after(PARENT)).1.is_ok());
    let refused_from = |s: &[u8], name: &str, origin: Origin| {
        let e = pass_from(s, name, 5, origin.clone())
            .1
            .expect_err("refused");
        assert_eq!(
            pass_from(s, name, s.len(), origin).1.expect_err("refused"),
            e
        );
        e.0
    };
    let other = "00000000-0000-0000-0000-000000000009";
    let e = refused_from(&incremental, "snap2", after(other));
    assert!(
        e.contains(&format!(
            "it snapshots subvolume {PARENT}, not the previous backup's {other}"
        )) && e.contains("command 1 (snapshot)"),
        "{e}"
    );
    // A full backup's stream creates an empty subvolume; an incremental's snapshots.
    let e = refused_from(&incremental, "snap2", Origin::Full);
    assert!(
        e.contains("a full backup's stream must create a new subvolume"),
        "{e}"
    );
    let e = refused_from(&good().end().bytes(), "data", Origin::After(None));
    assert!(e.contains("must snapshot its parent"), "{e}");
    let e = refused_from(
        &Stream::new(1)
            .command(2, &[(15, b"data"), (1, &[7; 16])])
            .end()
            .bytes(),
        "data",
        Origin::After(None),
    );
    assert!(e.contains("no 16-byte source UUID"), "{e}");

    // Clones: from the subvolume itself and from the parent, nothing else.
    let clone = |s: Stream, from: [u8; 16]| {
        s.command(
            16,
            &[
                (15, b"a"),
                (18, &0u64.to_le_bytes()),
                (19, &4096u64.to_le_bytes()),
                (20, &from),
                (21, &1u64.to_le_bytes()),
                (22, b"b"),
                (23, &0u64.to_le_bytes()),
            ],
        )
    };
    let own = clone(good(), [7; 16]).end().bytes();
    assert!(pass_from(&own, "data", 3, Origin::Full).1.is_ok());
    let e = refused_from(&clone(good(), [9; 16]).end().bytes(), "data", Origin::Full);
    assert!(
        e.contains("clones from subvolume 09090909-0909-0909-0909-090909090909, which is neither")
            && e.contains("command 3 (clone)"),
        "{e}"
    );
    let inc = || Stream::new(1).snapshot("data", [7; 16], [8; 16]);
    let parent = "08080808-0808-0808-0808-080808080808";
    for from in [[7; 16], [8; 16]] {
        let s = clone(inc(), from).end().bytes();
        assert!(pass_from(&s, "data", 3, after(parent)).1.is_ok());
        assert!(pass_from(&s, "data", 3, Origin::After(None)).1.is_ok());
    }
    let e = refused_from(&clone(inc(), [9; 16]).end().bytes(), "data", after(parent));
    assert!(e.contains("which is neither"), "{e}");
    let e = refused_from(
        &inc().command(16, &[(15, b"a"), (22, b"b")]).end().bytes(),
        "data",
        after(parent),
    );
    assert!(
        e.contains("command 2 (clone)") && e.contains("no 16-byte source UUID"),
        "{e}"
    );
}

#[test]
fn framing_lies_are_refused() {
    let e = refused(b"not a stream at all, just bytes".to_vec());
    assert!(e.contains("not a btrfs send stream"), "{e}");
    let e = refused(Stream::new(9).end().bytes());
    assert!(e.contains("protocol 9"), "{e}");
    let e = refused(good().command(99, &[]).end().bytes());
    assert!(e.contains("unknown command 99"), "{e}");
    let e = refused(good().command(3, &[(200, b"x")]).end().bytes());
    assert!(e.contains("unknown attribute 200"), "{e}");
    let mut huge = good().bytes();
    huge.extend_from_slice(&(64u32 << 20).to_le_bytes());
    huge.extend_from_slice(&[3, 0, 0, 0, 0, 0]);
    let e = refused(huge);
    assert!(e.contains("claims 67108864 bytes"), "{e}");
    // An attribute whose length runs past its command.
    let mut s = good().command(3, &[(15, b"abc")]).bytes();
    let n = s.len();
    s[n - 5] = 200;
    let e = refused(s);
    assert!(e.contains("runs past its command"), "{e}");
    let e = refused([good().end().bytes(), b"x".to_vec()].concat());
    assert!(e.contains("data after the end command"), "{e}");
}

#[test]
fn a_truncated_stream_is_refused_at_its_end() {
    let s = good().end().bytes();
    for cut in [0, 5, 17, 20, s.len() - 1] {
        let (_, r) = pass(&s[..cut], "data", 4);
        let e = r.expect_err("truncated").0;
        assert!(
            e.contains("truncated") || e.contains("inside a command"),
            "{cut}: {e}"
        );
    }
    let (_, r) = pass(&good().bytes(), "data", 4);
    assert!(r.unwrap_err().0.contains("without its end command"));
}

#[test]
fn nothing_of_a_refused_command_is_passed_on() {
    let head = good().bytes();
    let s = Stream::new(1)
        .subvol("data", [7; 16])
        .mkfile("o257-1-0")
        .symlink("../x", "/srv/victim")
        .end()
        .bytes();
    for step in [1, 9, 64, s.len()] {
        let (out, r) = pass(&s, "data", step);
        assert!(r.is_err());
        assert!(
            out.len() <= head.len(),
            "step {step}: {} > {}",
            out.len(),
            head.len()
        );
        assert_eq!(out, head[..out.len()]);
    }
}

#[test]
fn the_chunk_named_is_the_one_where_the_command_starts() {
    let s = good().symlink("../x", "/").end().bytes();
    let at = good().bytes().len() as u64;
    let mut g = Guard::new([("first", at + 3), ("second", 1000)], "data", Origin::Full);
    let mut out = Vec::new();
    let e = g.writer(&mut out).write_all(&s).unwrap_err();
    let r = refusal(&e).unwrap();
    assert!(r.0.starts_with("chunk first: "), "{r}");
    let mut g = Guard::new([("first", at), ("second", 1000)], "data", Origin::Full);
    let e = g.writer(&mut out).write_all(&s).unwrap_err();
    assert!(refusal(&e).unwrap().0.starts_with("chunk second: "));
}

#[test]
fn protocol_2_data_runs_to_the_end_of_its_command() {
    // An encoded_write whose data (no length since protocol 2) holds bytes that would
    // read as a path attribute with `..` if it were parsed as attributes.
    let mut s = Stream::new(2).subvol("data", [7; 16]).mkfile("f").bytes();
    let mut payload = Vec::new();
    payload.extend_from_slice(&15u16.to_le_bytes());
    payload.extend_from_slice(&1u16.to_le_bytes());
    payload.push(b'f');
    payload.extend_from_slice(&19u16.to_le_bytes());
    payload.extend_from_slice(&[15, 0, 4, 0, b'.', b'.', b'/', b'x']);
    s.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    s.extend_from_slice(&25u16.to_le_bytes());
    s.extend_from_slice(&[0; 4]);
    s.extend_from_slice(&payload);
    s.extend_from_slice(&Stream::new(2).end().bytes()[17..]);
    assert!(pass(&s, "data", 6).1.is_ok());
}
