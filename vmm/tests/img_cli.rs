//! Bad input and image locking, black-box against the `ivmm` binary and QEMU.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use devices::block::{open_disk, ImageFormat, OpenOptions};

/// Asserts a non-zero exit with a first stderr line naming `needle`.
fn assert_fails(args: &[&str], needle: &str) {
    let o = ivmm(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(o.status.code().is_some(), "{args:?} crashed: {err}");
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains(needle),
        "{args:?}: first line {first:?} lacks {needle:?} (all: {err})"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn bad_input_fails_in_one_line_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("missing.qcow2");
    let new = d.join("new.qcow2");
    let n = p(&new);
    assert_fails(&["info", p(&missing)], "missing.qcow2");
    assert_fails(&["check", p(&missing)], "missing.qcow2");
    assert_fails(&["convert", "-O", "raw", p(&missing), n], "missing.qcow2");
    assert_fails(&["info", p(d)], "is a directory");
    assert_fails(&["create", "-f", "qcow2", p(d), "1M"], "is a directory");
    assert_fails(&["create", "-f", "qcow2", n, "-5G"], "-5G");
    assert_fails(&["create", "-f", "qcow2", n, "5Q"], "5Q");
    assert_fails(
        &["create", "-f", "qcow2", "-o", "bogus=1", n, "1M"],
        "bogus",
    );
    assert_fails(
        &["create", "-f", "qcow2", "-o", "cluster_size=1000", n, "1M"],
        "cluster size",
    );
    assert_fails(&["create", "-f", "vmdk", n, "1M"], "vmdk");
    assert_fails(
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "nothere.qcow2",
            "-F",
            "qcow2",
            n,
        ],
        "nothere.qcow2",
    );
    assert_fails(&["create", "-f", "qcow2", n], "size");
    assert_fails(
        &[
            "create",
            "-f",
            "qcow2",
            p(&d.join("no/such/dir.qcow2")),
            "1M",
        ],
        "does not exist",
    );
    assert_fails(&["resize", p(&missing), "+1G"], "missing.qcow2");
    assert_fails(&["check", "-r", "everything", p(&missing)], "everything");
    assert_fails(&["bogus-verb"], "bogus-verb");
    assert!(!new.exists(), "a failed command created {n}");

    // check on raw: qemu-img's exit code 63.
    let raw = d.join("r.raw");
    ivmm_ok(&["create", "-q", "-f", "raw", p(&raw), "1M"]);
    let o = ivmm(&["check", "-f", "raw", p(&raw)]);
    assert_eq!(o.status.code(), Some(63));
    assert_eq!(
        run("qemu-img", &["check", "-f", "raw", p(&raw)])
            .status
            .code(),
        Some(63)
    );

    // A missing backing file of an existing overlay.
    let ov = d.join("ov.qcow2");
    ivmm_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.raw",
        "-F",
        "raw",
        p(&ov),
        "1M",
    ]);
    let before = std::fs::read(&ov).unwrap();
    assert_fails(
        &["convert", "-O", "raw", p(&ov), p(&d.join("o.raw"))],
        "gone.raw",
    );
    assert_fails(&["commit", p(&ov)], "gone.raw");
    assert_eq!(std::fs::read(&ov).unwrap(), before);

    // No permission: root bypasses file modes, so as root the commands run
    // as `nobody` through setpriv on a root-only file in a readable directory.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let private = open_dir.path().join("private.qcow2");
    ivmm_ok(&["create", "-q", "-f", "qcow2", p(&private), "1M"]);
    let mode = if as_root() { 0o600 } else { 0o000 };
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    let before = std::fs::read(&private).unwrap();
    for args in [
        &["info", p(&private)][..],
        &["check", p(&private)],
        &["resize", p(&private), "+1M"],
        &["create", "-f", "qcow2", p(&private), "2M"],
    ] {
        assert_fails_unprivileged(args, "Permission denied");
    }
    assert_eq!(std::fs::read(&private).unwrap(), before);
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// [`assert_fails`] for a user without access to root's files.
fn assert_fails_unprivileged(args: &[&str], needle: &str) {
    if !as_root() {
        return assert_fails(args, needle);
    }
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            IVMM,
            "img",
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded as nobody");
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains(needle) && first.contains("private.qcow2"),
        "{args:?}: first line {first:?} (all: {err})"
    );
}

/// A qemu-io process holding `img` open (read-write unless `-r`), returned
/// once it has answered a read, i.e. once it holds its locks.
fn qemu_io_holding(img: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["-f", "qcow2"];
    args.extend_from_slice(extra);
    args.push(p(img));
    let mut child = Command::new("qemu-io")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, "read 0 512").unwrap();
    stdin.flush().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("read 512/512") {
            break;
        }
    }
    child
}

#[test]
fn locks_are_compatible_with_qemu_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("l.qcow2");
    ivmm_ok(&["create", "-q", "-f", "qcow2", p(&img), "1M"]);

    // QEMU writer: ivmm refuses to open, except read-only with -U.
    let mut q = qemu_io_holding(&img, &[]);
    assert_fails(&["info", p(&img)], "in use");
    assert_fails(&["resize", p(&img), "+1M"], "in use");
    assert_fails(&["check", p(&img)], "in use");
    ivmm_ok(&["info", "-U", p(&img)]);
    let before = std::fs::read(&img).unwrap();
    assert_fails(&["create", "-f", "qcow2", p(&img), "2M"], "in use");
    assert_fails(&["convert", "-O", "qcow2", p(&img), p(&img)], "in use");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "an image in use was overwritten"
    );
    let err = open_disk(
        &img,
        &OpenOptions {
            format: Some(ImageFormat::Qcow2),
            writable: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(q.stdin.take());
    q.wait().unwrap();

    // QEMU reader: ivmm may read but not write.
    let mut q = qemu_io_holding(&img, &["-r"]);
    ivmm_ok(&["info", p(&img)]);
    assert_fails(&["resize", p(&img), "+1M"], "in use");
    drop(q.stdin.take());
    q.wait().unwrap();

    // ivmm writer: qemu-img/qemu-io refuse, qemu-img info -U works.
    let disk = open_disk(
        &img,
        &OpenOptions {
            format: Some(ImageFormat::Qcow2),
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let o = run("qemu-img", &["info", p(&img)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("lock"));
    let o = run("qemu-io", &["-f", "qcow2", "-c", "write 0 512", p(&img)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("lock") || !o.status.success());
    ok("qemu-img", &["info", "-U", p(&img)]);
    drop(disk);
    ok("qemu-img", &["info", p(&img)]);
}

#[test]
fn probed_raw_image_cannot_be_turned_into_qcow2_by_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("guest.img");
    ivmm_ok(&["create", "-q", "-f", "raw", p(&img), "1M"]);
    let probed = open_disk(
        &img,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let err = probed.write_at(0, b"QFI\xfb\0\0\0\x03").unwrap_err();
    assert!(err.to_string().contains("explicit format"), "{err}");
    drop(probed);
    let info: serde_json::Value =
        serde_json::from_str(&ivmm_ok(&["info", "--output", "json", p(&img)])).unwrap();
    assert_eq!(info["format"], "raw");
}
