//! Prints `ivmm img bench` / `ivmm img convert` side by side with qemu-img.
//!
//! Usage: `cargo build --release -p vmm && cargo run --release -p ivmm-benches`
//! Env: `IVMM_BIN` (default: target/release/ivmm), `BENCH_DIR` (default: a
//! directory under target/, which must support O_DIRECT), `BENCH_SIZE_MIB`
//! (bench image size, default 1024), `CONVERT_SIZE_MIB` (default 2048).

fn main() {
    if let Err(e) = ivmm_benches::run() {
        eprintln!("ivmm-benches: {e}");
        std::process::exit(1);
    }
}
