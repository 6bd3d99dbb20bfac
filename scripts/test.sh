#!/usr/bin/env bash
# The one test command (CI runs it through .ci/run): host setup, guest fixtures, the ivmm
# release binary, then every test of the workspace. Lab tests boot stock kernels under a real
# KVM: directly on hardware-KVM hosts, in the QEMU TCG nested lab elsewhere (shared/LAB.md).
# Missing prerequisites make tests fail, never skip.
#
# Usage: scripts/test.sh [extra `cargo test` arguments, e.g. -- --nocapture]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }

step "host setup (scripts/setup.sh)"
scripts/setup.sh
step "guest fixtures (scripts/fetch-guest.sh)"
scripts/fetch-guest.sh
step "ivmm release binary (with the test-only hooks the hardening tests use)"
cargo build --release -p vmm --features test-hooks
step "fuzz targets still build (fuzz/ is a separate cargo project; fuzz/run.sh runs them)"
cargo check --manifest-path fuzz/Cargo.toml --bins
step "vendored imago's own tests (third_party/README.md: we patch it)"
for features in "" "--no-default-features --features sync"; do
    # shellcheck disable=SC2086 # the feature flags are separate words
    CARGO_TARGET_DIR=target/imago cargo test --locked --release \
        --manifest-path third_party/imago/Cargo.toml --lib $features
done
step "tests"
# One test thread per binary is not needed: the lab serializes nested runs with a lock.
cargo test --workspace --release "$@"
