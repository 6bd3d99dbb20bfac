//! Helpers shared by the vmm integration tests: run ivmm, qemu-img and
//! qemu-io (the oracle), deterministic pseudo-random numbers, scratch
//! directories.
#![allow(dead_code)]

pub mod tiny_guest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory under the temporary directory, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `<tmp>/ivmm-<suite>-<pid>-<name>`, created empty.
    pub fn new(suite: &str, name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ivmm-{suite}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const IVMM: &str = env!("CARGO_BIN_EXE_ivmm");

/// Runs a command, returning its output (never panics on non-zero exit).
pub fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Runs and asserts success; returns stdout.
pub fn ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn ivmm(args: &[&str]) -> Output {
    let mut v = vec!["img"];
    v.extend_from_slice(args);
    run(IVMM, &v)
}

pub fn ivmm_ok(args: &[&str]) -> String {
    let mut v = vec!["img"];
    v.extend_from_slice(args);
    ok(IVMM, &v)
}

pub fn qemu_img(args: &[&str]) -> String {
    ok("qemu-img", args)
}

/// Runs qemu-io commands on an image (format given explicitly).
pub fn qemu_io(fmt: &str, path: &Path, cmds: &[String]) {
    let mut args: Vec<String> = vec!["-f".into(), fmt.into()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(path.display().to_string());
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = ok("qemu-io", &refs);
    assert!(
        !out.contains("error") && !out.contains("failed"),
        "qemu-io: {out}"
    );
}

/// `qemu-img check --output json` as JSON plus exit code.
pub fn qemu_check(path: &Path) -> (i32, serde_json::Value) {
    let o = run(
        "qemu-img",
        &["check", "--output", "json", path.to_str().unwrap()],
    );
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

/// Asserts qemu-img check finds no errors and no leaks.
pub fn assert_qemu_clean(path: &Path) {
    let (code, v) = qemu_check(path);
    assert_eq!(code, 0, "qemu-img check {}: {v}", path.display());
}

/// xorshift64* PRNG: deterministic, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
