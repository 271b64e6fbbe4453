//! Byte sizes as people write them in the config: a whole number of bytes (`16777216`),
//! or a number with a unit (`"16MiB"`, `"200 GiB"`, `"1.5TB"`): `B`, the 1024-based
//! `KiB`, `MiB`, `GiB`, `TiB`, `PiB` and the 1000-based `KB`/`kB`, `MB`, `GB`, `TB`, `PB`.
//! Parsing is exact integer arithmetic; a size that is not a whole number of bytes, or
//! does not fit in 64 bits, is refused.

/// The bytes `text` means, or why it means none.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim_start());
    if num.is_empty() {
        return Err("not a number".into());
    }
    let mult: u128 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        _ => return Err(format!("unknown unit {unit:?}")),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err("not a number".into());
    }
    if whole.len() > 20 || frac.len() > 18 {
        return Err("too large".into());
    }
    let w: u128 = whole.parse().map_err(|_| "not a number".to_string())?;
    let f: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| "not a number".to_string())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let frac_bytes = f * mult;
    if !frac_bytes.is_multiple_of(scale) {
        return Err("not a whole number of bytes".into());
    }
    let bytes = w
        .checked_mul(mult)
        .and_then(|b| b.checked_add(frac_bytes / scale))
        .ok_or_else(|| "too large".to_string())?;
    u64::try_from(bytes).map_err(|_| "too large".to_string())
}

/// The accepted forms, for error messages.
pub const FORMS: &str = "a whole number of bytes, or a string with a unit such as \"16MiB\", \
                         \"200GiB\" or \"1.5TB\" (KiB, MiB, GiB, TiB, PiB are 1024-based; KB, MB, \
                         GB, TB, PB 1000-based)";

/// Bytes for people: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn units_and_plain_numbers() {
        for (t, want) in [
            ("0", 0),
            ("16777216", 16 << 20),
            ("16MiB", 16 << 20),
            ("16 MiB", 16 << 20),
            ("200GiB", 200 << 30),
            ("1.5GiB", 3 << 29),
            ("5TiB", 5 << 40),
            ("1KB", 1000),
            ("1kB", 1000),
            ("2.5MB", 2_500_000),
            ("7B", 7),
            (" 1MiB ", 1 << 20),
        ] {
            assert_eq!(parse(t), Ok(want), "{t}");
        }
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for (t, why) in [
            ("", "not a number"),
            ("MiB", "not a number"),
            ("16 Mb", "unknown unit"),
            ("16M", "unknown unit"),
            ("-1MiB", "not a number"),
            ("1.MiB", "not a number"),
            ("1.2.3MiB", "not a number"),
            ("0.1B", "whole number of bytes"),
            ("17000PiB", "too large"),
            ("99999999999999999999999", "too large"),
        ] {
            let e = parse(t).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
    }
}
