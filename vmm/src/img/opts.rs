//! Parsing of sizes and `-o key=value,...` format options, as qemu-img.

use anyhow::{bail, Context};
use devices::block::create::Qcow2Options;
use devices::block::ImageFormat;

/// Parses a size like qemu-img: a non-negative number with an optional
/// fraction and a k/K, M, G, T, P or E suffix (binary units), or b/B for bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let bad = || {
        anyhow::anyhow!("invalid size '{s}': use a non-negative number with an optional k, M, G, T, P or E suffix")
    };
    let t = s.trim();
    if t.is_empty() || t.starts_with('-') || t.starts_with('+') {
        return Err(bad());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(bad()),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut v = int
        .checked_shl(shift)
        .filter(|v| v >> shift == int)
        .ok_or_else(bad)?;
    if !frac.is_empty() {
        let f: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
        v = v
            .checked_add((f * (1u64 << shift) as f64) as u64)
            .ok_or_else(bad)?;
    }
    // qemu-img's limit (INT64_MAX).
    if v > i64::MAX as u64 {
        return Err(bad());
    }
    Ok(v)
}

fn parse_bool(key: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => bail!("parameter '{key}' expects 'on' or 'off', not '{v}'"),
    }
}

/// Parses `-o` options (possibly repeated) for a new image of `format`.
pub fn parse_create_options(list: &[String], format: ImageFormat) -> anyhow::Result<Qcow2Options> {
    let mut o = Qcow2Options::default();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("invalid option '{item}' (expected key=value)"))?;
        match (format, k) {
            (_, "preallocation") => o.prealloc = v.parse().map_err(anyhow::Error::msg)?,
            (ImageFormat::Qcow2, "cluster_size") => o.cluster_size = parse_size(v)?,
            (ImageFormat::Qcow2, "compat") => {
                o.version = match v {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => bail!("invalid compat level '{v}' (0.10 or 1.1)"),
                }
            }
            (ImageFormat::Qcow2, "lazy_refcounts") => o.lazy_refcounts = parse_bool(k, v)?,
            (ImageFormat::Qcow2, "refcount_bits") => {
                o.refcount_bits = v
                    .parse()
                    .with_context(|| format!("invalid refcount_bits '{v}'"))?
            }
            (ImageFormat::Qcow2, "compression_type") if v == "zlib" => {}
            (ImageFormat::Qcow2, "extended_l2") if v == "off" => {}
            _ => bail!("invalid parameter '{k}' for format {format}"),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu_img() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        for bad in ["-5G", "5Q", "", "G", "99999999999E", "1..2M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_parse_and_unknown_is_refused() {
        let o = parse_create_options(
            &[
                "cluster_size=4k,compat=0.10".into(),
                "preallocation=metadata".into(),
            ],
            ImageFormat::Qcow2,
        )
        .unwrap();
        assert_eq!((o.cluster_size, o.version), (4096, 2));
        assert!(parse_create_options(&["bogus=1".into()], ImageFormat::Qcow2).is_err());
        assert!(parse_create_options(&["cluster_size=4k".into()], ImageFormat::Raw).is_err());
    }
}
