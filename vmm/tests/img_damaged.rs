//! Damaged images made by poking bytes: ivmm must refuse or repair them with a
//! clear message, never panic, hang or write outside the file, and `ivmm img
//! check` must agree with `qemu-img check`.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// Runs ivmm under `timeout` so a hang fails the test instead of blocking it.
fn ivmm_bounded(args: &[&str]) -> Output {
    let mut v = vec!["30", IVMM, "img"];
    v.extend_from_slice(args);
    run("timeout", &v)
}

/// A clean 1 MiB image with 4 KiB clusters and data in the first 64 KiB.
/// Layout (QEMU): header 0x0, refcount table 0x1000, refcount block 0x2000,
/// L1 0x3000, L2 0x4000, data from 0x5000.
fn base(dir: &Path) -> std::path::PathBuf {
    let b = dir.join("base.qcow2");
    if !b.exists() {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k",
            p(&b),
            "1M",
        ]);
        qemu_io("qcow2", &b, &["write -P 1 0 64k".into()]);
    }
    b
}

fn poke(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// (name, damage) pairs; each damage pokes a copy of the base image.
type Damage = fn(&Path);

const CASES: &[(&str, Damage)] = &[
    ("l1_size_beyond_file", |p| {
        poke(p, 36, &0x10000u32.to_be_bytes())
    }),
    ("l1_size_huge", |p| {
        poke(p, 36, &0x00ff_ffffu32.to_be_bytes())
    }),
    ("l1_offset_unaligned", |p| {
        poke(p, 40, &0x3008u64.to_be_bytes())
    }),
    ("l2_offset_unaligned", |p| {
        poke(p, 0x3000, &0x8000_0000_0000_4200u64.to_be_bytes())
    }),
    ("l2_reserved_bits", |p| {
        poke(p, 0x3000, &0x8000_0000_0000_4010u64.to_be_bytes())
    }),
    ("l2_offset_out_of_file", |p| {
        poke(p, 0x3000, &0x8000_0000_0100_0000u64.to_be_bytes())
    }),
    ("refblock_unaligned", |p| {
        poke(p, 0x1000, &0x2200u64.to_be_bytes())
    }),
    ("refblock_out_of_file", |p| {
        poke(p, 0x1000, &0x0100_0000u64.to_be_bytes())
    }),
    ("reftable_unaligned", |p| {
        poke(p, 48, &0x1008u64.to_be_bytes())
    }),
    ("l2_overlaps_refblock", |p| {
        poke(p, 0x3000, &0x8000_0000_0000_2000u64.to_be_bytes())
    }),
    ("refcount_zero", |p| poke(p, 0x2000 + 2 * 5, &[0, 0])),
    ("refcount_two", |p| poke(p, 0x2000 + 2 * 5, &[0, 2])),
    ("refcount_leak", |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(26 * 4096)
            .unwrap();
        poke(p, 0x2000 + 2 * 25, &[0, 1])
    }),
    ("cluster_bits_8", |p| poke(p, 20, &8u32.to_be_bytes())),
    ("cluster_bits_22", |p| poke(p, 20, &22u32.to_be_bytes())),
    ("truncated_data", |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(40000)
            .unwrap()
    }),
    ("truncated_header", |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(50)
            .unwrap()
    }),
    ("dirty_bit", |p| poke(p, 72, &1u64.to_be_bytes())),
    ("corrupt_bit", |p| poke(p, 72, &2u64.to_be_bytes())),
    ("zstd_compression", |p| poke(p, 72, &8u64.to_be_bytes())),
    ("extended_l2", |p| poke(p, 72, &16u64.to_be_bytes())),
];

fn assert_no_crash(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code().is_some(),
        "{what}: killed by a signal (panic/abort?): {err}"
    );
    assert_ne!(o.status.code(), Some(124), "{what}: hung");
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    // `check` lists its findings on stderr like qemu-img; other verbs fail in one line.
    if !o.status.success() && !what.starts_with("check") {
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("ivmm:")).collect();
        assert_eq!(lines.len(), 1, "{what}: want a one-line error, got: {err}");
    }
}

#[test]
fn damaged_images_are_refused_or_repaired_and_check_agrees_with_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = base(d);
    for (name, damage) in CASES {
        let img = d.join(format!("{name}.qcow2"));
        std::fs::copy(&b, &img).unwrap();
        damage(&img);
        let before = std::fs::read(&img).unwrap();

        // check agrees with qemu-img check on the exit code (0/1/2/3).
        let (qcode, _) = qemu_check(&img);
        let o = ivmm_bounded(&["check", p(&img)]);
        assert_no_crash(&o, &format!("check {name}"));
        // qemu-img cannot check images with dirty/corrupt/unknown feature bits
        // the same way; only compare where both open the image.
        if !matches!(
            *name,
            "dirty_bit" | "corrupt_bit" | "zstd_compression" | "extended_l2"
        ) {
            assert_eq!(
                o.status.code(),
                Some(qcode),
                "{name}: ivmm check vs qemu-img check"
            );
        }

        // Read-only use: refuse cleanly or succeed; never touch the image.
        let out = d.join(format!("{name}.raw"));
        let o = ivmm_bounded(&["convert", "-O", "raw", p(&img), p(&out)]);
        assert_no_crash(&o, name);
        let o = ivmm_bounded(&["info", p(&img)]);
        assert_no_crash(&o, name);
        assert_eq!(
            std::fs::read(&img).unwrap(),
            before,
            "{name}: read-only use changed the image"
        );

        // Writable use is refused for damaged metadata, with a pointer to the fix.
        let o = ivmm_bounded(&["resize", p(&img), "+1M"]);
        assert_no_crash(&o, name);

        // Repair: afterwards qemu-img check must not find more problems than before.
        let o = ivmm_bounded(&["check", "-r", "all", p(&img)]);
        assert_no_crash(&o, &format!("check -r all {name}"));
        let after = std::fs::metadata(&img).unwrap().len();
        assert!(
            after <= before.len() as u64 + (16 << 20),
            "{name}: repair grew the file wildly"
        );
        let (qafter, _) = qemu_check(&img);
        if matches!(
            *name,
            "refcount_zero"
                | "refcount_two"
                | "refcount_leak"
                | "refblock_out_of_file"
                | "refblock_unaligned"
                | "dirty_bit"
                | "corrupt_bit"
        ) {
            assert_eq!(
                qafter,
                0,
                "{name}: not repaired: {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
    }
}

#[test]
fn refused_images_say_what_they_have_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = base(d);
    for (name, bits, want) in [
        ("dirty", 1u64, "ivmm img check -r all"),
        ("corrupt", 2, "ivmm img check -r all"),
        ("zstd", 8, "zstd"),
        ("extl2", 16, "extended L2"),
    ] {
        let img = d.join(format!("{name}.qcow2"));
        std::fs::copy(&b, &img).unwrap();
        poke(&img, 72, &bits.to_be_bytes());
        let o = ivmm_bounded(&["convert", "-O", "raw", p(&img), p(&d.join("x.raw"))]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(err.contains(want), "{name}: {err}");
    }
    // A dirty image is made usable by check -r all (and qemu agrees it is clean).
    let img = d.join("dirty.qcow2");
    let o = ivmm_bounded(&["check", "-r", "all", p(&img)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_qemu_clean(&img);
    ivmm_ok(&["convert", "-O", "raw", p(&img), p(&d.join("x.raw"))]);
}

#[test]
fn backing_file_looping_to_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&a), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        p(&b),
    ]);
    // a -> b -> a, and a self loop.
    ok(
        "qemu-img",
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a)],
    );
    for img in [&a, &b] {
        for args in [
            vec!["info", "--backing-chain", p(img)],
            vec!["convert", "-O", "raw", p(img), p(&d.join("o.raw"))],
            vec!["compare", p(img), p(img)],
        ] {
            let o = ivmm_bounded(&args);
            assert_no_crash(&o, "loop");
            assert_ne!(o.status.code(), Some(0), "{args:?}");
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("loops"),
                "{args:?}"
            );
        }
    }
    ok(
        "qemu-img",
        &["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", p(&a)],
    );
    let o = ivmm_bounded(&["convert", "-O", "raw", p(&a), p(&d.join("o.raw"))]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("loops"));
}
