//! Host-side helpers: finding programs, collecting a binary's shared libraries, temporary
//! directories, and the machine-wide lab lock that keeps two QEMU labs from running at once.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{LabError, Result};

/// Looks `name` up in `$PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The shared libraries (including the dynamic loader) that `ldd` lists for `binary`.
/// A static binary has none.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let step = || format!("ldd {}", binary.display());
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| LabError::io(step(), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(LabError::Host {
            step: step(),
            detail: format!("{}{}", stdout.trim(), stderr.trim()),
        });
    }
    parse_ldd(&stdout).map_err(|detail| LabError::Host {
        step: step(),
        detail,
    })
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("statically linked") {
            continue;
        }
        if line.contains("=> not found") {
            return Err(format!("missing library: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Machine-wide lock for the nested lab: QEMU TCG needs the CPU, and two labs at once on a
/// small machine make both time out. It is a directory (atomic `mkdir`) holding the owner's pid;
/// a lock whose owner is gone is taken over. Threads of one process wait for each other too.
#[derive(Debug)]
pub(crate) struct LabLock {
    dir: PathBuf,
}

impl LabLock {
    pub(crate) fn acquire() -> Result<Self> {
        let dir = std::env::temp_dir().join("ivmm-lab.lock");
        let me = std::process::id();
        let mut told = false;
        let started = std::time::Instant::now();
        loop {
            match fs::create_dir(&dir) {
                Ok(()) => {
                    // The pid goes in a file name, so creating it is one atomic step.
                    fs::write(dir.join(format!("pid-{me}")), b"")
                        .map_err(|e| LabError::io(format!("writing {}", dir.display()), e))?;
                    return Ok(Self { dir });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    match lock_owner(&dir) {
                        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => {
                            if !told {
                                eprintln!(
                                    "ivmm lab: waiting for the lab lock {} (pid {pid})",
                                    dir.display()
                                );
                                told = true;
                            }
                            if started.elapsed() > LOCK_WAIT_MAX {
                                return Err(LabError::Host {
                                    step: format!("taking the lab lock {}", dir.display()),
                                    detail: format!(
                                        "held by pid {pid} for over {LOCK_WAIT_MAX:?}; if that \
                                         is no lab run, remove the directory"
                                    ),
                                });
                            }
                        }
                        // The owner died, or is between mkdir and writing its pid: only take
                        // over a lock that has stayed ownerless for a while.
                        owner => {
                            let age = fs::metadata(&dir)
                                .and_then(|m| m.modified())
                                .ok()
                                .and_then(|t| t.elapsed().ok())
                                .unwrap_or_default();
                            if owner.is_some() || age > Duration::from_secs(5) {
                                let _ = fs::remove_dir_all(&dir);
                                continue;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(LabError::io(format!("creating lock {}", dir.display()), e));
                }
            }
        }
    }
}

/// Longest wait for another lab run: several long runs, not a lost lock.
const LOCK_WAIT_MAX: Duration = Duration::from_secs(30 * 60);

fn lock_owner(dir: &Path) -> Option<u32> {
    fs::read_dir(dir).ok()?.find_map(|entry| {
        let name = entry.ok()?.file_name();
        name.to_str()?.strip_prefix("pid-")?.parse().ok()
    })
}

impl Drop for LabLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ldd_lists_paths_and_loader_but_not_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(text).expect("parses");
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn parse_ldd_missing_library_is_an_error() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("must fail");
        assert!(err.contains("libfoo.so.1"));
    }

    #[test]
    fn shared_libs_of_sh_include_libc() {
        let libs = shared_libs(Path::new("/bin/sh")).expect("ldd /bin/sh");
        assert!(libs.iter().any(|p| p.to_string_lossy().contains("libc.so")));
    }
}
