//! `restore --plan`: what a restore of a chain would read, thaw and cost, worked out from
//! the manifests and one HEAD per chunk (`archive::survey`) without spending anything (no
//! RestoreObject, no GET of a chunk, no lock). Owns the price table the estimates use (AWS
//! S3 list prices in `us-east-1`, with the date they were taken) and the plan's text line,
//! text report and `--json` document. The estimates are list prices times counts; the
//! bill also depends on free tiers, the region and the provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::repo::archive::{is_archive, ChunkState, RestoreHeader};
use crate::repo::Chain;

/// The day the prices below were taken from AWS's published S3 pricing and its archive
/// retrieval documentation.
pub const PRICES_TAKEN: &str = "2026-12-04";
/// The region the prices are for; other regions and other S3 providers differ.
pub const PRICES_REGION: &str = "us-east-1";
/// AWS bills per GB of 2^30 bytes.
const GIB: f64 = (1u64 << 30) as f64;

/// The price and time of one restore tier for one archive class.
#[derive(Clone, Copy, Debug)]
pub struct Retrieval {
    pub class: &'static str,
    pub tier: &'static str,
    pub usd_per_gib: f64,
    pub usd_per_1000_requests: f64,
    /// The longest typical time AWS gives until the restored copy is readable, in hours.
    pub hours_max: f64,
}

/// Archive retrieval (RestoreObject) prices in `us-east-1`, taken on [`PRICES_TAKEN`].
/// Expedited is not offered for DEEP_ARCHIVE.
pub const RETRIEVALS: &[Retrieval] = &[
    Retrieval {
        class: "GLACIER",
        tier: "Expedited",
        usd_per_gib: 0.03,
        usd_per_1000_requests: 10.0,
        hours_max: 5.0 / 60.0,
        // AWS: "1-5 minutes".
    },
    Retrieval {
        class: "GLACIER",
        tier: "Standard",
        usd_per_gib: 0.01,
        usd_per_1000_requests: 0.05,
        hours_max: 5.0,
        // AWS: "3-5 hours".
    },
    Retrieval {
        class: "GLACIER",
        tier: "Bulk",
        usd_per_gib: 0.0,
        usd_per_1000_requests: 0.0,
        hours_max: 12.0,
        // AWS: "5-12 hours".
    },
    Retrieval {
        class: "DEEP_ARCHIVE",
        tier: "Standard",
        usd_per_gib: 0.02,
        usd_per_1000_requests: 0.10,
        hours_max: 12.0,
        // AWS: "within 12 hours".
    },
    Retrieval {
        class: "DEEP_ARCHIVE",
        tier: "Bulk",
        usd_per_gib: 0.0025,
        usd_per_1000_requests: 0.025,
        hours_max: 48.0,
        // AWS: "within 48 hours".
    },
];

/// What reading an object costs once it is readable, per class: (class, USD per GiB
/// retrieved, USD per 1,000 GET requests), `us-east-1`, taken on [`PRICES_TAKEN`].
pub const READS: &[(&str, f64, f64)] = &[
    ("STANDARD", 0.0, 0.0004),
    ("INTELLIGENT_TIERING", 0.0, 0.0004),
    ("STANDARD_IA", 0.01, 0.001),
    ("ONEZONE_IA", 0.01, 0.001),
    ("GLACIER_IR", 0.03, 0.01),
    ("GLACIER", 0.0, 0.0004),
    ("DEEP_ARCHIVE", 0.0, 0.0004),
];

/// Data transfer out of AWS to the internet, USD per GiB (the first tier past the monthly
/// free allowance): paid when the restore runs outside AWS, whatever the tier.
pub const TRANSFER_OUT_USD_PER_GIB: f64 = 0.09;

pub const TIERS: &[&str] = &["Standard", "Bulk", "Expedited"];

fn retrieval(class: &str, tier: &str) -> Option<&'static Retrieval> {
    RETRIEVALS
        .iter()
        .find(|r| r.class == class && r.tier == tier)
}

fn read_price(class: &str) -> (f64, f64) {
    READS
        .iter()
        .find(|(c, _, _)| *c == class)
        .map_or((0.0, 0.0004), |(_, g, r)| (*g, *r))
}

/// Objects and bytes of one storage class in the chain (each chunk key once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassRow {
    pub class: String,
    pub objects: u64,
    pub bytes: u64,
    pub readable_objects: u64,
    pub readable_bytes: u64,
    /// Archived, a restore already under way (requested earlier).
    pub thawing_objects: u64,
    /// Archived with no restore: what a restore would request.
    pub to_restore_objects: u64,
    pub to_restore_bytes: u64,
}

/// One restore tier's estimate for the whole chain.
#[derive(Clone, Debug, PartialEq)]
pub struct TierRow {
    pub tier: &'static str,
    /// Classes with chunks to restore that do not offer this tier.
    pub not_offered_for: Vec<String>,
    /// The longest typical thaw among the classes to restore (0: nothing to thaw).
    pub thaw_hours_max: f64,
    pub restore_requests: u64,
    pub retrieval_usd: f64,
    pub request_usd: f64,
}

impl TierRow {
    pub fn total_usd(&self) -> f64 {
        self.retrieval_usd + self.request_usd
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub subvolume: String,
    /// (key, kind, chunks, stream bytes, chunk storage class), oldest first.
    pub manifests: Vec<(String, String, usize, u64, String)>,
    pub classes: Vec<ClassRow>,
    pub objects: u64,
    pub bytes: u64,
    /// The tier a restore would use (config or `--restore-tier`).
    pub tier: String,
    pub tiers: Vec<TierRow>,
    /// Ranged GETs the download makes (one per piece of `part_size_bytes`), and what they
    /// and the per-GiB fees of instant-access classes cost: the same for every tier.
    pub get_requests: u64,
    pub read_usd: f64,
    pub transfer_out_usd: f64,
    pub target: PathBuf,
    pub filesystem: String,
    pub space_needed: u64,
    pub space_free: u64,
}

/// Works out the plan from the chain and the chunks' HEADs (`survey`, each key once).
#[allow(clippy::too_many_arguments)]
pub fn make(
    subvolume: &str,
    chain: &Chain,
    chunks: &[ChunkState],
    piece_size: u64,
    tier: &str,
    target: &Path,
    filesystem: &str,
    space: (u64, u64),
) -> Plan {
    let mut classes: BTreeMap<String, ClassRow> = BTreeMap::new();
    let (mut objects, mut bytes) = (0u64, 0u64);
    for c in chunks {
        let row = classes.entry(c.class.clone()).or_insert_with(|| ClassRow {
            class: c.class.clone(),
            ..Default::default()
        });
        row.objects += 1;
        row.bytes = row.bytes.saturating_add(c.size);
        objects += 1;
        bytes = bytes.saturating_add(c.size);
        if c.readable() {
            row.readable_objects += 1;
            row.readable_bytes = row.readable_bytes.saturating_add(c.size);
        } else if c.restore == RestoreHeader::Ongoing {
            row.thawing_objects += 1;
        } else {
            row.to_restore_objects += 1;
            row.to_restore_bytes = row.to_restore_bytes.saturating_add(c.size);
        }
    }
    let tiers = TIERS
        .iter()
        .map(|t| {
            let mut row = TierRow {
                tier: t,
                not_offered_for: Vec::new(),
                thaw_hours_max: 0.0,
                restore_requests: 0,
                retrieval_usd: 0.0,
                request_usd: 0.0,
            };
            for c in classes.values().filter(|c| is_archive(&c.class)) {
                if c.to_restore_objects == 0 && c.thawing_objects == 0 {
                    continue;
                }
                let Some(r) = retrieval(&c.class, t) else {
                    if c.to_restore_objects > 0 {
                        row.not_offered_for.push(c.class.clone());
                    }
                    continue;
                };
                row.thaw_hours_max = row.thaw_hours_max.max(r.hours_max);
                row.restore_requests += c.to_restore_objects;
                row.retrieval_usd += c.to_restore_bytes as f64 / GIB * r.usd_per_gib;
                row.request_usd += c.to_restore_objects as f64 / 1000.0 * r.usd_per_1000_requests;
            }
            row
        })
        .collect();
    // Every reference is downloaded (a chunk two manifests share, twice).
    let piece = piece_size.max(1);
    let (mut get_requests, mut read_usd, mut read_bytes) = (0u64, 0.0f64, 0u64);
    let class_of: BTreeMap<&str, &str> = chunks
        .iter()
        .map(|c| (c.key.as_str(), c.class.as_str()))
        .collect();
    for (_, m) in &chain.links {
        for c in &m.chunks {
            let class = class_of
                .get(c.key.as_str())
                .copied()
                .unwrap_or(m.s3.storage_class.as_str());
            let (per_gib, per_1000) = read_price(class);
            let n = c.size.div_ceil(piece);
            get_requests += n;
            read_bytes = read_bytes.saturating_add(c.size);
            read_usd += c.size as f64 / GIB * per_gib + n as f64 / 1000.0 * per_1000;
        }
    }
    Plan {
        subvolume: subvolume.to_string(),
        manifests: chain
            .links
            .iter()
            .map(|(k, m)| {
                (
                    k.to_string(),
                    m.kind.as_str().to_string(),
                    m.chunks.len(),
                    m.total_bytes,
                    m.s3.storage_class.clone(),
                )
            })
            .collect(),
        classes: classes.into_values().collect(),
        objects,
        bytes,
        tier: tier.to_string(),
        tiers,
        get_requests,
        read_usd,
        transfer_out_usd: read_bytes as f64 / GIB * TRANSFER_OUT_USD_PER_GIB,
        target: target.to_path_buf(),
        filesystem: filesystem.to_string(),
        space_needed: space.0,
        space_free: space.1,
    }
}

/// Bytes for people: B, KiB, MiB, GiB, TiB with one decimal.
pub fn size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Dollars: cents from $1 up, more digits below so that small plans do not read $0.00.
pub fn usd(x: f64) -> String {
    if x == 0.0 {
        "$0".into()
    } else if x >= 1.0 {
        format!("${x:.2}")
    } else if x >= 0.0001 {
        format!("${x:.4}")
    } else {
        "<$0.0001".into()
    }
}

fn hours(h: f64) -> String {
    if h <= 0.0 {
        "none".into()
    } else if h < 1.0 {
        format!("up to {:.0} min", h * 60.0)
    } else {
        format!("up to {h:.0} h")
    }
}

impl Plan {
    fn chosen(&self) -> Option<&TierRow> {
        self.tiers.iter().find(|t| t.tier == self.tier)
    }

    fn thawing(&self) -> u64 {
        self.classes.iter().map(|c| c.thawing_objects).sum()
    }

    fn to_restore(&self) -> u64 {
        self.classes.iter().map(|c| c.to_restore_objects).sum()
    }

    /// What stands in the way, each with its fix (empty: nothing known).
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(t) = self.chosen().filter(|t| !t.not_offered_for.is_empty()) {
            v.push(format!(
                "tier {} is not offered for {}: pass --restore-tier Standard or Bulk (or set \
                 restore.restore_tier)",
                t.tier,
                t.not_offered_for.join(", ")
            ));
        }
        if self.filesystem != "btrfs" {
            v.push(format!(
                "--target {} is on {}, not btrfs: restore into a directory on a btrfs filesystem",
                self.target.display(),
                self.filesystem
            ));
        }
        if self.space_free < self.space_needed {
            v.push(format!(
                "--target {}: the filesystem has {} free and the chain needs about {}: free \
                 space or restore elsewhere",
                self.target.display(),
                size(self.space_free),
                size(self.space_needed)
            ));
        }
        v
    }

    /// The one-line summary `restore` prints before it spends anything.
    pub fn summary(&self) -> String {
        let classes: Vec<String> = self
            .classes
            .iter()
            .map(|c| {
                format!(
                    "{} {} objects {} ({} readable now)",
                    c.class,
                    c.objects,
                    size(c.bytes),
                    c.readable_objects
                )
            })
            .collect();
        let tier = match self.chosen() {
            Some(t) if self.to_restore() == 0 && self.thawing() == 0 => {
                format!("no thaw needed, tier {}", t.tier)
            }
            Some(t) if !t.not_offered_for.is_empty() => format!(
                "tier {} not offered for {}",
                t.tier,
                t.not_offered_for.join(", ")
            ),
            Some(t) => format!(
                "tier {}: {} to restore, thaw {}, about {} retrieval and requests",
                t.tier,
                t.restore_requests,
                hours(t.thaw_hours_max),
                usd(t.total_usd())
            ),
            None => format!("tier {}", self.tier),
        };
        format!(
            "restore plan for {}: {} manifests, {} chunk objects, {}; {}; {}, plus {} for {} \
             GETs (AWS S3 {PRICES_REGION} list prices of {PRICES_TAKEN}; other regions and \
             providers differ); target needs about {}, has {} free",
            self.subvolume,
            self.manifests.len(),
            self.objects,
            size(self.bytes),
            classes.join(", "),
            tier,
            usd(self.read_usd),
            self.get_requests,
            size(self.space_needed),
            size(self.space_free)
        )
    }

    /// The report `restore --plan` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(self.summary());
        line("chain, oldest first:".into());
        for (i, (k, kind, chunks, bytes, class)) in self.manifests.iter().enumerate() {
            line(format!(
                "  {}. {k}  {kind}, {chunks} chunks, {} stream, chunks stored as {class}",
                i + 1,
                size(*bytes)
            ));
        }
        line("chunk objects by storage class (as S3 reports them now):".into());
        for c in &self.classes {
            let mut l = format!(
                "  {:<20} {:>7} objects {:>11}  readable now: {} ({})",
                c.class,
                c.objects,
                size(c.bytes),
                c.readable_objects,
                size(c.readable_bytes)
            );
            if is_archive(&c.class) {
                l.push_str(&format!(
                    "; being restored: {}; to restore: {} ({})",
                    c.thawing_objects,
                    c.to_restore_objects,
                    size(c.to_restore_bytes)
                ));
            }
            line(l);
        }
        line(format!(
            "restore tiers (AWS S3 {PRICES_REGION} list prices taken {PRICES_TAKEN}; other regions \
             and providers differ):"
        ));
        for t in &self.tiers {
            let mark = if t.tier == self.tier { "*" } else { " " };
            if !t.not_offered_for.is_empty() {
                line(format!(
                    "  {mark} {:<9}  not offered for {}",
                    t.tier,
                    t.not_offered_for.join(", ")
                ));
                continue;
            }
            line(format!(
                "  {mark} {:<9}  thaw {:<14} {} restore requests: {} retrieval + {} requests = {}",
                t.tier,
                hours(t.thaw_hours_max),
                t.restore_requests,
                usd(t.retrieval_usd),
                usd(t.request_usd),
                usd(t.total_usd())
            ));
        }
        line(format!(
            "  every tier: {} ranged GETs and instant-access retrieval fees {}; data transfer \
             out to the internet (a restore outside AWS) about {} at ${TRANSFER_OUT_USD_PER_GIB}/GiB",
            self.get_requests,
            usd(self.read_usd),
            usd(self.transfer_out_usd)
        ));
        line(format!(
            "target {}: on {}, needs about {} (the full stream plus the largest incremental), \
             has {} free",
            self.target.display(),
            self.filesystem,
            size(self.space_needed),
            size(self.space_free)
        ));
        for p in self.problems() {
            line(format!("problem: {p}"));
        }
        line("nothing was requested or downloaded (a plan reads manifests and HEADs only)".into());
        s
    }

    /// The `restore --plan --json` document (version 1).
    pub fn json(&self) -> Value {
        json!({
            "version": 1,
            "subvolume": self.subvolume,
            "manifests": self.manifests.iter().map(|(k, kind, chunks, bytes, class)| json!({
                "key": k, "kind": kind, "chunks": chunks, "total_bytes": bytes,
                "storage_class": class,
            })).collect::<Vec<_>>(),
            "objects": self.objects,
            "bytes": self.bytes,
            "storage_classes": self.classes.iter().map(|c| json!({
                "class": c.class, "objects": c.objects, "bytes": c.bytes,
                "readable_objects": c.readable_objects, "readable_bytes": c.readable_bytes,
                "restoring_objects": c.thawing_objects,
                "to_restore_objects": c.to_restore_objects,
                "to_restore_bytes": c.to_restore_bytes,
            })).collect::<Vec<_>>(),
            "tier": self.tier,
            "tiers": self.tiers.iter().map(|t| json!({
                "tier": t.tier,
                "offered": t.not_offered_for.is_empty(),
                "not_offered_for": t.not_offered_for,
                "thaw_hours_max": t.thaw_hours_max,
                "restore_requests": t.restore_requests,
                "retrieval_usd": t.retrieval_usd,
                "request_usd": t.request_usd,
                "total_usd": t.total_usd(),
            })).collect::<Vec<_>>(),
            "get_requests": self.get_requests,
            "read_usd": self.read_usd,
            "transfer_out_usd": self.transfer_out_usd,
            "prices": {
                "provider": "AWS S3",
                "region": PRICES_REGION,
                "taken": PRICES_TAKEN,
                "note": "list prices; other regions and providers differ",
            },
            "target": {
                "path": self.target.display().to_string(),
                "filesystem": self.filesystem,
                "needed_bytes": self.space_needed,
                "free_bytes": self.space_free,
            },
            "problems": self.problems(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(key: &str, size: u64, class: &str, restore: RestoreHeader) -> ChunkState {
        ChunkState {
            key: key.into(),
            size,
            class: class.into(),
            inferred: false,
            restore,
        }
    }

    fn chain_of(chunks: &[(&str, u64)], class: &str) -> Chain {
        use crate::manifest::{ChunkEntry, Kind, Manifest, S3Info, SnapshotRef};
        let m = Manifest {
            version: 1,
            subvolume: "data".into(),
            kind: Kind::Full,
            created_at: "20250101T020000Z".into(),
            snapshot: SnapshotRef {
                name: "data.20250101T020000Z".into(),
                path: "/nonexistent".into(),
                uuid: None,
                parent_uuid: None,
                extra: Default::default(),
            },
            parent_manifest: None,
            chunks: chunks
                .iter()
                .map(|(k, n)| ChunkEntry {
                    key: (*k).into(),
                    size: *n,
                    sha256: "0".repeat(64),
                    etag: None,
                    extra: Default::default(),
                })
                .collect(),
            total_bytes: chunks.iter().map(|(_, n)| n).sum(),
            chunk_size: G,
            s3: S3Info {
                storage_class: class.into(),
                extra: Default::default(),
            },
            stream_sha256: None,
            send_protocol: None,
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        };
        Chain {
            links: vec![(
                crate::manifest::Layout::new("p").manifest_key(
                    "data",
                    Kind::Full,
                    crate::ts::Ts::from_unix(0),
                ),
                m,
            )],
            size: (0, 0),
        }
    }

    const G: u64 = 1 << 30;

    #[test]
    fn counts_classes_and_prices_each_tier() {
        let chain = chain_of(
            &[("a", 2 * G), ("b", G), ("c", 4 * G), ("d", G)],
            "DEEP_ARCHIVE",
        );
        let chunks = [
            st("a", 2 * G, "STANDARD", RestoreHeader::Absent),
            st("b", G, "GLACIER", RestoreHeader::Absent),
            st("c", 4 * G, "DEEP_ARCHIVE", RestoreHeader::Absent),
            st("d", G, "DEEP_ARCHIVE", RestoreHeader::Done),
        ];
        let p = make(
            "data",
            &chain,
            &chunks,
            G,
            "Standard",
            Path::new("/t/x"),
            "btrfs",
            (8 * G, 100 * G),
        );
        assert_eq!((p.objects, p.bytes), (4, 8 * G));
        let deep = p
            .classes
            .iter()
            .find(|c| c.class == "DEEP_ARCHIVE")
            .unwrap();
        assert_eq!(
            (deep.objects, deep.readable_objects, deep.to_restore_objects),
            (2, 1, 1)
        );
        assert_eq!(deep.to_restore_bytes, 4 * G);
        let std = &p.tiers[0];
        assert_eq!(std.tier, "Standard");
        assert_eq!(std.restore_requests, 2);
        assert_eq!(std.thaw_hours_max, 12.0);
        // GLACIER 1 GiB at $0.01 + DEEP_ARCHIVE 4 GiB at $0.02.
        assert!((std.retrieval_usd - 0.09).abs() < 1e-9, "{std:?}");
        assert!((std.request_usd - (0.05 + 0.10) / 1000.0).abs() < 1e-12);
        let bulk = &p.tiers[1];
        assert_eq!(bulk.thaw_hours_max, 48.0);
        assert!((bulk.retrieval_usd - 0.01).abs() < 1e-9, "{bulk:?}");
        let exp = &p.tiers[2];
        assert_eq!(exp.not_offered_for, ["DEEP_ARCHIVE"]);
        // 8 one-GiB pieces at $0.0004 per 1,000 GETs.
        assert_eq!(p.get_requests, 8);
        assert!(p.problems().is_empty(), "{:?}", p.problems());
        let s = p.summary();
        assert!(
            s.contains("DEEP_ARCHIVE 2 objects 5.0 GiB (1 readable now)")
                && s.contains("tier Standard: 2 to restore, thaw up to 12 h, about $0.0901"),
            "{s}"
        );
        let j = p.json();
        assert_eq!(j["tiers"][2]["offered"], false);
        assert_eq!(j["prices"]["taken"], PRICES_TAKEN);
    }

    #[test]
    fn problems_name_the_fix() {
        let chain = chain_of(&[("a", G)], "DEEP_ARCHIVE");
        let chunks = [st("a", G, "DEEP_ARCHIVE", RestoreHeader::Absent)];
        let p = make(
            "data",
            &chain,
            &chunks,
            G,
            "Expedited",
            Path::new("/t/x"),
            "ext4",
            (G, 10),
        );
        let v = p.problems().join("\n");
        assert!(
            v.contains("tier Expedited is not offered for DEEP_ARCHIVE: pass --restore-tier")
                && v.contains("is on ext4, not btrfs")
                && v.contains("has 10 B free"),
            "{v}"
        );
        // Nothing archived: no thaw, no retrieval fee.
        let chunks = [st("a", G, "STANDARD", RestoreHeader::Absent)];
        let p = make(
            "data",
            &chain,
            &chunks,
            G,
            "Bulk",
            Path::new("/t/x"),
            "btrfs",
            (G, G),
        );
        assert!(p.summary().contains("no thaw needed"), "{}", p.summary());
        assert!(p.tiers.iter().all(|t| t.total_usd() == 0.0));
    }
}
