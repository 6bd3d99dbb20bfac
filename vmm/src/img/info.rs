//! `ivmm img info`: reads headers with our own parser (so it also works on
//! dirty or corrupt images) and prints qemu-img's human or JSON output.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use devices::block::header::QcowHeader;
use devices::block::qcow2::{backing_chain, resolve_backing};
use devices::block::{probe_format, ImageFormat, ImageLock, LockMode};
use serde_json::{json, Map, Value};

use super::{opt_format, require_file, InfoArgs};

/// Facts about one image.
struct ImageInfo {
    filename: String,
    /// Length of the image file (the "file" child node's virtual size).
    file_len: u64,
    format: ImageFormat,
    virtual_size: u64,
    actual_size: u64,
    header: Option<QcowHeader>,
    full_backing: Option<String>,
}

fn read_info(path: &Path, format: ImageFormat, force_share: bool) -> anyhow::Result<ImageInfo> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("could not open '{}'", path.display()))?;
    let mode = if force_share {
        LockMode::ForceShare
    } else {
        LockMode::ReadOnly
    };
    let _lock = ImageLock::acquire(&file, path, mode)?;
    let meta = file
        .metadata()
        .with_context(|| format!("could not stat '{}'", path.display()))?;
    let actual_size = meta.blocks() * 512;
    let (virtual_size, header) = match format {
        ImageFormat::Raw => (meta.len(), None),
        ImageFormat::Qcow2 => {
            let h = QcowHeader::read(&file, path)?;
            (h.size, Some(h))
        }
    };
    let full_backing = header
        .as_ref()
        .and_then(|h| h.backing_file.as_ref())
        .map(|b| resolve_backing(path, b).display().to_string());
    Ok(ImageInfo {
        filename: path.display().to_string(),
        file_len: meta.len(),
        format,
        virtual_size,
        actual_size,
        header,
        full_backing,
    })
}

fn to_json(i: &ImageInfo) -> Value {
    let mut m = Map::new();
    // The protocol node below the format node, as qemu-img shows it.
    m.insert(
        "children".into(),
        json!([{
            "name": "file",
            "info": {
                "children": [],
                "virtual-size": i.file_len,
                "filename": i.filename,
                "format": "file",
                "actual-size": i.actual_size,
                "format-specific": {"type": "file", "data": {}},
                "dirty-flag": false
            }
        }]),
    );
    m.insert("virtual-size".into(), i.virtual_size.into());
    m.insert("filename".into(), i.filename.clone().into());
    if let Some(h) = &i.header {
        m.insert("cluster-size".into(), h.cluster_size().into());
    }
    m.insert("format".into(), i.format.name().into());
    m.insert("actual-size".into(), i.actual_size.into());
    if let Some(h) = &i.header {
        let mut data = Map::new();
        data.insert("compat".into(), h.compat().into());
        data.insert(
            "compression-type".into(),
            if h.compression_type == 1 {
                "zstd"
            } else {
                "zlib"
            }
            .into(),
        );
        if h.version >= 3 {
            data.insert("lazy-refcounts".into(), h.lazy_refcounts().into());
        }
        data.insert("refcount-bits".into(), h.refcount_bits().into());
        if h.version >= 3 {
            data.insert("corrupt".into(), h.corrupt().into());
            data.insert(
                "extended-l2".into(),
                (h.incompatible_features & devices::block::header::INCOMPAT_EXTL2 != 0).into(),
            );
        }
        m.insert(
            "format-specific".into(),
            json!({"type": "qcow2", "data": data}),
        );
        if let Some(b) = &h.backing_file {
            if let Some(f) = &h.backing_format {
                m.insert("backing-filename-format".into(), f.clone().into());
            }
            m.insert(
                "full-backing-filename".into(),
                i.full_backing.clone().unwrap_or_default().into(),
            );
            m.insert("backing-filename".into(), b.clone().into());
        }
        m.insert("dirty-flag".into(), h.dirty().into());
    } else {
        m.insert("dirty-flag".into(), false.into());
    }
    Value::Object(m)
}

/// qemu-img's human size ("2 MiB", "196 KiB").
fn human(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        return format!("{n} B");
    }
    // printf("%0.3g"): three significant digits, trailing zeros dropped.
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {}", UNITS[u])
}

fn print_human(i: &ImageInfo) {
    println!("image: {}", i.filename);
    println!("file format: {}", i.format);
    println!(
        "virtual size: {} ({} bytes)",
        human(i.virtual_size),
        i.virtual_size
    );
    println!("disk size: {}", human(i.actual_size));
    if let Some(h) = &i.header {
        println!("cluster_size: {}", h.cluster_size());
        if let Some(b) = &h.backing_file {
            match &i.full_backing {
                Some(full) if full != b => println!("backing file: {b} (actual path: {full})"),
                _ => println!("backing file: {b}"),
            }
            if let Some(f) = &h.backing_format {
                println!("backing file format: {f}");
            }
        }
        println!("Format specific information:");
        println!("    compat: {}", h.compat());
        println!(
            "    compression type: {}",
            if h.compression_type == 1 {
                "zstd"
            } else {
                "zlib"
            }
        );
        if h.version >= 3 {
            println!("    lazy refcounts: {}", h.lazy_refcounts());
        }
        println!("    refcount bits: {}", h.refcount_bits());
        if h.version >= 3 {
            println!("    corrupt: {}", h.corrupt());
            println!(
                "    extended l2: {}",
                h.incompatible_features & devices::block::header::INCOMPAT_EXTL2 != 0
            );
        }
        if h.dirty() {
            println!("    dirty bit set: true");
        }
    }
}

pub(super) fn info(a: InfoArgs) -> anyhow::Result<i32> {
    let json = match a.output.as_str() {
        "human" => false,
        "json" => true,
        o => bail!("--output must be human or json, not '{o}'"),
    };
    require_file(&a.file)?;
    let format = match opt_format(&a.format)? {
        Some(f) => f,
        None => probe_format(&a.file)?,
    };
    let layers: Vec<(PathBuf, ImageFormat)> = if a.backing_chain {
        backing_chain(&a.file, format)?
            .into_iter()
            .map(|l| (l.path, l.format))
            .collect()
    } else {
        vec![(a.file.clone(), format)]
    };
    let infos = layers
        .iter()
        .map(|(p, f)| read_info(p, *f, a.force_share))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if json {
        let v: Vec<Value> = infos.iter().map(to_json).collect();
        let out = if a.backing_chain {
            Value::Array(v)
        } else {
            v.into_iter().next().unwrap_or(Value::Null)
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (n, i) in infos.iter().enumerate() {
            if n > 0 {
                println!();
            }
            print_human(i);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn human_sizes_match_qemu_style() {
        assert_eq!(human(2 << 20), "2 MiB");
        assert_eq!(human(200704), "196 KiB");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1441792), "1.38 MiB");
    }
}
