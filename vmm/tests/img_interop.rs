//! Interop matrix between ivmm's block layer / `ivmm img` and qemu-img/qemu-io
//! (the oracle), in both directions.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use devices::block::{open_disk, DiskBackend, ImageFormat, OpenOptions};

const SIZE: u64 = 8 << 20;

/// Image configurations of the matrix (qemu-img -o strings).
const CONFIGS: &[&str] = &[
    "cluster_size=512,compat=1.1,refcount_bits=1",
    "cluster_size=4k,compat=0.10",
    "cluster_size=64k,compat=1.1,refcount_bits=64,lazy_refcounts=on",
    "cluster_size=2M,compat=1.1,preallocation=metadata",
    "cluster_size=64k,compat=1.1,preallocation=full",
    "cluster_size=4k,compat=1.1,refcount_bits=16,lazy_refcounts=on,preallocation=metadata",
    "cluster_size=64k,compat=0.10,preallocation=metadata",
    "cluster_size=2M,compat=0.10,preallocation=off",
];

fn open_rw(path: &Path, fmt: ImageFormat) -> Box<dyn DiskBackend> {
    open_disk(
        path,
        &OpenOptions {
            format: Some(fmt),
            writable: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn open_ro(path: &Path, fmt: ImageFormat) -> Box<dyn DiskBackend> {
    open_disk(
        path,
        &OpenOptions {
            format: Some(fmt),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Writes `model` to a raw file to compare against with qemu-img compare.
fn model_file(dir: &Path, model: &[u8]) -> PathBuf {
    let p = dir.join("model.raw");
    std::fs::write(&p, model).unwrap();
    p
}

fn assert_same_as_model(img: &Path, model: &[u8], dir: &Path) {
    let m = model_file(dir, model);
    let out = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", p(img), p(&m)],
    );
    assert!(
        out.status.success(),
        "qemu-img compare {}: {}",
        img.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// qemu-io writes random sector-aligned patterns; returns what the disk must read.
fn qemu_random_writes(img: &Path, model: &mut [u8], rng: &mut Rng, n: usize) {
    let mut cmds = Vec::new();
    for _ in 0..n {
        let len = (rng.below(64) + 1) * 512 * if rng.below(4) == 0 { 64 } else { 1 };
        let len = len.min(model.len() as u64);
        let off = rng.below((model.len() as u64 - len) / 512 + 1) * 512;
        let pat = (rng.below(254) + 1) as u8;
        if rng.below(8) == 0 {
            cmds.push(format!("write -z {off} {len}"));
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            cmds.push(format!("write -P {pat} {off} {len}"));
            model[off as usize..(off + len) as usize].fill(pat);
        }
    }
    qemu_io("qcow2", img, &cmds);
}

/// ivmm writes random unaligned, overlapping data, zeroes and discards.
fn ivmm_random_writes(disk: &dyn DiskBackend, model: &mut [u8], rng: &mut Rng, n: usize) {
    let size = model.len() as u64;
    for i in 0..n {
        let max = if rng.below(3) == 0 { 300_000 } else { 9000 };
        let len = rng.below(max) + 1;
        let off = rng.below(size - len);
        let r = off as usize..(off + len) as usize;
        match rng.below(10) {
            0 => {
                disk.write_zeroes(off, len).unwrap();
                model[r].fill(0);
            }
            1 => {
                disk.discard(off, len).unwrap();
                model[r].fill(0);
            }
            _ => {
                let data: Vec<u8> = (0..len).map(|k| (k as u8) ^ (i as u8) ^ 0x5a).collect();
                disk.write_at(off, &data).unwrap();
                model[r].copy_from_slice(&data);
            }
        }
    }
    disk.flush().unwrap();
}

fn read_all(disk: &dyn DiskBackend) -> Vec<u8> {
    let mut v = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut v).unwrap();
    v
}

#[test]
fn qemu_written_images_read_identically_through_ivmm() {
    let dir = tempfile::tempdir().unwrap();
    for (n, cfg) in CONFIGS.iter().enumerate() {
        let img = dir.path().join(format!("q{n}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            cfg,
            p(&img),
            &SIZE.to_string(),
        ]);
        let mut model = vec![0u8; SIZE as usize];
        let mut rng = Rng(0x1234 + n as u64);
        qemu_random_writes(&img, &mut model, &mut rng, 40);
        let disk = open_ro(&img, ImageFormat::Qcow2);
        assert!(
            read_all(disk.as_ref()) == model,
            "config {cfg}: data differs"
        );
        drop(disk);
        compare_info(&img, false);
        // ivmm check agrees with qemu-img check on a clean image.
        let o = ivmm(&["check", "--output", "json", p(&img)]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "config {cfg}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let ours: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let (_, theirs) = qemu_check(&img);
        for k in [
            "total-clusters",
            "allocated-clusters",
            "compressed-clusters",
            "fragmented-clusters",
            "image-end-offset",
            "check-errors",
            "leaks",
            "corruptions",
        ] {
            assert_eq!(ours.get(k), theirs.get(k), "config {cfg}: check field {k}");
        }
    }
}

#[test]
fn ivmm_written_images_read_identically_through_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (n, cfg) in CONFIGS.iter().enumerate() {
        let img = dir.path().join(format!("i{n}.qcow2"));
        ivmm_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            cfg,
            p(&img),
            &SIZE.to_string(),
        ]);
        assert_qemu_clean(&img);
        let mut model = vec![0u8; SIZE as usize];
        let mut rng = Rng(0x9876 + n as u64);
        {
            let disk = open_rw(&img, ImageFormat::Qcow2);
            ivmm_random_writes(disk.as_ref(), &mut model, &mut rng, 60);
        }
        assert_qemu_clean(&img);
        assert_same_as_model(&img, &model, dir.path());
        assert_no_grown_tail(&img, cfg);
    }
}

/// While open, a writable qcow2 grows ahead of its last cluster; closing must cut that back,
/// leaving the file ending where qemu-img says the image ends.
fn assert_no_grown_tail(img: &Path, cfg: &str) {
    let (_, check) = qemu_check(img);
    let end = check["image-end-offset"].as_u64();
    let len = std::fs::metadata(img).unwrap().len();
    assert_eq!(
        Some(len),
        end,
        "{cfg}: file length vs qemu-img's image end: {check}"
    );
}

#[test]
fn created_images_match_qemu_img_info() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", p(&base), "3M"]);
    for (n, cfg) in CONFIGS.iter().enumerate() {
        let img = dir.path().join(format!("n{n}.qcow2"));
        ivmm_ok(&["create", "-q", "-f", "qcow2", "-o", cfg, p(&img), "5M"]);
        compare_info(&img, false);
    }
    let ov = dir.path().join("ov.qcow2");
    ivmm_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        p(&ov),
    ]);
    compare_info(&ov, false);
    compare_info(&ov, true);
    compare_info(&base, false);
}

/// Every field ivmm prints must equal qemu-img's; the list must be present.
fn compare_info(img: &Path, chain: bool) {
    let mut args = vec!["info", "--output", "json"];
    if chain {
        args.push("--backing-chain");
    }
    args.push(p(img));
    let ours: serde_json::Value = serde_json::from_str(&ivmm_ok(&args)).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&qemu_img(&args)).unwrap();
    let (ours, theirs) = match (ours, theirs) {
        (serde_json::Value::Array(a), serde_json::Value::Array(b)) => (a, b),
        (a, b) => (vec![a], vec![b]),
    };
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        let om = o.as_object().unwrap();
        for (k, v) in om {
            if k == "format-specific" {
                let od = &v["data"];
                let td = &t[k]["data"];
                for (dk, dv) in od.as_object().unwrap() {
                    assert_eq!(
                        Some(dv),
                        td.get(dk),
                        "{}: format-specific {dk}",
                        img.display()
                    );
                }
                assert_eq!(od.as_object().unwrap().len(), td.as_object().unwrap().len());
                continue;
            }
            assert_eq!(Some(v), t.get(k), "{}: field {k}", img.display());
        }
        for k in [
            "virtual-size",
            "actual-size",
            "format",
            "dirty-flag",
            "filename",
        ] {
            assert!(om.contains_key(k), "missing {k}");
        }
        for k in [
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "cluster-size",
        ] {
            assert_eq!(
                om.contains_key(k),
                t.get(k).is_some(),
                "{}: presence of {k}",
                img.display()
            );
        }
    }
}

#[test]
fn three_deep_chain_with_raw_base_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 4u64 << 20;
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng(77);
    for (i, b) in model.iter_mut().enumerate() {
        *b = (i / 4096) as u8 ^ 0xa5;
    }
    std::fs::write(d.join("base.raw"), &model).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "base.raw",
        "-F",
        "raw",
        p(&d.join("mid1.qcow2")),
    ]);
    qemu_random_writes(&d.join("mid1.qcow2"), &mut model, &mut rng, 20);
    // Relative backing names are resolved relative to the overlay, not the CWD.
    ivmm_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid1.qcow2",
        "-F",
        "qcow2",
        p(&d.join("mid2.qcow2")),
    ]);
    qemu_random_writes(&d.join("mid2.qcow2"), &mut model, &mut rng, 20);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        "-b",
        "mid2.qcow2",
        "-F",
        "qcow2",
        p(&d.join("top.qcow2")),
    ]);
    let top = d.join("top.qcow2");
    {
        let disk = open_rw(&top, ImageFormat::Qcow2);
        assert!(read_all(disk.as_ref()) == model, "chain read differs");
        // Writes into backing-only clusters (partial: COW from the chain).
        ivmm_random_writes(disk.as_ref(), &mut model, &mut rng, 50);
    }
    assert_qemu_clean(&top);
    assert_same_as_model(&top, &model, d);
    // Flattening convert equals the chain.
    let flat = d.join("flat.qcow2");
    ivmm_ok(&["convert", "-O", "qcow2", p(&top), p(&flat)]);
    assert_qemu_clean(&flat);
    assert_same_as_model(&flat, &model, d);
    // info --backing-chain agrees with qemu-img.
    compare_info(&top, true);
}

#[test]
fn writes_into_qemu_compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "4M"]);
    let mut model = vec![0u8; 4 << 20];
    let mut rng = Rng(5);
    qemu_random_writes(&src, &mut model, &mut rng, 30);
    let comp = d.join("comp.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k",
        p(&src),
        p(&comp),
    ]);
    {
        let disk = open_rw(&comp, ImageFormat::Qcow2);
        assert!(read_all(disk.as_ref()) == model, "compressed read differs");
        ivmm_random_writes(disk.as_ref(), &mut model, &mut rng, 40);
    }
    assert_qemu_clean(&comp);
    assert_same_as_model(&comp, &model, d);
}

#[test]
fn convert_compress_and_backing_roundtrip_through_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "6M"]);
    let mut model = vec![0u8; 6 << 20];
    let mut rng = Rng(11);
    qemu_random_writes(&src, &mut model, &mut rng, 30);
    for opts in [
        "cluster_size=512",
        "cluster_size=64k",
        "cluster_size=2M,refcount_bits=64",
        "compat=0.10",
    ] {
        let out = d.join("c.qcow2");
        ivmm_ok(&["convert", "-c", "-O", "qcow2", "-o", opts, p(&src), p(&out)]);
        assert_qemu_clean(&out);
        assert_same_as_model(&out, &model, d);
        // ivmm compare agrees.
        assert_eq!(ivmm(&["compare", p(&src), p(&out)]).status.code(), Some(0));
    }
    // -B: only differences against the backing file are written.
    let base = d.join("base.raw");
    let mut base_data = model.clone();
    base_data[..1 << 20].fill(0x11);
    std::fs::write(&base, &base_data).unwrap();
    let out = d.join("ov.qcow2");
    ivmm_ok(&[
        "convert",
        "-O",
        "qcow2",
        "-B",
        "base.raw",
        "-F",
        "raw",
        p(&src),
        p(&out),
    ]);
    assert_qemu_clean(&out);
    assert_same_as_model(&out, &model, d);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size < 2 << 20,
        "overlay holds only the differing first MiB, got {size}"
    );
    // raw output stays sparse.
    let raw = d.join("out.raw");
    ivmm_ok(&["convert", "-O", "raw", p(&src), p(&raw)]);
    assert_eq!(std::fs::read(&raw).unwrap(), model);
    // A mismatch is reported with exit code 1, like qemu-img compare.
    let o = ivmm(&["compare", p(&base), p(&src)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Content mismatch at offset 0"));
}

#[test]
fn resize_grows_and_shrinks_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.qcow2");
    ivmm_ok(&["create", "-q", "-f", "qcow2", p(&img), "1M"]);
    qemu_io("qcow2", &img, &["write -P 7 0 64k".into()]);
    ivmm_ok(&["resize", p(&img), "+3M"]);
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", p(&img)])).unwrap();
    assert_eq!(info["virtual-size"], 4 << 20);
    assert_qemu_clean(&img);
    let o = ivmm(&["resize", p(&img), "2M"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shrink"));
    ivmm_ok(&["resize", "--shrink", p(&img), "-2M"]);
    assert_qemu_clean(&img);
    qemu_io("qcow2", &img, &["read -P 7 0 64k".into()]);
    let raw = dir.path().join("r.raw");
    ivmm_ok(&["create", "-q", "-f", "raw", p(&raw), "1M"]);
    ivmm_ok(&["resize", "-f", "raw", p(&raw), "+1M"]);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 2 << 20);
}

#[test]
fn commit_and_rebase_match_qemu_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    ivmm_ok(&["create", "-q", "-f", "qcow2", p(&base), "4M"]);
    let mut model = vec![0u8; 4 << 20];
    let mut rng = Rng(3);
    qemu_random_writes(&base, &mut model, &mut rng, 15);
    let base_model = model.clone();
    let ov = d.join("ov.qcow2");
    ivmm_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        p(&ov),
    ]);
    qemu_random_writes(&ov, &mut model, &mut rng, 15);

    // Safe rebase onto an unrelated new base keeps the guest view.
    let nb = d.join("new.raw");
    std::fs::write(&nb, vec![0x33u8; 4 << 20]).unwrap();
    ivmm_ok(&["rebase", "-b", "new.raw", "-F", "raw", p(&ov)]);
    assert_qemu_clean(&ov);
    assert_same_as_model(&ov, &model, d);
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", p(&ov)])).unwrap();
    assert_eq!(info["backing-filename"], "new.raw");
    // Unsafe rebase back: header only.
    ivmm_ok(&["rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", p(&ov)]);
    assert_qemu_clean(&ov);

    // Commit the overlay into the base: the base then reads as the old guest view.
    let ov2 = d.join("ov2.qcow2");
    ivmm_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        p(&ov2),
    ]);
    let mut view = base_model.clone();
    qemu_random_writes(&ov2, &mut view, &mut rng, 15);
    ivmm_ok(&["commit", p(&ov2)]);
    assert_qemu_clean(&base);
    assert_qemu_clean(&ov2);
    assert_same_as_model(&base, &view, d);
    assert_same_as_model(&ov2, &view, d);
}

#[test]
fn writes_to_images_with_internal_snapshots_keep_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("snap.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        p(&img),
        "4M",
    ]);
    let mut model = vec![0u8; 4 << 20];
    let mut rng = Rng(21);
    qemu_random_writes(&img, &mut model, &mut rng, 20);
    let snap_model = model.clone();
    qemu_img(&["snapshot", "-c", "s1", p(&img)]);
    match open_disk(
        &img,
        &OpenOptions {
            format: Some(ImageFormat::Qcow2),
            writable: true,
            ..Default::default()
        },
    ) {
        Ok(disk) => {
            ivmm_random_writes(disk.as_ref(), &mut model, &mut rng, 40);
            drop(disk);
            assert_qemu_clean(&img);
            assert_same_as_model(&img, &model, d);
            qemu_img(&["snapshot", "-a", "s1", p(&img)]);
            assert_same_as_model(&img, &snap_model, d);
        }
        // Refusing is acceptable, as long as it says why.
        Err(e) => assert!(e.to_string().contains("snapshot"), "{e}"),
    }
}

/// Eight threads write through one open image at once, each into its own 2 KiB stripes of
/// every cluster, in its own random cluster order: partial writes to the same new cluster race,
/// over a raw backing file (so a new cluster's other stripes are copied from the base) and
/// without one. What qemu-img then reads must be every stripe as its thread wrote it, over the
/// base elsewhere, and `qemu-img check` must find no error and no leak: no write lost to a
/// concurrent allocation of its cluster, no cluster allocated twice.
#[test]
fn concurrent_writers_sharing_clusters_read_identically_through_qemu() {
    const THREADS: u64 = 8;
    const STRIPE: u64 = 2048;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 4u64 << 20;
    let base: Vec<u8> = (0..size).map(|i| (i / 512) as u8 ^ 0x3c).collect();
    std::fs::write(d.join("base.raw"), &base).unwrap();
    for (n, (cluster, backed)) in [
        (4096u64, true),
        (65536, true),
        (65536, false),
        (2 << 20, true),
    ]
    .into_iter()
    .enumerate()
    {
        let img = d.join(format!("c{n}.qcow2"));
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        let opts = format!("cluster_size={cluster}");
        args.extend(["-o", &opts]);
        if backed {
            args.extend(["-b", "base.raw", "-F", "raw"]);
        }
        let size_arg = size.to_string();
        args.extend([p(&img), &size_arg]);
        ivmm_ok(&args);

        let stripes_per_cluster = cluster / STRIPE;
        let pattern = |thread: u64, stripe: u64| ((thread * 31 + stripe) % 251 + 1) as u8;
        {
            let disk = open_rw(&img, ImageFormat::Qcow2);
            let disk = disk.as_ref();
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    s.spawn(move || {
                        let mut rng = Rng(0x1234 + t * 977 + n as u64);
                        let clusters = size / cluster;
                        let mut order: Vec<u64> = (0..clusters).collect();
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.below(i as u64 + 1) as usize);
                        }
                        for c in order {
                            // This thread's stripes: every THREADS-th, starting at its number
                            for k in (t..stripes_per_cluster).step_by(THREADS as usize) {
                                let stripe = c * stripes_per_cluster + k;
                                let data = vec![pattern(t, stripe); STRIPE as usize];
                                disk.write_at(stripe * STRIPE, &data).unwrap();
                            }
                        }
                    });
                }
            });
            disk.flush().unwrap();
        }

        let mut model = if backed {
            base.clone()
        } else {
            vec![0; size as usize]
        };
        for stripe in 0..size / STRIPE {
            let t = (stripe % stripes_per_cluster) % THREADS;
            let r = (stripe * STRIPE) as usize..((stripe + 1) * STRIPE) as usize;
            model[r].fill(pattern(t, stripe));
        }
        assert_qemu_clean(&img);
        assert_same_as_model(&img, &model, d);
    }
}
