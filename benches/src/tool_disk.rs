//! Carrying host tools into the L2 guest: the guest's initramfs is busybox
//! only, so a benchmark that needs iperf3 or fio puts the host's binary and
//! every library `ldd` lists (loader included) at the root of a small ext4
//! image, attaches it read-only, and runs the tool in the guest through
//! that loader: `/mnt/lib/ld-linux-x86-64.so.2 --library-path /mnt/lib /mnt/TOOL`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `dir/tools.ext4` holding `tools` (host paths) at its root and
/// their libraries in `lib/`.
pub fn build(dir: &Path, tools: &[&str]) -> Result<PathBuf, String> {
    let root = dir.join("tools-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("lib")).map_err(|e| format!("mkdir: {e}"))?;
    let mut bytes = 0u64;
    for tool in tools {
        let path = Path::new(tool);
        let name = path.file_name().ok_or(format!("{tool}: not a file path"))?;
        bytes += std::fs::copy(path, root.join(name))
            .map_err(|e| format!("{tool}: {e} (install it on the host)"))?;
        let ldd = Command::new("ldd")
            .arg(path)
            .output()
            .map_err(|e| format!("ldd {tool}: {e}"))?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) else {
                continue;
            };
            let lib = Path::new(lib);
            let target = root.join("lib").join(lib.file_name().unwrap_or_default());
            if !target.exists() {
                bytes += std::fs::copy(lib, &target)
                    .map_err(|e| format!("copy {}: {e}", lib.display()))?;
            }
        }
    }
    let image = dir.join("tools.ext4");
    let _ = std::fs::remove_file(&image);
    let mib = (bytes >> 20) * 3 / 2 + 16;
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg(format!("{mib}M"))
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(&root);
    if !ok {
        return Err("mkfs.ext4 -d failed".into());
    }
    Ok(image)
}

/// The guest-side shell prefix that runs TOOL from the image mounted on /mnt.
pub fn run_prefix(tool: &str) -> String {
    format!("/mnt/lib/ld-linux-x86-64.so.2 --library-path /mnt/lib /mnt/{tool}")
}
